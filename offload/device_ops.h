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

#include <functional>

#include "allocator/copy_event.h"

namespace stp::offload {

using allocator::CopyEvent;
using allocator::StreamHandle;

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
};

// The CUDA runtime's calls: record = cudaEventRecord (from the event pool, on `device`), wait =
// cudaStreamWaitEvent, synchronize = cudaEventSynchronize, synchronize_stream =
// cudaStreamSynchronize; current_stream is the legacy default stream (the runtime has no other
// notion of "current"); record_stream is empty. Host events (the host backend, tests) work with
// every entry. In a build without CUDA, record and synchronize_stream throw
// std::invalid_argument.
DeviceOps runtime_device_ops();

}  // namespace stp::offload
