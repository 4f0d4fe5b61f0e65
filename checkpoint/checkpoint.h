// Checkpoint: per-rank safetensors shards plus a manifest, written so that a checkpoint
// directory is either complete and verified or absent.
//
// On disk (DIR is the run's checkpoint folder):
//   DIR/step_000123/rank_00000.safetensors ... rank_<world-1>.safetensors
//   DIR/step_000123/manifest.json   format version, step, layout, model config, data position,
//                                   caller extras, and per shard file: name, bytes, XXH64.
//
// Note [Checkpoint atomicity]
// save() is collective: every rank of the run calls it with the same step, and `barrier` (the
// caller's, e.g. a world-group barrier with a timeout) orders the phases:
//   1. rank 0 creates DIR/step_N.tmp/ (removing a leftover one)                  barrier
//   2. each rank writes rank_R.safetensors.part, fsyncs it, renames it to rank_R.safetensors,
//      and writes its size and checksum to rank_R.sum the same way                 barrier
//   3. rank 0 checks that every shard exists with the size its rank reported, writes
//      manifest.json (LAST, via .part + fsync + rename), removes the .sum files, fsyncs the
//      folder, renames step_N.tmp -> step_N, fsyncs DIR, then prunes old checkpoints  barrier
// A crash anywhere before the final rename leaves only a *.tmp folder, which readers ignore and
// the next save of that step (or pruning) removes. The ranks must share DIR's file system.
//
// Thread-safety: a CheckpointWriter belongs to one rank's thread; the free functions may run on
// any thread. Errors: std::invalid_argument for bad arguments and for corrupt or mismatched
// checkpoints (the message names what differs), std::runtime_error for file-system failures.
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "checkpoint/safetensors.h"

namespace stp::checkpoint {

constexpr int kCheckpointFormatVersion = 1;

// How the run is split; another layout reshards on load (checkpoint/reshard.h).
//
// Note [Chunks in the layout]
// Which pipeline rank holds a parameter is decided by the schedule kind and the model chunks per
// rank v (schedule::Program::v; Note [Parameter placement] in models/placement.h): 1 for 1f1b
// and zb-h1, 2 for the V-shaped zb-v and stp, the run's choice (>= 2) for 1f1b-i. The manifest's
// layout object records v as "chunks" (resolved, never 0), so load_checkpoint, a resuming run
// and `stp checkpoint reshard` all see other chunks as the layout change they are
// (layout_change). A manifest written before the layout had them reads extra.schedule.chunks
// for 1f1b-i (what `stp train` wrote there), else the kind's default. In memory chunks = 0
// means the kind's default (chunks_of).
struct CheckpointLayout {
  int dp = 1;            // data-parallel ranks
  int pp = 1;            // pipeline stages (ranks)
  int tp = 1;            // tensor-parallel ranks
  int world = 1;         // dp * pp * tp
  std::string schedule;  // schedule kind ("stp", "1f1b-i", ...): decides chunk placement
  int microbatches = 1;  // per step
  int chunks = 0;        // model chunks per rank v, 0: the kind's default (Note above)
  // Field by field, the chunks as chunks_of resolves them (0 equals the kind's default).
  bool operator==(const CheckpointLayout& other) const;
};

// layout.chunks, or schedule::default_chunks of its kind when 0. Throws std::invalid_argument
// for a schedule kind stp does not know.
int chunks_of(const CheckpointLayout& layout);

// "" when a run in layout `now` reads the checkpoint's shards as they are (same tp, pp, dp,
// schedule and chunks_of; the microbatch count may differ), else what changes: "tp=2 pp=2 dp=1
// into tp=1 pp=4 dp=1" (the schedules too when they differ, and schedule.chunks when 1f1b-i's
// differ), or "schedule.chunks=2 into schedule.chunks=4" when only the chunks do.
std::string layout_change(const CheckpointLayout& saved, const CheckpointLayout& now);

// Where a global rank sits in the layout (Megatron order, TP fastest, as engine/comm.h):
//   rank = (pp * layout.dp + dp) * layout.tp + tp
struct RankCoords {
  int pp = 0, dp = 0, tp = 0;
};
// REQUIRES (checked): 0 <= rank < layout.world, layout.world == dp * pp * tp.
RankCoords rank_coords(const CheckpointLayout& layout, int rank);

// What the caller stores beside the tensors (all ranks pass the same on save).
struct CheckpointInfo {
  CheckpointLayout layout;
  nlohmann::json model = nlohmann::json::object();  // model config; must match on load
  nlohmann::json data = nlohmann::json::object();   // data position (DataLoader::position_json)
  nlohmann::json extra = nlohmann::json::object();  // anything else (optimizer settings, ...)
};

struct CheckpointFile {
  std::string name;  // "rank_00003.safetensors"
  int rank = 0;
  std::int64_t bytes = 0;
  std::uint64_t xxh64 = 0;  // written as "xxh64:<16 hex digits>"
};

struct Manifest {
  int format_version = kCheckpointFormatVersion;
  std::int64_t step = 0;
  CheckpointInfo info;
  std::vector<CheckpointFile> files;  // one per rank, in rank order
};

struct CheckpointOptions {
  std::string dir;    // the run's checkpoint folder; created if missing
  int keep_last = 3;  // complete checkpoints kept after a save, [1, 10^6]; older ones deleted
};

class CheckpointWriter {
 public:
  // REQUIRES: world >= 1, rank in [0, world), barrier callable, keep_last in range.
  CheckpointWriter(const CheckpointOptions& options, int rank, int world,
                   std::function<void()> barrier);

  // Collective (Note [Checkpoint atomicity]). `tensors`: this rank's parameters and optimizer
  // state, CPU and contiguous. `info` must be the same on every rank; info.layout.world must
  // equal the writer's world. Returns the final checkpoint folder, DIR/step_<step>.
  std::string save(std::int64_t step, const TensorMap& tensors, const CheckpointInfo& info);

 private:
  CheckpointOptions options_;
  int rank_;
  int world_;
  std::function<void()> barrier_;
};

// "step_000123" (at least six digits).
std::string checkpoint_dir_name(std::int64_t step);

// The complete checkpoints in `dir` (folders named step_<digits> holding a manifest.json that
// parses), newest step last. *.tmp folders and folders without a valid manifest are ignored.
std::vector<std::string> list_complete(const std::string& dir);
// The newest of list_complete(dir), or nullopt (also when `dir` does not exist).
std::optional<std::string> find_latest_complete(const std::string& dir);

// `path` itself when it holds a manifest.json, else the newest complete checkpoint in it (what
// tools take as --checkpoint). Throws std::invalid_argument when it is neither.
std::string resolve_checkpoint(const std::string& path);

// Reads and validates checkpoint/manifest.json (format version, fields, one file per rank).
Manifest read_manifest(const std::string& checkpoint);

// Throws std::invalid_argument naming every difference between the checkpoint's model and this
// run's: another family alone ("the checkpoint holds a model.arch=llama model, this run trains
// model.arch=gpt"), else every field ("model.n_layers=4 in checkpoint, 6 in this run"). The
// layout may differ: a run in another layout reshards (checkpoint/reshard.h).
void check_compatible(const Manifest& manifest, const nlohmann::json& model);

// Verifies one shard's size and checksum against the manifest (reads the whole file).
void verify_shard(const std::string& checkpoint, const Manifest& manifest, int rank);
// verify_shard, then reads it.
TensorMap load_shard(const std::string& checkpoint, const Manifest& manifest, int rank);

struct LoadedCheckpoint {
  Manifest manifest;
  TensorMap tensors;  // this rank's, CPU
};
// read_manifest + check_compatible + load_shard(rank). REQUIRES layout_change(saved, layout)
// to be "" (else std::invalid_argument naming the change and how to reshard: the microbatch
// count may differ, the tp, pp, dp, schedule and chunks may not).
LoadedCheckpoint load_checkpoint(const std::string& checkpoint, int rank,
                                 const CheckpointLayout& layout, const nlohmann::json& model);

// Writes a whole checkpoint from one process (tools: stp checkpoint reshard): each rank's shard
// `tensors_of(rank)` in rank order, then the manifest, published atomically at `final_dir` as
// save() does (through final_dir.tmp). Refuses an existing final_dir. Returns its path.
std::string write_checkpoint(const std::string& final_dir, std::int64_t step,
                             const CheckpointInfo& info,
                             const std::function<TensorMap(int rank)>& tensors_of);

// Verifies every shard's size and checksum (for tools; load only checks its own rank's).
void verify_checkpoint(const std::string& checkpoint);

}  // namespace stp::checkpoint
