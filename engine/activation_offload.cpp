#include "engine/activation_offload.h"

#include <ATen/ATen.h>

#ifdef STP_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>

#include "allocator/numa.h"
#include "allocator/pinned_host_pool.h"
#include "common/check.h"
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

offload::DeviceOps torch_device_ops() {
  offload::DeviceOps ops = offload::runtime_device_ops();
#ifdef STP_WITH_CUDA
  // The model's kernels run on LibTorch's current stream of its device, which an embedder may
  // have set (CUDAStreamGuard); the runtime's legacy default stream would order nothing.
  ops.current_stream = [](int device) -> allocator::StreamHandle {
    return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
  };
  // Tensor.record_stream: the caching allocator reuses the block only after the work queued
  // on `stream` at the time it is freed.
  ops.record_stream = [](void* storage, allocator::StreamHandle stream, int device) {
    const auto* impl = static_cast<const c10::StorageImpl*>(storage);
    c10::cuda::CUDACachingAllocator::recordStream(
        impl->data_ptr(), c10::cuda::getStreamFromExternal(static_cast<cudaStream_t>(stream),
                                                           static_cast<c10::DeviceIndex>(device)));
  };
  // The caching allocator's own figures (gpu-review item 15): what tensors took at most and
  // what the allocator held, not nvidia-smi's process total.
  ops.memory_stats = [](int device) {
    const auto stats =
        c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    return offload::DeviceMemoryStats{stats.allocated_bytes[all].peak,
                                      stats.reserved_bytes[all].peak};
  };
  ops.reset_peak_memory = [](int device) {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  };
#endif
  return ops;
}

struct PooledActivationOffload::Impl {
  std::unique_ptr<allocator::PinnedHostPool> pool;
  std::unique_ptr<offload::CopyEngine> copies;
  std::unique_ptr<offload::Offloader> offloader;
  offload::DeviceOps ops;
  bool cuda = false;  // copies run on CUDA streams: events and stream waits, no host waits
  int device = -1;    // the model's CUDA device (cuda), else -1
  // Per set in flight: the fields' metadata, and the tensors a reload allocated.
  std::map<offload::ActivationKey, std::map<std::string, FieldMeta>> meta;

  // The compute stream: the current stream of the model's device (Note [Offload streams]).
  allocator::StreamHandle compute_stream() const { return ops.current_stream(device); }
};

namespace {

// A pool of host_capacity_bytes on the NUMA node nearest `device` (unbound for the CPU).
std::unique_ptr<allocator::PinnedHostPool> make_pool(std::int64_t host_capacity_bytes,
                                                     const allocator::NumaPlacement& placement) {
  STP_CHECK(host_capacity_bytes >= 1, "offload host capacity ", host_capacity_bytes,
            " bytes must be >= 1");
  allocator::PinnedPoolOptions po;
  po.numa_node = placement.node;
  po.capacity_bytes = static_cast<std::size_t>(host_capacity_bytes);
  po.slab_bytes = std::min<std::size_t>(po.capacity_bytes, std::size_t{1} << 30);
  po.capacity_setting = "offload host capacity (derived from the plan)";
  return std::make_unique<allocator::PinnedHostPool>(po);
}

}  // namespace

PooledActivationOffload::PooledActivationOffload(std::int64_t host_capacity_bytes, int device)
    : impl_(std::make_unique<Impl>()) {
  STP_CHECK(device >= -1, "offload device=", device, " must be a CUDA device >= 0 or -1 (CPU)");
  // Slabs and copy workers on the NUMA node nearest the GPU (CUDA), or unbound on the CPU.
  const allocator::NumaPlacement placement = allocator::placement_for(allocator::kUnbound, device);
  impl_->pool = make_pool(host_capacity_bytes, placement);
  impl_->ops = torch_device_ops();
  offload::CopyEngineOptions co;
  co.backend = device >= 0 ? allocator::Backend::kCuda : allocator::Backend::kHost;
  co.placement = placement;
  co.device = std::max(device, 0);
  impl_->copies = offload::make_copy_engine(co, impl_->ops);
  impl_->offloader = std::make_unique<offload::Offloader>(*impl_->pool, *impl_->copies, impl_->ops);
  impl_->cuda = device >= 0;
  impl_->device = device;
}

PooledActivationOffload::PooledActivationOffload(std::int64_t host_capacity_bytes, int device,
                                                 offload::DeviceOps ops,
                                                 std::unique_ptr<offload::CopyEngine> copies)
    : impl_(std::make_unique<Impl>()) {
  STP_CHECK(copies != nullptr, "PooledActivationOffload: no copy engine");
  const bool cuda = copies->backend() == allocator::Backend::kCuda;
  STP_CHECK(cuda == (device >= 0) && (!cuda || copies->device() == device),
            "offload device=", device, " but the copy engine is on ",
            cuda ? str_cat("CUDA device ", copies->device()) : std::string("the host"));
  impl_->pool = make_pool(host_capacity_bytes, allocator::NumaPlacement{});
  impl_->ops = std::move(ops);
  impl_->copies = std::move(copies);
  impl_->offloader = std::make_unique<offload::Offloader>(*impl_->pool, *impl_->copies, impl_->ops);
  impl_->cuda = cuda;
  impl_->device = device;
}

PooledActivationOffload::~PooledActivationOffload() {
  try {
    impl_->offloader->synchronize();
  } catch (const std::exception& e) {
    log_error(str_cat("offload teardown: ", e.what()));
  }
}

ActivationSet::Selection PooledActivationOffload::start_offload(ActivationSet& set, double share) {
  const auto key = key_of(set);
  ActivationSet::Selection moved = set.select_leading(share);
  std::vector<offload::SavedBuffer> buffers;
  auto& meta = impl_->meta[key];
  for (const std::string& name : moved.fields) {
    at::Tensor& t = set.fields().at(name);
    if (!t.is_contiguous()) t = t.contiguous();  // same nbytes: a dense copy of the same shape
    meta[name] = FieldMeta{t.sizes().vec(), t.options()};
    // The storage lets a stream-ordered release record the D2H stream on it (Note [Offload
    // lifetime]); the release closure only drops the field's reference.
    buffers.push_back({name, t.data_ptr(), t.nbytes(),
                       [&set, name = name] { set.fields()[name] = at::Tensor(); },
                       t.storage().unsafeGetStorageImpl()});
  }
  // The forward that wrote the set ran on this thread (CPU) or is queued on the compute stream
  // (CUDA): the D2H waits for it through `ready`, an event recorded on that stream.
  allocator::CopyEvent ready;
  if (impl_->cuda) ready = impl_->ops.record(impl_->compute_stream(), impl_->device);
  impl_->offloader->offload(key, std::move(buffers), ready);
  return moved;
}

void PooledActivationOffload::start_reload(ActivationSet& set) {
  const auto key = key_of(set);
  auto& meta = impl_->meta.at(key);
  // at::empty allocates on the compute stream; the H2D waits for an event recorded there.
  const allocator::StreamHandle alloc_stream = impl_->cuda ? impl_->compute_stream() : nullptr;
  impl_->offloader->reload(
      key,
      [&](const std::string& name, std::size_t bytes) -> void* {
        const FieldMeta& m = meta.at(name);
        at::Tensor t = at::empty(m.sizes, m.options);
        STP_ASSERT(static_cast<std::size_t>(t.nbytes()) == bytes, "reload of ", name, ": ",
                   t.nbytes(), " bytes allocated for ", bytes);
        set.fields()[name] = t;  // not read before wait_reload()
        return t.data_ptr();
      },
      alloc_stream);
}

double PooledActivationOffload::wait_reload(ActivationSet& set) {
  const auto key = key_of(set);
  // A cancelled round trip kept the original tensors; a reload filled in new ones.
  double waited = 0;
  if (impl_->cuda) {
    // The compute stream waits for the H2D; the host runs on (gpu-review item 8).
    impl_->offloader->wait(key, impl_->compute_stream());
  } else {
    waited = impl_->offloader->wait(key);  // the host copy engine: the host is the consumer
  }
  impl_->meta.erase(key);
  return waited;
}

void PooledActivationOffload::poll() { impl_->offloader->poll(); }

double PooledActivationOffload::drain() {
  const auto t0 = std::chrono::steady_clock::now();
  impl_->offloader->synchronize();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool PooledActivationOffload::releases_in_stream_order() const {
  return impl_->offloader->releases_in_stream_order();
}

void PooledActivationOffload::record_copies(bool on) { impl_->offloader->log_copies(on); }

std::vector<offload::CopyRecord> PooledActivationOffload::take_copies() {
  return impl_->offloader->take_copy_log();
}

std::int64_t PooledActivationOffload::host_bytes() const {
  return impl_->offloader->stats().host_bytes;
}

}  // namespace stp::engine
