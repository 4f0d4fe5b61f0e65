// Hugging Face Llama in and out (checkpoint/hf.h), tested as a real outside client would use it:
// the `transformers` package builds a tiny random LlamaForCausalLM with grouped-query attention
// (4 heads, 2 key/value heads, rope_theta 5000, rms_norm_eps 1e-6: transformers' default, not
// stp's 1e-5), tied and untied, and saves it
// (tests/checkpoint/hf_llama.py); stp imports it at tp 1, at tp 2 x 2 and 4 stages (key/value
// heads split) and at tp 4 (replicated) and must give transformers' logits (1e-4 in float32)
// and loss on the same tokens; an export is loaded by from_pretrained with the same logits;
// `stp train` at tp 2 x pp 2 from the folder, then `stp export --format hf`, round-trips.
// Every refusal names the key or tensor, the expected and the found value.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>

#include "checkpoint/hf.h"
#include "checkpoint/safetensors.h"
#include "hf_test_util.h"
#include "models/llama.h"
#include "models/llama_params.h"
#include "train/train_config.h"

namespace stp::checkpoint {
namespace {

namespace fs = std::filesystem;
using namespace stp::testing;  // TempDir, expect_invalid, hf_test_util.h
using nlohmann::json;

void py(const std::string& args, const fs::path& dir) { run_helper("hf_llama.py", args, dir); }

// The shape hf_llama.py builds, as stp's Llama in float32 (seq_len 20 of its 32 positions).
models::LlamaConfig tiny_config(bool tied) {
  return {.vocab = 61,
          .seq_len = 20,
          .d_model = 32,
          .n_layers = 4,
          .n_heads = 4,
          .n_kv_heads = 2,
          .ffn_hidden = 48,
          .rope_theta = 5000,
          .rms_eps = 1e-6,
          .tie_embeddings = tied,
          .dtype = at::kFloat};
}

// A stages x tp grid of LlamaChunks, each parameter copied from `load(name, shard_dim, rank)`,
// run forward on `mb`: logits from the last stage's saved ln_f.xhat and the head.
StpOutput llama_forward(const models::LlamaConfig& cfg, int stages, int tp,
                        const std::function<at::Tensor(const std::string&, int, int)>& load,
                        const engine::MicroBatch& mb) {
  std::vector<std::vector<std::unique_ptr<models::LlamaChunk>>> chunks(stages);
  std::vector<std::vector<engine::Chunk*>> grid(stages);
  for (int s = 0; s < stages; ++s) {
    for (int r = 0; r < tp; ++r) {
      chunks[s].push_back(std::make_unique<models::LlamaChunk>(cfg, s, stages, r, tp));
      for (engine::Param& p : chunks[s].back()->params())
        p.value.copy_(load(p.name, p.shard_dim, r));
      grid[s].push_back(chunks[s].back().get());
    }
  }
  std::vector<std::vector<engine::ActivationSet>> sets;
  const engine::ActivationSet& set = forward_grid(grid, mb, sets);
  models::LlamaChunk& last = *chunks.back()[0];
  const at::Tensor y = set.get("ln_f.xhat") * last.param("ln_f.w").value;
  const at::Tensor head =
      cfg.tie_embeddings ? last.param("wte").value : last.param("lm_head.w").value;
  return {at::matmul(y, head.t()), last.loss(set)};
}

StpOutput import_and_run(const std::string& dir, const models::LlamaConfig& cfg, int stages, int tp,
                         const TensorMap& ref) {
  const HfImport hf = HfImport::llama(dir, cfg);
  return llama_forward(
      cfg, stages, tp,
      [&](const std::string& name, int dim, int rank) { return hf.shard(name, dim, rank, tp); },
      microbatch_of(ref));
}

// One tiny LlamaForCausalLM of each kind for the whole suite (python starts take seconds).
class HfLlama : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!have_transformers()) return;
    dir_ = new TempDir();
    py("make " + model_dir(false), dir_->path);
    py("make " + model_dir(true) + " --tied", dir_->path);
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static std::string model_dir(bool tied) {
    return (dir_->path / (tied ? "tied" : "untied")).string();
  }
  static TensorMap ref(bool tied) {
    return read_safetensors(model_dir(tied) + "/ref.safetensors").tensors;
  }
  static inline TempDir* dir_ = nullptr;
};

// A tied or untied file into stp's Llama (tied or not) on a stages x tp grid.
struct ImportCase {
  bool file_tied, stp_tied;
  int stages, tp;
  const char* what;
};

void expect_imports(const std::vector<ImportCase>& cases, const std::string& untied_dir,
                    const std::string& tied_dir) {
  for (const ImportCase& c : cases) {
    const std::string dir = c.file_tied ? tied_dir : untied_dir;
    const TensorMap r = read_safetensors(dir + "/ref.safetensors").tensors;
    expect_matches(import_and_run(dir, tiny_config(c.stp_tied), c.stages, c.tp, r), r, c.what);
  }
}

TEST_F(HfLlama, ImportGivesTransformersLogitsAndLossAtTp1) {
  REQUIRE_TRANSFORMERS();
  expect_imports({{false, false, 1, 1, "untied, tp 1"}, {true, true, 1, 1, "tied, tp 1"}},
                 model_dir(false), model_dir(true));
}

TEST_F(HfLlama, ImportGivesTransformersLogitsAndLossAtTp2Pp2) {
  REQUIRE_TRANSFORMERS();
  // 2 key/value heads over tp 2: split, one per rank. The V-shaped schedules hold 2 chunks per
  // pipeline rank: pp 2 is 4 stages. A tied file into an untied multi-stage model: the head
  // starts as the embedding.
  expect_imports({{false, false, 2, 2, "untied, tp 2 x 2 stages"},
                  {false, false, 4, 2, "untied, tp 2 x 4 stages"},
                  {true, false, 4, 2, "tied file, untied stp, tp 2 x 4 stages"},
                  {true, true, 1, 2, "tied, tp 2"}},
                 model_dir(false), model_dir(true));
}

TEST_F(HfLlama, ImportReplicatesKeyValueHeadsAtTp4) {
  REQUIRE_TRANSFORMERS();
  // 2 key/value heads over tp 4: every rank holds both (Note [Llama key/value heads]).
  expect_imports({{false, false, 2, 4, "untied, tp 4 x 2 stages"}}, model_dir(false),
                 model_dir(true));
}

TEST_F(HfLlama, ImportReadsShardedFoldersWithAnIndex) {
  REQUIRE_TRANSFORMERS();
  TempDir tmp;
  const std::string dir = make_sharded_model("hf_llama.py", tmp);
  const TensorMap r = read_safetensors(dir + "/ref.safetensors").tensors;
  expect_matches(import_and_run(dir, tiny_config(false), 2, 2, r), r, "sharded, tp 2 x 2 stages");
}

TEST_F(HfLlama, ImportStacksOnlyTheRanksSlice) {
  REQUIRE_TRANSFORMERS();
  const HfImport hf = HfImport::llama(model_dir(false), tiny_config(false));
  const TensorMap file = read_safetensors(model_dir(false) + "/model.safetensors").tensors;
  // attn.kv.w (2, NKV*hd, C) = [k_proj; v_proj]; tp rank 1 of 2 holds key/value head 1 of each.
  const at::Tensor kv = hf.shard("layers.1.attn.kv.w", 1, 1, 2);
  EXPECT_EQ(kv.sizes(), (std::vector<std::int64_t>{2, 8, 32}));
  EXPECT_TRUE(at::equal(kv[0], file.at("model.layers.1.self_attn.k_proj.weight").narrow(0, 8, 8)));
  EXPECT_TRUE(at::equal(kv[1], file.at("model.layers.1.self_attn.v_proj.weight").narrow(0, 8, 8)));
  const at::Tensor gu = hf.full("layers.3.mlp.gate_up.w");
  EXPECT_TRUE(at::equal(gu[0], file.at("model.layers.3.mlp.gate_proj.weight")));
  EXPECT_TRUE(at::equal(gu[1], file.at("model.layers.3.mlp.up_proj.weight")));
  // Unstacked rows are views of the mapped bytes: no copy per call.
  EXPECT_EQ(hf.full("layers.0.attn.q.w").data_ptr(), hf.full("layers.0.attn.q.w").data_ptr());
}

TEST_F(HfLlama, ExportRoundTripsThroughTransformers) {
  REQUIRE_TRANSFORMERS();
  for (bool tied : {false, true}) {
    // Every parameter random (not the init: RMSNorm weights away from 1).
    const models::LlamaConfig cfg = tiny_config(tied);
    TensorMap full;
    std::uint64_t seed = 5;
    for (const models::ParamSpec& spec : models::llama_param_specs(cfg)) {
      at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed++);
      at::Tensor t = at::randn(spec.full_shape, g, at::kFloat) * 0.2;
      full[spec.name] =
          spec.name.ends_with(".ln1.w") || spec.name.ends_with(".ln2.w") || spec.name == "ln_f.w"
              ? t + 1
              : t;
    }
    TempDir tmp;
    const std::string out = (tmp.path / "exported").string();
    EXPECT_EQ(write_llama_folder(out, cfg, full), 1 + 9 * cfg.n_layers + 1 + (tied ? 0 : 1));
    const json config = json::parse(read_bytes(fs::path(out) / "config.json"));
    EXPECT_EQ(config.at("tie_word_embeddings"), tied);
    EXPECT_EQ(config.at("num_key_value_heads"), 2);
    const TensorMap r = ref(false);
    const TensorMap hf_out = transformers_eval("hf_llama.py", out, r, tmp.path);
    const std::string what = tied ? "exported tied" : "exported untied";
    expect_matches(llama_forward(
                       cfg, 1, 1, [&](const std::string& name, int, int) { return full.at(name); },
                       microbatch_of(r)),
                   hf_out, what);
    // And stp imports its own export back, at tp 2.
    expect_matches(import_and_run(out, cfg, tied ? 1 : 2, 2, r), hf_out, what + ", re-imported");
  }
}

// `stp train` at tp 2 x pp 2 from the folder (learning rate 0: the weights stay as imported),
// then `stp export --format hf` of its 4-rank checkpoint, loaded by from_pretrained.
TEST_F(HfLlama, TrainAtTp2Pp2ThenExportLoadsInTransformers) {
  REQUIRE_TRANSFORMERS();
  TempDir tmp;
  std::string bin;  // nanoGPT token file: headerless uint16 ids below the model's vocabulary
  for (int i = 0; i < 8192; ++i) {
    const auto id = static_cast<std::uint16_t>((i * 31 + i / 7) % 61);
    bin.append(reinterpret_cast<const char*>(&id), 2);
  }
  write_bytes(tmp.path / "tokens.bin", bin);
  const std::string cli = STP_CLI, log = (tmp.path / "run").string();
  run_ok(cli + " run -n 4 -- " + cli + " train --set model.init_from=" + model_dir(false) +
             " --set model.seq_len=20 --set parallel.tp=2 --set parallel.pp=2" +
             " --set data.format=nanogpt --set data.path=" + (tmp.path / "tokens.bin").string() +
             " --set run.steps=1 --set optimizer.lr=0 --set optimizer.min_lr=0" +
             " --set offload.budget=off --set run.progress=false --set run.log_dir=" + log,
         tmp.path / "train.log");
  const std::string train_log = read_bytes(tmp.path / "train.log");
  EXPECT_NE(train_log.find("model: initialised from " + model_dir(false) +
                           " (LlamaForCausalLM, 31 tensors)"),
            std::string::npos)
      << train_log;
  EXPECT_NE(train_log.find("\"arch\": \"llama\""), std::string::npos) << train_log;
  const std::string out = (tmp.path / "hf").string();
  run_ok(cli + " export --format hf --checkpoint " + log + "/checkpoints --out " + out,
         tmp.path / "export.log");
  EXPECT_NE(read_bytes(tmp.path / "export.log").find("LlamaForCausalLM, 39 tensors from 4 rank"),
            std::string::npos)
      << read_bytes(tmp.path / "export.log");
  const json config = json::parse(read_bytes(fs::path(out) / "config.json"));
  EXPECT_EQ(config.at("max_position_embeddings"), 20);
  EXPECT_EQ(config.at("tie_word_embeddings"), false);
  EXPECT_EQ(config.at("rms_norm_eps"), 1e-6);  // imported into model.rms_eps and written back
  const TensorMap r = ref(false);
  const TensorMap back = transformers_eval("hf_llama.py", out, r, tmp.path);
  EXPECT_LE((back.at("logits") - r.at("logits")).abs().max().item<double>(), 1e-4);
  EXPECT_NEAR(back.at("loss").item<double>(), r.at("loss").item<double>(), 1e-5);
}

TEST_F(HfLlama, TrainConfigTakesArchAndShapeFromConfigJson) {
  REQUIRE_TRANSFORMERS();
  train::TrainConfig c;  // arch gpt by default: the folder decides
  c.model.init_from = model_dir(true);
  c.model.seq_len = 16;
  c.parallel.tp = 2;
  c.parallel.pp = 1;
  c.schedule.kind = "1f1b";
  train::apply_init_from_shape(c);
  EXPECT_EQ(c.model.arch, "llama");
  EXPECT_EQ(c.model.vocab, 61);
  EXPECT_EQ(c.model.d_model, 32);
  EXPECT_EQ(c.model.n_heads, 4);
  EXPECT_EQ(c.model.n_kv_heads, 2);
  EXPECT_EQ(c.model.n_layers, 4);
  EXPECT_EQ(c.model.mlp_hidden, 48);
  EXPECT_EQ(c.model.rope_theta, 5000);
  EXPECT_EQ(c.model.rms_eps, 1e-6);
  EXPECT_TRUE(c.model.tie_embeddings);  // one stage: tied as the file
  c.schedule.kind = "stp";              // 2 x pp stages: the tied file loads untied
  c.parallel.pp = 2;
  train::apply_init_from_shape(c);
  EXPECT_FALSE(c.model.tie_embeddings);
  c.model.seq_len = 33;
  expect_invalid([&] { train::apply_init_from_shape(c); },
                 "model.seq_len=33 is longer than model.init_from's max_position_embeddings=32");
}

// ---- refusals: one line naming the file, the key or tensor, expected and found -------------

TEST_F(HfLlama, RefusesAnotherArchitectureOrAKeyStpLacks) {
  REQUIRE_TRANSFORMERS();
  BreakableModel m(model_dir(false));
  const models::LlamaConfig cfg = tiny_config(false);
  auto refused = [&](const std::string& key, const json& value, const std::string& needle) {
    m.set_config(key, value);
    expect_invalid([&] { HfImport::llama(m.dir(), cfg); }, needle);
  };
  refused("architectures", json::array({"GPT2LMHeadModel"}),
          "architecture 'GPT2LMHeadModel' is not supported for stp's Llama");
  refused("hidden_act", "gelu", "config.json hidden_act=\"gelu\" is not supported");
  refused("attention_bias", true, "config.json attention_bias=true is not supported");
  refused("mlp_bias", true, "config.json mlp_bias=true is not supported");
  refused("rope_scaling", json{{"rope_type", "linear"}, {"factor", 2.0}},
          "config.json rope_scaling.factor=2.0 is not supported");
  refused("rope_parameters", json{{"rope_type", "llama3"}, {"rope_theta", 5000.0}},
          "config.json rope_parameters.rope_type=\"llama3\" is not supported");
  refused("rms_norm_eps", 0.5, "config.json rms_norm_eps=0.5 is out of stp's range (0, 0.01]");
  refused("rms_norm_eps", 1e-5,
          "rms_norm_eps=1e-05 but stp's model.rope_theta=5000 and its Llama's "
          "rms_eps=1e-06");
  refused("head_dim", 16, "config.json head_dim=16 is not supported");
  refused("rope_parameters", json{{"rope_type", "default"}, {"rope_theta", 10000.0}},
          "rope_theta=10000 rms_norm_eps=1e-06 but stp's model.rope_theta=5000");
  refused("num_key_value_heads", 4, "num_key_value_heads=4 but stp's model.n_kv_heads=2");
  m.set_config("rope_scaling", nullptr);  // as saved: loads
  EXPECT_EQ(HfImport::llama(m.dir(), cfg).size(), 1u + 7 * 4 + 2);
  // An untied file has no place in a tied model.
  expect_invalid([&] { HfImport::llama(m.dir(), tiny_config(true)); },
                 "tie_word_embeddings=false but stp's model.tie_embeddings=true");
}

TEST_F(HfLlama, RefusesAShapeMismatchNamingTheTensor) {
  REQUIRE_TRANSFORMERS();
  BreakableModel m(model_dir(false));
  const models::LlamaConfig cfg = tiny_config(false);
  auto refused = [&](const std::function<void(TensorMap&)>& edit, const std::string& needle) {
    m.edit_tensors(edit);
    expect_invalid([&] { HfImport::llama(m.dir(), cfg); }, needle);
  };
  refused(
      [](TensorMap& t) {
        auto& w = t["model.layers.2.self_attn.v_proj.weight"];
        w = w.narrow(0, 0, 8).contiguous();
      },
      "tensor 'model.layers.2.self_attn.v_proj.weight' has shape [8, 32], expected [16, 32]");
  refused([](TensorMap& t) { t.erase("model.layers.3.mlp.up_proj.weight"); },
          "tensor 'model.layers.3.mlp.up_proj.weight' is missing");
  refused([](TensorMap& t) { t["model.layers.4.input_layernorm.weight"] = at::ones({32}); },
          "tensor 'model.layers.4.input_layernorm.weight' (shape [32]) has no place");
}

}  // namespace
}  // namespace stp::checkpoint
