// CopyEvent: "this piece of asynchronous work has completed", on either backend.
//
//   null   CopyEvent{}: already complete. What the host executor passes as the ready event of
//          a forward that ran synchronously on its own thread.
//   host   CopyEvent::host(parts): complete once signal() was called `parts` times. The host
//          copy engine's worker threads signal it when the last piece of a copy is done; tests
//          use it as a controllable fake ("the copy is still in flight until I say so").
//   cuda   CopyEvent::record(stream): a cudaEvent_t taken from a process-wide pool (created
//          with cudaEventDisableTiming) and recorded on `stream`; it goes back to the pool
//          when the last handle to it is dropped.
//
// A CopyEvent is a shared handle: copies share one state, and the state lives as long as any
// copy. query() never blocks; synchronize() blocks the calling thread; block_stream(s) makes a
// CUDA stream wait for the event with no host wait (a host event makes it a host wait, since a
// stream cannot wait on a host flag).
//
// Thread-safety: every method may be called from any thread, on shared copies too.
#pragma once

#include <memory>

#include "allocator/backend.h"

namespace stp::allocator {

class CopyEvent {
 public:
  CopyEvent() = default;  // null event: complete

  // A pending host event completed by `parts` >= 1 calls to signal().
  static CopyEvent host(int parts = 1);
  // A CUDA event from the pool, recorded on `stream` of the current device. Throws
  // std::invalid_argument in a build without CUDA.
  static CopyEvent record(StreamHandle stream);

  // Host events only: one part done. REQUIRES: a host event with parts still pending.
  void signal() const;

  bool query() const;        // true when complete; never blocks
  void synchronize() const;  // returns when complete
  // Orders later work on `stream` after this event: cudaStreamWaitEvent for a CUDA event,
  // synchronize() for a pending host event, nothing for a complete one.
  void block_stream(StreamHandle stream) const;

  bool is_null() const { return state_ == nullptr; }
  bool is_host() const;
  bool is_cuda() const;
  void* cuda_event() const;  // the cudaEvent_t of a CUDA event, else nullptr

  // Events of the process-wide CUDA pool: created so far and currently idle in the pool.
  struct PoolStats {
    int created = 0;
    int idle = 0;
  };
  static PoolStats cuda_pool_stats();

  struct State;  // defined in copy_event.cpp

 private:
  explicit CopyEvent(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

}  // namespace stp::allocator
