// now_seconds(): the monotonic host clock in seconds, for durations measured on the host
// (step times, waits). On CUDA a host reading says when work was enqueued, not when it ran:
// device timings need events or a device synchronisation first.
#pragma once

#include <chrono>

namespace stp {

inline double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace stp
