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
  // Device bytes still held by offloads whose copy has not completed.
  virtual std::int64_t device_bytes_in_flight() const = 0;
};

}  // namespace stp::engine
