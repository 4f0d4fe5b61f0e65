// AdamW: the optimizer step over the local parameter shards of one rank.
//
// Note [Optimizer and parallelism]
// Each rank updates only its own shards (Param::value of its chunks); there is no optimizer
// communication except the global gradient norm for clipping. The norm is
//   sqrt(sum over every parameter of the MODEL of |grad|^2),
// which each rank computes as a local sum of squares that the caller's `reduce_sum` turns into
// the global sum (the executor sums over the TP and PP groups; the DP group is not involved
// because gradients are already averaged over DP before the step). A parameter replicated
// over TP ranks (Param::shard_dim < 0) has the same gradient on every TP rank (Note [GPT
// parameter layout]), so only TP rank 0 contributes it: the sum then counts it once, and the
// TP = t norm equals the TP = 1 norm.
//
// The update is PyTorch's AdamW (decoupled weight decay, bias correction):
//   w *= 1 - lr*wd                  (only for Param::decay)
//   m = b1 m + (1-b1) g,   v = b2 v + (1-b2) g^2
//   w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
// with g = clip_coef * grad, clip_coef = min(1, max_grad_norm / (norm + 1e-6)) (as
// torch.nn.utils.clip_grad_norm_, which also scales Param::grad in place: after a clipped step
// it holds g). Zeroing it for the next step is the caller's job (Chunk::zero_grad). When the
// compute dtype is below float32
// (bfloat16), the step runs on a float32 master copy of the weights with float32 moments and
// copies the result back into Param::value; float32 and float64 parameters are updated in place
// with moments of their own dtype. If the global norm is not finite the step is skipped (no
// weight, moment or step count changes) and reported.
//
// Thread-safety: none; the rank's thread calls step().
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "engine/chunk.h"

namespace stp::engine {

struct AdamWOptions {
  double lr = 3e-4;            // learning rate; >= 0 (set_lr() changes it between steps)
  double beta1 = 0.9;          // first-moment decay; [0, 1)
  double beta2 = 0.95;         // second-moment decay; [0, 1)
  double eps = 1e-8;           // denominator epsilon; > 0
  double weight_decay = 0.1;   // decoupled weight decay for Param::decay params; >= 0
  double max_grad_norm = 1.0;  // global L2 clipping threshold; <= 0 disables clipping

  // Throws std::invalid_argument naming the first bad field, its value and the legal range.
  void validate() const;
};

struct StepResult {
  double grad_norm = 0;  // global L2 norm of the gradients, before clipping
  double clip_coef = 1;  // the factor applied to the gradients (1: not clipped)
  bool skipped = false;  // the norm was not finite; nothing was updated
};

class AdamW {
 public:
  // Maps a rank-local sum of squares to the global one (e.g. all-reduce over TP and PP).
  using SumReducer = std::function<double(double)>;

  // `params` are the rank's parameters over all its chunks; they must outlive the optimizer
  // and keep their shapes. Names must be unique. tp_rank decides who counts replicated
  // parameters (Note [Optimizer and parallelism]).
  AdamW(std::vector<Param*> params, const AdamWOptions& opts, int tp_rank);

  // One step. reduce_sum: the global reduction of the norm's sum of squares (empty: this rank
  // alone holds the whole model).
  StepResult step(const SumReducer& reduce_sum = {});

  // The rank's contribution to the squared global norm.
  double local_grad_sq_sum() const;

  void set_lr(double lr);
  const AdamWOptions& options() const { return opts_; }
  std::int64_t steps() const { return step_; }

  // State for checkpoints, local shards by name: "<param>.exp_avg", "<param>.exp_avg_sq",
  // "<param>.master" (bfloat16 params only) and "step" (() int64). load_state_dict() requires
  // exactly those keys with matching shapes and dtypes (std::invalid_argument otherwise),
  // copies them in, and refreshes Param::value from a loaded master copy.
  std::map<std::string, at::Tensor> state_dict() const;
  void load_state_dict(const std::map<std::string, at::Tensor>& state);

 private:
  struct Slot {
    Param* param;
    at::Tensor master;      // float32 copy of a low-precision value; undefined otherwise
    at::Tensor exp_avg;     // dtype of the updated weights (master or value)
    at::Tensor exp_avg_sq;  // same
    at::Tensor step;        // () float32 beside the weights: the fused kernel's step count
  };
  struct Bucket {  // Note [Fused step]
    at::ScalarType dtype;
    c10::Device device;
    bool decay;
    std::vector<std::size_t> slots;
  };
  std::vector<at::Tensor> grads(const Bucket& b, bool counted) const;
  const at::Tensor& weights(const Slot& s) const {
    return s.master.defined() ? s.master : s.param->value;
  }

  AdamWOptions opts_;
  int tp_rank_;
  std::int64_t step_ = 0;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
};

// The parameters of several chunks (e.g. the two chunks of a V-shape rank), in order.
std::vector<Param*> params_of(const std::vector<Chunk*>& chunks);

}  // namespace stp::engine
