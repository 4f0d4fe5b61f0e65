// CudaDeviceGuard: makes a CUDA device current for a scope and restores the caller's device.
// Internal to offload/ (the copy engine's streams and the event pool are per device); only
// sources compiled with STP_WITH_CUDA include it.
//
// Thread-safety: the current device is per thread; a guard belongs to the thread that made it.
#pragma once

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"

namespace stp::offload {

class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    STP_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) STP_CUDA_CHECK(cudaSetDevice(device));
  }
  ~CudaDeviceGuard() { STP_CUDA_WARN(cudaSetDevice(previous_)); }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace stp::offload
#endif  // STP_WITH_CUDA
