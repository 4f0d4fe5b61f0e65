// simulate: a discrete-event model of one training step of a Program under a CostModel
// (docs/schedule.md "Simulator").
//
// Every rank starts at time 0 and runs its instructions in order, one at a time:
//  - a compute instruction starts when the rank is free, its received inputs have arrived and
//    the reloads of the sets its backwards consume have completed; it lasts instr_cost();
//  - a SEND takes no rank time: the message leaves when its directed link is free and arrives
//    p2p_latency + p2p_bytes/p2p_bandwidth later; a RECV hands the arrival time to the compute
//    that consumes it (the rank waits there, as the executor does);
//  - OFFLOAD / RELOAD take no rank time: they queue a copy on the rank's D2H / H2D channel
//    (one copy at a time each). A RELOAD's copy starts after the set's OFFLOAD completed.
//    A copy issued after the set's B is the second trip of what its deferred W holds.
//
// Note [Activation memory convention]
// A set (stage, mb) becomes resident when the instruction holding its F ends and is released
// when the instruction holding its backward (B or BW) ends; between the end of its OFFLOAD
// copy and the start of its RELOAD copy it is not resident (offload_fraction of its bytes
// leave). Events at the same instant release before they allocate, so a braided F&B block
// swaps the backward's set for the forward's (the braid frees the backward's layers as the
// forward allocates its own). This reproduces the seed table's 2p (ZB-V) and 3p (STP).
// The variant peak_sets_until_w keeps a set whose W was deferred until that W ends. Bytes follow
// CostModel::w_held_fraction: that share of a deferred-W set stays resident until its W ends.
// A second trip (OFFLOAD after the set's B, RELOAD before its W) moves those bytes
// (w_held_fraction * offload_fraction of the set) the same way, and the W waits for its RELOAD.
// A recomputed set (its F part carries recompute, Note [Recompute] in program.h) holds
// recompute_keep of its bytes from its forward's end until its backward starts, and all of them
// during the backward: the engine rebuilds the fields unit by unit, so this is conservative (it
// never frees a rebuilt unit early). Its OFFLOAD and RELOAD move recompute_keep *
// offload_fraction of the set; the B-to-W trip is unchanged. Its backward costs recompute_time *
// t_f more compute (instr_cost).
// Partial sets (Note [Partial sets] in program.h): a set recomputing the leading share g of its
// layers holds kept_share = 1 - g * (1 - recompute_keep) of its bytes until its backward (and
// its first trip moves from that), its backward costs g * recompute_time * t_f more; an OFFLOAD
// / RELOAD with share s moves s of what the whole trip would (bytes and copy time), the rest
// stays resident, and the set stays counted in peak_sets / peak_sets_until_w. Shares of 1 give
// exactly the figures above.
//
// Thread-safety: pure function.
#pragma once

#include <vector>

#include "schedule/cost_model.h"
#include "schedule/program.h"
#include "schedule/timeline.h"

namespace stp::schedule {

struct SimOptions {
  bool record_timeline = false;  // fill SimResult::timeline (one event per instruction/copy)
  bool record_memory = false;    // fill RankStats::memory
};

// Resident activation memory of a rank from `time` until the next sample.
struct MemorySample {
  double time = 0;
  double bytes = 0;
  int sets = 0;
};

struct RankStats {
  double start = 0;            // first compute instruction starts
  double end = 0;              // last compute instruction ends
  double busy = 0;             // compute seconds
  double exposed_tp = 0;       // TP all-reduce seconds no compute covered
  double idle = 0;             // PP bubble: end - start - busy - exposed_tp (P2P and reload waits)
  double idle_in_step = 0;     // makespan - busy - exposed_tp: idle over the whole step
  double reload_wait = 0;      // part of idle: computes blocked on a RELOAD copy
  int peak_sets = 0;           // resident activation sets (M_a), Note [Activation memory ...]
  int peak_sets_until_w = 0;   // variant: deferred-W sets held until their W
  double peak_bytes = 0;       // resident activation bytes
  double offloaded_bytes = 0;  // bytes copied to host
  std::vector<MemorySample> memory;  // when SimOptions::record_memory: step function, by time
};

struct SimResult {
  double makespan = 0;           // the step: latest end over ranks
  std::vector<RankStats> ranks;  // (p)
  Timeline timeline;             // when SimOptions::record_timeline

  // Over ranks: the figures the seed table quotes.
  double max_idle() const;
  double max_exposed_tp() const;
  int max_peak_sets() const;
  int max_peak_sets_until_w() const;
  double max_peak_bytes() const;
};

// REQUIRES: verify(program) passed (simulate checks only what it needs and throws
// std::invalid_argument on a deadlock); validate(costs, program.stages()) is checked.
SimResult simulate(const Program& program, const CostModel& costs, const SimOptions& options = {});

}  // namespace stp::schedule
