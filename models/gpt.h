// GptChunk: one pipeline stage of a GPT decoder on one tensor-parallel rank, a DecoderChunk
// (decoder_chunk.h) whose forward, activation-gradient and weight-gradient layer ops are written
// out explicitly with ATen ops (no autograd). Parameter names, shapes and TP splits: Note [GPT
// parameter layout] in gpt_params.h.
//
// Note [GPT units]
// The unit order, the norm and head fields and the pass contracts are Note [Decoder units]
// (decoder_chunk.h); the GPT's blocks, with LayerNorm as the norm:
//
// Collectives (what run(k) returns, to be summed over the TP group in place):
//   attn-F / mlp-F: the block's new residual stream (B, T, C). The row-parallel projection
//     (attn.proj, mlp.fc2) gives each rank a partial sum; TP rank 0 also adds the residual
//     input and the replicated bias, so the sum over ranks IS x + proj(...) + b: the residual
//     is folded into the unit and the next unit starts from the reduced tensor.
//   mlp-B / attn-B: the gradient at the output of the block's LayerNorm (B, T, C), a partial
//     sum of the column-parallel layer's (fc1, qkv) input gradients. The LayerNorm backward
//     needs the full sum, so it runs at the start of the NEXT unit (ln2 in attn-B of the same
//     layer, ln1 in mlp-B of the layer below) or in finish() (ln1 of the first layer).
//
// W(mlp l) does fc1 and fc2, plus the LayerNorm whose backward B unit k ran at its start (ln1
// of layer l+1, or ln_f and the head for unit 0 on the last stage); W(attn l) does qkv, proj
// and ln2 of layer l.
//
// Saved fields (ActivationSet, per layer l; "layers.l." prefix), who writes, who reads:
//   ln1.xhat (B,T,C) F -> B, W        ln1.rstd (B,T,1) F -> B     ln1.dy (B,T,C) B -> W
//   attn.qkv (B,T,3*Cl) F -> B        attn.lse (B,NHl,T) F -> B (Note [Fused attention])
//   attn.o (B,T,Cl) F -> B, W            attn.dout (B,T,C) B -> W     attn.dqkv (B,T,3*Cl) B -> W
//   ln2.xhat, ln2.rstd, ln2.dy        like ln1
//   mlp.pre (B,T,Hl) F -> B           mlp.gelu (B,T,Hl) F -> W
//   mlp.dout (B,T,C) B -> W           mlp.dpre (B,T,Hl) B -> W
// Stage 0 and the last stage: as in Note [Decoder units], with ln_f a LayerNorm. LayerNorm
// outputs are not saved: the weight-gradient pass recomputes them from xhat (xhat * w + b).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <vector>

#include "engine/chunk.h"
#include "models/decoder_chunk.h"
#include "models/gpt_config.h"

namespace stp::models {

class GptChunk final : public DecoderChunk {
 public:
  // Builds stage `stage` of `stages` on TP rank `tp_rank` of `tp_size`, parameters initialised
  // deterministically (Note [GPT parameter layout]) and placed on `device`, grads zeroed.
  // Throws std::invalid_argument for a bad config or layout (GptConfig::validate_layout) or
  // stage / tp_rank out of range.
  GptChunk(const GptConfig& cfg, int stage, int stages, int tp_rank, int tp_size,
           at::Device device = at::kCPU);

  const GptConfig& config() const { return cfg_; }

 private:
  // Parameter indices into params_ of one layer (the LayerNorms: ln1(), ln2()).
  struct LayerParams {
    int qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  const LayerParams& layer(std::int64_t l) const { return layer_params_[l - layers_.first]; }

  // Layer code (gpt_layers.cpp), Note [GPT units].
  at::Tensor embed_forward(const at::Tensor& tokens, engine::ActivationSet& s) const override;
  at::Tensor attn_forward(std::int64_t l, const at::Tensor& x,
                          engine::ActivationSet& s) const override;
  at::Tensor mlp_forward(std::int64_t l, const at::Tensor& x,
                         engine::ActivationSet& s) const override;
  at::Tensor mlp_backward(std::int64_t l, const at::Tensor& dres,
                          engine::ActivationSet& s) const override;
  at::Tensor attn_backward(std::int64_t l, const at::Tensor& dres,
                           engine::ActivationSet& s) const override;
  void mlp_weight_grad(std::int64_t l, engine::ActivationSet& s) override;
  void attn_weight_grad(std::int64_t l, engine::ActivationSet& s) override;
  void embed_weight_grad(engine::ActivationSet& s) override;

  GptConfig cfg_;
  std::vector<LayerParams> layer_params_;
  int wte_ = -1, wpe_ = -1;
};

// The GPT as a Trainer's model: builds the GptChunk of (stage, tp_rank) on `device`.
engine::ModelFactory gpt_model(const GptConfig& config, at::Device device = at::kCPU);

}  // namespace stp::models
