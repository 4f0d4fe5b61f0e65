// Test utilities for the Llama model, shared by the Llama model and engine tests:
//   - an autograd REFERENCE of the full (unsharded, single-stage) Llama in float64, written
//     independently of the engine's explicit kernels (RMSNorm, rotary, SwiGLU and attention by
//     formula, key/value heads repeated with repeat_interleave, T x T probabilities), giving
//     the loss, every full parameter gradient by name, the residual stream and its gradients,
//     and the gradients at the RMSNorm outputs;
//   - random full parameters; a stages x tp grid of LlamaChunks driven in one thread with the
//     TP all-reduce emulated (model_test_util.h's lock-step helpers, which take any Chunk).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "engine/chunk.h"
#include "model_test_util.h"
#include "models/llama.h"

namespace stp::testing {

// A float64 Llama config of these sizes (ffn 0: Llama's rule).
models::LlamaConfig make_llama_config(std::int64_t vocab, std::int64_t seq, std::int64_t d,
                                      std::int64_t heads, std::int64_t kv_heads,
                                      std::int64_t layers, std::int64_t ffn = 0);

// Every full parameter drawn at random, deterministic in (seed, name), float64 on CPU: weights
// N(0, 0.3), the embedding N(0, 0.5), RMSNorm weights 1 + N(0, 0.2).
ParamMap random_llama_params(const models::LlamaConfig& cfg, std::uint64_t seed);

// A microbatch of uniformly random tokens and targets in [0, vocab) (random_microbatch's).
engine::MicroBatch random_microbatch_for(std::int64_t vocab, std::int64_t batch, std::int64_t seq,
                                         std::uint64_t seed);

// One forward + backward of the autograd reference (ReferenceRun of model_test_util.h; the
// ln_out_grads keys are "layers.l.ln1", "layers.l.ln2", "ln_f").
ReferenceRun run_llama_reference(const models::LlamaConfig& cfg, const ParamMap& full,
                                 const engine::MicroBatch& mb, double loss_scale = 1.0);
// A step over m microbatches, each loss scaled by 1/m.
ReferenceStep llama_reference_step(const models::LlamaConfig& cfg, const ParamMap& full,
                                   const std::vector<engine::MicroBatch>& mbs);

// A stages x tp grid of LlamaChunks driven in one thread: stage by stage, TP ranks in lock step.
class LlamaGrid {
 public:
  LlamaGrid(const models::LlamaConfig& cfg, int stages, int tp);
  void load(const ParamMap& full);
  // Forward, backward and weight gradient of one microbatch through every stage; returns the
  // unscaled loss. fused_w: W fused into B (run_lockstep_fused) rather than deferred.
  double train_microbatch(const engine::MicroBatch& mb, double loss_scale, bool fused_w = false);
  // Full gradients by name, gathered over TP and merged over stages.
  ParamMap full_grads();
  models::LlamaChunk& chunk(int stage, int tp_rank) { return *chunks_[stage][tp_rank]; }
  int stages() const { return static_cast<int>(chunks_.size()); }
  int tp() const { return static_cast<int>(chunks_[0].size()); }

 private:
  std::vector<std::vector<std::unique_ptr<models::LlamaChunk>>> chunks_;  // [stage][tp_rank]
};

}  // namespace stp::testing
