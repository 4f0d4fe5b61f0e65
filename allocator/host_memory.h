// HostMemory: where the pinned pool's slabs come from (leveldb's Env idea: the hardware behind
// a narrow interface with a host implementation, so the pool is tested without a GPU).
//
//   kMmap             mmap'd anonymous memory, bound to the NUMA node (mbind) before it is
//                     touched, every page touched up front, then mlock'ed best-effort (the
//                     RLIMIT_MEMLOCK of the process may refuse; Slab::locked says which).
//   kCudaRegister     the kMmap slab, then cudaHostRegister'ed: page-locked and mapped for DMA,
//                     on the node chosen by our own binding.
//   kCudaHostAlloc    cudaHostAlloc by a thread bound (CPUs and memory policy) to the node, so
//                     the driver's first touch lands there.
//
// map() and unmap() make system and CUDA calls; the pool calls them with no lock held.
//
// Thread-safety: map/unmap may be called from any thread.
#pragma once

#include <cstddef>
#include <memory>

#include "allocator/numa.h"

namespace stp::allocator {

enum class HostMemoryKind {
  kAuto,           // kCudaRegister when a CUDA device is available, else kMmap
  kMmap,           // host-only build or no GPU
  kCudaRegister,   // mmap + mbind + touch + cudaHostRegister
  kCudaHostAlloc,  // cudaHostAlloc from a thread bound to the node
};

const char* to_string(HostMemoryKind kind);

struct Slab {
  void* base = nullptr;
  std::size_t bytes = 0;
  bool locked = false;  // page-locked (mlock or CUDA-pinned); false: pageable, still usable
  int node = kUnbound;  // NUMA node the pages were bound to, kUnbound when not bound
};

class HostMemory {
 public:
  virtual ~HostMemory() = default;
  // A slab of `bytes` (a multiple of page_size()) on placement.node. Throws std::runtime_error
  // naming the size and the errno / CUDA error when the system refuses.
  virtual Slab map(std::size_t bytes, const NumaPlacement& placement) = 0;
  virtual void unmap(const Slab& slab) noexcept = 0;
  virtual HostMemoryKind kind() const = 0;
};

// kAuto is resolved here. Throws std::invalid_argument for a CUDA kind without CUDA/device.
std::unique_ptr<HostMemory> make_host_memory(HostMemoryKind kind);

std::size_t page_size();

}  // namespace stp::allocator
