// Pinned pool: allocate + free of a cached block against what each buffer costs without a pool,
// malloc + mlock (+ munlock + free) of the same size, in the same run. Target: the pool pair's
// median <= 1 us. `stp bench pool` prints the same comparison as one JSON line.
#include <sys/mman.h>

#include <cstdlib>

#include "allocator/pinned_host_pool.h"
#include "bench/ratio_reporter.h"

namespace {

using stp::allocator::HostBlock;
using stp::allocator::HostMemoryKind;
using stp::allocator::PinnedHostPool;
using stp::allocator::PinnedPoolOptions;

void BM_PoolCachedAllocFree(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  PinnedPoolOptions o;
  o.capacity_bytes = 2 * bytes;
  o.slab_bytes = 2 * bytes;
  o.memory = HostMemoryKind::kMmap;
  PinnedHostPool pool(o);
  pool.free(pool.allocate(bytes));
  for (auto _ : state) {
    HostBlock b = pool.allocate(bytes);
    benchmark::DoNotOptimize(b.ptr);
    pool.free(b);
  }
}

void BM_MallocMlockFree(benchmark::State& state) {
  const auto bytes = static_cast<std::size_t>(state.range(0));
  int locked = 0;
  for (auto _ : state) {
    void* p = std::malloc(bytes);
    benchmark::DoNotOptimize(p);
    if (mlock(p, bytes) == 0) {
      ++locked;
      munlock(p, bytes);
    }
    std::free(p);
  }
  state.counters["locked"] = benchmark::Counter(locked, benchmark::Counter::kAvgIterations);
}

// 1 MiB and 4 MiB: under the usual 8 MiB RLIMIT_MEMLOCK, so the baseline really locks.
BENCHMARK(BM_PoolCachedAllocFree)->Arg(1 << 20)->Arg(4 << 20);
BENCHMARK(BM_MallocMlockFree)->Arg(1 << 20)->Arg(4 << 20);

}  // namespace

int main(int argc, char** argv) {
  return stp::bench::run_with_ratios(
      argc, argv,
      {{"BM_PoolCachedAllocFree/1048576", "BM_MallocMlockFree/1048576"},
       {"BM_PoolCachedAllocFree/4194304", "BM_MallocMlockFree/4194304"}});
}
