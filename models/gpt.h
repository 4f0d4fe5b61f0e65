// GptChunk: one pipeline stage of a GPT decoder on one tensor-parallel rank, implementing Chunk
// (chunk.h) with forward, activation-gradient and weight-gradient passes written out explicitly
// with ATen ops (no autograd). Parameter names, shapes and TP splits: Note [GPT parameter
// layout] in gpt_params.h.
//
// Note [GPT units]
// A chunk holds layers [first, first + n) (stage_layers()); stage 0 also holds the embeddings,
// the last stage the final LayerNorm, the LM head and the loss. With l0 = first and
// l1 = first + n - 1, every pass has 2n units:
//
//   forward   k = 2i: attn-F(l0+i)   k = 2i+1: mlp-F(l0+i)       (embedding folded into unit 0
//                                                                 on stage 0; ln_f + head +
//                                                                 loss in finish() on the last)
//   backward  k = 2i: mlp-B(l1-i)    k = 2i+1: attn-B(l1-i)      (loss + head + ln_f backward
//                                                                 folded into unit 0 on the last)
//   weight    k = 2i: W(mlp l1-i)    k = 2i+1: W(attn l1-i)
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
//   W units return an undefined tensor: no collective.
// At tp = 1 the F and B units still return their tensor (the executor skips collectives on a
// group of size 1; summing over one rank is the identity), so the executor needs no special
// case and TP = 1 runs exactly the same code.
//
// W unit k computes the weight gradients of what B unit k propagated through: W(mlp l) does
// fc1 and fc2, plus the LayerNorm whose backward B unit k ran at its start (ln1 of layer l+1,
// or ln_f and the head for unit 0 on the last stage); W(attn l) does qkv, proj and ln2 of layer
// l. The W pass's finish() does what the B pass's finish() propagated through: ln1 of the first
// layer and, on stage 0, the embeddings. REQUIRES: the B pass's finish() ran before the W
// pass's finish() (in a fused backward: finish B, then finish W).
//
// Saved fields (ActivationSet, per layer l; "layers.l." prefix), who writes, who reads:
//   ln1.xhat (B,T,C) F -> B, W        ln1.rstd (B,T,1) F -> B     ln1.dy (B,T,C) B -> W
//   attn.qkv (B,T,3*Cl) F -> B        attn.lse (B,NHl,T) F -> B (Note [Fused attention])
//   attn.o (B,T,Cl) F -> B, W            attn.dout (B,T,C) B -> W     attn.dqkv (B,T,3*Cl) B -> W
//   ln2.xhat, ln2.rstd, ln2.dy        like ln1
//   mlp.pre (B,T,Hl) F -> B           mlp.gelu (B,T,Hl) F -> W
//   mlp.dout (B,T,C) B -> W           mlp.dpre (B,T,Hl) B -> W
// Stage 0: emb.tokens (B,T) F -> W, emb.dx (B,T,C) B -> W. Last stage: targets (B,T) F -> B,
// loss () F -> (read by loss(), dropped by B), ln_f.xhat/rstd/dy, head.probs (B,T,V) F -> B,
// head.dlogits (B,T,V) B -> W. Every reader that is the last one erases the field, so after B
// the set holds exactly what W needs and after W it is empty. LayerNorm outputs are not saved:
// the weight-gradient pass recomputes them from xhat (xhat * w + b).
//
// The set may keep references to the `input` and `grad_output` tensors given to forward() and
// backward(): the caller must not modify those in place while the set lives.
//
// Thread-safety: none; one thread (the rank's executor) uses a chunk and its passes. A pass
// keeps references to its chunk and set: both must outlive it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/chunk.h"
#include "models/gpt_config.h"

namespace stp::models {

class GptChunk final : public engine::Chunk {
 public:
  // Builds stage `stage` of `stages` on TP rank `tp_rank` of `tp_size`, parameters initialised
  // deterministically (Note [GPT parameter layout]) and placed on `device`, grads zeroed.
  // Throws std::invalid_argument for a bad config or layout (GptConfig::validate_layout) or
  // stage / tp_rank out of range.
  GptChunk(const GptConfig& cfg, int stage, int stages, int tp_rank, int tp_size,
           at::Device device = at::kCPU);

  int stage() const override { return stage_; }
  bool is_first_stage() const override { return stage_ == 0; }
  bool is_last_stage() const override { return stage_ == stages_ - 1; }

  std::unique_ptr<engine::Pass> forward(engine::ActivationSet& set, const engine::MicroBatch& mb,
                                        at::Tensor input) override;
  std::unique_ptr<engine::Pass> backward(engine::ActivationSet& set,
                                         at::Tensor grad_output) override;
  std::unique_ptr<engine::Pass> weight_grad(engine::ActivationSet& set) override;
  at::Tensor loss_tensor(const engine::ActivationSet& set) const override;
  std::vector<std::int64_t> input_shape(std::int64_t batch) const override;
  std::vector<engine::Param>& params() override { return params_; }

  // The factor the loss gradient is scaled by (1/m for m microbatches per step); default 1.
  // REQUIRES: finite and > 0.
  void set_loss_scale(double scale);
  double loss_scale() const { return loss_scale_; }

  const GptConfig& config() const { return cfg_; }
  int stages() const { return stages_; }
  int tp_rank() const { return tp_rank_; }
  int tp_size() const { return tp_size_; }
  LayerRange layers() const { return layers_; }
  // Units per pass: 2 per layer.
  int units() const { return static_cast<int>(2 * layers_.count); }
  // The parameter with this name; throws std::invalid_argument when the chunk has none.
  engine::Param& param(const std::string& name);

 private:
  friend class GptPass;
  friend class GptForwardPass;
  friend class GptBackwardPass;
  friend class GptWeightGradPass;

  // Parameter indices into params_ of one layer.
  struct LayerParams {
    int ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  // A LayerNorm: its activation-field prefix ("layers.3.ln2", "ln_f") and its parameters.
  struct LayerNormRef {
    std::string field;
    int w, b;
  };

  const at::Tensor& value(int i) const { return params_[i].value; }
  at::Tensor& grad(int i) { return params_[i].grad; }
  const LayerParams& layer(std::int64_t l) const { return layer_params_[l - layers_.first]; }
  LayerNormRef ln1(std::int64_t l) const;
  LayerNormRef ln2(std::int64_t l) const;
  LayerNormRef ln_f() const;

  // Layer code (gpt_layers.cpp): forward units, their mirrored backward, weight gradients.
  at::Tensor embed_forward(const at::Tensor& tokens, engine::ActivationSet& s) const;
  at::Tensor attn_forward(std::int64_t l, const at::Tensor& x, engine::ActivationSet& s) const;
  at::Tensor mlp_forward(std::int64_t l, const at::Tensor& x, engine::ActivationSet& s) const;
  void head_forward(const at::Tensor& x, const at::Tensor& targets, engine::ActivationSet& s) const;
  at::Tensor layernorm_forward(const LayerNormRef& ln, const at::Tensor& x,
                               engine::ActivationSet& s) const;

  at::Tensor head_backward(engine::ActivationSet& s) const;
  at::Tensor mlp_backward(std::int64_t l, const at::Tensor& dres, engine::ActivationSet& s) const;
  at::Tensor attn_backward(std::int64_t l, const at::Tensor& dres, engine::ActivationSet& s) const;
  at::Tensor layernorm_backward(const LayerNormRef& ln, const at::Tensor& dy,
                                engine::ActivationSet& s) const;

  at::Tensor layernorm_output(const LayerNormRef& ln, engine::ActivationSet& s) const;
  void head_weight_grad(engine::ActivationSet& s);
  void mlp_weight_grad(std::int64_t l, engine::ActivationSet& s);
  void attn_weight_grad(std::int64_t l, engine::ActivationSet& s);
  void layernorm_weight_grad(const LayerNormRef& ln, engine::ActivationSet& s);
  void embed_weight_grad(engine::ActivationSet& s);

  GptConfig cfg_;
  int stage_, stages_, tp_rank_, tp_size_;
  LayerRange layers_;
  std::int64_t heads_local_;  // NHl = NH / tp
  double loss_scale_ = 1.0;
  std::vector<engine::Param> params_;
  std::map<std::string, int> index_;  // name -> index into params_
  std::vector<LayerParams> layer_params_;
  int wte_ = -1, wpe_ = -1, lnf_w_ = -1, lnf_b_ = -1, head_w_ = -1;
};

// The GPT as a Trainer's model: builds the GptChunk of (stage, tp_rank) on `device`.
engine::ModelFactory gpt_model(const GptConfig& config, at::Device device = at::kCPU);

}  // namespace stp::models
