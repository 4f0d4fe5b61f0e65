#include "allocator/copy_event.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "common/check.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#endif

namespace stp::allocator {

#ifdef STP_WITH_CUDA
namespace {

// Process-wide pool of timing-free CUDA events, one free list per device. Leaked on purpose:
// destroying events after the CUDA context is torn down at exit is an error. No CUDA call is
// made while mu_ is held (STYLE.md, PyTorch's caching allocators).
class EventPool {
 public:
  static EventPool& instance() {
    static EventPool* pool = new EventPool();
    return *pool;
  }

  cudaEvent_t acquire(int device) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (device < static_cast<int>(free_.size()) && !free_[device].empty()) {
        cudaEvent_t ev = free_[device].back();
        free_[device].pop_back();
        return ev;
      }
    }
    cudaEvent_t ev = nullptr;
    STP_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    std::lock_guard<std::mutex> lock(mu_);
    ++created_;
    return ev;
  }

  void release(int device, cudaEvent_t ev) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    if (device >= static_cast<int>(free_.size())) free_.resize(device + 1);
    free_[device].push_back(ev);
  }

  CopyEvent::PoolStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    CopyEvent::PoolStats s;
    s.created = created_;
    for (const auto& list : free_) s.idle += static_cast<int>(list.size());
    return s;
  }

 private:
  std::mutex mu_;
  std::vector<std::vector<cudaEvent_t>> free_;  // GUARDED_BY(mu_), indexed by device
  int created_ = 0;                             // GUARDED_BY(mu_)
};

}  // namespace
#endif  // STP_WITH_CUDA

struct CopyEvent::State {
  enum class Kind { kHost, kCuda } kind = Kind::kHost;

  // kHost: parts still to be signalled. Complete at 0. The mutex/condvar only serve
  // synchronize(); query() reads the atomic.
  std::atomic<int> pending{0};
  std::mutex mu;
  std::condition_variable cv;

  // kCuda
  void* cuda_event = nullptr;
  int device = 0;

  ~State() {
#ifdef STP_WITH_CUDA
    if (kind == Kind::kCuda && cuda_event != nullptr)
      EventPool::instance().release(device, static_cast<cudaEvent_t>(cuda_event));
#endif
  }
};

CopyEvent CopyEvent::host(int parts) {
  STP_CHECK(parts >= 1, "CopyEvent::host(parts=", parts, "): parts must be >= 1");
  auto state = std::make_shared<State>();
  state->kind = State::Kind::kHost;
  state->pending.store(parts, std::memory_order_relaxed);
  return CopyEvent(std::move(state));
}

CopyEvent CopyEvent::record(StreamHandle stream) {
#ifdef STP_WITH_CUDA
  auto state = std::make_shared<State>();
  state->kind = State::Kind::kCuda;
  STP_CUDA_CHECK(cudaGetDevice(&state->device));
  cudaEvent_t ev = EventPool::instance().acquire(state->device);
  state->cuda_event = ev;  // owned by state from here: returned to the pool on any exit
  STP_CUDA_CHECK(cudaEventRecord(ev, static_cast<cudaStream_t>(stream)));
  return CopyEvent(std::move(state));
#else
  (void)stream;
  STP_CHECK(false, "CopyEvent::record: this build has no CUDA; use the host backend");
#endif
}

void CopyEvent::signal() const {
  STP_ASSERT(is_host(), "signal() on a ", is_null() ? "null" : "CUDA", " event");
  int before = state_->pending.fetch_sub(1, std::memory_order_acq_rel);
  STP_ASSERT(before >= 1, "signal() on a host event that was already complete");
  if (before == 1) {
    // Take the mutex so a waiter between its check and its wait cannot miss the notify.
    std::lock_guard<std::mutex> lock(state_->mu);
    state_->cv.notify_all();
  }
}

bool CopyEvent::query() const {
  if (!state_) return true;
  if (state_->kind == State::Kind::kHost)
    return state_->pending.load(std::memory_order_acquire) == 0;
#ifdef STP_WITH_CUDA
  cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(state_->cuda_event));
  if (err == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return false;
  }
  STP_CUDA_CHECK(err);
  return true;
#else
  STP_ASSERT(false, "CUDA event in a build without CUDA");
#endif
}

void CopyEvent::synchronize() const {
  if (!state_) return;
  if (state_->kind == State::Kind::kHost) {
    if (state_->pending.load(std::memory_order_acquire) == 0) return;
    std::unique_lock<std::mutex> lock(state_->mu);
    state_->cv.wait(lock, [&] { return state_->pending.load(std::memory_order_acquire) == 0; });
    return;
  }
#ifdef STP_WITH_CUDA
  STP_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(state_->cuda_event)));
#endif
}

void CopyEvent::block_stream(StreamHandle stream) const {
  if (!state_) return;
  if (state_->kind == State::Kind::kHost) {
    synchronize();
    return;
  }
#ifdef STP_WITH_CUDA
  STP_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                     static_cast<cudaEvent_t>(state_->cuda_event), 0));
#else
  (void)stream;
#endif
}

bool CopyEvent::is_host() const { return state_ && state_->kind == State::Kind::kHost; }
bool CopyEvent::is_cuda() const { return state_ && state_->kind == State::Kind::kCuda; }
void* CopyEvent::cuda_event() const { return is_cuda() ? state_->cuda_event : nullptr; }

CopyEvent::PoolStats CopyEvent::cuda_pool_stats() {
#ifdef STP_WITH_CUDA
  return EventPool::instance().stats();
#else
  return {};
#endif
}

}  // namespace stp::allocator
