// The CUDA backend of CopyEngine: one non-blocking stream per direction (copy_engine.h).
#include <memory>

#include "common/check.h"
#include "offload/copy_engine.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#endif

namespace stp::offload {

#ifdef STP_WITH_CUDA
namespace {

// Makes `device` current for a scope and restores the caller's device.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    STP_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) STP_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { STP_CUDA_WARN(cudaSetDevice(previous_)); }

 private:
  int previous_ = 0;
};

class CudaCopyEngine final : public CopyEngine {
 public:
  explicit CudaCopyEngine(const CopyEngineOptions& options) : options_(options) {
    DeviceGuard guard(options.device);
    STP_CUDA_CHECK(cudaStreamCreateWithFlags(&d2h_, cudaStreamNonBlocking));
    STP_CUDA_CHECK(cudaStreamCreateWithFlags(&h2d_, cudaStreamNonBlocking));
  }

  ~CudaCopyEngine() override {
    STP_CUDA_WARN(cudaStreamSynchronize(d2h_));
    STP_CUDA_WARN(cudaStreamSynchronize(h2d_));
    STP_CUDA_WARN(cudaStreamDestroy(d2h_));
    STP_CUDA_WARN(cudaStreamDestroy(h2d_));
  }

  CopyEvent copy(Direction dir, std::span<const CopyRegion> regions,
                 std::span<const CopyEvent> after) override {
    DeviceGuard guard(options_.device);
    cudaStream_t s = dir == Direction::kD2H ? d2h_ : h2d_;
    // The copy stream waits for each prerequisite (e.g. the forward that wrote the buffers on
    // the compute stream); a host event can only be waited for here, on the host.
    for (const CopyEvent& e : after) e.block_stream(s);
    const cudaMemcpyKind kind =
        dir == Direction::kD2H ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice;
    for (const CopyRegion& r : regions) {
      for (std::size_t off = 0; off < r.bytes; off += options_.chunk_bytes) {
        std::size_t n = std::min(options_.chunk_bytes, r.bytes - off);
        STP_CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(r.dst) + off,
                                       static_cast<const char*>(r.src) + off, n, kind, s));
      }
    }
    // Consumers (the pool, the offloader, the compute stream) wait for this event.
    return CopyEvent::record(s);
  }

  void synchronize() override {
    DeviceGuard guard(options_.device);
    STP_CUDA_CHECK(cudaStreamSynchronize(d2h_));
    STP_CUDA_CHECK(cudaStreamSynchronize(h2d_));
  }

  Backend backend() const override { return Backend::kCuda; }
  StreamHandle stream(Direction dir) const override { return dir == Direction::kD2H ? d2h_ : h2d_; }

 private:
  const CopyEngineOptions options_;
  cudaStream_t d2h_ = nullptr;  // device -> host copies, in submission order
  cudaStream_t h2d_ = nullptr;  // host -> device copies, in submission order
};

}  // namespace

std::unique_ptr<CopyEngine> make_cuda_copy_engine(const CopyEngineOptions& options) {
  return std::make_unique<CudaCopyEngine>(options);
}

#else  // !STP_WITH_CUDA

std::unique_ptr<CopyEngine> make_cuda_copy_engine(const CopyEngineOptions&) {
  STP_ASSERT(false, "CUDA copy engine requested in a build without CUDA");
}

#endif

}  // namespace stp::offload
