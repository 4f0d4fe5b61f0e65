// Resharding: a checkpoint saved in one layout (tp x pp x dp, schedule, chunks) read into another.
//
// Note [Resharding]
// Every tensor of a checkpoint is named globally ("param/layers.3.attn.q.w",
// "optim/layers.3.attn.q.w.exp_avg", "optim/step"), so where it lives in the old layout is read
// from the shard headers, not computed: a Resharder maps the DP-rank-0 shard files of the
// checkpoint (all DP replicas hold the same state) and indexes each name by the TP rank that
// holds it. The model section of the manifest gives every parameter's shard dimension at the
// old and at the new TP size (models::gpt_param_specs, llama_param_specs: a Llama's key/value
// weight is split over TP when n_kv_heads >= tp and replicated otherwise); optimizer states
// share their parameter's, optim/step is replicated. read() then builds a TP rank's slice in
// the new layout from zero-copy views of the mapped files: with the same shard dimension it
// narrows only the old shards that overlap the new slice (so a rank touches only the pages it
// needs), otherwise it assembles the full tensor along the old dimension and slices it. Stacked
// tensors ((3, C, C) q/k/v, (2, H, C) gate/up) are sharded along dimension 1, inside the stack,
// so concatenating along it keeps each part whole. Which pipeline rank holds a parameter in the
// new layout is decided by its schedule kind and chunks (held_param_names; Note [Chunks in the
// layout] in checkpoint.h) and the one placement rule the new run's chunks are built by (Note
// [Parameter placement] in models/placement.h).
//
// Integrity: a shard's checksum covers the whole file, so it can only be verified by reading
// it. Before a run reshards, its ranks share the verification: rank r of the new world checks
// the old DP-0 shards i with i % world == r (verify_reshard_sources), and the run goes on only
// when every rank's check passed; the slices are then read without re-hashing.
//
// The data position (DataLoader::position_json) is per DP rank: with the same dp it is taken as
// is, with another dp reshard_data_position() continues at the same global sample position.
//
// Thread-safety: a Resharder is immutable after construction; read() may run on any thread.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "checkpoint/safetensors.h"
#include "models/gpt_config.h"
#include "models/gpt_params.h"
#include "models/llama_config.h"

namespace stp::data {
class MappedFile;
}

namespace stp::checkpoint {

// The model a manifest's model section describes (`where` names it in messages): its shape,
// dtype and, for a Llama, n_kv_heads, rope_theta, rms_eps (absent: 1e-5) and tie_embeddings.
// Throws std::invalid_argument naming a missing or bad field.
models::GptConfig gpt_config_of(const nlohmann::json& model, const std::string& where);
models::LlamaConfig llama_config_of(const nlohmann::json& model, const std::string& where);

// The parameters of the model a manifest's model section describes (model.arch gpt or llama),
// with their shard dimensions at `tp`. Throws std::invalid_argument naming the field that is
// missing or bad (`where` prefixes the message).
std::vector<models::ParamSpec> model_param_specs(const nlohmann::json& model, int tp,
                                                 const std::string& where);

// The old DP-0 shards rank `rank` of a `world`-rank run verifies (size and checksum) before
// resharding: those with index % world == rank (Note [Resharding]). Throws
// std::invalid_argument for a missing, truncated or corrupt one.
void verify_reshard_sources(const std::string& checkpoint, const Manifest& manifest, int rank,
                            int world);

class Resharder {
 public:
  // Maps the DP-rank-0 shards of `checkpoint` and reads their headers (not their data, and
  // not their checksums: verify_reshard_sources). Throws std::invalid_argument for a shard
  // whose header is bad or a tensor a TP rank lacks.
  Resharder(const std::string& checkpoint, const Manifest& manifest);

  // The tensors `names` as TP rank `tp_rank` of `tp` holds them in a new layout (CPU,
  // contiguous, the stored dtype). Throws std::invalid_argument naming a tensor the checkpoint
  // lacks, or a dimension the new tp does not divide.
  TensorMap read(const std::vector<std::string>& names, int tp_rank, int tp) const;
  // The full (unsharded) tensor `name`.
  at::Tensor full(const std::string& name) const;

  // The tensor names that rank of a new layout needs which holds the parameters `params`:
  // param/<p>, each optim/<p>.<state> the checkpoint has (exp_avg, exp_avg_sq, master), and
  // optim/step.
  std::vector<std::string> names_for(const std::vector<std::string>& params) const;

  const Manifest& manifest() const { return manifest_; }
  int files_mapped() const { return static_cast<int>(files_.size()); }

 private:
  struct Part {  // one old TP rank's shard of a tensor
    int file = -1;
    SafetensorsEntry entry;
  };
  at::Tensor view(const Part& part) const;
  // Every parameter's shard dimension at `tp` (-1: replicated).
  std::map<std::string, int> shard_dims(int tp) const;
  // Tensor `name`'s (an optimizer state's is its parameter's; optim/step's -1).
  int shard_dim(const std::map<std::string, int>& dims, const std::string& name) const;

  std::string checkpoint_;
  Manifest manifest_;
  std::vector<std::shared_ptr<const data::MappedFile>> files_;
  std::vector<std::uint64_t> data_start_;             // per file
  std::map<std::string, std::vector<Part>> tensors_;  // name -> by old TP rank
};

// The parameter names pipeline rank `pp_rank` holds when the model of `specs` (n_layers layers)
// runs in `layout`: the parameters of the stages its schedule kind and chunks place on the rank
// (schedule::Program::stage_rank), each stage's by models::stage_params (Note [Parameter
// placement] in models/placement.h, the rule the chunks are built by).
std::vector<std::string> held_param_names(const std::vector<models::ParamSpec>& specs,
                                          std::int64_t n_layers, const CheckpointLayout& layout,
                                          int pp_rank);

// A loader position saved with dp_size d for a run with `dp` ranks and `num_windows` windows
// (DataLoader::num_windows): unchanged when d == dp; otherwise the rows every rank consumed in
// the epoch, index * d, start the new ranks' epoch at index * d / dp (rounded down: up to dp-1
// windows of the old run's last step are read again), the next epoch when that is past its end.
nlohmann::json reshard_data_position(const nlohmann::json& saved, int dp, std::int64_t num_windows);

struct ReshardOptions {
  // The new layout (world = dp * pp * tp); its chunks (0: the kind's default) must be ones the
  // schedule kind takes (>= 2 for 1f1b-i, the kind's own for the others).
  CheckpointLayout layout;
};
struct ReshardResult {
  std::string out;           // the checkpoint written
  std::int64_t step = 0;     // its step
  int files_read = 0;        // old shards mapped
  std::int64_t tensors = 0;  // written, over all ranks
};
// Writes the checkpoint `checkpoint` (any layout) as the checkpoint folder `out` in
// options.layout: every rank's shard, then a manifest with fresh checksums (the same model,
// data position and extra, its schedule section updated; the layout's chunks resolved),
// published atomically as CheckpointWriter does. A run in that layout resumes from it with
// --resume-from `out`.
ReshardResult reshard_checkpoint(const std::string& checkpoint, const std::string& out,
                                 const ReshardOptions& options);

}  // namespace stp::checkpoint
