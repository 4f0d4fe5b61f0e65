// StepStats: what the executor measured in one step on one rank (times, waits, memory, the
// timeline of compute events in the simulator's format).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schedule/timeline.h"

namespace stp::engine {

// An OFFLOAD that moved part of a set (share < 1, Note [Partial sets] in schedule/program.h):
// which fields went, for the reports (offload_plan.h: describe_partial_trips).
struct PartialTrip {
  int chunk = 0, mb = 0;
  double share = 1;
  bool after_backward = false;      // the trip between B and W (what W reads)
  std::vector<std::string> fields;  // moved, in the order they went
  std::int64_t moved_bytes = 0;
  std::int64_t set_bytes = 0;  // the set's device bytes when the trip began
};

// What one step measured on this rank.
struct StepStats {
  double loss_sum = 0;             // sum of unscaled microbatch losses (last-stage rank only)
  int losses = 0;                  // how many microbatch losses were summed here
  double seconds = 0;              // wall time of the program
  double tp_wait_seconds = 0;      // blocked on TP collectives: exposed communication
  double p2p_wait_seconds = 0;     // blocked on pipeline receives: PP idle
  double reload_wait_seconds = 0;  // blocked on the host link: reloads, and offloads a new set
                                   // had to wait for to stay within the budget
  std::int64_t peak_activation_bytes = 0;  // resident ActivationSet bytes, peak over the step
  int peak_activation_sets = 0;            // resident (non-offloaded) sets, peak over the step
  std::int64_t offloaded_bytes = 0;        // bytes moved to host this step
  std::vector<PartialTrip> partial_trips;  // this step's partial offloads, in program order
  // The device allocator's peaks over the program (CUDA: the caching allocator's
  // allocated_bytes and reserved_bytes, reset when the executor started it, read at its end: the
  // optimizer after it is not included); -1 where no allocator tells (the CPU).
  std::int64_t device_allocated_peak_bytes = -1;
  std::int64_t device_reserved_peak_bytes = -1;
  // What this rank did: one compute event per compute instruction and one offload / reload
  // event per OFFLOAD / RELOAD (the copy's own start and end), seconds since the step began,
  // waits measured (schedule/timeline.h, Note [Step clock] in engine/executor.h) — the
  // simulator's format.
  std::vector<schedule::TimelineEvent> events;
};

}  // namespace stp::engine
