// `stp train` on token shards, as the README's "Train on your own tokens" recipe runs it:
// scripts/prepare_data.py turns text into llm.c shards with a BPE tokenizer, `stp train` trains
// on them with two data-parallel ranks, and a run stopped mid-way and resumed ends with exactly
// the losses of the uninterrupted run. Bad shards stop the run with one line naming the file.
// Needs the `tokenizers` package in /opt/stp-venv (scripts/setup.sh installs it).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cli_test_util.h"

#include "tests/support/file_test_util.h"

namespace stp::testing {
namespace {

namespace fs = std::filesystem;

// The README's prepare step (the same arguments), with its output folder under `dir`. The text
// is the repository's own docs and README. Returns the exit code; the output goes to `log`.
int prepare_shards(const std::string& dir, const std::string& log) {
  const std::string src = STP_SOURCE_DIR;
  const std::string cmd = "cd " + src + " && " + kPython +
                          " scripts/prepare_data.py --vocab-size 2048 --val-tokens 4096"
                          " --shard-tokens 20000 --out " +
                          dir + " docs README.md > " + log + " 2>&1";
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Two data-parallel ranks of a model small enough for a CPU test, on the shards in `shards`.
std::string on_shards(const std::string& shards, const std::string& log_dir, int steps) {
  return "--set data.format=llmc --set 'data.path=" + shards +
         "/train_*.bin' --set model.vocab=2048 --set model.d_model=32 --set model.n_heads=2 "
         "--set model.n_layers=2 --set model.seq_len=32 --set parallel.tp=1 --set parallel.pp=1 "
         "--set schedule.kind=1f1b --set schedule.microbatches=2 "
         "--set schedule.micro_batch_size=4 --set offload.budget=off --set run.progress=false "
         "--set run.checkpoint_interval=2 --set run.steps=" +
         std::to_string(steps) + " --set run.log_dir=" + log_dir;
}

// The "step" and "loss" fields of a metrics.jsonl line, as printed (full precision).
std::string step_and_loss(const std::string& line) {
  auto field = [&](const std::string& key) {
    auto p = line.find("\"" + key + "\":");
    auto e = line.find(',', p);
    return line.substr(p + key.size() + 3, e - p - key.size() - 3);
  };
  return field("step") + " " + field("loss");
}

TEST(TrainShards, PreparedShardsTrainAndResumeBitIdentically) {
  const std::string root = fresh_temp_dir("train_shards", "resume");
  const std::string shards = root + "/shards";
  if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found (scripts/setup.sh)";
  if (std::system((std::string(kPython) + " -c 'import tokenizers' 2>/dev/null").c_str()) != 0)
    GTEST_SKIP() << "the tokenizers package is not in " << kPython
                 << " (scripts/setup.sh installs it)";
  ASSERT_EQ(prepare_shards(shards, root + "/prepare.log"), 0)
      << read_lines(root + "/prepare.log")[0];
  ASSERT_TRUE(fs::exists(shards + "/train_000001.bin"));  // at least two training shards

  const int steps = 8;
  CliResult whole = run_cli("run -n 2 -- stp train " + on_shards(shards, root + "/whole", steps));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  EXPECT_NE(whole.output.find("llm.c shards (uint16) matching " + shards + "/train_*.bin"),
            std::string::npos)
      << whole.output;
  const auto want = read_lines(root + "/whole/metrics.jsonl");
  ASSERT_EQ(want.size(), static_cast<std::size_t>(steps));

  // Stopped after 5 steps (the last checkpoint is step 4), then resumed to the end.
  CliResult first = run_cli("run -n 2 -- stp train " + on_shards(shards, root + "/split", steps) +
                            " --stop-after 5");
  ASSERT_EQ(first.exit_code, 0) << first.output;
  CliResult second =
      run_cli("run -n 2 -- stp train " + on_shards(shards, root + "/split", steps) + " --resume");
  ASSERT_EQ(second.exit_code, 0) << second.output;
  EXPECT_NE(second.output.find("resumed from"), std::string::npos) << second.output;
  const auto got = read_lines(root + "/split/metrics.jsonl");
  ASSERT_GE(got.size(), 4u);
  // The resumed run's steps 5..8 are the uninterrupted run's, to the last printed digit.
  for (std::size_t i = 0; i < 4; ++i)
    EXPECT_EQ(step_and_loss(got[got.size() - 4 + i]), step_and_loss(want[steps - 4 + i]));

  // A vocabulary below the shards' ids: one line per shard, each naming it and the setting to
  // raise, before anything is built.
  CliResult small =
      run_cli("train " + on_shards(shards, root + "/small", 1) + " --set model.vocab=300");
  EXPECT_EQ(small.exit_code, 2) << small.output;
  int train_shards = 0;
  for (const auto& e : fs::directory_iterator(shards))
    train_shards += e.path().filename().string().rfind("train_", 0) == 0;
  EXPECT_EQ(lines(small.output), train_shards) << small.output;
  EXPECT_EQ(
      small.output.rfind("stp train: error: shard '" + shards + "/train_000000.bin': token id ", 0),
      0u)
      << small.output;
  EXPECT_NE(small.output.find("\nshard '" + shards + "/train_000001.bin': token id "),
            std::string::npos)
      << small.output;
  EXPECT_NE(small.output.find("raise model.vocab to at least"), std::string::npos) << small.output;
  fs::remove_all(root);
}

TEST(TrainShards, ShardFormatNeedsAPath) {
  expect_rejected("train --set data.format=llmc",
                  "data.format=llmc needs data.path: a shard file, a folder of *.bin shards or a "
                  "glob");
  expect_rejected("train --set data.format=tfrecord",
                  "data.format='tfrecord' must be one of bytes | llmc | nanogpt");
}

}  // namespace
}  // namespace stp::testing
