// The layer code of GptChunk: each forward unit as a flat list of ATen calls, its backward in
// mirrored order, and the weight gradients, against the named fields of Note [GPT units]
// (gpt.h). Dimensions: gpt_config.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/matmul.h>

#include "models/gpt.h"
#include "models/gpt_ops.h"

namespace stp::models {
namespace {

// "layers.<l>.<name>": the activation field of layer l.
std::string field(std::int64_t l, const char* name) {
  return "layers." + std::to_string(l) + "." + name;
}

}  // namespace

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
  at::Tensor y = layernorm_forward(ln1(l), x, s);                // (B, T, C)
  at::Tensor qkv = ops::linear(y, value(p.qkv_w).flatten(0, 1),  // (3*Cl, C)
                               value(p.qkv_b).flatten());        // (B, T, 3*Cl)
  ops::AttentionOut a = ops::attention_forward(qkv, heads_local_);
  s.put(field(l, "attn.qkv"), qkv);                       // (B, T, 3*Cl)
  s.put(field(l, "attn.lse"), a.lse);                     // (B, NHl, T)
  s.put(field(l, "attn.o"), a.o);                         // (B, T, Cl)
  at::Tensor out = at::matmul(a.o, value(p.proj_w).t());  // (B, T, C) partial sum
  if (tp_rank_ == 0) out.add_(x).add_(value(p.proj_b));   // residual + bias, once
  return out;                                             // all-reduce: x + attn(x)
}

at::Tensor GptChunk::mlp_forward(std::int64_t l, const at::Tensor& x,
                                 engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  at::Tensor y = layernorm_forward(ln2(l), x, s);                   // (B, T, C)
  at::Tensor pre = ops::linear(y, value(p.fc1_w), value(p.fc1_b));  // (B, T, Hl)
  at::Tensor act = ops::gelu_forward(pre);                          // (B, T, Hl)
  s.put(field(l, "mlp.pre"), pre);                                  // (B, T, Hl)
  s.put(field(l, "mlp.gelu"), act);                                 // (B, T, Hl)
  at::Tensor out = at::matmul(act, value(p.fc2_w).t());             // (B, T, C) partial sum
  if (tp_rank_ == 0) out.add_(x).add_(value(p.fc2_b));              // residual + bias, once
  return out;                                                       // all-reduce: x + mlp(x)
}

void GptChunk::head_forward(const at::Tensor& x, const at::Tensor& targets,
                            engine::ActivationSet& s) const {
  at::Tensor y = layernorm_forward(ln_f(), x, s);         // (B, T, C)
  at::Tensor logits = at::matmul(y, value(head_w_).t());  // (B, T, V)
  ops::CrossEntropyOut ce = ops::cross_entropy_forward(logits, targets);
  s.put("targets", targets);      // (B, T) int64
  s.put("loss", ce.loss);         // ()
  s.put("head.probs", ce.probs);  // (B, T, V)
}

// LayerNorm of x with ln's weights; keeps ln.xhat (B, T, C) and ln.rstd (B, T, 1) for the backward.
at::Tensor GptChunk::layernorm_forward(const LayerNormRef& ln, const at::Tensor& x,
                                       engine::ActivationSet& s) const {
  ops::LayerNormOut n = ops::layernorm_forward(x, value(ln.w), value(ln.b), cfg_.ln_eps);
  s.put(ln.field + ".xhat", n.xhat);  // (B, T, C)
  s.put(ln.field + ".rstd", n.rstd);  // (B, T, 1)
  return n.y;                         // (B, T, C)
}

// ---- activation gradient (mirrored) ----------------------------------------------------------

at::Tensor GptChunk::head_backward(engine::ActivationSet& s) const {
  at::Tensor probs = s.get("head.probs");
  at::Tensor dlogits = ops::cross_entropy_backward_(probs, s.get("targets"), loss_scale_)
                           .to(cfg_.dtype);  // (B, T, V)
  s.erase("head.probs");
  s.erase("targets");
  s.erase("loss");
  s.put("head.dlogits", dlogits);                                       // (B, T, V)
  at::Tensor dy = ops::linear_backward_input(dlogits, value(head_w_));  // (B, T, C) at ln_f out
  return layernorm_backward(ln_f(), dy, s);                             // (B, T, C) residual grad
}

at::Tensor GptChunk::mlp_backward(std::int64_t l, const at::Tensor& dres,
                                  engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  s.put(field(l, "mlp.dout"), dres);                                       // (B, T, C)
  at::Tensor dact = ops::linear_backward_input(dres, value(p.fc2_w));      // (B, T, Hl)
  at::Tensor dpre = ops::gelu_backward(dact, s.get(field(l, "mlp.pre")));  // (B, T, Hl)
  s.erase(field(l, "mlp.pre"));
  s.put(field(l, "mlp.dpre"), dpre);                        // (B, T, Hl)
  return ops::linear_backward_input(dpre, value(p.fc1_w));  // (B, T, C) partial sum
}

at::Tensor GptChunk::attn_backward(std::int64_t l, const at::Tensor& dres,
                                   engine::ActivationSet& s) const {
  const LayerParams& p = layer(l);
  s.put(field(l, "attn.dout"), dres);                                  // (B, T, C)
  at::Tensor d_o = ops::linear_backward_input(dres, value(p.proj_w));  // (B, T, Cl)
  at::Tensor dqkv =
      ops::attention_backward(d_o, s.get(field(l, "attn.qkv")), s.get(field(l, "attn.o")),
                              s.get(field(l, "attn.lse")), heads_local_);
  s.erase(field(l, "attn.qkv"));
  s.erase(field(l, "attn.lse"));
  s.put(field(l, "attn.dqkv"), dqkv);                                     // (B, T, 3*Cl)
  return ops::linear_backward_input(dqkv, value(p.qkv_w).flatten(0, 1));  // (B, T, C) partial
}

at::Tensor GptChunk::layernorm_backward(const LayerNormRef& ln, const at::Tensor& dy,
                                        engine::ActivationSet& s) const {
  at::Tensor dx = ops::layernorm_backward(dy, s.get(ln.field + ".xhat"), s.get(ln.field + ".rstd"),
                                          value(ln.w));  // (B, T, C)
  s.erase(ln.field + ".rstd");
  s.put(ln.field + ".dy", dy);  // (B, T, C) full sum
  return dx;
}

// ---- weight gradients ------------------------------------------------------------------------

// ln's output again, from the kept ln.xhat: the input of the linear layer after it.
at::Tensor GptChunk::layernorm_output(const LayerNormRef& ln, engine::ActivationSet& s) const {
  return ops::layernorm_apply(s.get(ln.field + ".xhat"), value(ln.w), value(ln.b));  // (B, T, C)
}

void GptChunk::head_weight_grad(engine::ActivationSet& s) {
  at::Tensor y = layernorm_output(ln_f(), s);  // (B, T, C) head input
  ops::linear_weight_grad_(s.get("head.dlogits"), y, grad(head_w_), at::Tensor());
  s.erase("head.dlogits");
  layernorm_weight_grad(ln_f(), s);
}

void GptChunk::mlp_weight_grad(std::int64_t l, engine::ActivationSet& s) {
  const LayerParams& p = layer(l);
  ops::linear_weight_grad_(s.get(field(l, "mlp.dout")), s.get(field(l, "mlp.gelu")), grad(p.fc2_w),
                           grad(p.fc2_b));
  at::Tensor y = layernorm_output(ln2(l), s);  // (B, T, C) fc1 input
  ops::linear_weight_grad_(s.get(field(l, "mlp.dpre")), y, grad(p.fc1_w), grad(p.fc1_b));
  s.erase(field(l, "mlp.dout"));
  s.erase(field(l, "mlp.gelu"));
  s.erase(field(l, "mlp.dpre"));
}

void GptChunk::attn_weight_grad(std::int64_t l, engine::ActivationSet& s) {
  const LayerParams& p = layer(l);
  ops::linear_weight_grad_(s.get(field(l, "attn.dout")), s.get(field(l, "attn.o")), grad(p.proj_w),
                           grad(p.proj_b));
  at::Tensor y = layernorm_output(ln1(l), s);  // (B, T, C) qkv input
  ops::linear_weight_grad_(s.get(field(l, "attn.dqkv")), y, grad(p.qkv_w).flatten(0, 1),
                           grad(p.qkv_b).flatten());
  s.erase(field(l, "attn.dout"));
  s.erase(field(l, "attn.o"));
  s.erase(field(l, "attn.dqkv"));
}

void GptChunk::layernorm_weight_grad(const LayerNormRef& ln, engine::ActivationSet& s) {
  ops::layernorm_weight_grad_(s.get(ln.field + ".dy"), s.get(ln.field + ".xhat"), grad(ln.w),
                              grad(ln.b));
  s.erase(ln.field + ".dy");
  s.erase(ln.field + ".xhat");
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
