// Generate + verify + simulate a large schedule (p = 64 ranks, m = 512 microbatches): the
// issue's budget is one second. Google Benchmark times each stage per kind; afterwards the
// program prints the STP pipeline's median time, its ratio to the budget, and its ratio to the
// 1F1B pipeline (the baseline) measured in the same run.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "schedule/generators.h"
#include "schedule/simulate.h"
#include "schedule/verify.h"

namespace {

namespace sch = stp::schedule;

constexpr int kP = 64;                  // pipeline ranks
constexpr int kM = 512;                 // microbatches
constexpr double kBudgetSeconds = 1.0;  // generate + verify + simulate

sch::CostModel costs() {
  sch::CostModel c;
  c.t_ar = 0.25;
  c.p2p_latency = 0.01;
  c.act_bytes = 1 << 20;
  return c;
}

void pipeline(sch::Kind kind) {
  sch::Program prog = sch::make(kind, kP, kM);
  sch::verify(prog);
  sch::SimResult sim = sch::simulate(prog, costs());
  benchmark::DoNotOptimize(sim.makespan);
}

void BM_Make(benchmark::State& state) {
  const auto kind = static_cast<sch::Kind>(state.range(0));
  for (auto _ : state) benchmark::DoNotOptimize(sch::make(kind, kP, kM));
  state.SetLabel(sch::to_string(kind));
}

void BM_Verify(benchmark::State& state) {
  const auto kind = static_cast<sch::Kind>(state.range(0));
  const sch::Program prog = sch::make(kind, kP, kM);
  for (auto _ : state) sch::verify(prog);
  state.SetLabel(sch::to_string(kind));
}

void BM_Simulate(benchmark::State& state) {
  const auto kind = static_cast<sch::Kind>(state.range(0));
  const sch::Program prog = sch::make(kind, kP, kM);
  const sch::CostModel c = costs();
  for (auto _ : state) benchmark::DoNotOptimize(sch::simulate(prog, c).makespan);
  state.SetLabel(sch::to_string(kind));
}

void BM_GenerateVerifySimulate(benchmark::State& state) {
  const auto kind = static_cast<sch::Kind>(state.range(0));
  for (auto _ : state) pipeline(kind);
  state.SetLabel(sch::to_string(kind));
}

void kinds(benchmark::internal::Benchmark* b) {
  for (sch::Kind k : sch::all_kinds()) b->Arg(static_cast<int>(k));
  b->Unit(benchmark::kMillisecond);
}

BENCHMARK(BM_Make)->Apply(kinds);
BENCHMARK(BM_Verify)->Apply(kinds);
BENCHMARK(BM_Simulate)->Apply(kinds);
BENCHMARK(BM_GenerateVerifySimulate)->Apply(kinds);

double median_seconds(sch::Kind kind, int runs) {
  std::vector<double> t;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    pipeline(kind);
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  const double stp = median_seconds(sch::Kind::kSTP, 5);
  const double base = median_seconds(sch::Kind::k1F1B, 5);
  std::printf(
      "\nstp generate+verify+simulate p=%d m=%d: %.1f ms (median of 5); "
      "%.2fx of the %.0f s budget; %.2fx the 1f1b baseline (%.1f ms)\n",
      kP, kM, stp * 1e3, stp / kBudgetSeconds, kBudgetSeconds, stp / base, base * 1e3);
  return stp <= kBudgetSeconds ? 0 : 1;
}
