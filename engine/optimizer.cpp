#include "engine/optimizer.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_copy.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/_fused_adamw.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <cmath>
#include <set>
#include <tuple>

#include "common/check.h"

namespace stp::engine {

void AdamWOptions::validate() const {
  STP_CHECK(std::isfinite(lr) && lr >= 0, "lr=", lr, " must be >= 0");
  STP_CHECK(beta1 >= 0 && beta1 < 1, "beta1=", beta1, " is out of range [0, 1)");
  STP_CHECK(beta2 >= 0 && beta2 < 1, "beta2=", beta2, " is out of range [0, 1)");
  STP_CHECK(std::isfinite(eps) && eps > 0, "eps=", eps, " must be > 0");
  STP_CHECK(std::isfinite(weight_decay) && weight_decay >= 0, "weight_decay=", weight_decay,
            " must be >= 0");
  STP_CHECK(!std::isnan(max_grad_norm), "max_grad_norm=", max_grad_norm,
            " must be a number (<= 0 disables clipping)");
}

AdamW::AdamW(std::vector<Param*> params, const AdamWOptions& opts, int tp_rank)
    : opts_(opts), tp_rank_(tp_rank) {
  opts_.validate();
  STP_CHECK(tp_rank >= 0, "tp_rank=", tp_rank, " must be >= 0");
  std::set<std::string> names;
  for (Param* p : params) {
    STP_ASSERT(p != nullptr && p->value.defined(), "null or empty parameter");
    STP_CHECK(names.insert(p->name).second, "parameter '", p->name, "' given twice to AdamW");
    STP_CHECK(p->value.is_contiguous(), "parameter '", p->name,
              "' is not contiguous; the fused optimizer updates contiguous tensors");
    Slot s;
    s.param = p;
    const at::ScalarType t = p->value.scalar_type();
    if (t != at::kFloat && t != at::kDouble) s.master = p->value.to(at::kFloat).contiguous();
    s.exp_avg = at::zeros_like(weights(s));
    s.exp_avg_sq = at::zeros_like(weights(s));
    // The fused kernel reads the step count from a float32 scalar beside the weights.
    s.step = at::zeros({}, weights(s).options().dtype(at::kFloat));
    slots_.push_back(std::move(s));
  }
  // Buckets: one per (dtype, device, decay), in order of first appearance.
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    const at::Tensor& w = weights(slots_[i]);
    const bool decay = slots_[i].param->decay;
    Bucket* b = nullptr;
    for (Bucket& x : buckets_)
      if (x.dtype == w.scalar_type() && x.device == w.device() && x.decay == decay) b = &x;
    if (!b) b = &buckets_.emplace_back(Bucket{w.scalar_type(), w.device(), decay, {}});
    b->slots.push_back(i);
  }
}

void AdamW::set_lr(double lr) {
  STP_CHECK(std::isfinite(lr) && lr >= 0, "lr=", lr, " must be >= 0");
  opts_.lr = lr;
}

// The gradients of a bucket's slots that have one; `counted` keeps only those the global norm
// counts (Note [Optimizer and parallelism]).
std::vector<at::Tensor> AdamW::grads(const Bucket& b, bool counted) const {
  std::vector<at::Tensor> out;
  for (std::size_t i : b.slots) {
    const Param& p = *slots_[i].param;
    if (!p.grad.defined()) continue;
    if (counted && p.shard_dim < 0 && tp_rank_ != 0) continue;  // replicated: TP rank 0 counts it
    out.push_back(p.grad);
  }
  return out;
}

double AdamW::local_grad_sq_sum() const {
  std::vector<at::Tensor> parts;
  for (const Bucket& b : buckets_) {
    std::vector<at::Tensor> gs = grads(b, /*counted=*/true);
    if (gs.empty()) continue;
    // One multi-tensor kernel per bucket, accumulating in float32 at least.
    const at::ScalarType acc = b.dtype == at::kDouble ? at::kDouble : at::kFloat;
    for (const at::Tensor& n : at::_foreach_norm(gs, 2, acc))
      parts.push_back(n.to(at::kDouble).square());
  }
  if (parts.empty()) return 0.0;
  return at::stack(parts).sum().item<double>();  // one host sync for all parameters
}

StepResult AdamW::step(const SumReducer& reduce_sum) {
  StepResult r;
  const double local = local_grad_sq_sum();
  const double global = reduce_sum ? reduce_sum(local) : local;
  r.grad_norm = std::sqrt(global);
  if (!std::isfinite(r.grad_norm)) {
    r.skipped = true;
    r.clip_coef = 0;
    return r;
  }
  if (opts_.max_grad_norm > 0) {
    r.clip_coef = std::min(1.0, opts_.max_grad_norm / (r.grad_norm + 1e-6));
  }

  ++step_;
  for (const Bucket& b : buckets_) {
    std::vector<at::Tensor> w, g, m, v, steps, values, masters;
    for (std::size_t i : b.slots) {
      Slot& s = slots_[i];
      if (!s.param->grad.defined()) continue;
      w.push_back(weights(s));
      g.push_back(s.param->grad);
      m.push_back(s.exp_avg);
      v.push_back(s.exp_avg_sq);
      steps.push_back(s.step);
      if (s.master.defined()) {
        values.push_back(s.param->value);
        masters.push_back(s.master);
      }
    }
    if (w.empty()) continue;
    // Clipping scales the gradients in place (as clip_grad_norm_ does), in their own dtype:
    // the fused kernel's grad_scale is a float32 divisor, which would round a float64 step.
    if (r.clip_coef != 1.0) at::_foreach_mul_(g, r.clip_coef);
    at::_foreach_add_(steps, 1.0);
    at::_fused_adamw_(w, g, m, v, /*max_exp_avg_sqs=*/{}, steps, opts_.lr, opts_.beta1, opts_.beta2,
                      b.decay ? opts_.weight_decay : 0.0, opts_.eps,
                      /*amsgrad=*/false, /*maximize=*/false);
    if (!values.empty()) at::_foreach_copy_(values, masters);
  }
  return r;
}

std::map<std::string, at::Tensor> AdamW::state_dict() const {
  std::map<std::string, at::Tensor> out;
  for (const Slot& s : slots_) {
    out[s.param->name + ".exp_avg"] = s.exp_avg;
    out[s.param->name + ".exp_avg_sq"] = s.exp_avg_sq;
    if (s.master.defined()) out[s.param->name + ".master"] = s.master;
  }
  out["step"] = at::scalar_tensor(step_, at::TensorOptions().dtype(at::kLong));
  return out;
}

void AdamW::load_state_dict(const std::map<std::string, at::Tensor>& state) {
  const std::map<std::string, at::Tensor> expected = state_dict();
  for (const auto& [key, _] : state) {
    STP_CHECK(expected.count(key) != 0, "optimizer state key '", key,
              "' does not belong to this rank's parameters");
  }
  for (const auto& [key, want] : expected) {
    auto it = state.find(key);
    STP_CHECK(it != state.end(), "optimizer state is missing '", key, "'");
    const at::Tensor& got = it->second;
    STP_CHECK(
        got.defined() && got.sizes() == want.sizes() && got.scalar_type() == want.scalar_type(),
        "optimizer state '", key, "' has shape ", (got.defined() ? got.sizes() : at::IntArrayRef{}),
        " ", (got.defined() ? c10::toString(got.scalar_type()) : "undefined"), "; expected ",
        want.sizes(), " ", c10::toString(want.scalar_type()));
  }
  step_ = state.at("step").item<std::int64_t>();
  STP_CHECK(step_ >= 0, "optimizer state step=", step_, " must be >= 0");
  for (Slot& s : slots_) {
    s.step.fill_(static_cast<double>(step_));
    s.exp_avg.copy_(state.at(s.param->name + ".exp_avg"));
    s.exp_avg_sq.copy_(state.at(s.param->name + ".exp_avg_sq"));
    if (s.master.defined()) {
      s.master.copy_(state.at(s.param->name + ".master"));
      s.param->value.copy_(s.master);
    }
  }
}

std::vector<Param*> params_of(const std::vector<Chunk*>& chunks) {
  std::vector<Param*> out;
  for (Chunk* c : chunks) {
    for (Param& p : c->params()) out.push_back(&p);
  }
  return out;
}

}  // namespace stp::engine
