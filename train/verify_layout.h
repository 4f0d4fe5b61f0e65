// verify_layout: one training step of a TP x PP layout, schedule and offload budget on a small
// random float64 model (the GPT, or a Llama with the chosen key/value heads, rotary base and
// embedding tying), against the same step as a single-process reference (one chunk, TP 1, no
// pipeline): the loss difference and the largest relative gradient error over all parameters.
// `stp verify` prints the report; a layout is trusted when both are within the tolerance.
//
// Without a launcher (LaunchEnv::launched false) the tp*pp ranks run as threads of this process;
// under `stp run -n N`, torchrun, mpirun or srun each process is one rank (N must equal tp*pp),
// compares its own shards, and the figures are reduced over the world.
//
// Note [Verify on one GPU]
// With --device cuda every rank's model, executor, streams and activation offload run on a CUDA
// device, in float64 like the reference (cuBLAS double GEMMs; the attention takes the explicit
// path of Note [Fused attention], which is the one it takes for float64 on CUDA), so the
// tolerance stays 1e-9: the only differences from the CPU reference are summation orders and
// atomics, ~1e-15 relative. The reference itself always runs on the CPU. Where the ranks go
// (verify_placement): launched, local rank r uses GPU r modulo the visible GPUs (a process that
// sees one GPU uses it: srun / mpirun binding, or every rank of `stp run` on one card); as
// threads, every rank uses GPU 0. When several ranks share a GPU, --comm auto takes Gloo, whose
// groups stage CUDA tensors through pinned host memory (Note [Gloo with CUDA tensors] in
// engine/comm.h), and --comm nccl refuses, since NCCL refuses two ranks on one device ("Duplicate
// GPU detected"). Without a visible GPU --device cuda refuses in one line. A process that sees
// one GPU while LOCAL_WORLD_SIZE > 1 is taken to share it with its local peers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/comm_options.h"
#include "engine/step_stats.h"

namespace stp::train {

struct VerifyOptions {
  int tp = 2;                      // >= 1
  int pp = 2;                      // >= 1
  int microbatches = 0;            // 0: the smallest the schedule takes, at least 4
  std::string schedule = "stp";    // schedule::kind_from_string
  std::string budget = "off";      // engine::parse_offload_budget
  std::string recompute = "auto";  // engine::parse_recompute: auto, off or all
  // With recompute all: the leading share of each chunk's layers every set re-runs (Note
  // [Partial sets] in schedule/program.h), in (0, 1]; below 1 needs recompute all.
  double recompute_share = 1;
  double tolerance = 1e-9;  // > 0
  std::uint64_t seed = 1;
  int threads = 0;            // CPU intra-op threads per rank; 0: cpu_threads' default
  std::string model = "gpt";  // gpt or llama
  // Llama only. The model has 4*tp query heads of size 2.
  int kv_heads = 0;             // key/value heads, dividing 4*tp; 0: half the query heads
  double rope_theta = 10000.0;  // rotary base; > 0
  bool tie_embeddings = false;  // needs one stage (pp 1, a one-chunk schedule)
  std::string device = "cpu";   // cpu or cuda (Note [Verify on one GPU])
  std::string comm = "auto";    // auto, gloo or nccl (engine::comm_backend_from_string)
};

// Where this process's ranks run (Note [Verify on one GPU]).
struct VerifyPlacement {
  int device = -1;  // the CUDA device of this process's ranks; -1: the CPU
  engine::CommBackend backend = engine::CommBackend::kGloo;  // resolved: gloo or nccl
  int ranks_per_device = 1;  // ranks of this host on each GPU (at most; CPU: 1)
};

// The placement for `options` in `env` when this process sees `visible_devices` CUDA devices
// (allocator::cuda_device_available and cudaGetDeviceCount in verify_layout; any number in the
// tests). `cuda_built` is false when this build has no CUDA. Throws std::invalid_argument in one
// line naming the flag: an unknown --device or --comm, --device cuda without a GPU (or without
// CUDA in the build), --comm nccl on the CPU or with several ranks on one GPU.
VerifyPlacement verify_placement(const VerifyOptions& options, const engine::LaunchEnv& env,
                                 int visible_devices, bool cuda_built);

struct VerifyReport {
  bool lead = true;  // this process prints (rank 0, or the only process)
  int microbatches = 0;
  std::int64_t layers = 0;
  std::int64_t kv_heads = 0;                       // llama: the key/value heads it ran with
  std::int64_t peak_bytes = 0;                     // measured activation peak, max over ranks
  std::int64_t offloaded_bytes = 0;                // measured, sum over ranks
  std::vector<engine::PartialTrip> partial_trips;  // rank 0's trips that moved part of a set
  double loss = 0, reference_loss = 0, loss_diff = 0;
  double max_rel = 0;  // largest relative gradient error
  std::string worst;   // the parameter it was found at
  bool ok = false;     // both within the tolerance
  std::string where;   // "cpu" or "cuda:N, gloo" (the device and the comm backend)
};

// Throws std::invalid_argument naming a bad option (and a launch that does not match tp*pp).
VerifyReport verify_layout(const VerifyOptions& options, const engine::LaunchEnv& env);

}  // namespace stp::train
