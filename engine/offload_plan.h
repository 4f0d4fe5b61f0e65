// Offload planning for the trainer: turns the budget a user writes ("off", "512MiB", "60%")
// and the probed activation bytes per stage into a Program with OFFLOAD/RELOAD instructions,
// through offload/'s planner and schedule/'s simulator.
#pragma once

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/step_stats.h"
#include "schedule/program.h"

namespace stp::engine {

// The device budget for activations: off, a size in bytes, or a percentage of the simulated
// peak without offload. Parsed once from its text form ("off", "512MiB", "60%", "auto").
// "auto" (the training config's default) is 80 % of the peak, or the smallest feasible budget
// when 80 % is below it: a default never refuses a run; a budget the user wrote does.
struct OffloadBudget {
  enum class Kind { kOff, kBytes, kPercent } kind = Kind::kOff;
  std::int64_t bytes = 0;       // kBytes, > 0
  double percent = 0;           // kPercent, (0, 100]
  bool floor_if_below = false;  // "auto": plan at the floor instead of refusing

  static OffloadBudget off() { return {}; }
  static OffloadBudget of_bytes(std::int64_t bytes) { return {Kind::kBytes, bytes, 0}; }
  static OffloadBudget of_percent(double percent) { return {Kind::kPercent, 0, percent}; }
  static OffloadBudget automatic() { return {Kind::kPercent, 0, 80, true}; }
  bool is_off() const { return kind == Kind::kOff; }
  // Throws std::invalid_argument naming the value and its range.
  void validate() const;
};

// "off" | "<size>" (4096, 512MiB, 2GiB, 1.5GB) | "<p>%" with 0 < p <= 100 | "auto". Throws
// std::invalid_argument naming the text and the accepted forms.
OffloadBudget parse_offload_budget(const std::string& text);
// The text form parse_offload_budget reads back ("off", "536870912", "60%", "auto").
std::string to_string(const OffloadBudget& budget);

// The budget is below the smallest one the planner can reach; minimum_bytes is that one.
struct OffloadBudgetTooSmall : std::invalid_argument {
  OffloadBudgetTooSmall(const std::string& message, std::int64_t minimum)
      : std::invalid_argument(message), minimum_bytes(minimum) {}
  std::int64_t minimum_bytes;
};

// Recompute as the planner's second lever (Note [Recompute] in schedule/program.h): off never,
// auto where the planner finds it lowers the predicted step under the budget, all on every set
// (the trainer marks every forward part before planning, also with offload off).
enum class Recompute { kOff, kAuto, kAll };
// "off" | "auto" | "all"; throws std::invalid_argument naming the text and the legal values.
Recompute parse_recompute(const std::string& text);
std::string to_string(Recompute recompute);

// What recompute costs and saves, as the trainer's probe measured it (CostModel::recompute_keep
// and recompute_time), and whether the planner may choose it.
struct RecomputeCosts {
  Recompute mode = Recompute::kAuto;
  double keep = 1;  // the largest share over stages of a set's bytes a recomputed set keeps
  double time = 1;  // the backward's extra compute, a multiple of the forward's
};

struct OffloadPlan {
  schedule::Program program;  // with OFFLOAD/RELOAD when offloads is true
  bool offloads = false;
  std::int64_t budget_bytes = 0;       // the device budget planned for (0: off)
  std::int64_t peak_bytes_before = 0;  // simulated peak activation bytes, max over ranks
  std::int64_t peak_bytes_after = 0;
  std::int64_t host_bytes_per_rank = 0;  // pinned pool capacity a rank needs
  double slowdown = 0;                   // simulated step-time increase, fraction
  // "auto" asked for less than the smallest feasible budget: the plan runs at that floor
  // (budget_bytes) instead of the asked-for bytes.
  bool at_floor = false;
  std::int64_t asked_bytes = 0;  // what the budget asked for (budget_bytes unless at_floor)
};

// stage_bytes[s]: activation bytes of one microbatch's set on stage s; stage_forward_seconds[s]:
// its measured forward time (the backward and weight-gradient passes are costed as one forward
// each, the usual transformer ratio); w_held_fraction: the share of a set a deferred W keeps after
// its B (CostModel::w_held_fraction), so the plan budgets what the executor really holds. A
// percentage budget is of the simulated peak without
// offload. Throws OffloadBudgetTooSmall for a budget below the smallest feasible one, naming it,
// unless the budget is "auto" (floor_if_below): then the plan runs at that floor (at_floor).
// `recompute` goes into the cost model and the planner's options (offload::PlanOptions); F parts
// already marked recompute stay marked.
OffloadPlan plan_activation_offload(const schedule::Program& program,
                                    const std::vector<std::int64_t>& stage_bytes,
                                    const std::vector<double>& stage_forward_seconds,
                                    double w_held_fraction, const OffloadBudget& budget,
                                    double host_gbps, const RecomputeCosts& recompute = {});

// What the partial trips of a step moved, for `stp train` and `stp verify` (Note [Partial sets]
// in schedule/program.h): one line per chunk, kind of trip, share and fields, the microbatches
// that made it listed together, e.g.
//   c0[0-7] 5/8: layers.0-2 (9 fields, 1.50 MiB of 2.25 MiB: what its backward reads last)
//   c1[0-3] after B 1/2: layers.3 (2 fields, 96.00 KiB of 160.00 KiB, of what its W reads)
// A field name "<unit>.<n>.<rest>" is shown as its "<unit>.<n>", runs of n merged ("layers.0-2");
// other names as their first component ("emb", "head"). Each line starts with `indent`; past
// `max_lines` one more says how many were left out. Empty when there were none.
std::string describe_partial_trips(const std::vector<PartialTrip>& trips, int max_lines = 8,
                                   const std::string& indent = "");

// Note [Planner timing]
// ~~~~~~~~~~~~~~~~~~~~~
// The planner's per-stage forward time comes from timing one forward of microbatch 0 in the
// first step. On CUDA a host clock read right after launching kernels says when they were
// queued, not when they ran, and the process's first CUDA work also pays for cuBLAS handles and
// the allocator's growth. So the pass runs once untimed (the warm-up), then once between two
// clock readings, each preceded by a device synchronisation:
//
//   pass()  sync()  t0 = now()  pass()  sync()  t1 = now()      -> t1 - t0
//
// On the CPU sync() is a no-op (the pass ran on the calling thread).
struct PassTimer {
  std::function<double()> now;        // seconds on a monotonic clock
  std::function<void()> device_sync;  // returns when the device ran all work queued so far
};

// The seconds one run of `pass` takes, measured as Note [Planner timing] says (two runs).
double time_after_warmup(const std::function<void()>& pass, const PassTimer& timer);

}  // namespace stp::engine
