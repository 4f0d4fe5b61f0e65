#include "allocator/pool_bench.h"

#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <nlohmann/json.hpp>

#include "allocator/pinned_host_pool.h"
#include "common/check.h"
#include "common/round.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#endif

namespace stp::allocator {

namespace {

using Clock = std::chrono::steady_clock;

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

// One baseline pair: what a caller without a pool pays for a fresh pinned buffer.
double baseline_pair_ns(std::size_t bytes, bool cuda, bool* locked) {
  auto t0 = Clock::now();
  if (cuda) {
#ifdef STP_WITH_CUDA
    void* p = nullptr;
    STP_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocPortable));
    STP_CUDA_CHECK(cudaFreeHost(p));
#endif
    *locked = true;
  } else {
    void* p = std::malloc(bytes);
    STP_ASSERT(p != nullptr, "malloc(", bytes, ") failed");
    *locked = mlock(p, bytes) == 0;  // faults every page in and pins it
    if (*locked) munlock(p, bytes);
    std::free(p);
  }
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

}  // namespace

PoolBenchResult bench_pool(const PoolBenchOptions& o) {
  STP_CHECK(o.bytes > 0, "bench pool: bytes=", o.bytes, " must be > 0");
  STP_CHECK(o.batches >= 5, "bench pool: batches=", o.batches, " must be >= 5");
  STP_CHECK(o.pairs_per_batch >= 1, "bench pool: pairs_per_batch=", o.pairs_per_batch,
            " must be >= 1");
  PinnedPoolOptions po;
  po.capacity_bytes = std::max<std::size_t>(o.bytes * 2, 1 << 20);
  po.slab_bytes = po.capacity_bytes;
  po.memory = o.cuda ? HostMemoryKind::kCudaRegister : HostMemoryKind::kMmap;
  PinnedHostPool pool(po);
  pool.free(pool.allocate(o.bytes));  // the block is cached from here on

  PoolBenchResult r;
  r.bytes = o.bytes;
  r.memory = to_string(pool.memory_kind());
  r.baseline = o.cuda ? "cudaHostAlloc" : "malloc+mlock";
  std::vector<double> pool_ns, base_ns;
  // Interleave the two sides so that machine noise hits both alike.
  for (int b = 0; b < o.batches; ++b) {
    auto t0 = Clock::now();
    for (int i = 0; i < o.pairs_per_batch; ++i) {
      HostBlock blk = pool.allocate(o.bytes);
      pool.free(blk);
    }
    pool_ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() /
                      o.pairs_per_batch);
    base_ns.push_back(baseline_pair_ns(o.bytes, o.cuda, &r.baseline_locked));
  }
  r.pool_median_ns = quantile(pool_ns, 0.5);
  r.pool_p90_ns = quantile(pool_ns, 0.9);
  r.baseline_median_ns = quantile(base_ns, 0.5);
  r.ratio = r.baseline_median_ns / std::max(r.pool_median_ns, 1e-3);
  return r;
}

std::string to_json(const PoolBenchResult& r) {
  using Json = nlohmann::ordered_json;  // members in the order written
  return Json{{"bench", "pool"},
              {"bytes", r.bytes},
              {"memory", r.memory},
              {"pool_median_ns", round_to(r.pool_median_ns, 1)},
              {"pool_p90_ns", round_to(r.pool_p90_ns, 1)},
              {"baseline", r.baseline},
              {"baseline_locked", r.baseline_locked},
              {"baseline_median_ns", round_to(r.baseline_median_ns, 1)},
              {"ratio", round_to(r.ratio, 1)}}
      .dump();
}

}  // namespace stp::allocator
