#include "tests/support/model_test_util.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

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
  auto c = float64_config<models::GptConfig>(vocab, seq, d, heads, layers);
  c.mlp_hidden = hidden;
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

engine::MicroBatch random_microbatch_for(std::int64_t vocab, std::int64_t batch, std::int64_t seq,
                                         std::uint64_t seed) {
  models::GptConfig g;  // random_microbatch reads only the vocabulary
  g.vocab = vocab;
  return random_microbatch(g, batch, seq, seed);
}

ReferenceRun run_reference(const models::GptConfig& cfg, const ParamMap& full,
                           const engine::MicroBatch& mb, double loss_scale) {
  const std::int64_t B = mb.tokens.size(0), T = mb.tokens.size(1);
  const std::int64_t C = cfg.d_model, NH = cfg.n_heads, hd = C / NH;
  ParamMap P = reference_leaves(models::gpt_param_specs(cfg), full);
  ReferenceRun run;
  ParamMap ln_out;
  auto keep = [&](at::Tensor t) { return keep_residual(run, std::move(t)); };
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
  finish_reference(run, at::matmul(y, P["lm_head.w"].t()), targets, loss_scale, P, ln_out);
  return run;
}

ParamMap reference_leaves(const std::vector<models::ParamSpec>& specs, const ParamMap& full) {
  ParamMap leaves;
  for (const models::ParamSpec& s : specs) {
    auto it = full.find(s.name);
    STP_ASSERT(it != full.end(), "reference needs parameter ", s.name);
    leaves[s.name] = leaf(it->second);
  }
  return leaves;
}

at::Tensor keep_residual(ReferenceRun& run, at::Tensor t) {
  t.retain_grad();
  run.residuals.push_back(t);
  return t;
}

void finish_reference(ReferenceRun& run, const at::Tensor& logits, const at::Tensor& targets,
                      double loss_scale, const ParamMap& leaves, const ParamMap& norm_outputs) {
  at::Tensor logp = logits - logits.logsumexp(-1, true);
  at::Tensor loss = -logp.gather(-1, targets.unsqueeze(-1)).mean();
  (loss * loss_scale).backward();

  run.loss = loss.detach();
  for (const auto& [name, t] : leaves) run.grads[name] = t.grad().detach();
  for (at::Tensor& r : run.residuals) {
    run.residual_grads.push_back(r.grad().detach());
    r = r.detach();
  }
  for (const auto& [name, t] : norm_outputs) run.ln_out_grads[name] = t.grad().detach();
}

ReferenceStep reference_step(const models::GptConfig& cfg, const ParamMap& full,
                             const std::vector<engine::MicroBatch>& mbs) {
  return reference_step_of(mbs, [&](const engine::MicroBatch& mb, double scale) {
    return run_reference(cfg, full, mb, scale);
  });
}

ReferenceStep reference_step_of(
    const std::vector<engine::MicroBatch>& mbs,
    const std::function<ReferenceRun(const engine::MicroBatch&, double)>& run_one) {
  ReferenceStep step;
  const double scale = 1.0 / static_cast<double>(mbs.size());
  for (const engine::MicroBatch& mb : mbs) {
    ReferenceRun run = run_one(mb, scale);
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

// ---- DecoderGrid ---------------------------------------------------------------------------

DecoderGrid::DecoderGrid(const Factory& make, int stages, int tp) {
  chunks_.resize(stages);
  for (int s = 0; s < stages; ++s) {
    for (int r = 0; r < tp; ++r) chunks_[s].push_back(make(s, stages, r, tp));
  }
}

void DecoderGrid::load(const ParamMap& full) {
  for (auto& stage : chunks_) {
    for (int r = 0; r < tp(); ++r) load_full_params(*stage[r], full, r, tp());
  }
}

void DecoderGrid::zero_grad() {
  for (auto& stage : chunks_) {
    for (auto& c : stage) c->zero_grad();
  }
}

double DecoderGrid::train_microbatch(const engine::MicroBatch& mb, double loss_scale,
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

ParamMap DecoderGrid::full_grads() {
  ParamMap out;
  for (auto& stage : chunks_) {
    std::vector<engine::Chunk*> ranks;
    for (auto& c : stage) ranks.push_back(c.get());
    for (auto& [name, g] : gather_grads(ranks)) out[name] = g;
  }
  return out;
}

// ---- whole-model checks --------------------------------------------------------------------

void expect_grads_near(const ParamMap& got, const ParamMap& want, double tol,
                       const std::set<std::string>& zero) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, g] : want) {
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << name;
    if (zero.count(name)) {
      EXPECT_EQ(g.abs().max().item<double>(), 0) << name;
      EXPECT_EQ(it->second.abs().max().item<double>(), 0) << name;
      continue;
    }
    ASSERT_GT(g.norm().item<double>(), 0) << name << ": reference gradient is zero";
    EXPECT_LE(rel_error(it->second, g), tol) << name;
  }
}

void expect_layouts_agree(DecoderGrid& one, DecoderGrid& other, const ParamMap& full,
                          const engine::MicroBatch& mb, double tol) {
  one.load(full);
  other.load(full);
  const double l1 = one.train_microbatch(mb, 1.0);
  const double lt = other.train_microbatch(mb, 1.0);
  EXPECT_LE(std::abs(lt - l1), tol * std::abs(l1));
  expect_grads_near(other.full_grads(), one.full_grads(), tol);
}

void expect_grads_equal(const ParamMap& got, const ParamMap& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, g] : want) EXPECT_TRUE(at::equal(got.at(name), g)) << name;
}

void expect_replicated_grads_identical(DecoderGrid& m) {
  const std::vector<engine::Param>& rank0 = m.decoder(0, 0).params();
  for (std::size_t i = 0; i < rank0.size(); ++i) {
    const engine::Param& p = rank0[i];
    if (p.shard_dim >= 0) continue;
    for (int r = 1; r < m.tp(); ++r) {
      EXPECT_TRUE(at::equal(p.grad, m.decoder(0, r).params()[i].grad)) << p.name << " rank " << r;
    }
  }
}

void expect_bf16_close(DecoderGrid& m, const engine::MicroBatch& mb, const ReferenceRun& ref) {
  const double loss = m.train_microbatch(mb, 1.0);
  EXPECT_NEAR(loss, ref.loss.item<double>(), 0.03 * ref.loss.item<double>());
  EXPECT_EQ(m.decoder(0, 0).params()[0].value.scalar_type(), at::kBFloat16);
  EXPECT_EQ(m.decoder(0, 0).params()[0].grad.scalar_type(), at::kFloat);
  ParamMap g = m.full_grads();
  for (const auto& [name, want] : ref.grads) EXPECT_LE(rel_error(g.at(name), want), 0.1) << name;
}

void expect_stage_boundaries_match(DecoderGrid& m, const engine::MicroBatch& mb,
                                   const ReferenceRun& ref, double tol) {
  const int S = m.stages();
  std::vector<engine::ActivationSet> sets(S);
  at::Tensor x;
  for (int s = 0; s < S; ++s) {
    auto f = m.decoder(s, 0).forward(sets[s], mb, x);
    run_lockstep({f.get()});
    x = f->output();
    if (s < S - 1) {
      EXPECT_LE(rel_error(x, ref.residuals[2 * (s + 1)]), tol) << "stage " << s;
    }
  }
  EXPECT_FALSE(x.defined());  // the last stage has no output
  at::Tensor g;
  for (int s = S - 1; s >= 0; --s) {
    auto b = m.decoder(s, 0).backward(sets[s], g);
    run_lockstep({b.get()});
    g = b->output();
    if (s > 0) {
      EXPECT_LE(rel_error(g, ref.residual_grads[2 * s]), tol) << "stage " << s;
    }
  }
  EXPECT_FALSE(g.defined());  // the first stage has no input gradient
}

at::Tensor leaf(at::Tensor t) {
  t = t.to(at::kDouble).clone();
  t.set_requires_grad(true);
  return t;
}

// ---- unit-level checks ---------------------------------------------------------------------

std::string layer_key(std::int64_t l, const char* rest) {
  return "layers." + std::to_string(l) + "." + rest;
}

at::Tensor run_unit(const std::vector<engine::Pass*>& ranks, int k) {
  std::vector<at::Tensor> out;
  for (engine::Pass* p : ranks) out.push_back(p->run(k));
  all_reduce_emulated(out);
  return out[0];
}

std::set<std::string> field_names(const engine::ActivationSet& s) {
  std::set<std::string> out;
  for (const auto& [k, _] : s.fields()) out.insert(k);
  return out;
}

void expect_forward_units_match(DecoderGrid& m, std::vector<engine::ActivationSet>& sets,
                                const engine::MicroBatch& mb, const ReferenceRun& ref,
                                double loss_scale, int units, double tol) {
  RankPasses f;
  for (int r = 0; r < m.tp(); ++r) {
    m.decoder(0, r).set_loss_scale(loss_scale);
    f.add(m.decoder(0, r).forward(sets[r], mb, {}));
  }
  ASSERT_EQ(f.ptrs[0]->size(), units);
  for (int k = 0; k < units; ++k) {
    EXPECT_LE(rel_error(run_unit(f.ptrs, k), ref.residuals[k + 1]), tol) << "forward unit " << k;
  }
  for (engine::Pass* p : f.ptrs) p->finish();
  for (int r = 0; r < m.tp(); ++r) {
    EXPECT_NEAR(m.decoder(0, r).loss(sets[r]), ref.loss.item<double>(), tol) << "rank " << r;
  }
}

StagePasses expect_mid_stage_unit_names(models::DecoderChunk& mid, engine::ActivationSet& set,
                                        std::int64_t C) {
  auto f = mid.forward(set, {}, at::zeros({1, 5, C}, at::kDouble));
  EXPECT_EQ(f->size(), 4);
  EXPECT_EQ(f->unit_name(0), "attn-F(2)");
  EXPECT_EQ(f->unit_name(3), "mlp-F(3)");
  EXPECT_THROW(f->run(1), std::logic_error);
  run_lockstep({f.get()});
  EXPECT_EQ(f->output().sizes(), (std::vector<std::int64_t>{1, 5, C}));
  StagePasses p;
  p.b = mid.backward(set, at::ones({1, 5, C}, at::kDouble));
  EXPECT_EQ(p.b->unit_name(0), "mlp-B(3)");
  EXPECT_EQ(p.b->unit_name(3), "attn-B(2)");
  p.w = mid.weight_grad(set);
  EXPECT_EQ(p.w->unit_name(0), "W(mlp 3)");
  EXPECT_EQ(p.w->unit_name(1), "W(attn 3)");
  EXPECT_EQ(p.w->size(), p.b->size());
  return p;
}

void expect_w_units_cover(DecoderGrid& m, std::vector<engine::ActivationSet>& sets,
                          const std::vector<std::vector<std::string>>& covers,
                          const ParamMap& ref_grads, double tol) {
  RankPasses passes;
  for (int r = 0; r < m.tp(); ++r) passes.add(m.decoder(0, r).weight_grad(sets[r]));
  const std::vector<engine::Pass*>& w = passes.ptrs;
  const int units = w[0]->size();
  ASSERT_EQ(covers.size(), static_cast<std::size_t>(units) + 1);
  std::set<std::string> done;
  for (int k = 0; k <= units; ++k) {
    for (engine::Pass* p : w) {
      if (k < units) {
        EXPECT_FALSE(p->run(k).defined()) << "W units start no collective";
      } else {
        p->finish();
      }
    }
    done.insert(covers[k].begin(), covers[k].end());
    for (const auto& [name, g] : m.full_grads()) {
      if (done.count(name)) {
        EXPECT_LE(rel_error(g, ref_grads.at(name)), tol) << name << " after W unit " << k;
      } else {
        EXPECT_EQ(g.abs().sum().item<double>(), 0.0) << name << " touched early, W unit " << k;
      }
    }
  }
  EXPECT_EQ(done.size(), ref_grads.size());
  for (const engine::ActivationSet& s : sets) EXPECT_TRUE(s.empty());
}

}  // namespace stp::testing
