// DecoderChunk: what every decoder family's chunk shares (GptChunk, LlamaChunk): its place in
// the layout, its parameters, the norm (LayerNorm or RMSNorm), the LM head and loss, and the
// three passes that sequence its units. A family derives from it and supplies only its layer
// ops: the embedding and each block's forward, the mirrored backward and the weight gradients.
//
// Note [Decoder units]
// A chunk holds layers [first, first + n) (stage_layers()); stage 0 also holds the embeddings,
// the last stage the final norm ln_f, the LM head and the loss. With l0 = first and
// l1 = first + n - 1, every pass has 2n units:
//
//   forward   k = 2i: attn-F(l0+i)   k = 2i+1: mlp-F(l0+i)       (embedding folded into unit 0
//                                                                 on stage 0; ln_f + head +
//                                                                 loss in finish() on the last)
//   backward  k = 2i: mlp-B(l1-i)    k = 2i+1: attn-B(l1-i)      (loss + head + ln_f backward
//                                                                 folded into unit 0 on the last)
//   weight    k = 2i: W(mlp l1-i)    k = 2i+1: W(attn l1-i)
//
// What a unit runs, per pass (the layer ops, declared below in the same order):
//   F unit: attn_forward(l, x) / mlp_forward(l, x) take the residual stream x (what the previous
//     unit returned, summed over the TP group in place by the executor) and return the block's
//     new residual stream, a partial sum over TP ranks. A forward unit's saved fields are all
//     written by that one call, so re-running it recomputes them.
//   B unit: mlp_backward(l, dres) / attn_backward(l, dres) take the residual-stream gradient and
//     return a partial sum over TP ranks of the gradient at the output of the block's norm (ln2
//     for mlp-B, ln1 for attn-B). The norm backward needs the full sum, so it opens the NEXT
//     unit (or finish()): attn_reduced() unpacks what attn-B returned (a family may send more
//     than the norm-output gradient through the one all-reduce), then norm_backward() adds the
//     norm's input gradient to the residual gradient.
//   W unit k: the weight gradients of what B unit k propagated through: the norm B unit k
//     back-propagated through at its start (attn_reduced_weight_grad() first, for what
//     attn_reduced() kept), then mlp_weight_grad(l) / attn_weight_grad(l); unit 0 on the last
//     stage also head_weight_grad() (ln_f and the head). The W pass's finish() does what the
//     B pass's finish() propagated through: ln1 of the first layer and, on stage 0,
//     embed_weight_grad(). REQUIRES: the B pass's finish() ran before the W pass's finish()
//     (in a fused backward: finish B, then finish W).
//   W units return an undefined tensor: no collective.
// At tp = 1 the F and B units still return their tensor (the executor skips collectives on a
// group of size 1; summing over one rank is the identity), so TP = 1 runs exactly the same code.
//
// Norm fields ("layers.l.ln1", "layers.l.ln2", "ln_f" prefixes): norm_forward() saves .xhat
// (B,T,C) and .rstd (B,T,1); norm_backward() erases .rstd and saves .dy (B,T,C), the full-sum
// output gradient; norm_weight_grad() erases .dy and .xhat. Norm outputs are not saved:
// norm_output() recomputes them from .xhat for the weight gradient of the layer after the norm.
// Head fields (last stage): targets (B,T) F -> B, loss () F -> (read by loss_tensor(), dropped
// by B), head.probs (B,T,V) F -> B, head.dlogits (B,T,V) B -> W. Stage 0: emb.tokens (B,T)
// F -> W, emb.dx (B,T,C) B -> W. Every reader that is the last one erases the field, so after B
// the set holds exactly what W needs and after W it is empty (checked at the W pass's finish()).
//
// Recompute (Note [Recompute] in schedule/program.h; the set's recompute() at forward()): each
// forward unit saves its input, the residual stream x it received (after the executor's sum),
// as "layers.l.attn.in" / "layers.l.mlp.in" (B,T,C), runs as usual, then erases every field
// that call wrote (the names new after it, so any family's fields) except that input. Stage 0's
// embedding, folded into unit 0 before attn-F, keeps emb.tokens; the last stage's finish() keeps
// its head fields (targets, loss, head.probs, ln_f.*). So after F a recomputed set holds 2n
// inputs plus those. B unit k first opens as usual (head backward, the previous unit's norm
// backward), then re-runs forward unit 2n-1-k, mlp-F(l) before mlp-B(l) and attn-F(l) before
// attn-B(l), on its saved input (the output, a partial sum, is discarded: no collective),
// erases that input, and runs the layer op. The norm fields a B unit leaves for the next unit
// (ln2 for attn-B(l), ln1 for mlp-B(l-1) or finish()) come from the re-run before the B unit
// that precedes them, so from then on the set holds exactly what it would without recompute:
// after B what W needs, the same bits (same kernels on the same inputs).
//
// Partial recompute (Note [Partial sets]): with s.recompute_share() g < 1 only the leading
// r = ceil(g * n) layers of the chunk recompute (recomputes(s, l); both units of each, so a
// layer's norm fields come from its own units either way); the other n - r layers run as
// without recompute and keep their fields. Layers are alike, so the set after F holds the
// whole-recompute bytes plus (n - r) layers' kept fields: at most 1 - g * (1 - keep) of the set,
// keep being the whole-recompute share. The backward re-runs only the recomputing layers; the
// B units of the others find their fields as without recompute. g = 1 is the whole set.
//
// The set may keep references to the `input` and `grad_output` tensors given to forward() and
// backward(): the caller must not modify those in place while the set lives.
//
// Thread-safety: none; one thread (the rank's executor) uses a chunk and its passes. A pass
// keeps references to its chunk and set: both must outlive it.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/chunk.h"
#include "models/gpt_config.h"
#include "models/gpt_params.h"

namespace stp::models {

class DecoderChunk : public engine::Chunk {
 public:
  // The norm every block and ln_f use: LayerNorm (weight and bias) or RMSNorm (weight only).
  enum class NormKind { kLayerNorm, kRmsNorm };
  // What the base needs of the family's config: the residual width, the sequence length, the
  // layer and (query) head counts, the dtype and the norm.
  struct Shape {
    std::int64_t d_model, seq_len, n_layers, n_heads;
    at::ScalarType dtype;
    NormKind norm;
    double norm_eps;
  };

  int stage() const final { return stage_; }
  bool is_first_stage() const final { return stage_ == 0; }
  bool is_last_stage() const final { return stage_ == stages_ - 1; }

  std::unique_ptr<engine::Pass> forward(engine::ActivationSet& set, const engine::MicroBatch& mb,
                                        at::Tensor input) final;
  std::unique_ptr<engine::Pass> backward(engine::ActivationSet& set, at::Tensor grad_output) final;
  std::unique_ptr<engine::Pass> weight_grad(engine::ActivationSet& set) final;
  at::Tensor loss_tensor(const engine::ActivationSet& set) const final;
  std::vector<std::int64_t> input_shape(std::int64_t batch) const final;
  std::vector<engine::Param>& params() final { return params_; }

  // The factor the loss gradient is scaled by (1/m for m microbatches per step); default 1.
  // REQUIRES: finite and > 0.
  void set_loss_scale(double scale);
  double loss_scale() const { return loss_scale_; }

  int stages() const { return stages_; }
  int tp_rank() const { return tp_rank_; }
  int tp_size() const { return tp_size_; }
  LayerRange layers() const { return layers_; }
  // Units per pass: 2 per layer.
  int units() const { return static_cast<int>(2 * layers_.count); }
  // Partial recompute (Note [Decoder units]): how many of a chunk's `layers` layers, the
  // leading ones, a set with recompute share `share` re-runs: ceil(share * layers), at least 1.
  // Throws std::invalid_argument for a share outside (0, 1].
  static std::int64_t recomputed_layers(double share, std::int64_t layers);
  // Whether layer l (held by this chunk) of set s recomputes: s.recompute() and l is among the
  // leading recomputed_layers(s.recompute_share(), n) of the chunk's n layers.
  bool recomputes(const engine::ActivationSet& s, std::int64_t l) const;
  // The parameter with this name; throws std::invalid_argument when the chunk has none.
  engine::Param& param(const std::string& name);

 protected:
  // Checks stage and tp_rank (std::invalid_argument when out of range) and places the chunk;
  // the family's config checked its layout before (shape_of()).
  DecoderChunk(const Shape& shape, int stage, int stages, int tp_rank, int tp_size);
  // The family config's layout checked (ConfigT::validate_layout: throws
  // std::invalid_argument), then its Shape with this norm.
  template <class ConfigT>
  static Shape shape_of(const ConfigT& cfg, int stages, int tp_size, NormKind norm,
                        double norm_eps) {
    cfg.validate_layout(stages, tp_size);
    return {cfg.d_model, cfg.seq_len, cfg.n_layers, cfg.n_heads, cfg.dtype, norm, norm_eps};
  }

  // The parameters this chunk holds, picked in order from `model_specs` (every parameter of the
  // model): on the first stage the embeddings ("wte", "wpe" where there is one), the specs of
  // the layers it holds ("layers.l."), on the last stage every other one. Each full tensor
  // from `init_full`, sliced for this TP rank, placed on `device` in the model dtype, grads
  // zeroed (float32 for bfloat16 values, chunk.h: Param::grad). Then finds the norms and the
  // head by name: layers.l.ln1 / ln2 and ln_f (".w" and, where there is one, ".b"), and the
  // head "lm_head.w" or, absent (tied), "wte".
  void add_params(const std::vector<ParamSpec>& model_specs,
                  const std::function<at::Tensor(const ParamSpec&)>& init_full, at::Device device);
  // The index into params_ of a parameter the chunk holds (asserts).
  int index_of(const std::string& name) const;
  // index_of("layers.<l>.<name>").
  int layer_param(std::int64_t l, const std::string& name) const;
  const at::Tensor& value(int i) const { return params_[i].value; }
  at::Tensor& grad(int i) { return params_[i].grad; }

  // "layers.<l>.<name>": an activation field of layer l.
  static std::string layer_field(std::int64_t l, const char* name);
  // The row-parallel projection that closes a block: h W^T with W = params_[w] (each TP rank's
  // partial sum), to which TP rank 0 adds the residual x and the bias params_[b] (b < 0: none),
  // so the all-reduce of the result is x + h W^T + b. (B, T, C).
  at::Tensor row_parallel_residual(const at::Tensor& h, int w, int b, const at::Tensor& x) const;

  // A norm: its activation-field prefix ("layers.3.ln2", "ln_f") and its parameters (b = -1:
  // none, as for RMSNorm).
  struct NormRef {
    std::string field;
    int w, b;
  };
  const NormRef& ln1(std::int64_t l) const { return ln1_[l - layers_.first]; }
  const NormRef& ln2(std::int64_t l) const { return ln2_[l - layers_.first]; }
  const NormRef& ln_f() const { return ln_f_; }

  // ---- the family's layer ops (Note [Decoder units]) ----
  // Forward units.
  virtual at::Tensor embed_forward(const at::Tensor& tokens, engine::ActivationSet& s) const = 0;
  virtual at::Tensor attn_forward(std::int64_t l, const at::Tensor& x,
                                  engine::ActivationSet& s) const = 0;
  virtual at::Tensor mlp_forward(std::int64_t l, const at::Tensor& x,
                                 engine::ActivationSet& s) const = 0;
  // Backward units, and what opens the next one.
  virtual at::Tensor mlp_backward(std::int64_t l, const at::Tensor& dres,
                                  engine::ActivationSet& s) const = 0;
  virtual at::Tensor attn_backward(std::int64_t l, const at::Tensor& dres,
                                   engine::ActivationSet& s) const = 0;
  // What attn-B(l) returned, all-reduced: the ln1-output gradient (B, T, C). Default: as is.
  virtual at::Tensor attn_reduced(std::int64_t l, const at::Tensor& returned,
                                  engine::ActivationSet& s) const;
  // Weight gradients.
  virtual void mlp_weight_grad(std::int64_t l, engine::ActivationSet& s) = 0;
  virtual void attn_weight_grad(std::int64_t l, engine::ActivationSet& s) = 0;
  // The weights of what attn_reduced(l) kept, before ln1's weight gradient; default: none.
  virtual void attn_reduced_weight_grad(std::int64_t l, engine::ActivationSet& s);
  virtual void embed_weight_grad(engine::ActivationSet& s) = 0;
  // The norm (Shape::norm), the same code for every block and ln_f: forward saving n.xhat
  // (B,T,C) and n.rstd (B,T,1), backward (erases rstd, saves dy), the output again from xhat for
  // the weight gradient of the layer after it, its weight gradient (erases dy and xhat).
  at::Tensor norm_forward(const NormRef& n, const at::Tensor& x, engine::ActivationSet& s) const;
  at::Tensor norm_backward(const NormRef& n, const at::Tensor& dy, engine::ActivationSet& s) const;
  at::Tensor norm_output(const NormRef& n, engine::ActivationSet& s) const;
  void norm_weight_grad(const NormRef& n, engine::ActivationSet& s);

  // The head, the same for every family: ln_f, the bias-free LM head (params_[head_w_]) and
  // the cross-entropy loss.
  void head_forward(const at::Tensor& x, const at::Tensor& targets, engine::ActivationSet& s) const;
  at::Tensor head_backward(engine::ActivationSet& s) const;
  void head_weight_grad(engine::ActivationSet& s);

  int stage_, stages_, tp_rank_, tp_size_;
  LayerRange layers_;
  std::int64_t heads_local_;  // NHl = NH / tp
  double loss_scale_ = 1.0;
  std::vector<engine::Param> params_;
  int head_w_ = -1;  // the LM head's weight (V, C) on the last stage

 private:
  friend class DecoderPass;
  friend class DecoderForwardPass;
  friend class DecoderBackwardPass;
  friend class DecoderWeightGradPass;

  NormRef norm_ref(const std::string& field) const;
  // Recompute (Note [Decoder units]): the field holding forward unit attn-F(l) / mlp-F(l)'s
  // input; the unit run as usual; the unit run keeping only its input; the unit re-run from its
  // saved input (output discarded), which erases that input.
  static std::string unit_input_field(std::int64_t l, bool mlp);
  at::Tensor forward_unit(std::int64_t l, bool mlp, const at::Tensor& x,
                          engine::ActivationSet& s) const;
  at::Tensor forward_unit_keeping_input(std::int64_t l, bool mlp, const at::Tensor& x,
                                        engine::ActivationSet& s) const;
  void recompute_unit(std::int64_t l, bool mlp, engine::ActivationSet& s) const;

  Shape shape_;
  std::map<std::string, int> index_;  // name -> index into params_
  std::vector<NormRef> ln1_, ln2_;    // per layer held
  NormRef ln_f_{"ln_f", -1, -1};
};

// A family as a Trainer's model: checks the config (ConfigT::validate, std::invalid_argument),
// then builds the ChunkT of (stage, tp_rank) on `device`.
template <class ChunkT, class ConfigT>
engine::ModelFactory decoder_model(const ConfigT& config, at::Device device) {
  config.validate();
  return [config, device](int stage, int stages, int tp_rank, int tp_size) {
    return std::make_unique<ChunkT>(config, stage, stages, tp_rank, tp_size, device);
  };
}

}  // namespace stp::models
