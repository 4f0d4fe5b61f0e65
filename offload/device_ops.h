// DeviceOps: every CUDA stream and event call the offload path makes, as a table of functions.
//
// The CUDA contracts of offload (which stream an event is recorded on, which wait is a stream
// wait and which a host wait, that a device buffer is not reused while a copy still reads it)
// cannot be observed without a GPU. So the CopyEngine's CUDA backend, the Offloader and the
// engine's bridge (engine/activation_offload.h) make those calls only through this table; a
// CPU test swaps in a fake that logs each call and checks its stream and device
// (STYLE.md item 17). runtime_device_ops() is the real table of the CUDA runtime; the engine
// completes it with LibTorch's notion of the current stream and its caching allocator
// (engine::torch_device_ops()).
//
// Note [Offload streams]
// ~~~~~~~~~~~~~~~~~~~~~~
// Streams of one device:
//   compute   current_stream(device): where the model's kernels run (LibTorch's current stream
//             of the model's device; an embedder may have set one). The forward's "ready" event,
//             the reload's "memory allocated" event and the consumer's wait for a reload are on
//             this stream, never on the legacy default stream of whatever device the calling
//             thread happens to have current.
//   D2H, H2D  the CopyEngine's two copy streams (non-blocking), one per direction.
// Who waits on whom (all stream waits, cudaStreamWaitEvent: the host never blocks in a step):
//   D2H of a set      waits for `ready`, recorded on compute after the forward that wrote it;
//   H2D of a set      waits for `alloc`, recorded on compute when its new memory was allocated,
//                     and for the D2H of the same set (the host blocks it reads are complete);
//   compute           waits for the H2D before the backward reads the set.
// Memory: a D2H source is handed back to the caching allocator right after the D2H is queued,
// with record_stream(D2H stream), so the allocator reuses it only after the copy (stream-
// ordered release); a pinned host block is reused only after the events of every copy that used
// it completed (Note [Pinned pool design]). Host waits (synchronize, synchronize_stream) are
// for teardown, tests and timing only.
//
// Thread-safety: the functions of runtime_device_ops() may be called from any thread; a table
// is a value, copied into each user.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "allocator/copy_event.h"

namespace stp::offload {

using allocator::CopyEvent;
using allocator::StreamHandle;

// TimeMark: when a piece of work reached a point, for the measured timeline (Note [Step clock]
// in engine/executor.h). A shared handle, like CopyEvent:
//   null     TimeMark{}: not timed.
//   host     seconds on now_seconds()'s clock (common/clock.h): host_now() now, or
//            host_pending() filled in later, by the thread that did the work (a copy worker),
//            with set_first() (the earliest of several callers wins: a batch's start) or
//            set_last() (the latest wins: a batch's end). host_seconds() < 0 while pending.
//   device   an opaque timing event recorded on a stream (CUDA: a cudaEvent_t created with
//            timing enabled, destroyed with the last handle); only DeviceOps::elapsed reads it,
//            after the work ran.
// Thread-safety: set_first / set_last / host_seconds may race from any thread.
class TimeMark {
 public:
  TimeMark() = default;
  static TimeMark host_now();
  static TimeMark host_pending() { return TimeMark(std::make_shared<State>()); }
  static TimeMark device(std::shared_ptr<void> event) {
    auto s = std::make_shared<State>();
    s->event = std::move(event);
    return TimeMark(std::move(s));
  }

  void set_first() const;
  void set_last() const;

  bool is_null() const { return state_ == nullptr; }
  bool is_device() const { return state_ && state_->event; }
  double host_seconds() const { return state_ ? state_->host.load() : -1; }
  void* device_event() const { return state_ ? state_->event.get() : nullptr; }

 private:
  struct State {
    std::atomic<double> host{-1};  // host marks: seconds, -1 while pending
    std::shared_ptr<void> event;   // device marks
  };
  explicit TimeMark(std::shared_ptr<State> s) : state_(std::move(s)) {}
  std::shared_ptr<State> state_;
};

// The device allocator's figures since its peaks were last reset (DeviceOps::memory_stats).
struct DeviceMemoryStats {
  std::int64_t allocated_peak_bytes = 0;  // tensors' bytes, high-water mark
  std::int64_t reserved_peak_bytes = 0;   // bytes the caching allocator held from the driver
};

struct DeviceOps {
  // The compute stream of `device` (see Note [Offload streams]).
  std::function<StreamHandle(int device)> current_stream;
  // An event recorded on `stream` of `device`: it completes when the work queued there so far
  // has run.
  std::function<CopyEvent(StreamHandle stream, int device)> record;
  // Orders work queued on `stream` later after `event`; no host wait (a pending host event,
  // which a stream cannot wait for, is waited for on the calling thread).
  std::function<void(const CopyEvent& event, StreamHandle stream)> wait;
  // Host waits: until `event` completed; until every piece of work queued on `stream` has run.
  std::function<void(const CopyEvent& event)> synchronize;
  std::function<void(StreamHandle stream, int device)> synchronize_stream;
  // Tells the device memory allocator that `stream` uses the allocation `storage` (the engine's
  // handle of it: a c10::StorageImpl* for LibTorch): once freed, it is reused only after the
  // work queued on `stream` at the time of the free has run (Tensor.record_stream). Empty when
  // no allocator can be told; the Offloader then releases D2H sources only after the host saw
  // the copy complete.
  std::function<void(void* storage, StreamHandle stream, int device)> record_stream;

  // Timing (Note [Step clock] in engine/executor.h). mark: a device TimeMark recorded on
  // `stream` of `device`, reached when the work queued there so far has run (no host wait).
  // elapsed: seconds from `from` to `to`, two device marks of one device; a host wait until `to`
  // was reached, so it is called only after a step, never inside one.
  std::function<TimeMark(StreamHandle stream, int device)> mark;
  std::function<double(const TimeMark& from, const TimeMark& to)> elapsed;
  // The device allocator's peaks (CUDA: the caching allocator's allocated_bytes and
  // reserved_bytes, getDeviceStats) and their reset (resetPeakStats); host-side bookkeeping,
  // no host wait. Empty where no allocator can tell (the CPU): no figures rather than made-up
  // ones.
  std::function<DeviceMemoryStats(int device)> memory_stats;
  std::function<void(int device)> reset_peak_memory;
};

// The CUDA runtime's calls: record = cudaEventRecord (from the event pool, on `device`), wait =
// cudaStreamWaitEvent, synchronize = cudaEventSynchronize, synchronize_stream =
// cudaStreamSynchronize; current_stream is the legacy default stream (the runtime has no other
// notion of "current"); record_stream is empty. Host events (the host backend, tests) work with
// every entry. mark = cudaEventRecord of a new timing event, elapsed = cudaEventSynchronize(to)
// and cudaEventElapsedTime; memory_stats and reset_peak_memory are empty (the engine adds
// LibTorch's caching allocator). In a build without CUDA, record, mark, elapsed and
// synchronize_stream throw std::invalid_argument.
DeviceOps runtime_device_ops();

}  // namespace stp::offload
