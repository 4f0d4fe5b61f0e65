// The numeric building blocks of the GPT chunk, forward and backward written out with ATen ops
// (no autograd). Each backward takes exactly the tensors its forward saved. Shapes use the
// vocabulary of gpt_config.h. Reduced-precision inputs (bfloat16) are normalised and
// soft-maxed in float32 (acc_dtype), results cast back to the input dtype.
//
// Thread-safety: pure functions of their arguments, except the *_grad_ accumulators, which add
// into the tensors they are given.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace stp::models::ops {

// The dtype used for reductions: float64 stays float64, everything else float32.
at::ScalarType acc_dtype(at::ScalarType t);

// ---- LayerNorm over the last dimension ----------------------------------------------------
// y = xhat * w + b, xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps).
struct LayerNormOut {
  at::Tensor y;     // (..., C) input dtype
  at::Tensor xhat;  // (..., C) input dtype
  at::Tensor rstd;  // (..., 1) acc dtype
};
LayerNormOut layernorm_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                               double eps);
// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * w.
at::Tensor layernorm_backward(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& rstd,
                              const at::Tensor& w);
// The LayerNorm output recomputed from its saved normalised input: xhat * w + b.
at::Tensor layernorm_apply(const at::Tensor& xhat, const at::Tensor& w, const at::Tensor& b);
// dw += sum(dy * xhat), db += sum(dy) over all leading dimensions.
void layernorm_weight_grad_(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& dw,
                            const at::Tensor& db);

// ---- Linear: y = x W^T + b (W is (out, in)) -----------------------------------------------
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b);
// dx = dy W  (..., in)
at::Tensor linear_backward_input(const at::Tensor& dy, const at::Tensor& w);
// dW += dy^T x, db += sum(dy), flattened over the leading dimensions. dw is (out, in); db is
// (out) or undefined. The accumulators may be of a wider dtype than dy and x.
void linear_weight_grad_(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw,
                         const at::Tensor& db);

// ---- Causal multi-head self-attention ----------------------------------------------------
// Note [Fused attention]
// o = softmax(q k^T / sqrt(hd) + causal mask) v per head, by ATen's fused scaled-dot-product
// kernels: the CPU flash kernel on the CPU (every dtype, float64 included); on CUDA flash for
// bfloat16/float16 with hd % 8 == 0 and hd <= 256, memory-efficient for float32, and an
// explicit path otherwise (float64). None keeps the (B, NHl, T, T) probabilities: the forward
// returns the output and each query's log-sum-exp, and the backward recomputes what it needs
// from q, k, v, o and the log-sum-exp (flash's recomputation), so the saved bytes grow
// linearly with T. The explicit path also saves only the log-sum-exp and runs its softmax
// backward as one kernel with float accumulation (_softmax_backward_data).
//
// qkv (B, T, 3*NHl*hd) laid out as (B, T, 3, NHl, hd).
struct AttentionOut {
  at::Tensor o;    // (B, T, NHl*hd): the heads concatenated
  at::Tensor lse;  // (B, NHl, T'): each query's log-sum-exp (T' >= T: kernel-specific padding)
};
AttentionOut attention_forward(const at::Tensor& qkv, std::int64_t n_heads);
// dqkv (B, T, 3*NHl*hd) from do (B, T, NHl*hd) and the saved qkv, o and lse.
at::Tensor attention_backward(const at::Tensor& d_o, const at::Tensor& qkv, const at::Tensor& o,
                              const at::Tensor& lse, std::int64_t n_heads);

// ---- GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) -------------
at::Tensor gelu_forward(const at::Tensor& x);
at::Tensor gelu_backward(const at::Tensor& dy, const at::Tensor& x);

// ---- Cross-entropy, mean over all B*T tokens ----------------------------------------------
struct CrossEntropyOut {
  at::Tensor loss;   // () acc dtype, the mean over tokens
  at::Tensor probs;  // (B, T, V) acc dtype, softmax(logits)
};
CrossEntropyOut cross_entropy_forward(const at::Tensor& logits, const at::Tensor& targets);
// d(scale * loss)/dlogits = scale * (probs - onehot(targets)) / (B*T), computed in place in
// `probs` (which is returned).
at::Tensor cross_entropy_backward_(at::Tensor& probs, const at::Tensor& targets, double scale);

}  // namespace stp::models::ops
