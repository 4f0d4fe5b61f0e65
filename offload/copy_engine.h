// CopyEngine: asynchronous device<->host copies with completion events.
//
// copy() starts a batch of copies (regions) once every event in `after` has completed and
// returns the event that completes when the whole batch has ("start after event X", "event
// after this copy"). Copies of one direction start in submission order.
//
//   CUDA backend: one non-blocking stream per direction, so D2H and H2D run on separate DMA
//   engines at once; a batch waits for CUDA `after` events with a stream wait (no host wait; a
//   pending host event is waited for on the submitting thread), is issued as cudaMemcpyAsync
//   pieces of at most chunk_bytes, and is followed by an event recorded on its stream. The
//   event calls go through the DeviceOps table (device_ops.h, Note [Offload streams]). Host
//   memory must come from the pinned pool for the copies to be asynchronous.
//
//   Host backend: `threads` worker threads bound to the pool's NUMA node play the DMA engines.
//   A batch is cut into up to 4 pieces per worker, each >= min_piece_bytes, taken by the workers
//   from one FIFO queue (a worker the OS delays takes fewer); a worker waits for the batch's
//   `after` events before its piece. Every copy test runs
//   on this backend in CI.
//
// Ownership: the engine never owns the memory it copies. REQUIRES of every copy: the regions
// stay valid and untouched by others until the returned event completes.
//
// Thread-safety: copy() and synchronize() may be called from any thread.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "allocator/backend.h"
#include "allocator/copy_event.h"
#include "allocator/numa.h"
#include "offload/device_ops.h"

namespace stp::offload {

using allocator::Backend;
using allocator::CopyEvent;
using allocator::StreamHandle;

enum class Direction { kD2H, kH2D };
const char* to_string(Direction dir);

struct CopyRegion {
  void* dst = nullptr;
  const void* src = nullptr;
  std::size_t bytes = 0;
};

// When a batch began and completed (timed_copy): on the host engine, host marks its workers set
// when the first piece started copying (after the batch's `after` events) and when the last one
// finished; on CUDA, device marks recorded on the copy stream right after its waits for `after`
// and right after the batch's copies. Null marks: not timed.
struct CopySpan {
  TimeMark start;
  TimeMark end;
};

struct CopyEngineOptions {
  Backend backend = Backend::kAuto;                 // resolved once (allocator/backend.h)
  int threads = 2;                                  // host: worker threads, [1, 64]
  std::size_t min_piece_bytes = 1 << 20;            // host: smallest piece per worker, >= 4 KiB
  std::size_t chunk_bytes = std::size_t{16} << 20;  // cuda: largest cudaMemcpyAsync, >= 64 KiB
  allocator::NumaPlacement placement;  // host: workers bind to placement.cpus (unbound: none)
  int device = 0;                      // cuda: device the streams belong to
};

class CopyEngine {
 public:
  virtual ~CopyEngine() = default;

  // Starts the batch after `after`; returns its completion event. An empty batch (or one of
  // zero-byte regions) still completes only after `after`.
  virtual CopyEvent copy(Direction dir, std::span<const CopyRegion> regions,
                         std::span<const CopyEvent> after = {}) = 0;
  // copy() that also says in `span` when the batch began and completed, on the clock of the
  // executor's timeline (Note [Step clock] in engine/executor.h). The default does not time.
  virtual CopyEvent timed_copy(Direction dir, std::span<const CopyRegion> regions,
                               std::span<const CopyEvent> after, CopySpan& span) {
    span = {};
    return copy(dir, regions, after);
  }
  CopyEvent copy(Direction dir, void* dst, const void* src, std::size_t bytes,
                 std::span<const CopyEvent> after = {}) {
    CopyRegion r{dst, src, bytes};
    return copy(dir, std::span<const CopyRegion>(&r, 1), after);
  }

  // Host wait until every copy submitted so far has completed (tests, teardown, timing).
  virtual void synchronize() = 0;

  virtual Backend backend() const = 0;
  // CUDA: the stream of a direction (to order other work after it); host: nullptr.
  virtual StreamHandle stream(Direction dir) const = 0;
  // CUDA: the device the streams belong to; host: -1.
  virtual int device() const = 0;
};

// Validates the options (std::invalid_argument naming the field and its range). The CUDA
// backend makes its stream and event calls through `ops`.
std::unique_ptr<CopyEngine> make_copy_engine(const CopyEngineOptions& options,
                                             DeviceOps ops = runtime_device_ops());

}  // namespace stp::offload
