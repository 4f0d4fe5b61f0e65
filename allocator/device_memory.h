// Device memory for the offload path, and its exact accounting.
//
// DeviceAllocator is the smallest thing that gives out "device" memory: cudaMalloc on the CUDA
// backend, 64-byte-aligned host memory on the host backend (where the "device" is the CPU).
// The engine does not use it for activations — it hands the offloader pointers of tensors it
// owns — but tests, benchmarks and library users without LibTorch do.
//
// MemoryAccount counts bytes held (resident) and the high-water mark (peak) exactly, with
// atomics, so it can be read from any thread while its owner updates it.
//
// Thread-safety: both classes may be used from any thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "allocator/backend.h"

namespace stp::allocator {

class DeviceAllocator {
 public:
  virtual ~DeviceAllocator() = default;
  // `bytes` > 0 of device memory. Throws std::runtime_error naming the size when out of memory.
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void deallocate(void* ptr) noexcept = 0;
  virtual Backend backend() const = 0;
};

// backend is resolved with resolve_backend().
std::unique_ptr<DeviceAllocator> make_device_allocator(Backend backend);

class MemoryAccount {
 public:
  void add(std::int64_t bytes) {
    std::int64_t now = resident_.fetch_add(bytes, std::memory_order_relaxed) + bytes;
    std::int64_t peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
  }
  void sub(std::int64_t bytes) { resident_.fetch_sub(bytes, std::memory_order_relaxed); }
  std::int64_t resident() const { return resident_.load(std::memory_order_relaxed); }
  std::int64_t peak() const { return peak_.load(std::memory_order_relaxed); }
  // Restarts the high-water mark at the current residency (e.g. at the start of a step).
  void reset_peak() { peak_.store(resident(), std::memory_order_relaxed); }

 private:
  std::atomic<std::int64_t> resident_{0};
  std::atomic<std::int64_t> peak_{0};
};

}  // namespace stp::allocator
