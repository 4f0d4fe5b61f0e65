// Hugging Face GPT-2 in and out (checkpoint/hf.h), tested as a real outside client would use it:
// the `transformers` package (installed by scripts/setup.sh) builds a tiny random
// GPT2LMHeadModel and saves it (tests/checkpoint/hf_gpt2.py); stp imports it at tp 1 and at
// tp 2 x 2 and 4 stages and must give transformers' logits (1e-4 in float32) and loss on the
// same tokens; `stp train` at tp 2 x pp 2 then `stp export --format hf` must give a folder
// that from_pretrained loads with the same logits again. Every refusal names what is wrong.
#include "checkpoint/hf.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "checkpoint/safetensors.h"
#include "hf_test_util.h"
#include "train/train_config.h"

namespace stp::checkpoint {
namespace {

namespace fs = std::filesystem;
using namespace stp::testing;  // TempDir, EmulatedModel, expect_invalid, hf_test_util.h
using nlohmann::json;

void py(const std::string& args, const fs::path& dir) { run_helper("hf_gpt2.py", args, dir); }

// The shape hf_gpt2.py builds, as stp's GPT in float32 (seq_len 20 of its 24 positions).
models::GptConfig tiny_config() {
  models::GptConfig c = make_config(/*vocab=*/67, /*seq=*/20, /*d=*/32, /*heads=*/4, /*layers=*/4);
  c.dtype = at::kFloat;
  return c;
}

// One tiny GPT2LMHeadModel for the whole suite (python starts take seconds).
class HfGpt2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!have_transformers()) return;
    dir_ = new TempDir();
    py("make " + model_dir(), dir_->path);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string model_dir() { return (dir_->path / "gpt2").string(); }
  static TensorMap ref() { return read_safetensors(model_dir() + "/ref.safetensors").tensors; }
  static inline TempDir* dir_ = nullptr;
};

// The forward of `mb` through the grid; logits from the last stage's saved ln_f.xhat.
StpOutput stp_forward(EmulatedModel& m, const engine::MicroBatch& mb) {
  std::vector<std::vector<engine::Chunk*>> grid(m.stages());
  for (int s = 0; s < m.stages(); ++s)
    for (int r = 0; r < m.tp(); ++r) grid[s].push_back(&m.chunk(s, r));
  std::vector<std::vector<engine::ActivationSet>> sets;
  const engine::ActivationSet& set = forward_grid(grid, mb, sets);
  models::GptChunk& last = m.chunk(m.stages() - 1, 0);
  at::Tensor y = set.get("ln_f.xhat") * last.param("ln_f.w").value + last.param("ln_f.b").value;
  return {at::matmul(y, last.param("lm_head.w").value.t()), last.loss(set)};
}

// The grid loaded through HfImport: each (stage, tp rank) copies only its shards.
StpOutput import_and_run(const std::string& dir, int stages, int tp, const TensorMap& ref) {
  const models::GptConfig cfg = tiny_config();
  const HfImport hf = HfImport::gpt2(dir, cfg);
  EmulatedModel m(cfg, stages, tp);
  for (int s = 0; s < stages; ++s)
    for (int r = 0; r < tp; ++r)
      for (engine::Param& p : m.chunk(s, r).params())
        p.value.copy_(hf.shard(p.name, p.shard_dim, r, tp));
  return stp_forward(m, microbatch_of(ref));
}

TEST_F(HfGpt2, ImportGivesTransformersLogitsAndLossAtTp1) {
  REQUIRE_TRANSFORMERS();
  expect_matches(import_and_run(model_dir(), 1, 1, ref()), ref(), "tp 1 x 1 stage");
}

TEST_F(HfGpt2, ImportGivesTransformersLogitsAndLossAtTp2Pp2) {
  REQUIRE_TRANSFORMERS();
  expect_matches(import_and_run(model_dir(), 2, 2, ref()), ref(), "tp 2 x 2 stages");
  // The V-shaped schedules hold 2 chunks per pipeline rank: pp 2 is 4 stages.
  expect_matches(import_and_run(model_dir(), 4, 2, ref()), ref(), "tp 2 x 4 stages");
}

TEST_F(HfGpt2, ImportReadsShardedFoldersWithAnIndex) {
  REQUIRE_TRANSFORMERS();
  TempDir tmp;
  const std::string dir = make_sharded_model("hf_gpt2.py", tmp);
  const TensorMap r = read_safetensors(dir + "/ref.safetensors").tensors;
  expect_matches(import_and_run(dir, 2, 2, r), r, "sharded folder, tp 2 x 2 stages");
}

TEST_F(HfGpt2, ImportViewsTheMappedFileWithoutCopying) {
  REQUIRE_TRANSFORMERS();
  const HfImport hf = HfImport::gpt2(model_dir(), tiny_config());
  // Two views of the same tensor share the mapped bytes: no copy was made per call.
  at::Tensor a = hf.full("layers.2.mlp.fc1.w"), b = hf.full("layers.2.mlp.fc1.w");
  EXPECT_EQ(a.data_ptr(), b.data_ptr());
  EXPECT_FALSE(a.is_contiguous());  // the transposed Conv1D weight, read in place
  // The tied head reads wte's bytes.
  EXPECT_EQ(hf.full("lm_head.w").data_ptr(), hf.full("wte").data_ptr());
}

TEST_F(HfGpt2, ExportRoundTripsThroughTransformers) {
  REQUIRE_TRANSFORMERS();
  // Every parameter random, the head untied from wte: the export writes lm_head.weight.
  const models::GptConfig cfg = tiny_config();
  ParamMap full = random_full_params(cfg, 99);
  TensorMap full32;
  for (auto& [name, t] : full) full32[name] = t.to(at::kFloat).contiguous();
  TempDir tmp;
  const std::string out = (tmp.path / "exported").string();
  EXPECT_EQ(write_gpt2_folder(out, cfg, full32), 2 + 12 * cfg.n_layers + 3);  // lm_head.weight too
  const TensorMap r = ref();
  const TensorMap hf_out = transformers_eval("hf_gpt2.py", out, r, tmp.path);
  EmulatedModel m(cfg, 1, 1);
  m.load(full);
  expect_matches(stp_forward(m, microbatch_of(r)), hf_out, "exported, untied head");
  // And stp imports its own export back.
  expect_matches(import_and_run(out, 2, 2, r), hf_out, "re-imported export");
}

// `stp train` at tp 2 x pp 2 from the folder (learning rate 0: the weights stay as imported),
// then `stp export --format hf` of its 4-rank checkpoint, loaded by from_pretrained.
TEST_F(HfGpt2, TrainAtTp2Pp2ThenExportLoadsInTransformers) {
  REQUIRE_TRANSFORMERS();
  TempDir tmp;
  // nanoGPT token file: headerless uint16 ids below the model's vocabulary.
  std::string bin;
  for (int i = 0; i < 8192; ++i) {
    const auto id = static_cast<std::uint16_t>((i * 31 + i / 7) % 67);
    bin.append(reinterpret_cast<const char*>(&id), 2);
  }
  write_bytes(tmp.path / "tokens.bin", bin);
  const std::string cli = STP_CLI, log = (tmp.path / "run").string();
  run_ok(cli + " run -n 4 -- " + cli + " train --set model.init_from=" + model_dir() +
             " --set model.seq_len=20 --set parallel.tp=2 --set parallel.pp=2" +
             " --set data.format=nanogpt --set data.path=" + (tmp.path / "tokens.bin").string() +
             " --set run.steps=1 --set optimizer.lr=0 --set optimizer.min_lr=0" +
             " --set offload.budget=off --set run.progress=false --set run.log_dir=" + log,
         tmp.path / "train.log");
  EXPECT_NE(read_bytes(tmp.path / "train.log").find("model: initialised from " + model_dir()),
            std::string::npos)
      << read_bytes(tmp.path / "train.log");
  const std::string out = (tmp.path / "hf").string();
  run_ok(cli + " export --format hf --checkpoint " + log + "/checkpoints --out " + out,
         tmp.path / "export.log");
  EXPECT_NE(read_bytes(tmp.path / "export.log").find("from 4 rank shards"), std::string::npos);
  const json config = json::parse(read_bytes(fs::path(out) / "config.json"));
  EXPECT_EQ(config.at("n_positions"), 20);
  EXPECT_EQ(config.at("tie_word_embeddings"), true);  // lr 0: the head is still wte
  const TensorMap r = ref();
  const TensorMap back = transformers_eval("hf_gpt2.py", out, r, tmp.path);
  EXPECT_LE((back.at("logits") - r.at("logits")).abs().max().item<double>(), 1e-4);
  EXPECT_NEAR(back.at("loss").item<double>(), r.at("loss").item<double>(), 1e-5);
}

// ---- refusals: one line naming the file, the field or tensor, expected and found -----------

TEST(HfGpt2Refusal, MissingFolderOrFiles) {
  TempDir tmp;
  expect_invalid([&] { HfImport::gpt2((tmp.path / "nope").string(), tiny_config()); },
                 "nope/config.json: cannot read the model config");
  write_bytes(tmp.path / "config.json",
              R"({"architectures": ["GPT2LMHeadModel"], "vocab_size": 67, "n_positions": 24,
                  "n_embd": 32, "n_head": 4, "n_layer": 4})");
  expect_invalid([&] { HfImport::gpt2(tmp.path.string(), tiny_config()); },
                 "has neither model.safetensors nor model.safetensors.index.json");
  write_bytes(tmp.path / "model.safetensors.index.json",
              R"({"weight_map": {"transformer.wte.weight": "model-00001-of-00002.safetensors"}})");
  expect_invalid([&] { HfImport::gpt2(tmp.path.string(), tiny_config()); },
                 "model-00001-of-00002.safetensors is missing");
}

TEST_F(HfGpt2, RefusesAnotherArchitectureOrAFieldStpLacks) {
  REQUIRE_TRANSFORMERS();
  BreakableModel m(model_dir());
  const std::string d = m.dir();
  auto with = [&](const std::string& key, const json& value) { m.set_config(key, value); };
  with("architectures", json::array({"LlamaForCausalLM"}));
  expect_invalid([&] { HfImport::gpt2(d, tiny_config()); },
                 "architecture 'LlamaForCausalLM' is not supported for stp's GPT");
  with("activation_function", "relu");
  expect_invalid([&] { HfImport::gpt2(d, tiny_config()); },
                 "activation_function=\"relu\" is not supported");
  with("scale_attn_by_inverse_layer_idx", true);
  expect_invalid([&] { HfImport::gpt2(d, tiny_config()); },
                 "scale_attn_by_inverse_layer_idx=true is not supported");
  with("add_cross_attention", true);
  expect_invalid([&] { HfImport::gpt2(d, tiny_config()); },
                 "add_cross_attention=true is not supported");
  with("layer_norm_epsilon", 1e-6);
  expect_invalid([&] { HfImport::gpt2(d, tiny_config()); },
                 "layer_norm_epsilon=1e-06 but stp's GPT uses 1e-05");
  with("activation_function", "gelu_pytorch_tanh");  // the same function: accepted
  EXPECT_EQ(HfImport::gpt2(d, tiny_config()).size(), 2u + 12 * 4 + 3);
}

TEST_F(HfGpt2, RefusesAShapeMismatchNamingTheTensor) {
  REQUIRE_TRANSFORMERS();
  BreakableModel m(model_dir());
  const std::string d = m.dir();
  auto rewrite = [&](const std::function<void(TensorMap&)>& edit) { m.edit_tensors(edit); };
  rewrite([](TensorMap& t) {
    auto& w = t["transformer.h.1.attn.c_attn.weight"];
    w = w.narrow(1, 0, 90).contiguous();
  });
  expect_invalid([&] { HfImport::gpt2(d, tiny_config()); },
                 "tensor 'transformer.h.1.attn.c_attn.weight' has shape [32, 90], expected "
                 "[32, 96]");
  rewrite([](TensorMap& t) { t.erase("transformer.h.3.mlp.c_proj.bias"); });
  expect_invalid([&] { HfImport::gpt2(d, tiny_config()); },
                 "tensor 'transformer.h.3.mlp.c_proj.bias' is missing");
  rewrite([](TensorMap& t) { t["transformer.h.4.ln_1.weight"] = at::ones({32}); });
  expect_invalid([&] { HfImport::gpt2(d, tiny_config()); },
                 "tensor 'transformer.h.4.ln_1.weight' (shape [32]) has no place");
  // stp's model shape differs from config.json's.
  models::GptConfig wide = tiny_config();
  wide.d_model = 64;
  expect_invalid([&] { HfImport::gpt2(model_dir(), wide); },
                 "n_embd=32 but stp's model.d_model=64");
  models::GptConfig longer = tiny_config();
  longer.seq_len = 32;
  expect_invalid([&] { HfImport::gpt2(model_dir(), longer); },
                 "n_positions=24 is shorter than stp's model.seq_len=32");
}

TEST_F(HfGpt2, TrainConfigTakesTheShapeFromConfigJson) {
  REQUIRE_TRANSFORMERS();
  train::TrainConfig c;
  c.model.init_from = model_dir();
  c.model.seq_len = 16;
  train::apply_init_from_shape(c);
  EXPECT_EQ(c.model.vocab, 67);
  EXPECT_EQ(c.model.d_model, 32);
  EXPECT_EQ(c.model.n_heads, 4);
  EXPECT_EQ(c.model.n_layers, 4);
  EXPECT_EQ(c.model.mlp_hidden, 0);
  c.model.seq_len = 64;
  expect_invalid([&] { train::apply_init_from_shape(c); },
                 "model.seq_len=64 is longer than model.init_from's n_positions=24");
}

}  // namespace
}  // namespace stp::checkpoint
