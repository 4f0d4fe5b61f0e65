// Offloader: moves activation sets — the named buffers one chunk's forward saved for one
// microbatch — to pinned host memory and back, and accounts the device bytes it holds.
//
// Note [Offload lifetime]
// ~~~~~~~~~~~~~~~~~~~~~~~
// The engine owns every device buffer (tensors); the offloader holds raw pointers, byte counts
// and two kinds of closures the engine supplies:
//   release()                 drops one device buffer (the engine forgets its tensor);
//   allocate(name, bytes)     returns device memory of a new buffer the engine keeps.
// Both run on the thread that calls the Offloader, never on a copy thread. A set goes through
// these states:
//
//   offload(key, buffers, ready)   ─►  kToHost   D2H of every buffer into pool blocks, started
//                                                after `ready` (the forward that wrote them)
//   the D2H completed (poll())     ─►  kOnHost   device bytes of the set leave device_bytes()
//   reload(key, allocate, s)       ─►  kToDevice allocate() for every buffer, H2D started after
//                                                the allocations (an event on stream s) and
//                                                after the set's D2H (it reads the blocks that
//                                                copy wrote); the host blocks are freed at once
//                                                with both copy events: the pool reuses them
//                                                only after the copies (Note [Pinned pool
//                                                design])
//   wait(key) / wait(key, stream)  ─►  done      the consumer is ordered after the H2D; the
//                                                set leaves the offloader
//
// When is a D2H source released? Two ways, fixed per Offloader:
//   stream-ordered (CUDA with DeviceOps::record_stream): right after offload() queued the D2H,
//       record_stream(storage, D2H stream) tells the engine's allocator that the copy reads
//       the buffer, then release() runs. The allocator reuses the memory only after the work
//       queued on the D2H stream so far, so no device buffer is reused while a copy reads it,
//       and nobody waits on the host (Note [Offload streams] in device_ops.h). A reload of a
//       kToHost set is an ordinary reload: its H2D waits for the D2H on the copy stream.
//   host-observed (host backend; CUDA without record_stream): release() runs when poll() sees
//       the D2H complete. reload() while the D2H is still running (kToHost) then cancels the
//       round trip: release() and allocate() are not called, the engine's original buffers
//       stay valid, and the host blocks are freed with the D2H event. wait() orders the
//       consumer after that D2H (it still reads the originals, which the engine may free or
//       overwrite once it has them back).
// So after wait() the engine's buffers are right and untouched by any copy in every case: the
// originals (cancelled) or the ones allocate() returned (reloaded).
//
// Accounting (host-side, exact as the host sees the copies, any backend): device_bytes()
// counts the bytes of device buffers the offloader is responsible for — kToHost sets whose D2H
// the host has not yet seen complete (released in stream order or not: the memory is busy
// until the copy ran) and kToDevice buffers allocated but not yet waited for;
// peak_device_bytes() is its high-water mark. host_bytes() counts the data bytes parked in
// pool blocks (kToHost and kOnHost sets).
//
// Thread-safety: not thread-safe; one rank's executor thread calls every method (the copies
// themselves run on the CopyEngine's streams or threads).
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "allocator/device_memory.h"
#include "allocator/pinned_host_pool.h"
#include "offload/copy_engine.h"
#include "offload/device_ops.h"

namespace stp::offload {

// Identifies an activation set: (local chunk, microbatch), as Instr::ref of OFFLOAD/RELOAD.
struct ActivationKey {
  int chunk = 0;
  int mb = 0;
  auto operator<=>(const ActivationKey&) const = default;
};

// One saved device buffer.
struct SavedBuffer {
  std::string name;               // the ActivationSet field name
  void* device_ptr = nullptr;     // start of its device memory
  std::size_t bytes = 0;          // > 0
  std::function<void()> release;  // drops the device memory; may be empty (nothing to drop)
  void* storage = nullptr;        // the allocation holding it, for DeviceOps::record_stream; needed
                                  // by the stream-ordered release only (Note [Offload lifetime])
};

// Reload's device memory: a new buffer of `bytes` for field `name`, owned by the engine.
using AllocateFn = std::function<void*(const std::string& name, std::size_t bytes)>;

// One copy the offloader started, for the measured timeline (Offloader::log_copies).
struct CopyRecord {
  ActivationKey key;
  Direction dir = Direction::kD2H;
  std::int64_t bytes = 0;
  CopySpan span;           // when the copy began and completed (CopyEngine::timed_copy)
  bool cancelled = false;  // a reload that found the D2H still running: no H2D ran; span.start
                           // is null and span.end the D2H's end, when the originals are free
};

enum class SetState { kAbsent, kToHost, kOnHost, kToDevice };
const char* to_string(SetState state);

struct OffloaderStats {
  std::int64_t device_bytes = 0;  // see Note [Offload lifetime]
  std::int64_t peak_device_bytes = 0;
  std::int64_t host_bytes = 0;
  std::int64_t offloaded_bytes = 0;  // total bytes whose D2H completed and device was released
  std::int64_t reloaded_bytes = 0;   // total bytes copied back by H2D
  int offloads = 0;                  // offload() calls
  int reloads = 0;                   // reload() calls that copied
  int cancelled = 0;                 // reload() calls that found the D2H still running
};

class Offloader {
 public:
  // Both must outlive the Offloader. `ops`: the stream and event calls (device_ops.h); with a
  // CUDA copy engine and ops.record_stream set, D2H sources are released in stream order.
  Offloader(allocator::PinnedHostPool& pool, CopyEngine& copies,
            DeviceOps ops = runtime_device_ops());
  // Waits for outstanding copies, runs pending release() closures, frees host blocks.
  ~Offloader();
  Offloader(const Offloader&) = delete;
  Offloader& operator=(const Offloader&) = delete;

  // Starts the D2H of `buffers` after `ready`; with stream-ordered release, releases them.
  // REQUIRES: key absent, buffers non-empty with unique names and bytes > 0, and a storage for
  // each with stream-ordered release (std::invalid_argument). Throws PinnedPoolOutOfMemory
  // with nothing changed when the pool is full.
  void offload(ActivationKey key, std::vector<SavedBuffer> buffers, CopyEvent ready = {});
  // Starts the H2D (a prefetch). alloc_stream: the CUDA stream the allocate() memory belongs
  // to; the H2D starts after the work already queued there. REQUIRES: key is kToHost or kOnHost.
  void reload(ActivationKey key, const AllocateFn& allocate, StreamHandle alloc_stream = nullptr);
  // Host wait until the set's buffers are on the device; the set leaves the offloader.
  // Returns the seconds the calling thread was blocked. REQUIRES: reload(key) was called and
  // the set was not waited for yet (std::invalid_argument otherwise).
  double wait(ActivationKey key);
  // Orders `stream` after the set's H2D (CUDA: a stream wait, no host wait; host backend: a
  // host wait). Same REQUIRES.
  void wait(ActivationKey key, StreamHandle stream);
  // Runs release() of sets whose D2H completed. Every method above calls it first; the engine
  // may call it between instructions to free device memory early.
  void poll();
  // Host wait for every copy, then poll() (tests, teardown).
  void synchronize();

  // When on, every offload() and reload() times its copy (CopyEngine::timed_copy) and appends
  // a CopyRecord that take_copy_log() hands out, oldest first. Off by default.
  void log_copies(bool on) { log_copies_ = on; }
  std::vector<CopyRecord> take_copy_log() { return std::exchange(copy_log_, {}); }

  // True when D2H sources are released in stream order (Note [Offload lifetime]).
  bool releases_in_stream_order() const { return stream_ordered_; }
  SetState state(ActivationKey key) const;
  OffloaderStats stats() const;
  std::int64_t device_bytes() const { return device_.resident(); }
  std::int64_t peak_device_bytes() const { return device_.peak(); }
  void reset_peak() { device_.reset_peak(); }

 private:
  struct Buffer {
    SavedBuffer saved;          // device_ptr: the current device memory of the field
    allocator::HostBlock host;  // its copy in the pool
  };
  struct Set {
    SetState state = SetState::kToHost;
    std::vector<Buffer> buffers;
    CopyEvent d2h;           // completes when every buffer is on host
    CopyEvent h2d;           // completes when every buffer is back (kToDevice)
    CopySpan d2h_span;       // with log_copies: when the D2H began and completed
    bool cancelled = false;  // kToDevice without a copy: the originals never left
    std::int64_t bytes = 0;  // sum of buffer bytes
  };

  Set& find(ActivationKey key, const char* what);
  std::exception_ptr release_in_stream_order(Set& set);
  std::exception_ptr finish_offload(Set& set);
  void free_host_blocks(Set& set, std::vector<CopyEvent> uses);
  double wait_impl(ActivationKey key, StreamHandle stream, bool host_wait);

  allocator::PinnedHostPool& pool_;
  CopyEngine& copies_;
  const DeviceOps ops_;
  const bool stream_ordered_;  // D2H sources released right after their copy was queued
  std::map<ActivationKey, Set> sets_;
  allocator::MemoryAccount device_;  // device bytes the offloader is responsible for
  OffloaderStats stats_;             // counters; byte gauges come from device_ and host_bytes_
  std::int64_t host_bytes_ = 0;
  bool log_copies_ = false;
  std::vector<CopyRecord> copy_log_;
};

}  // namespace stp::offload
