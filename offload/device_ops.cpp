#include "offload/device_ops.h"

#include <algorithm>

#include "common/check.h"
#include "common/clock.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#include "offload/cuda_device_guard.h"
#endif

namespace stp::offload {

TimeMark TimeMark::host_now() {
  TimeMark m = host_pending();
  m.state_->host.store(now_seconds());
  return m;
}

void TimeMark::set_first() const {
  STP_ASSERT(state_ && !state_->event, "set_first() on a null or device time mark");
  double unset = -1;
  state_->host.compare_exchange_strong(unset, now_seconds());
}

void TimeMark::set_last() const {
  STP_ASSERT(state_ && !state_->event, "set_last() on a null or device time mark");
  const double now = now_seconds();
  double seen = state_->host.load();
  while (seen < now && !state_->host.compare_exchange_weak(seen, now)) {
  }
}

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
  ops.mark = [](StreamHandle stream, int device) -> TimeMark {
#ifdef STP_WITH_CUDA
    CudaDeviceGuard guard(device);
    cudaEvent_t ev = nullptr;
    STP_CUDA_CHECK(cudaEventCreate(&ev));  // timing enabled, unlike the pool's events
    std::shared_ptr<void> owned(
        ev, [](void* e) { STP_CUDA_WARN(cudaEventDestroy(static_cast<cudaEvent_t>(e))); });
    STP_CUDA_CHECK(cudaEventRecord(ev, static_cast<cudaStream_t>(stream)));
    return TimeMark::device(std::move(owned));
#else
    (void)stream;
    STP_CHECK(false, "mark(device=", device, "): this build has no CUDA; use the host clock");
#endif
  };
  ops.elapsed = [](const TimeMark& from, const TimeMark& to) -> double {
    STP_CHECK(from.is_device() && to.is_device(), "elapsed() between host time marks");
#ifdef STP_WITH_CUDA
    auto a = static_cast<cudaEvent_t>(from.device_event());
    auto b = static_cast<cudaEvent_t>(to.device_event());
    STP_CUDA_CHECK(cudaEventSynchronize(a));
    STP_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    STP_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    return static_cast<double>(ms) / 1e3;
#else
    STP_CHECK(false, "elapsed(): this build has no CUDA");
#endif
  };
  return ops;
}

}  // namespace stp::offload
