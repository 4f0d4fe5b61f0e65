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
  models::LlamaConfig c;
  c.vocab = vocab;
  c.seq_len = seq;
  c.d_model = d;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.n_layers = layers;
  c.ffn_hidden = ffn;
  c.dtype = at::kDouble;
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

engine::MicroBatch random_microbatch_for(std::int64_t vocab, std::int64_t batch, std::int64_t seq,
                                         std::uint64_t seed) {
  models::GptConfig g;  // random_microbatch reads only the vocabulary
  g.vocab = vocab;
  return random_microbatch(g, batch, seq, seed);
}

ReferenceRun run_llama_reference(const models::LlamaConfig& cfg, const ParamMap& full,
                                 const engine::MicroBatch& mb, double loss_scale) {
  const std::int64_t B = mb.tokens.size(0), T = mb.tokens.size(1);
  const std::int64_t C = cfg.d_model, NH = cfg.n_heads, NKV = cfg.kv_heads(), hd = C / NH;
  ParamMap P;  // leaves requiring grad, float64
  for (const models::ParamSpec& s : models::llama_param_specs(cfg)) {
    auto it = full.find(s.name);
    STP_ASSERT(it != full.end(), "reference needs parameter ", s.name);
    at::Tensor t = it->second.to(at::kDouble).clone();
    t.set_requires_grad(true);
    P[s.name] = t;
  }
  ReferenceRun run;
  ParamMap norm_out;
  auto keep = [&](at::Tensor t) {
    t.retain_grad();
    run.residuals.push_back(t);
    return t;
  };
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
  at::Tensor logits = at::matmul(y, head.t());
  at::Tensor logp = logits - logits.logsumexp(-1, true);
  at::Tensor loss = -logp.gather(-1, targets.unsqueeze(-1)).mean();
  (loss * loss_scale).backward();

  run.loss = loss.detach();
  for (auto& [name, t] : P) run.grads[name] = t.grad().detach();
  for (at::Tensor& r : run.residuals) {
    run.residual_grads.push_back(r.grad().detach());
    r = r.detach();
  }
  for (auto& [name, t] : norm_out) run.ln_out_grads[name] = t.grad().detach();
  return run;
}

ReferenceStep llama_reference_step(const models::LlamaConfig& cfg, const ParamMap& full,
                                   const std::vector<engine::MicroBatch>& mbs) {
  ReferenceStep step;
  const double scale = 1.0 / static_cast<double>(mbs.size());
  for (const engine::MicroBatch& mb : mbs) {
    ReferenceRun run = run_llama_reference(cfg, full, mb, scale);
    step.losses.push_back(run.loss.item<double>());
    step.loss += step.losses.back() * scale;
    for (auto& [name, g] : run.grads) {
      auto it = step.grads.find(name);
      if (it == step.grads.end()) {
        step.grads[name] = g;
      } else {
        it->second = it->second + g;
      }
    }
  }
  return step;
}

// ---- LlamaGrid -----------------------------------------------------------------------------

LlamaGrid::LlamaGrid(const models::LlamaConfig& cfg, int stages, int tp) {
  chunks_.resize(stages);
  for (int s = 0; s < stages; ++s) {
    for (int r = 0; r < tp; ++r) {
      chunks_[s].push_back(std::make_unique<models::LlamaChunk>(cfg, s, stages, r, tp));
    }
  }
}

void LlamaGrid::load(const ParamMap& full) {
  for (auto& stage : chunks_) {
    for (int r = 0; r < tp(); ++r) load_full_params(*stage[r], full, r, tp());
  }
}

double LlamaGrid::train_microbatch(const engine::MicroBatch& mb, double loss_scale, bool fused_w) {
  const int S = stages(), R = tp();
  std::vector<std::vector<engine::ActivationSet>> sets(S);
  for (int s = 0; s < S; ++s) {
    for (int r = 0; r < R; ++r) sets[s].emplace_back(s, 0);
  }
  std::vector<at::Tensor> act(R);  // per TP rank: the activation between stages
  for (int s = 0; s < S; ++s) {
    std::vector<std::unique_ptr<engine::Pass>> own;
    std::vector<engine::Pass*> passes;
    for (int r = 0; r < R; ++r) {
      chunks_[s][r]->set_loss_scale(loss_scale);
      own.push_back(chunks_[s][r]->forward(sets[s][r], mb, act[r]));
      passes.push_back(own.back().get());
    }
    run_lockstep(passes);
    for (int r = 0; r < R; ++r) act[r] = passes[r]->output();
  }
  const double loss = chunks_[S - 1][0]->loss(sets[S - 1][0]);
  std::vector<at::Tensor> grad(R);
  for (int s = S - 1; s >= 0; --s) {
    std::vector<std::unique_ptr<engine::Pass>> own;
    std::vector<engine::Pass*> b, w;
    for (int r = 0; r < R; ++r) {
      own.push_back(chunks_[s][r]->backward(sets[s][r], grad[r]));
      b.push_back(own.back().get());
      own.push_back(chunks_[s][r]->weight_grad(sets[s][r]));
      w.push_back(own.back().get());
    }
    if (fused_w) {
      run_lockstep_fused(b, w);
    } else {
      run_lockstep(b);
      run_lockstep(w);
    }
    for (int r = 0; r < R; ++r) {
      grad[r] = b[r]->output();
      STP_ASSERT(sets[s][r].empty(), "set not empty after W");
    }
  }
  return loss;
}

ParamMap LlamaGrid::full_grads() {
  ParamMap out;
  for (auto& stage : chunks_) {
    std::vector<engine::Chunk*> ranks;
    for (auto& c : stage) ranks.push_back(c.get());
    for (auto& [name, g] : gather_grads(ranks)) out[name] = g;
  }
  return out;
}

}  // namespace stp::testing
