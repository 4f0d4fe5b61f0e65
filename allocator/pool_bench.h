// Pool micro-benchmark shared by `stp bench pool` and bench/allocator: allocate + free of a
// cached block against the baseline a caller would otherwise pay per buffer — malloc + mlock
// (+ munlock + free) on the host, cudaHostAlloc + cudaFreeHost on a GPU — measured in the same
// run. Medians over batches, in nanoseconds per allocate+free pair.
//
// Thread-safety: runs on the calling thread; creates its own pool.
#pragma once

#include <cstddef>
#include <string>

namespace stp::allocator {

struct PoolBenchOptions {
  std::size_t bytes = 1 << 20;  // block size, > 0 (the host baseline mlocks it: keep it under
                                // RLIMIT_MEMLOCK or the baseline measures a failing mlock)
  int batches = 200;            // timed batches per side, >= 5
  int pairs_per_batch = 100;    // pool pairs per timed batch, >= 1 (the baseline times one pair)
  bool cuda = false;            // GPU: cudaHostRegister'ed pool vs cudaHostAlloc baseline
};

struct PoolBenchResult {
  std::size_t bytes = 0;
  double pool_median_ns = 0;  // allocate + free of a cached block
  double pool_p90_ns = 0;
  double baseline_median_ns = 0;  // malloc+mlock+munlock+free, or cudaHostAlloc+cudaFreeHost
  std::string baseline;           // "malloc+mlock" or "cudaHostAlloc"
  bool baseline_locked = false;   // the host baseline's mlock succeeded
  double ratio = 0;               // baseline_median_ns / pool_median_ns
  std::string memory;             // the pool's HostMemoryKind
};

// Throws std::invalid_argument for bad options.
PoolBenchResult bench_pool(const PoolBenchOptions& options);

// One JSON object on one line.
std::string to_json(const PoolBenchResult& r);

}  // namespace stp::allocator
