// What a job's communication is configured with, and where this process sits in the job: the
// plain-data half of engine/comm.h, without c10d, so the public API (stp/stp.h) can name a
// backend and read the launch environment without pulling c10d into a user's translation unit.
#pragma once

#include <chrono>
#include <string>

namespace stp::engine {

// kAuto: NCCL when the model lives on a CUDA device, Gloo when it lives on the CPU. kGloo with
// a CUDA model stages through host memory (engine/comm.h, Note [Gloo with CUDA tensors]).
enum class CommBackend { kAuto, kGloo, kNccl };

const char* to_string(CommBackend backend);  // "auto", "gloo", "nccl"
// The inverse of to_string. Throws std::invalid_argument naming `what` (the flag or key that
// held the text) and the three legal values.
CommBackend comm_backend_from_string(const std::string& text, const std::string& what);

// The backend a model on a CUDA device (`cuda`) or on the CPU gets. Gloo with a CUDA model
// stages every message through host memory (slow: for several ranks on one GPU, where NCCL
// refuses). Throws std::invalid_argument for NCCL with a CPU model (NCCL needs CUDA tensors).
CommBackend resolve_backend(CommBackend requested, bool cuda);

// The CUDA device of the rank with this LOCAL_RANK: local_rank when the process sees several
// GPUs, 0 when it sees exactly one (srun / mpirun bound one GPU to each rank). Throws
// std::invalid_argument naming both numbers when there is no such device.
int pick_cuda_device(int local_rank, int visible_devices);

struct CommOptions {
  CommBackend backend = CommBackend::kGloo;  // resolved: kGloo or kNccl
  std::chrono::milliseconds timeout{60000};  // per collective / P2P / rendezvous step; >= 1 ms
  int tp = 1;                                // tensor-parallel size, divides world
  int pp = 1;                                // pipeline-parallel size; world = dp * pp * tp
  int device = -1;  // the CUDA device NCCL groups are bound to (-1: none, CPU)
};

// Where this process sits in the job, read from the environment.
struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // the launcher hosts the store; every rank connects as a client
  bool launched = false;     // a launcher set WORLD_SIZE (or OMPI_COMM_WORLD_SIZE)
  int local_world_size = 0;  // LOCAL_WORLD_SIZE (OMPI_COMM_WORLD_LOCAL_SIZE); 0: not set
  int omp_num_threads = 0;   // the user's OMP_NUM_THREADS (its first entry); 0: unset, malformed
                             // or set by `stp run` (STP_OMP_FROM_LAUNCHER=1)
};

// Reads RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (or OMPI_COMM_WORLD_*),
// LOCAL_WORLD_SIZE and OMP_NUM_THREADS: the one place stp reads the launch environment. Missing
// variables mean a single-process job. Throws std::invalid_argument naming a malformed value.
LaunchEnv launch_env_from_environment();

}  // namespace stp::engine
