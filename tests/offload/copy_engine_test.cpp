#include "offload/copy_engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "allocator/device_memory.h"

namespace stp::offload {
namespace {

// n pseudo-random bytes (8 per generator call: fast enough under sanitizers).
std::vector<unsigned char> pattern(std::size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  std::mt19937_64 rng(seed);
  for (std::size_t i = 0; i < n; i += 8) {
    std::uint64_t word = rng();
    std::memcpy(v.data() + i, &word, std::min<std::size_t>(8, n - i));
  }
  return v;
}

CopyEngineOptions host_options(int threads, std::size_t min_piece = 64 << 10) {
  CopyEngineOptions o;
  o.backend = Backend::kHost;
  o.threads = threads;
  o.min_piece_bytes = min_piece;
  return o;
}

class HostCopyEngineTest : public ::testing::TestWithParam<int> {};  // param: worker threads

TEST_P(HostCopyEngineTest, CopiesAwkwardSizesExactlyInBothDirections) {
  auto engine = make_copy_engine(host_options(GetParam()));
  EXPECT_EQ(engine->backend(), Backend::kHost);
  for (std::size_t n : {1ul, 7ul, 4095ul, 4097ul, 65537ul, (1ul << 20) + 3, (9ul << 20) + 1}) {
    std::vector<unsigned char> src = pattern(n, static_cast<unsigned>(n));
    std::vector<unsigned char> mid(n, 0), back(n, 0);
    CopyEvent d2h = engine->copy(Direction::kD2H, mid.data(), src.data(), n);
    CopyEvent h2d = engine->copy(Direction::kH2D, back.data(), mid.data(), n, {&d2h, 1});
    h2d.synchronize();
    EXPECT_TRUE(d2h.query());  // h2d ran after d2h
    ASSERT_EQ(back, src) << "n=" << n;
  }
}

TEST_P(HostCopyEngineTest, BatchOfRegionsCompletesAsOneEvent) {
  auto engine = make_copy_engine(host_options(GetParam()));
  std::vector<std::size_t> sizes = {3, 100000, 1 << 20, 17, (3 << 20) + 5, 4096};
  std::vector<std::vector<unsigned char>> src, dst;
  std::vector<CopyRegion> regions;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    src.push_back(pattern(sizes[i], static_cast<unsigned>(i)));
    dst.emplace_back(sizes[i], 0);
  }
  for (std::size_t i = 0; i < sizes.size(); ++i)
    regions.push_back({dst[i].data(), src[i].data(), sizes[i]});
  CopyEvent done = engine->copy(Direction::kD2H, regions);
  done.synchronize();
  for (std::size_t i = 0; i < sizes.size(); ++i) ASSERT_EQ(dst[i], src[i]) << i;
}

TEST_P(HostCopyEngineTest, StartsOnlyAfterItsPrerequisiteEvent) {
  auto engine = make_copy_engine(host_options(GetParam()));
  const std::size_t n = 2 << 20;
  std::vector<unsigned char> src = pattern(n, 1), dst(n, 0);
  CopyEvent gate = CopyEvent::host();  // e.g. the forward that writes src has not finished
  CopyEvent done = engine->copy(Direction::kD2H, dst.data(), src.data(), n, {&gate, 1});
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(done.query());
  EXPECT_EQ(std::count(dst.begin(), dst.end(), 0), static_cast<long>(n))
      << "copied before the gate";
  src[12345] ^= 0xff;  // still the producer's: the copy must see this write
  gate.signal();
  done.synchronize();
  EXPECT_EQ(dst, src);
}

TEST_P(HostCopyEngineTest, EmptyBatchStillWaitsForItsPrerequisite) {
  auto engine = make_copy_engine(host_options(GetParam()));
  CopyEvent gate = CopyEvent::host();
  CopyEvent done = engine->copy(Direction::kH2D, {}, {&gate, 1});
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_FALSE(done.query());
  gate.signal();
  done.synchronize();
  EXPECT_TRUE(done.query());
}

TEST_P(HostCopyEngineTest, ChainedCopiesSeeEachOthersData) {
  // A -> B -> C -> D, each copy ordered after the previous one's event: D must equal A every
  // time, although the pieces of each copy run on different workers.
  auto engine = make_copy_engine(host_options(GetParam(), 4096));
  const std::size_t n = (1 << 20) + 4099;
  for (int round = 0; round < 20; ++round) {
    std::vector<unsigned char> a = pattern(n, round), b(n), c(n), d(n);
    CopyEvent e1 = engine->copy(Direction::kD2H, b.data(), a.data(), n);
    CopyEvent e2 = engine->copy(Direction::kH2D, c.data(), b.data(), n, {&e1, 1});
    CopyEvent e3 = engine->copy(Direction::kD2H, d.data(), c.data(), n, {&e2, 1});
    e3.synchronize();
    ASSERT_EQ(d, a) << "round " << round;
  }
}

TEST_P(HostCopyEngineTest, SynchronizeWaitsForEverySubmittedCopy) {
  auto engine = make_copy_engine(host_options(GetParam()));
  const std::size_t n = 1 << 20;
  std::vector<std::vector<unsigned char>> src, dst;
  std::vector<CopyEvent> events;
  for (int i = 0; i < 16; ++i) {
    src.push_back(pattern(n, 100 + i));
    dst.emplace_back(n, 0);
  }
  for (int i = 0; i < 16; ++i)
    events.push_back(engine->copy(Direction::kD2H, dst[i].data(), src[i].data(), n));
  engine->synchronize();
  for (int i = 0; i < 16; ++i) {
    EXPECT_TRUE(events[i].query());
    ASSERT_EQ(dst[i], src[i]);
  }
}

TEST_P(HostCopyEngineTest, ManySubmittingThreads) {
  auto engine = make_copy_engine(host_options(GetParam(), 4096));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < 30; ++i) {
        std::size_t n = 1 + (t * 7919 + i * 104729) % (300 << 10);
        std::vector<unsigned char> src = pattern(n, t * 1000 + i), dst(n, 0);
        engine->copy(i % 2 ? Direction::kD2H : Direction::kH2D, dst.data(), src.data(), n)
            .synchronize();
        if (dst != src) ++mismatches;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Threads, HostCopyEngineTest, ::testing::Values(1, 2, 4));

TEST(CopyEngine, DestructorFinishesQueuedCopies) {
  const std::size_t n = 4 << 20;
  std::vector<unsigned char> src = pattern(n, 9), dst(n, 0);
  CopyEvent done;
  {
    auto engine = make_copy_engine(host_options(1));
    done = engine->copy(Direction::kD2H, dst.data(), src.data(), n);
  }
  EXPECT_TRUE(done.query());
  EXPECT_EQ(dst, src);
}

TEST(CopyEngine, RejectsBadOptions) {
  CopyEngineOptions o = host_options(0);
  EXPECT_THROW(make_copy_engine(o), std::invalid_argument);
  o = host_options(65);
  EXPECT_THROW(make_copy_engine(o), std::invalid_argument);
  o = host_options(2, 100);
  try {
    make_copy_engine(o);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("min_piece_bytes=100 must be >= 4096"));
  }
}

}  // namespace
}  // namespace stp::offload
