// DecoderChunk: placement, parameters, the head and the three passes that run the unit order of
// Note [Decoder units] (decoder_chunk.h) over a family's layer ops.
#include "models/decoder_chunk.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "common/check.h"
#include "models/chunk_inputs.h"
#include "models/gpt_ops.h"
#include "models/llama_ops.h"
#include "models/placement.h"

namespace stp::models {

// ---- construction --------------------------------------------------------------------------

DecoderChunk::DecoderChunk(const Shape& shape, int stage, int stages, int tp_rank, int tp_size)
    : stage_(stage), stages_(stages), tp_rank_(tp_rank), tp_size_(tp_size), shape_(shape) {
  STP_CHECK(stage >= 0 && stage < stages, "stage=", stage, " is out of range [0, ", stages, ")");
  STP_CHECK(tp_rank >= 0 && tp_rank < tp_size, "tp_rank=", tp_rank, " is out of range [0, ",
            tp_size, ")");
  layers_ = stage_layers(shape.n_layers, stage, stages);
  heads_local_ = shape.n_heads / tp_size;
}

void DecoderChunk::add_params(const std::vector<ParamSpec>& model_specs,
                              const std::function<at::Tensor(const ParamSpec&)>& init_full,
                              at::Device device) {
  // Note [Parameter placement] (placement.h): the rule checkpoints reshard by too.
  const std::vector<const ParamSpec*> specs =
      stage_params(model_specs, shape_.n_layers, stage_, stages_);
  // Gradients of bfloat16 parameters accumulate in float32 (chunk.h: Param::grad).
  const at::ScalarType dtype = shape_.dtype;
  const at::ScalarType grad_dtype = dtype == at::kBFloat16 ? at::kFloat : dtype;
  for (const ParamSpec* spec : specs) {
    const ParamSpec& s = *spec;
    engine::Param p;
    p.name = s.name;
    p.shard_dim = s.shard_dim;
    p.decay = s.decay;
    p.value = shard_of(init_full(s), s.shard_dim, tp_rank_, tp_size_)
                  .to(device, dtype, /*non_blocking=*/false, /*copy=*/true)
                  .contiguous();
    p.grad = at::zeros(p.value.sizes(), p.value.options().dtype(grad_dtype));
    index_[p.name] = static_cast<int>(params_.size());
    params_.push_back(std::move(p));
  }
  for (std::int64_t l = layers_.first; l < layers_.first + layers_.count; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    ln1_.push_back(norm_ref(p + "ln1"));
    ln2_.push_back(norm_ref(p + "ln2"));
  }
  if (is_last_stage()) {
    ln_f_ = norm_ref("ln_f");
    head_w_ = index_.count("lm_head.w") ? index_of("lm_head.w") : index_of("wte");
  }
}

int DecoderChunk::index_of(const std::string& name) const {
  auto it = index_.find(name);
  STP_ASSERT(it != index_.end(), "missing parameter ", name);
  return it->second;
}

int DecoderChunk::layer_param(std::int64_t l, const std::string& name) const {
  return index_of("layers." + std::to_string(l) + "." + name);
}

DecoderChunk::NormRef DecoderChunk::norm_ref(const std::string& field) const {
  auto b = index_.find(field + ".b");
  STP_ASSERT(shape_.norm == NormKind::kRmsNorm || b != index_.end(), "LayerNorm ", field,
             " has no bias");
  return {field, index_of(field + ".w"), b == index_.end() ? -1 : b->second};
}

void DecoderChunk::set_loss_scale(double scale) {
  STP_CHECK(std::isfinite(scale) && scale > 0, "loss_scale=", scale, " must be finite and > 0");
  loss_scale_ = scale;
}

engine::Param& DecoderChunk::param(const std::string& name) {
  auto it = index_.find(name);
  STP_CHECK(it != index_.end(), "parameter '", name, "' is not held by stage ", stage_, " (layers ",
            layers_.first, "..", layers_.first + layers_.count - 1, ")");
  return params_[it->second];
}

at::Tensor DecoderChunk::loss_tensor(const engine::ActivationSet& set) const {
  STP_ASSERT(is_last_stage(), "loss() on stage ", stage_, " of ", stages_);
  return set.get("loss");
}

std::vector<std::int64_t> DecoderChunk::input_shape(std::int64_t batch) const {
  return {batch, shape_.seq_len, shape_.d_model};
}

std::string DecoderChunk::layer_field(std::int64_t l, const char* name) {
  return "layers." + std::to_string(l) + "." + name;
}

at::Tensor DecoderChunk::row_parallel_residual(const at::Tensor& h, int w, int b,
                                               const at::Tensor& x) const {
  at::Tensor out = at::matmul(h, value(w).t());  // (B, T, C) partial sum
  if (tp_rank_ == 0) {
    out.add_(x);                     // the residual, once
    if (b >= 0) out.add_(value(b));  // the replicated bias, once
  }
  return out;
}

// ---- the norm ------------------------------------------------------------------------------

at::Tensor DecoderChunk::norm_forward(const NormRef& n, const at::Tensor& x,
                                      engine::ActivationSet& s) const {
  at::Tensor y, xhat, rstd;
  if (shape_.norm == NormKind::kLayerNorm) {
    ops::LayerNormOut o = ops::layernorm_forward(x, value(n.w), value(n.b), shape_.norm_eps);
    y = o.y, xhat = o.xhat, rstd = o.rstd;
  } else {
    ops::RmsNormOut o = ops::rmsnorm_forward(x, value(n.w), shape_.norm_eps);
    y = o.y, xhat = o.xhat, rstd = o.rstd;
  }
  s.put(n.field + ".xhat", xhat);  // (B, T, C)
  s.put(n.field + ".rstd", rstd);  // (B, T, 1)
  return y;                        // (B, T, C)
}

at::Tensor DecoderChunk::norm_backward(const NormRef& n, const at::Tensor& dy,
                                       engine::ActivationSet& s) const {
  const at::Tensor& xhat = s.get(n.field + ".xhat");
  const at::Tensor& rstd = s.get(n.field + ".rstd");
  at::Tensor dx = shape_.norm == NormKind::kLayerNorm
                      ? ops::layernorm_backward(dy, xhat, rstd, value(n.w))
                      : ops::rmsnorm_backward(dy, xhat, rstd, value(n.w));  // (B, T, C)
  s.erase(n.field + ".rstd");
  s.put(n.field + ".dy", dy);  // (B, T, C) full sum
  return dx;
}

at::Tensor DecoderChunk::norm_output(const NormRef& n, engine::ActivationSet& s) const {
  const at::Tensor& xhat = s.get(n.field + ".xhat");
  return shape_.norm == NormKind::kLayerNorm ? ops::layernorm_apply(xhat, value(n.w), value(n.b))
                                             : ops::rmsnorm_apply(xhat, value(n.w));  // (B, T, C)
}

void DecoderChunk::norm_weight_grad(const NormRef& n, engine::ActivationSet& s) {
  if (shape_.norm == NormKind::kLayerNorm) {
    ops::layernorm_weight_grad_(s.get(n.field + ".dy"), s.get(n.field + ".xhat"), grad(n.w),
                                grad(n.b));
  } else {
    ops::rmsnorm_weight_grad_(s.get(n.field + ".dy"), s.get(n.field + ".xhat"), grad(n.w));
  }
  s.erase(n.field + ".dy");
  s.erase(n.field + ".xhat");
}

// ---- defaults and the head -------------------------------------------------------------------

at::Tensor DecoderChunk::attn_reduced(std::int64_t, const at::Tensor& returned,
                                      engine::ActivationSet&) const {
  return returned;
}

void DecoderChunk::attn_reduced_weight_grad(std::int64_t, engine::ActivationSet&) {}

void DecoderChunk::head_forward(const at::Tensor& x, const at::Tensor& targets,
                                engine::ActivationSet& s) const {
  at::Tensor y = norm_forward(ln_f(), x, s);              // (B, T, C)
  at::Tensor logits = at::matmul(y, value(head_w_).t());  // (B, T, V)
  ops::CrossEntropyOut ce = ops::cross_entropy_forward(logits, targets);
  s.put("targets", targets);      // (B, T) int64
  s.put("loss", ce.loss);         // ()
  s.put("head.probs", ce.probs);  // (B, T, V)
}

at::Tensor DecoderChunk::head_backward(engine::ActivationSet& s) const {
  at::Tensor probs = s.get("head.probs");
  at::Tensor dlogits = ops::cross_entropy_backward_(probs, s.get("targets"), loss_scale_)
                           .to(shape_.dtype);  // (B, T, V)
  s.erase("head.probs");
  s.erase("targets");
  s.erase("loss");
  s.put("head.dlogits", dlogits);                                       // (B, T, V)
  at::Tensor dy = ops::linear_backward_input(dlogits, value(head_w_));  // (B, T, C) at ln_f out
  return norm_backward(ln_f(), dy, s);                                  // (B, T, C) residual grad
}

void DecoderChunk::head_weight_grad(engine::ActivationSet& s) {
  at::Tensor y = norm_output(ln_f(), s);  // (B, T, C) head input
  ops::linear_weight_grad_(s.get("head.dlogits"), y, grad(head_w_), at::Tensor());
  s.erase("head.dlogits");
  norm_weight_grad(ln_f(), s);
}

// ---- recompute (Note [Decoder units]) ------------------------------------------------------

std::int64_t DecoderChunk::recomputed_layers(double share, std::int64_t layers) {
  STP_CHECK(share > 0 && share <= 1, "recompute share ", share, " must be in (0, 1]");
  // ceil(share * layers), forgiving a share written in decimal (0.3 * 10 is 3, not 3 + ulp).
  const auto n = static_cast<std::int64_t>(std::ceil(share * static_cast<double>(layers) - 1e-9));
  return std::clamp<std::int64_t>(n, 1, layers);
}

bool DecoderChunk::recomputes(const engine::ActivationSet& s, std::int64_t l) const {
  return s.recompute() && l - layers_.first < recomputed_layers(s.recompute_share(), layers_.count);
}

std::string DecoderChunk::unit_input_field(std::int64_t l, bool mlp) {
  return layer_field(l, mlp ? "mlp.in" : "attn.in");
}

at::Tensor DecoderChunk::forward_unit(std::int64_t l, bool mlp, const at::Tensor& x,
                                      engine::ActivationSet& s) const {
  return mlp ? mlp_forward(l, x, s) : attn_forward(l, x, s);
}

at::Tensor DecoderChunk::forward_unit_keeping_input(std::int64_t l, bool mlp, const at::Tensor& x,
                                                    engine::ActivationSet& s) const {
  std::vector<std::string> before;
  for (const auto& f : s.fields()) before.push_back(f.first);
  at::Tensor out = forward_unit(l, mlp, x, s);
  // Every name not there before was written by this call (`before` is sorted: a std::map's).
  std::vector<std::string> written;
  for (const auto& f : s.fields())
    if (!std::binary_search(before.begin(), before.end(), f.first)) written.push_back(f.first);
  for (const std::string& name : written) s.erase(name);
  s.put(unit_input_field(l, mlp), x);  // (B, T, C)
  return out;
}

void DecoderChunk::recompute_unit(std::int64_t l, bool mlp, engine::ActivationSet& s) const {
  const std::string field = unit_input_field(l, mlp);
  at::Tensor x = s.get(field);
  s.erase(field);
  (void)forward_unit(l, mlp, x, s);  // a partial sum nobody reads: no collective
}

// ---- passes ----------------------------------------------------------------------------------

namespace {

std::string layer_unit_name(const char* block, const char* pass, std::int64_t l) {
  return std::string(block) + "-" + pass + "(" + std::to_string(l) + ")";
}

}  // namespace

// What the three passes share: units run once each and in order, then finish() once, then
// output(); `what_` names the pass in the messages.
class DecoderPass : public engine::Pass {
 public:
  DecoderPass(DecoderChunk& c, engine::ActivationSet& s, const char* what)
      : c_(c), s_(s), what_(what) {}

  int size() const override { return c_.units(); }
  at::Tensor output() override {
    STP_ASSERT(finished_, what_, " output() before finish()");
    return output_;
  }

 protected:
  void start_unit(int k) {
    STP_ASSERT(k == next_ && k < size(), what_, " unit ", k, " run out of order (next ", next_,
               " of ", size(), ")");
    ++next_;
  }
  void start_finish() {
    STP_ASSERT(next_ == size() && !finished_, what_, " finish() after ", next_, " of ", size(),
               " units");
    finished_ = true;
  }
  std::int64_t first_layer() const { return c_.layers_.first; }
  std::int64_t last_layer() const { return c_.layers_.first + c_.layers_.count - 1; }
  // The layer of backward / weight-gradient unit k; even units are the MLP, odd ones attention.
  std::int64_t layer_of(int k) const { return last_layer() - k / 2; }

  DecoderChunk& c_;
  engine::ActivationSet& s_;
  at::Tensor output_;  // what output() returns once finished

 private:
  const char* what_;
  int next_ = 0;
  bool finished_ = false;
};

// Forward: unit 2i = attn-F(first+i), 2i+1 = mlp-F(first+i). x_ is the residual stream: the
// tensor the previous unit returned, summed over the TP group in place by the executor.
class DecoderForwardPass final : public DecoderPass {
 public:
  DecoderForwardPass(DecoderChunk& c, engine::ActivationSet& s, at::Tensor tokens,
                     at::Tensor targets, at::Tensor input)
      : DecoderPass(c, s, "forward"),
        tokens_(std::move(tokens)),
        targets_(std::move(targets)),
        x_(std::move(input)) {}

  std::string unit_name(int k) const override {
    return layer_unit_name(k % 2 == 0 ? "attn" : "mlp", "F", first_layer() + k / 2);
  }
  at::Tensor run(int k) override {
    start_unit(k);
    const std::int64_t l = first_layer() + k / 2;
    if (k == 0 && c_.is_first_stage()) x_ = c_.embed_forward(tokens_, s_);
    const bool mlp = k % 2 == 1;
    x_ = c_.recomputes(s_, l) ? c_.forward_unit_keeping_input(l, mlp, x_, s_)
                              : c_.forward_unit(l, mlp, x_, s_);
    return x_;
  }
  void finish() override {
    start_finish();
    if (c_.is_last_stage()) {
      c_.head_forward(x_, targets_, s_);
    } else {
      output_ = x_;
    }
  }

 private:
  at::Tensor tokens_;   // (B, T) int64, first stage
  at::Tensor targets_;  // (B, T) int64, last stage
  at::Tensor x_;        // (B, T, C) residual stream
};

// Activation gradient: unit 2i = mlp-B(last-i), 2i+1 = attn-B(last-i). dres_ is the gradient
// of the residual stream; pending_ what the previous unit returned, all-reduced in place by
// the executor, whose norm backward opens this unit.
class DecoderBackwardPass final : public DecoderPass {
 public:
  DecoderBackwardPass(DecoderChunk& c, engine::ActivationSet& s, at::Tensor grad_output)
      : DecoderPass(c, s, "backward"), dres_(std::move(grad_output)) {}

  std::string unit_name(int k) const override {
    return layer_unit_name(k % 2 == 0 ? "mlp" : "attn", "B", layer_of(k));
  }
  at::Tensor run(int k) override {
    start_unit(k);
    const std::int64_t l = layer_of(k);
    if (k == 0 && c_.is_last_stage()) dres_ = c_.head_backward(s_);
    if (k > 0) reduced(k - 1);
    if (c_.recomputes(s_, l)) c_.recompute_unit(l, k % 2 == 0, s_);
    pending_ = (k % 2 == 0) ? c_.mlp_backward(l, dres_, s_) : c_.attn_backward(l, dres_, s_);
    return pending_;
  }
  void finish() override {
    start_finish();
    reduced(size() - 1);
    pending_ = at::Tensor();
    if (c_.is_first_stage()) {
      s_.put("emb.dx", dres_);  // (B, T, C) for the embedding gradients in W's finish()
    } else {
      output_ = dres_;
    }
  }

 private:
  // B unit k's all-reduced result into the residual gradient: the norm backward of ln2 (after
  // mlp-B) or ln1 (after attn-B).
  void reduced(int k) {
    const std::int64_t l = layer_of(k);
    if (k % 2 == 0) {
      dres_ = dres_.add(c_.norm_backward(c_.ln2(l), pending_, s_));
    } else {
      dres_ = dres_.add(c_.norm_backward(c_.ln1(l), c_.attn_reduced(l, pending_, s_), s_));
    }
  }

  at::Tensor dres_;     // (B, T, C) gradient of the residual stream
  at::Tensor pending_;  // what the last unit returned (Note [Decoder units])
};

// Weight gradient: W unit k pairs with B unit k (Note [Decoder units]).
class DecoderWeightGradPass final : public DecoderPass {
 public:
  DecoderWeightGradPass(DecoderChunk& c, engine::ActivationSet& s)
      : DecoderPass(c, s, "weight-gradient") {}

  std::string unit_name(int k) const override {
    return std::string("W(") + (k % 2 == 0 ? "mlp " : "attn ") + std::to_string(layer_of(k)) + ")";
  }
  at::Tensor run(int k) override {
    start_unit(k);
    if (k == 0 && c_.is_last_stage()) c_.head_weight_grad(s_);
    if (k > 0) after_reduced(k - 1);
    if (k % 2 == 0) {
      c_.mlp_weight_grad(layer_of(k), s_);
    } else {
      c_.attn_weight_grad(layer_of(k), s_);
    }
    return at::Tensor();
  }
  void finish() override {
    start_finish();
    after_reduced(size() - 1);  // needs the B pass's finish()
    if (c_.is_first_stage()) c_.embed_weight_grad(s_);
    STP_ASSERT(s_.empty(), "activation set (chunk ", s_.chunk(), ", mb ", s_.mb(),
               ") not empty after the weight-gradient pass: ", s_.fields().begin()->first);
  }
  at::Tensor output() override { return at::Tensor(); }  // W hands nothing on

 private:
  // The weights of what the B pass did with B unit k's all-reduced result.
  void after_reduced(int k) {
    const std::int64_t l = layer_of(k);
    if (k % 2 == 0) {
      c_.norm_weight_grad(c_.ln2(l), s_);
    } else {
      c_.attn_reduced_weight_grad(l, s_);  // may read ln1.xhat: before ln1's weight gradient
      c_.norm_weight_grad(c_.ln1(l), s_);
    }
  }
};

std::unique_ptr<engine::Pass> DecoderChunk::forward(engine::ActivationSet& set,
                                                    const engine::MicroBatch& mb,
                                                    at::Tensor input) {
  ForwardInputs in = check_forward_inputs(*this, mb, input, shape_.d_model, shape_.seq_len,
                                          shape_.dtype, params_.front().value.device());
  return std::make_unique<DecoderForwardPass>(*this, set, in.tokens, in.targets, input);
}

std::unique_ptr<engine::Pass> DecoderChunk::backward(engine::ActivationSet& set,
                                                     at::Tensor grad_output) {
  if (!is_last_stage()) {
    const std::int64_t last = layers_.first + layers_.count - 1;
    // The last unit's input has the output's shape, as ln2's xhat does (with a share below 1
    // the last layer may keep its fields: Note [Decoder units]).
    const std::string like =
        recomputes(set, last) ? unit_input_field(last, /*mlp=*/true) : ln2(last).field + ".xhat";
    check_grad_output(*this, grad_output, set.get(like), shape_.dtype);
  }
  return std::make_unique<DecoderBackwardPass>(*this, set, std::move(grad_output));
}

std::unique_ptr<engine::Pass> DecoderChunk::weight_grad(engine::ActivationSet& set) {
  return std::make_unique<DecoderWeightGradPass>(*this, set);
}

}  // namespace stp::models
