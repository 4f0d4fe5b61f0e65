// ActivationOffload: moves the tensors of an ActivationSet to pinned host memory and back
// through offload::Offloader (Note [Offload lifetime] in offload/offloader.h). The engine side of
// offload: it turns named at::Tensors into the raw buffers the offload library moves, and
// device buffers it hands back into tensors again.
//
// Thread-safety: one rank's executor thread.
#pragma once

#include <cstdint>
#include <memory>

#include "engine/activation_set.h"

namespace stp::offload {
class Offloader;
class CopyEngine;
}  // namespace stp::offload
namespace stp::allocator {
class PinnedHostPool;
}  // namespace stp::allocator

namespace stp::engine {

class ActivationOffload {
 public:
  virtual ~ActivationOffload() = default;
  // Starts copying every field of `set` to host. The set keeps the field names; its device
  // memory is released when the copy completed.
  virtual void start_offload(ActivationSet& set) = 0;
  // Starts copying the fields back into fresh device tensors.
  virtual void start_reload(ActivationSet& set) = 0;
  // Blocks (CPU) or orders the compute stream (CUDA) until `set`'s reload completed, and
  // restores its fields. Returns the seconds the calling thread was blocked.
  virtual double wait_reload(ActivationSet& set) = 0;
  // Releases the device memory of offloads whose copy completed (their fields become undefined
  // tensors). Cheap; the store calls it between instructions.
  virtual void poll() = 0;
  // Host wait until every copy in flight completed, then poll(): frees the device memory of
  // every offload started so far. Returns the seconds blocked.
  virtual double drain() = 0;
};

// The offload library's implementation: a PinnedHostPool of `host_capacity_bytes`, a CopyEngine
// (CUDA streams when tensors live on a GPU, worker threads otherwise) and an Offloader.
//
// A field is moved whole: its bytes go to a pool block and come back into a new contiguous
// tensor of the same shape, dtype and device. While a set is away its fields keep their names:
// a field holds its original tensor until the D2H completed, an undefined tensor while on host,
// and the reload's new tensor from start_reload() on (read only after wait_reload()). So
// ActivationSet::bytes() is always exactly the device memory the set holds.
class PooledActivationOffload final : public ActivationOffload {
 public:
  // REQUIRES: host_capacity_bytes >= 1. `cuda`: tensors are on the current CUDA device.
  PooledActivationOffload(std::int64_t host_capacity_bytes, bool cuda);
  ~PooledActivationOffload() override;

  void start_offload(ActivationSet& set) override;
  void start_reload(ActivationSet& set) override;
  double wait_reload(ActivationSet& set) override;
  void poll() override;
  double drain() override;

  std::int64_t host_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stp::engine
