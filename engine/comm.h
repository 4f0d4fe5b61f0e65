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
// Note [Host and device groups]
// A group carries either device tensors (tp, dp and the two pipeline channels: the job's
// backend, NCCL on CUDA) or host tensors (world and model: losses, grad norms, probes, metrics,
// barriers, always over Gloo). NCCL refuses CPU tensors ("Tensors must be CUDA and dense"), so
// host scalars never reach it: this is PyTorch's "cpu:gloo,cuda:nccl" with the split made per
// group (the host groups carry nothing else, so they need no NCCL communicator at all). A
// Group checks each tensor against what it carries and names the group when one is misrouted;
// its scalar helpers allocate on the group's own device.
//
// Note [Gloo with CUDA tensors]
// Several ranks on one GPU cannot use NCCL (it refuses two ranks on one device), so a job may
// run Gloo with a model on CUDA: slow, for checking the CUDA executor, streams and offload on
// one card. Gloo's collectives stage CUDA tensors through host memory themselves; its send and
// recv would hand a device pointer to the TCP transport, so a Group stages them: a send copies
// the tensor into pinned host memory first (the copy waits for the current stream), a receive
// lands in host memory and is copied to the device inside wait().
//
// Note [P2P channels]
// NCCL runs every unbatched send/recv between two ranks of one process group on one
// communicator and one stream, in issue order, and a send cannot complete before its peer
// reaches the matching recv on that stream (gpu-review item 2). Both directions of a pair on
// one stream deadlock every pipeline schedule for pp >= 2 (schedule/p2p.h shows the cycle).
// So the pipeline has two groups over the same ranks: `up` carries only messages to a higher
// pipeline rank, `down` only messages to a lower one, and every (pair, direction) is a FIFO
// of its own: the layout schedule::ChannelLayout::kPerPairDirection that check_p2p_channels
// proves deadlock-free for every generator. Messages use one tag, so Gloo pairs them in issue
// order exactly as NCCL does and a channel-order bug shows on the CPU too. The World warms
// every pipeline pair up at construction (NCCL makes a pair's communicator inside its first
// send/recv, blocking the host until the peer's), in one global pair order, which cannot
// deadlock.
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
  // True when dropping the handle unwaited frees nothing early: the operation completed, or
  // (kStream) the backend recorded its stream on the tensors, so the caching allocator keeps
  // their memory until the operation finished (NCCL does for send and recv) and its watchdog
  // reports a failure.
  bool droppable() const { return !then_ && (wait_kind_ == WaitKind::kStream || done()); }
  // Runs `fn` once the operation completed, inside wait() (a staged receive's copy to the
  // device).
  void then(std::function<void()> fn) { then_ = std::move(fn); }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::string what_;  // "all_reduce on group tp0 (ranks 0,1)"
  std::chrono::milliseconds timeout_{0};
  WaitKind wait_kind_ = WaitKind::kHost;
  std::function<void()> then_;
};

// What a group's tensors live on (Note [Host and device groups]).
enum class Carries { kDevice, kHost };

// A group of global ranks with one c10d backend.
class Group {
 public:
  // `device`: where the group's scalar helpers allocate (the CPU for host groups).
  Group(std::string name, std::vector<int> ranks, int my_index,
        c10::intrusive_ptr<c10d::Backend> backend, std::chrono::milliseconds timeout,
        Carries carries = Carries::kDevice, c10::Device device = c10::Device(c10::kCPU));
  ~Group();

  const std::string& name() const { return name_; }
  Carries carries() const { return carries_; }
  int size() const { return static_cast<int>(ranks_.size()); }
  int rank() const { return my_index_; }                    // index of this process in the group
  const std::vector<int>& ranks() const { return ranks_; }  // global ranks, by group index

  // In-place reduction (sum by default) over the group. A group of size 1 returns a completed
  // handle. Every operation throws std::invalid_argument naming the group when `t` is not on
  // what the group carries (a host group takes CPU tensors only, an NCCL group CUDA only).
  CommHandle all_reduce_async(at::Tensor& t, c10d::ReduceOp op = c10d::ReduceOp::SUM);
  // Point-to-point with a group index as peer. Messages between a pair match by tag.
  CommHandle send_async(at::Tensor& t, int peer, int tag);
  CommHandle recv_async(at::Tensor& t, int peer, int tag);
  CommHandle broadcast_async(at::Tensor& t, int root);
  void barrier();

  // Test seam for Note [Gloo with CUDA tensors]: stage every send and recv, CPU tensors too.
  void stage_all_p2p_for_testing() { stage_all_ = true; }

  // Convenience: blocking sum / max of one double (grad norms, losses, error bounds).
  double all_reduce_sum(double x);
  double all_reduce_max(double x);

 private:
  std::string describe(const char* op, int peer = -1) const;
  void check_tensor(const at::Tensor& t, const char* op) const;
  bool stages(const at::Tensor& t) const;  // Note [Gloo with CUDA tensors]
  at::Tensor host_buffer(const at::Tensor& t) const;
  double all_reduce_scalar(double x, c10d::ReduceOp op);

  std::string name_;
  std::vector<int> ranks_;
  int my_index_;
  c10::intrusive_ptr<c10d::Backend> backend_;
  std::chrono::milliseconds timeout_;
  CommHandle::WaitKind wait_kind_;  // kStream on NCCL, else kHost
  Carries carries_;
  c10::Device device_;
  bool nccl_;
  bool stage_all_ = false;
};

// The pipeline's two P2P channels over the same ranks (Note [P2P channels]).
class PipeChannels {
 public:
  PipeChannels(Group& up, Group& down);

  int rank() const { return up_.rank(); }  // this rank's pipeline index
  int size() const { return up_.size(); }
  // `peer` is a pipeline index other than rank(). The message goes on the channel of its
  // direction: up when peer > rank(), down otherwise.
  CommHandle send_async(at::Tensor& t, int peer);
  CommHandle recv_async(at::Tensor& t, int peer);
  // One message each way between every pair of neighbours (and the first and last rank, the
  // wrap of interleaved 1F1B), pairs in one global order; the host waits for each. `like`
  // gives the device and dtype of the one-element messages.
  void warm_up(const at::TensorOptions& like);

  Group& up() { return up_; }      // messages to a higher pipeline rank
  Group& down() { return down_; }  // messages to a lower pipeline rank

 private:
  Group& up_;
  Group& down_;
};

// How a World makes a group's backend: the test seam for fake c10d backends (a recording one,
// a FIFO-rendezvous one with NCCL's pairing semantics). `store` is already prefixed for the
// group. The default makes Gloo for host groups and the job's backend for device groups.
struct GroupSpec {
  std::string name;        // "tp0.0", "pp_up0.1", "world", ...
  std::vector<int> ranks;  // global ranks, by group index
  int my_index = 0;
  Carries carries = Carries::kDevice;
  c10::intrusive_ptr<c10d::Store> store;
};
using BackendFactory = std::function<c10::intrusive_ptr<c10d::Backend>(const GroupSpec&)>;

class World {
 public:
  // Connects through a TCPStore at env.master_addr:master_port (rank 0 hosts it unless
  // env.agent_store) and builds the groups.
  static std::unique_ptr<World> connect(const LaunchEnv& env, const CommOptions& options);
  // Threads-as-ranks: every rank of the job calls this from its own thread with the same
  // store (make_in_memory_store()).
  static std::unique_ptr<World> in_process(c10::intrusive_ptr<c10d::Store> store, int rank,
                                           int world_size, const CommOptions& options,
                                           BackendFactory factory = {});
  static c10::intrusive_ptr<c10d::Store> make_in_memory_store();

  ~World();

  int rank() const { return rank_; }
  int size() const { return world_size_; }
  int tp() const { return options_.tp; }
  int pp() const { return options_.pp; }
  int dp() const { return world_size_ / (options_.tp * options_.pp); }
  int tp_rank() const { return tp_group_->rank(); }
  int pp_rank() const { return pp_up_->rank(); }
  int dp_rank() const { return dp_group_->rank(); }

  // Host groups (Gloo, CPU tensors): the whole job, and the ranks of this rank's pipeline.
  Group& world_group() { return *world_group_; }
  Group& tp_group() { return *tp_group_; }
  PipeChannels& pipe() { return *pipe_; }
  Group& dp_group() { return *dp_group_; }
  // Ranks that share this rank's pipeline: tp and pp members (for grad-norm reduction).
  Group& model_group() { return *model_group_; }
  // Device groups (the job's backend) are tp_group, dp_group and pipe.
  const CommOptions& options() const { return options_; }

 private:
  World(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size, CommOptions options,
        BackendFactory factory);
  std::unique_ptr<Group> make_group(const std::string& name, const std::vector<int>& ranks,
                                    Carries carries);
  c10::intrusive_ptr<c10d::Backend> make_backend(const GroupSpec& spec) const;

  c10::intrusive_ptr<c10d::Store> store_;
  int rank_;
  int world_size_;
  CommOptions options_;
  BackendFactory factory_;
  std::unique_ptr<Group> world_group_, tp_group_, pp_up_, pp_down_, dp_group_, model_group_;
  std::unique_ptr<PipeChannels> pipe_;
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
                    c10::intrusive_ptr<c10d::Store> store = {}, BackendFactory factory = {});

}  // namespace stp::engine
