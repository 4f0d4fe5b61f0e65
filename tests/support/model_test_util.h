// Test utilities for the GPT model, shared by the model and executor tests:
//   - an autograd REFERENCE of the full (unsharded, single-stage) model in float64, written
//     independently of the engine's explicit kernels (LayerNorm, GELU, cross-entropy by formula),
//     that gives the loss, every full parameter gradient by name, and the intermediate
//     residual-stream values and gradients;
//   - helpers to load one set of full parameters into sharded chunks and to gather sharded
//     gradients back into full tensors;
//   - a lock-step emulation of a TP group in one thread (run the TP ranks' units in turn and sum
//     the returned tensors over the ranks before the next unit), and an emulated TP x PP grid of
//     any decoder family's chunks.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <ostream>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "engine/chunk.h"
#include "models/decoder_chunk.h"
#include "models/gpt.h"
#include "models/gpt_config.h"
#include "models/gpt_params.h"

namespace stp::testing {

// A float64 config of any family with the sizes every family has; the rest its defaults.
template <class ConfigT>
ConfigT float64_config(std::int64_t vocab, std::int64_t seq, std::int64_t d, std::int64_t heads,
                       std::int64_t layers) {
  ConfigT c;
  std::tie(c.vocab, c.seq_len, c.d_model, c.n_heads, c.n_layers) =
      std::tuple(vocab, seq, d, heads, layers);
  c.dtype = at::kDouble;
  return c;
}

// A float64 GPT config of these sizes (mlp_hidden 0: 4 * d).
models::GptConfig make_config(std::int64_t vocab, std::int64_t seq, std::int64_t d,
                              std::int64_t heads, std::int64_t layers, std::int64_t hidden = 0);

using ParamMap = std::map<std::string, at::Tensor>;

// The full parameters exactly as GptChunk initialises them (CPU, float64 or float32).
ParamMap init_full_params(const models::GptConfig& cfg);
// Every full parameter drawn at random, deterministic in (seed, name), in float64 on CPU:
// weights N(0, 0.2), embeddings N(0, 0.5), biases N(0, 0.1), LayerNorm weights 1 + N(0, 0.2).
// Unlike the init (zero biases, unit LayerNorm weights) this leaves no gradient trivially
// unexercised.
ParamMap random_full_params(const models::GptConfig& cfg, std::uint64_t seed);
// Copies the TP shard of full[p.name] into every parameter of `chunk` (cast to its dtype).
void load_full_params(engine::Chunk& chunk, const ParamMap& full, int tp_rank, int tp_size);
// The full float64 gradients of the chunks of one stage, one per TP rank in rank order: sharded
// gradients concatenated along shard_dim, replicated ones taken from rank 0.
ParamMap gather_grads(const std::vector<engine::Chunk*>& tp_ranks);

// A microbatch of uniformly random tokens and targets in [0, vocab), deterministic in seed.
engine::MicroBatch random_microbatch(const models::GptConfig& cfg, std::int64_t batch,
                                     std::int64_t seq, std::uint64_t seed);

// The same for any family: only the vocabulary matters.
engine::MicroBatch random_microbatch_for(std::int64_t vocab, std::int64_t batch, std::int64_t seq,
                                         std::uint64_t seed);

// One forward + backward of the autograd reference over one microbatch.
struct ReferenceRun {
  at::Tensor loss;                         // () unscaled mean cross-entropy
  ParamMap grads;                          // d(loss_scale * loss)/dparam, full, by name
  std::vector<at::Tensor> residuals;       // 2L+1 of (B, T, C): embedding, after attn(0),
                                           // after mlp(0), ..., after mlp(L-1)
  std::vector<at::Tensor> residual_grads;  // the gradients of the residuals
  ParamMap ln_out_grads;                   // "layers.l.ln1", "layers.l.ln2", "ln_f" -> (B,T,C)
                                           // gradient at the LayerNorm's output
};
// REQUIRES: `full` holds every parameter of gpt_param_specs(cfg).
ReferenceRun run_reference(const models::GptConfig& cfg, const ParamMap& full,
                           const engine::MicroBatch& mb, double loss_scale = 1.0);

// A training step's reference over m microbatches, each loss scaled by 1/m.
struct ReferenceStep {
  double loss = 0;             // mean over microbatches
  std::vector<double> losses;  // per microbatch
  ParamMap grads;              // gradient of the mean loss
};
ReferenceStep reference_step(const models::GptConfig& cfg, const ParamMap& full,
                             const std::vector<engine::MicroBatch>& mbs);
// Pieces of any family's reference: its parameters (every one of `specs`, from `full`) as
// float64 autograd leaves; `t` appended to run.residuals with its gradient retained.
ParamMap reference_leaves(const std::vector<models::ParamSpec>& specs, const ParamMap& full);
at::Tensor keep_residual(ReferenceRun& run, at::Tensor t);
// The step of any family's reference: run_one(mb, 1/m) for each microbatch, gradients summed.
ReferenceStep reference_step_of(
    const std::vector<engine::MicroBatch>& mbs,
    const std::function<ReferenceRun(const engine::MicroBatch&, double)>& run_one);
// The end of any family's reference from its logits: the mean cross-entropy against `targets`,
// backward of loss_scale * loss, then into `run` the loss, the gradients of `leaves`, of
// run.residuals (detached) and of the norm outputs `norm_outputs` (retain_grad() tensors).
void finish_reference(ReferenceRun& run, const at::Tensor& logits, const at::Tensor& targets,
                      double loss_scale, const ParamMap& leaves, const ParamMap& norm_outputs);

// The emulated all-reduce: replaces every tensor with the sum over all of them. All defined
// or all undefined (checked).
void all_reduce_emulated(const std::vector<at::Tensor>& per_rank);
// Runs passes[r] of every TP rank unit by unit in lock step, summing what the units return
// over the ranks before the next unit; then finish() on each.
void run_lockstep(const std::vector<engine::Pass*>& passes);
// A backward with W fused, as the executor runs it: for each unit k, B unit k on every rank,
// then W unit k on every rank BEFORE the all-reduce of B unit k completes, then the
// all-reduce; finally finish() B, then finish() W.
void run_lockstep_fused(const std::vector<engine::Pass*>& b, const std::vector<engine::Pass*>& w);

// ||a - b|| / ||b|| in float64; 0 when both are zero, infinity when only b is.
double rel_error(const at::Tensor& a, const at::Tensor& b);

// A stages x tp grid of decoder chunks (any family) driven in one thread: stage by stage, TP
// ranks in lock step. EmulatedGrid below gives it its chunk type.
class DecoderGrid {
 public:
  using Factory = std::function<std::unique_ptr<models::DecoderChunk>(int stage, int stages,
                                                                      int tp_rank, int tp_size)>;
  DecoderGrid(const Factory& make, int stages, int tp);
  void load(const ParamMap& full);
  void zero_grad();
  // Forward, backward and weight gradient of one microbatch through every stage; returns the
  // unscaled loss. fused_w: W fused into B (run_lockstep_fused) rather than deferred.
  double train_microbatch(const engine::MicroBatch& mb, double loss_scale, bool fused_w = false);
  // Full gradients by name, gathered over TP and merged over stages.
  ParamMap full_grads();
  int stages() const { return static_cast<int>(chunks_.size()); }
  int tp() const { return static_cast<int>(chunks_[0].size()); }
  models::DecoderChunk& decoder(int stage, int tp_rank) { return *chunks_[stage][tp_rank]; }

 protected:
  std::vector<std::vector<std::unique_ptr<models::DecoderChunk>>> chunks_;  // [stage][tp_rank]
};

// The grid of one family's chunks, built from its config on `device`.
template <class ChunkT, class ConfigT>
class EmulatedGrid : public DecoderGrid {
 public:
  EmulatedGrid(const ConfigT& cfg, int stages, int tp, at::Device device = at::kCPU)
      : DecoderGrid(
            [&cfg, device](int s, int n, int r, int t) {
              return std::make_unique<ChunkT>(cfg, s, n, r, t, device);
            },
            stages, tp) {}
  ChunkT& chunk(int stage, int tp_rank) { return static_cast<ChunkT&>(*chunks_[stage][tp_rank]); }
};

// The GPT's grid.
using EmulatedModel = EmulatedGrid<models::GptChunk, models::GptConfig>;

// A tensor-parallel test case: the TP degree and the sizes it splits (kv_heads: Llama only).
struct TpCase {
  int tp;
  std::int64_t vocab, d, heads, kv_heads, hidden;
};
inline void PrintTo(const TpCase& t, std::ostream* os) {
  *os << "tp=" << t.tp << " V=" << t.vocab << " C=" << t.d << " NH=" << t.heads
      << " NKV=" << t.kv_heads << " H=" << t.hidden;
}

// ---- whole-model checks shared by the model families' tests -------------------------------

// Every parameter's gradient within tol of the reference, and the names match exactly. A zero
// reference gradient must be exactly zero too, and is allowed only for names in `zero`.
void expect_grads_near(const ParamMap& got, const ParamMap& want, double tol,
                       const std::set<std::string>& zero = {});
// `one` and `other`, two layouts of one model, loaded with `full` train `mb` (loss scale 1) to
// losses within `tol` (relative) and full gradients within `tol` of `one`'s.
void expect_layouts_agree(DecoderGrid& one, DecoderGrid& other, const ParamMap& full,
                          const engine::MicroBatch& mb, double tol);
// The same names and bitwise equal gradients.
void expect_grads_equal(const ParamMap& got, const ParamMap& want);
// Replicated parameters (shard_dim < 0) of `m`'s first stage have bitwise identical gradients
// on every TP rank (the optimizer counts them once in the grad norm).
void expect_replicated_grads_identical(DecoderGrid& m);
// `m` (a bfloat16 model loaded with the float64 reference's parameters) trains `mb` to within
// 3 % of the reference loss and 0.1 relative error of every gradient, keeping bfloat16 values
// and float32 gradients.
void expect_bf16_close(DecoderGrid& m, const engine::MicroBatch& mb, const ReferenceRun& ref);
// The messages of the config fields every family shares (models::validate_decoder_fields):
// with(edit) is the error of validating a good config after edit(config) on it.
template <class With>
void expect_shared_field_errors(With with) {
  EXPECT_EQ(with([](auto& x) { x.vocab = 0; }), "vocab=0 must be >= 1");
  EXPECT_EQ(with([](auto& x) { x.seq_len = 0; }), "seq_len=0 must be >= 1");
  EXPECT_EQ(with([](auto& x) { x.d_model = 0; }), "d_model=0 must be >= 1");
  EXPECT_EQ(with([](auto& x) { x.n_heads = 0; }), "n_heads=0 must be >= 1");
  EXPECT_EQ(with([](auto& x) { x.n_layers = 0; }), "n_layers=0 must be >= 1");
}

// The bfloat16 check of a family: `cfg` (float64) with random_params(cfg, 3), a (2, seq_len)
// microbatch and reference(cfg, full, mb, 1.0) as the float64 truth, then expect_bf16_close of
// a 2 x 2 grid of Grid built from cfg in bfloat16.
template <class Grid, class ConfigT, class RandomParams, class Reference>
void expect_bf16_family_close(ConfigT cfg, RandomParams random_params, Reference reference) {
  ParamMap full = random_params(cfg, 3);
  engine::MicroBatch mb = random_microbatch_for(cfg.vocab, 2, cfg.seq_len, 2);
  ReferenceRun ref = reference(cfg, full, mb, 1.0);
  cfg.dtype = at::kBFloat16;
  Grid m(cfg, 2, 2);
  m.load(full);
  expect_bf16_close(m, mb, ref);
}
// `m` has one layer per stage and tp 1: each stage's output and input gradient are within `tol`
// of the reference's residual stream and its gradient; the last stage has no output and the
// first no input gradient.
void expect_stage_boundaries_match(DecoderGrid& m, const engine::MicroBatch& mb,
                                   const ReferenceRun& ref, double tol);
// A float64 copy of t that requires grad: an autograd leaf for the kernel tests.
at::Tensor leaf(at::Tensor t);

// ---- unit-level checks shared by the model families' unit tests -----------------------------

// "layers.<l>.<rest>": a layer's parameter or activation-field name.
std::string layer_key(std::int64_t l, const char* rest);

// Per-rank passes of one stage, owned.
struct RankPasses {
  std::vector<std::unique_ptr<engine::Pass>> own;
  std::vector<engine::Pass*> ptrs;
  void add(std::unique_ptr<engine::Pass> p) {
    ptrs.push_back(p.get());
    own.push_back(std::move(p));
  }
};

// Runs unit k on every rank, all-reduces, returns rank 0's reduced tensor.
at::Tensor run_unit(const std::vector<engine::Pass*>& ranks, int k);

// The names of a set's fields.
std::set<std::string> field_names(const engine::ActivationSet& s);

// The forward of `m`'s one stage on every TP rank into sets[r] (loss scaled by loss_scale):
// `units` units, unit k's all-reduced result within `tol` of ref.residuals[k + 1] (the residual
// stream after attention / MLP of layer k/2), then every rank's loss within `tol` of ref's.
void expect_forward_units_match(DecoderGrid& m, std::vector<engine::ActivationSet>& sets,
                                const engine::MicroBatch& mb, const ReferenceRun& ref,
                                double loss_scale, int units, double tol);

// The B and W passes of a stage, not yet run.
struct StagePasses {
  std::unique_ptr<engine::Pass> b, w;
};
// `mid` holds layers 2 and 3 (6 layers over 3 stages, tp 1; width C, T = 5, float64): its
// passes' sizes and unit names, the forward refusing a unit out of order and then run (output
// (1, 5, C)); returns its backward (from a gradient of ones) and weight-gradient passes.
StagePasses expect_mid_stage_unit_names(models::DecoderChunk& mid, engine::ActivationSet& set,
                                        std::int64_t C);

// Runs the W passes of `m`'s one stage on every TP rank's set (sets[r], after its B pass) unit
// by unit, then finish(): after W unit k (k == covers.size() - 1: finish()) the full gradients
// named in covers[0..k] are within `tol` of ref_grads and every other one is still zero; W units
// start no collective; in the end covers named every gradient of ref_grads and every set is
// empty.
void expect_w_units_cover(DecoderGrid& m, std::vector<engine::ActivationSet>& sets,
                          const std::vector<std::vector<std::string>>& covers,
                          const ParamMap& ref_grads, double tol);

}  // namespace stp::testing
