#include "allocator/numa.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <thread>

#include "common/check.h"

#ifdef STP_HAVE_HWLOC
#include <hwloc.h>
#endif
#ifdef STP_HAVE_NUMA
#include <numa.h>
#include <numaif.h>
#endif
#ifdef STP_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace stp::allocator {

// ---- topology ---------------------------------------------------------------------------------

struct NumaTopology::Impl {
#ifdef STP_HAVE_HWLOC
  hwloc_topology_t topo = nullptr;
  ~Impl() {
    if (topo) hwloc_topology_destroy(topo);
  }
  hwloc_obj_t numa_by_os_index(int node) const {
    hwloc_obj_t obj = nullptr;
    while ((obj = hwloc_get_next_obj_by_type(topo, HWLOC_OBJ_NUMANODE, obj)) != nullptr)
      if (static_cast<int>(obj->os_index) == node) return obj;
    return nullptr;
  }
#else
  int cpus = 1;  // fallback: one node 0 holding CPUs 0..cpus-1
#endif
};

NumaTopology::NumaTopology(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NumaTopology::NumaTopology(NumaTopology&&) noexcept = default;
NumaTopology& NumaTopology::operator=(NumaTopology&&) noexcept = default;
NumaTopology::~NumaTopology() = default;

#ifdef STP_HAVE_HWLOC
namespace {

// Loads a topology configured by `setup` (synthetic, XML or the machine). Keeps PCI devices.
template <typename Setup>
std::unique_ptr<NumaTopology::Impl> load_topology(const std::string& what, Setup setup) {
  auto impl = std::make_unique<NumaTopology::Impl>();
  STP_ASSERT(hwloc_topology_init(&impl->topo) == 0, "hwloc_topology_init failed");
  STP_CHECK(setup(impl->topo) == 0, "hwloc rejected the topology ", what);
  hwloc_topology_set_io_types_filter(impl->topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
  STP_CHECK(hwloc_topology_load(impl->topo) == 0, "hwloc could not load the topology ", what);
  return impl;
}

}  // namespace
#endif

NumaTopology NumaTopology::this_machine() {
#ifdef STP_HAVE_HWLOC
  return NumaTopology(load_topology("of this machine", [](hwloc_topology_t) { return 0; }));
#else
  auto impl = std::make_unique<Impl>();
  impl->cpus = std::max(1u, std::thread::hardware_concurrency());
  return NumaTopology(std::move(impl));
#endif
}

NumaTopology NumaTopology::synthetic(const std::string& description) {
#ifdef STP_HAVE_HWLOC
  return NumaTopology(load_topology("'" + description + "'", [&](hwloc_topology_t t) {
    return hwloc_topology_set_synthetic(t, description.c_str());
  }));
#else
  STP_CHECK(false, "synthetic topology '", description, "' needs hwloc (install libhwloc-dev)");
#endif
}

NumaTopology NumaTopology::from_xml(const std::string& xml) {
#ifdef STP_HAVE_HWLOC
  return NumaTopology(load_topology("from XML", [&](hwloc_topology_t t) {
    return hwloc_topology_set_xmlbuffer(t, xml.c_str(), static_cast<int>(xml.size()) + 1);
  }));
#else
  STP_CHECK(false, "XML topology needs hwloc (install libhwloc-dev)");
#endif
}

std::vector<int> NumaTopology::nodes() const {
#ifdef STP_HAVE_HWLOC
  std::vector<int> out;
  hwloc_obj_t obj = nullptr;
  while ((obj = hwloc_get_next_obj_by_type(impl_->topo, HWLOC_OBJ_NUMANODE, obj)) != nullptr)
    out.push_back(static_cast<int>(obj->os_index));
  std::sort(out.begin(), out.end());
  return out;
#else
  return {0};
#endif
}

std::vector<int> NumaTopology::node_cpus(int node) const {
  std::vector<int> cpus;
#ifdef STP_HAVE_HWLOC
  hwloc_obj_t obj = impl_->numa_by_os_index(node);
  if (!obj || !obj->cpuset) return cpus;
  for (int i = hwloc_bitmap_first(obj->cpuset); i >= 0; i = hwloc_bitmap_next(obj->cpuset, i))
    cpus.push_back(i);
#else
  if (node == 0)
    for (int i = 0; i < impl_->cpus; ++i) cpus.push_back(i);
#endif
  return cpus;
}

int NumaTopology::node_of_cpu(int cpu) const {
  if (cpu < 0) return kUnbound;
#ifdef STP_HAVE_HWLOC
  hwloc_obj_t obj = nullptr;
  while ((obj = hwloc_get_next_obj_by_type(impl_->topo, HWLOC_OBJ_NUMANODE, obj)) != nullptr)
    if (obj->cpuset && hwloc_bitmap_isset(obj->cpuset, static_cast<unsigned>(cpu)))
      return static_cast<int>(obj->os_index);
  return kUnbound;
#else
  return cpu < impl_->cpus ? 0 : kUnbound;
#endif
}

std::optional<int> NumaTopology::node_near_pci(const std::string& bus_id) const {
#ifdef STP_HAVE_HWLOC
  hwloc_obj_t dev = hwloc_get_pcidev_by_busidstring(impl_->topo, bus_id.c_str());
  if (!dev) return std::nullopt;
  hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(impl_->topo, dev);
  if (!anc || !anc->nodeset) return std::nullopt;
  int node = hwloc_bitmap_first(anc->nodeset);
  if (node < 0) return std::nullopt;
  return node;
#else
  (void)bus_id;
  return std::nullopt;
#endif
}

std::string NumaTopology::description() const {
  std::vector<int> all = nodes();
  std::string out = str_cat(all.size(), all.size() == 1 ? " NUMA node:" : " NUMA nodes:");
  for (int node : all) {
    std::vector<int> cpus = node_cpus(node);
    out += str_cat(" ", node, "{");
    if (!cpus.empty()) out += str_cat(cpus.front(), "-", cpus.back());
    out += "}";
  }
  return out;
}

// ---- placement --------------------------------------------------------------------------------

NumaPlacement choose_placement(const NumaTopology& topology, const PlacementRequest& request) {
  std::vector<int> nodes = topology.nodes();
  STP_ASSERT(!nodes.empty(), "topology without NUMA nodes");
  NumaPlacement p;
  if (request.configured_node != kUnbound) {
    bool known = std::find(nodes.begin(), nodes.end(), request.configured_node) != nodes.end();
    STP_CHECK(known, "numa_node=", request.configured_node, " is not a NUMA node of this machine (",
              topology.description(), "); use one of them or -1 for automatic placement");
    p.node = request.configured_node;
    p.reason = str_cat("configured node ", p.node);
  } else if (auto near = request.pci_bus_id.empty() ? std::nullopt
                                                    : topology.node_near_pci(request.pci_bus_id)) {
    p.node = *near;
    p.reason = str_cat("nearest to PCI ", request.pci_bus_id);
  } else if (int node = topology.node_of_cpu(request.current_cpu); node != kUnbound) {
    p.node = node;
    p.reason = str_cat("node of CPU ", request.current_cpu);
    if (!request.pci_bus_id.empty())
      p.reason += str_cat(" (PCI ", request.pci_bus_id, " not found)");
  } else {
    p.node = nodes.front();
    p.reason = "first node";
  }
  p.cpus = topology.node_cpus(p.node);
  return p;
}

std::optional<std::string> cuda_device_pci_bus_id(int device) {
#ifdef STP_WITH_CUDA
  char buf[32] = {};
  if (device < 0 || cudaDeviceGetPCIBusId(buf, sizeof buf, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return std::nullopt;
  }
  return std::string(buf);
#else
  (void)device;
  return std::nullopt;
#endif
}

NumaPlacement placement_for(int configured_node, int cuda_device) {
  static const NumaTopology machine = NumaTopology::this_machine();  // immutable once loaded
  PlacementRequest req;
  req.configured_node = configured_node;
  if (auto bus = cuda_device_pci_bus_id(cuda_device)) req.pci_bus_id = *bus;
  req.current_cpu = sched_getcpu();
  return choose_placement(machine, req);
}

// ---- binding ----------------------------------------------------------------------------------

bool bind_current_thread(const NumaPlacement& placement) {
  if (placement.node == kUnbound || placement.cpus.empty()) return false;
  int max_cpu = *std::max_element(placement.cpus.begin(), placement.cpus.end());
  int ncpu = std::max(max_cpu + 1, CPU_SETSIZE);
  cpu_set_t* allowed = CPU_ALLOC(ncpu);
  cpu_set_t* want = CPU_ALLOC(ncpu);
  std::size_t size = CPU_ALLOC_SIZE(ncpu);
  CPU_ZERO_S(size, want);
  bool ok = pthread_getaffinity_np(pthread_self(), size, allowed) == 0;
  int count = 0;
  for (int cpu : placement.cpus)
    if (ok && CPU_ISSET_S(cpu, size, allowed)) {
      CPU_SET_S(cpu, size, want);
      ++count;
    }
  ok = ok && count > 0 && pthread_setaffinity_np(pthread_self(), size, want) == 0;
  CPU_FREE(allowed);
  CPU_FREE(want);
  return ok;
}

bool bind_memory(void* ptr, std::size_t bytes, int node) {
#ifdef STP_HAVE_NUMA
  if (numa_available() < 0) return false;
  STP_CHECK(node >= 0 && node <= numa_max_node(), "numa_node=", node,
            " is not an online NUMA node; legal range [0, ", numa_max_node(), "]");
  constexpr int kBits = 8 * sizeof(unsigned long);
  std::vector<unsigned long> mask(node / kBits + 2, 0);
  mask[node / kBits] |= 1UL << (node % kBits);
  return mbind(ptr, bytes, MPOL_BIND, mask.data(), mask.size() * kBits, 0) == 0;
#else
  (void)ptr, (void)bytes, (void)node;
  return false;
#endif
}

std::vector<int> page_nodes(const void* ptr, std::size_t bytes) {
  std::vector<int> status;
#ifdef STP_HAVE_NUMA
  const std::size_t page = static_cast<std::size_t>(numa_pagesize());
  auto first = reinterpret_cast<std::uintptr_t>(ptr) / page * page;
  auto end = reinterpret_cast<std::uintptr_t>(ptr) + bytes;
  std::size_t count = (end - first + page - 1) / page;
  status.assign(count, 0);
  constexpr std::size_t kBatch = 4096;
  std::vector<void*> pages;
  for (std::size_t i = 0; i < count; i += kBatch) {
    std::size_t n = std::min(kBatch, count - i);
    pages.resize(n);
    for (std::size_t j = 0; j < n; ++j) pages[j] = reinterpret_cast<void*>(first + (i + j) * page);
    if (move_pages(0, n, pages.data(), nullptr, status.data() + i, 0) != 0) return {};
  }
#else
  (void)ptr, (void)bytes;
#endif
  return status;
}

std::optional<MemPolicy> memory_policy(const void* ptr) {
#ifdef STP_HAVE_NUMA
  constexpr int kBits = 8 * sizeof(unsigned long);
  std::vector<unsigned long> mask(1024 / kBits, 0);
  int mode = 0;
  if (get_mempolicy(&mode, mask.data(), mask.size() * kBits, const_cast<void*>(ptr), MPOL_F_ADDR) !=
      0)
    return std::nullopt;
  MemPolicy policy;
  policy.mode = mode;
  for (int bit = 0; bit < static_cast<int>(mask.size()) * kBits; ++bit)
    if (mask[bit / kBits] & (1UL << (bit % kBits))) policy.nodes.push_back(bit);
  return policy;
#else
  (void)ptr;
  return std::nullopt;
#endif
}

}  // namespace stp::allocator
