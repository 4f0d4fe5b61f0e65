// The unit structure of LlamaChunk's passes (Note [Llama units]): what every unit returns
// against the autograd reference, which weights every W unit computes, with the key/value heads
// split and replicated over TP; and the ActivationSet holding exactly what the next pass needs.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "engine/activation_set.h"
#include "llama_reference.h"
#include "models/llama.h"

namespace stp::models {
namespace {

using testing::LlamaGrid;
using testing::ParamMap;
using testing::RankPasses;
using testing::rel_error;
using testing::run_unit;

constexpr double kTol = 1e-10;

std::string L(std::int64_t l, const char* rest) { return testing::layer_key(l, rest); }

// The leading (B, T, C) of what a B unit returned: with replicated key/value heads the buffer
// carries their gradient after it (Note [Llama key/value heads]).
at::Tensor leading(const at::Tensor& t, const at::Tensor& like) {
  return t.dim() == 3 ? t : t.narrow(0, 0, like.numel()).view(like.sizes());
}

// tp 1 and 2 split the 2 key/value heads; tp 4 replicates them, each shared by two ranks.
class LlamaUnitsVsReference : public ::testing::TestWithParam<int> {};

TEST_P(LlamaUnitsVsReference, EveryUnitMatchesAutogradAndEveryWUnitItsWeights) {
  const int tp = GetParam();
  LlamaConfig c = testing::make_llama_config(7, 5, 16, 4, 2, 3, 12);
  ParamMap full = testing::random_llama_params(c, 11);
  engine::MicroBatch mb = testing::random_microbatch_for(c.vocab, 3, 5, 12);
  testing::ReferenceRun ref = testing::run_llama_reference(c, full, mb, 0.5);
  LlamaGrid m(c, 1, tp);
  m.load(full);
  EXPECT_EQ(m.chunk(0, 0).kv_split(), tp <= 2);
  std::vector<engine::ActivationSet> sets(tp);
  ASSERT_NO_FATAL_FAILURE(testing::expect_forward_units_match(m, sets, mb, ref, 0.5, 6, kTol));

  RankPasses b;
  for (int r = 0; r < tp; ++r) b.add(m.chunk(0, r).backward(sets[r], {}));
  for (int k = 0; k < 6; ++k) {
    const std::string norm = L(2 - k / 2, k % 2 == 0 ? "ln2" : "ln1");
    const at::Tensor& want = ref.ln_out_grads.at(norm);
    at::Tensor got = run_unit(b.ptrs, k);
    EXPECT_EQ(got.dim() == 1, k % 2 == 1 && tp == 4) << "unit " << k << " returns " << got.sizes();
    EXPECT_LE(rel_error(leading(got, want), want), kTol) << "backward unit " << k;
  }
  for (engine::Pass* p : b.ptrs) p->finish();
  EXPECT_FALSE(b.ptrs[0]->output().defined());

  // W unit k computes exactly the weights B unit k propagated through (Note [Llama units]).
  std::vector<std::vector<std::string>> covers = {
      {"lm_head.w", "ln_f.w", L(2, "mlp.gate_up.w"), L(2, "mlp.down.w")},
      {L(2, "ln2.w"), L(2, "attn.q.w"), L(2, "attn.o.w")},
      {L(2, "attn.kv.w"), L(2, "ln1.w"), L(1, "mlp.gate_up.w"), L(1, "mlp.down.w")},
      {L(1, "ln2.w"), L(1, "attn.q.w"), L(1, "attn.o.w")},
      {L(1, "attn.kv.w"), L(1, "ln1.w"), L(0, "mlp.gate_up.w"), L(0, "mlp.down.w")},
      {L(0, "ln2.w"), L(0, "attn.q.w"), L(0, "attn.o.w")},
      {L(0, "attn.kv.w"), L(0, "ln1.w"), "wte"},  // the W pass's finish()
  };
  testing::expect_w_units_cover(m, sets, covers, ref.grads, kTol);
}

INSTANTIATE_TEST_SUITE_P(Tp, LlamaUnitsVsReference, ::testing::Values(1, 2, 4));

TEST(LlamaUnits, NamesCountsAndOrder) {
  LlamaConfig c = testing::make_llama_config(7, 5, 16, 4, 2, 6, 12);
  LlamaChunk mid(c, 1, 3, 0, 1);  // layers 2, 3
  engine::ActivationSet set;
  testing::StagePasses p = testing::expect_mid_stage_unit_names(mid, set, 16);
  for (int k = 0; k < p.b->size(); ++k) p.b->run(k);
  for (int k = 0; k < p.w->size(); ++k) p.w->run(k);
  EXPECT_THROW(p.w->finish(), std::logic_error);  // needs B's finish() (ln1 and kv of layer 2)
}

// ---- the ActivationSet holds exactly what the next pass needs ---------------------------------

std::set<std::string> keys(const engine::ActivationSet& s) { return testing::field_names(s); }

// Copies of every rank's set without `field` (tensors cloned: the backward updates some in
// place); runs B (unless skip_b) and W in lock step; true when a pass reported the missing field.
bool needs_field(LlamaGrid& m, const std::vector<engine::ActivationSet>& sets,
                 const std::string& field, bool skip_b) {
  std::vector<engine::ActivationSet> copies;
  for (const engine::ActivationSet& s : sets) {
    copies.emplace_back(s.chunk(), s.mb());
    for (const auto& [k, t] : s.fields())
      if (k != field) copies.back().put(k, t.clone());
  }
  bool missing = false;
  try {
    RankPasses b, w;
    for (int r = 0; r < m.tp(); ++r) {
      if (!skip_b) b.add(m.chunk(0, r).backward(copies[r], {}));
      w.add(m.chunk(0, r).weight_grad(copies[r]));
    }
    if (!skip_b) testing::run_lockstep(b.ptrs);
    testing::run_lockstep(w.ptrs);
  } catch (const std::logic_error& e) {
    missing = std::string(e.what()).find("has no field") != std::string::npos;
  }
  for (int r = 0; r < m.tp(); ++r) m.chunk(0, r).zero_grad();
  return missing;
}

// tp 1 (key/value heads split) and tp 2 with one key/value head (replicated).
class LlamaUnitsMemory : public ::testing::TestWithParam<int> {};

TEST_P(LlamaUnitsMemory, SetHoldsExactlyWhatTheRemainingPassesRead) {
  const int tp = GetParam();
  LlamaConfig c = testing::make_llama_config(7, 5, 12, 3 * tp, 1, 1, 10);  // hd = 4 / 2
  const std::int64_t hd = c.head_dim();
  ParamMap full = testing::random_llama_params(c, 2);
  engine::MicroBatch mb = testing::random_microbatch_for(c.vocab, 2, 5, 3);
  LlamaGrid m(c, 1, tp);
  m.load(full);
  EXPECT_EQ(m.chunk(0, 0).kv_split(), tp == 1);
  std::vector<engine::ActivationSet> sets;
  for (int r = 0; r < tp; ++r) sets.emplace_back(0, 7);
  RankPasses f;
  for (int r = 0; r < tp; ++r) f.add(m.chunk(0, r).forward(sets[r], mb, {}));
  testing::run_lockstep(f.ptrs);
  EXPECT_EQ(keys(sets[0]), (std::set<std::string>{
                               "emb.tokens", "head.probs", "layers.0.attn.lse", "layers.0.attn.o",
                               "layers.0.attn.qkv", "layers.0.ln1.rstd", "layers.0.ln1.xhat",
                               "layers.0.ln2.rstd", "layers.0.ln2.xhat", "layers.0.mlp.gu",
                               "ln_f.rstd", "ln_f.xhat", "loss", "targets"}));
  // Per rank, float64: xhat (B,T,C) x3, rstd (B,T,1) x3, qkv (B,T,(NHl+2)*hd) with ONE
  // key/value head, o (B,T,NHl*hd), gu (B,T,2*Hl), lse (B,NHl,T), probs (B,T,V), tokens and
  // targets (B,T), loss ().
  const std::int64_t BT = 10, NHl = 3, Hl = 10 / tp;
  EXPECT_EQ(sets[0].bytes(),
            8 * (BT * (3 * 12 + 3 + (NHl + 2) * hd + NHl * hd + 2 * Hl + 7 + 2) + 2 * NHl * 5 + 1));
  for (const std::string& k : keys(sets[0])) {
    if (k == "loss") continue;  // read by loss(), dropped by the backward
    EXPECT_TRUE(needs_field(m, sets, k, false)) << k;
  }
  RankPasses b;
  for (int r = 0; r < tp; ++r) b.add(m.chunk(0, r).backward(sets[r], {}));
  testing::run_lockstep(b.ptrs);
  EXPECT_THROW(m.chunk(0, 0).loss(sets[0]), std::logic_error);  // dropped by the backward
  EXPECT_EQ(keys(sets[0]),
            (std::set<std::string>{"emb.dx", "emb.tokens", "head.dlogits", "layers.0.attn.dkv",
                                   "layers.0.attn.dout", "layers.0.attn.dq", "layers.0.attn.o",
                                   "layers.0.ln1.dy", "layers.0.ln1.xhat", "layers.0.ln2.dy",
                                   "layers.0.ln2.xhat", "layers.0.mlp.dgu", "layers.0.mlp.dout",
                                   "layers.0.mlp.gu", "ln_f.dy", "ln_f.xhat"}));
  // Replicated: the key/value gradient of every head (here the one), all-reduced.
  EXPECT_EQ(sets[0].get("layers.0.attn.dkv").sizes(), (std::vector<std::int64_t>{2, 5, 2 * hd}));
  for (const std::string& k : keys(sets[0])) EXPECT_TRUE(needs_field(m, sets, k, true)) << k;
  RankPasses w;
  for (int r = 0; r < tp; ++r) w.add(m.chunk(0, r).weight_grad(sets[r]));
  testing::run_lockstep(w.ptrs);
  for (const engine::ActivationSet& s : sets) {
    EXPECT_TRUE(s.empty());
    EXPECT_EQ(s.bytes(), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(KvSplitAndReplicated, LlamaUnitsMemory, ::testing::Values(1, 2));

}  // namespace
}  // namespace stp::models
