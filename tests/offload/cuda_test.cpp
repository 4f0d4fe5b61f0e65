// The CUDA backend of the allocator and offload libraries: event pool, pinned slabs (both
// kinds), copy engine, offloader, ordering against a compute stream. Label `gpu`: every test
// skips without a device (and the whole file is one skip in a build without CUDA).
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "allocator/device_memory.h"
#include "allocator/pinned_host_pool.h"
#include "offload/copy_engine.h"
#include "offload/offloader.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace stp::offload {
namespace {

#ifdef STP_WITH_CUDA

#define REQUIRE_CUDA_DEVICE() \
  if (!allocator::cuda_device_available()) GTEST_SKIP() << "needs a CUDA device"

void check(cudaError_t err) { ASSERT_EQ(err, cudaSuccess) << cudaGetErrorString(err); }

// Holds a stream until release(): a host function that blocks the stream on a flag. Lets a
// test keep CUDA work "in flight" for as long as it wants without a kernel.
class StreamPlug {
 public:
  explicit StreamPlug(cudaStream_t s) { check(cudaLaunchHostFunc(s, &StreamPlug::wait, &open_)); }
  void release() { open_.store(true); }

 private:
  static void CUDART_CB wait(void* flag) {
    while (!static_cast<std::atomic<bool>*>(flag)->load()) {
    }
  }
  std::atomic<bool> open_{false};
};

std::vector<unsigned char> pattern(std::size_t n, unsigned seed) {
  std::vector<unsigned char> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<unsigned char>((i * 131 + seed) >> 3);
  return v;
}

allocator::PinnedPoolOptions pool_options(allocator::HostMemoryKind kind) {
  allocator::PinnedPoolOptions o;
  o.capacity_bytes = 64 << 20;
  o.slab_bytes = 32 << 20;
  o.memory = kind;
  return o;
}

TEST(Cuda, EventPoolRecyclesEvents) {
  REQUIRE_CUDA_DEVICE();
  { CopyEvent::record(nullptr).synchronize(); }
  CopyEvent::PoolStats warm = CopyEvent::cuda_pool_stats();
  EXPECT_GE(warm.idle, 1);
  for (int i = 0; i < 100; ++i) {
    CopyEvent e = CopyEvent::record(nullptr);
    EXPECT_TRUE(e.is_cuda());
    EXPECT_NE(e.cuda_event(), nullptr);
    e.synchronize();
    EXPECT_TRUE(e.query());
  }
  EXPECT_EQ(CopyEvent::cuda_pool_stats().created, warm.created);  // reused, none created
}

TEST(Cuda, PinnedSlabsOfBothKindsRoundTrip) {
  REQUIRE_CUDA_DEVICE();
  for (auto kind :
       {allocator::HostMemoryKind::kCudaRegister, allocator::HostMemoryKind::kCudaHostAlloc}) {
    SCOPED_TRACE(allocator::to_string(kind));
    allocator::PinnedHostPool pool(pool_options(kind));
    EXPECT_EQ(pool.stats().locked_bytes, pool.stats().reserved_bytes);
    CopyEngineOptions co;
    co.backend = Backend::kCuda;
    co.chunk_bytes = 1 << 20;
    auto engine = make_copy_engine(co);
    auto device = allocator::make_device_allocator(Backend::kCuda);
    const std::size_t n = (5 << 20) + 3;
    allocator::HostBlock a = pool.allocate(n), b = pool.allocate(n);
    std::vector<unsigned char> src = pattern(n, 1);
    std::memcpy(a.ptr, src.data(), n);
    void* dev = device->allocate(n);
    CopyEvent h2d = engine->copy(Direction::kH2D, dev, a.ptr, n);
    CopyEvent d2h = engine->copy(Direction::kD2H, b.ptr, dev, n, {&h2d, 1});
    d2h.synchronize();
    EXPECT_EQ(std::memcmp(b.ptr, src.data(), n), 0);
    pool.free(a, {h2d});
    pool.free(b, {d2h});
    device->deallocate(dev);
  }
}

TEST(Cuda, PinnedBlockWaitsForItsCudaCopy) {
  REQUIRE_CUDA_DEVICE();
  allocator::PinnedHostPool pool(pool_options(allocator::HostMemoryKind::kAuto));
  cudaStream_t s = nullptr;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  allocator::HostBlock block = pool.allocate(32 << 20);  // a whole slab
  StreamPlug plug(s);
  CopyEvent copy = CopyEvent::record(s);  // completes only after the plug opens
  pool.free(block, {copy});
  allocator::HostBlock other = pool.allocate(32 << 20);  // the other slab
  EXPECT_NE(other.ptr, block.ptr);
  EXPECT_THROW(pool.allocate(32 << 20), allocator::PinnedPoolOutOfMemory);
  plug.release();
  check(cudaStreamSynchronize(s));
  allocator::HostBlock again = pool.allocate(32 << 20);
  EXPECT_EQ(again.ptr, block.ptr);
  pool.free(again);
  pool.free(other);
  check(cudaStreamDestroy(s));
}

TEST(Cuda, OffloadWaitsForTheComputeStreamAndRoundTrips) {
  REQUIRE_CUDA_DEVICE();
  allocator::PinnedHostPool pool(pool_options(allocator::HostMemoryKind::kAuto));
  CopyEngineOptions co;
  co.backend = Backend::kCuda;
  auto engine = make_copy_engine(co);
  Offloader offloader(pool, *engine);
  auto device = allocator::make_device_allocator(Backend::kCuda);
  cudaStream_t compute = nullptr;
  check(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));

  const std::size_t n = 3 << 20;
  void* act = device->allocate(n);
  StreamPlug plug(compute);                       // the "forward" is still running...
  check(cudaMemsetAsync(act, 0x5a, n, compute));  // ...and writes the activation last
  CopyEvent forward_done = CopyEvent::record(compute);
  bool released = false;
  offloader.offload({0, 0}, {{"x", act, n, [&] { released = true; }}}, forward_done);
  offloader.poll();
  EXPECT_FALSE(released);  // the D2H cannot have run: it waits for the plugged stream
  plug.release();
  offloader.synchronize();
  EXPECT_TRUE(released);
  device->deallocate(act);  // what the release closure stands for

  void* back = nullptr;
  offloader.reload(
      {0, 0}, [&](const std::string&, std::size_t bytes) { return back = device->allocate(bytes); },
      compute);
  offloader.wait({0, 0}, compute);  // the compute stream waits; the host does not
  std::vector<unsigned char> host(n);
  check(cudaMemcpyAsync(host.data(), back, n, cudaMemcpyDeviceToHost, compute));
  check(cudaStreamSynchronize(compute));
  for (std::size_t i = 0; i < n; i += 4099) ASSERT_EQ(host[i], 0x5a) << i;
  EXPECT_EQ(offloader.device_bytes(), 0);
  device->deallocate(back);
  check(cudaStreamDestroy(compute));
}

#else  // !STP_WITH_CUDA

TEST(Cuda, NeedsACudaBuild) {
  GTEST_SKIP() << "needs a CUDA build (-DSTP_WITH_CUDA=ON) and device";
}

#endif

}  // namespace
}  // namespace stp::offload
