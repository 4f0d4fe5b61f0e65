#include "models/chunk_inputs.h"

#include "common/check.h"
#include "models/gpt_config.h"

namespace stp::models {

ForwardInputs check_forward_inputs(const engine::Chunk& chunk, const engine::MicroBatch& mb,
                                   const at::Tensor& input, std::int64_t d_model,
                                   std::int64_t seq_len, at::ScalarType dtype, at::Device device) {
  ForwardInputs out;
  std::int64_t B = -1, T = -1;
  if (chunk.is_first_stage()) {
    STP_CHECK(mb.tokens.defined() && mb.tokens.dim() == 2 && mb.tokens.scalar_type() == at::kLong,
              "microbatch tokens must be a (B, T) int64 tensor on the first stage");
    B = mb.tokens.size(0);
    T = mb.tokens.size(1);
    out.tokens = mb.tokens.to(device);
  } else {
    STP_CHECK(input.defined() && input.dim() == 3 && input.size(2) == d_model, "stage ",
              chunk.stage(), " needs a (B, T, C=", d_model, ") input activation");
    STP_CHECK(input.scalar_type() == dtype, "input dtype=", c10::toString(input.scalar_type()),
              " must be the model dtype ", dtype_name(dtype));
    B = input.size(0);
    T = input.size(1);
  }
  STP_CHECK(B >= 1, "microbatch size B=", B, " must be >= 1");
  STP_CHECK(T >= 1 && T <= seq_len, "sequence length T=", T,
            " is out of range [1, seq_len=", seq_len, "]");
  if (chunk.is_last_stage()) {
    STP_CHECK(mb.targets.defined() && mb.targets.scalar_type() == at::kLong &&
                  mb.targets.dim() == 2 && mb.targets.size(0) == B && mb.targets.size(1) == T,
              "microbatch targets must be a (B=", B, ", T=", T, ") int64 tensor on the last stage");
    out.targets = mb.targets.to(device);
  }
  return out;
}

void check_grad_output(const engine::Chunk& chunk, const at::Tensor& grad_output,
                       const at::Tensor& output_like, at::ScalarType dtype) {
  if (chunk.is_last_stage()) return;
  STP_CHECK(grad_output.defined() && grad_output.sizes() == output_like.sizes() &&
                grad_output.scalar_type() == dtype,
            "stage ", chunk.stage(), " needs a grad_output of the shape and dtype of its output ",
            output_like.sizes(), " ", dtype_name(dtype));
}

}  // namespace stp::models
