// The numeric building blocks the Llama chunk adds to gpt_ops.h (linear, cross-entropy and the
// fused attention kernels are shared from there): RMSNorm, rotary position embeddings, SwiGLU
// and grouped-query attention, forward and backward written out with ATen ops (no autograd).
// Shapes use the vocabulary of llama_config.h. Reduced-precision inputs (bfloat16) are
// normalised and rotated in float32 (ops::acc_dtype), results cast back to the input dtype.
//
// Thread-safety: pure functions of their arguments, except the *_grad_ accumulators, which add
// into the tensors they are given.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>

#include "models/gpt_ops.h"

namespace stp::models::ops {

// ---- RMSNorm over the last dimension ------------------------------------------------------
// y = xhat * w, xhat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps).
struct RmsNormOut {
  at::Tensor y;     // (..., C) input dtype
  at::Tensor xhat;  // (..., C) input dtype
  at::Tensor rstd;  // (..., 1) acc dtype
};
RmsNormOut rmsnorm_forward(const at::Tensor& x, const at::Tensor& w, double eps);
// dx = rstd * (dxhat - xhat * mean(dxhat * xhat)), dxhat = dy * w.
at::Tensor rmsnorm_backward(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& rstd,
                            const at::Tensor& w);
// The RMSNorm output recomputed from its saved normalised input: xhat * w.
at::Tensor rmsnorm_apply(const at::Tensor& xhat, const at::Tensor& w);
// dw += sum(dy * xhat) over all leading dimensions.
void rmsnorm_weight_grad_(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& dw);

// ---- Rotary position embeddings (Hugging Face's rotate_half convention) --------------------
// For a head x = [x1, x2] (halves of hd) at position t and frequencies
// f_i = theta^(-2i/hd), i < hd/2:  rope(x) = [x1 cos - x2 sin, x2 cos + x1 sin], angles t*f_i.
// A rotation: its backward is the rotation by the negated angles (inverse = true).
struct RotaryTable {
  at::Tensor cos;  // (Tmax, hd/2) acc dtype
  at::Tensor sin;  // (Tmax, hd/2) acc dtype
};
// The angles are computed in float64, then stored in acc_dtype(dtype) on `device`.
// REQUIRES: head_dim even, max_len >= 1, theta > 0.
RotaryTable rotary_table(std::int64_t max_len, std::int64_t head_dim, double theta,
                         at::ScalarType dtype, at::Device device);
// x (B, T, n*hd): n heads of size hd at positions 0..T-1 (T <= Tmax). Returns rope(x), or its
// inverse, in x's dtype.
at::Tensor rotary_apply(const at::Tensor& x, const RotaryTable& table, std::int64_t n_heads,
                        bool inverse = false);

// ---- SwiGLU: h = silu(gate) * up ----------------------------------------------------------
// gu (B, T, 2*Hl) laid out [gate | up]. Returns h (B, T, Hl).
at::Tensor swiglu_forward(const at::Tensor& gu);
// dgu (B, T, 2*Hl) from dh (B, T, Hl) and the saved gu:
//   dgate = dh * up * s (1 + gate (1 - s)), s = sigmoid(gate);  dup = dh * silu(gate).
at::Tensor swiglu_backward(const at::Tensor& dh, const at::Tensor& gu);

// ---- Causal grouped-query attention --------------------------------------------------------
// qkv (B, T, (NHl + 2*NKVl)*hd) laid out [q (NHl, hd) | k (NKVl, hd) | v (NKVl, hd)]; query
// head j attends with key/value head j / G, G = NHl / NKVl. Runs the fused kernels of
// Note [Fused attention] (attention_forward / attention_backward) on key/value heads repeated
// G times (a transient copy: only the unrepeated qkv is saved), and the backward sums the
// repeated heads' gradients back over each group. REQUIRES: NHl divisible by NKVl.
AttentionOut gqa_attention_forward(const at::Tensor& qkv, std::int64_t n_heads,
                                   std::int64_t n_kv_heads);
// dqkv (B, T, (NHl + 2*NKVl)*hd) from do (B, T, NHl*hd) and the saved qkv, o and lse.
at::Tensor gqa_attention_backward(const at::Tensor& d_o, const at::Tensor& qkv, const at::Tensor& o,
                                  const at::Tensor& lse, std::int64_t n_heads,
                                  std::int64_t n_kv_heads);

}  // namespace stp::models::ops
