#include "engine/activation_offload.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <map>

#include "allocator/numa.h"
#include "allocator/pinned_host_pool.h"
#include "common/check.h"
#include "common/cuda_check.h"
#include "offload/copy_engine.h"
#include "offload/offloader.h"

namespace stp::engine {
namespace {

// What a field needs to be rebuilt after its trip to host.
struct FieldMeta {
  std::vector<std::int64_t> sizes;
  at::TensorOptions options;
};

offload::ActivationKey key_of(const ActivationSet& set) { return {set.chunk(), set.mb()}; }

}  // namespace

struct PooledActivationOffload::Impl {
  std::unique_ptr<allocator::PinnedHostPool> pool;
  std::unique_ptr<offload::CopyEngine> copies;
  std::unique_ptr<offload::Offloader> offloader;
  bool cuda = false;
  // Per set in flight: the fields' metadata, and the tensors a reload allocated.
  std::map<offload::ActivationKey, std::map<std::string, FieldMeta>> meta;
};

PooledActivationOffload::PooledActivationOffload(std::int64_t host_capacity_bytes, bool cuda)
    : impl_(std::make_unique<Impl>()) {
  STP_CHECK(host_capacity_bytes >= 1, "offload host capacity ", host_capacity_bytes,
            " bytes must be >= 1");
  // Slabs and copy workers on the NUMA node nearest the GPU (CUDA), or unbound on CPU builds.
  int device = -1;
  if (cuda) STP_CUDA_CHECK(cudaGetDevice(&device));
  const allocator::NumaPlacement placement = allocator::placement_for(allocator::kUnbound, device);
  allocator::PinnedPoolOptions po;
  po.numa_node = placement.node;
  po.capacity_bytes = static_cast<std::size_t>(host_capacity_bytes);
  po.slab_bytes = std::min<std::size_t>(po.capacity_bytes, std::size_t{1} << 30);
  po.capacity_setting = "offload host capacity (derived from the plan)";
  impl_->pool = std::make_unique<allocator::PinnedHostPool>(po);
  offload::CopyEngineOptions co;
  co.backend = cuda ? allocator::Backend::kCuda : allocator::Backend::kHost;
  co.placement = placement;
  co.device = std::max(device, 0);
  impl_->copies = offload::make_copy_engine(co);
  impl_->offloader = std::make_unique<offload::Offloader>(*impl_->pool, *impl_->copies);
  impl_->cuda = cuda;
}

PooledActivationOffload::~PooledActivationOffload() {
  try {
    impl_->offloader->synchronize();
  } catch (const std::exception& e) {
    log_error(str_cat("offload teardown: ", e.what()));
  }
}

void PooledActivationOffload::start_offload(ActivationSet& set) {
  const auto key = key_of(set);
  std::vector<offload::SavedBuffer> buffers;
  auto& meta = impl_->meta[key];
  for (auto& [name, t] : set.fields()) {
    if (!t.defined() || t.nbytes() == 0) continue;
    if (!t.is_contiguous()) t = t.contiguous();
    meta[name] = FieldMeta{t.sizes().vec(), t.options()};
    buffers.push_back({name, t.data_ptr(), t.nbytes(),
                       [&set, name = name] { set.fields()[name] = at::Tensor(); }});
  }
  // The forward that wrote the set ran on this thread (CPU) or is queued on the current
  // stream (CUDA): the D2H waits for it through `ready`.
  allocator::CopyEvent ready;
  if (impl_->cuda) ready = allocator::CopyEvent::record(nullptr);
  impl_->offloader->offload(key, std::move(buffers), ready);
}

void PooledActivationOffload::start_reload(ActivationSet& set) {
  const auto key = key_of(set);
  auto& meta = impl_->meta.at(key);
  impl_->offloader->reload(key, [&](const std::string& name, std::size_t bytes) -> void* {
    const FieldMeta& m = meta.at(name);
    at::Tensor t = at::empty(m.sizes, m.options);
    STP_ASSERT(static_cast<std::size_t>(t.nbytes()) == bytes, "reload of ", name, ": ", t.nbytes(),
               " bytes allocated for ", bytes);
    set.fields()[name] = t;  // not read before wait_reload()
    return t.data_ptr();
  });
}

double PooledActivationOffload::wait_reload(ActivationSet& set) {
  const auto key = key_of(set);
  // A cancelled round trip kept the original tensors; a reload filled in new ones.
  double waited = impl_->offloader->wait(key);
  impl_->meta.erase(key);
  return waited;
}

void PooledActivationOffload::poll() { impl_->offloader->poll(); }

double PooledActivationOffload::drain() {
  const auto t0 = std::chrono::steady_clock::now();
  impl_->offloader->synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::int64_t PooledActivationOffload::host_bytes() const {
  return impl_->offloader->stats().host_bytes;
}

}  // namespace stp::engine
