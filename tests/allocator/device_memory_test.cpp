#include "allocator/device_memory.h"

#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

namespace stp::allocator {
namespace {

TEST(MemoryAccount, TracksResidentAndPeak) {
  MemoryAccount a;
  a.add(100);
  a.add(50);
  a.sub(120);
  EXPECT_EQ(a.resident(), 30);
  EXPECT_EQ(a.peak(), 150);
  a.add(10);
  EXPECT_EQ(a.peak(), 150);
  a.reset_peak();
  EXPECT_EQ(a.peak(), 40);
  a.add(200);
  EXPECT_EQ(a.peak(), 240);
}

TEST(MemoryAccount, ConcurrentUpdatesAreExact) {
  MemoryAccount a;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        a.add(3);
        a.sub(3);
      }
      a.add(7);
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(a.resident(), 28);
  EXPECT_GE(a.peak(), 28);
  EXPECT_LE(a.peak(), 4 * 3 + 28);
}

TEST(DeviceAllocator, HostBackendGivesAlignedWritableMemory) {
  auto alloc = make_device_allocator(Backend::kHost);
  EXPECT_EQ(alloc->backend(), Backend::kHost);
  void* p = alloc->allocate(1000003);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u);
  std::memset(p, 7, 1000003);
  alloc->deallocate(p);
  EXPECT_THROW(alloc->allocate(0), std::invalid_argument);
}

TEST(DeviceAllocator, AutoMatchesTheMachine) {
  auto alloc = make_device_allocator(Backend::kAuto);
  EXPECT_EQ(alloc->backend(), cuda_device_available() ? Backend::kCuda : Backend::kHost);
  if (!cuda_device_available()) {
    EXPECT_THROW(make_device_allocator(Backend::kCuda), std::invalid_argument);
  }
}

}  // namespace
}  // namespace stp::allocator
