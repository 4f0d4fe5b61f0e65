// CostModel: what simulate() charges for each instruction of a Program (docs/schedule.md
// "Cost model"). Times are seconds (or any unit, consistently); bytes are bytes.
//
// Compute: a part of stage s costs its pass time times stage_scale[s] (unbalanced stages, e.g.
// a last stage with fewer layers). TP all-reduce: each F and each B/BW of a chunk carries one
// all-reduce of t_ar (scaled the same way); it is exposed unless compute covers it:
//   F                      c_F + a_F                  (nothing to cover it: exposed)
//   B  (W deferred)        c_B + a_B                  (exposed)
//   BW                     c_B + c_W + max(0, a_B - c_W)         (W covers it, as Megatron)
//   W                      c_W                        (no collective)
//   FF / FB / FW braided   slowdown * (sum of compute) + for each pass max(0, a - cover),
//                          cover = the other pass's compute (+ its own W when fused)
// and with braid_units = u > 0 the block's last collective (FF, FB with B) stays exposed for
// at least a/u: the table's figures assume u = 0 (every braided collective hidden).
//
// Recompute (Note [Recompute] in program.h): the backward (B or BW) of a set whose forward was
// recomputed adds g * recompute_time * t_f (stage-scaled) to c_B, g the set's recompute_share
// (Note [Partial sets]: the leading g of the layers re-run; 1: all). In a braided block that
// compute covers the other pass's collectives like any other; a standalone B's own all-reduce stays
// exposed (conservative: the engine may overlap it with the next unit's re-run).
//
// Thread-safety: values; no shared state.
#pragma once

#include <array>
#include <vector>

#include "schedule/program.h"

namespace stp::schedule {

struct CostModel {
  // Per-chunk times at stage scale 1 (stp-notes §2.6 symbols).
  double t_f = 1;                   // forward compute, >= 0
  double t_b = 1;                   // activation-gradient compute, >= 0
  double t_w = 1;                   // weight-gradient compute, >= 0
  double t_ar = 0;                  // TP all-reduce time of one pass (F or B) of one chunk, >= 0
  std::vector<double> stage_scale;  // (S) > 0, multiplies all four times of a stage; empty = 1

  int braid_units = 0;        // units per pass (>= 0); > 0 exposes a braid's last collective/u
  double braid_slowdown = 1;  // >= 1 typically: braided compute runs this much slower

  // P2P between pipeline ranks: a message of p2p_bytes arrives latency + bytes/bandwidth after
  // it leaves; each directed link sends one message at a time.
  double p2p_latency = 0;    // seconds per message, >= 0
  double p2p_bandwidth = 0;  // bytes/s per directed link, >= 0; 0 = unlimited
  double p2p_bytes = 0;      // bytes of one activation or gradient message, >= 0

  // Activation memory: the bytes one (stage, mb) set holds (M_a at stage scale 1).
  double act_bytes = 0;                 // >= 0; used when stage_act_bytes is empty
  std::vector<double> stage_act_bytes;  // (S) >= 0 per stage, overrides act_bytes
  // Bytes a set holds after a backward with W deferred, until its W ends, as a multiple of its
  // forward's bytes, >= 0. 0 is the seed table's convention (a set is freed at its B); an
  // explicit model keeps what W reads (inputs and output gradients of its layers), which can be
  // more than the forward saved (> 1). The engine measures it so the offload planner budgets
  // the memory an executor really holds.
  double w_held_fraction = 0;

  // Recompute (Note [Recompute] in schedule/program.h): a set whose F part has recompute keeps
  // recompute_keep of its bytes from its forward to its backward, and that backward (B or BW)
  // also runs recompute_time * t_f of compute (the forward units again). With recompute_share
  // g < 1 (Note [Partial sets]) it keeps kept_share() = 1 - g * (1 - recompute_keep) and runs
  // g * recompute_time * t_f more.
  double recompute_keep = 1;  // in [0, 1]; 1: recompute saves nothing (never chosen)
  double recompute_time = 1;  // >= 0, a multiple of t_f

  // Host offload: one D2H and one H2D channel per rank, each copying one set at a time. An
  // OFFLOAD / RELOAD with Instr::share s (Note [Partial sets]) moves s of what it would move.
  double offload_fraction = 1;  // share of a set's bytes an OFFLOAD moves, in [0, 1]
  double host_bandwidth = 0;    // bytes/s of each channel, >= 0; 0 = unlimited
  double host_latency = 0;      // seconds per copy, >= 0
};

// Throws std::invalid_argument naming the first bad field, its value and the legal range.
void validate(const CostModel& costs, int stages);

// What one compute instruction costs.
struct InstrCost {
  double duration = 0;    // seconds the rank spends on it (busy + exposed_tp)
  double busy = 0;        // compute seconds
  double exposed_tp = 0;  // TP collective seconds not covered by compute
};
// recompute_share[i] > 0: parts[i] is the backward (B or BW) of a recomputed set that re-runs
// that share of its layers (Note [Partial sets]); the Instr cannot say so itself, since the flag
// rides on the set's F part (simulate() tracks it per set). 0: not recomputed.
// REQUIRES: instr.is_compute(), validate(costs, S) passed, parts' stages < S.
InstrCost instr_cost(const Instr& instr, const CostModel& costs,
                     std::array<double, 2> recompute_share = {});
// The same with whole sets: recomputed[i] is recompute_share 1.
InstrCost instr_cost(const Instr& instr, const CostModel& costs, std::array<bool, 2> recomputed);

// The share of a set's bytes a recomputed set holds from its forward to its backward when it
// re-runs `recompute_share` g of its layers: 1 - g * (1 - recompute_keep); recompute_keep
// exactly when g = 1.
double kept_share(const CostModel& costs, double recompute_share);

double set_bytes(const CostModel& costs, int stage);  // bytes of one activation set of `stage`

}  // namespace stp::schedule
