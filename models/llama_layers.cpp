// The layer code of LlamaChunk: each forward unit as a flat list of ATen calls, its backward in
// mirrored order, and the weight gradients, against the named fields of Note [Llama units]
// (llama.h). Dimensions: llama_config.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/zeros.h>

#include "models/gpt_ops.h"
#include "models/llama.h"
#include "models/llama_ops.h"

namespace stp::models {
at::Tensor LlamaChunk::kv_weight(std::int64_t l) const {
  const at::Tensor& w = value(layer(l).kv_w);  // (2, NKVl*hd, C) split, (2, NKV*hd, C) replicated
  if (kv_split_) return w.flatten(0, 1);       // (2*NKVl*hd, C)
  const std::int64_t hd = cfg_.head_dim();
  return w.narrow(1, kv_head_first_ * hd, hd).reshape({2 * hd, cfg_.d_model});  // (2*hd, C)
}

// ---- forward -------------------------------------------------------------------------------

at::Tensor LlamaChunk::embed_forward(const at::Tensor& tokens, engine::ActivationSet& s) const {
  const std::int64_t B = tokens.size(0), T = tokens.size(1), C = cfg_.d_model;
  at::Tensor x = value(wte_)
                     .index_select(0, tokens.reshape({-1}))  // (B*T, C)
                     .view({B, T, C});                       // (B, T, C)
  s.put("emb.tokens", tokens);                               // (B, T) int64
  return x;
}

at::Tensor LlamaChunk::attn_forward(std::int64_t l, const at::Tensor& x,
                                    engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  const std::int64_t NHl = heads_local_, NKVl = kv_heads_local_, hd = cfg_.head_dim();
  at::Tensor y = norm_forward(ln1(l), x, s);                     // (B, T, C)
  at::Tensor q = ops::linear(y, value(p.q_w), at::Tensor());     // (B, T, NHl*hd)
  at::Tensor kv = ops::linear(y, kv_weight(l), at::Tensor());    // (B, T, 2*NKVl*hd)
  at::Tensor qkv = at::cat({ops::rotary_apply(q, rotary_, NHl),  // (B, T, (NHl+2*NKVl)*hd)
                            ops::rotary_apply(kv.narrow(2, 0, NKVl * hd), rotary_, NKVl),
                            kv.narrow(2, NKVl * hd, NKVl * hd)},
                           2);
  ops::AttentionOut a = ops::gqa_attention_forward(qkv, NHl, NKVl);
  s.put(layer_field(l, "attn.qkv"), qkv);           // (B, T, (NHl+2*NKVl)*hd) rotated q, k
  s.put(layer_field(l, "attn.lse"), a.lse);         // (B, NHl, T')
  s.put(layer_field(l, "attn.o"), a.o);             // (B, T, NHl*hd)
  return row_parallel_residual(a.o, p.o_w, -1, x);  // all-reduce: x + attn(x)
}

at::Tensor LlamaChunk::mlp_forward(std::int64_t l, const at::Tensor& x,
                                   engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  at::Tensor y = norm_forward(ln2(l), x, s);                                       // (B, T, C)
  at::Tensor gu = ops::linear(y, value(p.gate_up_w).flatten(0, 1), at::Tensor());  // (B,T,2*Hl)
  at::Tensor h = ops::swiglu_forward(gu);                                          // (B, T, Hl)
  s.put(layer_field(l, "mlp.gu"), gu);                                             // (B,T,2*Hl)
  return row_parallel_residual(h, p.down_w, -1, x);  // all-reduce: x + mlp(x)
}

// ---- activation gradient (mirrored) ----------------------------------------------------------

at::Tensor LlamaChunk::mlp_backward(std::int64_t l, const at::Tensor& dres,
                                    engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  s.put(layer_field(l, "mlp.dout"), dres);                                     // (B, T, C)
  at::Tensor dh = ops::linear_backward_input(dres, value(p.down_w));           // (B, T, Hl)
  at::Tensor dgu = ops::swiglu_backward(dh, s.get(layer_field(l, "mlp.gu")));  // (B, T, 2*Hl)
  s.put(layer_field(l, "mlp.dgu"), dgu);                                       // (B, T, 2*Hl)
  return ops::linear_backward_input(dgu, value(p.gate_up_w).flatten(0, 1));    // (B,T,C) partial
}

at::Tensor LlamaChunk::attn_backward(std::int64_t l, const at::Tensor& dres,
                                     engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  const std::int64_t NHl = heads_local_, NKVl = kv_heads_local_, hd = cfg_.head_dim();
  const std::int64_t B = dres.size(0), T = dres.size(1), C = cfg_.d_model;
  s.put(layer_field(l, "attn.dout"), dres);                         // (B, T, C)
  at::Tensor d_o = ops::linear_backward_input(dres, value(p.o_w));  // (B, T, NHl*hd)
  at::Tensor drot = ops::gqa_attention_backward(
      d_o, s.get(layer_field(l, "attn.qkv")), s.get(layer_field(l, "attn.o")),
      s.get(layer_field(l, "attn.lse")), NHl, NKVl);  // rotated q, k; v
  s.erase(layer_field(l, "attn.qkv"));
  s.erase(layer_field(l, "attn.lse"));
  at::Tensor dq = ops::rotary_apply(drot.narrow(2, 0, NHl * hd), rotary_, NHl, /*inverse=*/true);
  at::Tensor dkv = at::cat({ops::rotary_apply(drot.narrow(2, NHl * hd, NKVl * hd), rotary_, NKVl,
                                              /*inverse=*/true),
                            drot.narrow(2, (NHl + NKVl) * hd, NKVl * hd)},
                           2);                                  // (B, T, 2*NKVl*hd)
  s.put(layer_field(l, "attn.dq"), dq);                         // (B, T, NHl*hd)
  at::Tensor dy = ops::linear_backward_input(dq, value(p.q_w))  // (B, T, C) partial
                      .add_(ops::linear_backward_input(dkv, kv_weight(l)));
  if (kv_split_) {
    s.put(layer_field(l, "attn.dkv"), dkv);  // (B, T, 2*NKVl*hd), this rank's heads: complete
    return dy;
  }
  // Note [Llama key/value heads]: the key/value gradient of every head travels with dy.
  const std::int64_t NKV = cfg_.kv_heads(), BTC = B * T * C;
  at::Tensor buf = at::zeros({BTC + B * T * 2 * NKV * hd}, dy.options());
  buf.narrow(0, 0, BTC).view({B, T, C}).copy_(dy);
  buf.narrow(0, BTC, B * T * 2 * NKV * hd)
      .view({B, T, 2, NKV, hd})
      .narrow(3, kv_head_first_, 1)
      .copy_(dkv.view({B, T, 2, 1, hd}));
  return buf;  // all-reduce: [ln1-output gradient | dkv of every head]
}

at::Tensor LlamaChunk::attn_reduced(std::int64_t l, const at::Tensor& returned,
                                    engine::ActivationSet& s) const {
  if (kv_split_) return returned;  // (B, T, C)
  const at::Tensor& xhat = s.get(layer_field(l, "ln1.xhat"));
  const std::int64_t B = xhat.size(0), T = xhat.size(1), C = cfg_.d_model;
  const std::int64_t BTC = B * T * C, nkv = 2 * cfg_.kv_heads() * cfg_.head_dim();
  s.put(layer_field(l, "attn.dkv"), returned.narrow(0, BTC, B * T * nkv).view({B, T, nkv}));
  return returned.narrow(0, 0, BTC).view({B, T, C});  // (B, T, C)
}

// ---- weight gradients ------------------------------------------------------------------------

void LlamaChunk::mlp_weight_grad(std::int64_t l, engine::ActivationSet& s) {
  const LayerParams& p = layer(l);
  const at::Tensor& gu = s.get(layer_field(l, "mlp.gu"));
  ops::linear_weight_grad_(s.get(layer_field(l, "mlp.dout")), ops::swiglu_forward(gu),
                           grad(p.down_w), at::Tensor());
  at::Tensor y = norm_output(ln2(l), s);  // (B, T, C) gate/up input
  ops::linear_weight_grad_(s.get(layer_field(l, "mlp.dgu")), y, grad(p.gate_up_w).flatten(0, 1),
                           at::Tensor());
  s.erase(layer_field(l, "mlp.dout"));
  s.erase(layer_field(l, "mlp.gu"));
  s.erase(layer_field(l, "mlp.dgu"));
}

void LlamaChunk::attn_weight_grad(std::int64_t l, engine::ActivationSet& s) {
  const LayerParams& p = layer(l);
  ops::linear_weight_grad_(s.get(layer_field(l, "attn.dout")), s.get(layer_field(l, "attn.o")),
                           grad(p.o_w), at::Tensor());
  at::Tensor y = norm_output(ln1(l), s);  // (B, T, C) q input
  ops::linear_weight_grad_(s.get(layer_field(l, "attn.dq")), y, grad(p.q_w), at::Tensor());
  s.erase(layer_field(l, "attn.dout"));
  s.erase(layer_field(l, "attn.o"));
  s.erase(layer_field(l, "attn.dq"));
}

// The key/value projection: its local shard, or (replicated) the whole weight from the
// all-reduced gradient of every head (Note [Llama key/value heads]).
void LlamaChunk::attn_reduced_weight_grad(std::int64_t l, engine::ActivationSet& s) {
  at::Tensor y = norm_output(ln1(l), s);  // (B, T, C) key/value input
  ops::linear_weight_grad_(s.get(layer_field(l, "attn.dkv")), y, grad(layer(l).kv_w).flatten(0, 1),
                           at::Tensor());
  s.erase(layer_field(l, "attn.dkv"));
}

void LlamaChunk::embed_weight_grad(engine::ActivationSet& s) {
  const at::Tensor& tokens = s.get("emb.tokens");                // (B, T)
  at::Tensor dx = s.get("emb.dx").to(grad(wte_).scalar_type());  // (B, T, C)
  grad(wte_).index_add_(0, tokens.reshape({-1}), dx.reshape({-1, cfg_.d_model}));
  s.erase("emb.tokens");
  s.erase("emb.dx");
}

}  // namespace stp::models
