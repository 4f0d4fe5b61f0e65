// Host copy engine bandwidth against a plain single-buffer memcpy of the same bytes, in the same
// run (target: >= 80 % of memcpy). The "device" buffer is ordinary memory, the destination a
// pinned pool block, as in an offload on the host backend. `stp bench copy` prints the same
// comparison as one JSON line.
#include <cstring>

#include "allocator/device_memory.h"
#include "allocator/pinned_host_pool.h"
#include "bench/ratio_reporter.h"
#include "offload/copy_engine.h"

namespace {

using namespace stp;

constexpr std::size_t kBytes = std::size_t{32} << 20;  // per copy: well beyond the caches

struct Buffers {
  Buffers() {
    allocator::PinnedPoolOptions o;
    o.capacity_bytes = kBytes;
    o.slab_bytes = kBytes;
    o.memory = allocator::HostMemoryKind::kMmap;
    pool = std::make_unique<allocator::PinnedHostPool>(o);
    host = pool->allocate(kBytes);
    device_memory = allocator::make_device_allocator(allocator::Backend::kHost);
    device = device_memory->allocate(kBytes);
    std::memset(device, 0x5a, kBytes);
  }
  ~Buffers() {
    device_memory->deallocate(device);
    pool->free(host);
  }
  std::unique_ptr<allocator::PinnedHostPool> pool;
  allocator::HostBlock host;
  std::unique_ptr<allocator::DeviceAllocator> device_memory;
  void* device = nullptr;
};

void BM_Memcpy(benchmark::State& state) {
  Buffers b;
  for (auto _ : state) {
    std::memcpy(b.host.ptr, b.device, kBytes);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * kBytes);
}

void BM_CopyEngine(benchmark::State& state) {
  Buffers b;
  offload::CopyEngineOptions o;
  o.backend = allocator::Backend::kHost;
  o.threads = static_cast<int>(state.range(0));
  auto engine = offload::make_copy_engine(o);
  for (auto _ : state)
    engine->copy(offload::Direction::kD2H, b.host.ptr, b.device, kBytes).synchronize();
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * kBytes);
}

BENCHMARK(BM_Memcpy)->UseRealTime();
BENCHMARK(BM_CopyEngine)->Arg(1)->Arg(2)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  return stp::bench::run_with_ratios(argc, argv,
                                     {{"BM_CopyEngine/1/real_time", "BM_Memcpy/real_time"},
                                      {"BM_CopyEngine/2/real_time", "BM_Memcpy/real_time"}});
}
