// `stp train` end to end through the built binary: bad configs and checkpoints get one line
// each; a run whose rank is killed mid-run and resumed ends with exactly the loss of a run that
// was never interrupted.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli_test_util.h"

#include "tests/support/file_test_util.h"

namespace stp::testing {
namespace {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) { return fresh_temp_dir("train_test", name); }

// A model and data small enough for a CPU test (tens of milliseconds a step).
std::string tiny(const std::string& log_dir, int tp, int pp, int steps) {
  std::ostringstream os;
  os << "--set model.d_model=32 --set model.n_heads=2 --set model.n_layers=4 "
     << "--set model.seq_len=16 --set schedule.microbatches=4 --set schedule.micro_batch_size=2 "
     << "--set data.corpus_bytes=65536 --set run.progress=false --set run.checkpoint_interval=2 "
     << "--set parallel.tp=" << tp << " --set parallel.pp=" << pp << " --set run.steps=" << steps
     << " --set run.log_dir=" << log_dir << " --set offload.budget=off";
  return os.str();
}

// The "loss" field of a metrics.jsonl line, as printed (full precision).
std::string loss_of(const std::string& line) {
  auto p = line.find("\"loss\":");
  auto e = line.find(',', p);
  return line.substr(p + 7, e - p - 7);
}

int lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

TEST(TrainCli, UnknownKeyIsOneLine) {
  CliResult r = run_cli("train --set model.layers=3");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.output,
            "stp train: error: --set: unknown key 'model.layers' (model has: arch, vocab, "
            "seq_len, d_model, n_heads, n_layers, mlp_hidden, n_kv_heads, rope_theta, "
            "rms_eps, tie_embeddings, dtype, init_seed, init_from)\n");
}

TEST(TrainCli, OutOfRangeAndBadFileAreOneLineEach) {
  CliResult r = run_cli("train --set schedule.microbatches=0");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.output,
            "stp train: error: --set schedule.microbatches=0 is out of range [1, 65536]\n");
  std::string dir = temp_dir("badfile");
  std::ofstream(dir + "/c.json") << R"({"run": {"steps": -4}})";
  r = run_cli("train --config " + dir + "/c.json");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.output,
            "stp train: error: " + dir + "/c.json: run.steps=-4 is out of range [1, inf]\n");
  r = run_cli("train --config " + dir + "/missing.json");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(lines(r.output), 1) << r.output;
  fs::remove_all(dir);
}

TEST(TrainCli, TooFewRanksSaysHowToLaunch) {
  CliResult r = run_cli("train");  // the default needs tp 2 x pp 2
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.output,
            "stp train: error: tp=2 x pp=2 needs a multiple of 4 ranks but this job has 1; launch "
            "it with `stp run -n 4 -- stp train ...`\n");
}

TEST(TrainCli, CorruptAndMismatchedCheckpointsAreRefused) {
  std::string dir = temp_dir("ckpt");
  CliResult r =
      run_cli("train " + tiny(dir, 1, 1, 2).replace(0, 0, "") + " --set schedule.kind=1f1b");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(fs::exists(dir + "/checkpoints/step_000002/manifest.json")) << r.output;
  // Another layout (the 4-layer model split over 2 stages) is not refused: it reshards (one step,
  // no new checkpoint; tests/apps/checkpoint_cli_engine_test.cpp tests what it continues with).
  r = run_cli("run -n 2 -- stp train " + tiny(dir, 1, 2, 4) +
              " --set schedule.kind=1f1b --resume --stop-after 1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("saved as tp=1 pp=1 dp=1 into tp=1 pp=2 dp=1: resharding on load"),
            std::string::npos)
      << r.output;
  // Another model.
  r = run_cli("train " + tiny(dir, 1, 1, 4) +
              " --set schedule.kind=1f1b --set model.n_layers=5 --resume");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("model.n_layers=4 in checkpoint, 5 in this run"), std::string::npos)
      << r.output;
  // A flipped byte in the shard.
  std::string shard = dir + "/checkpoints/step_000002/rank_00000.safetensors";
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(fs::file_size(shard) - 3));
    f.put('\x5a');
  }
  r = run_cli("train " + tiny(dir, 1, 1, 4) + " --set schedule.kind=1f1b --resume");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("checksum"), std::string::npos) << r.output;
  EXPECT_EQ(lines(r.output), 1) << r.output;
  fs::remove_all(dir);
}

// Kill one rank mid-run with SIGKILL; the launcher stops the others; --resume continues from the
// newest complete checkpoint and ends with the very loss of an uninterrupted run.
TEST(TrainCli, KilledRankThenResumeGivesTheUninterruptedLoss) {
  std::string a = temp_dir("whole"), b = temp_dir("killed");
  const int steps = 8;
  CliResult whole = run_cli("run -n 2 -- stp train " + tiny(a, 1, 2, steps));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  auto want = read_lines(a + "/metrics.jsonl");
  ASSERT_EQ(want.size(), static_cast<std::size_t>(steps));

  // The same run, with rank 1 SIGKILLing itself during step 5 (after the step-4 checkpoint):
  // STP_FAULT_KILL_AT_STEP is the engine's fault-injection knob for exactly this test.
  CliResult killed =
      run_cli(std::string("run -n 2 -- env STP_FAULT_KILL_AT_STEP=5 STP_FAULT_KILL_RANK=1 ") +
              STP_CLI + " train " + tiny(b, 1, 2, steps));
  EXPECT_NE(killed.exit_code, 0) << killed.output;
  EXPECT_NE(killed.output.find("stp run: rank 1 killed by signal 9"), std::string::npos)
      << killed.output;
  ASSERT_TRUE(fs::exists(b + "/checkpoints/step_000004/manifest.json")) << killed.output;
  EXPECT_FALSE(fs::exists(b + "/checkpoints/step_000006")) << killed.output;

  CliResult resumed = run_cli("run -n 2 -- stp train " + tiny(b, 1, 2, steps) + " --resume");
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resumed from"), std::string::npos) << resumed.output;
  auto got = read_lines(b + "/metrics.jsonl");
  ASSERT_GE(got.size(), static_cast<std::size_t>(steps));
  EXPECT_EQ(loss_of(got.back()), loss_of(want.back())) << got.back() << "\n" << want.back();
  fs::remove_all(a);
  fs::remove_all(b);
}

// run.threads: applied on CPU runs and logged by rank 0 with where the number came from. ctest
// sets OMP_NUM_THREADS=1, which the default honours; without it, `stp run`'s own
// OMP_NUM_THREADS=1 is not taken for the user's: the cores are divided among the local ranks.
TEST(TrainCli, ThreadsComeFromRunThreadsThenOmpNumThreadsThenTheCores) {
  std::string dir = temp_dir("threads");
  CliResult r = run_cli("train " + tiny(dir + "/a", 1, 1, 1) +
                        " --set schedule.kind=1f1b --set run.threads=3");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("cpu threads: 3 per rank (run.threads)\n"), std::string::npos)
      << r.output;

  const char* old = std::getenv("OMP_NUM_THREADS");
  std::string saved = old ? old : "";
  setenv("OMP_NUM_THREADS", "2", 1);
  r = run_cli("train " + tiny(dir + "/b", 1, 1, 1) + " --set schedule.kind=1f1b");
  EXPECT_NE(r.output.find("cpu threads: 2 per rank (OMP_NUM_THREADS)\n"), std::string::npos)
      << r.output;
  unsetenv("OMP_NUM_THREADS");
  r = run_cli("run -n 2 -- stp train " + tiny(dir + "/c", 1, 2, 1) + " --set schedule.kind=1f1b");
  if (old) setenv("OMP_NUM_THREADS", saved.c_str(), 1);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(" local ranks)\n"), std::string::npos) << r.output;

  r = run_cli("train --set run.threads=-1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output, "stp train: error: --set run.threads=-1 is out of range [0, 1024]\n");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace stp::testing
