// Chrome trace and SVG writers: the trace is valid JSON with one slice per event (waits split
// out, microsecond timestamps); the SVG has a row per rank, braided blocks as outlined pairs,
// microbatch labels, and transfer rows only under ranks that copy.
#include "schedule/trace.h"
#include "common/file.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "schedule/generators.h"
#include "schedule/p2p.h"
#include "schedule/simulate.h"

namespace stp::schedule {
namespace {

using Json = nlohmann::json;

int count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (std::size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1))
    ++n;
  return n;
}

Timeline simulated(const Program& prog, double t_ar = 0.25) {
  CostModel c;
  c.t_ar = t_ar;
  SimOptions opt;
  opt.record_timeline = true;
  return simulate(prog, c, opt).timeline;
}

TEST(ChromeTrace, IsJsonWithASlicePerEventAndWaitsSplitOut) {
  const Program prog = make_1f1b(2, 2);
  CostModel c;
  c.p2p_latency = 0.5;
  SimOptions opt;
  opt.record_timeline = true;
  const Timeline tl = simulate(prog, c, opt).timeline;
  const Json doc = Json::parse(to_chrome_trace(tl));
  ASSERT_TRUE(doc.contains("traceEvents") && doc.at("traceEvents").is_array());
  const Json& events = doc.at("traceEvents");
  int slices = 0, waits = 0, meta = 0;
  bool saw_bw = false;
  for (const Json& ev : events) {
    const std::string ph = ev.at("ph");
    if (ph == "M") {
      ++meta;
      continue;
    }
    ASSERT_EQ(ph, "X");
    ASSERT_TRUE(ev.contains("ts") && ev.contains("dur") && ev.contains("pid") &&
                ev.contains("tid"));
    EXPECT_GE(ev.at("dur").get<double>(), 0);
    if (ev.at("cat") == "wait")
      ++waits;
    else
      ++slices;
    if (ev.at("name") == "BW0[0]" && ev.at("pid") == 1) {
      // rank 0's BW0[0]: the gradient arrives at 5.0 s -> 5e6 us, runs 2 s.
      saw_bw = true;
      EXPECT_DOUBLE_EQ(ev.at("ts").get<double>(), 5e6);
      EXPECT_DOUBLE_EQ(ev.at("dur").get<double>(), 2e6);
    }
  }
  EXPECT_TRUE(saw_bw);
  EXPECT_EQ(slices, static_cast<int>(tl.events.size()));
  EXPECT_GT(waits, 0);     // rank 1 waits for activations, rank 0 for gradients
  EXPECT_EQ(meta, 2 * 6);  // per rank: process name, sort index, four thread names
}

TEST(ChromeTrace, StacksSeveralTimelinesAsSeparateProcesses) {
  const Json doc =
      Json::parse(to_chrome_trace({simulated(make_1f1b(2, 2)), simulated(make_stp(2, 4))}));
  int names = 0;
  for (const Json& ev : doc.at("traceEvents"))
    if (ev.at("name") == "process_name") {
      ++names;
      EXPECT_NE(ev.at("args").at("name").get<std::string>().find(" rank "), std::string::npos);
    }
  EXPECT_EQ(names, 4);
}

TEST(Svg, DrawsRanksBraidsLabelsAndExposedTp) {
  const std::string svg = to_svg(simulated(make_stp(4, 12)));
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  for (int r = 0; r < 4; ++r)
    EXPECT_NE(svg.find(">r" + std::to_string(r) + "</text>"), std::string::npos);
  EXPECT_NE(svg.find(">stp p=4 m=12</text>"), std::string::npos);
  // Every FF/FB/FW of the program is an outlined pair; every other compute a plain block.
  int braids = 0, blocks = 0;
  const Program prog = make_stp(4, 12);
  for (const auto& list : prog.ranks)
    for (const Instr& in : list) {
      braids += in.is_compute() && in.parts.size() == 2;
      blocks += in.is_compute() && in.parts.size() == 1;
    }
  EXPECT_EQ(count(svg, "<g class=\"braid\">"), braids);
  EXPECT_EQ(count(svg, "<g class=\"block\">"), blocks);
  EXPECT_EQ(count(svg, "<g "), count(svg, "</g>"));
  EXPECT_NE(svg.find("<title>FB1[1,0]</title>"), std::string::npos);
  EXPECT_NE(svg.find("#a6d96a"), std::string::npos);     // F of chunk 1 is the light green
  EXPECT_NE(svg.find("#bdbdbd"), std::string::npos);     // exposed TP of standalone forwards
  EXPECT_NE(svg.find(">11</text>"), std::string::npos);  // microbatch numbers (0-based)
  EXPECT_EQ(count(svg, "class=\"offload\""), 0);         // no copies, no transfer rows
  EXPECT_EQ(count(svg, ">copy</text>"), 0);
}

TEST(Svg, TransferRowsOnlyUnderRanksThatCopy) {
  Program prog = make_1f1b(2, 2);
  // Rank 0 offloads mb 0 after its forward and reloads it before its backward.
  auto& r0 = prog.ranks[0];
  Instr off, rel;
  off.op = Op::kOffload;
  rel.op = Op::kReload;
  off.ref = rel.ref = Part{Pass::kF, 0, 0, 0};
  r0.insert(r0.begin() + 1, off);
  for (std::size_t i = 0; i < r0.size(); ++i)
    if (to_string(r0[i]) == "BW0[0]") {
      r0.insert(r0.begin() + static_cast<std::ptrdiff_t>(i), rel);
      break;
    }
  CostModel c;
  c.act_bytes = 10;
  c.host_bandwidth = 10;
  SimOptions opt;
  opt.record_timeline = true;
  const std::string svg = to_svg(simulate(prog, c, opt).timeline);
  EXPECT_EQ(count(svg, "class=\"offload\""), 1);
  EXPECT_EQ(count(svg, "class=\"reload\""), 1);
  EXPECT_EQ(count(svg, ">copy</text>"), 1);  // only rank 0 has a transfer row
  EXPECT_NE(svg.find("<title>OFFLOAD c0 mb0</title>"), std::string::npos);
}

TEST(Svg, RejectsNonPositiveSizes) {
  SvgOptions opt;
  opt.width_px = 0;
  EXPECT_THROW(to_svg(simulated(make_1f1b(1, 1)), opt), std::invalid_argument);
}

TEST(WriteFile, WritesAndNamesAnUnwritablePath) {
  const std::string path = ::testing::TempDir() + "stp_trace_test.svg";
  write_file(path, "<svg/>\n");
  std::ifstream in(path);
  std::stringstream got;
  got << in.rdbuf();
  EXPECT_EQ(got.str(), "<svg/>\n");
  std::remove(path.c_str());
  try {
    write_file("/nonexistent-dir/x.svg", "x");
    FAIL() << "wrote to a missing directory";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent-dir/x.svg"), std::string::npos);
  }
}

}  // namespace
}  // namespace stp::schedule
