// GptChunk construction and its three passes: the unit sequencing of Note [GPT units] (gpt.h).
// The numeric work of each unit is in gpt_layers.cpp.
#include "models/gpt.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>

#include <cmath>

#include "common/check.h"
#include "models/chunk_inputs.h"
#include "models/gpt_params.h"

namespace stp::models {

// ---- construction --------------------------------------------------------------------------

GptChunk::GptChunk(const GptConfig& cfg, int stage, int stages, int tp_rank, int tp_size,
                   at::Device device)
    : cfg_(cfg), stage_(stage), stages_(stages), tp_rank_(tp_rank), tp_size_(tp_size) {
  cfg_.validate_layout(stages, tp_size);
  STP_CHECK(stage >= 0 && stage < stages, "stage=", stage, " is out of range [0, ", stages, ")");
  STP_CHECK(tp_rank >= 0 && tp_rank < tp_size, "tp_rank=", tp_rank, " is out of range [0, ",
            tp_size, ")");
  layers_ = stage_layers(cfg_.n_layers, stage, stages);
  heads_local_ = cfg_.n_heads / tp_size;

  std::vector<ParamSpec> specs;
  if (is_first_stage()) {
    for (ParamSpec& s : gpt_param_specs(cfg_)) {
      if (s.name == "wte" || s.name == "wpe") specs.push_back(std::move(s));
    }
  }
  for (std::int64_t l = layers_.first; l < layers_.first + layers_.count; ++l) {
    for (ParamSpec& s : gpt_layer_param_specs(cfg_, l)) specs.push_back(std::move(s));
  }
  if (is_last_stage()) {
    for (ParamSpec& s : gpt_param_specs(cfg_)) {
      if (s.name == "ln_f.w" || s.name == "ln_f.b" || s.name == "lm_head.w") {
        specs.push_back(std::move(s));
      }
    }
  }
  // Gradients of bfloat16 parameters accumulate in float32 (chunk.h: Param::grad).
  const at::ScalarType grad_dtype = cfg_.dtype == at::kBFloat16 ? at::kFloat : cfg_.dtype;
  for (const ParamSpec& s : specs) {
    engine::Param p;
    p.name = s.name;
    p.shard_dim = s.shard_dim;
    p.decay = s.decay;
    at::Tensor full = gpt_init_full(cfg_, s);
    p.value = shard_of(full, s.shard_dim, tp_rank, tp_size)
                  .to(device, cfg_.dtype, /*non_blocking=*/false, /*copy=*/true)
                  .contiguous();
    p.grad = at::zeros(p.value.sizes(), p.value.options().dtype(grad_dtype));
    index_[p.name] = static_cast<int>(params_.size());
    params_.push_back(std::move(p));
  }

  auto at_name = [&](const std::string& n) {
    auto it = index_.find(n);
    STP_ASSERT(it != index_.end(), "missing parameter ", n);
    return it->second;
  };
  for (std::int64_t l = layers_.first; l < layers_.first + layers_.count; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    layer_params_.push_back({at_name(p + "ln1.w"), at_name(p + "ln1.b"), at_name(p + "attn.qkv.w"),
                             at_name(p + "attn.qkv.b"), at_name(p + "attn.proj.w"),
                             at_name(p + "attn.proj.b"), at_name(p + "ln2.w"), at_name(p + "ln2.b"),
                             at_name(p + "mlp.fc1.w"), at_name(p + "mlp.fc1.b"),
                             at_name(p + "mlp.fc2.w"), at_name(p + "mlp.fc2.b")});
  }
  if (is_first_stage()) {
    wte_ = at_name("wte");
    wpe_ = at_name("wpe");
  }
  if (is_last_stage()) {
    lnf_w_ = at_name("ln_f.w");
    lnf_b_ = at_name("ln_f.b");
    head_w_ = at_name("lm_head.w");
  }
}

void GptChunk::set_loss_scale(double scale) {
  STP_CHECK(std::isfinite(scale) && scale > 0, "loss_scale=", scale, " must be finite and > 0");
  loss_scale_ = scale;
}

engine::Param& GptChunk::param(const std::string& name) {
  auto it = index_.find(name);
  STP_CHECK(it != index_.end(), "parameter '", name, "' is not held by stage ", stage_, " (layers ",
            layers_.first, "..", layers_.first + layers_.count - 1, ")");
  return params_[it->second];
}

GptChunk::LayerNormRef GptChunk::ln1(std::int64_t l) const {
  return {"layers." + std::to_string(l) + ".ln1", layer(l).ln1_w, layer(l).ln1_b};
}
GptChunk::LayerNormRef GptChunk::ln2(std::int64_t l) const {
  return {"layers." + std::to_string(l) + ".ln2", layer(l).ln2_w, layer(l).ln2_b};
}
GptChunk::LayerNormRef GptChunk::ln_f() const { return {"ln_f", lnf_w_, lnf_b_}; }

at::Tensor GptChunk::loss_tensor(const engine::ActivationSet& set) const {
  STP_ASSERT(is_last_stage(), "loss() on stage ", stage_, " of ", stages_);
  return set.get("loss");
}

std::vector<std::int64_t> GptChunk::input_shape(std::int64_t batch) const {
  return {batch, cfg_.seq_len, cfg_.d_model};
}

// ---- passes ----------------------------------------------------------------------------------

namespace {

std::string layer_unit_name(const char* block, const char* pass, std::int64_t l) {
  return std::string(block) + "-" + pass + "(" + std::to_string(l) + ")";
}

}  // namespace

// What the three passes share: units run once each and in order, then finish() once, then
// output(); `what_` names the pass in the messages.
class GptPass : public engine::Pass {
 public:
  GptPass(GptChunk& c, engine::ActivationSet& s, const char* what) : c_(c), s_(s), what_(what) {}

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

  GptChunk& c_;
  engine::ActivationSet& s_;
  at::Tensor output_;  // what output() returns once finished

 private:
  const char* what_;
  int next_ = 0;
  bool finished_ = false;
};

// Forward: unit 2i = attn-F(first+i), 2i+1 = mlp-F(first+i). x_ is the residual stream: the
// tensor the previous unit returned, summed over the TP group in place by the executor.
class GptForwardPass final : public GptPass {
 public:
  GptForwardPass(GptChunk& c, engine::ActivationSet& s, at::Tensor tokens, at::Tensor targets,
                 at::Tensor input)
      : GptPass(c, s, "forward"),
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
    x_ = (k % 2 == 0) ? c_.attn_forward(l, x_, s_) : c_.mlp_forward(l, x_, s_);
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
// of the residual stream; pending_ the LayerNorm-output gradient the previous unit returned,
// summed in place by the executor, whose LayerNorm backward opens this unit.
class GptBackwardPass final : public GptPass {
 public:
  GptBackwardPass(GptChunk& c, engine::ActivationSet& s, at::Tensor grad_output)
      : GptPass(c, s, "backward"), dres_(std::move(grad_output)) {}

  std::string unit_name(int k) const override {
    return layer_unit_name(k % 2 == 0 ? "mlp" : "attn", "B", last_layer() - k / 2);
  }
  at::Tensor run(int k) override {
    start_unit(k);
    const std::int64_t l = last_layer() - k / 2;
    if (k == 0 && c_.is_last_stage()) dres_ = c_.head_backward(s_);
    if (k > 0) dres_ = dres_.add(c_.layernorm_backward(ln_returned_by(k - 1), pending_, s_));
    pending_ = (k % 2 == 0) ? c_.mlp_backward(l, dres_, s_) : c_.attn_backward(l, dres_, s_);
    return pending_;
  }
  void finish() override {
    start_finish();
    dres_ = dres_.add(c_.layernorm_backward(ln_returned_by(size() - 1), pending_, s_));
    pending_ = at::Tensor();
    if (c_.is_first_stage()) {
      s_.put("emb.dx", dres_);  // (B, T, C) for the embedding gradients in W's finish()
    } else {
      output_ = dres_;
    }
  }

 private:
  // The LayerNorm whose output gradient B unit k returns: ln2 for mlp-B, ln1 for attn-B.
  GptChunk::LayerNormRef ln_returned_by(int k) const {
    const std::int64_t l = last_layer() - k / 2;
    return k % 2 == 0 ? c_.ln2(l) : c_.ln1(l);
  }

  at::Tensor dres_;     // (B, T, C) gradient of the residual stream
  at::Tensor pending_;  // (B, T, C) LayerNorm-output gradient returned by the last unit
};

// Weight gradient: W unit k pairs with B unit k (Note [GPT units]).
class GptWeightGradPass final : public GptPass {
 public:
  GptWeightGradPass(GptChunk& c, engine::ActivationSet& s) : GptPass(c, s, "weight-gradient") {}

  std::string unit_name(int k) const override {
    return std::string("W(") + (k % 2 == 0 ? "mlp " : "attn ") +
           std::to_string(last_layer() - k / 2) + ")";
  }
  at::Tensor run(int k) override {
    start_unit(k);
    const std::int64_t l = last_layer() - k / 2;
    if (k == 0 && c_.is_last_stage()) c_.head_weight_grad(s_);
    if (k > 0) {
      // The LayerNorm B unit k back-propagated through at its start.
      const std::int64_t lp = last_layer() - (k - 1) / 2;
      c_.layernorm_weight_grad((k - 1) % 2 == 0 ? c_.ln2(lp) : c_.ln1(lp), s_);
    }
    if (k % 2 == 0) {
      c_.mlp_weight_grad(l, s_);
    } else {
      c_.attn_weight_grad(l, s_);
    }
    return at::Tensor();
  }
  void finish() override {
    start_finish();
    c_.layernorm_weight_grad(c_.ln1(first_layer()), s_);  // needs the B pass's finish()
    if (c_.is_first_stage()) c_.embed_weight_grad(s_);
    STP_ASSERT(s_.empty(), "activation set (chunk ", s_.chunk(), ", mb ", s_.mb(),
               ") not empty after the weight-gradient pass: ", s_.fields().begin()->first);
  }
  at::Tensor output() override { return at::Tensor(); }  // W hands nothing on
};

std::unique_ptr<engine::Pass> GptChunk::forward(engine::ActivationSet& set,
                                                const engine::MicroBatch& mb, at::Tensor input) {
  ForwardInputs in = check_forward_inputs(*this, mb, input, cfg_.d_model, cfg_.seq_len, cfg_.dtype,
                                          params_.front().value.device());
  return std::make_unique<GptForwardPass>(*this, set, in.tokens, in.targets, input);
}

std::unique_ptr<engine::Pass> GptChunk::backward(engine::ActivationSet& set,
                                                 at::Tensor grad_output) {
  if (!is_last_stage())
    check_grad_output(
        *this, grad_output,
        set.get("layers." + std::to_string(layers_.first + layers_.count - 1) + ".ln2.xhat"),
        cfg_.dtype);
  return std::make_unique<GptBackwardPass>(*this, set, std::move(grad_output));
}

std::unique_ptr<engine::Pass> GptChunk::weight_grad(engine::ActivationSet& set) {
  return std::make_unique<GptWeightGradPass>(*this, set);
}

engine::ModelFactory gpt_model(const GptConfig& config, at::Device device) {
  config.validate();
  return [config, device](int stage, int stages, int tp_rank, int tp_size) {
    return std::make_unique<GptChunk>(config, stage, stages, tp_rank, tp_size, device);
  };
}

}  // namespace stp::models
