// Recompute in the decoder chunks (Note [Decoder units], Note [Recompute] in schedule/program.h):
// a recomputed set holds only each forward unit's input after F, and a step with it is BITWISE
// the same as without: the loss, every unit's and pass's output, what the set holds after B,
// and every gradient, for both families, several stages, TP 1/2 (4: Llama's replicated
// key/value heads), float64 and bfloat16, W fused and deferred.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "engine/activation_set.h"
#include "llama_reference.h"
#include "model_test_util.h"
#include "models/gpt.h"
#include "models/llama.h"

namespace stp::models {
namespace {

using testing::DecoderGrid;
using testing::ParamMap;

using Fields = std::map<std::string, at::Tensor>;

// Everything one microbatch's step produced on a grid, in the order it was produced.
struct Trace {
  double loss = 0;
  std::vector<at::Tensor> outputs;    // every unit's all-reduced result, every pass's output
  std::vector<Fields> after_f;        // per stage: TP rank 0's set after the forward
  std::vector<Fields> after_b;        // per stage: TP rank 0's set after the backward
  std::vector<std::int64_t> f_bytes;  // per stage: TP rank 0's set bytes after the forward
  ParamMap grads;
};

Fields snapshot(const engine::ActivationSet& s) {
  Fields out;
  for (const auto& [name, t] : s.fields()) out[name] = t.clone();
  return out;
}

// Runs `passes` (one per TP rank) in lock step, recording each unit's all-reduced result and,
// when `w` is given, W unit k of every rank between B unit k and its all-reduce (fused).
void run_recorded(const std::vector<engine::Pass*>& passes, const std::vector<engine::Pass*>* w,
                  Trace& t) {
  for (int k = 0; k < passes[0]->size(); ++k) {
    std::vector<at::Tensor> out;
    for (engine::Pass* p : passes) out.push_back(p->run(k));
    if (w != nullptr) {
      for (engine::Pass* p : *w) EXPECT_FALSE(p->run(k).defined());
    }
    if (out[0].defined()) {
      testing::all_reduce_emulated(out);
      t.outputs.push_back(out[0].clone());
    }
  }
  for (engine::Pass* p : passes) p->finish();
  if (w != nullptr) {
    for (engine::Pass* p : *w) p->finish();
  }
}

// One microbatch through every stage of `m`: forward stage by stage, then the backward from
// the last stage; with fused_w each W runs inside its B, else every W runs after every B
// (deferred past the other stages' backwards).
Trace run_step(DecoderGrid& m, const engine::MicroBatch& mb, bool recompute, bool fused_w) {
  const int S = m.stages(), R = m.tp();
  m.zero_grad();
  Trace t;
  std::vector<std::vector<engine::ActivationSet>> sets(S);
  for (int s = 0; s < S; ++s) {
    for (int r = 0; r < R; ++r) {
      sets[s].emplace_back(s, 0);
      sets[s].back().set_recompute(recompute);
    }
  }
  std::vector<std::unique_ptr<engine::Pass>> own;
  auto make = [&own](std::unique_ptr<engine::Pass> p) {
    own.push_back(std::move(p));
    return own.back().get();
  };
  std::vector<at::Tensor> act(R);
  for (int s = 0; s < S; ++s) {
    std::vector<engine::Pass*> f;
    for (int r = 0; r < R; ++r) {
      m.decoder(s, r).set_loss_scale(0.5);
      f.push_back(make(m.decoder(s, r).forward(sets[s][r], mb, act[r])));
    }
    run_recorded(f, nullptr, t);
    for (int r = 0; r < R; ++r) act[r] = f[r]->output();
    if (s < S - 1) t.outputs.push_back(act[0].clone());
    t.after_f.push_back(snapshot(sets[s][0]));
    t.f_bytes.push_back(sets[s][0].bytes());
  }
  t.loss = m.decoder(S - 1, 0).loss(sets[S - 1][0]);
  std::vector<at::Tensor> grad(R);
  std::vector<std::vector<engine::Pass*>> deferred;
  t.after_b.resize(S);
  for (int s = S - 1; s >= 0; --s) {
    std::vector<engine::Pass*> b, w;
    for (int r = 0; r < R; ++r) {
      b.push_back(make(m.decoder(s, r).backward(sets[s][r], grad[r])));
      w.push_back(make(m.decoder(s, r).weight_grad(sets[s][r])));
    }
    run_recorded(b, fused_w ? &w : nullptr, t);
    if (!fused_w) {
      t.after_b[s] = snapshot(sets[s][0]);
      deferred.push_back(w);
    }
    for (int r = 0; r < R; ++r) grad[r] = b[r]->output();
    if (s > 0) t.outputs.push_back(grad[0].clone());
  }
  for (auto& w : deferred) testing::run_lockstep(w);
  for (auto& stage : sets) {
    for (auto& set : stage) EXPECT_TRUE(set.empty());
  }
  t.grads = m.full_grads();
  return t;
}

void expect_fields_equal(const Fields& got, const Fields& want, const std::string& what) {
  std::set<std::string> g, w;
  for (const auto& f : got) g.insert(f.first);
  for (const auto& f : want) w.insert(f.first);
  ASSERT_EQ(g, w) << what;
  for (const auto& [name, t] : want) EXPECT_TRUE(at::equal(got.at(name), t)) << what << " " << name;
}

// What Note [Decoder units] says a recomputed set holds after F: each unit's input, stage 0's
// tokens, the last stage's head fields.
std::set<std::string> recomputed_fields(const DecoderChunk& c) {
  std::set<std::string> out;
  const LayerRange ls = c.layers();
  for (std::int64_t l = ls.first; l < ls.first + ls.count; ++l) {
    out.insert(testing::layer_key(l, "attn.in"));
    out.insert(testing::layer_key(l, "mlp.in"));
  }
  if (c.is_first_stage()) out.insert("emb.tokens");
  if (c.is_last_stage()) out.insert({"targets", "loss", "head.probs", "ln_f.xhat", "ln_f.rstd"});
  return out;
}

enum class Family { kGpt, kLlama };
// family, stages, tp, dtype, W fused
using Case = std::tuple<Family, int, int, at::ScalarType, bool>;

std::unique_ptr<DecoderGrid> make_grid(Family family, int stages, int tp, at::ScalarType dtype,
                                       engine::MicroBatch* mb) {
  if (family == Family::kGpt) {
    GptConfig c = testing::make_config(7, 5, 12, 4, 3);
    ParamMap full = testing::random_full_params(c, 11);
    *mb = testing::random_microbatch_for(c.vocab, 3, c.seq_len, 12);
    c.dtype = dtype;
    auto m = std::make_unique<testing::EmulatedModel>(c, stages, tp);
    m->load(full);
    return m;
  }
  LlamaConfig c = testing::make_llama_config(7, 5, 16, 4, 2, 3, 12);  // GQA: 4 heads, 2 kv
  ParamMap full = testing::random_llama_params(c, 11);
  *mb = testing::random_microbatch_for(c.vocab, 3, c.seq_len, 12);
  c.dtype = dtype;
  auto m = std::make_unique<testing::LlamaGrid>(c, stages, tp);
  m->load(full);
  return m;
}

class RecomputeBitwise : public ::testing::TestWithParam<Case> {};

TEST_P(RecomputeBitwise, SameBitsAsKeepingEverything) {
  const auto [family, stages, tp, dtype, fused] = GetParam();
  engine::MicroBatch mb;
  std::unique_ptr<DecoderGrid> m = make_grid(family, stages, tp, dtype, &mb);
  const Trace keep = run_step(*m, mb, /*recompute=*/false, fused);
  const Trace rc = run_step(*m, mb, /*recompute=*/true, fused);

  EXPECT_EQ(rc.loss, keep.loss);
  ASSERT_EQ(rc.outputs.size(), keep.outputs.size());
  for (std::size_t i = 0; i < keep.outputs.size(); ++i)
    EXPECT_TRUE(at::equal(rc.outputs[i], keep.outputs[i])) << "output " << i;
  for (int s = 0; s < stages; ++s) {
    std::set<std::string> names;
    for (const auto& f : rc.after_f[s]) names.insert(f.first);
    EXPECT_EQ(names, recomputed_fields(m->decoder(s, 0))) << "stage " << s << " after F";
    // The inputs kept are the residual stream the units received: a (B, T, C) each.
    for (const auto& [name, t] : rc.after_f[s]) {
      if (name.find(".in") != std::string::npos) {
        EXPECT_EQ(t.dim(), 3) << name;
      }
    }
    EXPECT_LT(rc.f_bytes[s], keep.f_bytes[s]) << "stage " << s;
    if (!fused)
      expect_fields_equal(rc.after_b[s], keep.after_b[s], "after B, stage " + std::to_string(s));
  }
  testing::expect_grads_equal(rc.grads, keep.grads);
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto [family, stages, tp, dtype, fused] = info.param;
  return std::string(family == Family::kGpt ? "Gpt" : "Llama") + "_S" + std::to_string(stages) +
         "_Tp" + std::to_string(tp) + (dtype == at::kDouble ? "_F64" : "_Bf16") +
         (fused ? "_Fused" : "_Deferred");
}

INSTANTIATE_TEST_SUITE_P(Grid, RecomputeBitwise,
                         ::testing::Combine(::testing::Values(Family::kGpt, Family::kLlama),
                                            ::testing::Values(1, 2, 3), ::testing::Values(1, 2),
                                            ::testing::Values(at::kDouble, at::kBFloat16),
                                            ::testing::Bool()),
                         case_name);
// Llama at tp 4 replicates its key/value heads (what attn-B returns carries their gradient).
INSTANTIATE_TEST_SUITE_P(LlamaReplicatedKv, RecomputeBitwise,
                         ::testing::Combine(::testing::Values(Family::kLlama),
                                            ::testing::Values(1, 3), ::testing::Values(4),
                                            ::testing::Values(at::kDouble), ::testing::Bool()),
                         case_name);

// A middle stage keeps two (B, T, C) inputs per layer instead of every field: print the ratio.
TEST(Recompute, KeptBytesAreAFractionOfTheSet) {
  GptConfig c = testing::make_config(7, 8, 32, 4, 3);
  ParamMap full = testing::random_full_params(c, 5);
  engine::MicroBatch mb = testing::random_microbatch_for(c.vocab, 2, c.seq_len, 3);
  testing::EmulatedModel m(c, 3, 1);
  m.load(full);
  const Trace keep = run_step(m, mb, false, false);
  const Trace rc = run_step(m, mb, true, false);
  for (int s = 0; s < 3; ++s) {
    const double ratio = static_cast<double>(rc.f_bytes[s]) / keep.f_bytes[s];
    std::printf("stage %d: recomputed set %lld of %lld bytes after F (%.3f)\n", s,
                static_cast<long long>(rc.f_bytes[s]), static_cast<long long>(keep.f_bytes[s]),
                ratio);
    if (s == 1) {
      EXPECT_LT(ratio, 0.2);  // 2 C of about 16 C + 2 + NH per token and layer
    }
  }
}

}  // namespace
}  // namespace stp::models
