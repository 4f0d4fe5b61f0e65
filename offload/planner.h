// Offload planner: which activation sets to park in host memory, and where to put each OFFLOAD
// and RELOAD, so that a schedule fits a device memory budget with the least slowdown — judged by
// schedule::simulate, the same model `stp simulate` uses.
//
// Note [Offload planning]
// ~~~~~~~~~~~~~~~~~~~~~~~
// Input: a Program without offload instructions, a CostModel whose act_bytes / stage_act_bytes
// give the bytes of one activation set and whose host_bandwidth / host_latency describe the
// host link, and a budget: the activation bytes one rank may hold on its device.
//
//  * Candidates: trips of a set (stage, mb) between a producer and a consumer at least two
//    compute instructions apart on the rank (with nothing in between an offload only costs
//    time): its forward to its backward (set_bytes * offload_fraction), and, when its W is
//    deferred, its B to its W (what W holds: set_bytes * w_held_fraction * offload_fraction).
//    Both trips are placed, chosen and pruned alike; below "forward" and "backward" mean the
//    trip's producer and consumer.
//  * Placement policy: OFFLOAD right after the instruction holding the forward, so the D2H
//    overlaps the very next compute; RELOAD `lead` compute instructions before the backward
//    (lead 0: right after the compute instruction just before it). The first lead tried is the
//    smallest whose span, in the simulated timeline, covers the H2D transfer.
//  * Which sets: simulate; on every rank above the budget, find the first moment it is over
//    and offload the set resident then that sits idle longest (forward end to backward start):
//    in the STP V schedule these are the chunk-0 sets, as in the reference. Repeat until every
//    rank fits; then drop any chosen set the budget does not need (shortest idle first), then
//    move reloads whose backward still waits on them one instruction earlier while the budget
//    holds and the step gets shorter ("as far ahead as memory allows").
//  * Local search (offload/planner_search.h, improve()): a plan over budget takes the repair
//    move with the most byte-seconds over budget removed per second added to the step —
//    offload a set resident at a rank's first excess, reload one a compute instruction later,
//    recompute a resident set — the best of every over-budget rank at once when that beats the
//    single best; a plan within budget takes, one by one, each move that shortens its step:
//    a waiting reload one instruction earlier (with up to two repair moves when that breaks the
//    budget), an offload dropped, a recompute undone. A second start offloads every set with
//    reloads that hide the copies and repairs that to the budget; the faster plan wins.
//  * Recompute (Note [Recompute] in schedule/program.h; CostModel::recompute_keep/_time):
//    per set keep, offload, recompute, or both (offload what a recomputed set keeps). kOff
//    never recomputes; kAll marks every forward, then offloads; kAuto searches from none and
//    from all marked, free to change either, and keeps the faster plan. With recompute_keep = 1
//    kAuto is kOff. Forwards marked in the input stay marked (a fixed choice).
//  * Partial sets (Note [Partial sets] in schedule/program.h): each trip carries a share and
//    each recomputed set a recompute share, multiples of 1/kShareSteps. Over budget, the repair
//    moves also offer to offload / recompute only the share the excess over the set's resident
//    span needs (rounded up), and to raise a partial share by that much; the rating (excess
//    removed per second added) decides between part and whole. The finish of a fitting plan
//    then lowers each share one step (1/kShareSteps) at a time while the step gets shorter and
//    the budget holds (lower_shares; inside the local search it multiplied the passes until
//    the floor plan of stp p=4 m=16 ran out of max_simulations). Descents and minimum_budget()
//    use the same repair moves, so the floor they report is still one plan_offload() reaches.
//    With recompute kAuto a third start, taken only where offload alone does not fit, has
//    every set re-running half its layers (many sets recomputed in part is a plan no single
//    move reaches from none or all). PlanOptions::partial_sets = false plans whole sets only.
//  * Infeasible: the smallest budget the planner can reach (minimum_budget()) is the lowest
//    peak of descents that push the peak down one set at a time (greedy, then repaired) from
//    both starts, or of everything offloaded; with recompute, of those with every set marked
//    too. A lower budget is an input error naming that minimum. When neither start fits but
//    the minimum is within the budget, the first plan of the descents that fits is polished.
//  * Budget +infinity (or >= the schedule's own peak): the Program comes back unchanged.
// Every Program returned passes schedule::verify.
//
// Thread-safety: pure functions.
#pragma once

#include <limits>
#include <string>
#include <vector>

#include "schedule/cost_model.h"
#include "schedule/program.h"

namespace stp::offload {

inline constexpr double kUnlimitedBudget = std::numeric_limits<double>::infinity();
// Shares the planner chooses (Note [Partial sets] in schedule/program.h) are multiples of
// 1 / kShareSteps: a trip moves, a recompute re-runs, k / kShareSteps of the set, k in
// [1, kShareSteps].
inline constexpr int kShareSteps = 8;
// "5/8" for a share k / kShareSteps ("1" for a whole set), else "0.37".
std::string share_text(double share);

// One planned trip of a set to host and back.
struct PlannedSet {
  int rank = 0;
  int chunk = 0;
  int stage = 0;
  int mb = 0;
  bool w_held = false;     // the second trip: what a deferred W holds, from its B to its W
  int lead = 0;            // compute instructions between its RELOAD and its consumer
  double idle = 0;         // seconds from its producer's end to its consumer's start, no offload
  double bytes = 0;        // bytes the trip moves
  bool recompute = false;  // a first trip of a recomputed set: it moves from what it keeps
  double share = 1;        // Instr::share: the share of the trip it moves (1: all of it)
};

// A set whose forward the plan recomputes (Note [Recompute] in schedule/program.h).
struct RecomputedSet {
  int rank = 0, chunk = 0, stage = 0, mb = 0;
  double bytes = 0;  // bytes not held from its forward to its backward: 1 - kept_share of it
  double share = 1;  // Part::recompute_share: the leading share of its layers re-run
};

struct Plan {
  schedule::Program program;     // the input with OFFLOAD / RELOAD inserted
  std::vector<PlannedSet> sets;  // planned trips, by rank, stage, mb, trip
  double budget_bytes = kUnlimitedBudget;
  double peak_bytes_before = 0;  // simulated peak activation bytes, max over ranks
  double peak_bytes_after = 0;
  std::vector<double> rank_peak_before;  // (p)
  std::vector<double> rank_peak_after;   // (p)
  double step_before = 0;                // simulated step time (makespan), seconds
  double step_after = 0;
  double host_bytes = 0;  // most bytes one rank keeps on host at once: the pool size
  // The same if every partial trip moved its whole set (Note [Partial sets]: an executor moves
  // whole fields, at least a trip's share and at most all of it): the pool an executor sizes.
  double host_bytes_whole = 0;
  // Per step, summed over ranks: activation bytes the sets hold (a forward's set, plus what a
  // deferred W holds after its B), split into those that stay on the device and those moved.
  // recomputed_bytes: not held at all because the plan recomputes them (marked in the input or
  // chosen); kept + offloaded + recomputed = all of a step's set bytes.
  double kept_bytes = 0;
  double offloaded_bytes = 0;
  double recomputed_bytes = 0;
  std::vector<RecomputedSet> recomputed;  // by rank, stage, mb
  int candidates = 0;                     // trips that could be planned
  int simulations = 0;                    // simulate() calls the search made

  double slowdown() const { return step_before > 0 ? step_after / step_before - 1 : 0; }
};

struct PlanOptions {
  int max_simulations = 20000;  // search effort bound, >= 1; the best feasible plan so far wins
  bool w_held_trips = true;     // offer second trips (B to W) as candidates
  // Recompute as the second lever (CostModel::recompute_keep / recompute_time): kOff never,
  // kAuto where it lowers the predicted step under the budget, kAll on every set.
  enum class Recompute { kOff, kAuto, kAll };
  Recompute recompute = Recompute::kAuto;
  // Let trips and recomputes take part of a set (Note [Partial sets]); false: whole sets only,
  // the planner before partial sets.
  bool partial_sets = true;
};

// What a plan does with each activation set (stage, mb) of a step, summed over ranks: keep it,
// offload it (its forward-to-backward trip), recompute it, or both (offload what a recomputed
// set keeps). partial: of the offload, recompute and both sets, those whose forward-to-backward
// trip or recompute takes a share below 1 (Note [Partial sets]).
struct SetChoices {
  int keep = 0, offload = 0, recompute = 0, both = 0;
  int partial = 0;
};
SetChoices count_choices(const Plan& plan);

// REQUIRES (std::invalid_argument naming the value): program passes verify() and has no
// OFFLOAD/RELOAD; validate(costs) passes; budget_bytes > 0. Throws std::invalid_argument
// containing the smallest feasible budget when budget_bytes is below it.
Plan plan_offload(const schedule::Program& program, const schedule::CostModel& costs,
                  double budget_bytes, const PlanOptions& options = {});

// The smallest per-rank peak the planner can reach (see Note).
double minimum_budget(const schedule::Program& program, const schedule::CostModel& costs,
                      const PlanOptions& options = {});

// What a rank holds at the moment its simulated peak is reached: why a budget cannot go lower.
struct HeldSet {
  int chunk = 0, stage = 0, mb = 0;
  double bytes = 0;   // resident bytes of the set then
  std::string state;  // "saved for B", "in B", "offloading", "reloaded for W", ...
};
struct PeakMoment {
  int rank = 0;               // the first rank whose peak is the program's
  double time = 0;            // seconds: the first moment it holds that peak
  double bytes = 0;           // the peak
  std::vector<HeldSet> sets;  // resident sets then, by stage and mb
};
// REQUIRES: program passes verify(); validate(costs) passes.
PeakMoment peak_moment(const schedule::Program& program, const schedule::CostModel& costs);
// "rank 1 at 1.2345 s holds 4.00 GiB: c0[3] in B 1.00 GiB, c1[2] saved for B 1.00 GiB, ..."
std::string to_text(const PeakMoment& moment);

// A human-readable summary: the plan's figures, a line per rank, the offloaded sets.
std::string to_text(const Plan& plan);

}  // namespace stp::offload
