// Test utilities for the Llama model, shared by the Llama model and engine tests:
//   - an autograd REFERENCE of the full (unsharded, single-stage) Llama in float64, written
//     independently of the engine's explicit kernels (RMSNorm, rotary, SwiGLU and attention by
//     formula, key/value heads repeated with repeat_interleave, T x T probabilities), giving
//     the loss, every full parameter gradient by name, the residual stream and its gradients,
//     and the gradients at the RMSNorm outputs;
//   - random full parameters; LlamaGrid, model_test_util.h's grid of LlamaChunks driven in one
//     thread with the TP all-reduce emulated.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
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

// One forward + backward of the autograd reference (ReferenceRun of model_test_util.h; the
// ln_out_grads keys are "layers.l.ln1", "layers.l.ln2", "ln_f").
ReferenceRun run_llama_reference(const models::LlamaConfig& cfg, const ParamMap& full,
                                 const engine::MicroBatch& mb, double loss_scale = 1.0);
// A step over m microbatches, each loss scaled by 1/m.
ReferenceStep llama_reference_step(const models::LlamaConfig& cfg, const ParamMap& full,
                                   const std::vector<engine::MicroBatch>& mbs);

// A stages x tp grid of LlamaChunks driven in one thread (model_test_util.h's DecoderGrid).
using LlamaGrid = EmulatedGrid<models::LlamaChunk, models::LlamaConfig>;

}  // namespace stp::testing
