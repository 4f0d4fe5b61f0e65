#include "allocator/backend.h"

#include "common/check.h"
#include "common/enum_names.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace stp::allocator {

bool cuda_device_available() noexcept {
#ifdef STP_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error for later calls
    return false;
  }
  return count > 0;
#else
  return false;
#endif
}

Backend resolve_backend(Backend requested) {
  switch (requested) {
    case Backend::kAuto: return cuda_device_available() ? Backend::kCuda : Backend::kHost;
    case Backend::kHost: return Backend::kHost;
    case Backend::kCuda:
#ifndef STP_WITH_CUDA
      STP_CHECK(false,
                "backend=cuda but this build has no CUDA (configure with -DSTP_WITH_CUDA=ON); "
                "use backend=host or auto");
#endif
      STP_CHECK(cuda_device_available(),
                "backend=cuda but no CUDA device is visible; use backend=host or auto");
      return Backend::kCuda;
  }
  STP_ASSERT(false, "unknown Backend value ", static_cast<int>(requested));
}

const char* to_string(Backend backend) {
  static constexpr EnumName<Backend> kNames[] = {
      {Backend::kAuto, "auto"}, {Backend::kHost, "host"}, {Backend::kCuda, "cuda"}};
  return name_of(kNames, backend);
}

}  // namespace stp::allocator
