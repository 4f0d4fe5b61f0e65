// The Llama from the command line: `stp verify --model llama` with its knobs (ranks as threads
// and as processes under `stp run`), `stp train --set model.arch=llama` training and resuming,
// and one line for each bad knob.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "cli_test_util.h"

namespace stp::testing {
namespace {

TEST(LlamaVerifyCli, ReplicatedKvHeadsWithOffloadMatchTheReference) {
  CliResult r = run_cli(
      "verify --model llama --tp 2 --pp 2 --schedule stp --kv-heads 1 --rope-theta 500000 "
      "--offload-budget 80%");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"stp verify: model=llama kv_heads=1 rope_theta=500000 schedule=stp "
                             "tp=2 pp=2 microbatches=4 offload=80% (float64, 5 layers)",
                             "offloaded and reloaded", "\nOK (tolerance 1.0e-09)"});
  EXPECT_EQ(r.output.find(" 0 B offloaded"), std::string::npos) << "the plan offloaded nothing";
}

TEST(LlamaVerifyCli, DefaultKvHeadsTiedEmbeddingsAndProcessesUnderStpRun) {
  CliResult r = run_cli("verify --model llama --tp 2 --pp 1 --schedule zb-h1 --tie-embeddings");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output,
                  {"model=llama kv_heads=4 rope_theta=10000 tied_embeddings schedule=zb-h1",
                   "\nOK (tolerance 1.0e-09)"});
  r = run_cli("run -n 4 -- stp verify --model llama --tp 2 --pp 2 --schedule zb-v --kv-heads 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[r0] OK (tolerance 1.0e-09)"), std::string::npos) << r.output;
}

TEST(LlamaVerifyCli, BadKnobsAreOneLine) {
  expect_rejected({
      {"verify --model bert", "--model='bert' is unknown; use gpt or llama"},
      {"verify --model llama --tp 2 --kv-heads 3",
       "--kv-heads=3 must divide the model's 4*tp=8 query heads (0: half of them)"},
      {"verify --model llama --tp 3 --pp 1 --kv-heads 2",
       "n_kv_heads=2 and tp=3: one must divide the other"},
      {"verify --model llama --rope-theta 0", "--rope-theta=0 must be > 0"},
      {"verify --model llama --tp 1 --pp 2 --schedule 1f1b --tie-embeddings",
       "--tie-embeddings needs one pipeline stage, but pp=2 with schedule 1f1b has 2 (use --pp 1 "
       "with 1f1b or zb-h1)"},
      {"verify --kv-heads 2",
       "--kv-heads, --rope-theta and --tie-embeddings apply to --model llama, not --model gpt"},
  });
}

std::string llama_run(const std::string& log_dir, int steps) {
  return "run -n 2 -- stp train --set model.arch=llama --set model.n_kv_heads=1 "
         "--set model.d_model=32 --set model.n_heads=4 --set model.n_layers=4 "
         "--set model.seq_len=16 --set model.rope_theta=500000 --set schedule.kind=zb-h1 "
         "--set schedule.microbatches=4 --set schedule.micro_batch_size=2 "
         "--set data.corpus_bytes=65536 --set run.progress=false --set run.checkpoint_interval=3 "
         "--set parallel.tp=2 --set parallel.pp=1 --set offload.budget=off --set run.steps=" +
         std::to_string(steps) + " --set run.log_dir=" + log_dir;
}

int count_lines(const std::string& path) {
  std::ifstream in(path);
  int n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

TEST(LlamaTrainCli, TrainsWithReplicatedKvHeadsAndResumes) {
  namespace fs = std::filesystem;
  const std::string dir = (fs::temp_directory_path() / "stp_llama_train_XXXXXX").string();
  std::string d = dir;
  ASSERT_NE(::mkdtemp(d.data()), nullptr);
  CliResult r = run_cli(llama_run(d, 3));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"\"arch\": \"llama\"", "\"n_kv_heads\": 1", "step 3/3"});
  EXPECT_EQ(count_lines(d + "/metrics.jsonl"), 3);
  EXPECT_TRUE(fs::exists(d + "/checkpoints/step_000003/manifest.json")) << r.output;
  r = run_cli(llama_run(d, 5) + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"step 5/5"});
  r = run_cli(llama_run(d, 5) + " --set model.rope_theta=10000 --resume");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("rope_theta"), std::string::npos) << r.output;
  fs::remove_all(d);
}

TEST(LlamaTrainCli, BadLlamaKeysAreOneLine) {
  expect_rejected({
      {"train --set model.arch=bert", "model.arch"},
      {"train --set model.n_kv_heads=2",
       "model.n_kv_heads, model.rope_theta and model.tie_embeddings apply to model.arch=llama, "
       "not model.arch=gpt"},
      {"train --set model.arch=llama --set model.n_kv_heads=3",
       "model.n_kv_heads=3 must divide model.n_heads=4"},
      {"train --set model.arch=llama --set model.d_model=48 --set model.n_heads=12 "
       "--set model.n_kv_heads=2 --set parallel.tp=3",
       "model.n_kv_heads=2 and parallel.tp=3 must divide one another (split over TP when "
       "n_kv_heads >= tp, replicated when fewer)"},
      {"train --set model.arch=llama --set model.tie_embeddings=true",
       "model.tie_embeddings=true needs one pipeline stage, but pp=2 with schedule stp has 4 "
       "(use parallel.pp=1 with 1f1b or zb-h1)"},
      {"train --set model.arch=llama --set model.d_model=96 --set model.n_heads=32",
       "model.d_model/model.n_heads=3 must be even for rotary embeddings"},
  });
}

}  // namespace
}  // namespace stp::testing
