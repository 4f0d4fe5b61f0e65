// `stp bench train` and `stp bench budget` through the built binary: a tiny run prints the table
// and writes its files, as threads and under `stp run`; bad arguments get one line and exit 2.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "cli_test_util.h"

#include "tests/support/file_test_util.h"

namespace stp::testing {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) { return fresh_temp_dir("bench_cli", name); }

// `stp <command>` on a GPT small enough for a CPU test (a few milliseconds a step), one measured
// step, writing into `dir`.
CliResult run_tiny(const std::string& command, const std::string& dir) {
  return run_cli(command +
                 " --set model.d_model=32 --set model.n_heads=2 --set model.n_layers=4"
                 " --set model.seq_len=16 --set schedule.microbatches=4"
                 " --set schedule.micro_batch_size=2 --set data.corpus_bytes=65536"
                 " --warmup 0 --steps 1 --out " +
                 dir);
}

// run_tiny(command) in a fresh folder `name`: exits 0, prints every one of `needles`, writes
// results.json and each of `files` there; the folder is removed afterwards.
void expect_tiny_run_writes(const std::string& name, const std::string& command,
                            const std::vector<std::string>& needles,
                            const std::vector<std::string>& files) {
  const std::string dir = temp_dir(name);
  CliResult r = run_tiny(command, dir);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, needles);
  EXPECT_TRUE(fs::exists(dir + "/results.json")) << r.output;
  for (const std::string& f : files)
    EXPECT_TRUE(fs::exists(dir + "/" + f)) << f << "\n" << r.output;
  fs::remove_all(dir);
}

TEST(BenchTrainCli, TinyRunPrintsTheTableAndWritesResults) {
  expect_tiny_run_writes("train", "bench train --kinds 1f1b-i --budget 70%",
                         {"kind    offload     budget     tok/s  ratio", "\n1f1b-i  off",
                          "\n1f1b-i  70%", "4 ranks as threads"},
                         {"runs/1f1b-i-on/timeline.svg"});
}

TEST(BenchTrainCli, RanksAsProcessesUnderStpRun) {
  expect_tiny_run_writes("launched", "run -n 4 -- stp bench train --kinds zb-v --budget 90%",
                         {"4 ranks as processes", "[r0] zb-v    90%"}, {});
}

TEST(BenchBudgetCli, SweepEndsAtTheSmallestFeasibleBudget) {
  expect_tiny_run_writes("budget", "bench budget --budgets 100% --set schedule.kind=1f1b-i",
                         {"\n100%", "<- smallest feasible"}, {"budget.svg"});
}

TEST(BenchEngineCli, BadArgumentsAreOneLineAndExit2) {
  expect_rejected("bench train --steps 0", "stp bench train: error: --steps");
  expect_rejected("bench train --kinds 1f1b-i,gpipe", "gpipe");

  CliResult r = run_cli("bench budget --budgets 80%,off");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.output,
            "stp bench budget: error: budget 'off' must be a size or a percentage for a budget "
            "sweep, not off\n");

  r = run_cli("bench budget --set model.layers=3");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(lines(r.output), 1) << r.output;
}

}  // namespace
}  // namespace stp::testing
