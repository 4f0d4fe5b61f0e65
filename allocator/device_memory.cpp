#include "allocator/device_memory.h"

#include <cstdlib>
#include <new>

#include "common/bytes.h"
#include "common/check.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#endif

namespace stp::allocator {

namespace {

class HostDeviceAllocator final : public DeviceAllocator {
 public:
  void* allocate(std::size_t bytes) override {
    STP_CHECK(bytes > 0, "device allocate(bytes=0): bytes must be > 0");
    constexpr std::size_t kAlign = 64;
    void* p = std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
    if (!p)
      throw std::runtime_error(str_cat("host \"device\" memory: cannot allocate ", bytes,
                                       " bytes (", format_bytes(static_cast<double>(bytes)), ")"));
    return p;
  }
  void deallocate(void* ptr) noexcept override { std::free(ptr); }
  Backend backend() const override { return Backend::kHost; }
};

#ifdef STP_WITH_CUDA
class CudaDeviceAllocator final : public DeviceAllocator {
 public:
  void* allocate(std::size_t bytes) override {
    STP_CHECK(bytes > 0, "device allocate(bytes=0): bytes must be > 0");
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      (void)cudaGetLastError();
      throw std::runtime_error(str_cat("cudaMalloc of ", bytes, " bytes (",
                                       format_bytes(static_cast<double>(bytes)),
                                       ") failed: ", cudaGetErrorString(err)));
    }
    return p;
  }
  void deallocate(void* ptr) noexcept override { STP_CUDA_WARN(cudaFree(ptr)); }
  Backend backend() const override { return Backend::kCuda; }
};
#endif

}  // namespace

std::unique_ptr<DeviceAllocator> make_device_allocator(Backend backend) {
  switch (resolve_backend(backend)) {
    case Backend::kCuda:
#ifdef STP_WITH_CUDA
      return std::make_unique<CudaDeviceAllocator>();
#endif
    case Backend::kHost:
    case Backend::kAuto: break;
  }
  return std::make_unique<HostDeviceAllocator>();
}

}  // namespace stp::allocator
