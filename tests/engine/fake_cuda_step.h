// Helpers for running a whole step on the CUDA offload path without a GPU (FakeCudaDevice,
// tests/offload/fake_cuda_device.h), shared by the engine's step-level tests.
//
// Thread-safety: none; one test thread.
#pragma once

#include <c10/core/Storage.h>

#include <memory>

#include "offload/device_ops.h"
#include "tests/offload/fake_cuda_device.h"

namespace stp::testing {

// The fake allocator keeps a recorded storage alive, as the caching allocator keeps a block.
inline Retained keep_storage(void* storage) {
  auto holder = std::make_shared<c10::Storage>(
      c10::intrusive_ptr<c10::StorageImpl>::reclaim_copy(static_cast<c10::StorageImpl*>(storage)));
  return {holder, static_cast<const char*>(holder->data()), holder->nbytes()};
}

// `device`'s ops, except that the compute stream reaching a wait for a copy runs the copy
// streams until that copy is done (the device does it; the host does not wait), as a step
// needs: its backward reads what the wait ordered it after.
inline offload::DeviceOps ops_running_copies_at_waits(FakeCudaDevice& device) {
  offload::DeviceOps ops = device.ops();
  ops.wait = [inner = ops.wait, &device](const offload::CopyEvent& e, offload::StreamHandle s) {
    inner(e, s);
    if (s == FakeCudaDevice::compute())
      while (!e.query() && (device.run_one(offload::Direction::kD2H) ||
                            device.run_one(offload::Direction::kH2D))) {
      }
  };
  return ops;
}

}  // namespace stp::testing
