#include "models/gpt_params.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/normal.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>

#include <cmath>

#include "common/check.h"

namespace stp::models {
namespace {

// splitmix64 finaliser: mixes the seed with the name hash so nearby seeds give unrelated streams.
std::uint64_t mix64(std::uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// FNV-1a: a hash of the name that is stable across builds and platforms (std::hash is not).
std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

}  // namespace

std::vector<ParamSpec> gpt_layer_param_specs(const GptConfig& cfg, std::int64_t layer) {
  const std::int64_t C = cfg.d_model, H = cfg.hidden();
  const std::string p = "layers." + std::to_string(layer) + ".";
  return {
      {p + "ln1.w", {C}, -1, false, ParamInit::kOnes},
      {p + "ln1.b", {C}, -1, false, ParamInit::kZeros},
      {p + "attn.qkv.w", {3, C, C}, 1, true, ParamInit::kNormal},
      {p + "attn.qkv.b", {3, C}, 1, false, ParamInit::kZeros},
      {p + "attn.proj.w", {C, C}, 1, true, ParamInit::kNormalResidual},
      {p + "attn.proj.b", {C}, -1, false, ParamInit::kZeros},
      {p + "ln2.w", {C}, -1, false, ParamInit::kOnes},
      {p + "ln2.b", {C}, -1, false, ParamInit::kZeros},
      {p + "mlp.fc1.w", {H, C}, 0, true, ParamInit::kNormal},
      {p + "mlp.fc1.b", {H}, 0, false, ParamInit::kZeros},
      {p + "mlp.fc2.w", {C, H}, 1, true, ParamInit::kNormalResidual},
      {p + "mlp.fc2.b", {C}, -1, false, ParamInit::kZeros},
  };
}

std::vector<ParamSpec> gpt_param_specs(const GptConfig& cfg) {
  const std::int64_t C = cfg.d_model;
  std::vector<ParamSpec> specs = {
      {"wte", {cfg.vocab, C}, -1, true, ParamInit::kNormal},
      {"wpe", {cfg.seq_len, C}, -1, true, ParamInit::kNormal},
  };
  for (std::int64_t l = 0; l < cfg.n_layers; ++l) {
    for (ParamSpec& s : gpt_layer_param_specs(cfg, l)) specs.push_back(std::move(s));
  }
  specs.push_back({"ln_f.w", {C}, -1, false, ParamInit::kOnes});
  specs.push_back({"ln_f.b", {C}, -1, false, ParamInit::kZeros});
  specs.push_back({"lm_head.w", {cfg.vocab, C}, -1, true, ParamInit::kNormal});
  return specs;
}

at::Tensor gpt_init_full(const GptConfig& cfg, const ParamSpec& spec) {
  auto opts = at::TensorOptions().dtype(cfg.dtype == at::kDouble ? at::kDouble : at::kFloat);
  switch (spec.init) {
    case ParamInit::kZeros: return at::zeros(spec.full_shape, opts);
    case ParamInit::kOnes: return at::ones(spec.full_shape, opts);
    case ParamInit::kNormal:
    case ParamInit::kNormalResidual: {
      double std = cfg.init_std;
      if (spec.init == ParamInit::kNormalResidual) std /= std::sqrt(2.0 * cfg.n_layers);
      at::Generator gen = at::detail::createCPUGenerator(mix64(cfg.seed ^ mix64(fnv1a(spec.name))));
      return at::normal(0.0, std, spec.full_shape, gen, opts);
    }
  }
  STP_ASSERT(false, "unknown ParamInit for ", spec.name);
  return {};
}

at::Tensor shard_of(const at::Tensor& full, int shard_dim, int tp_rank, int tp_size) {
  if (shard_dim < 0) return full;
  const std::int64_t n = full.size(shard_dim);
  STP_ASSERT(n % tp_size == 0, "dim ", shard_dim, " of size ", n, " not divisible by tp=", tp_size);
  const std::int64_t part = n / tp_size;
  return full.narrow(shard_dim, tp_rank * part, part);
}

}  // namespace stp::models
