// ActivationOffload: moves the tensors of an ActivationSet to pinned host memory and back
// through offload::Offloader (Note [Offload lifetime] in offload/offloader.h). The engine side of
// offload: it turns named at::Tensors into the raw buffers the offload library moves, and
// device buffers it hands back into tensors again. Which stream each step runs on and who waits
// for whom: Note [Offload streams] in offload/device_ops.h, and docs/gpu.md.
//
// Thread-safety: one rank's executor thread.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/activation_set.h"
#include "offload/device_ops.h"
#include "offload/offloader.h"

namespace stp::offload {
class CopyEngine;
}  // namespace stp::offload
namespace stp::allocator {
class PinnedHostPool;
}  // namespace stp::allocator

namespace stp::engine {

class ActivationOffload {
 public:
  virtual ~ActivationOffload() = default;
  // Starts copying `share` of `set` to host (Note [Partial sets] in schedule/program.h): the
  // fields set.select_leading(share) names, whose selection it returns; share 1 moves every
  // field. The set keeps the field names; a moved field's device memory is released when its
  // copy completed; the other fields stay as they are, readable. REQUIRES: share in (0, 1].
  virtual ActivationSet::Selection start_offload(ActivationSet& set, double share) = 0;
  // Starts copying the moved fields back into fresh device tensors (exactly those).
  virtual void start_reload(ActivationSet& set) = 0;
  // Blocks (CPU) or orders the compute stream (CUDA: a stream wait, the host does not block)
  // until `set`'s reload completed, and restores its fields. Returns the seconds the calling
  // thread was blocked.
  virtual double wait_reload(ActivationSet& set) = 0;
  // Releases the device memory of offloads whose copy completed (their fields become undefined
  // tensors). Cheap; the store calls it between instructions.
  virtual void poll() = 0;
  // Host wait until every copy in flight completed, then poll(): frees the device memory of
  // every offload started so far. Returns the seconds blocked. For the host copy engine's
  // budget, tests and teardown; never needed with a stream-ordered release.
  virtual double drain() = 0;
  // True when start_offload() already released the fields in stream order (CUDA): the device
  // memory of an offload never waits for a host poll, so drain() could free nothing more.
  virtual bool releases_in_stream_order() const = 0;
  // For the measured timeline (Note [Step clock] in engine/executor.h): once record_copies(true)
  // was called, take_copies() hands out the copies started since its last call, oldest first,
  // each with when it began and completed. An implementation that cannot time reports none.
  virtual void record_copies(bool on) { (void)on; }
  virtual std::vector<offload::CopyRecord> take_copies() { return {}; }
};

// The engine's DeviceOps (offload/device_ops.h): the CUDA runtime's calls, with LibTorch's
// current stream of a device (c10::cuda::getCurrentCUDAStream) and its caching allocator's
// recordStream (a storage handle is a c10::StorageImpl*), and the caching allocator's peaks
// (getDeviceStats / resetPeakStats) as memory_stats. Without CUDA: runtime_device_ops().
offload::DeviceOps torch_device_ops();

// The offload library's implementation: a PinnedHostPool of `host_capacity_bytes`, a CopyEngine
// (CUDA streams when tensors live on a GPU, worker threads otherwise) and an Offloader.
//
// A field is moved whole: its bytes go to a pool block and come back into a new contiguous
// tensor of the same shape, dtype and device. While a set is away its fields keep their names:
// a moved field holds its original tensor until the D2H completed, an undefined tensor while on
// host, and the reload's new tensor from start_reload() on (read only after wait_reload()); a
// field a partial offload did not move keeps its tensor throughout. So ActivationSet::bytes() is
// always exactly the device memory the set holds.
//
// On CUDA every event is recorded on, and every wait made by, the current stream of the
// model's device `device` (ops.current_stream(device)), whichever device the calling thread
// has current; a field's storage is recorded on the D2H stream and the field dropped as soon as
// its copy is queued (stream-ordered release), and a reload is consumed through a stream wait.
class PooledActivationOffload final : public ActivationOffload {
 public:
  // REQUIRES: host_capacity_bytes >= 1. `device`: the CUDA device the set's tensors live on,
  // or -1 for tensors on the CPU (the host copy engine's worker threads).
  PooledActivationOffload(std::int64_t host_capacity_bytes, int device);
  // The seam for tests: `copies` (its backend() says CUDA or host) and `ops` stand in for the
  // copy engine and the device calls, so a CPU test drives the CUDA path with a fake device.
  PooledActivationOffload(std::int64_t host_capacity_bytes, int device, offload::DeviceOps ops,
                          std::unique_ptr<offload::CopyEngine> copies);
  ~PooledActivationOffload() override;

  ActivationSet::Selection start_offload(ActivationSet& set, double share) override;
  void start_reload(ActivationSet& set) override;
  double wait_reload(ActivationSet& set) override;
  void poll() override;
  double drain() override;
  bool releases_in_stream_order() const override;
  void record_copies(bool on) override;
  std::vector<offload::CopyRecord> take_copies() override;

  std::int64_t host_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stp::engine
