#include "models/gpt_ops.h"

// Narrow per-operator headers instead of <ATen/ATen.h> (about 3x faster to compile); tensor
// arithmetic is written with methods (x.mul(y)) since the operators need the full header.
#include <ATen/core/Tensor.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/stack.h>

#include <cmath>
#include <limits>

namespace stp::models::ops {

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// ---- LayerNorm ---------------------------------------------------------------------------

LayerNormOut layernorm_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                               double eps) {
  at::Tensor xa = x.to(acc_dtype(x.scalar_type()));        // (..., C)
  at::Tensor mean = xa.mean(-1, /*keepdim=*/true);         // (..., 1)
  at::Tensor xc = xa.sub(mean);                            // (..., C)
  at::Tensor var = xc.mul(xc).mean(-1, /*keepdim=*/true);  // (..., 1) biased, as LayerNorm
  at::Tensor rstd = var.add(eps).rsqrt();                  // (..., 1)
  LayerNormOut out;
  out.xhat = xc.mul(rstd).to(x.scalar_type());  // (..., C)
  out.rstd = rstd;
  out.y = layernorm_apply(out.xhat, w, b);  // (..., C)
  return out;
}

at::Tensor layernorm_apply(const at::Tensor& xhat, const at::Tensor& w, const at::Tensor& b) {
  return b.addcmul(xhat, w);
}

at::Tensor layernorm_backward(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& rstd,
                              const at::Tensor& w) {
  const at::ScalarType acc = rstd.scalar_type();
  at::Tensor xh = xhat.to(acc);                                                    // (..., C)
  at::Tensor dxhat = dy.to(acc).mul(w.to(acc));                                    // (..., C)
  at::Tensor mean_dxhat = dxhat.mean(-1, /*keepdim=*/true);                        // (..., 1)
  at::Tensor mean_dxhat_xhat = dxhat.mul(xh).mean(-1, /*keepdim=*/true);           // (..., 1)
  at::Tensor dx = dxhat.sub(mean_dxhat).sub_(xh.mul(mean_dxhat_xhat)).mul_(rstd);  // (..., C)
  return dx.to(dy.scalar_type());
}

void layernorm_weight_grad_(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& dw,
                            const at::Tensor& db) {
  const std::int64_t C = dy.size(-1);
  at::Tensor dy2 = dy.reshape({-1, C});    // (N, C)
  at::Tensor xh2 = xhat.reshape({-1, C});  // (N, C)
  dw.add_(dy2.mul(xh2).sum(0, /*keepdim=*/false, dw.scalar_type()));
  db.add_(dy2.sum(0, /*keepdim=*/false, db.scalar_type()));
}

// ---- Linear ------------------------------------------------------------------------------

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  return at::linear(x, w, b);
}

at::Tensor linear_backward_input(const at::Tensor& dy, const at::Tensor& w) {
  return at::matmul(dy, w);
}

void linear_weight_grad_(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw,
                         const at::Tensor& db) {
  at::Tensor dy2 = dy.reshape({-1, dy.size(-1)});  // (N, out)
  at::Tensor x2 = x.reshape({-1, x.size(-1)});     // (N, in)
  if (dw.scalar_type() == dy.scalar_type()) {
    dw.addmm_(dy2.t(), x2);
  } else {
    dw.add_(at::mm(dy2.t(), x2));  // wider accumulator (float32 grads of bfloat16 weights)
  }
  if (db.defined()) db.add_(dy2.sum(0, /*keepdim=*/false, db.scalar_type()));
}

// ---- Attention ---------------------------------------------------------------------------

namespace {

// The heads of a fused qkv (B, T, 3*NHl*hd), as the forward and the backward both read them.
struct Heads {
  std::int64_t B, T, hd;
  at::Tensor q, k, v;  // (B, NHl, T, hd) each
};

Heads split_heads(const at::Tensor& qkv, std::int64_t n_heads) {
  const std::int64_t B = qkv.size(0), T = qkv.size(1);
  const std::int64_t hd = qkv.size(2) / (3 * n_heads);
  at::Tensor qkv5 = qkv.view({B, T, 3, n_heads, hd});  // (B, T, 3, NHl, hd)
  return {B,
          T,
          hd,
          qkv5.select(2, 0).transpose(1, 2),
          qkv5.select(2, 1).transpose(1, 2),
          qkv5.select(2, 2).transpose(1, 2)};
}

}  // namespace

AttentionOut attention_forward(const at::Tensor& qkv, std::int64_t n_heads) {
  const auto [B, T, hd, q, k, v] = split_heads(qkv, n_heads);
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)).mul_(scale);             // (B, NHl, T, T)
  at::Tensor future = at::ones({T, T}, qkv.options().dtype(at::kBool)).triu_(1);  // (T, T)
  scores.masked_fill_(future, -std::numeric_limits<double>::infinity());
  AttentionOut out;
  out.probs = at::softmax(scores, -1, acc_dtype(qkv.scalar_type())).to(qkv.scalar_type());
  out.o = at::matmul(out.probs, v)             // (B, NHl, T, hd)
              .transpose(1, 2)                 // (B, T, NHl, hd)
              .reshape({B, T, n_heads * hd});  // (B, T, NHl*hd)
  return out;
}

at::Tensor attention_backward(const at::Tensor& d_o, const at::Tensor& qkv, const at::Tensor& probs,
                              std::int64_t n_heads) {
  const auto [B, T, hd, q, k, v] = split_heads(qkv, n_heads);
  at::Tensor dout = d_o.view({B, T, n_heads, hd}).transpose(1, 2);  // (B, NHl, T, hd)
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  at::Tensor dprobs = at::matmul(dout, v.transpose(-2, -1));  // (B, NHl, T, T)
  at::Tensor dv = at::matmul(probs.transpose(-2, -1), dout);  // (B, NHl, T, hd)
  // softmax backward: ds = p * (dp - sum_j dp_j p_j); masked entries have p = 0, so ds = 0.
  at::Tensor pdp = probs.mul(dprobs);                                      // (B, NHl, T, T)
  at::Tensor dscores = pdp.sub(probs.mul(pdp.sum(-1, /*keepdim=*/true)));  // (B, NHl, T, T)
  dscores.mul_(scale);
  at::Tensor dq = at::matmul(dscores, k);                    // (B, NHl, T, hd)
  at::Tensor dk = at::matmul(dscores.transpose(-2, -1), q);  // (B, NHl, T, hd)
  return at::stack({dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)},
                   2)                   // (B,T,3,NHl,hd)
      .view({B, T, 3 * n_heads * hd});  // (B, T, 3*NHl*hd)
}

// ---- GELU ----------------------------------------------------------------------------------

at::Tensor gelu_forward(const at::Tensor& x) { return at::gelu(x, "tanh"); }

at::Tensor gelu_backward(const at::Tensor& dy, const at::Tensor& x) {
  return at::gelu_backward(dy, x, "tanh");
}

// ---- Cross-entropy -------------------------------------------------------------------------

CrossEntropyOut cross_entropy_forward(const at::Tensor& logits, const at::Tensor& targets) {
  at::Tensor logp = at::log_softmax(logits, -1, acc_dtype(logits.scalar_type()));  // (B, T, V)
  CrossEntropyOut out;
  out.loss = logp.gather(-1, targets.unsqueeze(-1)).mean().neg();  // ()
  out.probs = logp.exp_();                                         // (B, T, V)
  return out;
}

at::Tensor cross_entropy_backward_(at::Tensor& probs, const at::Tensor& targets, double scale) {
  const double n_tokens = static_cast<double>(targets.numel());
  at::Tensor index = targets.unsqueeze(-1);  // (B, T, 1)
  probs.scatter_add_(-1, index, at::full(index.sizes(), -1.0, probs.options()));
  probs.mul_(scale / n_tokens);
  return probs;  // (B, T, V) dlogits
}

}  // namespace stp::models::ops
