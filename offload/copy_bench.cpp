#include "offload/copy_bench.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>

#include <nlohmann/json.hpp>

#include "allocator/device_memory.h"
#include "allocator/pinned_host_pool.h"
#include "allocator/size_classes.h"
#include "common/check.h"
#include "common/round.h"
#include "offload/copy_engine.h"

#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>

#include "common/cuda_check.h"
#endif

namespace stp::offload {

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median GB/s of `moved` bytes per run for each side, the runs of the two sides alternating
// so that machine noise hits both alike.
CopyBenchLine measure(const std::string& direction, double moved, int repeats,
                      const std::function<void()>& engine_run,
                      const std::function<void()>& baseline_run) {
  engine_run();  // warm-up: thread start, caches, TLB
  baseline_run();
  std::vector<double> engine_s, baseline_s;
  for (int i = 0; i < repeats; ++i) {
    auto t0 = Clock::now();
    engine_run();
    auto t1 = Clock::now();
    baseline_run();
    auto t2 = Clock::now();
    engine_s.push_back(std::chrono::duration<double>(t1 - t0).count());
    baseline_s.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  CopyBenchLine line;
  line.direction = direction;
  line.copy_engine_gbps = moved / median(engine_s) / 1e9;
  line.baseline_gbps = moved / median(baseline_s) / 1e9;
  line.ratio = line.copy_engine_gbps / line.baseline_gbps;
  return line;
}

std::unique_ptr<allocator::PinnedHostPool> make_pool(std::size_t bytes, int blocks,
                                                     allocator::HostMemoryKind memory, int node) {
  allocator::PinnedPoolOptions po;
  po.capacity_bytes = static_cast<std::size_t>(blocks) * allocator::size_class(bytes);
  po.slab_bytes = po.capacity_bytes;
  po.memory = memory;
  po.numa_node = node;
  return std::make_unique<allocator::PinnedHostPool>(po);
}

CopyBenchResult bench_host(const CopyBenchOptions& o) {
  allocator::NumaPlacement placement;
  if (o.numa_node != allocator::kUnbound) placement = allocator::placement_for(o.numa_node, -1);
  auto pool = make_pool(o.bytes, 1, allocator::HostMemoryKind::kMmap, o.numa_node);
  allocator::HostBlock host = pool->allocate(o.bytes);
  auto device_memory = allocator::make_device_allocator(Backend::kHost);
  void* device = device_memory->allocate(o.bytes);
  std::memset(device, 0x3c, o.bytes);  // first touch

  CopyEngineOptions co;
  co.backend = Backend::kHost;
  co.threads = o.threads;
  co.placement = placement;
  auto engine = make_copy_engine(co);

  auto engine_run = [&] {
    CopyEvent last;
    for (int i = 0; i < o.copies; ++i)
      last = engine->copy(Direction::kD2H, host.ptr, device, o.bytes, {&last, 1});
    last.synchronize();
  };
  auto memcpy_run = [&] {
    for (int i = 0; i < o.copies; ++i) std::memcpy(host.ptr, device, o.bytes);
  };
  CopyBenchResult r;
  r.backend = "host";
  r.bytes = o.bytes;
  r.copies = o.copies;
  r.threads = o.threads;
  r.lines.push_back(
      measure("d2h", static_cast<double>(o.bytes) * o.copies, o.repeats, engine_run, memcpy_run));
  device_memory->deallocate(device);
  pool->free(host);
  return r;
}

#ifdef STP_WITH_CUDA
CopyBenchResult bench_cuda(const CopyBenchOptions& o) {
  int device_index = 0;
  STP_CUDA_CHECK(cudaGetDevice(&device_index));
  allocator::NumaPlacement placement = allocator::placement_for(o.numa_node, device_index);
  auto pool = make_pool(o.bytes, 2, allocator::HostMemoryKind::kCudaRegister, placement.node);
  allocator::HostBlock host_a = pool->allocate(o.bytes), host_b = pool->allocate(o.bytes);
  auto device_memory = allocator::make_device_allocator(Backend::kCuda);
  void* dev_a = device_memory->allocate(o.bytes);
  void* dev_b = device_memory->allocate(o.bytes);
  CopyEngineOptions co;
  co.backend = Backend::kCuda;
  co.device = device_index;
  auto engine = make_copy_engine(co);

  // Baseline: the same copies on two plain streams, into cudaHostAlloc'ed memory.
  void* pinned_a = nullptr;
  void* pinned_b = nullptr;
  STP_CUDA_CHECK(cudaHostAlloc(&pinned_a, o.bytes, cudaHostAllocPortable));
  STP_CUDA_CHECK(cudaHostAlloc(&pinned_b, o.bytes, cudaHostAllocPortable));
  cudaStream_t s_d2h = nullptr, s_h2d = nullptr;
  STP_CUDA_CHECK(cudaStreamCreateWithFlags(&s_d2h, cudaStreamNonBlocking));
  STP_CUDA_CHECK(cudaStreamCreateWithFlags(&s_h2d, cudaStreamNonBlocking));

  auto engine_run = [&](bool d2h, bool h2d) {
    for (int i = 0; i < o.copies; ++i) {
      if (d2h) engine->copy(Direction::kD2H, host_a.ptr, dev_a, o.bytes);
      if (h2d) engine->copy(Direction::kH2D, dev_b, host_b.ptr, o.bytes);
    }
    engine->synchronize();
  };
  auto bare_run = [&](bool d2h, bool h2d) {
    for (int i = 0; i < o.copies; ++i) {
      if (d2h)
        STP_CUDA_CHECK(cudaMemcpyAsync(pinned_a, dev_a, o.bytes, cudaMemcpyDeviceToHost, s_d2h));
      if (h2d)
        STP_CUDA_CHECK(cudaMemcpyAsync(dev_b, pinned_b, o.bytes, cudaMemcpyHostToDevice, s_h2d));
    }
    STP_CUDA_CHECK(cudaStreamSynchronize(s_d2h));
    STP_CUDA_CHECK(cudaStreamSynchronize(s_h2d));
  };
  CopyBenchResult r;
  r.backend = "cuda";
  r.bytes = o.bytes;
  r.copies = o.copies;
  double one = static_cast<double>(o.bytes) * o.copies;
  r.lines.push_back(measure(
      "d2h", one, o.repeats, [&] { engine_run(true, false); }, [&] { bare_run(true, false); }));
  r.lines.push_back(measure(
      "h2d", one, o.repeats, [&] { engine_run(false, true); }, [&] { bare_run(false, true); }));
  r.lines.push_back(measure(
      "both", 2 * one, o.repeats, [&] { engine_run(true, true); }, [&] { bare_run(true, true); }));
  STP_CUDA_CHECK(cudaStreamDestroy(s_d2h));
  STP_CUDA_CHECK(cudaStreamDestroy(s_h2d));
  STP_CUDA_CHECK(cudaFreeHost(pinned_a));
  STP_CUDA_CHECK(cudaFreeHost(pinned_b));
  device_memory->deallocate(dev_a);
  device_memory->deallocate(dev_b);
  pool->free(host_a);
  pool->free(host_b);
  return r;
}
#endif

}  // namespace

CopyBenchResult bench_copy(const CopyBenchOptions& o) {
  STP_CHECK(o.bytes >= 4096, "bench copy: bytes=", o.bytes, " must be >= 4096");
  STP_CHECK(o.copies >= 1, "bench copy: copies=", o.copies, " must be >= 1");
  STP_CHECK(o.repeats >= 1, "bench copy: repeats=", o.repeats, " must be >= 1");
  STP_CHECK(o.threads >= 1 && o.threads <= 64, "bench copy: threads=", o.threads,
            " must be in [1, 64]");
  if (allocator::resolve_backend(o.backend) == Backend::kCuda) {
#ifdef STP_WITH_CUDA
    return bench_cuda(o);
#endif
  }
  return bench_host(o);
}

std::string to_json(const CopyBenchResult& r) {
  using Json = nlohmann::ordered_json;  // members in the order written
  Json j = {{"bench", "copy"}, {"backend", r.backend}, {"bytes", r.bytes}, {"copies", r.copies}};
  if (r.backend == "host") {
    const CopyBenchLine& l = r.lines.at(0);
    j["threads"] = r.threads;
    j["copy_engine_gbps"] = round_to(l.copy_engine_gbps, 2);
    j["memcpy_gbps"] = round_to(l.baseline_gbps, 2);
    j["ratio"] = round_to(l.ratio, 3);
    return j.dump();
  }
  for (const CopyBenchLine& l : r.lines)
    j[l.direction] = {{"copy_engine_gbps", round_to(l.copy_engine_gbps, 2)},
                      {"cuda_memcpy_async_gbps", round_to(l.baseline_gbps, 2)},
                      {"ratio", round_to(l.ratio, 3)}};
  return j.dump();
}

}  // namespace stp::offload
