#include "models/llama_ops.h"

// Narrow per-operator headers, as gpt_ops.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/outer.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>

#include "common/check.h"

namespace stp::models::ops {

// ---- RMSNorm -------------------------------------------------------------------------------

RmsNormOut rmsnorm_forward(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xa = x.to(acc_dtype(x.scalar_type()));                            // (..., C)
  at::Tensor rstd = xa.mul(xa).mean(-1, /*keepdim=*/true).add_(eps).rsqrt_();  // (..., 1)
  RmsNormOut out;
  out.xhat = xa.mul(rstd).to(x.scalar_type());  // (..., C)
  out.rstd = rstd;
  out.y = rmsnorm_apply(out.xhat, w);  // (..., C)
  return out;
}

at::Tensor rmsnorm_apply(const at::Tensor& xhat, const at::Tensor& w) { return xhat.mul(w); }

at::Tensor rmsnorm_backward(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& rstd,
                            const at::Tensor& w) {
  const at::ScalarType acc = rstd.scalar_type();
  at::Tensor xh = xhat.to(acc);                                           // (..., C)
  at::Tensor dxhat = dy.to(acc).mul(w.to(acc));                           // (..., C)
  at::Tensor mean_dxhat_xhat = dxhat.mul(xh).mean(-1, /*keepdim=*/true);  // (..., 1)
  at::Tensor dx = dxhat.sub_(xh.mul(mean_dxhat_xhat)).mul_(rstd);         // (..., C)
  return dx.to(dy.scalar_type());
}

void rmsnorm_weight_grad_(const at::Tensor& dy, const at::Tensor& xhat, const at::Tensor& dw) {
  const std::int64_t C = dy.size(-1);
  at::Tensor dy2 = dy.reshape({-1, C});    // (N, C)
  at::Tensor xh2 = xhat.reshape({-1, C});  // (N, C)
  dw.add_(dy2.mul(xh2).sum(0, /*keepdim=*/false, dw.scalar_type()));
}

// ---- Rotary --------------------------------------------------------------------------------

RotaryTable rotary_table(std::int64_t max_len, std::int64_t head_dim, double theta,
                         at::ScalarType dtype, at::Device device) {
  STP_ASSERT(head_dim % 2 == 0 && max_len >= 1 && theta > 0, "head_dim=", head_dim,
             " max_len=", max_len, " theta=", theta);
  auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor i = at::arange(0, head_dim / 2, f64);                                // (hd/2)
  at::Tensor freq = at::pow(theta, i.mul(-2.0 / static_cast<double>(head_dim)));  // (hd/2)
  at::Tensor angle = at::outer(at::arange(0, max_len, f64), freq);                // (Tmax, hd/2)
  const at::ScalarType acc = acc_dtype(dtype);
  return {angle.cos().to(device, acc), angle.sin().to(device, acc)};
}

at::Tensor rotary_apply(const at::Tensor& x, const RotaryTable& table, std::int64_t n_heads,
                        bool inverse) {
  const std::int64_t B = x.size(0), T = x.size(1), hd = x.size(2) / n_heads, half = hd / 2;
  const at::ScalarType acc = table.cos.scalar_type();
  at::Tensor xa = x.to(acc).view({B, T, n_heads, hd});                     // (B, T, n, hd)
  at::Tensor x1 = xa.narrow(-1, 0, half), x2 = xa.narrow(-1, half, half);  // (B, T, n, hd/2)
  at::Tensor cos = table.cos.narrow(0, 0, T).unsqueeze(1);                 // (T, 1, hd/2)
  at::Tensor sin = table.sin.narrow(0, 0, T).unsqueeze(1);                 // (T, 1, hd/2)
  if (inverse) sin = sin.neg();
  at::Tensor out = at::cat({x1.mul(cos).sub_(x2.mul(sin)), x2.mul(cos).add_(x1.mul(sin))},
                           -1);                               // (B, T, n, hd)
  return out.view({B, T, n_heads * hd}).to(x.scalar_type());  // (B, T, n*hd)
}

// ---- SwiGLU --------------------------------------------------------------------------------

at::Tensor swiglu_forward(const at::Tensor& gu) {
  const std::int64_t Hl = gu.size(-1) / 2;
  return at::silu(gu.narrow(-1, 0, Hl)).mul_(gu.narrow(-1, Hl, Hl));  // (B, T, Hl)
}

at::Tensor swiglu_backward(const at::Tensor& dh, const at::Tensor& gu) {
  const std::int64_t Hl = gu.size(-1) / 2;
  at::Tensor gate = gu.narrow(-1, 0, Hl), up = gu.narrow(-1, Hl, Hl);  // (B, T, Hl) each
  at::Tensor s = at::sigmoid(gate);                                    // (B, T, Hl)
  at::Tensor silu = gate.mul(s);                                       // (B, T, Hl)
  // silu'(g) = s + g s (1 - s) = s + silu (1 - s)
  at::Tensor dsilu = s.add(silu.mul(s.neg().add_(1.0)));       // (B, T, Hl)
  return at::cat({dh.mul(up).mul_(dsilu), dh.mul(silu)}, -1);  // (B, T, 2*Hl)
}

// ---- Grouped-query attention ---------------------------------------------------------------

namespace {

// The (B, T, 3*NHl*hd) qkv of attention_forward: q, then k and v with each key/value head
// repeated for the G query heads it serves. qkv itself when G = 1.
at::Tensor repeat_kv(const at::Tensor& qkv, std::int64_t nh, std::int64_t nkv) {
  if (nh == nkv) return qkv;
  const std::int64_t B = qkv.size(0), T = qkv.size(1), hd = qkv.size(2) / (nh + 2 * nkv);
  const std::int64_t G = nh / nkv;
  auto repeated = [&](std::int64_t offset) {
    return qkv.narrow(2, offset, nkv * hd)
        .view({B, T, nkv, 1, hd})
        .expand({B, T, nkv, G, hd})
        .reshape({B, T, nh * hd});  // (B, T, NHl*hd): head j reads kv head j / G
  };
  return at::cat({qkv.narrow(2, 0, nh * hd), repeated(nh * hd), repeated((nh + nkv) * hd)}, 2);
}

}  // namespace

AttentionOut gqa_attention_forward(const at::Tensor& qkv, std::int64_t n_heads,
                                   std::int64_t n_kv_heads) {
  STP_ASSERT(n_heads % n_kv_heads == 0, "NHl=", n_heads, " NKVl=", n_kv_heads);
  return attention_forward(repeat_kv(qkv, n_heads, n_kv_heads), n_heads);
}

at::Tensor gqa_attention_backward(const at::Tensor& d_o, const at::Tensor& qkv, const at::Tensor& o,
                                  const at::Tensor& lse, std::int64_t n_heads,
                                  std::int64_t n_kv_heads) {
  at::Tensor d = attention_backward(d_o, repeat_kv(qkv, n_heads, n_kv_heads), o, lse, n_heads);
  if (n_heads == n_kv_heads) return d;  // (B, T, 3*NHl*hd)
  const std::int64_t B = qkv.size(0), T = qkv.size(1),
                     hd = qkv.size(2) / (n_heads + 2 * n_kv_heads);
  const std::int64_t G = n_heads / n_kv_heads;
  auto summed = [&](std::int64_t part) {  // the repeated heads' gradients summed per group
    return d.narrow(2, part * n_heads * hd, n_heads * hd)
        .view({B, T, n_kv_heads, G, hd})
        .sum(3)
        .view({B, T, n_kv_heads * hd});
  };
  return at::cat({d.narrow(2, 0, n_heads * hd), summed(1), summed(2)}, 2);  // (B,T,(NHl+2NKVl)*hd)
}

}  // namespace stp::models::ops
