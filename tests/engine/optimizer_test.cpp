// AdamW (optimizer.h): the update against a hand-computed step and at::_fused_adamw_, global
// grad-norm clipping, replicated parameters counted once over emulated TP ranks, float32
// master weights for bfloat16, checkpoint state, and option errors.
#include "engine/optimizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "file_test_util.h"
#include "model_test_util.h"
#include "models/gpt.h"

namespace stp::engine {
namespace {

using stp::testing::error_of;

using testing::rel_error;

Param make_param(const std::string& name, at::Tensor value, at::Tensor grad, bool decay = true,
                 int shard_dim = -1) {
  Param p;
  p.name = name;
  p.value = value;
  p.grad = grad;
  p.decay = decay;
  p.shard_dim = shard_dim;
  return p;
}

TEST(AdamWOptions, BadValuesNameTheValue) {
  auto with = [](auto edit) {
    AdamWOptions o;
    edit(o);
    return error_of([&] { o.validate(); });
  };
  EXPECT_EQ(with([](AdamWOptions& o) { o.lr = -1; }), "lr=-1 must be >= 0");
  EXPECT_EQ(with([](AdamWOptions& o) { o.beta1 = 1; }), "beta1=1 is out of range [0, 1)");
  EXPECT_EQ(with([](AdamWOptions& o) { o.beta2 = -0.5; }), "beta2=-0.5 is out of range [0, 1)");
  EXPECT_EQ(with([](AdamWOptions& o) { o.eps = 0; }), "eps=0 must be > 0");
  EXPECT_EQ(with([](AdamWOptions& o) { o.weight_decay = -0.1; }), "weight_decay=-0.1 must be >= 0");
  EXPECT_EQ(with([](AdamWOptions&) {}), "<no error>");
  Param a = make_param("w", at::zeros({2}, at::kDouble), at::zeros({2}, at::kDouble));
  Param b = make_param("w", at::zeros({2}, at::kDouble), at::zeros({2}, at::kDouble));
  EXPECT_EQ(error_of([&] {
              AdamW({&a, &b}, AdamWOptions{}, 0);
            }),
            "parameter 'w' given twice to AdamW");
}

// Two steps of AdamW on three scalars, written out with plain doubles.
TEST(AdamW, MatchesAHandComputedStep) {
  AdamWOptions o;
  o.lr = 0.1;
  o.beta1 = 0.8;
  o.beta2 = 0.9;
  o.eps = 1e-3;
  o.weight_decay = 0.5;
  o.max_grad_norm = 0;  // off
  Param w = make_param("w", at::tensor({1.0, -2.0, 0.5}, at::kDouble),
                       at::tensor({0.3, -0.1, 2.0}, at::kDouble));
  Param b = make_param("b", at::tensor({0.25}, at::kDouble), at::tensor({-0.7}, at::kDouble),
                       /*decay=*/false);
  AdamW opt({&w, &b}, o, 0);
  std::vector<double> x = {1.0, -2.0, 0.5, 0.25}, m(4, 0), v(4, 0);
  const std::vector<bool> decay = {true, true, true, false};
  const std::vector<std::vector<double>> grads = {{0.3, -0.1, 2.0, -0.7}, {-0.2, 0.4, 1.0, 0.1}};
  for (int t = 1; t <= 2; ++t) {
    for (int i = 0; i < 4; ++i) {
      const double g = grads[t - 1][i];
      if (decay[i]) x[i] *= 1 - o.lr * o.weight_decay;
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g;
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g * g;
      const double mhat = m[i] / (1 - std::pow(o.beta1, t));
      const double vhat = v[i] / (1 - std::pow(o.beta2, t));
      x[i] -= o.lr * mhat / (std::sqrt(vhat) + o.eps);
    }
    if (t == 2) {
      w.grad.copy_(at::tensor({-0.2, 0.4, 1.0}, at::kDouble));
      b.grad.copy_(at::tensor({0.1}, at::kDouble));
    }
    StepResult r = opt.step();
    EXPECT_FALSE(r.skipped);
    EXPECT_EQ(r.clip_coef, 1.0);
    double sq = 0;
    for (double g : grads[t - 1]) sq += g * g;
    const double norm = std::sqrt(sq);
    EXPECT_NEAR(r.grad_norm, norm, 1e-15);
  }
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(w.value[i].item<double>(), x[i], 1e-14) << i;
  EXPECT_NEAR(b.value[0].item<double>(), x[3], 1e-14);
  EXPECT_EQ(opt.steps(), 2);
}

TEST(AdamW, MatchesFusedAdamwOverSeveralSteps) {
  AdamWOptions o;
  o.lr = 0.01;
  o.weight_decay = 0.1;
  o.max_grad_norm = 0;
  at::Tensor init = at::randn({5, 7}, at::kDouble);
  Param p = make_param("p", init.clone(), at::zeros({5, 7}, at::kDouble));
  AdamW opt({&p}, o, 0);
  at::Tensor ref = init.clone(), m = at::zeros_like(init), v = at::zeros_like(init);
  at::Tensor step = at::zeros({}, at::kDouble);
  for (int t = 0; t < 5; ++t) {
    at::Tensor g = at::randn({5, 7}, at::kDouble);
    p.grad.copy_(g);
    opt.step();
    step.add_(1);  // the caller advances the step before the fused kernel (as torch.optim does)
    at::_fused_adamw_({ref}, {g}, {m}, {v}, {}, {step}, o.lr, o.beta1, o.beta2, o.weight_decay,
                      o.eps, /*amsgrad=*/false, /*maximize=*/false);
  }
  EXPECT_LE(rel_error(p.value, ref), 1e-13);
  auto state = opt.state_dict();
  EXPECT_LE(rel_error(state.at("p.exp_avg"), m), 1e-13);
  EXPECT_LE(rel_error(state.at("p.exp_avg_sq"), v), 1e-13);
}

// The update as it ran before Note [Fused step]: one parameter at a time, ~11 kernels each.
// The fused step must give the same weights and moments.
struct LoopAdamW {
  struct Slot {
    Param* p;
    at::Tensor master, m, v;
  };
  AdamWOptions o;
  std::vector<Slot> slots;
  int t = 0;
  LoopAdamW(std::vector<Param*> ps, AdamWOptions opts) : o(opts) {
    for (Param* p : ps) {
      Slot s{p, {}, {}, {}};
      const auto dt = p->value.scalar_type();
      if (dt != at::kFloat && dt != at::kDouble) s.master = p->value.to(at::kFloat);
      const at::Tensor& w = s.master.defined() ? s.master : p->value;
      s.m = at::zeros_like(w);
      s.v = at::zeros_like(w);
      slots.push_back(s);
    }
  }
  void step(double clip) {
    ++t;
    const double bc1 = 1 - std::pow(o.beta1, t), bc2 = std::sqrt(1 - std::pow(o.beta2, t));
    for (Slot& s : slots) {
      const at::Tensor& w = s.master.defined() ? s.master : s.p->value;
      at::Tensor g = s.p->grad.to(w.scalar_type()).mul(clip);
      if (s.p->decay) w.mul_(1 - o.lr * o.weight_decay);
      s.m.mul_(o.beta1).add_(g, 1 - o.beta1);
      s.v.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
      w.addcdiv_(s.m, s.v.sqrt().div_(bc2).add_(o.eps), -o.lr / bc1);
      if (s.master.defined()) s.p->value.copy_(s.master);
    }
  }
};

TEST(AdamW, FusedStepEqualsTheLoopItReplaced) {
  AdamWOptions o;
  o.lr = 0.02;
  o.weight_decay = 0.1;
  o.max_grad_norm = 1.0;  // clips: the gradients below have norms well above 1
  auto make_set = [](std::vector<Param>& ps) {
    at::manual_seed(11);
    ps.push_back(make_param("a", at::randn({9, 5}, at::kDouble), {}));
    ps.push_back(make_param("b", at::randn({5}, at::kDouble), {}, /*decay=*/false));
    ps.push_back(make_param("c", at::randn({4, 3}, at::kDouble), {}));
    ps.push_back(make_param("d", at::randn({7}, at::kFloat), {}));
    ps.push_back(make_param("e", at::randn({3, 3}).to(at::kBFloat16), {}));
    ps.push_back(make_param("f", at::randn({6}).to(at::kBFloat16), {}, /*decay=*/false));
    for (Param& p : ps) {
      const auto dt = p.value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
      p.grad = at::zeros(p.value.sizes(), dt);
    }
  };
  std::vector<Param> fused_ps, loop_ps;
  make_set(fused_ps);
  make_set(loop_ps);
  std::vector<Param*> fused_ptrs, loop_ptrs;
  for (Param& p : fused_ps) fused_ptrs.push_back(&p);
  for (Param& p : loop_ps) loop_ptrs.push_back(&p);
  AdamW fused(fused_ptrs, o, 0);
  LoopAdamW loop(loop_ptrs, o);
  for (int t = 0; t < 4; ++t) {
    double sq = 0;
    for (std::size_t i = 0; i < fused_ps.size(); ++i) {
      at::Tensor g = at::randn(fused_ps[i].value.sizes(), at::kDouble) * (t + 1);
      fused_ps[i].grad.copy_(g);
      loop_ps[i].grad.copy_(g);
      sq += loop_ps[i].grad.to(at::kDouble).square().sum().item<double>();
    }
    const double norm = std::sqrt(sq), clip = std::min(1.0, o.max_grad_norm / (norm + 1e-6));
    StepResult r = fused.step();
    // Float32 gradients are summed in float32 (as the loop did): the norm to float32 precision.
    EXPECT_NEAR(r.grad_norm, norm, 1e-6 * norm);
    ASSERT_NEAR(r.clip_coef, clip, 1e-6 * clip);
    ASSERT_LT(r.clip_coef, 1.0);
    loop.step(r.clip_coef);
  }
  auto state = fused.state_dict();
  for (std::size_t i = 0; i < fused_ps.size(); ++i) {
    const Param& p = fused_ps[i];
    const double tol = p.value.scalar_type() == at::kDouble ? 1e-14 : 1e-6;
    EXPECT_LE(rel_error(p.value.to(at::kDouble), loop_ps[i].value.to(at::kDouble)), tol) << p.name;
    EXPECT_LE(
        rel_error(state.at(p.name + ".exp_avg").to(at::kDouble), loop.slots[i].m.to(at::kDouble)),
        tol)
        << p.name;
    EXPECT_LE(rel_error(state.at(p.name + ".exp_avg_sq").to(at::kDouble),
                        loop.slots[i].v.to(at::kDouble)),
              tol)
        << p.name;
  }
}

TEST(AdamW, ClippingScalesTheGradientsByMaxNormOverNorm) {
  AdamWOptions o;
  o.lr = 0.05;
  o.max_grad_norm = 1.0;
  at::Tensor init = at::randn({4, 3}, at::kDouble);
  at::Tensor g = at::full({4, 3}, 3.0, at::kDouble);  // norm 3*sqrt(12)
  g[0][0] = -1.0;
  Param clipped = make_param("w", init.clone(), g.clone());
  AdamW a({&clipped}, o, 0);
  StepResult r = a.step();
  const double norm = g.norm().item<double>();
  EXPECT_NEAR(r.grad_norm, norm, 1e-13);
  EXPECT_NEAR(r.clip_coef, 1.0 / (norm + 1e-6), 1e-16);
  // Clipping scales Param::grad in place, as torch.nn.utils.clip_grad_norm_ does.
  EXPECT_LE(rel_error(clipped.grad, g * r.clip_coef), 1e-16);

  // The same step with the gradient pre-scaled and clipping off.
  AdamWOptions off = o;
  off.max_grad_norm = 0;
  Param scaled = make_param("w", init.clone(), g * r.clip_coef);
  AdamW b({&scaled}, off, 0);
  b.step();
  EXPECT_LE(rel_error(clipped.value, scaled.value), 1e-15);
  // Clipping must matter here: with the raw gradient the second moment differs.
  EXPECT_GT(rel_error(a.state_dict().at("w.exp_avg_sq"), (g * g) * (1 - o.beta2)), 0.5);

  // Below the threshold nothing is scaled.
  o.max_grad_norm = 2 * norm;
  Param small = make_param("w", init.clone(), g.clone());
  AdamW c({&small}, o, 0);
  EXPECT_EQ(c.step().clip_coef, 1.0);
}

TEST(AdamW, ReplicatedParamsCountOnceAcrossTpRanks) {
  models::GptConfig cfg = testing::make_config(7, 4, 8, 2, 2);
  testing::ParamMap full = testing::random_full_params(cfg, 3);
  MicroBatch mb = testing::random_microbatch(cfg, 2, 4, 1);
  testing::EmulatedModel one(cfg, 1, 1), grid(cfg, 2, 2);  // TP=2 x PP=2
  one.load(full);
  grid.load(full);
  one.train_microbatch(mb, 1.0);
  grid.train_microbatch(mb, 1.0);

  AdamWOptions o;
  o.lr = 0.01;
  o.max_grad_norm = 0.5;  // the norm decides the clip: it must be the same everywhere
  AdamW single(params_of({&one.chunk(0, 0)}), o, 0);
  std::vector<std::unique_ptr<AdamW>> ranks;  // [stage * 2 + tp_rank]
  double total = 0, naive = 0;
  for (int s = 0; s < 2; ++s) {
    for (int r = 0; r < 2; ++r) {
      ranks.push_back(std::make_unique<AdamW>(params_of({&grid.chunk(s, r)}), o, r));
      total += ranks.back()->local_grad_sq_sum();
      naive += AdamW(params_of({&grid.chunk(s, r)}), o, 0).local_grad_sq_sum();
    }
  }
  testing::ReferenceRun ref = testing::run_reference(cfg, full, mb);
  double ref_sq = 0;
  for (const auto& [_, g] : ref.grads) ref_sq += g.pow(2).sum().item<double>();
  EXPECT_NEAR(total, ref_sq, 1e-12 * ref_sq);
  EXPECT_NEAR(single.local_grad_sq_sum(), ref_sq, 1e-12 * ref_sq);
  EXPECT_GT(naive - total, 1e-3 * ref_sq) << "counting replicated params on every rank differs";

  StepResult want = single.step();
  for (auto& opt : ranks) {
    StepResult got = opt->step([&](double) { return total; });  // the emulated all-reduce
    EXPECT_NEAR(got.grad_norm, want.grad_norm, 1e-12 * want.grad_norm);
    EXPECT_LT(got.clip_coef, 1.0);
  }
  // The updated shards are the TP = 1 update.
  for (const Param& p : one.chunk(0, 0).params()) {
    for (int s = 0; s < 2; ++s) {
      std::vector<at::Tensor> parts;
      bool found = false;
      for (int r = 0; r < 2; ++r) {
        for (const Param& q : grid.chunk(s, r).params()) {
          if (q.name == p.name) {
            parts.push_back(q.value);
            found = true;
          }
        }
      }
      if (!found) continue;
      at::Tensor v = p.shard_dim < 0 ? parts[0] : at::cat(parts, p.shard_dim);
      EXPECT_LE(rel_error(v, p.value), 1e-10) << p.name;
    }
  }
}

TEST(AdamW, Bfloat16UsesFloat32MasterWeightsAndMoments) {
  AdamWOptions o;
  o.lr = 1e-4;  // steps far below bfloat16 resolution near 1
  o.weight_decay = 0;
  o.max_grad_norm = 0;
  Param p = make_param("w", at::ones({6}, at::kBFloat16), at::ones({6}, at::kFloat));
  AdamW opt({&p}, o, 0);
  for (int t = 0; t < 10; ++t) opt.step();
  auto state = opt.state_dict();
  ASSERT_TRUE(state.count("w.master"));
  EXPECT_EQ(state.at("w.master").scalar_type(), at::kFloat);
  EXPECT_EQ(state.at("w.exp_avg").scalar_type(), at::kFloat);
  // Adam moves a constant gradient by ~lr per step: 10 steps -> 1 - 1e-3 in the master copy,
  // while each single step is below bfloat16's spacing of 2^-8 near 1.
  EXPECT_NEAR(state.at("w.master")[0].item<double>(), 1 - 10 * o.lr, 1e-6);
  EXPECT_TRUE(at::equal(p.value, state.at("w.master").to(at::kBFloat16)));
}

TEST(AdamW, StateDictRoundTripsAndRejectsForeignState) {
  AdamWOptions o;
  o.lr = 0.02;
  at::Tensor init = at::randn({3, 2}, at::kDouble);
  Param a = make_param("w", init.clone(), at::randn({3, 2}, at::kDouble));
  AdamW opt_a({&a}, o, 0);
  opt_a.step();
  opt_a.step();
  Param b = make_param("w", a.value.clone(), a.grad.clone());
  AdamW opt_b({&b}, o, 0);
  std::map<std::string, at::Tensor> saved;
  for (const auto& [k, t] : opt_a.state_dict()) saved[k] = t.clone();
  opt_b.load_state_dict(saved);
  EXPECT_EQ(opt_b.steps(), 2);
  opt_a.step();
  opt_b.step();
  EXPECT_TRUE(at::equal(a.value, b.value));

  auto missing = saved;
  missing.erase("w.exp_avg_sq");
  EXPECT_EQ(error_of([&] { opt_b.load_state_dict(missing); }),
            "optimizer state is missing 'w.exp_avg_sq'");
  auto wrong = saved;
  wrong["w.exp_avg"] = at::zeros({2, 3}, at::kDouble);
  EXPECT_EQ(error_of([&] { opt_b.load_state_dict(wrong); }),
            "optimizer state 'w.exp_avg' has shape [2, 3] Double; expected [3, 2] Double");
  auto extra = saved;
  extra["v.exp_avg"] = at::zeros({1}, at::kDouble);
  EXPECT_EQ(error_of([&] { opt_b.load_state_dict(extra); }),
            "optimizer state key 'v.exp_avg' does not belong to this rank's parameters");
}

TEST(AdamW, NonFiniteNormSkipsTheStep) {
  AdamWOptions o;
  Param p = make_param("w", at::ones({3}, at::kDouble), at::ones({3}, at::kDouble));
  p.grad[1] = std::nan("");
  AdamW opt({&p}, o, 0);
  StepResult r = opt.step();
  EXPECT_TRUE(r.skipped);
  EXPECT_TRUE(at::equal(p.value, at::ones({3}, at::kDouble)));
  EXPECT_EQ(opt.steps(), 0);
  p.grad.fill_(1.0);
  EXPECT_FALSE(opt.step().skipped);
  EXPECT_EQ(opt.steps(), 1);
}

}  // namespace
}  // namespace stp::engine
