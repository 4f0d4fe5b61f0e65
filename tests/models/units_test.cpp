// The unit structure of GptChunk's passes (Note [GPT units], Note [Units and collectives]):
// what every unit returns against the autograd reference, which weights every W unit computes,
// braided and fused execution equal to plain execution, and the ActivationSet holding exactly
// what the next pass needs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "engine/activation_set.h"
#include "model_test_util.h"
#include "models/gpt.h"

namespace stp::models {
namespace {

using testing::EmulatedModel;
using testing::ParamMap;
using testing::RankPasses;
using testing::rel_error;
using testing::run_unit;

constexpr double kTol = 1e-10;

models::GptConfig small_config(std::int64_t layers = 2) {
  return testing::make_config(7, 5, 12, 4, layers);
}

std::string L(std::int64_t l, const char* rest) { return testing::layer_key(l, rest); }

class UnitsVsReference : public ::testing::TestWithParam<int> {};  // TP degree

TEST_P(UnitsVsReference, EveryForwardAndBackwardUnitMatchesAutograd) {
  const int tp = GetParam();
  GptConfig c = small_config(3);
  ParamMap full = testing::random_full_params(c, 11);
  engine::MicroBatch mb = testing::random_microbatch(c, 3, 5, 12);
  testing::ReferenceRun ref = testing::run_reference(c, full, mb, 0.5);
  EmulatedModel m(c, 1, tp);
  m.load(full);
  std::vector<engine::ActivationSet> sets(tp);
  // Unit k's all-reduced result is the residual stream after attention/MLP of layer k/2.
  ASSERT_NO_FATAL_FAILURE(testing::expect_forward_units_match(m, sets, mb, ref, 0.5, 6, kTol));

  RankPasses b;
  for (int r = 0; r < tp; ++r) b.add(m.chunk(0, r).backward(sets[r], {}));
  for (int k = 0; k < 6; ++k) {
    // Unit k's all-reduced result is the gradient at the output of ln2 (mlp-B) or ln1 (attn-B).
    const std::int64_t l = 2 - k / 2;
    const std::string ln = L(l, k % 2 == 0 ? "ln2" : "ln1");
    EXPECT_LE(rel_error(run_unit(b.ptrs, k), ref.ln_out_grads.at(ln)), kTol)
        << "backward unit " << k;
  }
  for (engine::Pass* p : b.ptrs) p->finish();
  EXPECT_FALSE(b.ptrs[0]->output().defined());

  // W unit k computes exactly the weights B unit k propagated through (Note [GPT units]).
  std::vector<std::vector<std::string>> covers = {
      {"lm_head.w", "ln_f.w", "ln_f.b", L(2, "mlp.fc1.w"), L(2, "mlp.fc1.b"), L(2, "mlp.fc2.w"),
       L(2, "mlp.fc2.b")},
      {L(2, "ln2.w"), L(2, "ln2.b"), L(2, "attn.qkv.w"), L(2, "attn.qkv.b"), L(2, "attn.proj.w"),
       L(2, "attn.proj.b")},
      {L(2, "ln1.w"), L(2, "ln1.b"), L(1, "mlp.fc1.w"), L(1, "mlp.fc1.b"), L(1, "mlp.fc2.w"),
       L(1, "mlp.fc2.b")},
      {L(1, "ln2.w"), L(1, "ln2.b"), L(1, "attn.qkv.w"), L(1, "attn.qkv.b"), L(1, "attn.proj.w"),
       L(1, "attn.proj.b")},
      {L(1, "ln1.w"), L(1, "ln1.b"), L(0, "mlp.fc1.w"), L(0, "mlp.fc1.b"), L(0, "mlp.fc2.w"),
       L(0, "mlp.fc2.b")},
      {L(0, "ln2.w"), L(0, "ln2.b"), L(0, "attn.qkv.w"), L(0, "attn.qkv.b"), L(0, "attn.proj.w"),
       L(0, "attn.proj.b")},
      {L(0, "ln1.w"), L(0, "ln1.b"), "wte", "wpe"},  // the W pass's finish()
  };
  testing::expect_w_units_cover(m, sets, covers, ref.grads, kTol);
}

INSTANTIATE_TEST_SUITE_P(Tp, UnitsVsReference, ::testing::Values(1, 2, 4));

TEST(Units, NamesAndCounts) {
  GptConfig c = small_config(6);
  GptChunk mid(c, 1, 3, 0, 1);  // layers 2, 3
  engine::ActivationSet set;
  testing::expect_mid_stage_unit_names(mid, set, 12);
}

TEST(Units, RunOutOfOrderIsALogicError) {
  GptConfig c = small_config();
  GptChunk m(c, 0, 1, 0, 1);
  engine::ActivationSet set;
  engine::MicroBatch mb = testing::random_microbatch(c, 1, 5, 1);
  auto f = m.forward(set, mb, {});
  EXPECT_THROW(f->run(1), std::logic_error);
  EXPECT_THROW(f->finish(), std::logic_error);
  EXPECT_THROW(f->output(), std::logic_error);
  for (int k = 0; k < f->size(); ++k) EXPECT_TRUE(f->run(k).defined()) << "tp=1 still returns";
  EXPECT_THROW(f->run(f->size()), std::logic_error);
  f->finish();
  EXPECT_GT(m.loss(set), 0);
  auto b = m.backward(set, {});
  for (int k = 0; k < b->size(); ++k) b->run(k);
  auto w = m.weight_grad(set);
  for (int k = 0; k < w->size(); ++k) w->run(k);
  // W's finish() needs B's finish() (ln1 of the first layer, embeddings).
  EXPECT_THROW(w->finish(), std::logic_error);
}

// ---- braided and fused execution equal plain execution ----------------------------------------

// The executor's braid (DESIGN.md "Braiding") with the TP all-reduce emulated: a collective
// "completes" (is summed) only when the pass that started it runs its next unit or finishes.
// W, when given, is fused into B: B unit k, start its collective, W unit k.
struct Stream {
  std::vector<engine::Pass*> ranks;
  std::vector<engine::Pass*> fused_w;  // empty: none
  std::vector<at::Tensor> pending;
  void wait() {
    if (!pending.empty()) testing::all_reduce_emulated(pending);
    pending.clear();
  }
  void unit(int k) {
    wait();
    for (engine::Pass* p : ranks) pending.push_back(p->run(k));
    for (engine::Pass* p : fused_w) p->run(k);
  }
  void finish() {
    wait();
    for (engine::Pass* p : ranks) p->finish();
    for (engine::Pass* p : fused_w) p->finish();
  }
};

void braid(Stream a, Stream b) {
  const int n = std::max(a.ranks[0]->size(), b.ranks[0]->size());
  for (int k = 0; k < n; ++k) {
    if (k < a.ranks[0]->size()) a.unit(k);
    if (k < b.ranks[0]->size()) b.unit(k);
  }
  a.finish();
  b.finish();
}

void plain(Stream a) {
  for (int k = 0; k < a.ranks[0]->size(); ++k) a.unit(k);
  a.finish();
}

TEST(UnitsBraiding, FfFbFwBlocksEqualPlainPassesBitwise) {
  const int tp = 2;
  GptConfig c = small_config(2);
  ParamMap full = testing::random_full_params(c, 21);
  std::vector<engine::MicroBatch> mbs;
  for (int i = 0; i < 4; ++i) mbs.push_back(testing::random_microbatch(c, 2, 5, 30 + i));

  struct Run {
    std::unique_ptr<EmulatedModel> m;
    std::vector<std::vector<engine::ActivationSet>> sets;  // [mb][rank]
    std::vector<RankPasses> keep;
    std::vector<double> losses;
    Stream pass(int mb, char kind, bool fuse_w = false) {
      RankPasses p, w;
      for (int r = 0; r < m->tp(); ++r) {
        GptChunk& ch = m->chunk(0, r);
        if (kind == 'F') p.add(ch.forward(sets[mb][r], mbs_->at(mb), {}));
        if (kind == 'B') p.add(ch.backward(sets[mb][r], {}));
        if (kind == 'W') p.add(ch.weight_grad(sets[mb][r]));
        if (fuse_w) w.add(ch.weight_grad(sets[mb][r]));
      }
      Stream s{p.ptrs, w.ptrs, {}};
      keep.push_back(std::move(p));
      keep.push_back(std::move(w));
      return s;
    }
    const std::vector<engine::MicroBatch>* mbs_;
  };
  auto make = [&] {
    Run r;
    r.m = std::make_unique<EmulatedModel>(c, 1, tp);
    r.m->load(full);
    r.sets.assign(4, std::vector<engine::ActivationSet>(tp));
    r.mbs_ = &mbs;
    return r;
  };

  Run a = make();  // plain: F0 F1 F2 F3, then B+W of each microbatch in order
  for (int i = 0; i < 4; ++i) {
    plain(a.pass(i, 'F'));
    a.losses.push_back(a.m->chunk(0, 0).loss(a.sets[i][0]));
  }
  for (int i = 0; i < 4; ++i) {
    plain(a.pass(i, 'B'));
    plain(a.pass(i, 'W'));
  }

  Run b = make();  // braided: FF(0,1) FB(2, B0+W0 fused) B1 FW(3, W1) B2+W2 B3 W3
  braid(b.pass(0, 'F'), b.pass(1, 'F'));
  braid(b.pass(2, 'F'), b.pass(0, 'B', /*fuse_w=*/true));
  plain(b.pass(1, 'B'));
  braid(b.pass(3, 'F'), b.pass(1, 'W'));
  plain(b.pass(2, 'B', /*fuse_w=*/true));
  plain(b.pass(3, 'B'));
  plain(b.pass(3, 'W'));

  for (int i = 0; i < 4; ++i) {
    for (int r = 0; r < tp; ++r) {
      EXPECT_TRUE(a.sets[i][r].empty());
      EXPECT_TRUE(b.sets[i][r].empty());
    }
  }
  ParamMap ga = a.m->full_grads(), gb = b.m->full_grads();
  for (const auto& [name, g] : ga) {
    EXPECT_TRUE(at::equal(gb.at(name), g)) << name << " rel " << rel_error(gb.at(name), g);
  }
  // And the plain run is the autograd reference of the four microbatches.
  testing::ReferenceStep ref = testing::reference_step(c, full, mbs);
  for (const auto& [name, g] : ref.grads) EXPECT_LE(rel_error(ga.at(name), g * 4), kTol) << name;
}

TEST(UnitsBraiding, DeferredWeightGradEqualsFusedBitwise) {
  for (int stages : {1, 2}) {
    GptConfig c = small_config(2);
    ParamMap full = testing::random_full_params(c, 4);
    engine::MicroBatch mb = testing::random_microbatch(c, 3, 5, 5);
    EmulatedModel deferred(c, stages, 2), fused(c, stages, 2);
    deferred.load(full);
    fused.load(full);
    EXPECT_EQ(deferred.train_microbatch(mb, 0.25, false), fused.train_microbatch(mb, 0.25, true));
    ParamMap gd = deferred.full_grads(), gf = fused.full_grads();
    for (const auto& [name, g] : gd) EXPECT_TRUE(at::equal(gf.at(name), g)) << name;
  }
}

// ---- the ActivationSet holds exactly what the next pass needs ---------------------------------

// A copy whose tensors share nothing with `s` (the backward updates some fields in place).
engine::ActivationSet deep_copy(const engine::ActivationSet& s) {
  engine::ActivationSet out(s.chunk(), s.mb());
  for (const auto& [k, t] : s.fields()) out.put(k, t.clone());
  return out;
}

std::set<std::string> keys(const engine::ActivationSet& s) { return testing::field_names(s); }

// Runs B (unless skip_b) and W on a copy of `set`; true when some pass reported a missing field.
bool needs_missing_field(GptChunk& ch, engine::ActivationSet set, bool skip_b) {
  try {
    if (!skip_b) testing::run_lockstep({ch.backward(set, {}).get()});
    testing::run_lockstep({ch.weight_grad(set).get()});
  } catch (const std::logic_error& e) {
    return std::string(e.what()).find("has no field") != std::string::npos;
  }
  return false;
}

TEST(UnitsMemory, SetHoldsExactlyWhatTheRemainingPassesRead) {
  GptConfig c = small_config(1);
  ParamMap full = testing::random_full_params(c, 2);
  engine::MicroBatch mb = testing::random_microbatch(c, 2, 5, 3);
  GptChunk ch(c, 0, 1, 0, 1);
  testing::load_full_params(ch, full, 0, 1);
  engine::ActivationSet set(0, 7);
  auto f = ch.forward(set, mb, {});
  testing::run_lockstep({f.get()});
  EXPECT_EQ(keys(set), (std::set<std::string>{
                           "emb.tokens", "head.probs", "layers.0.attn.lse", "layers.0.attn.o",
                           "layers.0.attn.qkv", "layers.0.ln1.rstd", "layers.0.ln1.xhat",
                           "layers.0.ln2.rstd", "layers.0.ln2.xhat", "layers.0.mlp.gelu",
                           "layers.0.mlp.pre", "ln_f.rstd", "ln_f.xhat", "loss", "targets"}));
  std::int64_t bytes = 0;
  for (const auto& [_, t] : set.fields()) bytes += t.numel() * t.element_size();
  EXPECT_EQ(set.bytes(), bytes);
  // (B,T,C) xhat x3, (B,T,1) rstd x3, qkv (B,T,3C), lse (B,NH,T), o (B,T,C), pre and gelu
  // (B,T,4C), head.probs (B,T,V), tokens and targets (B,T), loss ().
  const std::int64_t BT = 2 * 5;
  EXPECT_EQ(bytes, 8 * (3 * BT * 12 + 3 * BT + BT * 36 + 2 * 4 * 5 + BT * 12 + 2 * BT * 48 +
                        BT * 7 + 2 * BT + 1));
  // Every field is read later: without it the backward or the weight gradient fails.
  for (const std::string& k : keys(set)) {
    if (k == "loss") continue;  // read by loss(), dropped by the backward
    engine::ActivationSet without = deep_copy(set);
    without.erase(k);
    EXPECT_TRUE(needs_missing_field(ch, without, false)) << k;
    ch.zero_grad();
  }
  auto b = ch.backward(set, {});
  testing::run_lockstep({b.get()});
  EXPECT_THROW(ch.loss(set), std::logic_error);  // dropped by the backward
  EXPECT_EQ(keys(set),
            (std::set<std::string>{"emb.dx", "emb.tokens", "head.dlogits", "layers.0.attn.dout",
                                   "layers.0.attn.dqkv", "layers.0.attn.o", "layers.0.ln1.dy",
                                   "layers.0.ln1.xhat", "layers.0.ln2.dy", "layers.0.ln2.xhat",
                                   "layers.0.mlp.dout", "layers.0.mlp.dpre", "layers.0.mlp.gelu",
                                   "ln_f.dy", "ln_f.xhat"}));
  for (const std::string& k : keys(set)) {
    engine::ActivationSet without = deep_copy(set);
    without.erase(k);
    EXPECT_TRUE(needs_missing_field(ch, without, true)) << k;
    ch.zero_grad();
  }
  testing::run_lockstep({ch.weight_grad(set).get()});
  EXPECT_TRUE(set.empty());
  EXPECT_EQ(set.bytes(), 0);
}

TEST(ActivationSet, GetNamesTheMissingFieldAndBytesSumsViews) {
  engine::ActivationSet s(1, 3);
  at::Tensor base = at::zeros({4, 6}, at::kFloat);
  s.put("a", base);
  s.put("view", base.narrow(0, 0, 2));  // a view counts by its own size
  EXPECT_EQ(s.bytes(), 4 * 6 * 4 + 2 * 6 * 4);
  try {
    s.get("b");
    FAIL() << "get() of a missing field did not throw";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("'b'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("chunk 1, mb 3"), std::string::npos) << e.what();
  }
  s.erase("a");
  EXPECT_EQ(s.bytes(), 2 * 6 * 4);
  s.clear();
  EXPECT_TRUE(s.empty());
}

}  // namespace
}  // namespace stp::models
