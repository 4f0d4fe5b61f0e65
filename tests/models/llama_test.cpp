// LlamaChunk against the autograd reference (llama_reference.h): configuration errors, the
// parameter layout and its TP splits, whole-model loss and gradients at awkward sizes, TP =
// 2/3/4 equal to TP = 1 with key/value heads split and replicated, pipeline stages chained equal
// to one stage, and the kernels of llama_ops.h.
#include "models/llama.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>

#include "file_test_util.h"
#include "llama_reference.h"
#include "models/llama_ops.h"
#include "models/llama_params.h"

namespace stp::models {
namespace {

using stp::testing::error_of;
using testing::expect_grads_equal;
using testing::expect_grads_near;
using testing::leaf;
using testing::LlamaGrid;
using testing::make_llama_config;
using testing::ParamMap;
using testing::rel_error;

constexpr double kTol = 1e-10;  // float64 relative error bound (issue 12)

// ---- configuration ----------------------------------------------------------------------------

TEST(LlamaConfig, BadConfigsNameTheValues) {
  auto with = [](auto edit) {
    LlamaConfig x = make_llama_config(11, 8, 12, 6, 2, 2);
    edit(x);
    return error_of([&] { x.validate(); });
  };
  EXPECT_EQ(with([](LlamaConfig&) {}), "<no error>");
  testing::expect_shared_field_errors(with);
  EXPECT_EQ(with([](LlamaConfig& x) { x.n_kv_heads = -1; }),
            "n_kv_heads=-1 must be >= 1 (or 0 for n_heads)");
  EXPECT_EQ(with([](LlamaConfig& x) { x.ffn_hidden = -2; }),
            "ffn_hidden=-2 must be >= 1 (or 0 for 8*d_model/3 rounded up to 256)");
  EXPECT_EQ(with([](LlamaConfig& x) { x.n_heads = 5; }),
            "d_model=12 is not divisible by n_heads=5");
  EXPECT_EQ(with([](LlamaConfig& x) { x.n_heads = 4; }),
            "head size d_model/n_heads=3 must be even for rotary embeddings");
  EXPECT_EQ(with([](LlamaConfig& x) { x.n_kv_heads = 4; }),
            "n_heads=6 is not divisible by n_kv_heads=4 (each key/value head serves a whole group "
            "of query heads)");
  EXPECT_EQ(with([](LlamaConfig& x) { x.rope_theta = 0; }), "rope_theta=0 must be > 0");
  EXPECT_EQ(with([](LlamaConfig& x) { x.rms_eps = -1; }), "rms_eps=-1 must be > 0");
  EXPECT_EQ(with([](LlamaConfig& x) { x.init_std = 0; }), "init_std=0 must be > 0");
  EXPECT_EQ(with([](LlamaConfig& x) { x.dtype = at::kInt; }),
            "dtype=Int is not supported; use float32, float64 or bfloat16");
}

TEST(LlamaConfig, LayoutChecksNameTheValues) {
  LlamaConfig c = make_llama_config(11, 8, 16, 4, 2, 2, 12);
  EXPECT_EQ(error_of([&] { c.validate_layout(1, 4); }), "<no error>");  // kv replicated
  EXPECT_EQ(error_of([&] { c.validate_layout(2, 2); }), "<no error>");  // kv split
  EXPECT_EQ(error_of([&] { LlamaChunk(c, 0, 1, 0, 8); }), "n_heads=4 is not divisible by tp=8");
  EXPECT_EQ(error_of([&] { LlamaChunk(c, 0, 3, 0, 1); }),
            "n_layers=2 is fewer than the 3 pipeline stages (each stage needs >= 1 layer)");
  EXPECT_EQ(error_of([&] { LlamaChunk(c, 1, 1, 0, 1); }), "stage=1 is out of range [0, 1)");
  EXPECT_EQ(error_of([&] { LlamaChunk(c, 0, 1, 2, 2); }), "tp_rank=2 is out of range [0, 2)");
  EXPECT_EQ(error_of([&] { LlamaChunk(c, 0, 1, 0, 0); }), "tp=0 must be >= 1");
  LlamaConfig odd = make_llama_config(11, 8, 24, 6, 3, 2, 12);
  EXPECT_EQ(error_of([&] { odd.validate_layout(1, 2); }),
            "n_kv_heads=3 and tp=2: one must divide the other (key/value heads are split over TP "
            "when n_kv_heads >= tp, replicated when fewer)");
  odd.ffn_hidden = 10;
  EXPECT_EQ(error_of([&] { odd.validate_layout(1, 3); }), "ffn hidden=10 is not divisible by tp=3");
  c.tie_embeddings = true;
  EXPECT_EQ(error_of([&] { c.validate_layout(1, 2); }), "<no error>");
  EXPECT_EQ(error_of([&] { c.validate_layout(2, 1); }),
            "tie_embeddings=true needs the embedding and the LM head on one stage, but the model "
            "has 2 stages; untie them or run one stage (pp=1, one chunk per rank)");
  EXPECT_THROW(llama_model(make_llama_config(0, 8, 16, 4, 2, 2)), std::invalid_argument);
}

TEST(LlamaConfig, DefaultsFollowLlama) {
  LlamaConfig c;  // Llama-2 7B's shape
  EXPECT_EQ(c.hidden(), 11008);
  EXPECT_EQ(c.kv_heads(), 32);
  EXPECT_EQ(c.head_dim(), 128);
  c.ffn_hidden = 7;
  EXPECT_EQ(c.hidden(), 7);
  c.d_model = 128;
  c.ffn_hidden = 0;
  EXPECT_EQ(c.hidden(), 512);  // 341 rounded up to 256
}

// ---- parameters ------------------------------------------------------------------------------

TEST(LlamaParams, ChunksHoldTheirStagesParametersAndKvSplitFollowsTp) {
  LlamaConfig c = make_llama_config(11, 8, 16, 4, 2, 4, 12);
  LlamaChunk first(c, 0, 3, 0, 1), mid(c, 1, 3, 0, 1), last(c, 2, 3, 0, 1);
  EXPECT_EQ(first.params().size(), 1u + 2 * 7);  // wte, layers 0-1
  EXPECT_EQ(first.params()[0].name, "wte");
  EXPECT_EQ(mid.params().size(), 7u);
  EXPECT_EQ(mid.params()[0].name, "layers.2.ln1.w");
  EXPECT_EQ(last.params().size(), 7u + 2);  // layer 3, ln_f, lm_head
  EXPECT_EQ(last.params().back().name, "lm_head.w");
  EXPECT_EQ(first.input_shape(5), (std::vector<std::int64_t>{5, 8, 16}));
  EXPECT_EQ(mid.param("layers.2.attn.q.w").shard_dim, 0);
  EXPECT_EQ(mid.param("layers.2.attn.kv.w").shard_dim, 1);
  EXPECT_FALSE(mid.param("layers.2.ln1.w").decay);
  EXPECT_TRUE(mid.param("layers.2.mlp.gate_up.w").decay);
  EXPECT_EQ(error_of([&] { mid.param("wte"); }),
            "parameter 'wte' is not held by stage 1 (layers 2..2)");

  LlamaChunk tp2(c, 1, 3, 1, 2), tp4(c, 1, 3, 3, 4);
  EXPECT_TRUE(tp2.kv_split());
  EXPECT_EQ(tp2.param("layers.2.attn.kv.w").value.sizes(), (std::vector<std::int64_t>{2, 4, 16}));
  EXPECT_FALSE(tp4.kv_split());  // 2 key/value heads, 4 ranks: replicated
  EXPECT_EQ(tp4.param("layers.2.attn.kv.w").shard_dim, -1);
  EXPECT_EQ(tp4.param("layers.2.attn.kv.w").value.sizes(), (std::vector<std::int64_t>{2, 8, 16}));
  EXPECT_EQ(tp4.param("layers.2.attn.q.w").value.sizes(), (std::vector<std::int64_t>{4, 16}));

  c.n_layers = 1;
  c.tie_embeddings = true;
  LlamaChunk tied(c, 0, 1, 0, 1);
  EXPECT_EQ(tied.params().size(), 1u + 7 + 1);  // wte, the layer, ln_f: no lm_head.w
  EXPECT_EQ(tied.params().back().name, "ln_f.w");
}

TEST(LlamaParams, InitIsDeterministicAndTpShardsAreSlicesOfTheFullModel) {
  LlamaConfig c = make_llama_config(7, 5, 16, 4, 2, 2, 12);
  LlamaChunk one(c, 0, 1, 0, 1), again(c, 0, 1, 0, 1);
  for (int tp : {2, 4}) {
    std::vector<std::unique_ptr<LlamaChunk>> ranks;
    for (int r = 0; r < tp; ++r) ranks.push_back(std::make_unique<LlamaChunk>(c, 0, 1, r, tp));
    for (std::size_t i = 0; i < one.params().size(); ++i) {
      const engine::Param& p = one.params()[i];
      EXPECT_TRUE(at::equal(p.value, again.params()[i].value)) << p.name;
      const int dim = ranks[0]->params()[i].shard_dim;
      std::vector<at::Tensor> parts;
      for (auto& r : ranks) parts.push_back(r->params()[i].value);
      at::Tensor gathered = dim < 0 ? parts[tp - 1] : at::cat(parts, dim);  // replicated: whole
      EXPECT_TRUE(at::equal(gathered, p.value)) << p.name << " tp=" << tp;
    }
  }
  LlamaConfig big = make_llama_config(500, 8, 64, 4, 2, 8, 64);
  big.dtype = at::kFloat;
  LlamaChunk m(big, 0, 1, 0, 1);
  auto std_of = [&](const char* n) { return m.param(n).value.std().item<double>(); };
  EXPECT_NEAR(std_of("wte"), 0.02, 0.002);
  EXPECT_NEAR(std_of("layers.3.attn.q.w"), 0.02, 0.002);
  EXPECT_NEAR(std_of("layers.3.mlp.down.w"), 0.02 / std::sqrt(16.0), 0.0005);
  EXPECT_TRUE(at::equal(m.param("layers.3.ln1.w").value, at::ones({64})));
}

// ---- whole model against the autograd reference ----------------------------------------------

struct Shape {
  const char* name;
  std::int64_t vocab, seq, d, heads, kv_heads, layers, ffn, batch;
  bool tie = false;
  double theta = 10000.0;
};
void PrintTo(const Shape& s, std::ostream* os) { *os << s.name; }

class LlamaVsReference : public ::testing::TestWithParam<Shape> {};

TEST_P(LlamaVsReference, LossAndEveryGradientMatchAutograd) {
  const Shape s = GetParam();
  LlamaConfig c = make_llama_config(s.vocab, s.seq, s.d, s.heads, s.kv_heads, s.layers, s.ffn);
  c.tie_embeddings = s.tie;
  c.rope_theta = s.theta;
  ParamMap full = testing::random_llama_params(c, 7);
  engine::MicroBatch mb = testing::random_microbatch_for(c.vocab, s.batch, s.seq, 3);
  testing::ReferenceRun ref = testing::run_llama_reference(c, full, mb, 0.5);
  LlamaGrid m(c, 1, 1);
  m.load(full);
  const double loss = m.train_microbatch(mb, 0.5);
  EXPECT_LE(std::abs(loss - ref.loss.item<double>()), kTol * std::abs(ref.loss.item<double>()));
  // With T = 1 each position attends to itself only: o = v, queries get no gradient.
  std::set<std::string> zero;
  if (s.seq == 1) {
    for (std::int64_t l = 0; l < s.layers; ++l)
      zero.insert("layers." + std::to_string(l) + ".attn.q.w");
  }
  expect_grads_near(m.full_grads(), ref.grads, kTol, zero);
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, LlamaVsReference,
                         ::testing::Values(Shape{"gqa_odd_T", 11, 7, 16, 4, 2, 2, 12, 2},
                                           Shape{"mqa", 13, 5, 12, 3, 1, 2, 10, 3},
                                           Shape{"mha", 7, 5, 12, 3, 3, 2, 7, 2},
                                           Shape{"head_dim_2", 5, 6, 12, 6, 2, 1, 9, 1},
                                           Shape{"seq_len_1", 9, 1, 8, 2, 1, 2, 6, 3},
                                           Shape{"tied", 11, 5, 16, 4, 2, 2, 12, 2, true},
                                           Shape{"theta_500", 11, 9, 16, 2, 1, 2, 12, 2, false,
                                                 500.0},
                                           Shape{"ffn_default", 7, 3, 12, 3, 1, 1, 0, 1}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(LlamaVsReference, GradientsAccumulateOverMicrobatchesAndDeferredWEqualsFused) {
  LlamaConfig c = make_llama_config(11, 6, 16, 4, 1, 2, 10);
  ParamMap full = testing::random_llama_params(c, 2);
  std::vector<engine::MicroBatch> mbs;
  for (int i = 0; i < 3; ++i) mbs.push_back(testing::random_microbatch_for(c.vocab, 2, 6, 10 + i));
  testing::ReferenceStep ref = testing::llama_reference_step(c, full, mbs);
  for (int stages : {1, 2}) {
    LlamaGrid deferred(c, stages, 2), fused(c, stages, 2);
    deferred.load(full);
    fused.load(full);
    double mean = 0;
    for (const engine::MicroBatch& mb : mbs) {
      const double l = deferred.train_microbatch(mb, 1.0 / 3);
      EXPECT_EQ(fused.train_microbatch(mb, 1.0 / 3, /*fused_w=*/true), l);
      mean += l / 3;
    }
    EXPECT_NEAR(mean, ref.loss, kTol * ref.loss);
    ParamMap gd = deferred.full_grads(), gf = fused.full_grads();
    expect_grads_near(gd, ref.grads, kTol);
    for (const auto& [name, g] : gd) EXPECT_TRUE(at::equal(gf.at(name), g)) << name;
  }
}

// ---- tensor parallelism: TP = t is the TP = 1 model -------------------------------------------

using testing::TpCase;

class LlamaTensorParallel : public ::testing::TestWithParam<TpCase> {};

TEST_P(LlamaTensorParallel, SameLossAndFullGradientsAsTp1AndAutograd) {
  const TpCase t = GetParam();
  LlamaConfig c = make_llama_config(t.vocab, 5, t.d, t.heads, t.kv_heads, 2, t.hidden);
  ParamMap full = testing::random_llama_params(c, 5);
  engine::MicroBatch mb = testing::random_microbatch_for(c.vocab, 3, 5, 6);
  LlamaGrid one(c, 1, 1), many(c, 1, t.tp);
  testing::expect_layouts_agree(one, many, full, mb, kTol);
  // Replicated parameters (key/value weights too when NKV < tp) get bitwise identical
  // gradients on every TP rank: the optimizer counts them once (Note [Llama key/value heads]).
  EXPECT_EQ(many.chunk(0, 0).kv_split(), t.kv_heads >= t.tp);
  testing::expect_replicated_grads_identical(many);
  testing::ReferenceRun ref = testing::run_llama_reference(c, full, mb);
  expect_grads_near(many.full_grads(), ref.grads, kTol);
}

INSTANTIATE_TEST_SUITE_P(Degrees, LlamaTensorParallel,
                         ::testing::Values(TpCase{2, 7, 16, 4, 2, 10},  // kv split, Hl = 5
                                           TpCase{2, 7, 16, 4, 1, 12},  // kv replicated (MQA)
                                           TpCase{4, 7, 16, 4, 2, 12},  // kv replicated, 2 per head
                                           TpCase{4, 7, 16, 8, 4, 12},  // kv split, hd = 2
                                           TpCase{3, 7, 12, 6, 3, 9},   // odd tp, kv split
                                           TpCase{4, 7, 16, 4, 4, 8}),  // MHA
                         [](const auto& info) {
                           const TpCase& t = info.param;
                           return "tp" + std::to_string(t.tp) + "_nh" + std::to_string(t.heads) +
                                  "_nkv" + std::to_string(t.kv_heads);
                         });

// ---- pipeline stages chained equal one stage ---------------------------------------------------

TEST(LlamaPipeline, StagesChainedEqualOneStageAndTheReferenceResiduals) {
  LlamaConfig c = make_llama_config(11, 5, 16, 4, 1, 4, 12);
  ParamMap full = testing::random_llama_params(c, 8);
  engine::MicroBatch mb = testing::random_microbatch_for(c.vocab, 2, 5, 9);
  LlamaGrid one(c, 1, 1), three(c, 3, 1), four_tp4(c, 4, 4);
  one.load(full);
  three.load(full);
  four_tp4.load(full);
  const double l1 = one.train_microbatch(mb, 1.0);
  EXPECT_EQ(three.train_microbatch(mb, 1.0), l1);  // the same operations in the same order
  ParamMap g1 = one.full_grads();
  expect_grads_equal(three.full_grads(), g1);
  const double l4 = four_tp4.train_microbatch(mb, 1.0);
  EXPECT_LE(std::abs(l4 - l1), kTol * std::abs(l1));
  expect_grads_near(four_tp4.full_grads(), g1, kTol);

  // Each stage's output and input gradient are the reference's residual stream and its gradient.
  testing::ReferenceRun ref = testing::run_llama_reference(c, full, mb);
  LlamaGrid per_layer(c, 4, 1);
  per_layer.load(full);
  testing::expect_stage_boundaries_match(per_layer, mb, ref, kTol);
}

TEST(LlamaInputs, BadMicrobatchesAndActivationsStopWithAMessage) {
  LlamaConfig c = make_llama_config(11, 4, 8, 2, 1, 2, 6);
  LlamaChunk first(c, 0, 2, 0, 1), last(c, 1, 2, 0, 1);
  engine::ActivationSet set;
  engine::MicroBatch longer = testing::random_microbatch_for(c.vocab, 2, 5, 1);
  EXPECT_EQ(error_of([&] { first.forward(set, longer, {}); }),
            "sequence length T=5 is out of range [1, seq_len=4]");
  EXPECT_EQ(error_of([&] { last.forward(set, longer, {}); }),
            "stage 1 needs a (B, T, C=8) input activation");
  EXPECT_EQ(error_of([&] {
              last.forward(set, longer, at::zeros({2, 4, 8}, at::kFloat));
            }),
            "input dtype=Float must be the model dtype float64");
  EXPECT_THROW(last.set_loss_scale(0), std::invalid_argument);
}

// ---- bfloat16 ---------------------------------------------------------------------------------

TEST(LlamaBfloat16, TrainsCloseToTheFloat64ReferenceWithFloat32Grads) {
  testing::expect_bf16_family_close<LlamaGrid>(make_llama_config(11, 8, 16, 4, 2, 2, 16),
                                               testing::random_llama_params,
                                               testing::run_llama_reference);
}

// ---- kernels (llama_ops.h) against autograd ----------------------------------------------------

TEST(LlamaOps, RmsNormMatchesAutograd) {
  at::Tensor x = leaf(at::randn({3, 5, 7}, at::kDouble) * 2 + 1);
  at::Tensor w = leaf(at::randn({7}, at::kDouble));
  at::Tensor dy = at::randn({3, 5, 7}, at::kDouble);
  at::Tensor y = x / (x.pow(2).mean(-1, true) + 1e-5).sqrt() * w;
  y.backward(dy);
  ops::RmsNormOut n = ops::rmsnorm_forward(x.detach(), w.detach(), 1e-5);
  EXPECT_LE(rel_error(n.y, y.detach()), kTol);
  EXPECT_LE(rel_error(ops::rmsnorm_backward(dy, n.xhat, n.rstd, w.detach()), x.grad()), kTol);
  at::Tensor dw = at::zeros({7}, at::kDouble);
  ops::rmsnorm_weight_grad_(dy, n.xhat, dw);
  EXPECT_LE(rel_error(dw, w.grad()), kTol);
}

TEST(LlamaOps, RotaryIsARotationWhoseInverseIsItsBackward) {
  const std::int64_t B = 2, T = 5, n = 3, hd = 6;
  ops::RotaryTable table = ops::rotary_table(7, hd, 500.0, at::kDouble, at::kCPU);
  at::Tensor x = leaf(at::randn({B, T, n * hd}, at::kDouble));
  at::Tensor dy = at::randn({B, T, n * hd}, at::kDouble);
  at::Tensor y = ops::rotary_apply(x, table, n);
  // Position 0 is the identity; norms of every head are kept.
  EXPECT_TRUE(at::allclose(y.narrow(1, 0, 1), x.detach().narrow(1, 0, 1), 0, 1e-15));
  EXPECT_LE(
      rel_error(y.view({B, T, n, hd}).norm(2, -1), x.detach().view({B, T, n, hd}).norm(2, -1)),
      kTol);
  EXPECT_LE(rel_error(ops::rotary_apply(y, table, n, /*inverse=*/true), x.detach()), kTol);
  // rotate_half by formula, angle t * 500^(-2i/hd), differentiated by autograd.
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor ang = at::outer(at::arange(T, f64), at::pow(500.0, -at::arange(0, hd, 2, f64) / hd));
  at::Tensor cos = at::cat({ang, ang}, -1).cos().unsqueeze(1),
             sin = at::cat({ang, ang}, -1).sin().unsqueeze(1);
  at::Tensor xv = x.view({B, T, n, hd});
  at::Tensor rot = at::cat({-xv.narrow(-1, hd / 2, hd / 2), xv.narrow(-1, 0, hd / 2)}, -1);
  at::Tensor want = (xv * cos + rot * sin).reshape({B, T, n * hd});
  EXPECT_LE(rel_error(y, want.detach()), kTol);
  want.backward(dy);
  EXPECT_LE(rel_error(ops::rotary_apply(dy, table, n, /*inverse=*/true), x.grad()), kTol);
}

TEST(LlamaOps, SwigluMatchesAutograd) {
  at::Tensor gu = leaf(at::randn({2, 3, 10}, at::kDouble) * 2);
  at::Tensor dh = at::randn({2, 3, 5}, at::kDouble);
  at::Tensor g = gu.narrow(-1, 0, 5), u = gu.narrow(-1, 5, 5);
  at::Tensor h = g * at::sigmoid(g) * u;
  h.backward(dh);
  EXPECT_LE(rel_error(ops::swiglu_forward(gu.detach()), h.detach()), kTol);
  EXPECT_LE(rel_error(ops::swiglu_backward(dh, gu.detach()), gu.grad()), kTol);
}

TEST(LlamaOps, GroupedQueryAttentionMatchesAutograd) {
  for (auto [nh, nkv] : {std::pair<int, int>{4, 2}, {3, 1}, {2, 2}}) {
    for (std::int64_t T : {1, 7}) {
      const std::int64_t B = 2, hd = 4;
      at::Tensor qkv = leaf(at::randn({B, T, (nh + 2 * nkv) * hd}, at::kDouble));
      at::Tensor d_o = at::randn({B, T, nh * hd}, at::kDouble);
      auto heads = [&](std::int64_t off, std::int64_t n) {
        return qkv.narrow(2, off * hd, n * hd).view({B, T, n, hd}).transpose(1, 2);
      };
      at::Tensor q = heads(0, nh);
      at::Tensor k = heads(nh, nkv).repeat_interleave(nh / nkv, 1);
      at::Tensor v = heads(nh + nkv, nkv).repeat_interleave(nh / nkv, 1);
      at::Tensor o = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true)
                         .transpose(1, 2)
                         .reshape({B, T, nh * hd});
      o.backward(d_o);
      ops::AttentionOut a = ops::gqa_attention_forward(qkv.detach(), nh, nkv);
      EXPECT_LE(rel_error(a.o, o.detach()), kTol) << nh << "/" << nkv << " T=" << T;
      at::Tensor d = ops::gqa_attention_backward(d_o, qkv.detach(), a.o, a.lse, nh, nkv);
      EXPECT_LE(rel_error(d, qkv.grad()), kTol) << nh << "/" << nkv << " T=" << T;
    }
  }
}

}  // namespace
}  // namespace stp::models
