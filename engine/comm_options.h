// What a job's communication is configured with, and where this process sits in the job: the
// plain-data half of engine/comm.h, without c10d, so the public API (stp/stp.h) can name a
// backend and read the launch environment without pulling c10d into a user's translation unit.
#pragma once

#include <chrono>
#include <string>

namespace stp::engine {

enum class CommBackend { kGloo, kNccl };

struct CommOptions {
  CommBackend backend = CommBackend::kGloo;
  std::chrono::milliseconds timeout{60000};  // per collective / P2P / rendezvous step; >= 1 ms
  int tp = 1;                                // tensor-parallel size, divides world
  int pp = 1;                                // pipeline-parallel size; world = dp * pp * tp
};

// Where this process sits in the job, read from the environment.
struct LaunchEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // the launcher hosts the store; every rank connects as a client
};

// Reads RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (or OMPI_COMM_WORLD_*). Missing
// variables mean a single-process job. Throws std::invalid_argument naming a malformed value.
LaunchEnv launch_env_from_environment();

}  // namespace stp::engine
