// Checkpoints from the command line and from outside stp: the reader script of
// docs/checkpoints.md (safetensors + numpy, run as written there) reproduces the loss
// `stp train` logs from a tp 2 x dp 2 checkpoint; --resume skips a corrupt newest checkpoint for
// the newest intact one, agreed by every rank, with a warning naming it; --resume-from chooses
// one; the manifest records every rank's (pp, dp, tp) and the optimizer settings; the generated
// corpus's seed is a config key a resumed run must keep.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "cli_test_util.h"

#include "tests/support/file_test_util.h"

namespace stp::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A GPT small enough for a CPU test on one rank (later --set flags override the layout),
// checkpoints every 2 steps, kept 3.
std::string tiny(const std::string& log_dir, int steps) {
  std::ostringstream os;
  os << "--set model.d_model=32 --set model.n_heads=2 --set model.n_layers=2 "
     << "--set model.seq_len=16 --set schedule.kind=1f1b --set schedule.microbatches=2 "
     << "--set schedule.micro_batch_size=2 --set data.corpus_bytes=65536 "
     << "--set run.progress=false --set run.checkpoint_interval=2 --set run.keep_checkpoints=3 "
     << "--set offload.budget=off --set parallel.tp=1 --set parallel.pp=1 --set run.steps=" << steps
     << " --set run.log_dir=" << log_dir;
  return os.str();
}

// The loss metrics.jsonl logs for `step` (the last such line: a resumed run logs it again).
double loss_at(const std::string& log_dir, int step) {
  std::ifstream in(log_dir + "/metrics.jsonl");
  std::optional<double> loss;
  for (std::string line; std::getline(in, line);)
    if (const json j = json::parse(line); j.at("step") == step) loss = j.at("loss").get<double>();
  if (loss) return *loss;
  ADD_FAILURE() << "no step " << step << " in " << log_dir << "/metrics.jsonl";
  return 0;
}

void flip_byte(const std::string& file) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(fs::file_size(file) - 3));
  const char c = static_cast<char>(f.get());
  f.seekp(static_cast<std::streamoff>(fs::file_size(file) - 3));
  f.put(static_cast<char>(c ^ 0x5a));
}

// The python block after "the test extracts and runs the next code block" in the doc.
std::string reader_script() {
  const std::string doc = read_bytes(fs::path(STP_SOURCE_DIR) / "docs" / "checkpoints.md");
  const std::size_t marker = doc.find("the test extracts and runs the next code block");
  EXPECT_NE(marker, std::string::npos);
  const std::size_t open = doc.find("```python\n", marker);
  const std::size_t close = doc.find("\n```", open + 10);
  EXPECT_TRUE(open != std::string::npos && close != std::string::npos);
  return doc.substr(open + 10, close - open - 10 + 1);
}

TEST(CheckpointReader, TheDocsScriptReproducesTheLoggedLossAtTp2Dp2) {
  if (!fs::exists(kPython) ||
      std::system(
          (std::string(kPython) + " -c 'import numpy, safetensors' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << kPython << " with numpy and safetensors is missing (scripts/setup.sh)";
  const std::string dir = fresh_temp_dir("checkpoint_cli", "reader");
  std::string text;  // a text file the byte tokenizer reads, a few hundred windows
  for (int i = 0; i < 400; ++i) text += "line " + std::to_string(i * 7919 % 1000) + " of text\n";
  write_bytes(fs::path(dir) / "data.txt", text);
  const std::string log = dir + "/run";
  // float64: the engine and numpy agree to rounding. tp 2 x dp 2: the rank order matters.
  CliResult r = run_cli("run -n 4 -- stp train " + tiny(log, 3) +
                        " --set parallel.tp=2 --set parallel.pp=1 --set model.dtype=float64" +
                        " --set data.path=" + dir + "/data.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json manifest =
      json::parse(read_bytes(fs::path(log) / "checkpoints" / "step_000002" / "manifest.json"));
  // Every rank's place, and the optimizer settings in extra.
  ASSERT_EQ(manifest.at("files").size(), 4u);
  for (int rank = 0; rank < 4; ++rank) {
    const json& f = manifest.at("files")[rank];
    EXPECT_EQ(f.at("pp"), 0);
    EXPECT_EQ(f.at("dp"), rank / 2) << f.dump();
    EXPECT_EQ(f.at("tp"), rank % 2) << f.dump();
  }
  EXPECT_EQ(manifest.at("extra").at("optimizer").at("beta2"), 0.95);
  EXPECT_EQ(manifest.at("extra").at("schedule").at("micro_batch_size"), 2);
  write_bytes(fs::path(dir) / "reader.py", reader_script());
  const std::string cmd = std::string(kPython) + " " + dir + "/reader.py " + log +
                          "/checkpoints/step_000002 " + dir + "/data.txt > " + dir +
                          "/reader.log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_bytes(fs::path(dir) / "reader.log");
  const std::string out = read_bytes(fs::path(dir) / "reader.log");
  ASSERT_EQ(out.rfind("step 3 loss ", 0), 0u) << out;
  const double reproduced = std::stod(out.substr(12));
  EXPECT_NEAR(reproduced, loss_at(log, 3), 1e-9) << out;
  fs::remove_all(dir);
}

TEST(CheckpointResume, ACorruptNewestCheckpointIsSkippedByEveryRank) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "skip");
  const std::string whole = dir + "/whole", cut = dir + "/cut";
  // Two ranks (pp 2): the corrupt shard is rank 1's, so rank 0 alone would not see it.
  const std::string layout = " --set parallel.tp=1 --set parallel.pp=2";
  CliResult r = run_cli("run -n 2 -- stp train " + tiny(whole, 6) + layout);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The same run stopped during step 5, after the step-4 checkpoint.
  r = run_cli("run -n 2 -- stp train " + tiny(cut, 6) + layout + " --stop-after 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string newest = cut + "/checkpoints/step_000004";
  flip_byte(newest + "/rank_00001.safetensors");
  r = run_cli("run -n 2 -- stp train " + tiny(cut, 6) + layout + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output,
                  {"[r0] warning: --resume skipped " + newest +
                       ": rank_00001.safetensors checksum mismatch: file or manifest corrupt",
                   "[r0] resumed from " + cut + "/checkpoints/step_000002 (step 2)"});
  // From step 2 on, the very losses of the uninterrupted run.
  EXPECT_EQ(loss_at(cut, 6), loss_at(whole, 6));
  fs::remove_all(dir);
}

TEST(CheckpointResume, ResumeFromChoosesACheckpointAndRefusesOneThatIsNot) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "from");
  CliResult r = run_cli("train " + tiny(dir, 4));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string older = dir + "/checkpoints/step_000002";
  r = run_cli("train " + tiny(dir, 4) + " --resume-from " + older);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from " + older + " (step 2)"), std::string::npos) << r.output;
  // Not a checkpoint; a corrupt one is not skipped when chosen.
  expect_rejected("train " + tiny(dir, 4) + " --resume-from " + dir,
                  dir + "/manifest.json does not exist (not a complete checkpoint)");
  flip_byte(older + "/rank_00000.safetensors");
  expect_rejected("train " + tiny(dir, 4) + " --resume-from " + older,
                  "rank_00000.safetensors checksum mismatch: file or manifest corrupt");
  // Every checkpoint corrupt: --resume says so, in one line.
  flip_byte(dir + "/checkpoints/step_000004/rank_00000.safetensors");
  expect_rejected("train " + tiny(dir, 4) + " --resume",
                  "--resume: no intact checkpoint in " + dir +
                      "/checkpoints (all 2 are corrupt; the newest: rank_00000.safetensors "
                      "checksum mismatch: file or manifest corrupt");
  fs::remove_all(dir);
}

TEST(CheckpointResume, CorpusSeedIsAKeyAResumedRunMustKeep) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "corpus_seed");
  CliResult r = run_cli("train " + tiny(dir, 2) + " --set data.corpus_seed=7");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("generated corpus (65536 bytes, seed 7)"), std::string::npos) << r.output;
  expect_rejected("train " + tiny(dir, 4) + " --set data.corpus_seed=8 --resume",
                  "data.corpus_seed=7 in checkpoint, 8 in this run");
  r = run_cli("train " + tiny(dir, 4) + " --set data.corpus_seed=7 --resume");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(step 2)"), std::string::npos) << r.output;
  expect_rejected("train --set data.corpus_seed=-1",
                  "data.corpus_seed=-1 is out of range [0, inf]");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace stp::testing
