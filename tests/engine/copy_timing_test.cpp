// Copy timing for the measured timeline (Note [Step clock] in engine/executor.h): the host copy
// engine's timed_copy marks when a batch began (after its prerequisites) and completed, and the
// Offloader's copy log records one entry per copy, a cancelled reload included.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/clock.h"
#include "offload/copy_engine.h"
#include "offload/offloader.h"

namespace stp::offload {
namespace {

constexpr std::size_t kMiB = 1 << 20;

std::unique_ptr<CopyEngine> host_engine() {
  CopyEngineOptions co;
  co.backend = Backend::kHost;
  co.threads = 2;
  co.min_piece_bytes = 64 << 10;
  return make_copy_engine(co);
}

TEST(CopyTiming, HostTimedCopyMarksStartAfterItsPrerequisiteAndEndAtCompletion) {
  auto copies = host_engine();
  std::vector<char> src(4 * kMiB, 7), dst(4 * kMiB, 0);
  CopyEvent gate = CopyEvent::host();  // the copy may not start before this
  CopySpan span;
  const CopyRegion r{dst.data(), src.data(), src.size()};
  CopyEvent done = copies->timed_copy(Direction::kD2H, std::span<const CopyRegion>(&r, 1),
                                      std::span<const CopyEvent>(&gate, 1), span);
  ASSERT_FALSE(span.start.is_null());
  ASSERT_FALSE(span.end.is_null());
  EXPECT_FALSE(span.start.is_device());
  EXPECT_LT(span.start.host_seconds(), 0) << "started before its prerequisite";
  const double opened = now_seconds();
  gate.signal();
  done.synchronize();
  EXPECT_GE(span.start.host_seconds(), opened);
  EXPECT_GE(span.end.host_seconds(), span.start.host_seconds());
  EXPECT_LE(span.end.host_seconds(), now_seconds());
  EXPECT_EQ(std::memcmp(dst.data(), src.data(), src.size()), 0);
  // An untimed copy reports nothing, through the default as through the engine.
  CopySpan none{TimeMark::host_now(), TimeMark::host_now()};
  copies->CopyEngine::timed_copy(Direction::kH2D, std::span<const CopyRegion>(&r, 1), {}, none);
  EXPECT_TRUE(none.start.is_null() && none.end.is_null());
  copies->synchronize();
}

TEST(CopyTiming, OffloaderLogsEveryCopyOnlyWhenAsked) {
  allocator::PinnedPoolOptions po;
  po.capacity_bytes = 16 * kMiB;
  po.slab_bytes = 16 * kMiB;
  po.memory = allocator::HostMemoryKind::kMmap;
  allocator::PinnedHostPool pool(po);
  auto copies = host_engine();
  std::vector<std::vector<char>> device;  // the "device" buffers, owned here
  auto buffers = [&](int n) {
    device.emplace_back(n * kMiB, 3);
    return std::vector<SavedBuffer>{{"x", device.back().data(), device.back().size(), {}, {}}};
  };
  device.reserve(8);
  Offloader off(pool, *copies);
  auto allocate = [&](const std::string&, std::size_t bytes) -> void* {
    device.emplace_back(bytes, 0);
    return device.back().data();
  };
  off.offload({0, 0}, buffers(1));
  off.synchronize();
  EXPECT_TRUE(off.take_copy_log().empty()) << "logged without log_copies(true)";
  off.reload({0, 0}, allocate);
  off.wait({0, 0});

  off.log_copies(true);
  off.offload({0, 1}, buffers(2));
  off.synchronize();  // on host: the reload copies
  off.reload({0, 1}, allocate);
  off.wait({0, 1});
  CopyEvent gate = CopyEvent::host();  // holds the next D2H: the reload cancels it
  {
    auto b = buffers(1);
    off.offload({1, 0}, std::move(b), gate);
  }
  off.reload({1, 0}, allocate);
  gate.signal();
  off.wait({1, 0});
  const std::vector<CopyRecord> log = off.take_copy_log();
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(log[0].dir, Direction::kD2H);
  EXPECT_EQ(log[1].dir, Direction::kH2D);
  EXPECT_EQ(log[1].key, (ActivationKey{0, 1}));
  EXPECT_EQ(log[1].bytes, static_cast<std::int64_t>(2 * kMiB));
  for (int i = 0; i < 2; ++i) {
    EXPECT_FALSE(log[i].cancelled);
    EXPECT_GE(log[i].span.start.host_seconds(), 0) << i;
    EXPECT_GE(log[i].span.end.host_seconds(), log[i].span.start.host_seconds()) << i;
  }
  EXPECT_GE(log[1].span.start.host_seconds(), log[0].span.end.host_seconds())
      << "the H2D ran before the D2H it reads";
  EXPECT_EQ(log[3].dir, Direction::kH2D);
  EXPECT_TRUE(log[3].cancelled);
  EXPECT_TRUE(log[3].span.start.is_null());
  EXPECT_EQ(log[3].span.end.host_seconds(), log[2].span.end.host_seconds())
      << "a cancelled reload ends with the D2H that still read the originals";
  EXPECT_TRUE(off.take_copy_log().empty());
}

}  // namespace
}  // namespace stp::offload
