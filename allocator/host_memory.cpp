#include "allocator/host_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "allocator/backend.h"
#include "common/check.h"
#include "common/enum_names.h"

#ifdef STP_HAVE_NUMA
#include <numaif.h>
#endif
#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#endif

namespace stp::allocator {

std::size_t page_size() {
  static const std::size_t size = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

const char* to_string(HostMemoryKind kind) {
  static constexpr EnumName<HostMemoryKind> kNames[] = {
      {HostMemoryKind::kAuto, "auto"},
      {HostMemoryKind::kMmap, "mmap"},
      {HostMemoryKind::kCudaRegister, "cuda-register"},
      {HostMemoryKind::kCudaHostAlloc, "cuda-host-alloc"}};
  return name_of(kNames, kind);
}

namespace {

// mmap + mbind + touch every page (so the pages exist on the node before any copy) + optional
// mlock. Shared by kMmap and kCudaRegister.
Slab map_bound(std::size_t bytes, const NumaPlacement& placement, bool lock) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw std::runtime_error(
        str_cat("pinned pool: mmap of ", bytes, " bytes failed: ", std::strerror(errno)));
  Slab slab;
  slab.base = p;
  slab.bytes = bytes;
  if (placement.node != kUnbound && bind_memory(p, bytes, placement.node))
    slab.node = placement.node;
    // First touch: the kernel allocates each page under the policy just set.
#ifdef MADV_POPULATE_WRITE
  bool populated = madvise(p, bytes, MADV_POPULATE_WRITE) == 0;
#else
  bool populated = false;
#endif
  if (!populated) {
    volatile char* bytes_ptr = static_cast<char*>(p);
    for (std::size_t off = 0; off < bytes; off += page_size()) bytes_ptr[off] = 0;
  }
  slab.locked = lock && mlock(p, bytes) == 0;  // best effort: RLIMIT_MEMLOCK may refuse
  return slab;
}

class MmapMemory final : public HostMemory {
 public:
  Slab map(std::size_t bytes, const NumaPlacement& placement) override {
    return map_bound(bytes, placement, /*lock=*/true);
  }
  void unmap(const Slab& slab) noexcept override {
    if (slab.locked) munlock(slab.base, slab.bytes);
    if (munmap(slab.base, slab.bytes) != 0)
      log_error(str_cat("pinned pool: munmap failed: ", std::strerror(errno)));
  }
  HostMemoryKind kind() const override { return HostMemoryKind::kMmap; }
};

#ifdef STP_WITH_CUDA
class CudaRegisterMemory final : public HostMemory {
 public:
  Slab map(std::size_t bytes, const NumaPlacement& placement) override {
    Slab slab = map_bound(bytes, placement, /*lock=*/false);
    cudaError_t err = cudaHostRegister(slab.base, bytes, cudaHostRegisterPortable);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      munmap(slab.base, bytes);
      throw std::runtime_error(str_cat("pinned pool: cudaHostRegister of ", bytes,
                                       " bytes failed: ", cudaGetErrorString(err)));
    }
    slab.locked = true;
    return slab;
  }
  void unmap(const Slab& slab) noexcept override {
    STP_CUDA_WARN(cudaHostUnregister(slab.base));
    if (munmap(slab.base, slab.bytes) != 0)
      log_error(str_cat("pinned pool: munmap failed: ", std::strerror(errno)));
  }
  HostMemoryKind kind() const override { return HostMemoryKind::kCudaRegister; }
};

class CudaHostAllocMemory final : public HostMemory {
 public:
  Slab map(std::size_t bytes, const NumaPlacement& placement) override {
    int device = 0;
    STP_CUDA_CHECK(cudaGetDevice(&device));
    Slab slab;
    slab.bytes = bytes;
    cudaError_t err = cudaSuccess;
    // A fresh thread bound to the node (CPUs and memory policy) allocates, so the driver's
    // first touch places the pages there; the caller's own binding is left alone.
    std::thread worker([&] {
      bind_current_thread(placement);
#ifdef STP_HAVE_NUMA
      if (placement.node != kUnbound) {
        constexpr int kBits = 8 * sizeof(unsigned long);
        std::vector<unsigned long> mask(placement.node / kBits + 2, 0);
        mask[placement.node / kBits] |= 1UL << (placement.node % kBits);
        if (set_mempolicy(MPOL_BIND, mask.data(), mask.size() * kBits) == 0)
          slab.node = placement.node;
      }
#endif
      err = cudaSetDevice(device);
      if (err == cudaSuccess) err = cudaHostAlloc(&slab.base, bytes, cudaHostAllocPortable);
    });
    worker.join();
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      throw std::runtime_error(str_cat("pinned pool: cudaHostAlloc of ", bytes,
                                       " bytes failed: ", cudaGetErrorString(err)));
    }
    slab.locked = true;
    return slab;
  }
  void unmap(const Slab& slab) noexcept override { STP_CUDA_WARN(cudaFreeHost(slab.base)); }
  HostMemoryKind kind() const override { return HostMemoryKind::kCudaHostAlloc; }
};
#endif  // STP_WITH_CUDA

}  // namespace

std::unique_ptr<HostMemory> make_host_memory(HostMemoryKind kind) {
  if (kind == HostMemoryKind::kAuto)
    kind = cuda_device_available() ? HostMemoryKind::kCudaRegister : HostMemoryKind::kMmap;
  switch (kind) {
    case HostMemoryKind::kMmap: return std::make_unique<MmapMemory>();
    case HostMemoryKind::kCudaRegister:
    case HostMemoryKind::kCudaHostAlloc:
#ifdef STP_WITH_CUDA
      STP_CHECK(cuda_device_available(), "host memory kind ", to_string(kind),
                " needs a CUDA device; use mmap or auto");
      if (kind == HostMemoryKind::kCudaRegister) return std::make_unique<CudaRegisterMemory>();
      return std::make_unique<CudaHostAllocMemory>();
#else
      STP_CHECK(false, "host memory kind ", to_string(kind),
                " needs a CUDA build (-DSTP_WITH_CUDA=ON); use mmap or auto");
#endif
    case HostMemoryKind::kAuto: break;
  }
  STP_ASSERT(false, "unresolved HostMemoryKind ", static_cast<int>(kind));
}

}  // namespace stp::allocator
