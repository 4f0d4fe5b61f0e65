// The checks every model chunk makes on what a forward and a backward receive, in one place so
// the GPT and the Llama refuse the same bad inputs with the same one-line messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>

#include "engine/chunk.h"

namespace stp::models {

// What a stage's forward works on after its inputs were checked: the first stage's tokens and
// the last stage's targets on the model's device (undefined on the other stages).
struct ForwardInputs {
  at::Tensor tokens;   // (B, T) int64, first stage
  at::Tensor targets;  // (B, T) int64, last stage
};

// `chunk` names the stage; `input` is the previous stage's (B, T, d_model) activation of
// `dtype` (undefined on the first stage); T must be in [1, seq_len]. Throws
// std::invalid_argument naming the value and what was expected.
ForwardInputs check_forward_inputs(const engine::Chunk& chunk, const engine::MicroBatch& mb,
                                   const at::Tensor& input, std::int64_t d_model,
                                   std::int64_t seq_len, at::ScalarType dtype, at::Device device);

// Every stage but the last needs a gradient of its output's shape (`output_like`) and dtype.
void check_grad_output(const engine::Chunk& chunk, const at::Tensor& grad_output,
                       const at::Tensor& output_like, at::ScalarType dtype);

}  // namespace stp::models
