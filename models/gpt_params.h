// The parameters of the GPT model: names, full shapes, how each is split over TP ranks, and
// the deterministic initialisation. Shared by GptChunk, checkpoints and the test reference.
//
// Note [GPT parameter layout]
// Linear weights are stored (out, in) and applied as y = x W^T + b. Megatron-style TP:
//   layers.l.attn.qkv.w   (3, C, C)  shard_dim 1   column-parallel; row block j of Q, K and V
//   layers.l.attn.qkv.b   (3, C)     shard_dim 1   is head j / hd, so a rank's contiguous
//                                                   slice holds whole heads of Q, K and V
//   layers.l.attn.proj.w  (C, C)     shard_dim 1   row-parallel (input columns = local heads)
//   layers.l.attn.proj.b  (C)        replicated
//   layers.l.mlp.fc1.w    (H, C)     shard_dim 0   column-parallel
//   layers.l.mlp.fc1.b    (H)        shard_dim 0
//   layers.l.mlp.fc2.w    (C, H)     shard_dim 1   row-parallel
//   layers.l.mlp.fc2.b    (C)        replicated
//   layers.l.ln1.{w,b}, layers.l.ln2.{w,b}, ln_f.{w,b}  (C)  replicated
//   wte (V, C), wpe (T, C), lm_head.w (V, C)           replicated, untied
// The embeddings and the LM head are replicated on every TP rank rather than vocabulary-
// parallel: they then need no collective of their own (the head's input is already the full
// all-reduced residual), and their gradients are computed from identical inputs on every TP
// rank, so they are identical there (the optimizer counts them once in the grad norm). The
// cost is V*C memory and head FLOPs repeated on each TP rank. The head is not tied to wte:
// the two live on different pipeline stages.
//
// Every tensor is initialised as the FULL tensor from its own generator seeded by
// (GptConfig::seed, name), then sliced for the TP rank, so a TP=1 model and a TP=t model are
// the same model. Init (GPT-2): weights and embeddings N(0, init_std), the residual
// projections attn.proj.w and mlp.fc2.w N(0, init_std / sqrt(2 L)), biases 0, LayerNorm
// weights 1 and biases 0. Weight decay applies to the weights and embeddings only.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "models/gpt_config.h"

namespace stp::models {

enum class ParamInit { kNormal, kNormalResidual, kZeros, kOnes };

struct ParamSpec {
  std::string name;
  std::vector<std::int64_t> full_shape;  // unsharded
  int shard_dim = -1;                    // split over TP ranks, -1 replicated
  bool decay = true;
  ParamInit init = ParamInit::kNormal;
};

// The specs of one layer's parameters, in the order GptChunk stores them.
std::vector<ParamSpec> gpt_layer_param_specs(const GptConfig& cfg, std::int64_t layer);
// Every parameter of the full model: wte, wpe, the layers in order, ln_f, lm_head.
// REQUIRES: cfg.validate() passed.
std::vector<ParamSpec> gpt_param_specs(const GptConfig& cfg);

// The full tensor of `spec`, on CPU, in float64 when cfg.dtype is float64 and float32
// otherwise (cast it to cfg.dtype yourself). Deterministic in (cfg.seed, spec.name).
at::Tensor gpt_init_full(const GptConfig& cfg, const ParamSpec& spec);

// The TP rank's contiguous slice of `full` along shard_dim (the whole tensor when
// shard_dim < 0). REQUIRES: full.size(shard_dim) divisible by tp_size.
at::Tensor shard_of(const at::Tensor& full, int shard_dim, int tp_rank, int tp_size);

}  // namespace stp::models
