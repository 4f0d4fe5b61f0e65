#include "allocator/pinned_host_pool.h"

#include <algorithm>
#include <tuple>

#include "allocator/size_classes.h"
#include "common/bytes.h"
#include "common/check.h"

namespace stp::allocator {

namespace {

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

std::string bytes_text(std::size_t n) { return format_bytes(static_cast<double>(n)); }

}  // namespace

PinnedHostPool::PinnedHostPool(const PinnedPoolOptions& options)
    : PinnedHostPool(options, make_host_memory(options.memory)) {}

PinnedHostPool::PinnedHostPool(const PinnedPoolOptions& options, std::unique_ptr<HostMemory> memory)
    : options_(options), memory_(std::move(memory)) {
  STP_CHECK(options.capacity_bytes >= 1, "pinned pool capacity_bytes=", options.capacity_bytes,
            " must be >= 1");
  STP_CHECK(options.slab_bytes >= 1, "pinned pool slab_bytes=", options.slab_bytes,
            " must be >= 1");
  STP_CHECK(options.numa_node >= kUnbound, "pinned pool numa_node=", options.numa_node,
            " must be a node index >= 0 or -1 (unbound)");
  STP_ASSERT(memory_ != nullptr, "PinnedHostPool without HostMemory");
  map_slabs();
}

void PinnedHostPool::map_slabs() {
  const std::size_t page = page_size();
  const std::size_t capacity = round_up(options_.capacity_bytes, page);
  const std::size_t slab = round_up(options_.slab_bytes, page);
  NumaPlacement placement;
  placement.node = options_.numa_node;
  try {
    for (std::size_t mapped = 0; mapped < capacity;) {
      slabs_.push_back(memory_->map(std::min(slab, capacity - mapped), placement));
      mapped += slabs_.back().bytes;
    }
  } catch (...) {
    for (const Slab& s : slabs_) memory_->unmap(s);
    throw;
  }
  // Single-threaded until the constructor returns; the lock keeps the annotations honest.
  std::lock_guard<std::mutex> lock(mu_);
  free_by_offset_.resize(slabs_.size());
  for (int i = 0; i < static_cast<int>(slabs_.size()); ++i) {
    add_free_range_locked(i, 0, slabs_[i].bytes);
    stats_.reserved_bytes += slabs_[i].bytes;
    if (slabs_[i].locked) stats_.locked_bytes += slabs_[i].bytes;
  }
  stats_.slabs = static_cast<int>(slabs_.size());
}

PinnedHostPool::~PinnedHostPool() {
  try {
    synchronize();
  } catch (const std::exception& e) {
    log_error(str_cat("pinned pool: waiting for in-flight copies at teardown: ", e.what()));
  }
  std::size_t held = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    held = stats_.in_use_bytes;
  }
  if (held != 0)
    log_error(str_cat("pinned pool destroyed while ", bytes_text(held),
                      " of blocks are still held; their pointers dangle now"));
  for (const Slab& s : slabs_) memory_->unmap(s);
}

HostBlock PinnedHostPool::allocate(std::size_t bytes) {
  STP_CHECK(bytes > 0, "pinned pool allocate(bytes=0): bytes must be > 0");
  const std::size_t size = size_class(bytes);
  process_completed();
  std::lock_guard<std::mutex> lock(mu_);
  Block* b = nullptr;
  auto hit = cached_.find(size);
  if (hit != cached_.end() && !hit->second.empty()) {
    b = hit->second.back();
    hit->second.pop_back();
    stats_.cached_bytes -= size;
    ++stats_.cache_hits;
  } else {
    b = carve_locked(size);
    if (!b && stats_.cached_bytes > 0) {
      release_cached_locked();
      b = carve_locked(size);
    }
    if (!b) throw_out_of_memory_locked(bytes, size);
  }
  b->state = Block::State::kInUse;
  b->requested = bytes;
  stats_.in_use_bytes += size;
  stats_.requested_bytes += bytes;
  stats_.peak_in_use_bytes = std::max(stats_.peak_in_use_bytes, stats_.in_use_bytes);
  ++stats_.allocations;
  return HostBlock{address(*b), bytes, size};
}

PinnedHostPool::Block* PinnedHostPool::find_held_locked(const HostBlock& block, const char* what) {
  auto it = blocks_.find(block.ptr);
  STP_CHECK(it != blocks_.end() && it->second->state == Block::State::kInUse, "pinned pool ", what,
            "(", block.ptr,
            "): not a block currently held from this pool (never allocated, "
            "or already freed)");
  return it->second.get();
}

void PinnedHostPool::record_use(const HostBlock& block, CopyEvent event) {
  std::lock_guard<std::mutex> lock(mu_);
  Block* b = find_held_locked(block, "record_use");
  if (!event.is_null()) b->uses.push_back(std::move(event));
}

void PinnedHostPool::free(const HostBlock& block, std::vector<CopyEvent> uses) {
  std::lock_guard<std::mutex> lock(mu_);
  Block* b = find_held_locked(block, "free");
  for (CopyEvent& e : uses)
    if (!e.is_null()) b->uses.push_back(std::move(e));
  stats_.in_use_bytes -= b->size;
  stats_.requested_bytes -= b->requested;
  b->requested = 0;
  b->epoch = ++epochs_;
  if (b->uses.empty()) {
    b->state = Block::State::kCached;
    cached_[b->size].push_back(b);
    stats_.cached_bytes += b->size;
  } else {
    b->state = Block::State::kInFlight;
    in_flight_.push_back(b);
    stats_.in_flight_bytes += b->size;
  }
}

std::size_t PinnedHostPool::process_completed() {
  // A snapshot names a block by address and free epoch, never by Block*: while the lock is
  // released another thread may complete the block, reuse it, or release it to the free ranges
  // (destroying the Block).
  struct Pending {
    void* ptr;
    std::uint64_t epoch;
    std::vector<CopyEvent> uses;
    bool done = false;
  };
  std::vector<Pending> pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (in_flight_.empty()) return 0;
    pending.reserve(in_flight_.size());
    for (Block* b : in_flight_) pending.push_back({address(*b), b->epoch, b->uses});
  }
  // Query with the lock released: cudaEventQuery is a CUDA call (Note [Pinned pool design]).
  bool any_done = false;
  for (Pending& p : pending) {
    p.done =
        std::all_of(p.uses.begin(), p.uses.end(), [](const CopyEvent& e) { return e.query(); });
    any_done = any_done || p.done;
  }
  if (!any_done) return 0;
  std::size_t moved = 0;
  std::vector<CopyEvent> dropped;  // destroyed after unlocking: a CUDA event returns to its pool
  std::lock_guard<std::mutex> lock(mu_);
  for (const Pending& p : pending) {
    if (!p.done) continue;
    auto it = blocks_.find(p.ptr);
    if (it == blocks_.end()) continue;
    Block* b = it->second.get();
    if (b->state != Block::State::kInFlight || b->epoch != p.epoch) continue;  // handled already
    in_flight_.erase(std::find(in_flight_.begin(), in_flight_.end(), b));
    for (CopyEvent& e : b->uses) dropped.push_back(std::move(e));
    b->uses.clear();
    b->state = Block::State::kCached;
    cached_[b->size].push_back(b);
    stats_.in_flight_bytes -= b->size;
    stats_.cached_bytes += b->size;
    moved += b->size;
  }
  return moved;
}

void PinnedHostPool::release_cached() {
  std::lock_guard<std::mutex> lock(mu_);
  release_cached_locked();
}

void PinnedHostPool::synchronize() {
  std::vector<CopyEvent> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Block* b : in_flight_) all.insert(all.end(), b->uses.begin(), b->uses.end());
  }
  for (const CopyEvent& e : all) e.synchronize();
  process_completed();
}

PinnedPoolStats PinnedHostPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  PinnedPoolStats s = stats_;
  s.waste_bytes = s.in_use_bytes - s.requested_bytes;
  s.largest_free_range = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->size;
  return s;
}

// ---- carving ------------------------------------------------------------------------------------

PinnedHostPool::Block* PinnedHostPool::carve_locked(std::size_t size) {
  auto it = free_by_size_.lower_bound(Range{size, -1, 0});
  if (it == free_by_size_.end()) return nullptr;
  Range r = *it;
  free_by_size_.erase(it);
  free_by_offset_[r.slab].erase(r.offset);
  stats_.free_bytes -= r.size;
  if (r.size > size) add_free_range_locked(r.slab, r.offset + size, r.size - size);
  auto block = std::make_unique<Block>();
  block->slab = r.slab;
  block->offset = r.offset;
  block->size = size;
  Block* b = block.get();
  blocks_.emplace(address(*b), std::move(block));
  return b;
}

void PinnedHostPool::add_free_range_locked(int slab, std::size_t offset, std::size_t size) {
  auto& ranges = free_by_offset_[slab];
  auto next = ranges.lower_bound(offset);
  if (next != ranges.end() && offset + size == next->first) {  // merge with the range after
    free_by_size_.erase(Range{next->second, slab, next->first});
    stats_.free_bytes -= next->second;
    size += next->second;
    next = ranges.erase(next);
  }
  if (next != ranges.begin()) {  // merge with the range before
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      free_by_size_.erase(Range{prev->second, slab, prev->first});
      stats_.free_bytes -= prev->second;
      offset = prev->first;
      size += prev->second;
      ranges.erase(prev);
    }
  }
  ranges[offset] = size;
  free_by_size_.insert(Range{size, slab, offset});
  stats_.free_bytes += size;
}

void PinnedHostPool::release_cached_locked() {
  for (auto& [size, list] : cached_) {
    for (Block* b : list) {
      int slab = b->slab;
      std::size_t offset = b->offset;
      stats_.cached_bytes -= b->size;
      blocks_.erase(address(*b));  // destroys *b
      add_free_range_locked(slab, offset, size);
    }
    list.clear();
  }
  ++stats_.cache_flushes;
}

void PinnedHostPool::throw_out_of_memory_locked(std::size_t bytes, std::size_t size) {
  ++stats_.out_of_memory;
  const PinnedPoolStats& s = stats_;
  std::size_t largest = free_by_size_.empty() ? 0 : free_by_size_.rbegin()->size;
  std::size_t largest_slab = 0;
  for (const Slab& slab : slabs_) largest_slab = std::max(largest_slab, slab.bytes);
  std::string what = str_cat(
      "pinned host pool out of memory: cannot allocate ", bytes, " bytes (", bytes_text(bytes),
      ", block of ", bytes_text(size), "); capacity ", bytes_text(s.reserved_bytes), " in ",
      s.slabs, " slab(s): ", bytes_text(s.in_use_bytes), " in use, ", bytes_text(s.in_flight_bytes),
      " in flight (freed, waiting for copies), ", bytes_text(s.cached_bytes), " cached, ",
      bytes_text(s.free_bytes), " free (largest free range ", bytes_text(largest), "). ");
  if (size > largest_slab)
    what += str_cat("The block is larger than a slab (", bytes_text(largest_slab),
                    "); raise PinnedPoolOptions::slab_bytes.");
  else
    what += str_cat("Raise ", options_.capacity_setting, " (now ", bytes_text(s.reserved_bytes),
                    ") to at least ", bytes_text(s.reserved_bytes + size), ", or offload less.");
  throw PinnedPoolOutOfMemory(what, bytes, s.reserved_bytes, s.free_bytes, s.in_flight_bytes,
                              s.cached_bytes);
}

}  // namespace stp::allocator
