#include "models/gpt_ops.h"

// Narrow per-operator headers instead of <ATen/ATen.h> (about 3x faster to compile); tensor
// arithmetic is written with methods (x.mul(y)) since the operators need the full header.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_scaled_dot_product_efficient_attention.h>
#include <ATen/ops/_scaled_dot_product_efficient_attention_backward.h>
#include <ATen/ops/_scaled_dot_product_flash_attention.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_backward.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu.h>
#include <ATen/ops/_scaled_dot_product_flash_attention_for_cpu_backward.h>
#include <ATen/ops/_softmax_backward_data.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/logsumexp.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/softmax.h>
#include <ATen/ops/stack.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <tuple>

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

namespace {

// float32 weight gradients of bfloat16 weights: on CUDA, cuBLAS accumulates dy^T x straight
// into the float32 gradient (addmm's out_dtype form, CUDA only in 2.11), with no bfloat16
// rounding of each microbatch's product and no temporary. Returns false where that form is
// not available (the CPU; a CUDA build that refuses it is remembered after the first try).
bool accumulate_in_place_(const at::Tensor& dw, const at::Tensor& dy2, const at::Tensor& x2) {
  static std::atomic<bool> cuda_refuses{false};
  if (!dw.is_cuda() || dw.scalar_type() != at::kFloat || cuda_refuses.load()) return false;
  try {
    at::Tensor out = dw;
    at::addmm_out(out, dw, dy2.t(), x2, at::kFloat);
    return true;
  } catch (const c10::Error&) {
    cuda_refuses.store(true);
    return false;
  }
}

}  // namespace

void linear_weight_grad_(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& dw,
                         const at::Tensor& db) {
  at::Tensor dy2 = dy.reshape({-1, dy.size(-1)});  // (N, out)
  at::Tensor x2 = x.reshape({-1, x.size(-1)});     // (N, in)
  if (dw.scalar_type() == dy.scalar_type()) {
    dw.addmm_(dy2.t(), x2);
  } else if (!accumulate_in_place_(dw, dy2, x2)) {
    dw.add_(at::mm(dy2.t(), x2));  // a bfloat16 product, then the float32 add
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

namespace {

// Which kernel runs the attention of a (B, NHl, T, hd) problem (Note [Fused attention]).
enum class AttentionKernel { kCpuFlash, kCudaFlash, kCudaEfficient, kExplicit };

AttentionKernel pick_kernel(const at::Tensor& qkv, std::int64_t hd) {
  if (!qkv.is_cuda()) return AttentionKernel::kCpuFlash;
  const at::ScalarType t = qkv.scalar_type();
  if ((t == at::kBFloat16 || t == at::kHalf) && hd % 8 == 0 && hd <= 256)
    return AttentionKernel::kCudaFlash;
  if (t != at::kDouble && hd % 8 == 0) return AttentionKernel::kCudaEfficient;
  return AttentionKernel::kExplicit;
}

// (B, NHl, T, T) scaled scores with the future masked to -inf, in the accumulation dtype.
at::Tensor causal_scores(const at::Tensor& q, const at::Tensor& k, double scale) {
  const std::int64_t T = q.size(2);
  at::Tensor scores = at::matmul(q, k.transpose(-2, -1)).to(acc_dtype(q.scalar_type()));
  scores.mul_(scale);
  at::Tensor future = at::ones({T, T}, q.options().dtype(at::kBool)).triu_(1);  // (T, T)
  return scores.masked_fill_(future, -std::numeric_limits<double>::infinity());
}

}  // namespace

AttentionOut attention_forward(const at::Tensor& qkv, std::int64_t n_heads) {
  const auto [B, T, hd, q, k, v] = split_heads(qkv, n_heads);
  at::Tensor out;  // (B, NHl, T, hd)
  AttentionOut res;
  switch (pick_kernel(qkv, hd)) {
    case AttentionKernel::kCpuFlash:
      std::tie(out, res.lse) = at::_scaled_dot_product_flash_attention_for_cpu(
          q, k, v, /*dropout_p=*/0.0, /*is_causal=*/true);
      break;
    case AttentionKernel::kCudaFlash: {
      auto r = at::_scaled_dot_product_flash_attention(q, k, v, /*dropout_p=*/0.0,
                                                       /*is_causal=*/true);
      out = std::get<0>(r);
      res.lse = std::get<1>(r);
      break;
    }
    case AttentionKernel::kCudaEfficient: {
      auto r = at::_scaled_dot_product_efficient_attention(q, k, v, /*attn_bias=*/std::nullopt,
                                                           /*compute_log_sumexp=*/true,
                                                           /*dropout_p=*/0.0, /*is_causal=*/true);
      out = std::get<0>(r);
      res.lse = std::get<1>(r);
      break;
    }
    case AttentionKernel::kExplicit: {
      at::Tensor scores = causal_scores(q, k, 1.0 / std::sqrt(static_cast<double>(hd)));
      res.lse = scores.logsumexp(-1);                                // (B, NHl, T)
      at::Tensor probs = scores.sub_(res.lse.unsqueeze(-1)).exp_();  // (B, NHl, T, T)
      out = at::matmul(probs.to(qkv.scalar_type()), v);
      break;
    }
  }
  res.o = out.transpose(1, 2)                  // (B, T, NHl, hd)
              .reshape({B, T, n_heads * hd});  // (B, T, NHl*hd)
  return res;
}

at::Tensor attention_backward(const at::Tensor& d_o, const at::Tensor& qkv, const at::Tensor& o,
                              const at::Tensor& lse, std::int64_t n_heads) {
  const auto [B, T, hd, q, k, v] = split_heads(qkv, n_heads);
  at::Tensor dout = d_o.view({B, T, n_heads, hd}).transpose(1, 2);  // (B, NHl, T, hd)
  at::Tensor out = o.view({B, T, n_heads, hd}).transpose(1, 2);     // (B, NHl, T, hd)
  at::Tensor dq, dk, dv;                                            // (B, NHl, T, hd) each
  switch (pick_kernel(qkv, hd)) {
    case AttentionKernel::kCpuFlash:
      std::tie(dq, dk, dv) = at::_scaled_dot_product_flash_attention_for_cpu_backward(
          dout, q, k, v, out, lse, /*dropout_p=*/0.0, /*is_causal=*/true);
      break;
    case AttentionKernel::kCudaFlash: {
      // Dense (not varlen): no cumulative sequence lengths; without dropout the philox state
      // is never read.
      at::Tensor none_long = at::empty({}, at::TensorOptions().dtype(at::kLong));
      std::tie(dq, dk, dv) = at::_scaled_dot_product_flash_attention_backward(
          dout, q, k, v, out, lse, /*cum_seq_q=*/at::Tensor(), /*cum_seq_k=*/at::Tensor(),
          /*max_q=*/T, /*max_k=*/T, /*dropout_p=*/0.0, /*is_causal=*/true, none_long, none_long);
      break;
    }
    case AttentionKernel::kCudaEfficient: {
      at::Tensor none_long = at::empty({}, at::TensorOptions().dtype(at::kLong));
      auto r = at::_scaled_dot_product_efficient_attention_backward(
          dout, q, k, v, /*attn_bias=*/at::Tensor(), out, lse, none_long, none_long,
          /*dropout_p=*/0.0, /*grad_input_mask=*/{true, true, true, false}, /*is_causal=*/true);
      dq = std::get<0>(r);
      dk = std::get<1>(r);
      dv = std::get<2>(r);
      break;
    }
    case AttentionKernel::kExplicit: {
      // The probabilities again from q, k and the saved log-sum-exp (what the fused kernels
      // do tile by tile), then the softmax backward in one kernel with float accumulation.
      const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
      at::Tensor probs = causal_scores(q, k, scale).sub_(lse.unsqueeze(-1)).exp_();
      at::Tensor dprobs = at::matmul(dout, v.transpose(-2, -1)).to(probs.scalar_type());
      dv = at::matmul(probs.to(qkv.scalar_type()).transpose(-2, -1), dout);
      at::Tensor dscores = at::_softmax_backward_data(dprobs, probs, -1, probs.scalar_type())
                               .mul_(scale)
                               .to(qkv.scalar_type());
      dq = at::matmul(dscores, k);
      dk = at::matmul(dscores.transpose(-2, -1), q);
      break;
    }
  }
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
