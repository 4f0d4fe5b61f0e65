// Budget sweep: the offload planner over budgets from a schedule's own peak down past the
// smallest feasible budget — predicted step time against device memory, as a table and an SVG
// line chart (`stp plan --sweep N --sweep-svg FILE`).
//
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "offload/planner.h"

namespace stp::offload {

struct SweepPoint {
  double budget_bytes = 0;
  bool feasible = false;
  double peak_bytes = 0;        // planned peak, max over ranks (feasible points)
  double step = 0;              // planned step time, seconds (feasible points)
  double slowdown = 0;          // step / plan-free step - 1
  int sets = 0;                 // planned trips to host (forward sets and what deferred Ws hold)
  double host_bytes = 0;        // pinned host bytes per rank
  double kept_bytes = 0;        // Plan::kept_bytes: per step, all ranks, stay on the device
  double offloaded_bytes = 0;   // Plan::offloaded_bytes: per step, all ranks, go to host
  double recomputed_bytes = 0;  // Plan::recomputed_bytes: per step, all ranks, not held
  int recomputed = 0;           // recomputed sets
  int partial = 0;              // SetChoices::partial: sets offloaded or recomputed in part
  int simulations = 0;          // the planner's simulate() calls for this point
};

struct Sweep {
  double peak_bytes = 0;           // the schedule's peak without offload
  double min_budget = 0;           // minimum_budget()
  double step = 0;                 // step time without offload
  std::vector<SweepPoint> points;  // descending budgets; the last one is infeasible
};

// `points` >= 2 budgets evenly from the plan-free peak down to minimum_budget(), then one 3 %
// below the minimum (infeasible). REQUIRES: as plan_offload.
Sweep sweep_budgets(const schedule::Program& program, const schedule::CostModel& costs, int points,
                    const PlanOptions& options = {});

// Fixed-width table, one row per point (the recompute columns when any point recomputes, a
// partial column when any point takes part of a set).
std::string to_table(const Sweep& sweep);
// An SVG chart of step time against budget; infeasible budgets shaded.
std::string to_svg(const Sweep& sweep, const std::string& title);

}  // namespace stp::offload
