#include "allocator/pinned_host_pool.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <thread>

#include "allocator/size_classes.h"

namespace stp::allocator {
namespace {

using ::testing::HasSubstr;

constexpr std::size_t kKiB = 1024;
constexpr std::size_t kMiB = 1024 * 1024;

// Slabs from aligned_alloc; counts maps and unmaps; can refuse the n-th map.
struct FakeMemoryLog {
  std::atomic<int> maps{0};
  std::atomic<int> unmaps{0};
  int fail_at_map = -1;  // 0-based index of the map() call that throws
};

class FakeHostMemory final : public HostMemory {
 public:
  explicit FakeHostMemory(FakeMemoryLog* log) : log_(log) {}
  Slab map(std::size_t bytes, const NumaPlacement& placement) override {
    int index = log_->maps.fetch_add(1);
    if (index == log_->fail_at_map) throw std::runtime_error("fake map refused");
    Slab s;
    s.base = std::aligned_alloc(page_size(), bytes);
    s.bytes = bytes;
    s.locked = index % 2 == 0;  // pretend every other slab got locked
    s.node = placement.node;
    return s;
  }
  void unmap(const Slab& slab) noexcept override {
    log_->unmaps.fetch_add(1);
    std::free(slab.base);
  }
  HostMemoryKind kind() const override { return HostMemoryKind::kMmap; }

 private:
  FakeMemoryLog* log_;
};

std::unique_ptr<PinnedHostPool> make_pool(std::size_t capacity, std::size_t slab,
                                          FakeMemoryLog* log = nullptr) {
  static FakeMemoryLog unused;
  PinnedPoolOptions o;
  o.capacity_bytes = capacity;
  o.slab_bytes = slab;
  return std::make_unique<PinnedHostPool>(o, std::make_unique<FakeHostMemory>(log ? log : &unused));
}

void expect_stats_consistent(const PinnedHostPool& pool) {
  PinnedPoolStats s = pool.stats();
  EXPECT_EQ(s.reserved_bytes, s.in_use_bytes + s.in_flight_bytes + s.cached_bytes + s.free_bytes);
  EXPECT_EQ(s.waste_bytes, s.in_use_bytes - s.requested_bytes);
  EXPECT_LE(s.in_use_bytes, s.peak_in_use_bytes);
  EXPECT_LE(s.largest_free_range, s.free_bytes);
}

TEST(PinnedHostPool, BlocksAreAlignedDisjointAndOfTheirSizeClass) {
  auto pool = make_pool(8 * kMiB, 2 * kMiB);
  std::vector<HostBlock> blocks;
  std::mt19937 rng(7);
  for (std::size_t n :
       {1ul, 63ul, 64ul, 65ul, 511ul, 513ul, 4097ul, 100003ul, 1ul << 20, 777777ul}) {
    HostBlock b = pool->allocate(n);
    ASSERT_TRUE(b);
    EXPECT_EQ(b.bytes, n);
    EXPECT_EQ(b.capacity, size_class(n));
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.ptr) % kAlignment, 0u);
    std::memset(b.ptr, static_cast<int>(blocks.size() + 1), b.capacity);
    blocks.push_back(b);
  }
  // Each block still holds its own fill: no two blocks overlap.
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    const auto* p = static_cast<const unsigned char*>(blocks[i].ptr);
    for (std::size_t k = 0; k < blocks[i].capacity; k += 61) ASSERT_EQ(p[k], i + 1) << i;
  }
  // Every block lies within one slab.
  for (const HostBlock& b : blocks) {
    auto in_slab = [&](const Slab& s) {
      auto* base = static_cast<char*>(s.base);
      return b.ptr >= base && static_cast<char*>(b.ptr) + b.capacity <= base + s.bytes;
    };
    std::vector<Slab> slabs = pool->slabs();
    EXPECT_EQ(std::count_if(slabs.begin(), slabs.end(), in_slab), 1);
  }
  expect_stats_consistent(*pool);
  for (const HostBlock& b : blocks) pool->free(b);
  expect_stats_consistent(*pool);
}

TEST(PinnedHostPool, StatsCountEveryState) {
  FakeMemoryLog log;
  auto pool = make_pool(5 * kMiB, 2 * kMiB, &log);  // slabs of 2, 2, 1 MiB
  PinnedPoolStats s = pool->stats();
  EXPECT_EQ(s.slabs, 3);
  EXPECT_EQ(s.reserved_bytes, 5 * kMiB);
  EXPECT_EQ(s.locked_bytes, 2 * kMiB + 1 * kMiB);  // slabs 0 and 2 "locked" by the fake
  EXPECT_EQ(s.free_bytes, 5 * kMiB);
  EXPECT_EQ(s.largest_free_range, 2 * kMiB);

  HostBlock a = pool->allocate(1000 * kKiB);  // class 1024 KiB, waste 24 KiB
  HostBlock b = pool->allocate(300 * kKiB);   // class 320 KiB
  s = pool->stats();
  EXPECT_EQ(s.in_use_bytes, 1024 * kKiB + 320 * kKiB);
  EXPECT_EQ(s.requested_bytes, 1300 * kKiB);
  EXPECT_EQ(s.waste_bytes, 44 * kKiB);
  EXPECT_EQ(s.allocations, 2u);
  expect_stats_consistent(*pool);

  CopyEvent copy = CopyEvent::host();
  pool->free(a, {copy});
  s = pool->stats();
  EXPECT_EQ(s.in_flight_bytes, 1024 * kKiB);
  EXPECT_EQ(s.in_use_bytes, 320 * kKiB);
  EXPECT_EQ(s.peak_in_use_bytes, 1344 * kKiB);
  expect_stats_consistent(*pool);

  copy.signal();
  EXPECT_EQ(pool->process_completed(), 1024 * kKiB);
  s = pool->stats();
  EXPECT_EQ(s.in_flight_bytes, 0u);
  EXPECT_EQ(s.cached_bytes, 1024 * kKiB);
  expect_stats_consistent(*pool);

  HostBlock c = pool->allocate(1010 * kKiB);  // same class: a cache hit, the same block
  EXPECT_EQ(c.ptr, a.ptr);
  EXPECT_EQ(pool->stats().cache_hits, 1u);
  pool->free(b);
  pool->free(c);
  pool->release_cached();
  s = pool->stats();
  EXPECT_EQ(s.free_bytes, 5 * kMiB);
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_EQ(s.peak_in_use_bytes, 1344 * kKiB);
  pool.reset();
  EXPECT_EQ(log.maps.load(), 3);
  EXPECT_EQ(log.unmaps.load(), 3);
}

TEST(PinnedHostPool, BlockIsNeverReusedWhileACopyThatUsedItIsInFlight) {
  const std::size_t kBlock = 256 * kKiB;
  auto pool = make_pool(2 * kBlock, 2 * kBlock);  // room for exactly two blocks
  HostBlock a = pool->allocate(kBlock);
  CopyEvent d2h = CopyEvent::host();  // the offload copy into a
  CopyEvent h2d = CopyEvent::host();  // the reload copy out of a
  pool->record_use(a, d2h);
  pool->free(a, {h2d});

  // The other half of the pool is handed out and recycled freely...
  for (int i = 0; i < 10; ++i) {
    HostBlock b = pool->allocate(kBlock);
    EXPECT_NE(b.ptr, a.ptr);
    pool->free(b);
  }
  // ...but a is not: with b held, the pool is out of memory, and says that a is in flight.
  HostBlock b = pool->allocate(kBlock);
  try {
    pool->allocate(kBlock);
    FAIL() << "allocated a block whose copies are in flight";
  } catch (const PinnedPoolOutOfMemory& e) {
    EXPECT_EQ(e.in_flight, kBlock);
  }
  h2d.signal();  // one of the two copies done: still not reusable
  EXPECT_THROW(pool->allocate(kBlock), PinnedPoolOutOfMemory);
  d2h.signal();  // both done: polled on allocate, no host wait
  HostBlock again = pool->allocate(kBlock);
  EXPECT_EQ(again.ptr, a.ptr);
  pool->free(again);
  pool->free(b);
  expect_stats_consistent(*pool);
}

TEST(PinnedHostPool, OutOfMemoryNamesSizesAndTheSettingToRaise) {
  PinnedPoolOptions o;
  o.capacity_bytes = 1 * kMiB;
  o.slab_bytes = 1 * kMiB;
  o.capacity_setting = "--host-pool";
  FakeMemoryLog log;
  PinnedHostPool pool(o, std::make_unique<FakeHostMemory>(&log));
  HostBlock held = pool.allocate(512 * kKiB);
  HostBlock flying = pool.allocate(256 * kKiB);
  CopyEvent pending = CopyEvent::host();
  pool.free(flying, {pending});
  try {
    pool.allocate(300 * kKiB);  // class 320 KiB > the 256 KiB left
    FAIL() << "expected PinnedPoolOutOfMemory";
  } catch (const PinnedPoolOutOfMemory& e) {
    EXPECT_EQ(e.requested, 300 * kKiB);
    EXPECT_EQ(e.capacity, 1 * kMiB);
    EXPECT_EQ(e.free, 256 * kKiB);
    EXPECT_EQ(e.in_flight, 256 * kKiB);
    EXPECT_EQ(e.cached, 0u);
    std::string msg = e.what();
    EXPECT_THAT(msg, HasSubstr("cannot allocate 307200 bytes (300.00 KiB"));
    EXPECT_THAT(msg, HasSubstr("capacity 1.00 MiB"));
    EXPECT_THAT(msg, HasSubstr("512.00 KiB in use"));
    EXPECT_THAT(msg, HasSubstr("256.00 KiB in flight"));
    EXPECT_THAT(msg, HasSubstr("256.00 KiB free"));
    EXPECT_THAT(msg, HasSubstr("Raise --host-pool"));
  }
  EXPECT_EQ(pool.stats().out_of_memory, 1u);
  pending.signal();
  pool.free(held);
}

TEST(PinnedHostPool, OutOfMemoryForABlockLargerThanASlabNamesSlabBytes) {
  auto pool = make_pool(4 * kMiB, 1 * kMiB);
  try {
    pool->allocate(1 * kMiB + 1);
    FAIL() << "expected PinnedPoolOutOfMemory";
  } catch (const PinnedPoolOutOfMemory& e) {
    EXPECT_THAT(e.what(), HasSubstr("larger than a slab (1.00 MiB)"));
    EXPECT_THAT(e.what(), HasSubstr("PinnedPoolOptions::slab_bytes"));
    EXPECT_EQ(e.free, 4 * kMiB);
  }
}

TEST(PinnedHostPool, FreedNeighboursCoalesceIntoOneSlabSizedBlock) {
  auto pool = make_pool(2 * kMiB, 1 * kMiB);
  std::vector<HostBlock> small;
  // Fill both slabs with awkward sizes until the pool is full.
  std::mt19937 rng(3);
  for (;;) {
    try {
      small.push_back(pool->allocate(1000 + rng() % 50000));
    } catch (const PinnedPoolOutOfMemory&) {
      break;
    }
  }
  ASSERT_GT(small.size(), 40u);
  std::shuffle(small.begin(), small.end(), rng);
  for (const HostBlock& b : small) pool->free(b);  // all cached now
  EXPECT_EQ(pool->stats().free_bytes + pool->stats().cached_bytes, 2 * kMiB);
  // A slab-sized block needs every cached block of one slab released and merged.
  HostBlock big = pool->allocate(1 * kMiB);
  EXPECT_EQ(big.capacity, 1 * kMiB);
  EXPECT_GE(pool->stats().cache_flushes, 1u);
  pool->free(big);
  pool->release_cached();
  EXPECT_EQ(pool->stats().free_bytes, 2 * kMiB);
  EXPECT_EQ(pool->stats().largest_free_range, 1 * kMiB);
}

TEST(PinnedHostPool, RejectsForeignPointersDoubleFreesAndBadOptions) {
  auto pool = make_pool(1 * kMiB, 1 * kMiB);
  HostBlock b = pool->allocate(4096);
  int on_stack = 0;
  EXPECT_THROW(pool->free(HostBlock{&on_stack, 4, 64}), std::invalid_argument);
  pool->free(b);
  EXPECT_THROW(pool->free(b), std::invalid_argument);
  EXPECT_THROW(pool->record_use(b, CopyEvent::host()), std::invalid_argument);
  EXPECT_THROW(pool->allocate(0), std::invalid_argument);

  FakeMemoryLog log;
  PinnedPoolOptions o;
  o.capacity_bytes = 0;
  EXPECT_THROW(PinnedHostPool(o, std::make_unique<FakeHostMemory>(&log)), std::invalid_argument);
  o.capacity_bytes = kMiB;
  o.numa_node = -2;
  EXPECT_THROW(PinnedHostPool(o, std::make_unique<FakeHostMemory>(&log)), std::invalid_argument);
  EXPECT_EQ(log.maps.load(), 0);
}

TEST(PinnedHostPool, FailedSlabMapUnmapsTheOthers) {
  FakeMemoryLog log;
  log.fail_at_map = 2;
  EXPECT_THROW(make_pool(4 * kMiB, 1 * kMiB, &log), std::runtime_error);
  EXPECT_EQ(log.maps.load(), 3);
  EXPECT_EQ(log.unmaps.load(), 2);
}

TEST(PinnedHostPool, DestructorWaitsForInFlightCopies) {
  auto pool = make_pool(1 * kMiB, 1 * kMiB);
  HostBlock b = pool->allocate(64 * kKiB);
  CopyEvent copy = CopyEvent::host();
  pool->free(b, {copy});
  std::atomic<bool> signalled{false};
  std::thread copier([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    signalled = true;
    copy.signal();
  });
  pool.reset();  // must not unmap under a running copy
  EXPECT_TRUE(signalled.load());
  copier.join();
}

// Threads allocate, fill and free blocks; a third of the frees go "in flight" behind an event
// that a copier thread signals later, after checking the block still holds the pattern. A block
// handed out again while in flight would be overwritten by its new owner and fail that check.
TEST(PinnedHostPool, ConcurrentAllocateFreeNeverHandsOutAnInFlightBlock) {
  auto pool = make_pool(4 * kMiB, 1 * kMiB);
  constexpr int kThreads = 4;
  constexpr int kOpsPerThread = 1500;
  struct Flight {
    HostBlock block;
    unsigned char fill;
    CopyEvent event;
  };
  std::mutex flights_mu;
  std::deque<Flight> flights;  // GUARDED_BY(flights_mu)
  std::atomic<bool> done{false};
  std::atomic<int> corrupted{0}, ooms{0};

  std::thread copier([&] {
    for (;;) {
      Flight f;
      {
        std::lock_guard<std::mutex> lock(flights_mu);
        if (flights.empty()) {
          if (done) return;
        } else {
          f = flights.front();
          flights.pop_front();
        }
      }
      if (!f.block) {
        std::this_thread::yield();
        continue;
      }
      const auto* p = static_cast<const unsigned char*>(f.block.ptr);
      for (std::size_t k = 0; k < f.block.bytes; k += 97)
        if (p[k] != f.fill) ++corrupted;
      f.event.signal();
    }
  });

  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      for (int i = 0; i < kOpsPerThread; ++i) {
        std::size_t n = 512 + rng() % (96 * kKiB);
        HostBlock b;
        try {
          b = pool->allocate(n);
        } catch (const PinnedPoolOutOfMemory&) {
          ++ooms;  // everything is in flight right now; the copier catches up
          std::this_thread::yield();
          continue;
        }
        auto fill = static_cast<unsigned char>(1 + (t * 31 + i) % 250);
        std::memset(b.ptr, fill, n);
        if (i % 3 == 0) {
          CopyEvent e = CopyEvent::host();
          pool->free(b, {e});
          std::lock_guard<std::mutex> lock(flights_mu);
          flights.push_back({b, fill, e});
        } else {
          const auto* p = static_cast<const unsigned char*>(b.ptr);
          for (std::size_t k = 0; k < n; k += 97)
            if (p[k] != fill) ++corrupted;
          pool->free(b);
        }
      }
    });
  }
  for (auto& w : workers) w.join();
  done = true;
  copier.join();
  pool->synchronize();
  EXPECT_EQ(corrupted.load(), 0);
  PinnedPoolStats s = pool->stats();
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_EQ(s.in_flight_bytes, 0u);
  EXPECT_EQ(s.allocations + ooms.load(), static_cast<std::uint64_t>(kThreads * kOpsPerThread));
  EXPECT_GT(s.cache_hits, s.allocations / 2);  // the cache does its job
  expect_stats_consistent(*pool);
}

TEST(PinnedHostPool, MmapBackendMapsLocksWhatItCanAndServesBlocks) {
  PinnedPoolOptions o;
  o.capacity_bytes = 6 * kMiB + 1;  // rounded up to pages: three slabs, the last one page
  o.slab_bytes = 3 * kMiB;
  o.memory = HostMemoryKind::kMmap;
  PinnedHostPool pool(o);
  EXPECT_EQ(pool.memory_kind(), HostMemoryKind::kMmap);
  PinnedPoolStats s = pool.stats();
  EXPECT_EQ(s.slabs, 3);
  EXPECT_EQ(s.reserved_bytes, 6 * kMiB + page_size());
  std::size_t locked = 0;
  for (const Slab& slab : pool.slabs()) locked += slab.locked ? slab.bytes : 0;
  EXPECT_EQ(s.locked_bytes, locked);
  HostBlock b = pool.allocate(3 * kMiB);
  std::memset(b.ptr, 0x5a, b.bytes);
  EXPECT_EQ(static_cast<unsigned char*>(b.ptr)[b.bytes - 1], 0x5a);
  pool.free(b);
}

}  // namespace
}  // namespace stp::allocator
