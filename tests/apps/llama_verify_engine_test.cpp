// `stp verify --model llama`: the Llama knobs from the command line, ranks as threads and as
// processes under `stp run`, and one line for each bad knob.
#include <gtest/gtest.h>

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

}  // namespace
}  // namespace stp::testing
