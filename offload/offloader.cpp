#include "offload/offloader.h"

#include <chrono>
#include <exception>
#include <set>
#include <utility>

#include "common/check.h"

namespace stp::offload {

const char* to_string(SetState state) {
  switch (state) {
    case SetState::kAbsent: return "absent";
    case SetState::kToHost: return "to-host";
    case SetState::kOnHost: return "on-host";
    case SetState::kToDevice: return "to-device";
  }
  return "?";
}

namespace {

std::string name_of(ActivationKey key) {
  return str_cat("activation set (chunk ", key.chunk, ", mb ", key.mb, ")");
}

}  // namespace

Offloader::Offloader(allocator::PinnedHostPool& pool, CopyEngine& copies, DeviceOps ops)
    : pool_(pool),
      copies_(copies),
      ops_(std::move(ops)),
      stream_ordered_(copies.backend() == Backend::kCuda && static_cast<bool>(ops_.record_stream)) {
}

Offloader::~Offloader() {
  try {
    synchronize();
    for (auto& [key, set] : sets_)
      if (set.state == SetState::kOnHost) free_host_blocks(set, {});
  } catch (const std::exception& e) {
    log_error(str_cat("offloader teardown: ", e.what()));
  }
}

Offloader::Set& Offloader::find(ActivationKey key, const char* what) {
  auto it = sets_.find(key);
  STP_CHECK(it != sets_.end(), what, " of ", name_of(key),
            ": the set was never offloaded (or was already waited for); the schedule needs an "
            "OFFLOAD before its RELOAD and a RELOAD before its backward");
  return it->second;
}

void Offloader::offload(ActivationKey key, std::vector<SavedBuffer> buffers, CopyEvent ready) {
  poll();
  auto existing = sets_.find(key);
  STP_CHECK(existing == sets_.end(), "offload of ", name_of(key), ": already offloaded (state ",
            to_string(existing == sets_.end() ? SetState::kAbsent : existing->second.state), ")");
  STP_CHECK(!buffers.empty(), "offload of ", name_of(key), ": no buffers");
  std::set<std::string> names;
  for (const SavedBuffer& b : buffers) {
    STP_CHECK(b.bytes > 0 && b.device_ptr != nullptr, "offload of ", name_of(key), ": buffer '",
              b.name, "' has bytes=", b.bytes, " at ", b.device_ptr,
              "; needs bytes > 0 and a device pointer");
    STP_CHECK(names.insert(b.name).second, "offload of ", name_of(key), ": buffer name '", b.name,
              "' appears twice");
    STP_CHECK(!stream_ordered_ || b.storage != nullptr, "offload of ", name_of(key), ": buffer '",
              b.name, "' has no storage; the stream-ordered release records the D2H stream on it");
  }

  Set set;
  set.buffers.reserve(buffers.size());
  try {
    for (SavedBuffer& b : buffers) {
      allocator::HostBlock block = pool_.allocate(b.bytes);
      set.bytes += static_cast<std::int64_t>(b.bytes);
      set.buffers.push_back(Buffer{std::move(b), block});
    }
  } catch (...) {
    free_host_blocks(set, {});  // nothing was copied into them
    throw;
  }
  std::vector<CopyRegion> regions;
  regions.reserve(set.buffers.size());
  for (const Buffer& b : set.buffers)
    regions.push_back({b.host.ptr, b.saved.device_ptr, b.saved.bytes});
  // The D2H starts after `ready`: the forward that wrote the buffers has finished with them.
  const std::span<const CopyEvent> after(&ready, 1);
  if (log_copies_) {
    set.d2h = copies_.timed_copy(Direction::kD2H, regions, after, set.d2h_span);
    copy_log_.push_back({key, Direction::kD2H, set.bytes, set.d2h_span, false});
  } else {
    set.d2h = copies_.copy(Direction::kD2H, regions, after);
  }
  set.state = SetState::kToHost;
  device_.add(set.bytes);  // busy until the host sees the D2H complete (Note [Offload lifetime])
  host_bytes_ += set.bytes;
  ++stats_.offloads;
  Set& added = sets_.emplace(key, std::move(set)).first->second;
  if (stream_ordered_) {
    if (std::exception_ptr error = release_in_stream_order(added)) std::rethrow_exception(error);
  }
}

// The allocator learns that the D2H stream reads each source, then the engine drops it: the
// memory goes back in stream order, reused only after the copy, and no host wait is needed to
// keep the device budget (Note [Offload lifetime]). A buffer whose record_stream failed is not
// released (its memory must outlive the copy); the engine keeps it until the set leaves.
std::exception_ptr Offloader::release_in_stream_order(Set& set) {
  const StreamHandle d2h = copies_.stream(Direction::kD2H);
  std::exception_ptr first_error;
  for (Buffer& b : set.buffers) {
    try {
      ops_.record_stream(b.saved.storage, d2h, copies_.device());
      if (b.saved.release) b.saved.release();
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
    b.saved.release = nullptr;
    b.saved.device_ptr = nullptr;
    b.saved.storage = nullptr;
  }
  return first_error;
}

// kToHost -> kOnHost once the D2H completed: the host-observed release runs here (nothing is
// left to release after a stream-ordered one) and the set's device bytes leave the account.
std::exception_ptr Offloader::finish_offload(Set& set) {
  std::exception_ptr first_error;
  set.state = SetState::kOnHost;
  for (Buffer& b : set.buffers) {
    if (b.saved.release) {
      try {
        b.saved.release();  // the engine drops its device buffer (Note [Offload lifetime])
      } catch (...) {
        if (!first_error) first_error = std::current_exception();
      }
    }
    b.saved.release = nullptr;
    b.saved.device_ptr = nullptr;
  }
  device_.sub(set.bytes);
  stats_.offloaded_bytes += set.bytes;
  return first_error;
}

void Offloader::poll() {
  std::exception_ptr first_error;
  for (auto& [key, set] : sets_) {
    if (set.state != SetState::kToHost || !set.d2h.query()) continue;
    std::exception_ptr error = finish_offload(set);
    if (!first_error) first_error = error;
  }
  if (first_error) std::rethrow_exception(first_error);
}

void Offloader::reload(ActivationKey key, const AllocateFn& allocate, StreamHandle alloc_stream) {
  poll();
  Set& set = find(key, "reload");
  STP_CHECK(set.state == SetState::kToHost || set.state == SetState::kOnHost, "reload of ",
            name_of(key), ": already reloading (state ", to_string(set.state), ")");
  if (set.state == SetState::kToHost && !stream_ordered_) {
    // The D2H is still running, so the device buffers were never released: keep them and
    // drop the host copy once the D2H is done with the blocks (Note [Offload lifetime]).
    free_host_blocks(set, {set.d2h});
    host_bytes_ -= set.bytes;
    set.cancelled = true;
    set.state = SetState::kToDevice;
    ++stats_.cancelled;
    if (log_copies_)
      copy_log_.push_back({key, Direction::kH2D, set.bytes, {{}, set.d2h_span.end}, true});
    return;
  }
  if (set.state == SetState::kToHost) {
    // Stream-ordered: the originals already went back to the allocator, which reuses them only
    // after the D2H. Bring the set back from the blocks that D2H is still filling: the H2D
    // below waits for it on the copy stream.
    if (std::exception_ptr error = finish_offload(set)) std::rethrow_exception(error);
  }
  STP_CHECK(static_cast<bool>(allocate), "reload of ", name_of(key), ": no allocate function");
  std::int64_t allocated = 0;
  try {
    for (Buffer& b : set.buffers) {
      void* p = allocate(b.saved.name, b.saved.bytes);
      STP_CHECK(p != nullptr, "reload of ", name_of(key), ": allocate('", b.saved.name, "', ",
                b.saved.bytes, ") returned null");
      b.saved.device_ptr = p;
      device_.add(static_cast<std::int64_t>(b.saved.bytes));
      allocated += static_cast<std::int64_t>(b.saved.bytes);
    }
  } catch (...) {
    // The set stays on host; buffers allocated so far belong to the engine.
    device_.sub(allocated);
    for (Buffer& b : set.buffers) b.saved.device_ptr = nullptr;
    throw;
  }
  std::vector<CopyEvent> after;
  // CUDA: the new memory is the alloc stream's; the H2D must not overwrite it before the work
  // already queued there (which may still use the memory's previous owner) has run.
  if (copies_.backend() == Backend::kCuda)
    after.push_back(ops_.record(alloc_stream, copies_.device()));
  // The H2D reads the blocks the set's D2H wrote: never before that copy completed (it has
  // when the host saw the set on host; it may still run after a stream-ordered release).
  after.push_back(set.d2h);
  std::vector<CopyRegion> regions;
  regions.reserve(set.buffers.size());
  for (const Buffer& b : set.buffers)
    regions.push_back({b.saved.device_ptr, b.host.ptr, b.saved.bytes});
  if (log_copies_) {
    CopySpan span;
    set.h2d = copies_.timed_copy(Direction::kH2D, regions, after, span);
    copy_log_.push_back({key, Direction::kH2D, set.bytes, span, false});
  } else {
    set.h2d = copies_.copy(Direction::kH2D, regions, after);
  }
  // The pool reuses the blocks only after both copies completed (Note [Pinned pool design]).
  free_host_blocks(set, {set.d2h, set.h2d});
  host_bytes_ -= set.bytes;
  set.state = SetState::kToDevice;
  ++stats_.reloads;
  stats_.reloaded_bytes += set.bytes;
}

double Offloader::wait_impl(ActivationKey key, StreamHandle stream, bool host_wait) {
  poll();
  Set& set = find(key, "wait");
  STP_CHECK(set.state == SetState::kToDevice, "wait for ", name_of(key), " in state ",
            to_string(set.state), ": reload() it first");
  auto t0 = std::chrono::steady_clock::now();
  // A cancelled round trip hands the engine back its originals, which the D2H may still be
  // reading: the consumer is ordered after that copy, or the engine could free (or overwrite)
  // memory a copy still reads (Note [Offload lifetime]). Otherwise after the H2D.
  CopyEvent& done = set.cancelled ? set.d2h : set.h2d;
  if (host_wait || copies_.backend() != Backend::kCuda)
    ops_.synchronize(done);
  else
    ops_.wait(done, stream);  // the consumer's stream waits for the copy; no host wait
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  device_.sub(set.bytes);  // the engine holds these buffers from here on
  sets_.erase(key);
  return waited;
}

double Offloader::wait(ActivationKey key) { return wait_impl(key, nullptr, /*host_wait=*/true); }

void Offloader::wait(ActivationKey key, StreamHandle stream) {
  wait_impl(key, stream, /*host_wait=*/false);
}

void Offloader::synchronize() {
  copies_.synchronize();
  poll();
}

void Offloader::free_host_blocks(Set& set, std::vector<CopyEvent> uses) {
  for (Buffer& b : set.buffers) {
    if (!b.host) continue;
    pool_.free(b.host, uses);
    b.host = {};
  }
}

SetState Offloader::state(ActivationKey key) const {
  auto it = sets_.find(key);
  return it == sets_.end() ? SetState::kAbsent : it->second.state;
}

OffloaderStats Offloader::stats() const {
  OffloaderStats s = stats_;
  s.device_bytes = device_.resident();
  s.peak_device_bytes = device_.peak();
  s.host_bytes = host_bytes_;
  return s;
}

}  // namespace stp::offload
