// Shared by the Hugging Face import/export tests (hf_test.cpp: GPT-2, hf_llama_test.cpp: Llama):
// the `transformers` package as the outside client (a helper script per family, run with the
// venv's python), and stp's forward through a stages x tp grid of chunks in one thread.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"
#include "engine/chunk.h"
#include "file_test_util.h"
#include "model_test_util.h"

namespace stp::testing {

inline bool have_transformers() {
  return std::filesystem::exists(kPython) &&
         std::system(
             (std::string(kPython) + " -c 'import transformers' > /dev/null 2>&1").c_str()) == 0;
}

#define REQUIRE_TRANSFORMERS()                                                               \
  if (!::stp::testing::have_transformers())                                                  \
  GTEST_SKIP() << "the transformers package is not installed in " << ::stp::testing::kPython \
               << " (scripts/setup.sh installs it)"

// Runs a command; its output goes to `log`, shown when it fails.
inline void run_ok(const std::string& cmd, const std::filesystem::path& log) {
  const int rc = std::system((cmd + " > " + log.string() + " 2>&1").c_str());
  ASSERT_EQ(rc, 0) << cmd << "\n" << read_bytes(log);
}

// tests/checkpoint/<script> `args`, with the venv's python; its log in `dir`/python.log.
inline void run_helper(const std::string& script, const std::string& args,
                       const std::filesystem::path& dir) {
  run_ok(std::string(kPython) + " " + STP_SOURCE_DIR + "/tests/checkpoint/" + script + " " + args,
         dir / "python.log");
}

// `script` make of a model saved in several files with an index, in `tmp`; returns its folder.
inline std::string make_sharded_model(const std::string& script, const TempDir& tmp) {
  const std::string dir = (tmp.path / "sharded").string();
  run_helper(script, "make " + dir + " --shards", tmp.path);
  EXPECT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/model.safetensors"));
  return dir;
}

inline engine::MicroBatch microbatch_of(const checkpoint::TensorMap& ref) {
  return {ref.at("tokens").to(at::kLong), ref.at("targets").to(at::kLong)};
}

struct StpOutput {
  at::Tensor logits;  // (B, T, V)
  double loss = 0;
};

// The forward of `mb` through grid[stage][tp rank] (TP ranks in lock step with the all-reduce
// emulated). Returns the last stage's activation set of TP rank 0 (in `sets`).
inline const engine::ActivationSet& forward_grid(
    const std::vector<std::vector<engine::Chunk*>>& grid, const engine::MicroBatch& mb,
    std::vector<std::vector<engine::ActivationSet>>& sets) {
  at::Tensor x;
  sets.assign(grid.size(), std::vector<engine::ActivationSet>(grid[0].size()));
  for (std::size_t s = 0; s < grid.size(); ++s) {
    std::vector<std::unique_ptr<engine::Pass>> passes;
    std::vector<engine::Pass*> raw;
    for (std::size_t r = 0; r < grid[s].size(); ++r) {
      passes.push_back(grid[s][r]->forward(sets[s][r], mb, x));
      raw.push_back(passes.back().get());
    }
    run_lockstep(raw);
    x = passes[0]->output();
  }
  return sets.back()[0];
}

// stp's logits and loss against the reference's (1e-4 and 1e-5).
inline void expect_matches(const StpOutput& out, const checkpoint::TensorMap& ref,
                           const std::string& what) {
  const at::Tensor& logits = ref.at("logits");
  ASSERT_EQ(out.logits.sizes(), logits.sizes()) << what;
  EXPECT_LE((out.logits - logits).abs().max().item<double>(), 1e-4) << what << ": logits";
  EXPECT_NEAR(out.loss, ref.at("loss").item<double>(), 1e-5) << what << ": loss";
}

// `script` eval of the folder `model` on ref's tokens and targets: transformers' output.
inline checkpoint::TensorMap transformers_eval(const std::string& script, const std::string& model,
                                               const checkpoint::TensorMap& ref,
                                               const std::filesystem::path& tmp) {
  const std::string tokens = (tmp / "tokens.safetensors").string();
  const std::string out = (tmp / "out.safetensors").string();
  checkpoint::write_safetensors(tokens,
                                {{"tokens", ref.at("tokens")}, {"targets", ref.at("targets")}});
  run_helper(script, "eval " + model + " " + tokens + " " + out, tmp);
  return checkpoint::read_safetensors(out).tensors;
}

// A copy of a model folder's config.json and model.safetensors, to break one thing at a time:
// each call rewrites one file from the original with one change.
class BreakableModel {
 public:
  explicit BreakableModel(const std::string& model_dir) {
    for (const char* f : {"config.json", "model.safetensors"})
      std::filesystem::copy_file(std::filesystem::path(model_dir) / f, tmp_.path / f);
    config_ = nlohmann::json::parse(read_bytes(tmp_.path / "config.json"));
    tensors_ = checkpoint::read_safetensors((tmp_.path / "model.safetensors").string()).tensors;
  }
  std::string dir() const { return tmp_.path.string(); }
  const nlohmann::json& original_config() const { return config_; }
  // config.json as copied, with `key` set to `value`.
  void set_config(const std::string& key, const nlohmann::json& value) {
    nlohmann::json c = config_;
    c[key] = value;
    write_bytes(tmp_.path / "config.json", c.dump());
  }
  // model.safetensors as copied, then changed by `edit`.
  void edit_tensors(const std::function<void(checkpoint::TensorMap&)>& edit) {
    checkpoint::TensorMap t = tensors_;
    edit(t);
    checkpoint::write_safetensors((tmp_.path / "model.safetensors").string(), t,
                                  {{"format", "pt"}});
  }

 private:
  TempDir tmp_;
  nlohmann::json config_;
  checkpoint::TensorMap tensors_;
};

}  // namespace stp::testing
