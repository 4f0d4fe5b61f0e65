// Trainer: the library entry point (the paper's `Trainer(model, ...)` / `trainer.step()`).
//
//   stp::Trainer trainer(stp::gpt_model(cfg), options);   // joins the job from the environment
//   double loss = trainer.step(batch);                    // the same value on every rank
//
// A model is any factory of Chunks (engine/chunk.h): given a pipeline stage and a TP rank it
// builds that piece, exposing its passes as units; the executor braids them, so any model
// written against Chunk gets STP's overlap for free. The trainer builds the schedule for the
// options, verifies it, plans activation offload against the budget, runs one Program per step
// on every rank, averages gradients over data-parallel replicas, clips and applies AdamW.
//
// Thread-safety: one Trainer per rank, used by one thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/activation_store.h"
#include "engine/chunk.h"
#include "engine/comm_options.h"
#include "engine/offload_plan.h"
#include "engine/optimizer.h"
#include "engine/step_stats.h"
#include "schedule/generators.h"
#include "schedule/program.h"

namespace stp::engine {

class Executor;
class World;

struct TrainerOptions {
  schedule::Kind schedule = schedule::Kind::kSTP;  // config text: schedule::kind_from_string
  int microbatches = 8;                            // m per step; stp needs >= 2*pp
  int chunks = 0;                                  // 1f1b-i: chunks per rank (0: 2); others fixed
  int tp = 1;                                      // tensor-parallel size
  int pp = 1;                                      // pipeline-parallel size; dp = world / (tp*pp)
  OffloadBudget offload_budget;  // off, bytes, or a percentage of the plan-free peak;
                                 // config text: parse_offload_budget ("off", "512MiB", "60%")
  double host_gbps = 20.0;       // host-link bandwidth the offload planner assumes (GB/s)
  // Recompute (Note [Recompute] in schedule/program.h): auto lets the offload planner choose it
  // per set, all recomputes every set (also with offload off), off never; config text:
  // parse_recompute ("auto", "off", "all").
  Recompute recompute = Recompute::kAuto;
  // With recompute all (Note [Partial sets]): the leading share of each chunk's layers every set
  // re-runs, in (0, 1]; 1 (default) recomputes whole sets. Below 1 needs recompute all.
  double recompute_share = 1;
  bool braid = true;  // interleave braided instructions (false: back to back)
  AdamWOptions optimizer;
  std::chrono::milliseconds comm_timeout{120000};
  CommBackend backend = CommBackend::kAuto;  // auto: NCCL for a model on a GPU, else Gloo
  int device = -1;  // the CUDA device this rank's model lives on (pick_cuda_device); -1: CPU
  // Gradients are reduced over DP in flat buckets of at most this many bytes (Note [Gradient
  // buckets] in engine/grad_buckets.h; 25 MiB, as DDP).
  std::int64_t grad_bucket_bytes = 25LL << 20;

  // Throws std::invalid_argument naming the first bad field and its legal range.
  void validate() const;
};

// What step() measured, on this rank.
struct TrainStepStats {
  StepStats exec;        // the executor's measurements (times, waits, memory, events)
  double loss = 0;       // mean microbatch loss over the step (every rank)
  double grad_norm = 0;  // global, before clipping
  double seconds = 0;    // whole step: program, gradient reduction, optimizer
  bool skipped = false;  // non-finite gradients: the update was skipped
};

class Trainer {
 public:
  // Joins the job described by the launch environment (launch_env_from_environment()).
  Trainer(ModelFactory model, TrainerOptions options);
  // Uses an existing world (threads-as-ranks tests, programs that manage their own).
  Trainer(ModelFactory model, TrainerOptions options, std::unique_ptr<World> world);
  ~Trainer();

  // One optimizer step. `batch` holds m * b sequences (tokens and targets (m*b, T)) and is
  // split into m microbatches of b; or pass the microbatches. Every rank passes the same data
  // for its DP replica. Returns the mean loss (the same on every rank).
  double step(const MicroBatch& batch);
  double step(const std::vector<MicroBatch>& microbatches);

  const TrainStepStats& last_stats() const { return last_; }
  const schedule::Program& program() const { return program_; }
  const TrainerOptions& options() const { return options_; }
  World& world() { return *world_; }  // (engine/comm.h)
  int rank() const;                   // this process's global rank
  int world_size() const;
  std::vector<Chunk*> chunks();
  AdamW& optimizer() { return *optimizer_; }
  // Activation bytes the planner assumed per stage (probed from one forward) and the device
  // budget it planned for (0: offload off).
  const std::vector<std::int64_t>& stage_activation_bytes() const { return stage_bytes_; }
  // Forward seconds per stage the planner assumed (probed by the first step, Note [Planner
  // timing] in engine/offload_plan.h).
  const std::vector<double>& stage_forward_seconds() const { return stage_seconds_; }
  // What the probe measured of recompute (offload_plan.h: RecomputeCosts; its mode is
  // TrainerOptions::recompute): the largest share over stages of a set's bytes a recomputed set
  // keeps after F, and the backward's extra time as a multiple of the forward's, timed
  // (Note [Recompute probe] in trainer.cpp; 1 untimed with recompute off).
  const RecomputeCosts& recompute_costs() const { return recompute_; }
  std::int64_t offload_budget_bytes() const { return budget_bytes_; }
  // The offload plan's figures (simulated; its program is program()), set by the first step.
  const OffloadPlan& offload_plan() const { return plan_; }
  // Test hook: the clock and device synchronisation the first step's probe times each stage's
  // forward with (default: now_seconds, and a device synchronisation when the model is on a
  // GPU). REQUIRES: called before the first step.
  void set_probe_timer(PassTimer timer);

 private:
  void init(ModelFactory model);
  void probe_activation_bytes(const std::vector<MicroBatch>& microbatches);
  void plan_offload();
  std::vector<MicroBatch> split(const MicroBatch& batch) const;
  void reduce_gradients();

  TrainerOptions options_;
  std::unique_ptr<World> world_;
  // Where the model's parameters live. On CUDA, step() makes it the current device, and every
  // stream and event of the step is its current stream's (Note [Offload streams]).
  at::Device device_ = at::kCPU;
  PassTimer probe_timer_;
  schedule::Program program_;
  std::vector<std::unique_ptr<Chunk>> chunks_;  // local chunk c
  std::unique_ptr<AdamW> optimizer_;
  std::unique_ptr<class GradBuckets> grad_buckets_;  // every Param::grad views one of its buffers
  ActivationStore store_;
  std::unique_ptr<class ActivationOffload> offload_;
  std::unique_ptr<Executor> executor_;
  std::vector<std::int64_t> stage_bytes_;
  std::vector<double> stage_seconds_;  // probed forward time per stage
  double w_held_fraction_ = 0;         // probed: share of a set a deferred W holds after B
  RecomputeCosts recompute_;           // probed: a recomputed set's share, its extra time
  std::int64_t budget_bytes_ = 0;
  OffloadPlan plan_;
  bool planned_ = false;
  TrainStepStats last_;
};

}  // namespace stp::engine
