// Threads-as-ranks and processes-as-ranks harnesses for engine tests.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "engine/comm.h"

namespace stp::testing {

// Runs fn(world) on `world_size` threads, each a rank of one job sharing an in-memory store.
// Rethrows the first exception a rank threw (after every thread finished).
void run_ranks(int world_size, const engine::CommOptions& options,
               const std::function<void(engine::World&)>& fn);

// Spawns `world_size` copies of this test binary running only `test_filter`, with RANK,
// WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (a free port) and STP_TEST_CHILD=1 set.
// Returns each rank's exit code; output of failing ranks is printed.
std::vector<int> spawn_ranks(int world_size, const std::string& test_filter,
                             const std::vector<std::string>& extra_env = {});

// True inside a process started by spawn_ranks.
bool is_spawned_child();

// A free TCP port on 127.0.0.1.
int free_port();

}  // namespace stp::testing
