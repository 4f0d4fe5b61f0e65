// LlamaChunk: one pipeline stage of a Llama-family decoder on one tensor-parallel rank, a
// DecoderChunk (decoder_chunk.h) whose forward, activation-gradient and weight-gradient layer
// ops are written with ATen ops (no autograd). Parameters: Note [Llama parameter layout] in
// llama_params.h.
//
// Note [Llama units]
// The unit order, the norm and head fields and the pass contracts are Note [Decoder units]
// (decoder_chunk.h); the Llama's blocks, with RMSNorm as the norm:
//
// Collectives (what run(k) returns, summed in place over the TP group):
//   attn-F / mlp-F: the block's new residual stream (B, T, C): a partial sum of the
//     row-parallel projection (attn.o, mlp.down) to which TP rank 0 adds the residual input.
//   mlp-B: the gradient at the output of ln2 (B, T, C), a partial sum over the gate/up shards.
//   attn-B: the gradient at the output of ln1 (B, T, C), a partial sum over the query and
//     key/value shards; when key/value heads are replicated, also the key/value projection
//     gradient of every key/value head (Note [Llama key/value heads]), which attn_reduced()
//     takes apart.
//   The RMSNorm backward needs the full sum, so it opens the NEXT unit (or finish()).
//
// W(mlp l) does gate_up and down of layer l; W(attn l) does q and o of layer l. Each W unit
// k > 0 also does what B unit k ran at its start on the all-reduced gradient: the RMSNorm
// weight (ln2 of l before W(attn l); ln1 of l+1 before W(mlp l)) and, after an attn-B, the
// key/value weight of that layer (attn_reduced_weight_grad(): it needs the reduced gradient in
// the replicated case, and is computed at the same point in the split case so that both run
// one code path). W unit 0 on the last stage also does ln_f and the head. The W pass's
// finish() does the key/value weight and ln1 of the first layer and, on stage 0, the
// embedding. REQUIRES: the B pass's finish() ran first.
//
// Saved fields (ActivationSet, per layer l; "layers.l." prefix), who writes, who reads:
//   ln1.xhat (B,T,C) F -> B, W        ln1.rstd (B,T,1) F -> B        ln1.dy (B,T,C) B -> W
//   attn.qkv (B,T,(NHl+2*NKVl)*hd) F -> B: rotated q, rotated k, v (GQA saves only NKVl heads)
//   attn.lse (B,NHl,T') F -> B (Note [Fused attention])       attn.o (B,T,NHl*hd) F -> B, W
//   attn.dout (B,T,C) B -> W          attn.dq (B,T,NHl*hd) B -> W
//   attn.dkv (B,T,2*NKVl*hd) B -> W   (2*NKV*hd, all heads, when replicated)
//   ln2.xhat, ln2.rstd, ln2.dy        like ln1
//   mlp.gu (B,T,2*Hl) F -> B, W       mlp.dout (B,T,C) B -> W        mlp.dgu (B,T,2*Hl) B -> W
// Stage 0 and the last stage: as in Note [Decoder units], with ln_f an RMSNorm. RMSNorm
// outputs and the SwiGLU product are not saved: W recomputes them (xhat * w, silu(gate) * up).
//
// Note [Llama key/value heads]
// With NKV >= tp the key/value heads are split like the query heads (attn.kv.w shard_dim 1,
// NKVl = NKV/tp; tp divides NKV, so each rank's query heads find their key/value heads on the
// same rank) and nothing differs from the GPT. With NKV < tp (tp divisible by NKV) every rank
// holds all of attn.kv.w, replicated (shard_dim -1), and computes only the one key/value head
// its query heads use: head j = tp_rank * NKV / tp, shared by tp/NKV ranks. Each of those ranks
// back-propagates into that head only its own query heads' share, so the key/value projection
// gradient dkv is a partial sum over the ranks sharing the head, and the weight gradient
// dkv^T y would differ per rank. attn-B therefore returns one flat buffer
//   [ ln1-output gradient (B*T*C) | dkv of every key/value head (B*T*2*NKV*hd) ]
// in which each rank fills its own head's columns and zeros the rest, so the one all-reduce
// the unit starts anyway sums both (2*NKV*hd/C more bytes). Every rank then holds the complete
// dkv of all heads and computes the full weight gradient of attn.kv.w from it: the replicated
// parameter gets bitwise identical gradients on every TP rank, the same contract as every other
// replicated parameter, so the optimizer's grad norm counts it once (TP rank 0 only, Note
// [Optimizer and parallelism] in engine/optimizer.h). The input gradient needs no extra step:
// each rank adds dkv_own W_kv_own to its partial ln1-output gradient, and the sum over ranks is
// dkv W_kv by linearity.
//
// Tied embeddings (cfg.tie_embeddings): the head multiplies by wte and its gradient
// accumulates into wte's. Supported when one chunk holds both ends (stages = 1): with more
// stages the two copies would need a gradient all-reduce between the first and last stage,
// which the engine does not run; validate_layout() refuses it.
//
// Thread-safety: none; one thread (the rank's executor) uses a chunk and its passes. A pass
// keeps references to its chunk and set: both must outlive it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

#include "engine/chunk.h"
#include "models/decoder_chunk.h"
#include "models/llama_config.h"
#include "models/llama_ops.h"

namespace stp::models {

class LlamaChunk final : public DecoderChunk {
 public:
  // Builds stage `stage` of `stages` on TP rank `tp_rank` of `tp_size`, parameters initialised
  // deterministically (Note [Llama parameter layout]) on `device`, grads zeroed. Throws
  // std::invalid_argument for a bad config or layout (LlamaConfig::validate_layout) or stage /
  // tp_rank out of range.
  LlamaChunk(const LlamaConfig& cfg, int stage, int stages, int tp_rank, int tp_size,
             at::Device device = at::kCPU);

  const LlamaConfig& config() const { return cfg_; }
  // Key/value heads split over TP (else replicated: Note [Llama key/value heads]).
  bool kv_split() const { return kv_split_; }

 private:
  struct LayerParams {  // indices into params_ (the RMSNorms: ln1(), ln2())
    int q_w, kv_w, o_w, gate_up_w, down_w;
  };
  const LayerParams& layer(std::int64_t l) const { return layer_params_[l - layers_.first]; }
  // This rank's key/value projection weight (2*NKVl*hd, C): its shard, or its one head.
  at::Tensor kv_weight(std::int64_t l) const;

  // Layer code (llama_layers.cpp), Note [Llama units].
  at::Tensor embed_forward(const at::Tensor& tokens, engine::ActivationSet& s) const override;
  at::Tensor attn_forward(std::int64_t l, const at::Tensor& x,
                          engine::ActivationSet& s) const override;
  at::Tensor mlp_forward(std::int64_t l, const at::Tensor& x,
                         engine::ActivationSet& s) const override;
  at::Tensor mlp_backward(std::int64_t l, const at::Tensor& dres,
                          engine::ActivationSet& s) const override;
  at::Tensor attn_backward(std::int64_t l, const at::Tensor& dres,
                           engine::ActivationSet& s) const override;
  // What attn-B(l) returned, all-reduced: the ln1-output gradient (B, T, C); keeps the reduced
  // key/value gradient when it travelled with it (Note [Llama key/value heads]).
  at::Tensor attn_reduced(std::int64_t l, const at::Tensor& returned,
                          engine::ActivationSet& s) const override;
  void mlp_weight_grad(std::int64_t l, engine::ActivationSet& s) override;
  void attn_weight_grad(std::int64_t l, engine::ActivationSet& s) override;
  // The key/value projection's weight gradient (reads ln1.xhat).
  void attn_reduced_weight_grad(std::int64_t l, engine::ActivationSet& s) override;
  void embed_weight_grad(engine::ActivationSet& s) override;

  LlamaConfig cfg_;
  bool kv_split_;
  std::int64_t kv_heads_local_;  // NKVl = NKV / tp, or 1 when replicated
  std::int64_t kv_head_first_;   // the first key/value head this rank computes
  ops::RotaryTable rotary_;      // (seq_len, hd/2) cos and sin on the chunk's device
  std::vector<LayerParams> layer_params_;
  int wte_ = -1;
};

// The Llama as a Trainer's model: builds the LlamaChunk of (stage, tp_rank) on `device`.
// Throws std::invalid_argument for a bad config (LlamaConfig::validate).
engine::ModelFactory llama_model(const LlamaConfig& config, at::Device device = at::kCPU);

}  // namespace stp::models
