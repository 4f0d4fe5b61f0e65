// Comm: the ranks of one training job and their tensor-, pipeline- and data-parallel groups,
// over c10d backends from LibTorch (Gloo on CPU, NCCL on CUDA) with a c10d Store for
// rendezvous. No home-made transport.
//
// Layout (Megatron order, TP fastest): global rank = (pp_idx * dp + dp_idx) * tp + tp_idx.
// A World is created from a torchrun-compatible environment (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT; OMPI_COMM_WORLD_* under mpirun) or, for tests, from an in-memory
// store shared by N threads acting as N ranks.
//
// Every operation is asynchronous and returns a CommHandle; wait() blocks the calling thread on
// CPU and orders the current CUDA stream after the operation on GPU (no host wait). A collective
// or P2P that does not complete within Options::timeout throws std::runtime_error naming the
// group, the peer ranks and the operation.
//
// Thread-safety: a World and its Groups belong to one thread (the rank's executor); handles may
// be waited on from that thread only.
#pragma once

#include <ATen/core/Tensor.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/comm_options.h"

namespace stp::engine {

// The result of an asynchronous operation.
class CommHandle {
 public:
  // How wait() waits. kHost: the calling thread blocks until the operation completed or the
  // timeout passed (Gloo/CPU). kStream: the current CUDA stream is ordered after the operation
  // and the host goes on (NCCL: c10d's Work::wait() without a timeout; with one it would poll
  // on the host); a hang is caught by the process group's own timeout (its watchdog).
  enum class WaitKind { kHost, kStream };

  CommHandle() = default;
  CommHandle(c10::intrusive_ptr<c10d::Work> work, std::string what,
             std::chrono::milliseconds timeout, WaitKind wait_kind = WaitKind::kHost);
  ~CommHandle();
  CommHandle(CommHandle&&) noexcept;
  CommHandle& operator=(CommHandle&&) noexcept;

  bool pending() const;
  // Blocks (CPU) or orders the current stream (CUDA) until done. Idempotent.
  void wait();
  // Non-blocking: true once the operation completed.
  bool done() const;

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::string what_;  // "all_reduce on group tp0 (ranks 0,1)"
  std::chrono::milliseconds timeout_{0};
  WaitKind wait_kind_ = WaitKind::kHost;
};

// A group of global ranks with one c10d backend.
class Group {
 public:
  Group(std::string name, std::vector<int> ranks, int my_index,
        c10::intrusive_ptr<c10d::Backend> backend, std::chrono::milliseconds timeout);
  ~Group();

  const std::string& name() const { return name_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  int rank() const { return my_index_; }                    // index of this process in the group
  const std::vector<int>& ranks() const { return ranks_; }  // global ranks, by group index

  // In-place reduction (sum by default) over the group. A group of size 1 returns a completed
  // handle.
  CommHandle all_reduce_async(at::Tensor& t, c10d::ReduceOp op = c10d::ReduceOp::SUM);
  // Point-to-point with a group index as peer. Messages between a pair match by tag.
  CommHandle send_async(at::Tensor& t, int peer, int tag);
  CommHandle recv_async(at::Tensor& t, int peer, int tag);
  CommHandle broadcast_async(at::Tensor& t, int root);
  void barrier();

  // Convenience: blocking sum / max of one double (grad norms, losses, error bounds).
  double all_reduce_sum(double x);
  double all_reduce_max(double x);

 private:
  std::string describe(const char* op, int peer = -1) const;
  double all_reduce_scalar(double x, c10d::ReduceOp op);

  std::string name_;
  std::vector<int> ranks_;
  int my_index_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  std::chrono::milliseconds timeout_;
  CommHandle::WaitKind wait_kind_;  // kStream on NCCL, else kHost
};

class World {
 public:
  // Connects through a TCPStore at env.master_addr:master_port (rank 0 hosts it unless
  // env.agent_store) and builds the groups.
  static std::unique_ptr<World> connect(const LaunchEnv& env, const CommOptions& options);
  // Threads-as-ranks: every rank of the job calls this from its own thread with the same
  // store (make_in_memory_store()).
  static std::unique_ptr<World> in_process(c10::intrusive_ptr<c10d::Store> store, int rank,
                                           int world_size, const CommOptions& options);
  static c10::intrusive_ptr<c10d::Store> make_in_memory_store();

  ~World();

  int rank() const { return rank_; }
  int size() const { return world_size_; }
  int tp() const { return options_.tp; }
  int pp() const { return options_.pp; }
  int dp() const { return world_size_ / (options_.tp * options_.pp); }
  int tp_rank() const { return tp_group_->rank(); }
  int pp_rank() const { return pp_group_->rank(); }
  int dp_rank() const { return dp_group_->rank(); }

  Group& world_group() { return *world_group_; }
  Group& tp_group() { return *tp_group_; }
  Group& pp_group() { return *pp_group_; }
  Group& dp_group() { return *dp_group_; }
  // Ranks that share this rank's pipeline: tp and pp members (for grad-norm reduction).
  Group& model_group() { return *model_group_; }
  const CommOptions& options() const { return options_; }

 private:
  World(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size, CommOptions options);
  std::unique_ptr<Group> make_group(const std::string& name, const std::vector<int>& ranks);

  c10::intrusive_ptr<c10d::Store> store_;
  int rank_;
  int world_size_;
  CommOptions options_;
  std::unique_ptr<Group> world_group_, tp_group_, pp_group_, dp_group_, model_group_;
};

// Validates a layout and returns one line naming the values when it is impossible.
// world must equal dp * pp * tp with all >= 1.
void check_layout(int world_size, int tp, int pp);

// Threads as ranks: runs fn(world) for every rank of a `world_size` job on its own thread, each
// over World::in_process(store, rank, ...) (a fresh in-memory store when none is given); joins
// them all and rethrows the first exception a rank threw. stp verify, stp bench and the tests
// use it to run a whole job in one process.
void run_in_process(int world_size, const CommOptions& options,
                    const std::function<void(std::unique_ptr<World>)>& fn,
                    c10::intrusive_ptr<c10d::Store> store = {});

}  // namespace stp::engine
