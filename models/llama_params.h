// The parameters of the Llama model: names, full shapes, TP splits and initialisation. Shared
// by LlamaChunk, checkpoints and the test reference.
//
// Note [Llama parameter layout]
// Linear weights are stored (out, in) and applied as y = x W^T; there are no biases. With
// hd = C/NH and NKV key/value heads (Megatron-style TP):
//   layers.l.ln1.w         (C)             replicated   RMSNorm before attention
//   layers.l.attn.q.w      (NH*hd, C)      shard_dim 0  column-parallel: rows of head j are
//                                                       [j*hd, (j+1)*hd)
//   layers.l.attn.kv.w     (2, NKV*hd, C)  shard_dim 1  column-parallel (K = [0], V = [1]) when
//                                          or -1        NKV >= tp; replicated when NKV < tp
//                                                       (Note [Llama key/value heads], llama.h)
//   layers.l.attn.o.w      (C, NH*hd)      shard_dim 1  row-parallel
//   layers.l.ln2.w         (C)             replicated   RMSNorm before the MLP
//   layers.l.mlp.gate_up.w (2, H, C)       shard_dim 1  column-parallel (gate = [0], up = [1])
//   layers.l.mlp.down.w    (C, H)          shard_dim 1  row-parallel
//   wte (V, C), ln_f.w (C), lm_head.w (V, C)  replicated; no lm_head.w when tie_embeddings
// Query head j uses key/value head j / (NH/NKV) (Hugging Face's repeat_kv order). Rotary
// embeddings rotate the halves of each head (Hugging Face's rotate_half), so a Llama checkpoint
// maps onto these tensors by stacking k_proj/v_proj and gate_proj/up_proj. The embeddings and
// the head are replicated over TP as in the GPT (Note [GPT parameter layout]).
//
// Every tensor is initialised as the FULL tensor from its own generator seeded by
// (LlamaConfig::seed, name) (gpt_init_full), then sliced for the TP rank: TP = 1 and TP = t are
// the same model. Weights and the embedding N(0, init_std); the residual projections attn.o.w
// and mlp.down.w N(0, init_std / sqrt(2 L)); RMSNorm weights 1. Weight decay applies to the
// weights and the embedding only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "models/gpt_params.h"
#include "models/llama_config.h"

namespace stp::models {

// Whether tp ranks split the key/value heads (n_kv_heads >= tp) rather than replicate them.
bool llama_kv_split(const LlamaConfig& cfg, int tp_size);

// The specs of one layer's parameters, in the order LlamaChunk stores them, for tp_size ranks
// (only attn.kv.w's shard_dim depends on it).
std::vector<ParamSpec> llama_layer_param_specs(const LlamaConfig& cfg, std::int64_t layer,
                                               int tp_size = 1);
// Every parameter of the full model: wte, the layers in order, ln_f, lm_head (untied only).
// REQUIRES: cfg.validate() passed.
std::vector<ParamSpec> llama_param_specs(const LlamaConfig& cfg, int tp_size = 1);

// The full tensor of `spec`, on CPU, in float64 when cfg.dtype is float64 and float32
// otherwise. Deterministic in (cfg.seed, spec.name).
at::Tensor llama_init_full(const LlamaConfig& cfg, const ParamSpec& spec);

}  // namespace stp::models
