// Copy-engine bandwidth benchmark shared by `stp bench copy` and bench/offload: the CopyEngine
// against the plainest way to move the same bytes, measured in the same run.
//
//   host backend: `copies` D2H copies of `bytes` from a "device" buffer into a pinned pool
//                 block, each ordered after the previous one, against a single-buffer memcpy
//                 loop on the calling thread (target: ratio >= 0.8).
//   cuda backend: D2H, H2D and both directions at once, against a bare cudaMemcpyAsync loop on
//                 cudaHostAlloc'ed memory (target: ratio >= 0.9 each).
// Runs alternate between the two sides; each figure is the median over `repeats` runs.
//
// Thread-safety: runs on the calling thread (plus the engine's own threads).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "allocator/backend.h"
#include "allocator/numa.h"

namespace stp::offload {

struct CopyBenchOptions {
  std::size_t bytes = std::size_t{32} << 20;  // bytes per copy, >= 4096
  int copies = 8;                             // copies per timed run, >= 1
  int repeats = 7;                            // timed runs per side, >= 1
  int threads = 2;                            // host copy engine workers, [1, 64]
  allocator::Backend backend = allocator::Backend::kHost;
  int numa_node = allocator::kUnbound;  // host: bind pool and workers; kUnbound: don't
};

struct CopyBenchLine {
  std::string direction;        // "d2h", "h2d", "both"
  double copy_engine_gbps = 0;  // GB/s = 1e9 bytes/s
  double baseline_gbps = 0;     // memcpy (host) or bare cudaMemcpyAsync (cuda)
  double ratio = 0;             // copy_engine_gbps / baseline_gbps
};

struct CopyBenchResult {
  std::string backend;  // "host" or "cuda"
  std::size_t bytes = 0;
  int copies = 0;
  int threads = 0;
  std::vector<CopyBenchLine> lines;  // host: {d2h}; cuda: {d2h, h2d, both}
};

// Throws std::invalid_argument for bad options.
CopyBenchResult bench_copy(const CopyBenchOptions& options);

// One JSON object on one line. The host form is
// {"bench":"copy","backend":"host",...,"copy_engine_gbps":..,"memcpy_gbps":..,"ratio":..}.
std::string to_json(const CopyBenchResult& r);

}  // namespace stp::offload
