// TimelineEvent: one interval of what a rank did in a training step — predicted by
// schedule::simulate or measured by the engine's executor from real timings — the common input
// of the Chrome trace and SVG writers (schedule/trace.h), so predicted and measured timelines
// are drawn and compared the same way.
//
// Times are seconds since the step began (all ranks start at 0); a cost model in abstract units
// (T_F = 1) simply reads them as units. For an instruction, [start, end] is everything the rank
// spent on it, waits included: it reached the instruction at `start`, was blocked `p2p_wait`
// on a pipeline receive and `reload_wait` on an activation reload before computing, and
// `tp_wait` of its time went to TP collectives no compute covered. For an OFFLOAD or RELOAD,
// [start, end] is the copy itself on the rank's D2H or H2D lane (measured: when the copy engine
// began and completed it), and the compute event that consumed a reload names it
// (reload_index).
//
// Thread-safety: values; no shared state.
#pragma once

#include <string>
#include <vector>

#include "schedule/program.h"

namespace stp::schedule {

// Categories (TimelineEvent::category). Compute events sit on the rank's row; the others on
// the rank's transfer rows.
inline constexpr const char* kCategoryCompute = "compute";  // a compute instruction
inline constexpr const char* kCategoryP2P = "p2p";          // a message in flight (sender's rank)
inline constexpr const char* kCategoryOffload = "offload";  // D2H copy of an activation set
inline constexpr const char* kCategoryReload = "reload";    // H2D copy of an activation set

struct TimelineEvent {
  int rank = 0;
  int index = -1;        // instruction index in Program::ranks[rank]; -1 when none
  std::string name;      // to_string(instr): "FB1[4,2]+W", "OFFLOAD c0 mb3"
  std::string category;  // one of the kCategory* names
  Op op = Op::kF;
  std::vector<Part> parts;  // compute parts in braid order; {instr.ref} for the others
  double start = 0;         // seconds since the step began
  double end = 0;           // seconds; end >= start
  double p2p_wait = 0;      // seconds blocked on a receive before computing
  double reload_wait = 0;   // seconds blocked on a reload before computing
  double tp_wait = 0;       // seconds of exposed TP collectives inside [start, end]
  // Compute: the RELOAD instruction (its index) whose set this instruction consumed, so a
  // reload wait names the copy it waited for; -1 when none (or not recorded).
  int reload_index = -1;

  double compute_start() const { return start + p2p_wait + reload_wait; }
};

// The events of one run of one program: a section of an SVG, a process group of a trace.
struct Timeline {
  std::string title;  // e.g. "stp p=4 m=12"
  int p = 0;          // ranks (rows)
  std::vector<TimelineEvent> events;
};

}  // namespace stp::schedule
