// Backend: which hardware moves and holds the bytes — the CUDA runtime or plain host memory
// and threads — chosen once at run time. Every CUDA build also carries the host backend, so a
// CUDA build on a machine without a GPU (CI) runs every allocator and offload test on it.
//
// Thread-safety: free functions; safe from any thread.
#pragma once

namespace stp::allocator {

enum class Backend {
  kAuto,  // kCuda when this build has CUDA and a device is visible, else kHost
  kHost,  // "device" memory is ordinary host memory; copies run on worker threads
  kCuda,  // device memory is CUDA memory; copies are cudaMemcpyAsync on copy streams
};

// An opaque CUDA stream (a cudaStream_t; nullptr is the legacy default stream). Kept as void*
// so that these headers compile without the CUDA toolkit. Ignored by the host backend.
using StreamHandle = void*;

// True when this build has CUDA (STP_WITH_CUDA) and cudaGetDeviceCount() reports a device.
bool cuda_device_available() noexcept;

// kAuto -> kCuda or kHost as above. Throws std::invalid_argument for kCuda when no device is
// available (naming whether the build lacks CUDA or the machine lacks a GPU).
Backend resolve_backend(Backend requested);

const char* to_string(Backend backend);

}  // namespace stp::allocator
