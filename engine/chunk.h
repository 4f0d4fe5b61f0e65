// Chunk: one pipeline stage of a model on one rank, exposed as passes made of units.
//
// Note [Units and collectives]
// A pass (forward, activation gradient, weight gradient) of one chunk over one microbatch is an
// ordered list of units. Unit k computes and may return a tensor that must be all-reduced
// (summed) in place over the tensor-parallel group before unit k+1 — or finish() — runs. The
// model never communicates: the executor starts the collective and decides what computes while
// it is in flight (DESIGN.md "Braiding"). Running the units one by one with a wait after each
// collective gives exactly the numbers of the whole pass.
//
// The weight-gradient pass has exactly as many units as the activation-gradient pass, and W unit
// k computes the weight gradients of the parameters B unit k propagated through. A backward
// with W fused runs "B unit k, start its collective, W unit k" (DESIGN.md); a deferred W runs
// all W units later, from the fields B left in the ActivationSet. W units need no collective.
// The weight-gradient pass's finish() computes the weight gradients of what the backward pass's
// finish() propagated through (e.g. a LayerNorm that needed the last all-reduced gradient, the
// embeddings), so it REQUIRES that backward's finish() ran first: a fused backward runs its
// units, then finish() of B, then finish() of W.
//
// Gradients accumulate into Param::grad (summed over microbatches; the loss of each microbatch
// is scaled by 1/m so the step's gradient is that of the mean loss).
//
// The tensor a unit returns is owned by the pass until the next unit runs; the executor only
// sums it in place. The pass may keep references to the forward input and backward grad_output
// in the ActivationSet: the caller must not modify those in place while the set lives.
// loss(set) is readable between the forward's finish() and the backward (which drops it).
//
// Thread-safety: a Chunk and its passes are used by one thread (the rank's executor).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/activation_set.h"

namespace stp::engine {

// A trainable tensor of a chunk: the local shard and its gradient accumulator.
struct Param {
  std::string name;    // unique within the model, the same on every rank ("layers.3.attn.qkv.w")
  at::Tensor value;    // local shard, compute dtype
  at::Tensor grad;     // same shape, accumulates over microbatches; float32 for bfloat16 values
  int shard_dim = -1;  // dimension split over TP ranks, -1 when replicated on every TP rank
  bool decay = true;   // AdamW weight decay applies
};

// One microbatch's data, the same on every TP rank.
struct MicroBatch {
  at::Tensor tokens;   // (B, T) int64
  at::Tensor targets;  // (B, T) int64
};

// One pass of one chunk over one microbatch, run unit by unit.
class Pass {
 public:
  virtual ~Pass() = default;
  virtual int size() const = 0;
  // Short unit name for traces: "attn-F(3)", "mlp-B(2)", "W(attn 2)".
  virtual std::string unit_name(int k) const = 0;
  // Runs unit k. REQUIRES: units 0..k-1 ran and the collective of unit k-1 completed.
  // Returns the tensor to all-reduce in place before the next unit, or an undefined tensor.
  virtual at::Tensor run(int k) = 0;
  // REQUIRES: every unit ran and the last collective completed. Produces the pass's output.
  virtual void finish() = 0;
  // After finish(): forward -> the activation for the next stage (undefined on the last stage);
  // backward -> the gradient for the previous stage (undefined on the first stage).
  virtual at::Tensor output() = 0;
};

class Chunk {
 public:
  virtual ~Chunk() = default;

  virtual int stage() const = 0;
  virtual bool is_first_stage() const = 0;  // consumes tokens
  virtual bool is_last_stage() const = 0;   // computes the loss

  // Forward of one microbatch. `input` is the previous stage's activation (undefined on the first
  // stage, which embeds mb.tokens). Saves what the backward needs into `set`. On the last stage
  // the forward also computes the loss (see loss()).
  virtual std::unique_ptr<Pass> forward(ActivationSet& set, const MicroBatch& mb,
                                        at::Tensor input) = 0;
  // Activation-gradient pass. `grad_output` is the next stage's gradient (undefined on the last
  // stage). Leaves in `set` what weight_grad() needs and drops what it no longer needs.
  virtual std::unique_ptr<Pass> backward(ActivationSet& set, at::Tensor grad_output) = 0;
  // Weight-gradient pass; units pair one-to-one with backward()'s. Empties `set` when done.
  virtual std::unique_ptr<Pass> weight_grad(ActivationSet& set) = 0;

  // Last stage only: the unscaled mean loss of the microbatch whose forward wrote `set`, as a
  // 0-dim tensor on the model's device. The executor sums these on the device and reads the sum
  // once per step: a host read per microbatch would stall the host until the whole forward ran.
  virtual at::Tensor loss_tensor(const ActivationSet& set) const = 0;
  // The same as a number (a host sync: for tests and tools, not the step).
  double loss(const ActivationSet& set) const;

  // Shape of the activation this chunk receives from the previous stage (and of its gradient).
  virtual std::vector<std::int64_t> input_shape(std::int64_t batch) const = 0;

  virtual std::vector<Param>& params() = 0;
  void zero_grad();
};

// Builds the model piece for (stage of stages, tp_rank of tp_size).
using ModelFactory =
    std::function<std::unique_ptr<Chunk>(int stage, int stages, int tp_rank, int tp_size)>;

}  // namespace stp::engine
