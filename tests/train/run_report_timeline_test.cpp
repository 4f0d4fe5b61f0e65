// What the run report writes of the measured timeline and device memory: a reload wait's link
// survives the per-rank event files, the simulated copies last as long as the measured ones,
// and device memory figures are numbers on CUDA and null (not made up) on the CPU.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "file_test_util.h"
#include "schedule/generators.h"
#include "train/run_report.h"

namespace stp::train {
namespace {

using schedule::Op;
using schedule::Part;
using schedule::Pass;
using schedule::TimelineEvent;

TEST(RunReportTimeline, EventFilesKeepTheReloadAWaitNamesAndTheSvgLinksThem) {
  // 1F1B on one rank, m = 1: F0[0] (index 0), B... with an OFFLOAD and RELOAD between.
  schedule::Program prog = schedule::make_1f1b(1, 1);
  auto& r0 = prog.ranks[0];
  ASSERT_EQ(r0.size(), 2u);
  const Part set{Pass::kF, 0, 0, 0};
  r0.insert(r0.begin() + 1, schedule::transfer_instr(Op::kOffload, set));
  r0.insert(r0.begin() + 2, schedule::transfer_instr(Op::kReload, set));
  std::vector<TimelineEvent> events(4);
  const char* cats[] = {schedule::kCategoryCompute, schedule::kCategoryOffload,
                        schedule::kCategoryReload, schedule::kCategoryCompute};
  const double span[][2] = {{0, 1}, {1, 1.5}, {1.5, 3}, {1, 4}};
  for (int i = 0; i < 4; ++i) {
    events[i].index = i;
    events[i].name = schedule::to_string(r0[i]);
    events[i].category = cats[i];
    events[i].op = r0[i].op;
    events[i].parts = r0[i].is_compute() ? r0[i].parts : std::vector<Part>{r0[i].ref};
    events[i].start = span[i][0];
    events[i].end = span[i][1];
  }
  events[3].reload_wait = 2;  // the backward waited for the reload until 3
  events[3].reload_index = 2;
  testing::TempDir dir;
  write_rank_events(dir.str(), 0, events);
  const std::vector<TimelineEvent> back = read_rank_events(dir.str(), 1);
  ASSERT_EQ(back.size(), 4u);
  EXPECT_EQ(back[3].reload_index, 2);
  EXPECT_EQ(back[0].reload_index, -1);
  write_timelines(dir.str(), prog, back, "t");
  const std::string svg = testing::read_bytes(dir.path / "timeline.svg");
  EXPECT_NE(svg.find("waited 2000.00 ms for RELOAD c0 mb0"), std::string::npos) << svg;
  // The simulated section's copies last the measured mean, 1 s (0.5 and 1.5).
  const auto trace = nlohmann::json::parse(testing::read_bytes(dir.path / "timeline.json"));
  int simulated_copies = 0;
  for (const auto& e : trace.at("traceEvents")) {
    if (e.at("ph") != "X" || e.at("pid") != 2) continue;  // pid 2: the simulated rank 0
    if (e.at("cat") != schedule::kCategoryOffload && e.at("cat") != schedule::kCategoryReload)
      continue;
    ++simulated_copies;
    EXPECT_DOUBLE_EQ(e.at("dur").get<double>(), 1e6) << e.dump();
  }
  EXPECT_EQ(simulated_copies, 2);
}

TEST(RunReportTimeline, DeviceMemoryIsNullOnTheCpuAndTheAllocatorsPeaksOnCuda) {
  StepMetrics cpu;
  auto j = nlohmann::json::parse(to_json_line(cpu));
  EXPECT_TRUE(j.at("device_allocated_peak_bytes").is_null());
  EXPECT_TRUE(j.at("device_reserved_peak_bytes").is_null());
  StepMetrics cuda;
  cuda.device_allocated_peak_bytes = 3 << 20;
  cuda.device_reserved_peak_bytes = 4 << 20;
  j = nlohmann::json::parse(to_json_line(cuda));
  EXPECT_EQ(j.at("device_allocated_peak_bytes"), 3 << 20);
  EXPECT_EQ(j.at("device_reserved_peak_bytes"), 4 << 20);

  for (const bool on_cuda : {false, true}) {
    testing::TempDir dir;
    std::string said;
    RunReport report(dir.str(), 2, true, false, [&](const std::string& s) { said += s; });
    StepMetrics m = on_cuda ? cuda : cpu;
    for (std::int64_t step : {1, 2}) {
      m.step = step;
      m.seconds = 1;
      report.step(m);
    }
    report.finish("t");
    EXPECT_NE(said.find(on_cuda ? "device memory (caching allocator, peak per step): 3.0 MiB "
                                  "allocated, 4.0 MiB reserved"
                                : "device memory: no allocator statistics on the CPU"),
              std::string::npos)
        << said;
  }
}

}  // namespace
}  // namespace stp::train
