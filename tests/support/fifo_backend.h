// FifoFabric: in-process c10d backends with NCCL's pairing semantics, for threads-as-ranks
// tests of the comm layout (gpu-review items 1 and 2) without a GPU.
//
// Note [FIFO rendezvous backend]
// Each rank's backend of a communicator has one queue per peer for send/recv (NCCL's one
// stream per pair communicator) and one queue for collectives. Operations join their queue in
// issue order and complete only at its head: a send and a recv complete together when each is
// at the head of its rank's queue for the pair; a collective when every rank of the group has
// it at the head. Tags are ignored (NCCL ignores them), and a send never completes before its
// recv is at the head of the peer's queue (no eager buffering): the strictest transport NCCL
// can be, so a layout that runs here runs on NCCL at any message size. Completion is driven
// eagerly under one mutex, as a GPU stream progresses independently of its host; wait() blocks
// the calling thread (the host standing in for the compute stream that would wait), and a wait
// that times out throws naming the operation and the heads of both queues of its pair.
//
// Options::channel maps a group name to the communicator it uses: identity by default; mapping
// "pp_up*" and "pp_down*" to one name models one communicator per pair, the layout that
// deadlocks (Note [P2P channels], engine/comm.h).
//
// Thread-safety: one fabric per job, shared by its rank threads; every member is thread-safe.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine/comm.h"

namespace stp::testing {

class FifoFabric {
 public:
  struct Options {
    std::chrono::milliseconds timeout{20000};  // for waits without a timeout (NCCL's kind)
    std::function<std::string(const std::string& group)> channel;  // default: the group name
    std::string device_backend_name = "fifo";  // getBackendName() of device groups' backends
  };
  // One operation a backend received, in issue order.
  struct Record {
    std::string group;
    engine::Carries carries = engine::Carries::kDevice;
    std::string op;  // "allreduce", "send", "recv", "broadcast", "barrier"
    at::ScalarType dtype = at::kFloat;
    std::int64_t numel = 0;
  };

  FifoFabric();
  explicit FifoFabric(Options options);
  ~FifoFabric();

  // The World's backend factory: every group of every rank gets a FIFO backend.
  engine::BackendFactory factory();
  std::vector<Record> records() const;
  // The most earlier sends of one rank on one group whose tensors were still alive (referenced
  // by anyone: the sender's handles, the activation store) when that rank posted another send:
  // how long senders keep what they sent.
  int max_live_sends() const;
  // The most collectives of one rank on one group posted and not yet waited for when that rank
  // posted another: 0 when every collective is waited for before the next one starts (no
  // overlap), >= 1 when a collective is in flight while the rank computes and starts the next.
  int max_collectives_in_flight() const;

  struct Op;
  class Backend;
  class Work;

 private:
  struct Channel;
  void post(const std::string& channel, const std::shared_ptr<Op>& op);
  void progress();  // REQUIRES: mu_ held
  bool wait(const std::shared_ptr<Op>& op, std::chrono::milliseconds timeout);
  std::string stuck(const Op& op) const;  // REQUIRES: mu_ held

  Options options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::unique_ptr<Channel>> channels_;  // guarded by mu_
  std::vector<Record> records_;                               // guarded by mu_
  // (group, rank) -> the storages of its sends; guarded by mu_
  std::map<std::string, std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>>> sent_;
  int max_live_sends_ = 0;  // guarded by mu_
  // (group, rank) -> its collectives not yet waited for; guarded by mu_
  std::map<std::string, std::vector<std::shared_ptr<Op>>> unwaited_;
  int max_in_flight_ = 0;  // guarded by mu_
};

}  // namespace stp::testing
