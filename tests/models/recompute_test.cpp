// Recompute in the decoder chunks (Note [Decoder units], Note [Recompute] and Note [Partial
// sets] in schedule/program.h): a recomputed set holds only each recomputing forward unit's
// input after F (the leading ceil(g * L) layers of the chunk's L for a share g), and a step with
// it is BITWISE the same as without: the loss, every unit's and pass's output, what the set
// holds after B, and every gradient, for both families, several stages, TP 1/2 (4: Llama's
// replicated key/value heads), float64 and bfloat16, W fused and deferred, shares 1/8 .. 1 and
// 1 to 4 layers per chunk (ceil rounding).
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
// `share` is the sets' recompute share (Note [Partial sets]), used with recompute.
Trace run_step(DecoderGrid& m, const engine::MicroBatch& mb, bool recompute, bool fused_w,
               double share = 1) {
  const int S = m.stages(), R = m.tp();
  m.zero_grad();
  Trace t;
  std::vector<std::vector<engine::ActivationSet>> sets(S);
  for (int s = 0; s < S; ++s) {
    for (int r = 0; r < R; ++r) {
      sets[s].emplace_back(s, 0);
      sets[s].back().set_recompute(recompute, share);
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

// The fields of `set` that belong to layer l ("layers.l." ...).
std::set<std::string> layer_fields(const Fields& set, std::int64_t l) {
  const std::string prefix = testing::layer_key(l, "");
  std::set<std::string> out;
  for (const auto& f : set)
    if (f.first.rfind(prefix, 0) == 0) out.insert(f.first);
  return out;
}

// What Note [Decoder units] says a set with recompute share `share` holds after F: each
// recomputing unit's input (the leading `recomputed` layers: `expected_layers`, computed here
// independently of DecoderChunk::recomputed_layers), the other layers' fields as `keep` holds
// them, stage 0's tokens, the last stage's head fields.
std::set<std::string> recomputed_fields(const DecoderChunk& c, std::int64_t recomputed,
                                        const Fields& keep) {
  std::set<std::string> out;
  const LayerRange ls = c.layers();
  for (std::int64_t l = ls.first; l < ls.first + ls.count; ++l) {
    if (l - ls.first < recomputed) {
      out.insert(testing::layer_key(l, "attn.in"));
      out.insert(testing::layer_key(l, "mlp.in"));
    } else {
      std::set<std::string> kept = layer_fields(keep, l);
      out.insert(kept.begin(), kept.end());
    }
  }
  if (c.is_first_stage()) out.insert("emb.tokens");
  if (c.is_last_stage()) out.insert({"targets", "loss", "head.probs", "ln_f.xhat", "ln_f.rstd"});
  return out;
}

enum class Family { kGpt, kLlama };
// family, stages, tp, dtype, W fused, recompute share in eighths, model layers
using Case = std::tuple<Family, int, int, at::ScalarType, bool, int, int>;

// ceil(eighths / 8 * layers), by integers: the leading layers a chunk of `layers` recomputes.
std::int64_t expected_layers(int eighths, std::int64_t layers) {
  return (eighths * layers + 7) / 8;
}

std::unique_ptr<DecoderGrid> make_grid(Family family, int stages, int tp, at::ScalarType dtype,
                                       engine::MicroBatch* mb, int layers = 3) {
  if (family == Family::kGpt) {
    GptConfig c = testing::make_config(7, 5, 12, 4, layers);
    ParamMap full = testing::random_full_params(c, 11);
    *mb = testing::random_microbatch_for(c.vocab, 3, c.seq_len, 12);
    c.dtype = dtype;
    auto m = std::make_unique<testing::EmulatedModel>(c, stages, tp);
    m->load(full);
    return m;
  }
  LlamaConfig c = testing::make_llama_config(7, 5, 16, 4, 2, layers, 12);  // GQA: 4 heads, 2 kv
  ParamMap full = testing::random_llama_params(c, 11);
  *mb = testing::random_microbatch_for(c.vocab, 3, c.seq_len, 12);
  c.dtype = dtype;
  auto m = std::make_unique<testing::LlamaGrid>(c, stages, tp);
  m->load(full);
  return m;
}

class RecomputeBitwise : public ::testing::TestWithParam<Case> {};

TEST_P(RecomputeBitwise, SameBitsAsKeepingEverything) {
  const auto [family, stages, tp, dtype, fused, eighths, layers] = GetParam();
  engine::MicroBatch mb;
  std::unique_ptr<DecoderGrid> m = make_grid(family, stages, tp, dtype, &mb, layers);
  const Trace keep = run_step(*m, mb, /*recompute=*/false, fused);
  const Trace rc = run_step(*m, mb, /*recompute=*/true, fused, eighths / 8.0);

  EXPECT_EQ(rc.loss, keep.loss);
  ASSERT_EQ(rc.outputs.size(), keep.outputs.size());
  for (std::size_t i = 0; i < keep.outputs.size(); ++i)
    EXPECT_TRUE(at::equal(rc.outputs[i], keep.outputs[i])) << "output " << i;
  for (int s = 0; s < stages; ++s) {
    std::set<std::string> names;
    for (const auto& f : rc.after_f[s]) names.insert(f.first);
    const DecoderChunk& c = m->decoder(s, 0);
    const std::int64_t r = expected_layers(eighths, c.layers().count);
    EXPECT_EQ(DecoderChunk::recomputed_layers(eighths / 8.0, c.layers().count), r);
    EXPECT_EQ(names, recomputed_fields(c, r, keep.after_f[s])) << "stage " << s << " after F";
    // The layers that do not recompute keep their fields bit for bit.
    for (std::int64_t l = c.layers().first + r; l < c.layers().first + c.layers().count; ++l) {
      for (const std::string& name : layer_fields(keep.after_f[s], l))
        EXPECT_TRUE(at::equal(rc.after_f[s].at(name), keep.after_f[s].at(name))) << name;
    }
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
  const auto [family, stages, tp, dtype, fused, eighths, layers] = info.param;
  std::string name = std::string(family == Family::kGpt ? "Gpt" : "Llama") + "_S" +
                     std::to_string(stages) + "_Tp" + std::to_string(tp) +
                     (dtype == at::kDouble ? "_F64" : "_Bf16") + (fused ? "_Fused" : "_Deferred");
  if (eighths < 8) name += "_Share" + std::to_string(eighths) + "of8";
  if (layers != 3) name += "_L" + std::to_string(layers);
  return name;
}

INSTANTIATE_TEST_SUITE_P(Grid, RecomputeBitwise,
                         ::testing::Combine(::testing::Values(Family::kGpt, Family::kLlama),
                                            ::testing::Values(1, 2, 3), ::testing::Values(1, 2),
                                            ::testing::Values(at::kDouble, at::kBFloat16),
                                            ::testing::Bool(), ::testing::Values(8),
                                            ::testing::Values(3)),
                         case_name);
// Llama at tp 4 replicates its key/value heads (what attn-B returns carries their gradient).
INSTANTIATE_TEST_SUITE_P(LlamaReplicatedKv, RecomputeBitwise,
                         ::testing::Combine(::testing::Values(Family::kLlama),
                                            ::testing::Values(1, 3), ::testing::Values(4),
                                            ::testing::Values(at::kDouble), ::testing::Bool(),
                                            ::testing::Values(8), ::testing::Values(3)),
                         case_name);
// Partial sets (Note [Partial sets]): shares 1/8 .. 1 with 1 to 4 layers per chunk, so ceil(g*L)
// is every count from 1 to L; 3 stages of L layers each (the first holds the embedding, the
// last the head, the middle one neither).
INSTANTIATE_TEST_SUITE_P(Shares, RecomputeBitwise,
                         ::testing::Combine(::testing::Values(Family::kGpt, Family::kLlama),
                                            ::testing::Values(3), ::testing::Values(1, 2),
                                            ::testing::Values(at::kDouble, at::kBFloat16),
                                            ::testing::Bool(), ::testing::Values(1, 2, 4, 6),
                                            ::testing::Values(3, 6, 9, 12)),
                         case_name);
// One stage (embedding and head in one chunk), two stages of uneven layers (2 + 1).
INSTANTIATE_TEST_SUITE_P(SharesFewStages, RecomputeBitwise,
                         ::testing::Combine(::testing::Values(Family::kGpt, Family::kLlama),
                                            ::testing::Values(1, 2), ::testing::Values(1, 2),
                                            ::testing::Values(at::kDouble, at::kBFloat16),
                                            ::testing::Bool(), ::testing::Values(1, 4, 6),
                                            ::testing::Values(3, 4)),
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

// The bound the planner relies on (Note [Partial sets]): with share g a set holds after F at
// most 1 - g * (1 - keep) of the set without recompute, keep being the share the whole-recompute
// set holds, measured the same way; and less the more layers recompute. Per stage, 4 layers per
// chunk (so ceil(g * 4) rounds up for odd eighths: the bound is met exactly at even ones), both
// families.
TEST(Recompute, PartialSetHoldsAtMostItsShareOfTheSaving) {
  for (Family family : {Family::kGpt, Family::kLlama}) {
    engine::MicroBatch mb;
    std::unique_ptr<DecoderGrid> m = make_grid(family, 3, 1, at::kDouble, &mb, /*layers=*/12);
    const Trace keep = run_step(*m, mb, false, false);
    const Trace whole = run_step(*m, mb, true, false);
    std::vector<std::int64_t> last = keep.f_bytes;
    for (int eighths = 1; eighths <= 8; ++eighths) {
      const double g = eighths / 8.0;
      const Trace part = run_step(*m, mb, true, false, g);
      for (int s = 0; s < 3; ++s) {
        const double full = static_cast<double>(keep.f_bytes[s]);
        const double share = whole.f_bytes[s] / full;
        const double got = part.f_bytes[s] / full;
        const std::string what = std::string(family == Family::kGpt ? "gpt" : "llama") + " stage " +
                                 std::to_string(s) + " share " + std::to_string(g);
        EXPECT_LE(got, 1 - g * (1 - share) + 1e-12) << what;
        EXPECT_LE(part.f_bytes[s], last[s]) << what;
        if (expected_layers(eighths, 4) > expected_layers(eighths - 1, 4)) {
          EXPECT_LT(part.f_bytes[s], last[s]) << what;  // one more layer recomputes
        }
        if (eighths == 8) {
          EXPECT_EQ(part.f_bytes[s], whole.f_bytes[s]) << what;
        }
        if (s == 1 && eighths % 2 == 0)
          std::printf("%s: %.3f of the set after F (bound %.3f, whole recompute %.3f)\n",
                      what.c_str(), got, 1 - g * (1 - share), share);
        last[s] = part.f_bytes[s];
      }
    }
  }
}

}  // namespace
}  // namespace stp::models
