// Test utilities for the GPT model, shared by the model and executor tests:
//   - an autograd REFERENCE of the full (unsharded, single-stage) model in float64, written
//     independently of the engine's explicit kernels (LayerNorm, GELU, cross-entropy by formula),
//     that gives the loss, every full parameter gradient by name, and the intermediate
//     residual-stream values and gradients;
//   - helpers to load one set of full parameters into sharded chunks and to gather sharded
//     gradients back into full tensors;
//   - a lock-step emulation of a TP group in one thread (run the TP ranks' units in turn and sum
//     the returned tensors over the ranks before the next unit), and an emulated TP x PP model.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/chunk.h"
#include "models/gpt.h"
#include "models/gpt_config.h"

namespace stp::testing {

// A float64 GPT config of these sizes (mlp_hidden 0: 4 * d).
models::GptConfig make_config(std::int64_t vocab, std::int64_t seq, std::int64_t d,
                              std::int64_t heads, std::int64_t layers, std::int64_t hidden = 0);

using ParamMap = std::map<std::string, at::Tensor>;

// The full parameters exactly as GptChunk initialises them (CPU, float64 or float32).
ParamMap init_full_params(const models::GptConfig& cfg);
// Every full parameter drawn at random, deterministic in (seed, name), in float64 on CPU:
// weights N(0, 0.2), embeddings N(0, 0.5), biases N(0, 0.1), LayerNorm weights 1 + N(0, 0.2).
// Unlike the init (zero biases, unit LayerNorm weights) this leaves no gradient trivially
// unexercised.
ParamMap random_full_params(const models::GptConfig& cfg, std::uint64_t seed);
// Copies the TP shard of full[p.name] into every parameter of `chunk` (cast to its dtype).
void load_full_params(engine::Chunk& chunk, const ParamMap& full, int tp_rank, int tp_size);
// The full float64 gradients of the chunks of one stage, one per TP rank in rank order: sharded
// gradients concatenated along shard_dim, replicated ones taken from rank 0.
ParamMap gather_grads(const std::vector<engine::Chunk*>& tp_ranks);

// A microbatch of uniformly random tokens and targets in [0, vocab), deterministic in seed.
engine::MicroBatch random_microbatch(const models::GptConfig& cfg, std::int64_t batch,
                                     std::int64_t seq, std::uint64_t seed);

// One forward + backward of the autograd reference over one microbatch.
struct ReferenceRun {
  at::Tensor loss;                         // () unscaled mean cross-entropy
  ParamMap grads;                          // d(loss_scale * loss)/dparam, full, by name
  std::vector<at::Tensor> residuals;       // 2L+1 of (B, T, C): embedding, after attn(0),
                                           // after mlp(0), ..., after mlp(L-1)
  std::vector<at::Tensor> residual_grads;  // the gradients of the residuals
  ParamMap ln_out_grads;                   // "layers.l.ln1", "layers.l.ln2", "ln_f" -> (B,T,C)
                                           // gradient at the LayerNorm's output
};
// REQUIRES: `full` holds every parameter of gpt_param_specs(cfg).
ReferenceRun run_reference(const models::GptConfig& cfg, const ParamMap& full,
                           const engine::MicroBatch& mb, double loss_scale = 1.0);

// A training step's reference over m microbatches, each loss scaled by 1/m.
struct ReferenceStep {
  double loss = 0;             // mean over microbatches
  std::vector<double> losses;  // per microbatch
  ParamMap grads;              // gradient of the mean loss
};
ReferenceStep reference_step(const models::GptConfig& cfg, const ParamMap& full,
                             const std::vector<engine::MicroBatch>& mbs);

// The emulated all-reduce: replaces every tensor with the sum over all of them. All defined
// or all undefined (checked).
void all_reduce_emulated(const std::vector<at::Tensor>& per_rank);
// Runs passes[r] of every TP rank unit by unit in lock step, summing what the units return
// over the ranks before the next unit; then finish() on each.
void run_lockstep(const std::vector<engine::Pass*>& passes);
// A backward with W fused, as the executor runs it: for each unit k, B unit k on every rank,
// then W unit k on every rank BEFORE the all-reduce of B unit k completes, then the
// all-reduce; finally finish() B, then finish() W.
void run_lockstep_fused(const std::vector<engine::Pass*>& b, const std::vector<engine::Pass*>& w);

// ||a - b|| / ||b|| in float64; 0 when both are zero, infinity when only b is.
double rel_error(const at::Tensor& a, const at::Tensor& b);

// A stages x tp grid of GptChunks driven in one thread: stage by stage, TP ranks in lock step.
class EmulatedModel {
 public:
  EmulatedModel(const models::GptConfig& cfg, int stages, int tp, at::Device device = at::kCPU);
  void load(const ParamMap& full);
  void zero_grad();
  // Forward, backward and weight gradient of one microbatch through every stage; returns the
  // unscaled loss. fused_w: W fused into B (run_lockstep_fused) rather than deferred.
  double train_microbatch(const engine::MicroBatch& mb, double loss_scale, bool fused_w = false);
  // Full gradients by name, gathered over TP and merged over stages.
  ParamMap full_grads();
  models::GptChunk& chunk(int stage, int tp_rank) { return *chunks_[stage][tp_rank]; }
  int stages() const { return static_cast<int>(chunks_.size()); }
  int tp() const { return static_cast<int>(chunks_[0].size()); }

 private:
  std::vector<std::vector<std::unique_ptr<models::GptChunk>>> chunks_;  // [stage][tp_rank]
};

}  // namespace stp::testing
