// A Google Benchmark console reporter that also prints, after the table, each benchmark's speed
// relative to its baseline measured in the same run: "ratio A vs B: 1.23" (A does the same work
// 1.23x as fast as B).
// Shared by bench/allocator and bench/offload.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace stp::bench {

class RatioReporter : public benchmark::ConsoleReporter {
 public:
  // Each pair: (name of the measured benchmark, name of its baseline), as Google Benchmark
  // names runs (e.g. "BM_Pool/1048576").
  explicit RatioReporter(std::vector<std::pair<std::string, std::string>> pairs)
      : pairs_(std::move(pairs)) {}

  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs)
      if (r.run_type == Run::RT_Iteration || r.aggregate_name == "median")
        seconds_[r.run_name.str()] = r.GetAdjustedRealTime();
  }

  void Finalize() override {
    ConsoleReporter::Finalize();
    for (const auto& [what, base] : pairs_) {
      auto a = seconds_.find(what), b = seconds_.find(base);
      if (a == seconds_.end() || b == seconds_.end()) continue;
      // Same work per iteration on both sides: speed ratio = baseline time / measured time.
      std::printf("ratio %s vs %s: %.3f (speed relative to the baseline; time ratio %.4g)\n",
                  what.c_str(), base.c_str(), b->second / a->second, a->second / b->second);
    }
  }

 private:
  std::vector<std::pair<std::string, std::string>> pairs_;
  std::map<std::string, double> seconds_;  // last (or median) time per run name
};

// main() body: runs the registered benchmarks with a RatioReporter.
inline int run_with_ratios(int argc, char** argv,
                           std::vector<std::pair<std::string, std::string>> pairs) {
  benchmark::Initialize(&argc, argv);
  RatioReporter reporter(std::move(pairs));
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}

}  // namespace stp::bench
