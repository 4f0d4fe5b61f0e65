#include "tests/support/model_test_util.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <limits>
#include <stdexcept>

#include "common/check.h"
#include "models/gpt_params.h"

namespace stp::testing {
namespace {

std::uint64_t name_hash(const std::string& s) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

at::Tensor randn(std::vector<std::int64_t> shape, std::uint64_t seed, const std::string& name,
                 double std) {
  at::Generator gen =
      at::detail::createCPUGenerator(seed * 0x9e3779b97f4a7c15ULL ^ name_hash(name));
  return at::normal(0.0, std, shape, gen, at::TensorOptions().dtype(at::kDouble));
}

// The reference's LayerNorm, by formula (autograd differentiates it).
at::Tensor ref_layernorm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                         double eps) {
  at::Tensor mean = x.mean(-1, true);
  at::Tensor var = (x - mean).pow(2).mean(-1, true);
  return (x - mean) / (var + eps).sqrt() * w + b;
}

// GELU, tanh approximation, by formula.
at::Tensor ref_gelu(const at::Tensor& x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + at::tanh(k * (x + 0.044715 * x.pow(3))));
}

}  // namespace

models::GptConfig make_config(std::int64_t vocab, std::int64_t seq, std::int64_t d,
                              std::int64_t heads, std::int64_t layers, std::int64_t hidden) {
  models::GptConfig c;
  c.vocab = vocab;
  c.seq_len = seq;
  c.d_model = d;
  c.n_heads = heads;
  c.n_layers = layers;
  c.mlp_hidden = hidden;
  c.dtype = at::kDouble;
  return c;
}

ParamMap init_full_params(const models::GptConfig& cfg) {
  ParamMap full;
  for (const models::ParamSpec& s : models::gpt_param_specs(cfg))
    full[s.name] = models::gpt_init_full(cfg, s);
  return full;
}

ParamMap random_full_params(const models::GptConfig& cfg, std::uint64_t seed) {
  ParamMap full;
  for (const models::ParamSpec& s : models::gpt_param_specs(cfg)) {
    at::Tensor t;
    if (s.name == "wte" || s.name == "wpe") {
      t = randn(s.full_shape, seed, s.name, 0.5);
    } else if (s.init == models::ParamInit::kOnes) {
      t = randn(s.full_shape, seed, s.name, 0.2) + 1.0;
    } else if (s.init == models::ParamInit::kZeros) {
      t = randn(s.full_shape, seed, s.name, 0.1);
    } else {
      t = randn(s.full_shape, seed, s.name, 0.2);
    }
    full[s.name] = t;
  }
  return full;
}

void load_full_params(engine::Chunk& chunk, const ParamMap& full, int tp_rank, int tp_size) {
  for (engine::Param& p : chunk.params()) {
    auto it = full.find(p.name);
    STP_ASSERT(it != full.end(), "no full tensor for ", p.name);
    p.value.copy_(models::shard_of(it->second, p.shard_dim, tp_rank, tp_size));
  }
}

ParamMap gather_grads(const std::vector<engine::Chunk*>& tp_ranks) {
  ParamMap out;
  std::vector<engine::Param>& first = tp_ranks[0]->params();
  for (std::size_t i = 0; i < first.size(); ++i) {
    const engine::Param& p = first[i];
    if (p.shard_dim < 0) {
      out[p.name] = p.grad.to(at::kDouble);
      continue;
    }
    std::vector<at::Tensor> parts;
    for (engine::Chunk* c : tp_ranks) {
      const engine::Param& q = c->params()[i];
      STP_ASSERT(q.name == p.name, q.name, " != ", p.name);
      parts.push_back(q.grad.to(at::kDouble));
    }
    out[p.name] = at::cat(parts, p.shard_dim);
  }
  return out;
}

engine::MicroBatch random_microbatch(const models::GptConfig& cfg, std::int64_t batch,
                                     std::int64_t seq, std::uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  engine::MicroBatch mb;
  mb.tokens = at::randint(cfg.vocab, {batch, seq}, gen, at::TensorOptions().dtype(at::kLong));
  mb.targets = at::randint(cfg.vocab, {batch, seq}, gen, at::TensorOptions().dtype(at::kLong));
  return mb;
}

ReferenceRun run_reference(const models::GptConfig& cfg, const ParamMap& full,
                           const engine::MicroBatch& mb, double loss_scale) {
  const std::int64_t B = mb.tokens.size(0), T = mb.tokens.size(1);
  const std::int64_t C = cfg.d_model, NH = cfg.n_heads, hd = C / NH;
  ParamMap P;  // leaves requiring grad, float64
  for (const models::ParamSpec& s : models::gpt_param_specs(cfg)) {
    auto it = full.find(s.name);
    STP_ASSERT(it != full.end(), "reference needs parameter ", s.name);
    at::Tensor t = it->second.to(at::kDouble).clone();
    t.set_requires_grad(true);
    P[s.name] = t;
  }
  ReferenceRun run;
  ParamMap ln_out;
  auto keep = [&](at::Tensor t) {
    t.retain_grad();
    run.residuals.push_back(t);
    return t;
  };
  const at::Tensor tokens = mb.tokens.cpu(), targets = mb.targets.cpu();
  at::Tensor x = keep(P["wte"].index_select(0, tokens.reshape({-1})).view({B, T, C}) +
                      P["wpe"].narrow(0, 0, T));
  const at::Tensor future = at::ones({T, T}, at::TensorOptions().dtype(at::kBool)).triu(1);
  for (std::int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    at::Tensor a = ref_layernorm(x, P[p + "ln1.w"], P[p + "ln1.b"], cfg.ln_eps);
    a.retain_grad();
    ln_out[p + "ln1"] = a;
    at::Tensor qkv = at::matmul(a, P[p + "attn.qkv.w"].reshape({3 * C, C}).t()) +
                     P[p + "attn.qkv.b"].reshape({3 * C});
    at::Tensor q = qkv.narrow(2, 0, C).view({B, T, NH, hd}).transpose(1, 2);
    at::Tensor k = qkv.narrow(2, C, C).view({B, T, NH, hd}).transpose(1, 2);
    at::Tensor v = qkv.narrow(2, 2 * C, C).view({B, T, NH, hd}).transpose(1, 2);
    at::Tensor att = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
    att = at::softmax(att.masked_fill(future, -std::numeric_limits<double>::infinity()), -1);
    at::Tensor o = at::matmul(att, v).transpose(1, 2).reshape({B, T, C});
    x = keep(x + at::matmul(o, P[p + "attn.proj.w"].t()) + P[p + "attn.proj.b"]);
    at::Tensor a2 = ref_layernorm(x, P[p + "ln2.w"], P[p + "ln2.b"], cfg.ln_eps);
    a2.retain_grad();
    ln_out[p + "ln2"] = a2;
    at::Tensor h = ref_gelu(at::matmul(a2, P[p + "mlp.fc1.w"].t()) + P[p + "mlp.fc1.b"]);
    x = keep(x + at::matmul(h, P[p + "mlp.fc2.w"].t()) + P[p + "mlp.fc2.b"]);
  }
  at::Tensor y = ref_layernorm(x, P["ln_f.w"], P["ln_f.b"], cfg.ln_eps);
  y.retain_grad();
  ln_out["ln_f"] = y;
  at::Tensor logits = at::matmul(y, P["lm_head.w"].t());
  at::Tensor logp = logits - logits.logsumexp(-1, true);
  at::Tensor loss = -logp.gather(-1, targets.unsqueeze(-1)).mean();
  (loss * loss_scale).backward();

  run.loss = loss.detach();
  for (auto& [name, t] : P) run.grads[name] = t.grad().detach();
  for (at::Tensor& r : run.residuals) {
    run.residual_grads.push_back(r.grad().detach());
    r = r.detach();
  }
  for (auto& [name, t] : ln_out) run.ln_out_grads[name] = t.grad().detach();
  return run;
}

ReferenceStep reference_step(const models::GptConfig& cfg, const ParamMap& full,
                             const std::vector<engine::MicroBatch>& mbs) {
  ReferenceStep step;
  const double scale = 1.0 / static_cast<double>(mbs.size());
  for (const engine::MicroBatch& mb : mbs) {
    ReferenceRun run = run_reference(cfg, full, mb, scale);
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

void all_reduce_emulated(const std::vector<at::Tensor>& per_rank) {
  STP_ASSERT(!per_rank.empty(), "no ranks");
  const bool defined = per_rank[0].defined();
  for (const at::Tensor& t : per_rank) STP_ASSERT(t.defined() == defined, "ranks disagree");
  if (!defined) return;
  at::Tensor sum = per_rank[0].clone();
  for (std::size_t r = 1; r < per_rank.size(); ++r) sum.add_(per_rank[r]);
  for (const at::Tensor& t : per_rank) t.copy_(sum);
}

void run_lockstep(const std::vector<engine::Pass*>& passes) {
  const int n = passes[0]->size();
  for (engine::Pass* p : passes) STP_ASSERT(p->size() == n, "TP ranks disagree on the unit count");
  for (int k = 0; k < n; ++k) {
    std::vector<at::Tensor> out;
    for (engine::Pass* p : passes) out.push_back(p->run(k));
    all_reduce_emulated(out);
  }
  for (engine::Pass* p : passes) p->finish();
}

void run_lockstep_fused(const std::vector<engine::Pass*>& b, const std::vector<engine::Pass*>& w) {
  const int n = b[0]->size();
  for (std::size_t r = 0; r < b.size(); ++r) {
    STP_ASSERT(b[r]->size() == n && w[r]->size() == n, "B and W unit counts differ");
  }
  for (int k = 0; k < n; ++k) {
    std::vector<at::Tensor> out;
    for (engine::Pass* p : b) out.push_back(p->run(k));
    for (engine::Pass* p : w) STP_ASSERT(!p->run(k).defined(), "a W unit returned a collective");
    all_reduce_emulated(out);  // completes after W unit k ran, as when overlapped
  }
  for (engine::Pass* p : b) p->finish();
  for (engine::Pass* p : w) p->finish();
}

double rel_error(const at::Tensor& a, const at::Tensor& b) {
  STP_ASSERT(a.sizes() == b.sizes(), "shapes differ: ", a.sizes(), " vs ", b.sizes());
  const double num = (a.to(at::kDouble) - b.to(at::kDouble)).norm().item<double>();
  const double den = b.to(at::kDouble).norm().item<double>();
  if (den == 0) return num == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return num / den;
}

// ---- EmulatedModel -------------------------------------------------------------------------

EmulatedModel::EmulatedModel(const models::GptConfig& cfg, int stages, int tp, at::Device device) {
  chunks_.resize(stages);
  for (int s = 0; s < stages; ++s) {
    for (int r = 0; r < tp; ++r) {
      chunks_[s].push_back(std::make_unique<models::GptChunk>(cfg, s, stages, r, tp, device));
    }
  }
}

void EmulatedModel::load(const ParamMap& full) {
  for (auto& stage : chunks_) {
    for (int r = 0; r < tp(); ++r) load_full_params(*stage[r], full, r, tp());
  }
}

void EmulatedModel::zero_grad() {
  for (auto& stage : chunks_) {
    for (auto& c : stage) c->zero_grad();
  }
}

double EmulatedModel::train_microbatch(const engine::MicroBatch& mb, double loss_scale,
                                       bool fused_w) {
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

ParamMap EmulatedModel::full_grads() {
  ParamMap out;
  for (auto& stage : chunks_) {
    std::vector<engine::Chunk*> ranks;
    for (auto& c : stage) ranks.push_back(c.get());
    for (auto& [name, g] : gather_grads(ranks)) out[name] = g;
  }
  return out;
}

}  // namespace stp::testing
