// Training benchmarks: the `stp train` run (same model, same data, same config) measured under
// several schedules and offload budgets, each measurement next to the simulator's prediction.
//
//  - run_train_bench: each schedule kind with offload off and on (`stp bench train`).
//  - run_budget_sweep: one kind at budgets from the unconstrained peak down to the smallest
//    feasible one (`stp bench budget`).
//
// Note [Bench ranks]
// Without a launcher (no WORLD_SIZE) the tp*pp*dp ranks run as threads of this process over an
// in-memory store, at::set_num_threads(1) each; under `stp run -n N` (or torchrun, ...) every
// process is one rank and they meet through one TCP store. Each measured run builds its own
// World over a fresh key prefix of that store and its own Trainer, data loader (same seed, so
// the same batches) and model (same init seed). Only the lead (rank 0 or the thread driver)
// gets results; the others get empty ones.
//
// Note [Bench predictions]
// A run's prediction is schedule::simulate of the run's own Program (with its OFFLOAD/RELOAD
// instructions) under costs fitted by engine::fit_costs from the run's measured events —
// standalone F/B/W/BW compute times and the exposed all-reduce of standalone F — pooled over
// the measured steps of every pipeline rank, with the probed activation bytes per stage and the
// configured host link. P2P latency and braided-compute slowdown are not modelled. Predicted
// peak bytes are the offload planner's (simulated with the trainer's own probed cost model).
// Fractions (exposed comm, PP idle) are of the program's time (the schedule's part of a step).
//
// Thread-safety: each function drives a whole job; call one at a time per process.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "train/train_config.h"

namespace stp::train {

// What one measured run (a kind at a budget) gave: means over the measured steps of the worst
// rank's figures, and the predictions (Note [Bench predictions]).
struct BenchRun {
  std::string kind;               // schedule kind
  std::string budget = "off";     // the offload budget as given ("off", "60%", "123456"), or
                                  // "min": the smallest feasible one (budget_bytes)
  std::int64_t budget_bytes = 0;  // per rank, as planned (0: off)
  bool offloads = false;          // the plan offloads something
  // measured
  double step_seconds = 0;                 // whole optimizer step (program, grad reduction, AdamW)
  double program_seconds = 0;              // the schedule's program
  double tokens_per_s = 0;                 // job tokens per step / step_seconds
  double exposed_comm = 0;                 // fraction of program time blocked on TP collectives
  double pp_idle = 0;                      // fraction blocked on pipeline receives
  double reload_wait = 0;                  // fraction blocked on the host link
  std::int64_t peak_activation_bytes = 0;  // resident activation bytes, peak
  int peak_activation_sets = 0;
  std::int64_t offloaded_bytes = 0;  // per step
  int recomputed_sets = 0;           // sets per step the plan recomputes (every rank)
  // The sets' worth of that: a set re-running g of its layers counts g (Note [Partial sets]).
  double recomputed_share = 0;
  int sets = 0;                          // sets per step (every rank): stages x microbatches
  double first_loss = 0, last_loss = 0;  // over warm-up and measured steps
  // predicted
  double predicted_seconds = 0;       // simulated program makespan
  double predicted_exposed_comm = 0;  // fractions of the simulated makespan
  double predicted_pp_idle = 0;
  std::int64_t predicted_offloaded_bytes = 0;
  std::int64_t planned_peak_bytes = 0;  // the planner's simulated peak
  double planned_slowdown = 0;          // the planner's simulated step-time increase
  std::string costs;                    // the fitted pass times, one line
};

struct TrainBenchOptions {
  std::vector<std::string> kinds = {"1f1b-i", "zb-v", "stp"};  // schedule kinds, each run twice
  std::string on_budget;  // "on" budget; empty: the config's (the default one when it is off)
  int warmup = 2;         // unmeasured steps first (the first plans offload), >= 0
  int steps = 8;          // measured steps, >= 1
  std::string out_dir = "runs/bench-train";  // results.json, runs/<kind>-<off|on>/timeline.svg
  bool progress = true;                      // the lead prints a line as each run finishes
};

struct TrainBenchResult {
  bool lead = false;           // this process holds the results
  std::string setup;           // "tp=2 pp=2 dp=1 m=8 ..., 4 ranks as threads"
  std::string on_budget;       // the budget of the "on" runs
  std::vector<BenchRun> runs;  // kind-major, offload off then on
  std::string baseline;        // the run ratios are relative to ("1f1b-i off")
  std::vector<double> ratio;   // tokens/s over the baseline's, per run
};

// Throws std::invalid_argument for a bad config, kind, budget or count.
TrainBenchResult run_train_bench(const TrainConfig& config, const TrainBenchOptions& options);
// One table with a footer; and the results as JSON (what results.json holds).
std::string train_bench_table(const TrainBenchResult& result);
std::string train_bench_json(const TrainBenchResult& result);

struct BudgetSweepOptions {
  // Budgets to measure, in order ("100%", "45%", "3MiB", "123456"); empty: 100%, 95%, ... down
  // to the first infeasible percentage. The smallest feasible budget is always measured last.
  std::vector<std::string> budgets;
  int warmup = 2;                             // >= 0
  int steps = 8;                              // >= 1
  std::string out_dir = "runs/bench-budget";  // results.json, budget.svg
  bool progress = true;
};

struct BudgetPoint {
  BenchRun run;  // valid when feasible
  bool feasible = true;
  bool minimum = false;          // the smallest feasible budget
  std::int64_t floor_bytes = 0;  // infeasible: the smallest feasible budget the planner named
  double planner_seconds = 0;    // unconstrained measured program time * (1 + planned slowdown)
};

struct BudgetSweepResult {
  bool lead = false;
  std::string setup;
  std::string layout;  // short: "stp tp=2 pp=2 m=8, GPT d_model=128 x 4 layers"
  std::string kind;
  std::int64_t unconstrained_peak_bytes = 0;  // the planner's, without offload
  std::int64_t minimum_budget_bytes = 0;      // the smallest feasible budget (planner)
  std::vector<BudgetPoint> points;            // in the order measured
};

BudgetSweepResult run_budget_sweep(const TrainConfig& config, const BudgetSweepOptions& options);
std::string budget_sweep_table(const BudgetSweepResult& result);
std::string budget_sweep_json(const BudgetSweepResult& result);
// The two-panel plot: peak bytes (measured, planned, budget) and program time (measured,
// simulated, planner) against the budget.
std::string budget_sweep_svg(const BudgetSweepResult& result);

}  // namespace stp::train
