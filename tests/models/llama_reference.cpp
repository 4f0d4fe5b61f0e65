#include "llama_reference.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>

#include "common/check.h"
#include "models/llama_params.h"

namespace stp::testing {
namespace {

at::Tensor randn(std::vector<std::int64_t> shape, std::uint64_t seed, const std::string& name,
                 double std) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : name) h = (h ^ c) * 0x100000001b3ULL;
  at::Generator gen = at::detail::createCPUGenerator(seed * 0x9e3779b97f4a7c15ULL ^ h);
  return at::normal(0.0, std, shape, gen, at::TensorOptions().dtype(at::kDouble));
}

at::Tensor ref_rmsnorm(const at::Tensor& x, const at::Tensor& w, double eps) {
  return x / (x.pow(2).mean(-1, true) + eps).sqrt() * w;
}

// Rotary embedding of (B, n, T, hd) heads by rotate_half, angles t * theta^(-2i/hd).
at::Tensor ref_rope(const at::Tensor& x, double theta) {
  const std::int64_t T = x.size(2), hd = x.size(3);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor inv_freq = 1.0 / at::pow(theta, at::arange(0, hd, 2, f64) / static_cast<double>(hd));
  at::Tensor angle = at::outer(at::arange(T, f64), inv_freq);  // (T, hd/2)
  at::Tensor emb = at::cat({angle, angle}, -1);                // (T, hd)
  at::Tensor half1 = x.narrow(-1, 0, hd / 2), half2 = x.narrow(-1, hd / 2, hd / 2);
  at::Tensor rotated = at::cat({-half2, half1}, -1);
  return x * emb.cos() + rotated * emb.sin();
}

}  // namespace

models::LlamaConfig make_llama_config(std::int64_t vocab, std::int64_t seq, std::int64_t d,
                                      std::int64_t heads, std::int64_t kv_heads,
                                      std::int64_t layers, std::int64_t ffn) {
  auto c = float64_config<models::LlamaConfig>(vocab, seq, d, heads, layers);
  c.n_kv_heads = kv_heads;
  c.ffn_hidden = ffn;
  return c;
}

ParamMap random_llama_params(const models::LlamaConfig& cfg, std::uint64_t seed) {
  ParamMap full;
  for (const models::ParamSpec& s : models::llama_param_specs(cfg)) {
    if (s.name == "wte") {
      full[s.name] = randn(s.full_shape, seed, s.name, 0.5);
    } else if (s.init == models::ParamInit::kOnes) {
      full[s.name] = randn(s.full_shape, seed, s.name, 0.2) + 1.0;
    } else {
      full[s.name] = randn(s.full_shape, seed, s.name, 0.3);
    }
  }
  return full;
}

ReferenceRun run_llama_reference(const models::LlamaConfig& cfg, const ParamMap& full,
                                 const engine::MicroBatch& mb, double loss_scale) {
  const std::int64_t B = mb.tokens.size(0), T = mb.tokens.size(1);
  const std::int64_t C = cfg.d_model, NH = cfg.n_heads, NKV = cfg.kv_heads(), hd = C / NH;
  ParamMap P = reference_leaves(models::llama_param_specs(cfg), full);
  ReferenceRun run;
  ParamMap norm_out;
  auto keep = [&](at::Tensor t) { return keep_residual(run, std::move(t)); };
  auto keep_norm = [&](const std::string& name, at::Tensor t) {
    t.retain_grad();
    norm_out[name] = t;
    return t;
  };
  const at::Tensor tokens = mb.tokens.cpu(), targets = mb.targets.cpu();
  at::Tensor x = keep(P["wte"].index_select(0, tokens.reshape({-1})).view({B, T, C}));
  const at::Tensor future = at::ones({T, T}, at::TensorOptions().dtype(at::kBool)).triu(1);
  for (std::int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    at::Tensor a = keep_norm(p + "ln1", ref_rmsnorm(x, P[p + "ln1.w"], cfg.rms_eps));
    at::Tensor q = at::matmul(a, P[p + "attn.q.w"].t()).view({B, T, NH, hd}).transpose(1, 2);
    at::Tensor k = at::matmul(a, P[p + "attn.kv.w"][0].t()).view({B, T, NKV, hd}).transpose(1, 2);
    at::Tensor v = at::matmul(a, P[p + "attn.kv.w"][1].t()).view({B, T, NKV, hd}).transpose(1, 2);
    q = ref_rope(q, cfg.rope_theta);
    k = ref_rope(k, cfg.rope_theta).repeat_interleave(NH / NKV, 1);  // (B, NH, T, hd)
    v = v.repeat_interleave(NH / NKV, 1);
    at::Tensor att = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
    att = at::softmax(att.masked_fill(future, -std::numeric_limits<double>::infinity()), -1);
    at::Tensor o = at::matmul(att, v).transpose(1, 2).reshape({B, T, C});
    x = keep(x + at::matmul(o, P[p + "attn.o.w"].t()));
    at::Tensor a2 = keep_norm(p + "ln2", ref_rmsnorm(x, P[p + "ln2.w"], cfg.rms_eps));
    at::Tensor gate = at::matmul(a2, P[p + "mlp.gate_up.w"][0].t());
    at::Tensor up = at::matmul(a2, P[p + "mlp.gate_up.w"][1].t());
    at::Tensor h = gate * at::sigmoid(gate) * up;
    x = keep(x + at::matmul(h, P[p + "mlp.down.w"].t()));
  }
  at::Tensor y = keep_norm("ln_f", ref_rmsnorm(x, P["ln_f.w"], cfg.rms_eps));
  at::Tensor head = cfg.tie_embeddings ? P["wte"] : P["lm_head.w"];
  finish_reference(run, at::matmul(y, head.t()), targets, loss_scale, P, norm_out);
  return run;
}

ReferenceStep llama_reference_step(const models::LlamaConfig& cfg, const ParamMap& full,
                                   const std::vector<engine::MicroBatch>& mbs) {
  return reference_step_of(mbs, [&](const engine::MicroBatch& mb, double scale) {
    return run_llama_reference(cfg, full, mb, scale);
  });
}

}  // namespace stp::testing
