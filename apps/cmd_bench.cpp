// `stp bench copy` / `stp bench pool`: the offload micro-benchmarks, one JSON line each
// (offload/copy_bench.h, allocator/pool_bench.h). docs/offload.md shows real output. The
// training benchmarks (`stp bench train`, `stp bench budget`) are in cmd_bench_train.cpp.
#include <cstdio>

#include "allocator/pool_bench.h"
#include "cli.h"
#include "command.h"
#include "common/bytes.h"
#include "common/check.h"
#include "offload/copy_bench.h"

namespace stp::apps {
namespace {

allocator::Backend backend_from(const std::string& name) {
  if (name == "host") return allocator::Backend::kHost;
  if (name == "cuda") return allocator::Backend::kCuda;
  STP_CHECK(name == "auto", "--backend=", name, " must be host, cuda or auto");
  return allocator::Backend::kAuto;
}

// ---- stp bench copy -------------------------------------------------------------------------

int bench_copy_main(const std::vector<std::string>& args) {
  CLI::App app{
      "Copy-engine bandwidth against plain memcpy (host) or a bare cudaMemcpyAsync loop\n"
      "(GPU), measured in the same run. Prints one JSON line.",
      "stp bench copy"};
  offload::CopyBenchOptions o;
  std::string bytes = "32MiB", backend = "host";
  app.add_option("--bytes", bytes, "bytes per copy (>= 4KiB), e.g. 64MiB")->capture_default_str();
  app.add_option("--copies", o.copies, "copies per timed run (>= 1)")->capture_default_str();
  app.add_option("--repeats", o.repeats, "timed runs per side; the median counts (>= 1)")
      ->capture_default_str();
  app.add_option("--threads", o.threads, "host copy-engine worker threads, 1..64")
      ->capture_default_str();
  app.add_option("--backend", backend, "host, cuda or auto")->capture_default_str();
  app.add_option("--numa-node", o.numa_node, "bind the pool and workers to this node; -1: don't")
      ->capture_default_str();
  if (int rc = parse(app, args); rc >= 0) return rc;
  o.bytes = static_cast<std::size_t>(parse_bytes(bytes, "--bytes"));
  o.backend = backend_from(backend);
  std::printf("%s\n", offload::to_json(offload::bench_copy(o)).c_str());
  return 0;
}

// ---- stp bench pool -------------------------------------------------------------------------

int bench_pool_main(const std::vector<std::string>& args) {
  CLI::App app{
      "Pinned pool allocate+free of a cached block against malloc+mlock (host) or\n"
      "cudaHostAlloc (GPU) of the same size, measured in the same run. Prints one JSON line.",
      "stp bench pool"};
  allocator::PoolBenchOptions o;
  std::string bytes = "1MiB", backend = "host";
  app.add_option("--bytes", bytes, "block size (> 0); keep it under `ulimit -l` on the host")
      ->capture_default_str();
  app.add_option("--batches", o.batches, "timed batches per side (>= 5)")->capture_default_str();
  app.add_option("--backend", backend, "host, cuda or auto")->capture_default_str();
  if (int rc = parse(app, args); rc >= 0) return rc;
  o.bytes = static_cast<std::size_t>(parse_bytes(bytes, "--bytes"));
  o.cuda = allocator::resolve_backend(backend_from(backend)) == allocator::Backend::kCuda;
  std::printf("%s\n", allocator::to_json(allocator::bench_pool(o)).c_str());
  return 0;
}

STP_REGISTER_COMMAND("bench copy", "copy-engine bandwidth vs memcpy / cudaMemcpyAsync (JSON line)",
                     bench_copy_main);
STP_REGISTER_COMMAND("bench pool",
                     "pinned pool allocate+free vs malloc+mlock / cudaHostAlloc (JSON line)",
                     bench_pool_main);

}  // namespace
}  // namespace stp::apps
