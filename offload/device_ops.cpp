#include "offload/device_ops.h"

#include "common/check.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#include "offload/cuda_device_guard.h"
#endif

namespace stp::offload {

DeviceOps runtime_device_ops() {
  DeviceOps ops;
  ops.current_stream = [](int) -> StreamHandle { return nullptr; };
  ops.record = [](StreamHandle stream, int device) {
#ifdef STP_WITH_CUDA
    // The event must belong to the stream's device, whichever device the thread has current.
    CudaDeviceGuard guard(device);
    return CopyEvent::record(stream);
#else
    (void)device;
    return CopyEvent::record(stream);  // throws: no CUDA in this build
#endif
  };
  ops.wait = [](const CopyEvent& event, StreamHandle stream) { event.block_stream(stream); };
  ops.synchronize = [](const CopyEvent& event) { event.synchronize(); };
  ops.synchronize_stream = [](StreamHandle stream, int device) {
#ifdef STP_WITH_CUDA
    CudaDeviceGuard guard(device);
    STP_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
#else
    (void)stream;
    STP_CHECK(false, "synchronize_stream(device=", device,
              "): this build has no CUDA; use the host backend");
#endif
  };
  return ops;
}

}  // namespace stp::offload
