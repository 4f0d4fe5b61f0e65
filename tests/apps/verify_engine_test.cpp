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

// Every set recomputed in its backward (Note [Recompute] in schedule/program.h), whole or the
// leading half of each chunk's layers (Note [Partial sets]), still matches the float64
// reference, for every schedule family, also with the smaller sets offloaded; and the measured
// peak falls.
TEST(VerifyCli, RecomputeAllMatchesTheReferenceOnEverySchedule) {
  for (const char* share : {"", " --recompute-share 0.5"}) {
    for (const char* kind : {"stp", "zb-v", "1f1b-i", "1f1b"}) {
      const std::string base = std::string("verify --tp 2 --pp 2 --schedule ") + kind;
      CliResult r = run_cli(base + " --recompute all" + share);
      EXPECT_EQ(r.exit_code, 0) << r.output;
      const std::string line = std::string(" offload=off recompute=all") +
                               (*share != 0 ? " share=0.5" : "") + " (float64";
      EXPECT_NE(r.output.find(line), std::string::npos) << r.output;
      EXPECT_NE(r.output.find("\nOK (tolerance 1.0e-09)"), std::string::npos) << r.output;
    }
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
  r = run_cli("verify --tp 1 --pp 1 --schedule 1f1b --recompute all --recompute-share 1.5");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output, "stp verify: error: --recompute-share=1.5 is out of range (0, 1]\n");
  r = run_cli("verify --tp 1 --pp 1 --schedule 1f1b --recompute all --recompute-share 0");
  EXPECT_EQ(r.output, "stp verify: error: --recompute-share=0 is out of range (0, 1]\n");
  r = run_cli("verify --tp 1 --pp 1 --schedule 1f1b --recompute-share 0.5");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output,
            "stp verify: error: --recompute-share=0.5 needs --recompute all (got --recompute "
            "auto)\n");
}

}  // namespace
}  // namespace stp::testing
