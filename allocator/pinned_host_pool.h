// PinnedHostPool: page-locked host memory for activations parked off the device.
//
// Note [Pinned pool design]
// ~~~~~~~~~~~~~~~~~~~~~~~~~
// * Reserve ahead. All host memory is mapped, NUMA-bound, touched and pinned in the constructor
//   (capacity_bytes, in slabs of at most slab_bytes; see host_memory.h). Pinning is slow (it
//   walks every page) and must not happen in a training step; the planner says how much the
//   step needs (offload::Plan::host_bytes).
// * Size classes. A request is rounded up to its size class (size_classes.h): eight classes per
//   power of two, so a block wastes < 12.5 % of what was asked for (< 64 B below 512 B).
//   Activation sets repeat every microbatch with identical buffer sizes, so after the first
//   microbatch nearly every request is served from the per-class cache.
// * Carving. A cache miss carves a block from the smallest free range that holds the class
//   (best fit), splitting the rest off. When no free range is big enough, cached blocks of every
//   class go back to the free ranges (neighbours coalesce) and carving is retried once. Blocks
//   never span slabs.
// * Reuse only after the copies. free(block, uses) hands back a block together with the events
//   of the copies that read or wrote it (record_use() adds more before free). The block stays
//   "in flight" until every one of those events has completed; allocate() polls the in-flight
//   blocks (CopyEvent::query, never a host wait) and only completed blocks enter the cache.
//   A block is therefore never handed out while a copy that used it may still run.
// * Locking. One mutex (mu_) guards the bookkeeping. No CUDA or system call runs under it:
//   polling copies the in-flight (block, events) list out under the lock, queries the events
//   with the lock released, and re-takes it to move the completed blocks. The copy names each
//   block by address and a pool-unique free epoch, so a result for a block that was completed,
//   reused or released meanwhile is recognised and dropped. Slabs are mapped in the
//   constructor and unmapped in the destructor, outside the lock.
// * Out of memory is an exception, not a wait: PinnedPoolOutOfMemory names the request, the
//   capacity, the free, in-flight and cached bytes and the setting to raise.
//
// Thread-safety: every public method may be called concurrently from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "allocator/copy_event.h"
#include "allocator/host_memory.h"

namespace stp::allocator {

struct PinnedPoolOptions {
  std::size_t capacity_bytes = std::size_t{1}
                               << 30;  // bytes reserved up front; >= 1, rounded up to pages
  std::size_t slab_bytes = std::size_t{1}
                           << 30;  // largest mapping = largest block; >= 1, rounded up to pages
  HostMemoryKind memory = HostMemoryKind::kAuto;  // where slabs come from (host_memory.h)
  int numa_node = kUnbound;  // bind slabs here; kUnbound: no binding (see placement_for)
  // The user-facing name of capacity_bytes, quoted by the out-of-memory error.
  std::string capacity_setting = "PinnedPoolOptions::capacity_bytes";
};

// A block handed out by the pool. Plain value; give it back with free().
struct HostBlock {
  void* ptr = nullptr;
  std::size_t bytes = 0;     // requested
  std::size_t capacity = 0;  // size class: usable bytes at ptr
  explicit operator bool() const { return ptr != nullptr; }
};

// Statistics, each tagged by what it counts. reserved = in_use + in_flight + cached + free.
struct PinnedPoolStats {
  std::size_t reserved_bytes = 0;      // mapped by the pool (sum of slabs)
  std::size_t locked_bytes = 0;        // of those, page-locked
  int slabs = 0;                       // mappings
  std::size_t in_use_bytes = 0;        // block bytes held by callers
  std::size_t requested_bytes = 0;     // bytes callers asked for in those blocks
  std::size_t waste_bytes = 0;         // in_use - requested: size-class rounding
  std::size_t peak_in_use_bytes = 0;   // maximum of in_use_bytes since construction
  std::size_t in_flight_bytes = 0;     // freed blocks whose copies may still run
  std::size_t cached_bytes = 0;        // free blocks kept for their size class
  std::size_t free_bytes = 0;          // not carved into blocks
  std::size_t largest_free_range = 0;  // the largest block a cache miss can carve now
  std::uint64_t allocations = 0;       // successful allocate() calls
  std::uint64_t cache_hits = 0;        // of those, served from the cache
  std::uint64_t cache_flushes = 0;     // times cached blocks went back to the free ranges
  std::uint64_t out_of_memory = 0;     // allocate() calls that threw
};

class PinnedPoolOutOfMemory : public std::runtime_error {
 public:
  PinnedPoolOutOfMemory(const std::string& what, std::size_t requested, std::size_t capacity,
                        std::size_t free, std::size_t in_flight, std::size_t cached)
      : std::runtime_error(what),
        requested(requested),
        capacity(capacity),
        free(free),
        in_flight(in_flight),
        cached(cached) {}
  std::size_t requested, capacity, free, in_flight, cached;  // bytes
};

class PinnedHostPool {
 public:
  // Maps every slab (see Note). Throws std::invalid_argument for bad options and
  // std::runtime_error when the system refuses the memory.
  explicit PinnedHostPool(const PinnedPoolOptions& options);
  // For tests: slabs come from `memory`.
  PinnedHostPool(const PinnedPoolOptions& options, std::unique_ptr<HostMemory> memory);
  // Waits for in-flight copies (a teardown host wait), logs blocks still held, unmaps.
  ~PinnedHostPool();

  PinnedHostPool(const PinnedHostPool&) = delete;
  PinnedHostPool& operator=(const PinnedHostPool&) = delete;

  // A block of at least `bytes` (> 0). Polls in-flight blocks first. Throws
  // PinnedPoolOutOfMemory when no block fits.
  HostBlock allocate(std::size_t bytes);
  // Adds the event of a copy that uses `block`. REQUIRES: block is held (allocated, not freed).
  void record_use(const HostBlock& block, CopyEvent event);
  // Gives `block` back; it is reused only after every recorded event and every event in `uses`
  // completed. REQUIRES: block is held. Throws std::invalid_argument otherwise.
  void free(const HostBlock& block, std::vector<CopyEvent> uses = {});

  // Moves in-flight blocks whose copies completed into the cache; returns their bytes.
  std::size_t process_completed();
  // Returns every cached block to the free ranges.
  void release_cached();
  // Host wait until no block is in flight (tests, teardown).
  void synchronize();

  PinnedPoolStats stats() const;
  const PinnedPoolOptions& options() const { return options_; }
  std::vector<Slab> slabs() const { return slabs_; }
  HostMemoryKind memory_kind() const { return memory_->kind(); }

 private:
  struct Block {
    int slab = 0;
    std::size_t offset = 0;     // within the slab
    std::size_t size = 0;       // size class
    std::size_t requested = 0;  // while in use
    enum class State { kInUse, kInFlight, kCached } state = State::kInUse;
    std::vector<CopyEvent> uses;  // events of copies that used the block (in use / in flight)
    std::uint64_t epoch = 0;      // pool-unique number of the last free(); guards stale polls
  };
  struct Range {  // a free range, ordered for best fit
    std::size_t size;
    int slab;
    std::size_t offset;
    bool operator<(const Range& o) const {
      return size != o.size ? size < o.size : slab != o.slab ? slab < o.slab : offset < o.offset;
    }
  };

  void map_slabs();
  Block* find_held_locked(const HostBlock& block, const char* what);
  Block* carve_locked(std::size_t size);
  void add_free_range_locked(int slab, std::size_t offset, std::size_t size);
  void release_cached_locked();
  void* address(const Block& b) const { return static_cast<char*>(slabs_[b.slab].base) + b.offset; }
  [[noreturn]] void throw_out_of_memory_locked(std::size_t bytes, std::size_t size);

  const PinnedPoolOptions options_;
  const std::unique_ptr<HostMemory> memory_;
  std::vector<Slab> slabs_;  // immutable after construction

  mutable std::mutex mu_;
  std::unordered_map<void*, std::unique_ptr<Block>> blocks_;        // GUARDED_BY(mu_) carved blocks
  std::unordered_map<std::size_t, std::vector<Block*>> cached_;     // GUARDED_BY(mu_) by size class
  std::vector<Block*> in_flight_;                                   // GUARDED_BY(mu_)
  std::set<Range> free_by_size_;                                    // GUARDED_BY(mu_)
  std::vector<std::map<std::size_t, std::size_t>> free_by_offset_;  // GUARDED_BY(mu_) per slab
  PinnedPoolStats stats_;                                           // GUARDED_BY(mu_)
  std::uint64_t epochs_ = 0;                                        // GUARDED_BY(mu_) frees so far
};

}  // namespace stp::allocator
