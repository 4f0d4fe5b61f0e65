// GptChunk against the autograd reference (model_test_util.h): whole-model loss and gradients,
// TP = 2/3/4 equal to TP = 1, pipeline stages chained equal to one stage, configuration
// errors, initialisation, and the explicit kernels of gpt_ops.h.
#include "models/gpt.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "file_test_util.h"
#include "model_test_util.h"
#include "models/gpt_ops.h"
#include "models/gpt_params.h"

namespace stp::models {
namespace {

using stp::testing::error_of;

using testing::EmulatedModel;
using testing::expect_grads_equal;
using testing::expect_grads_near;
using testing::leaf;
using testing::make_config;
using testing::ParamMap;
using testing::rel_error;

constexpr double kTol = 1e-10;  // float64 relative error bound (issue 5)

// ---- configuration ----------------------------------------------------------------------------

TEST(GptConfig, BadConfigsNameTheValues) {
  GptConfig c = make_config(11, 8, 12, 6, 2);
  EXPECT_EQ(error_of([&] { GptChunk(c, 0, 1, 0, 4); }), "n_heads=6 is not divisible by tp=4");
  EXPECT_EQ(error_of([&] { GptChunk(c, 0, 3, 0, 1); }),
            "n_layers=2 is fewer than the 3 pipeline stages (each stage needs >= 1 layer)");
  GptConfig h = make_config(11, 8, 12, 2, 2, 10);
  EXPECT_EQ(error_of([&] { GptChunk(h, 0, 1, 0, 4); }), "n_heads=2 is not divisible by tp=4");
  EXPECT_EQ(error_of([&] { h.validate_layout(1, 2); }), "<no error>");
  h.mlp_hidden = 9;
  EXPECT_EQ(error_of([&] { h.validate_layout(1, 2); }), "mlp hidden=9 is not divisible by tp=2");
  EXPECT_EQ(error_of([&] { GptChunk(c, 1, 1, 0, 1); }), "stage=1 is out of range [0, 1)");
  EXPECT_EQ(error_of([&] { GptChunk(c, 0, 1, 2, 2); }), "tp_rank=2 is out of range [0, 2)");
  EXPECT_EQ(error_of([&] { GptChunk(c, 0, 1, 0, 0); }), "tp=0 must be >= 1");

  auto with = [&](auto edit) {
    GptConfig x = make_config(11, 8, 12, 6, 2);
    edit(x);
    return error_of([&] { x.validate(); });
  };
  testing::expect_shared_field_errors(with);
  EXPECT_EQ(with([](GptConfig& x) { x.mlp_hidden = -3; }),
            "mlp_hidden=-3 must be >= 1 (or 0 for 4*d_model)");
  EXPECT_EQ(with([](GptConfig& x) { x.n_heads = 5; }), "d_model=12 is not divisible by n_heads=5");
  EXPECT_EQ(with([](GptConfig& x) { x.dtype = at::kInt; }),
            "dtype=Int is not supported; use float32, float64 or bfloat16");
  EXPECT_EQ(with([](GptConfig& x) { x.init_std = 0; }), "init_std=0 must be > 0");
  EXPECT_EQ(with([](GptConfig& x) { x.ln_eps = -1; }), "ln_eps=-1 must be > 0");
  EXPECT_EQ(with([](GptConfig&) {}), "<no error>");
}

TEST(GptConfig, ParsesDtypeNames) {
  EXPECT_EQ(parse_dtype("float32"), at::kFloat);
  EXPECT_EQ(parse_dtype("fp64"), at::kDouble);
  EXPECT_EQ(parse_dtype("bf16"), at::kBFloat16);
  EXPECT_EQ(dtype_name(at::kBFloat16), "bfloat16");
  EXPECT_EQ(error_of([] { parse_dtype("float16x"); }),
            "dtype='float16x' is unknown; use float32, float64 or bfloat16");
}

TEST(GptConfig, LayerSplitGivesRemainderToEarlyStages) {
  std::vector<std::int64_t> counts, firsts;
  for (int s = 0; s < 3; ++s) {
    LayerRange r = stage_layers(7, s, 3);
    counts.push_back(r.count);
    firsts.push_back(r.first);
  }
  EXPECT_EQ(counts, (std::vector<std::int64_t>{3, 2, 2}));
  EXPECT_EQ(firsts, (std::vector<std::int64_t>{0, 3, 5}));
  EXPECT_EQ(stage_layers(4, 3, 4).first, 3);
  EXPECT_EQ(stage_layers(4, 3, 4).count, 1);
  EXPECT_THROW(stage_layers(2, 0, 3), std::logic_error);
}

// ---- parameters and initialisation ----------------------------------------------------------

TEST(GptParams, ChunksHoldTheirStagesParameters) {
  GptConfig c = make_config(11, 8, 12, 3, 4);
  GptChunk first(c, 0, 3, 0, 1), mid(c, 1, 3, 0, 1), last(c, 2, 3, 0, 1);
  EXPECT_EQ(first.params().size(), 2u + 2 * 12);  // wte, wpe, layers 0-1
  EXPECT_EQ(first.params()[0].name, "wte");
  EXPECT_EQ(mid.params().size(), 12u);  // layer 2
  EXPECT_EQ(mid.params()[0].name, "layers.2.ln1.w");
  EXPECT_EQ(last.params().size(), 12u + 3);  // layer 3, ln_f, lm_head
  EXPECT_EQ(last.params().back().name, "lm_head.w");
  EXPECT_EQ(first.input_shape(5), (std::vector<std::int64_t>{5, 8, 12}));
  EXPECT_EQ(mid.param("layers.2.attn.qkv.w").shard_dim, 1);
  EXPECT_FALSE(mid.param("layers.2.attn.qkv.b").decay);
  EXPECT_TRUE(mid.param("layers.2.mlp.fc1.w").decay);
  EXPECT_EQ(error_of([&] { mid.param("wte"); }),
            "parameter 'wte' is not held by stage 1 (layers 2..2)");
}

TEST(GptParams, InitIsDeterministicAndTpShardsAreSlicesOfTheFullModel) {
  GptConfig c = make_config(7, 5, 12, 4, 2);
  GptChunk one(c, 0, 1, 0, 1);
  GptChunk again(c, 0, 1, 0, 1);
  std::vector<std::unique_ptr<GptChunk>> four;
  for (int r = 0; r < 4; ++r) four.push_back(std::make_unique<GptChunk>(c, 0, 1, r, 4));
  for (std::size_t i = 0; i < one.params().size(); ++i) {
    const engine::Param& p = one.params()[i];
    EXPECT_TRUE(at::equal(p.value, again.params()[i].value)) << p.name;
    std::vector<at::Tensor> parts;
    for (auto& c4 : four) parts.push_back(c4->params()[i].value);
    at::Tensor gathered = p.shard_dim < 0 ? parts[0] : at::cat(parts, p.shard_dim);
    EXPECT_TRUE(at::equal(gathered, p.value)) << p.name;
    if (p.shard_dim >= 0) {
      EXPECT_EQ(parts[1].size(p.shard_dim) * 4, p.value.size(p.shard_dim));
    }
  }
  c.seed = 99;
  GptChunk other(c, 0, 1, 0, 1);
  EXPECT_FALSE(at::equal(other.param("wte").value, one.param("wte").value));
  // Different names draw different numbers from the same seed.
  EXPECT_FALSE(at::equal(one.param("layers.0.mlp.fc1.w").value.narrow(0, 0, 12),
                         one.param("layers.1.mlp.fc1.w").value.narrow(0, 0, 12)));
}

TEST(GptParams, InitFollowsGpt2Scales) {
  GptConfig c = make_config(500, 64, 64, 4, 8);
  GptChunk m(c, 0, 1, 0, 1);
  auto std_of = [&](const char* n) { return m.param(n).value.std().item<double>(); };
  EXPECT_NEAR(std_of("wte"), 0.02, 0.002);
  EXPECT_NEAR(std_of("layers.3.mlp.fc1.w"), 0.02, 0.001);
  EXPECT_NEAR(std_of("layers.3.mlp.fc2.w"), 0.02 / std::sqrt(16.0), 0.0005);
  EXPECT_TRUE(at::equal(m.param("layers.3.ln1.w").value, at::ones({64}, at::kDouble)));
  EXPECT_EQ(m.param("layers.3.attn.qkv.b").value.abs().sum().item<double>(), 0.0);
}

// ---- whole model against the autograd reference ----------------------------------------------

struct Shape {
  const char* name;
  std::int64_t vocab, seq, d, heads, layers, hidden, batch;
};
void PrintTo(const Shape& s, std::ostream* os) { *os << s.name; }

class GptVsReference : public ::testing::TestWithParam<Shape> {};

TEST_P(GptVsReference, LossAndEveryGradientMatchAutograd) {
  const Shape s = GetParam();
  GptConfig c = make_config(s.vocab, s.seq, s.d, s.heads, s.layers, s.hidden);
  ParamMap full = testing::random_full_params(c, 7);
  engine::MicroBatch mb = testing::random_microbatch(c, s.batch, s.seq, 3);
  testing::ReferenceRun ref = testing::run_reference(c, full, mb, 0.5);

  EmulatedModel m(c, 1, 1);
  m.load(full);
  const double loss = m.train_microbatch(mb, 0.5);
  EXPECT_LE(std::abs(loss - ref.loss.item<double>()), kTol * std::abs(ref.loss.item<double>()));
  expect_grads_near(m.full_grads(), ref.grads, kTol);
}

INSTANTIATE_TEST_SUITE_P(AwkwardSizes, GptVsReference,
                         ::testing::Values(Shape{"plain", 11, 8, 12, 3, 2, 0, 2},
                                           Shape{"odd_width_9", 7, 5, 9, 3, 2, 0, 3},
                                           Shape{"odd_width_15", 13, 4, 15, 5, 1, 0, 1},
                                           Shape{"one_head", 5, 6, 6, 1, 2, 0, 2},
                                           Shape{"seq_len_1", 9, 1, 8, 2, 2, 0, 3},
                                           Shape{"odd_hidden", 6, 3, 6, 2, 3, 7, 1}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(GptVsReference, ShorterSequenceThanSeqLen) {
  GptConfig c = make_config(9, 8, 8, 2, 2);
  ParamMap full = testing::random_full_params(c, 1);
  engine::MicroBatch mb = testing::random_microbatch(c, 2, 5, 4);  // T = 5 < seq_len = 8
  testing::ReferenceRun ref = testing::run_reference(c, full, mb);
  EmulatedModel m(c, 1, 1);
  m.load(full);
  m.train_microbatch(mb, 1.0);
  ParamMap got = m.full_grads();
  EXPECT_LE(rel_error(got.at("wpe"), ref.grads.at("wpe")), kTol);
  EXPECT_EQ(got.at("wpe").narrow(0, 5, 3).abs().sum().item<double>(), 0.0);
}

TEST(GptVsReference, GradientsAccumulateOverMicrobatchesAndLossScaleApplies) {
  GptConfig c = make_config(11, 6, 12, 3, 2);
  ParamMap full = testing::random_full_params(c, 2);
  std::vector<engine::MicroBatch> mbs = {testing::random_microbatch(c, 2, 6, 10),
                                         testing::random_microbatch(c, 2, 6, 11),
                                         testing::random_microbatch(c, 2, 6, 12)};
  testing::ReferenceStep ref = testing::reference_step(c, full, mbs);
  EmulatedModel m(c, 1, 1);
  m.load(full);
  double mean = 0;
  for (const engine::MicroBatch& mb : mbs) mean += m.train_microbatch(mb, 1.0 / 3) / 3;
  EXPECT_NEAR(mean, ref.loss, kTol * ref.loss);
  expect_grads_near(m.full_grads(), ref.grads, kTol);
  m.zero_grad();
  for (const auto& [name, g] : m.full_grads()) EXPECT_EQ(g.abs().sum().item<double>(), 0) << name;
}

// ---- tensor parallelism: TP = t is the TP = 1 model -------------------------------------------

using testing::TpCase;

class GptTensorParallel : public ::testing::TestWithParam<TpCase> {};

TEST_P(GptTensorParallel, SameLossAndFullGradientsAsTp1) {
  const TpCase t = GetParam();
  GptConfig c = make_config(t.vocab, 5, t.d, t.heads, 2, t.hidden);
  ParamMap full = testing::random_full_params(c, 5);
  engine::MicroBatch mb = testing::random_microbatch(c, 3, 5, 6);
  EmulatedModel one(c, 1, 1), many(c, 1, t.tp);
  testing::expect_layouts_agree(one, many, full, mb, kTol);
  // Replicated parameters get bitwise identical gradients on every TP rank (the optimizer
  // counts them once in the grad norm).
  testing::expect_replicated_grads_identical(many);
  // And against autograd directly.
  testing::ReferenceRun ref = testing::run_reference(c, full, mb);
  expect_grads_near(many.full_grads(), ref.grads, kTol);
}

INSTANTIATE_TEST_SUITE_P(Degrees, GptTensorParallel,
                         ::testing::Values(TpCase{2, 7, 12, 4, 0, 0},   // vocab 7: not a multiple
                                           TpCase{4, 7, 12, 4, 0, 0},   // hd = 3
                                           TpCase{3, 10, 9, 3, 0, 0},   // odd width, hd = 3
                                           TpCase{2, 5, 6, 2, 0, 10}),  // Hl = 5
                         [](const auto& info) {
                           return "tp" + std::to_string(info.param.tp) + "_d" +
                                  std::to_string(info.param.d) + "_h" +
                                  std::to_string(info.param.hidden);
                         });

// ---- pipeline stages chained by hand equal one stage -------------------------------------------

TEST(GptPipeline, ThreeStagesChainedEqualOneStage) {
  GptConfig c = make_config(11, 6, 12, 4, 4);
  ParamMap full = testing::random_full_params(c, 8);
  engine::MicroBatch mb = testing::random_microbatch(c, 2, 6, 9);
  EmulatedModel one(c, 1, 1), three(c, 3, 1), three_tp2(c, 3, 2);
  one.load(full);
  three.load(full);
  three_tp2.load(full);
  const double l1 = one.train_microbatch(mb, 1.0);
  const double l3 = three.train_microbatch(mb, 1.0);
  const double l32 = three_tp2.train_microbatch(mb, 1.0);
  EXPECT_EQ(l3, l1);  // the same operations in the same order: bitwise
  ParamMap g1 = one.full_grads();
  expect_grads_equal(three.full_grads(), g1);
  EXPECT_LE(std::abs(l32 - l1), kTol * std::abs(l1));
  expect_grads_near(three_tp2.full_grads(), g1, kTol);
  EXPECT_EQ(three.chunk(0, 0).layers().count, 2);
  EXPECT_EQ(three.chunk(2, 0).layers().first, 3);
}

TEST(GptPipeline, StageOutputsAndInputGradientsMatchReferenceResiduals) {
  GptConfig c = make_config(9, 4, 8, 2, 3);
  ParamMap full = testing::random_full_params(c, 4);
  engine::MicroBatch mb = testing::random_microbatch(c, 2, 4, 5);
  testing::ReferenceRun ref = testing::run_reference(c, full, mb);
  EmulatedModel m(c, 3, 1);  // one layer per stage
  m.load(full);
  testing::expect_stage_boundaries_match(m, mb, ref, kTol);
}

// ---- input validation -------------------------------------------------------------------------

TEST(GptInputs, BadMicrobatchesAndActivationsStopWithAMessage) {
  GptConfig c = make_config(11, 4, 8, 2, 2);
  GptChunk first(c, 0, 2, 0, 1), last(c, 1, 2, 0, 1);
  engine::ActivationSet set;
  engine::MicroBatch mb = testing::random_microbatch(c, 2, 4, 1);
  engine::MicroBatch longer = testing::random_microbatch(c, 2, 5, 1);
  EXPECT_EQ(error_of([&] { first.forward(set, longer, {}); }),
            "sequence length T=5 is out of range [1, seq_len=4]");
  engine::MicroBatch floats = mb;
  floats.tokens = mb.tokens.to(at::kFloat);
  EXPECT_EQ(error_of([&] { first.forward(set, floats, {}); }),
            "microbatch tokens must be a (B, T) int64 tensor on the first stage");
  EXPECT_EQ(error_of([&] { last.forward(set, mb, {}); }),
            "stage 1 needs a (B, T, C=8) input activation");
  at::Tensor act = at::zeros({2, 4, 8}, at::kDouble);
  EXPECT_EQ(error_of([&] { last.forward(set, mb, act.to(at::kFloat)); }),
            "input dtype=Float must be the model dtype float64");
  engine::MicroBatch bad_targets = mb;
  bad_targets.targets = mb.targets.narrow(1, 0, 3);
  EXPECT_EQ(error_of([&] { last.forward(set, bad_targets, act); }),
            "microbatch targets must be a (B=2, T=4) int64 tensor on the last stage");
  auto f = first.forward(set, mb, {});
  testing::run_lockstep({f.get()});
  EXPECT_EQ(error_of([&] {
              first.backward(set, at::zeros({2, 3, 8}, at::kDouble));
            }),
            "stage 0 needs a grad_output of the shape and dtype of its output [2, 4, 8] float64");
  EXPECT_THROW(last.set_loss_scale(0), std::invalid_argument);
  EXPECT_THROW(last.set_loss_scale(std::nan("")), std::invalid_argument);
}

// ---- bfloat16 ---------------------------------------------------------------------------------

TEST(GptBfloat16, TrainsCloseToTheFloat64ReferenceWithFloat32Grads) {
  testing::expect_bf16_family_close<EmulatedModel>(
      make_config(11, 8, 16, 2, 2), testing::random_full_params, testing::run_reference);
}

// ---- kernels (gpt_ops.h) against autograd ------------------------------------------------------

TEST(GptOps, LayerNormBackwardMatchesAutograd) {
  at::Tensor x = leaf(at::randn({3, 5, 7}, at::kDouble) * 2 + 1);
  at::Tensor w = leaf(at::randn({7}, at::kDouble)), b = leaf(at::randn({7}, at::kDouble));
  at::Tensor dy = at::randn({3, 5, 7}, at::kDouble);
  at::Tensor y = at::layer_norm(x, {7}, w, b, 1e-5);
  y.backward(dy);
  ops::LayerNormOut n = ops::layernorm_forward(x.detach(), w.detach(), b.detach(), 1e-5);
  EXPECT_LE(rel_error(n.y, y.detach()), kTol);
  EXPECT_LE(rel_error(ops::layernorm_backward(dy, n.xhat, n.rstd, w.detach()), x.grad()), kTol);
  at::Tensor dw = at::zeros({7}, at::kDouble), db = at::zeros({7}, at::kDouble);
  ops::layernorm_weight_grad_(dy, n.xhat, dw, db);
  EXPECT_LE(rel_error(dw, w.grad()), kTol);
  EXPECT_LE(rel_error(db, b.grad()), kTol);
}

TEST(GptOps, AttentionBackwardMatchesAutograd) {
  for (std::int64_t T : {1, 6}) {
    const std::int64_t B = 2, NH = 3, hd = 5;
    at::Tensor qkv = leaf(at::randn({B, T, 3 * NH * hd}, at::kDouble));
    at::Tensor d_o = at::randn({B, T, NH * hd}, at::kDouble);
    at::Tensor q = qkv.narrow(2, 0, NH * hd).view({B, T, NH, hd}).transpose(1, 2);
    at::Tensor k = qkv.narrow(2, NH * hd, NH * hd).view({B, T, NH, hd}).transpose(1, 2);
    at::Tensor v = qkv.narrow(2, 2 * NH * hd, NH * hd).view({B, T, NH, hd}).transpose(1, 2);
    at::Tensor o = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true)
                       .transpose(1, 2)
                       .reshape({B, T, NH * hd});
    o.backward(d_o);
    ops::AttentionOut a = ops::attention_forward(qkv.detach(), NH);
    EXPECT_LE(rel_error(a.o, o.detach()), kTol) << "T=" << T;
    EXPECT_EQ(a.lse.sizes(), (std::vector<std::int64_t>{B, NH, T}));
    at::Tensor dqkv = ops::attention_backward(d_o, qkv.detach(), a.o, a.lse, NH);
    EXPECT_LE(rel_error(dqkv, qkv.grad()), kTol) << "T=" << T;
    // Causality: a later position never influences an earlier output.
    at::Tensor later = qkv.detach().clone();
    later.narrow(1, T - 1, 1).add_(1.0);
    ops::AttentionOut b = ops::attention_forward(later, NH);
    EXPECT_TRUE(at::equal(b.o.narrow(1, 0, T - 1), a.o.narrow(1, 0, T - 1))) << "T=" << T;
  }
}

// Note [Fused attention]: the set keeps no (T, T) probabilities, so a layer's saved bytes grow
// linearly with the sequence length: doubling T doubles them exactly.
TEST(GptOps, AttentionSavesBytesLinearInTheSequenceLength) {
  auto saved = [](std::int64_t T) {
    ops::AttentionOut a = ops::attention_forward(at::randn({2, T, 3 * 4 * 8}, at::kFloat), 4);
    return a.o.numel() * a.o.element_size() + a.lse.numel() * a.lse.element_size();
  };
  EXPECT_EQ(saved(512), 2 * saved(256));
  EXPECT_EQ(saved(256), 2 * saved(128));
}

TEST(GptOps, GeluAndCrossEntropyMatchAutograd) {
  at::Tensor x = leaf(at::randn({4, 9}, at::kDouble) * 3);
  at::Tensor dy = at::randn({4, 9}, at::kDouble);
  const double k = std::sqrt(2.0 / M_PI);
  at::Tensor y = 0.5 * x * (1 + at::tanh(k * (x + 0.044715 * x.pow(3))));
  y.backward(dy);
  EXPECT_LE(rel_error(ops::gelu_forward(x.detach()), y.detach()), kTol);
  EXPECT_LE(rel_error(ops::gelu_backward(dy, x.detach()), x.grad()), kTol);

  at::Tensor logits = leaf(at::randn({2, 3, 7}, at::kDouble));
  at::Tensor targets = at::randint(7, {2, 3}, at::TensorOptions().dtype(at::kLong));
  at::Tensor loss = at::cross_entropy_loss(logits.view({6, 7}), targets.view({6}));
  (loss * 0.25).backward();
  ops::CrossEntropyOut ce = ops::cross_entropy_forward(logits.detach(), targets);
  EXPECT_LE(rel_error(ce.loss, loss.detach()), kTol);
  EXPECT_LE(rel_error(ops::cross_entropy_backward_(ce.probs, targets, 0.25), logits.grad()), kTol);
}

}  // namespace
}  // namespace stp::models
