// NUMA placement of pinned slabs and copy threads.
//
// Host memory that a GPU copies to and from should sit on the NUMA node nearest the GPU's PCIe
// root, and the threads that touch it (first-touch, host copies) should run there. NumaTopology
// reads the machine with hwloc (including PCI devices, for GPU locality), or builds a synthetic
// or XML topology for tests; choose_placement() turns a request into a node and its CPUs; the
// bind_* functions apply a placement to the calling thread or to a range of pages, and
// page_nodes() reports where pages really are (move_pages), so tests can check the placement.
//
// Node and CPU numbers are the operating system's (the ones numactl and mbind use).
// Without hwloc the topology is one node holding every CPU; without libnuma, memory binding
// and page queries report kUnbound / unknown instead of failing.
//
// Thread-safety: a NumaTopology is immutable after construction and may be shared; the free
// functions are safe from any thread.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace stp::allocator {

inline constexpr int kUnbound = -1;  // "no NUMA binding": placement absent or not supported

class NumaTopology {
 public:
  // The machine this process runs on, with PCI devices.
  static NumaTopology this_machine();
  // hwloc synthetic description, e.g. "pack:2 numa:1 core:2 pu:1". Throws std::invalid_argument
  // naming the description when hwloc rejects it (or when this build has no hwloc).
  static NumaTopology synthetic(const std::string& description);
  // hwloc XML (hwloc_topology_export_xmlbuffer's format), PCI devices kept.
  static NumaTopology from_xml(const std::string& xml);

  NumaTopology(NumaTopology&&) noexcept;
  NumaTopology& operator=(NumaTopology&&) noexcept;
  ~NumaTopology();

  std::vector<int> nodes() const;              // OS indices, ascending
  std::vector<int> node_cpus(int node) const;  // OS indices of the PUs local to `node`
  // The node whose CPUs include `cpu`, or kUnbound when no node does.
  int node_of_cpu(int cpu) const;
  // The node nearest the PCI device "dddd:bb:dd.f" (hex, any case): the first node of its
  // nearest non-I/O ancestor. nullopt when the topology has no such device.
  std::optional<int> node_near_pci(const std::string& bus_id) const;
  std::string description() const;  // "2 NUMA nodes: 0{0-1} 1{2-3}"

  struct Impl;  // opaque: the hwloc topology

 private:
  explicit NumaTopology(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// What the caller knows; choose_placement() applies the first rule that matches.
struct PlacementRequest {
  int configured_node = kUnbound;  // 1. this node (OS index); must exist in the topology
  std::string pci_bus_id;          // 2. the node nearest this PCI device (a GPU), when found
  int current_cpu = -1;  // 3. the node of this CPU (sched_getcpu()); 4. else the first node
};

struct NumaPlacement {
  int node = kUnbound;    // OS index of the node, kUnbound for "do not bind"
  std::vector<int> cpus;  // CPUs of that node (empty when unbound)
  std::string reason;     // how it was chosen, for logs: "nearest to PCI 0000:3b:00.0"
};

// Throws std::invalid_argument when configured_node is not a node of `topology`, naming the
// node and the legal ones.
NumaPlacement choose_placement(const NumaTopology& topology, const PlacementRequest& request);

// The PCI bus id of CUDA device `device` ("0000:3B:00.0"); nullopt without CUDA or device.
std::optional<std::string> cuda_device_pci_bus_id(int device);

// Placement for a pool and its copy threads on this machine: configured_node when >= 0, else
// the node nearest CUDA device `cuda_device` (>= 0 and present), else the caller's CPU's node.
NumaPlacement placement_for(int configured_node, int cuda_device);

// Restricts the calling thread to placement.cpus. No-op for an unbound placement. Returns
// false (and changes nothing) when the OS refuses.
bool bind_current_thread(const NumaPlacement& placement);

// Binds the pages of [ptr, ptr+bytes) to `node` (mbind MPOL_BIND) so they are allocated there
// on first touch. ptr must be page-aligned. Returns false when unsupported or refused; throws
// std::invalid_argument for a node that is not online.
bool bind_memory(void* ptr, std::size_t bytes, int node);

// Node of each page of [ptr, ptr+bytes) (move_pages query): >= 0 a node, negative an errno
// (-ENOENT: not yet touched). Empty when this build cannot ask.
std::vector<int> page_nodes(const void* ptr, std::size_t bytes);

// The memory policy of the page at ptr: the policy mode (MPOL_BIND ...) and its node mask as
// node numbers. nullopt when unsupported.
struct MemPolicy {
  int mode = 0;
  std::vector<int> nodes;
};
std::optional<MemPolicy> memory_policy(const void* ptr);

}  // namespace stp::allocator
