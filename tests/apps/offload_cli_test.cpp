// `stp plan`, `stp bench copy`, `stp bench pool`: output and error cases of the built binary.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "cli_test_util.h"

namespace stp::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::MatchesRegex;
using ::testing::Not;
using ::testing::StartsWith;

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(PlanCli, UnlimitedBudgetOffloadsNothing) {
  CliResult r = run_cli("plan --kind stp --pp 4");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"stp plan: stp p=4 m=11", "budget        unlimited",
                             "peak before   12.00 GiB", "offloaded     0 of 88 candidate sets"});
}

TEST(PlanCli, BudgetPrintsThePlanPerRank) {
  CliResult r = run_cli("plan --kind stp --pp 4 --budget 8GiB --pcie-gbps 25");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"peak after    8.00 GiB", "(+0.00 %)",
                             "rank  peak before   peak after    offloaded sets",
                             "c0["});  // chunk-0 sets go to host in STP
}

TEST(PlanCli, JsonFormatListsTheSets) {
  CliResult r = run_cli("plan --kind zb-v --pp 4 -m 12 --budget 5GiB --format json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;
  EXPECT_THAT(r.output, StartsWith("{\"budget_bytes\":5368709120,"));
  EXPECT_THAT(r.output, HasSubstr("\"peak_bytes_after\":"));
  EXPECT_THAT(r.output, HasSubstr("\"sets\":[{\"rank\":"));
}

// Note [Partial sets]: at 5 GB/s whole sets stop at 11 GiB; 10.5 GiB takes part of some sets,
// and the output counts them, marks their shares and says which fields move.
TEST(PlanCli, PartialChoicesAreCountedAndNamed) {
  CliResult r =
      run_cli("plan --kind stp --pp 4 -m 16 --pcie-gbps 5 --recompute off --budget 10752MiB");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"fits in 10.50 GiB per rank", " of them partial\n", "\u00b7", "/8",
                             "the first layers' fields"});
  EXPECT_THAT(r.output, Not(HasSubstr("; 0 of them partial"))) << r.output;
  CliResult j = run_cli(
      "plan --kind stp --pp 4 -m 16 --pcie-gbps 5 --recompute off --budget 10752MiB "
      "--format json");
  ASSERT_EQ(j.exit_code, 0) << j.output;
  EXPECT_THAT(j.output, HasSubstr("\"share\":0.5"));
}

TEST(PlanCli, BudgetBelowTheMinimumNamesItInOneLine) {
  CliResult r = run_cli("plan --kind stp --pp 4 --budget 1GiB --recompute off");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(lines(r.output), 1) << r.output;
  EXPECT_THAT(r.output, StartsWith("stp plan: error: budget 1.00 GiB (1073741824 bytes) is below "
                                   "the smallest feasible budget 4.00 GiB (4294967296 bytes)"));
}

TEST(PlanCli, BadArgumentsAreOneLineErrorsWithExitTwo) {
  expect_rejected({
      {"plan --kind nope", "nope"},
      {"plan --pp 0", "--pp=0 must be in [1, 1024]"},
      {"plan --budget lots", "--budget='lots' is not a byte size"},
      {"plan --budget 0", "--budget=0 must be > 0"},
      {"plan --pcie-gbps 0", "--pcie-gbps=0 must be > 0"},
      {"plan --act-bytes 1GiB,2GiB", "--act-bytes has 2 sizes; stp with p=4 has 8 stages"},
      {"plan --sweep 1", "--sweep=1 must be >= 2"},
      {"plan --sweep-svg x.svg", "--sweep-svg needs --sweep N"},
      {"plan --format yaml", "--format=yaml must be text or json"},
      {"plan --kind stp --pp 4 -m 3", "stp"},
      {"plan --tf -1 --budget 8GiB", "--tf=-1 must be a number of seconds >= 0"},
      {"plan --t-ar -0.5", "--tar=-0.5 must be a number of seconds >= 0"},
      {"plan --offload-fraction 2", "--offload-fraction=2 must be in [0, 1]"},
      {"plan --recompute some", "--recompute=some must be off, auto or all"},
      {"plan --recompute-keep 1.5", "--recompute-keep=1.5 must be in [0, 1]"},
      {"plan --recompute-time -1", "--recompute-time=-1 must be a number of forwards >= 0"},
      {"plan --frobnicate", "frobnicate"},
  });
}

TEST(PlanCli, SweepPrintsATableAndWritesTheChart) {
  const std::string svg = ::testing::TempDir() + "/stp_plan_sweep.svg";
  std::remove(svg.c_str());
  CliResult r = run_cli("plan --kind stp --pp 2 --sweep 4 --sweep-svg " + svg);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("budget        feasible  sets  peak"));
  EXPECT_THAT(r.output, HasSubstr("no        (below the minimum"));
  EXPECT_THAT(r.output, HasSubstr("wrote " + svg));
  std::string chart = read_file(svg);
  EXPECT_THAT(chart, HasSubstr("<svg"));
  EXPECT_THAT(chart, HasSubstr("predicted step time (s)"));
}

TEST(PlanCli, SvgDrawsTheTransferRows) {
  const std::string svg = ::testing::TempDir() + "/stp_plan_timeline.svg";
  std::remove(svg.c_str());
  CliResult r = run_cli("plan --kind stp --pp 2 -m 9 --budget 4GiB --svg " + svg);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::string drawing = read_file(svg);
  EXPECT_THAT(drawing, HasSubstr("<svg"));
  EXPECT_THAT(drawing, HasSubstr("#1b9e9e"));  // offload copies
  EXPECT_THAT(drawing, HasSubstr("#7b3294"));  // reload copies
}

TEST(BenchCli, PoolPrintsOneJsonLineWithTheRatio) {
  CliResult r = run_cli("bench pool --bytes 256KiB --batches 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;
  EXPECT_THAT(r.output,
              MatchesRegex("\\{\"bench\":\"pool\",\"bytes\":262144,\"memory\":\"[a-z-]+\","
                           "\"pool_median_ns\":[0-9.]+,.*\"ratio\":[0-9.]+\\}\n"));
}

TEST(BenchCli, CopyPrintsOneJsonLineWithBothBandwidths) {
  CliResult r =
      run_cli("bench copy --backend host --bytes 1MiB --copies 2 --repeats 1 --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;
  EXPECT_THAT(r.output, MatchesRegex("\\{\"bench\":\"copy\",\"backend\":\"host\",\"bytes\":1048576,"
                                     "\"copies\":2,\"threads\":2,\"copy_engine_gbps\":[0-9.]+,"
                                     "\"memcpy_gbps\":[0-9.]+,\"ratio\":[0-9.]+\\}\n"));
}

TEST(BenchCli, BadArgumentsAreOneLineErrors) {
  expect_rejected({
      {"bench copy --bytes 100", "bytes=100 must be >= 4096"},
      {"bench copy --threads 0", "threads=0 must be in [1, 64]"},
      {"bench copy --backend tpu", "--backend=tpu must be host, cuda or auto"},
      {"bench pool --batches 2", "batches=2 must be >= 5"},
      {"bench pool --bytes 0", "bytes=0 must be > 0"},
  });
}

}  // namespace
}  // namespace stp::testing
