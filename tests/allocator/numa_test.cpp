#include "allocator/numa.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "allocator/host_memory.h"
#include "allocator/pinned_host_pool.h"

#ifdef STP_HAVE_NUMA
#include <numaif.h>
#endif
#ifdef STP_HAVE_HWLOC
#include <hwloc.h>
#endif

namespace stp::allocator {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

#ifdef STP_HAVE_HWLOC

// A synthetic machine of `packages` sockets, one NUMA node and two single-PU cores each, with a
// GPU (PCI 0000:3b:00.0) attached under package `gpu_package`: the synthetic topology exported
// to XML with a PCI bridge and device inserted (hwloc's synthetic syntax has no I/O objects).
std::string machine_with_gpu(int packages, int gpu_package) {
  std::string desc = "pack:" + std::to_string(packages) + " numa:1 core:2 pu:1";
  hwloc_topology_t t;
  hwloc_topology_init(&t);
  hwloc_topology_set_synthetic(t, desc.c_str());
  hwloc_topology_load(t);
  char* buf = nullptr;
  int len = 0;
  hwloc_topology_export_xmlbuffer(t, &buf, &len, 0);
  std::string xml(buf);
  hwloc_free_xmlbuffer(t, buf);
  hwloc_topology_destroy(t);
  std::string key = "<object type=\"Package\" os_index=\"" + std::to_string(gpu_package) + "\"";
  std::size_t at = xml.find(key);
  EXPECT_NE(at, std::string::npos);
  at = xml.find('>', at) + 1;
  xml.insert(at,
             "<object type=\"Bridge\" gp_index=\"900\" bridge_type=\"0-1\" depth=\"0\" "
             "bridge_pci=\"0000:[3a-3b]\"><object type=\"PCIDev\" gp_index=\"901\" "
             "pci_busid=\"0000:3b:00.0\" pci_type=\"0302 [10de:2330] [10de:16c1] a1\"/></object>");
  return xml;
}

TEST(NumaTopology, SyntheticTwoNodes) {
  NumaTopology topo = NumaTopology::synthetic("pack:2 numa:1 core:2 pu:1");
  EXPECT_THAT(topo.nodes(), ElementsAre(0, 1));
  EXPECT_THAT(topo.node_cpus(0), ElementsAre(0, 1));
  EXPECT_THAT(topo.node_cpus(1), ElementsAre(2, 3));
  EXPECT_EQ(topo.node_of_cpu(1), 0);
  EXPECT_EQ(topo.node_of_cpu(2), 1);
  EXPECT_EQ(topo.node_of_cpu(4), kUnbound);
  EXPECT_EQ(topo.description(), "2 NUMA nodes: 0{0-1} 1{2-3}");
}

TEST(NumaTopology, SyntheticFourNodesPlacementRules) {
  NumaTopology topo = NumaTopology::synthetic("pack:4 numa:1 core:2 pu:1");
  EXPECT_THAT(topo.nodes(), ElementsAre(0, 1, 2, 3));

  PlacementRequest req;
  req.current_cpu = 5;  // rule 3: the caller's CPU
  NumaPlacement p = choose_placement(topo, req);
  EXPECT_EQ(p.node, 2);
  EXPECT_THAT(p.cpus, ElementsAre(4, 5));
  EXPECT_THAT(p.reason, HasSubstr("CPU 5"));

  req.configured_node = 3;  // rule 1 beats rule 3
  p = choose_placement(topo, req);
  EXPECT_EQ(p.node, 3);
  EXPECT_THAT(p.cpus, ElementsAre(6, 7));

  PlacementRequest none;  // rule 4: nothing known
  EXPECT_EQ(choose_placement(topo, none).node, 0);
}

TEST(NumaTopology, ConfiguredNodeMustExist) {
  NumaTopology topo = NumaTopology::synthetic("pack:2 numa:1 core:2 pu:1");
  PlacementRequest req;
  req.configured_node = 2;
  try {
    choose_placement(topo, req);
    FAIL() << "node 2 of a 2-node machine was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("numa_node=2 is not a NUMA node"));
    EXPECT_THAT(e.what(), HasSubstr("2 NUMA nodes: 0{0-1} 1{2-3}"));
  }
}

TEST(NumaTopology, GpuLocalityPicksTheNodeOfTheGpusPackage) {
  for (int packages : {2, 4}) {
    for (int gpu_package = 0; gpu_package < packages; ++gpu_package) {
      NumaTopology topo = NumaTopology::from_xml(machine_with_gpu(packages, gpu_package));
      ASSERT_EQ(topo.nodes().size(), static_cast<std::size_t>(packages));
      EXPECT_EQ(topo.node_near_pci("0000:3b:00.0"), gpu_package);
      EXPECT_EQ(topo.node_near_pci("0000:3B:00.0"), gpu_package);  // cudaDeviceGetPCIBusId's case
      EXPECT_EQ(topo.node_near_pci("0000:af:00.0"), std::nullopt);

      PlacementRequest req;
      req.pci_bus_id = "0000:3B:00.0";
      req.current_cpu = 0;  // the caller runs on node 0; the GPU's node wins (rule 2 > 3)
      NumaPlacement p = choose_placement(topo, req);
      EXPECT_EQ(p.node, gpu_package);
      EXPECT_THAT(p.cpus, ElementsAre(2 * gpu_package, 2 * gpu_package + 1));
      EXPECT_THAT(p.reason, HasSubstr("nearest to PCI 0000:3B:00.0"));
    }
  }
}

TEST(NumaTopology, UnknownGpuFallsBackToTheCallersNode) {
  NumaTopology topo = NumaTopology::from_xml(machine_with_gpu(2, 1));
  PlacementRequest req;
  req.pci_bus_id = "0000:af:00.0";
  req.current_cpu = 1;
  NumaPlacement p = choose_placement(topo, req);
  EXPECT_EQ(p.node, 0);
  EXPECT_THAT(p.reason, HasSubstr("not found"));
}

TEST(NumaTopology, BadSyntheticDescriptionIsAnInputError) {
  EXPECT_THROW(NumaTopology::synthetic("pack:two"), std::invalid_argument);
}

#endif  // STP_HAVE_HWLOC

// ---- this machine: real binding and real page placement --------------------------------------

TEST(NumaThisMachine, PlacementIsANodeOfThisMachineWithItsCpus) {
  NumaTopology topo = NumaTopology::this_machine();
  std::vector<int> nodes = topo.nodes();
  ASSERT_FALSE(nodes.empty());
  NumaPlacement p = placement_for(kUnbound, /*cuda_device=*/0);
  EXPECT_NE(std::find(nodes.begin(), nodes.end(), p.node), nodes.end());
  EXPECT_EQ(p.cpus, topo.node_cpus(p.node));
  EXPECT_FALSE(p.cpus.empty());
}

TEST(NumaThisMachine, BoundThreadRunsOnlyOnTheNodesCpus) {
  NumaPlacement p = placement_for(kUnbound, -1);
  bool bound = false;
  std::vector<int> allowed;
  std::thread t([&] {
    bound = bind_current_thread(p);
    cpu_set_t set;
    CPU_ZERO(&set);
    pthread_getaffinity_np(pthread_self(), sizeof set, &set);
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
      if (CPU_ISSET(cpu, &set)) allowed.push_back(cpu);
    int now = sched_getcpu();
    EXPECT_NE(std::find(p.cpus.begin(), p.cpus.end(), now), p.cpus.end()) << now;
  });
  t.join();
  ASSERT_TRUE(bound);
  for (int cpu : allowed)
    EXPECT_NE(std::find(p.cpus.begin(), p.cpus.end(), cpu), p.cpus.end()) << cpu;
  EXPECT_FALSE(bind_current_thread(NumaPlacement{}));  // unbound: refuses, changes nothing
}

#ifdef STP_HAVE_NUMA
TEST(NumaThisMachine, BoundPagesAreAllocatedOnTheNodeWhenTouched) {
  const int node = placement_for(kUnbound, -1).node;
  const std::size_t bytes = 64 * page_size();
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_TRUE(bind_memory(p, bytes, node));
  std::optional<MemPolicy> policy = memory_policy(p);
  ASSERT_TRUE(policy.has_value());
  EXPECT_EQ(policy->mode, MPOL_BIND);
  EXPECT_THAT(policy->nodes, ElementsAre(node));

  std::vector<int> before = page_nodes(p, bytes);
  ASSERT_EQ(before.size(), 64u);
  for (int s : before) EXPECT_EQ(s, -ENOENT);  // not touched: no page yet
  std::memset(p, 1, bytes);
  for (int s : page_nodes(p, bytes)) EXPECT_EQ(s, node);
  munmap(p, bytes);

  EXPECT_THROW(bind_memory(p, bytes, 4096), std::invalid_argument);
}

TEST(NumaThisMachine, PoolSlabsAreBoundAndResidentOnTheirNode) {
  const int node = placement_for(kUnbound, -1).node;
  PinnedPoolOptions o;
  o.capacity_bytes = 4 << 20;
  o.slab_bytes = 2 << 20;
  o.memory = HostMemoryKind::kMmap;
  o.numa_node = node;
  PinnedHostPool pool(o);
  ASSERT_EQ(pool.slabs().size(), 2u);
  for (const Slab& slab : pool.slabs()) {
    EXPECT_EQ(slab.node, node);
    std::optional<MemPolicy> policy = memory_policy(slab.base);
    ASSERT_TRUE(policy.has_value());
    EXPECT_EQ(policy->mode, MPOL_BIND);
    EXPECT_THAT(policy->nodes, ElementsAre(node));
    // Reserved up front: every page exists (touched in the constructor) and sits on the node.
    std::vector<int> where = page_nodes(slab.base, slab.bytes);
    ASSERT_EQ(where.size(), slab.bytes / page_size());
    for (int s : where) ASSERT_EQ(s, node);
  }
}

TEST(NumaThisMachine, UnboundPoolHasDefaultPolicy) {
  PinnedPoolOptions o;
  o.capacity_bytes = 1 << 20;
  o.slab_bytes = 1 << 20;
  o.memory = HostMemoryKind::kMmap;
  PinnedHostPool pool(o);
  EXPECT_EQ(pool.slabs()[0].node, kUnbound);
  std::optional<MemPolicy> policy = memory_policy(pool.slabs()[0].base);
  ASSERT_TRUE(policy.has_value());
  EXPECT_EQ(policy->mode, MPOL_DEFAULT);
}
#endif  // STP_HAVE_NUMA

}  // namespace
}  // namespace stp::allocator
