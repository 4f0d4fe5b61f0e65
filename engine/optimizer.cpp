#include "engine/optimizer.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros_like.h>

#include <cmath>
#include <set>

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
    Slot s;
    s.param = p;
    const at::ScalarType t = p->value.scalar_type();
    if (t != at::kFloat && t != at::kDouble) s.master = p->value.to(at::kFloat).contiguous();
    s.exp_avg = at::zeros_like(weights(s));
    s.exp_avg_sq = at::zeros_like(weights(s));
    slots_.push_back(std::move(s));
  }
}

void AdamW::set_lr(double lr) {
  STP_CHECK(std::isfinite(lr) && lr >= 0, "lr=", lr, " must be >= 0");
  opts_.lr = lr;
}

double AdamW::local_grad_sq_sum() const {
  std::vector<at::Tensor> parts;
  for (const Slot& s : slots_) {
    const Param& p = *s.param;
    if (p.shard_dim < 0 && tp_rank_ != 0) continue;  // replicated: TP rank 0 counts it
    if (!p.grad.defined()) continue;
    const at::ScalarType acc = p.grad.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    at::Tensor g = p.grad.to(acc);
    parts.push_back(g.mul(g).sum().to(at::kDouble));
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
  const double lr = opts_.lr, b1 = opts_.beta1, b2 = opts_.beta2;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(step_));
  const double bc2_sqrt = std::sqrt(1 - std::pow(b2, static_cast<double>(step_)));
  const double step_size = lr / bc1;
  for (Slot& s : slots_) {
    Param& p = *s.param;
    if (!p.grad.defined()) continue;
    const at::Tensor& w = weights(s);
    at::Tensor g = p.grad.to(w.scalar_type());
    if (r.clip_coef != 1.0) g = g.mul(r.clip_coef);
    if (p.decay && opts_.weight_decay != 0) w.mul_(1 - lr * opts_.weight_decay);
    s.exp_avg.mul_(b1).add_(g, 1 - b1);
    s.exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2);
    at::Tensor denom = s.exp_avg_sq.sqrt().div_(bc2_sqrt).add_(opts_.eps);
    w.addcdiv_(s.exp_avg, denom, -step_size);
    if (s.master.defined()) p.value.copy_(s.master);
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
