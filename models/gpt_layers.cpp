// The layer code of GptChunk: each forward unit as a flat list of ATen calls, its backward in
// mirrored order, and the weight gradients, against the named fields of Note [GPT units]
// (gpt.h). Dimensions: gpt_config.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/matmul.h>

#include "models/gpt.h"
#include "models/gpt_ops.h"

namespace stp::models {
// ---- forward -------------------------------------------------------------------------------

at::Tensor GptChunk::embed_forward(const at::Tensor& tokens, engine::ActivationSet& s) const {
  const std::int64_t B = tokens.size(0), T = tokens.size(1), C = cfg_.d_model;
  at::Tensor x = value(wte_)
                     .index_select(0, tokens.reshape({-1}))  // (B*T, C)
                     .view({B, T, C})                        // (B, T, C)
                     .add_(value(wpe_).narrow(0, 0, T));     // + (T, C) positions
  s.put("emb.tokens", tokens);                               // (B, T) int64
  return x;
}

at::Tensor GptChunk::attn_forward(std::int64_t l, const at::Tensor& x,
                                  engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  at::Tensor y = norm_forward(ln1(l), x, s);                     // (B, T, C)
  at::Tensor qkv = ops::linear(y, value(p.qkv_w).flatten(0, 1),  // (3*Cl, C)
                               value(p.qkv_b).flatten());        // (B, T, 3*Cl)
  ops::AttentionOut a = ops::attention_forward(qkv, heads_local_);
  s.put(layer_field(l, "attn.qkv"), qkv);                    // (B, T, 3*Cl)
  s.put(layer_field(l, "attn.lse"), a.lse);                  // (B, NHl, T)
  s.put(layer_field(l, "attn.o"), a.o);                      // (B, T, Cl)
  return row_parallel_residual(a.o, p.proj_w, p.proj_b, x);  // all-reduce: x + attn(x)
}

at::Tensor GptChunk::mlp_forward(std::int64_t l, const at::Tensor& x,
                                 engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  at::Tensor y = norm_forward(ln2(l), x, s);                        // (B, T, C)
  at::Tensor pre = ops::linear(y, value(p.fc1_w), value(p.fc1_b));  // (B, T, Hl)
  at::Tensor act = ops::gelu_forward(pre);                          // (B, T, Hl)
  s.put(layer_field(l, "mlp.pre"), pre);                            // (B, T, Hl)
  s.put(layer_field(l, "mlp.gelu"), act);                           // (B, T, Hl)
  return row_parallel_residual(act, p.fc2_w, p.fc2_b, x);           // all-reduce: x + mlp(x)
}

// ---- activation gradient (mirrored) ----------------------------------------------------------

at::Tensor GptChunk::mlp_backward(std::int64_t l, const at::Tensor& dres,
                                  engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  s.put(layer_field(l, "mlp.dout"), dres);                                       // (B, T, C)
  at::Tensor dact = ops::linear_backward_input(dres, value(p.fc2_w));            // (B, T, Hl)
  at::Tensor dpre = ops::gelu_backward(dact, s.get(layer_field(l, "mlp.pre")));  // (B, T, Hl)
  s.erase(layer_field(l, "mlp.pre"));
  s.put(layer_field(l, "mlp.dpre"), dpre);                  // (B, T, Hl)
  return ops::linear_backward_input(dpre, value(p.fc1_w));  // (B, T, C) partial sum
}

at::Tensor GptChunk::attn_backward(std::int64_t l, const at::Tensor& dres,
                                   engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  s.put(layer_field(l, "attn.dout"), dres);                            // (B, T, C)
  at::Tensor d_o = ops::linear_backward_input(dres, value(p.proj_w));  // (B, T, Cl)
  at::Tensor dqkv = ops::attention_backward(d_o, s.get(layer_field(l, "attn.qkv")),
                                            s.get(layer_field(l, "attn.o")),
                                            s.get(layer_field(l, "attn.lse")), heads_local_);
  s.erase(layer_field(l, "attn.qkv"));
  s.erase(layer_field(l, "attn.lse"));
  s.put(layer_field(l, "attn.dqkv"), dqkv);                               // (B, T, 3*Cl)
  return ops::linear_backward_input(dqkv, value(p.qkv_w).flatten(0, 1));  // (B, T, C) partial
}

// ---- weight gradients ------------------------------------------------------------------------

void GptChunk::mlp_weight_grad(std::int64_t l, engine::ActivationSet& s) {
  const LayerParams& p = layer(l);
  ops::linear_weight_grad_(s.get(layer_field(l, "mlp.dout")), s.get(layer_field(l, "mlp.gelu")),
                           grad(p.fc2_w), grad(p.fc2_b));
  at::Tensor y = norm_output(ln2(l), s);  // (B, T, C) fc1 input
  ops::linear_weight_grad_(s.get(layer_field(l, "mlp.dpre")), y, grad(p.fc1_w), grad(p.fc1_b));
  s.erase(layer_field(l, "mlp.dout"));
  s.erase(layer_field(l, "mlp.gelu"));
  s.erase(layer_field(l, "mlp.dpre"));
}

void GptChunk::attn_weight_grad(std::int64_t l, engine::ActivationSet& s) {
  const LayerParams& p = layer(l);
  ops::linear_weight_grad_(s.get(layer_field(l, "attn.dout")), s.get(layer_field(l, "attn.o")),
                           grad(p.proj_w), grad(p.proj_b));
  at::Tensor y = norm_output(ln1(l), s);  // (B, T, C) qkv input
  ops::linear_weight_grad_(s.get(layer_field(l, "attn.dqkv")), y, grad(p.qkv_w).flatten(0, 1),
                           grad(p.qkv_b).flatten());
  s.erase(layer_field(l, "attn.dout"));
  s.erase(layer_field(l, "attn.o"));
  s.erase(layer_field(l, "attn.dqkv"));
}

void GptChunk::embed_weight_grad(engine::ActivationSet& s) {
  const at::Tensor& tokens = s.get("emb.tokens");  // (B, T)
  const std::int64_t T = tokens.size(1), C = cfg_.d_model;
  at::Tensor dx = s.get("emb.dx").to(grad(wte_).scalar_type());  // (B, T, C)
  grad(wte_).index_add_(0, tokens.reshape({-1}), dx.reshape({-1, C}));
  grad(wpe_).narrow(0, 0, T).add_(dx.sum(0));  // (T, C)
  s.erase("emb.tokens");
  s.erase("emb.dx");
}

}  // namespace stp::models
