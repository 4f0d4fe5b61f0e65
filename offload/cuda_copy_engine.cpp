// The CUDA backend of CopyEngine: one non-blocking stream per direction (copy_engine.h). Every
// event and stream-synchronising call goes through DeviceOps (Note [Offload streams]).
#include <algorithm>
#include <memory>
#include <utility>

#include "common/check.h"
#include "offload/copy_engine.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#include "offload/cuda_device_guard.h"
#endif

namespace stp::offload {

#ifdef STP_WITH_CUDA
namespace {

class CudaCopyEngine final : public CopyEngine {
 public:
  CudaCopyEngine(const CopyEngineOptions& options, DeviceOps ops)
      : options_(options), ops_(std::move(ops)) {
    CudaDeviceGuard guard(options.device);
    STP_CUDA_CHECK(cudaStreamCreateWithFlags(&d2h_, cudaStreamNonBlocking));
    STP_CUDA_CHECK(cudaStreamCreateWithFlags(&h2d_, cudaStreamNonBlocking));
  }

  ~CudaCopyEngine() override {
    try {
      synchronize();  // teardown: no copy may outlive its streams
    } catch (const std::exception& e) {
      log_error(str_cat("cuda copy engine teardown: ", e.what()));
    }
    STP_CUDA_WARN(cudaStreamDestroy(d2h_));
    STP_CUDA_WARN(cudaStreamDestroy(h2d_));
  }

  CopyEvent copy(Direction dir, std::span<const CopyRegion> regions,
                 std::span<const CopyEvent> after) override {
    return submit(dir, regions, after, nullptr);
  }

  CopyEvent timed_copy(Direction dir, std::span<const CopyRegion> regions,
                       std::span<const CopyEvent> after, CopySpan& span) override {
    return submit(dir, regions, after, &span);
  }

  void synchronize() override {
    ops_.synchronize_stream(d2h_, options_.device);
    ops_.synchronize_stream(h2d_, options_.device);
  }

  Backend backend() const override { return Backend::kCuda; }
  StreamHandle stream(Direction dir) const override { return dir == Direction::kD2H ? d2h_ : h2d_; }
  int device() const override { return options_.device; }

 private:
  // `span`: timed_copy's marks, a pair of timing events on the copy stream around the copies
  // (after the waits, so the start is when the stream began copying).
  CopyEvent submit(Direction dir, std::span<const CopyRegion> regions,
                   std::span<const CopyEvent> after, CopySpan* span) {
    CudaDeviceGuard guard(options_.device);
    cudaStream_t s = dir == Direction::kD2H ? d2h_ : h2d_;
    // The copy stream waits for each prerequisite (the forward that wrote the buffers, the
    // allocation of a reload's memory, the D2H that filled a reload's host blocks); a host
    // event can only be waited for here, on the host.
    for (const CopyEvent& e : after) ops_.wait(e, s);
    if (span) span->start = ops_.mark(s, options_.device);
    const cudaMemcpyKind kind =
        dir == Direction::kD2H ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
    for (const CopyRegion& r : regions) {
      for (std::size_t off = 0; off < r.bytes; off += options_.chunk_bytes) {
        std::size_t n = std::min(options_.chunk_bytes, r.bytes - off);
        STP_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(r.dst) + off,
                                       static_cast<const char*>(r.src) + off, n, kind, s));
      }
    }
    if (span) span->end = ops_.mark(s, options_.device);
    // Consumers (the pool, the offloader, the compute stream) wait for this event.
    return ops_.record(s, options_.device);
  }

  const CopyEngineOptions options_;
  const DeviceOps ops_;
  cudaStream_t d2h_ = nullptr;  // device -> host copies, in submission order
  cudaStream_t h2d_ = nullptr;  // host -> device copies, in submission order
};

}  // namespace

std::unique_ptr<CopyEngine> make_cuda_copy_engine(const CopyEngineOptions& options, DeviceOps ops) {
  return std::make_unique<CudaCopyEngine>(options, std::move(ops));
}

#else  // !STP_WITH_CUDA

std::unique_ptr<CopyEngine> make_cuda_copy_engine(const CopyEngineOptions&, DeviceOps) {
  STP_ASSERT(false, "CUDA copy engine requested in a build without CUDA");
}

#endif

}  // namespace stp::offload
