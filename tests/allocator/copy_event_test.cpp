#include "allocator/copy_event.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "allocator/backend.h"

namespace stp::allocator {
namespace {

TEST(CopyEvent, NullEventIsComplete) {
  CopyEvent e;
  EXPECT_TRUE(e.is_null());
  EXPECT_TRUE(e.query());
  e.synchronize();
  e.block_stream(nullptr);
  EXPECT_FALSE(e.is_host());
  EXPECT_FALSE(e.is_cuda());
}

TEST(CopyEvent, HostEventCompletesAfterEveryPart) {
  CopyEvent e = CopyEvent::host(3);
  CopyEvent copy = e;  // shares the state
  EXPECT_TRUE(e.is_host());
  EXPECT_FALSE(e.query());
  e.signal();
  e.signal();
  EXPECT_FALSE(copy.query());
  copy.signal();
  EXPECT_TRUE(e.query());
  EXPECT_TRUE(copy.query());
  EXPECT_THROW(e.signal(), std::logic_error);  // over-signalled: a producer bug
}

TEST(CopyEvent, RejectsBadPartsAndSignalOnNull) {
  EXPECT_THROW(CopyEvent::host(0), std::invalid_argument);
  EXPECT_THROW(CopyEvent().signal(), std::logic_error);
}

TEST(CopyEvent, SynchronizeBlocksUntilTheLastSignalFromOtherThreads) {
  for (int round = 0; round < 50; ++round) {
    constexpr int kParts = 4;
    CopyEvent e = CopyEvent::host(kParts);
    std::atomic<int> signalled{0};
    std::vector<std::thread> producers;
    for (int i = 0; i < kParts; ++i)
      producers.emplace_back([&, e] {
        signalled.fetch_add(1);
        e.signal();
      });
    e.synchronize();
    EXPECT_EQ(signalled.load(), kParts);
    EXPECT_TRUE(e.query());
    for (auto& t : producers) t.join();
  }
}

TEST(CopyEvent, WaiterSeesDataWrittenBeforeSignal) {
  // The event must publish the producer's writes (what a copy thread did) to the waiter.
  std::vector<int> data(1 << 16, 0);
  CopyEvent e = CopyEvent::host(1);
  std::thread producer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<int>(i);
    e.signal();
  });
  e.block_stream(nullptr);  // a host event: a host wait
  for (std::size_t i = 0; i < data.size(); ++i) ASSERT_EQ(data[i], static_cast<int>(i));
  producer.join();
}

TEST(CopyEvent, RecordWithoutCudaDeviceFails) {
  if (cuda_device_available()) GTEST_SKIP() << "a CUDA device is present; see CudaEventPool";
  // No CUDA build: invalid_argument; CUDA build on a machine without a GPU: the runtime error.
  EXPECT_ANY_THROW(CopyEvent::record(nullptr));
}

}  // namespace
}  // namespace stp::allocator
