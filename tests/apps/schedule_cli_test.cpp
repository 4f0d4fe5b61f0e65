// `stp schedule` and `stp simulate`: outputs, files, and one-line errors with exit code 2.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli_test_util.h"

namespace stp::testing {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A bad invocation exits 2 with exactly one line: "<prefix>: error: <message>".
void expect_one_line_error(const std::string& args, const std::string& line) {
  CliResult r = run_cli(args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
  EXPECT_EQ(r.output, line + "\n") << args;
}

TEST(ScheduleCli, TextListsTheComputeOrder) {
  CliResult r = run_cli("schedule --kind stp --pp 2 --microbatches 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output,
            "r0: F0[0] F0[1] F0[2] F1[0] F0[3] FB1[1,0] FW0[4]/W1[0] FB1[2,1]+W BW0[0] FB1[3,2] "
            "BW0[1] FB1[4,3] BW0[2] BW1[4] BW0[3] W1[2] W1[3] BW0[4]\n"
            "r1: F0[0] F1[0] F0[1] F1[1] FF0[2,3] FB1[2,0]+W FB0[4,0]+W FB1[3,1] BW0[1] FB1[4,2] "
            "BW0[2] BW1[3] BW0[3] BW1[4] BW0[4] W1[1] W1[2]\n");
  CliResult comm = run_cli("schedule --kind 1f1b --pp 2 --microbatches 1 --with-comm");
  EXPECT_EQ(comm.output,
            "r0: F0[0] SEND_F s0 mb0 ->1 RECV_B s0 mb0 <-1 BW0[0]\n"
            "r1: RECV_F s1 mb0 <-0 F0[0] BW0[0] SEND_B s1 mb0 ->0\n");
}

TEST(ScheduleCli, JsonFollowsTheContract) {
  CliResult r = run_cli("schedule --kind 1f1b-i --pp 2 --microbatches 2 --format json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(
      r.output.rfind("{\"kind\": \"1f1b-i\", \"p\": 2, \"m\": 2, \"v\": 2, \"stages\": 4,", 0), 0u)
      << r.output;
  EXPECT_NE(
      r.output.find(
          "{\"op\": \"F\", \"parts\": [{\"pass\": \"F\", \"chunk\": 0, \"stage\": 0, \"mb\": 0}]}"),
      std::string::npos);
  EXPECT_NE(r.output.find("{\"op\": \"SEND_F\", \"parts\": [], \"ref\": {\"chunk\": 0, \"stage\": "
                          "0, \"mb\": 0}, \"peer\": 1}"),
            std::string::npos);
}

TEST(ScheduleCli, SvgAndTraceGoToFiles) {
  const std::string svg = ::testing::TempDir() + "stp_cli_schedule.svg";
  CliResult r = run_cli("schedule --kind stp --pp 4 --microbatches 12 --format svg --out " + svg);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "");
  const std::string picture = slurp(svg);
  EXPECT_EQ(picture.rfind("<svg", 0), 0u);
  EXPECT_NE(picture.find("stp p=4 m=12"), std::string::npos);
  std::remove(svg.c_str());

  CliResult trace =
      run_cli("schedule --kind zb-v --pp 2 --microbatches 4 --format trace --tar 0.1");
  ASSERT_EQ(trace.exit_code, 0) << trace.output;
  EXPECT_EQ(trace.output.rfind("{\"displayTimeUnit\": \"ms\", \"traceEvents\": [", 0), 0u);
  EXPECT_NE(trace.output.find("\"name\": \"F0[0]\""), std::string::npos);
}

TEST(ScheduleCli, BadArgumentsAreOneLineErrors) {
  expect_one_line_error("schedule --kind stp --pp 0 --microbatches 4",
                        "stp schedule: error: pp=0 must be >= 1");
  expect_one_line_error(
      "schedule --kind stp --pp 4 --microbatches 7",
      "stp schedule: error: microbatches=7 must be >= 2*pp=8 for the stp schedule");
  expect_one_line_error(
      "schedule --kind gpipe --pp 4 --microbatches 8",
      "stp schedule: error: kind 'gpipe' is not one of 1f1b, 1f1b-i, zb-h1, zb-v, stp");
  expect_one_line_error(
      "schedule --kind 1f1b-i --pp 4 --microbatches 6",
      "stp schedule: error: microbatches=6 must be a positive multiple of pp=4 for "
      "the 1f1b-i schedule (Megatron's interleaved order)");
  expect_one_line_error(
      "schedule --kind zb-v --pp 2 --microbatches 4 --chunks 3",
      "stp schedule: error: chunks=3 is not supported by the zb-v schedule (it uses 2)");
  expect_one_line_error("schedule --kind stp --pp 2 --microbatches 4 --format png",
                        "stp schedule: error: format='png' is not one of text, json, svg, trace");
  expect_one_line_error("schedule --kind stp --pp 2 --microbatches 4 --format svg --tf -1",
                        "stp schedule: error: tf=-1 must be a finite number >= 0");
  CliResult missing = run_cli("schedule --kind stp --microbatches 4");
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_EQ(std::count(missing.output.begin(), missing.output.end(), '\n'), 1) << missing.output;
  EXPECT_NE(missing.output.find("--pp"), std::string::npos) << missing.output;
  CliResult nan = run_cli("schedule --kind stp --pp four --microbatches 4");
  EXPECT_EQ(nan.exit_code, 2);
  EXPECT_EQ(std::count(nan.output.begin(), nan.output.end(), '\n'), 1) << nan.output;
}

TEST(SimulateCli, AllKindsBesideTheSeedTable) {
  CliResult r = run_cli("simulate --kind all --pp 4 --microbatches 64 --tar 0.25");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // kind, span, PP bubble sim / formula / step idle, TP sim / formula, peak sim / formula / W-held
  EXPECT_NE(r.output.find("1f1b-i     425.75       9.75      9.75      9.75      32.00     32.00   "
                          " 11    10      11  seed table"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("zb-v       451.75       1.50      1.50      3.75      64.00     64.00   "
                          "  8     8       8  seed table"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("stp        389.75       3.50      3.75      3.75       2.25      2.25   "
                          " 12    12      15  seed table"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("1f1b       217.75"), std::string::npos);
  EXPECT_NE(r.output.find("zb-h1      228.50       4.50      4.50"), std::string::npos);
}

TEST(SimulateCli, SkipsKindsThatRejectTheMicrobatchesAndWritesPictures) {
  const std::string svg = ::testing::TempDir() + "stp_cli_sim.svg";
  const std::string trace = ::testing::TempDir() + "stp_cli_sim.json";
  CliResult r = run_cli("simulate --kind all --pp 4 --microbatches 6 --act-bytes 1MiB --svg " +
                        svg + " --trace " + trace);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("1f1b-i: skipped, microbatches=6 must be a positive multiple of pp=4"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("stp: skipped, microbatches=6 must be >= 2*pp=8"), std::string::npos);
  EXPECT_NE(r.output.find("peak activation bytes per rank: 4.00 MiB"), std::string::npos)
      << r.output;
  const std::string picture = slurp(svg);
  EXPECT_NE(picture.find("zb-v p=4 m=6"), std::string::npos);
  EXPECT_NE(picture.find("1f1b p=4 m=6"), std::string::npos);
  EXPECT_NE(slurp(trace).find("\"traceEvents\""), std::string::npos);
  std::remove(svg.c_str());
  std::remove(trace.c_str());
}

TEST(SimulateCli, PerRankFigures) {
  CliResult r = run_cli("simulate --kind stp --pp 2 --microbatches 5 --per-rank");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("  rank   start      end     busy"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("     0    0.00    31.00    30.00        0.00   1.00"), std::string::npos)
      << r.output;
}

TEST(SimulateCli, BadArgumentsAreOneLineErrors) {
  expect_one_line_error(
      "simulate --kind stp --pp 4 --microbatches 7",
      "stp simulate: error: microbatches=7 must be >= 2*pp=8 for the stp schedule");
  expect_one_line_error("simulate --pp 4 --microbatches 8 --tar -0.5",
                        "stp simulate: error: tar=-0.5 must be a finite number >= 0");
  expect_one_line_error("simulate --pp -1 --microbatches 8",
                        "stp simulate: error: pp=-1 must be >= 1");
  expect_one_line_error("simulate --pp 2 --microbatches 0",
                        "stp simulate: error: microbatches=0 must be >= 1");
  expect_one_line_error(
      "simulate --kind zb --pp 2 --microbatches 4",
      "stp simulate: error: kind 'zb' is not one of 1f1b, 1f1b-i, zb-h1, zb-v, stp");
  expect_one_line_error("simulate --pp 2 --microbatches 4 --act-bytes lots",
                        "stp simulate: error: act-bytes='lots' is not a byte size; use e.g. 4096, "
                        "512MiB, 20GiB, 1.5GB (>= 0)");
}

}  // namespace
}  // namespace stp::testing
