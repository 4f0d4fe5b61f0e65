// `stp verify`: ranks as threads, and real processes under `stp run`.
#include <gtest/gtest.h>

#include "cli_test_util.h"

namespace stp::testing {
namespace {

TEST(VerifyCli, ThreadsMatchTheReference) {
  CliResult r = run_cli("verify --tp 2 --pp 2 --schedule zb-v");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\nOK (tolerance 1.0e-09)"), std::string::npos) << r.output;
}

TEST(VerifyCli, FourProcessesUnderStpRunWithOffload) {
  CliResult r = run_cli(
      "run -n 4 -- stp verify --tp 2 --pp 2 --schedule stp --microbatches 8 "
      "--offload-budget 90%");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[r0] OK (tolerance 1.0e-09)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("offloaded and reloaded"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(" 0 B offloaded"), std::string::npos) << "the plan offloaded nothing";
}

TEST(VerifyCli, WrongWorldSizeAndBadBudgetAreOneLine) {
  CliResult r = run_cli("run -n 2 -- stp verify --tp 2 --pp 2");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(
      r.output.find("stp verify runs with world size tp*pp=4 but the launcher started 2 ranks"),
      std::string::npos)
      << r.output;
  r = run_cli("verify --tp 1 --pp 2 --offload-budget lots");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("offload budget 'lots' is not a positive size"), std::string::npos)
      << r.output;
}

// Issue 11: the default microbatch count is one every schedule takes for every p; with pp=3,
// 1f1b-i needs a multiple of 3 (6), not the 4 it used to get.
TEST(VerifyCli, TheDefaultMicrobatchesSuitInterleavedWithThreeStages) {
  CliResult r = run_cli("verify --tp 1 --pp 3 --schedule 1f1b-i");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("schedule=1f1b-i tp=1 pp=3 microbatches=6 "), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("\nOK (tolerance 1.0e-09)"), std::string::npos) << r.output;
}

TEST(VerifyCli, ThreadsIsCheckedAndUsed) {
  CliResult r = run_cli("verify --tp 1 --pp 1 --schedule 1f1b --threads -1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output,
            "stp verify: error: --threads=-1 is out of range [0, 1024] (0: OMP_NUM_THREADS if set, "
            "else the cores / the ranks)\n");
  r = run_cli("verify --tp 1 --pp 2 --schedule zb-h1 --threads 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\nOK (tolerance 1.0e-09)"), std::string::npos) << r.output;
}

// Every set recomputed in its backward (Note [Recompute] in schedule/program.h) still matches
// the float64 reference, for every schedule family, also with the smaller sets offloaded; and
// the measured peak falls.
TEST(VerifyCli, RecomputeAllMatchesTheReferenceOnEverySchedule) {
  for (const char* kind : {"stp", "zb-v", "1f1b-i", "1f1b"}) {
    const std::string base = std::string("verify --tp 2 --pp 2 --schedule ") + kind;
    CliResult r = run_cli(base + " --recompute all");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(" offload=off recompute=all (float64"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\nOK (tolerance 1.0e-09)"), std::string::npos) << r.output;
  }
  CliResult r = run_cli("verify --tp 2 --pp 2 --schedule stp --recompute all --offload-budget 85%");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\nOK (tolerance 1.0e-09)"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(" 0 B offloaded"), std::string::npos) << "the plan offloaded nothing";
  r = run_cli("verify --tp 1 --pp 2 --schedule zb-v --model llama --kv-heads 1 --recompute all");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("\nOK (tolerance 1.0e-09)"), std::string::npos) << r.output;
}

TEST(VerifyCli, BadRecomputeIsOneLine) {
  CliResult r = run_cli("verify --tp 1 --pp 1 --schedule 1f1b --recompute some");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output, "stp verify: error: --recompute='some' is unknown; use auto, off or all\n");
}

}  // namespace
}  // namespace stp::testing
