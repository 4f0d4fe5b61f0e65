// The training benchmarks on a tiny GPT (ranks as threads): rows for every kind and offload
// setting with finite predictions, offload that moves bytes only when on and keeps the measured
// peak within the budget, and a budget sweep that descends to its smallest feasible point.
#include "train/train_bench.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>

#include "file_test_util.h"

namespace stp::train {
namespace {

namespace fs = std::filesystem;
using stp::testing::fresh_temp_dir;

// Options of a quiet one-step run that writes into a fresh temporary folder `name`.
template <class Options>
Options one_step(int warmup, const std::string& name) {
  Options o;
  o.warmup = warmup;
  o.steps = 1;
  o.out_dir = fresh_temp_dir("train_bench", name);
  o.progress = false;
  return o;
}

// tp 2 x pp 2, one layer per stage of a V schedule, tens of milliseconds a step.
TrainConfig tiny() {
  TrainConfig c;
  c.model.d_model = 32;
  c.model.n_heads = 2;
  c.model.n_layers = 4;
  c.model.seq_len = 16;
  c.schedule.microbatches = 4;
  c.schedule.micro_batch_size = 2;
  c.data.corpus_bytes = 1 << 16;
  c.run.comm_timeout_s = 30;
  return c;
}

bool finite_positive(double x) { return std::isfinite(x) && x > 0; }

void expect_measured(const BenchRun& r) {
  EXPECT_TRUE(finite_positive(r.tokens_per_s)) << r.kind << " " << r.budget;
  EXPECT_TRUE(finite_positive(r.step_seconds)) << r.kind << " " << r.budget;
  EXPECT_GE(r.step_seconds, r.program_seconds) << r.kind << " " << r.budget;
  EXPECT_GT(r.peak_activation_bytes, 0) << r.kind << " " << r.budget;
  EXPECT_TRUE(std::isfinite(r.last_loss) && r.last_loss > 0) << r.kind << " " << r.budget;
  for (double f :
       {r.exposed_comm, r.pp_idle, r.reload_wait, r.predicted_exposed_comm, r.predicted_pp_idle})
    EXPECT_TRUE(f >= 0 && f <= 1) << r.kind << " " << r.budget << ": fraction " << f;
  EXPECT_TRUE(finite_positive(r.predicted_seconds)) << r.kind << " " << r.budget;
  EXPECT_GT(r.planned_peak_bytes, 0) << r.kind << " " << r.budget;
  EXPECT_TRUE(std::isfinite(r.planned_slowdown)) << r.kind << " " << r.budget;
  EXPECT_FALSE(r.costs.empty());
}

// Offload moves bytes exactly when it is on, and the measured peak keeps to the planned budget.
void expect_offload(const BenchRun& r) {
  if (r.budget == "off") {
    EXPECT_EQ(r.offloaded_bytes, 0) << r.kind;
    EXPECT_EQ(r.budget_bytes, 0) << r.kind;
    EXPECT_FALSE(r.offloads) << r.kind;
    return;
  }
  EXPECT_GT(r.budget_bytes, 0) << r.kind << " " << r.budget;
  EXPECT_LE(r.peak_activation_bytes, r.budget_bytes)
      << r.kind << " at " << r.budget << ": measured peak over the planned budget (planned peak "
      << r.planned_peak_bytes << ")";
  if (r.offloads) {
    EXPECT_GT(r.offloaded_bytes, 0) << r.kind << " " << r.budget;
    EXPECT_GT(r.predicted_offloaded_bytes, 0) << r.kind << " " << r.budget;
  }
}

TEST(TrainBench, RowsPerKindAndOffloadWithPredictions) {
  auto o = one_step<TrainBenchOptions>(1, "train");
  o.kinds = {"1f1b-i", "stp"};
  o.on_budget = "90%";
  TrainBenchResult res = run_train_bench(tiny(), o);
  ASSERT_TRUE(res.lead);
  ASSERT_EQ(res.runs.size(), 4u);
  ASSERT_EQ(res.ratio.size(), 4u);
  EXPECT_EQ(res.baseline, "1f1b-i off");
  EXPECT_DOUBLE_EQ(res.ratio[0], 1.0);
  const char* kinds[] = {"1f1b-i", "1f1b-i", "stp", "stp"};
  for (std::size_t i = 0; i < res.runs.size(); ++i) {
    const BenchRun& r = res.runs[i];
    EXPECT_EQ(r.kind, kinds[i]);
    EXPECT_EQ(r.budget, i % 2 == 0 ? "off" : "90%");
    EXPECT_TRUE(finite_positive(res.ratio[i]));
    expect_measured(r);
    expect_offload(r);
  }
  EXPECT_TRUE(res.runs[1].offloads) << "90% of the peak must make the planner offload";
  EXPECT_TRUE(res.runs[3].offloads) << "90% of the peak must make the planner offload";
  // The same data and model under every run: the first step's loss agrees.
  EXPECT_NEAR(res.runs[0].first_loss, res.runs[3].first_loss, 1e-4);

  std::ifstream in(o.out_dir + "/results.json");
  ASSERT_TRUE(in.good());
  auto doc = nlohmann::json::parse(in);
  EXPECT_EQ(doc.at("runs").size(), 4u);
  EXPECT_TRUE(fs::exists(o.out_dir + "/runs/stp-on/timeline.svg"));
  const std::string table = train_bench_table(res);
  EXPECT_NE(table.find("1f1b-i  off"), std::string::npos) << table;
  EXPECT_NE(table.find("sim: schedule::simulate"), std::string::npos) << table;
  fs::remove_all(o.out_dir);
}

TEST(TrainBench, BadOptionsNameTheValue) {
  TrainBenchOptions o;
  o.steps = 0;
  try {
    run_train_bench(tiny(), o);
    FAIL() << "steps=0 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("steps=0"), std::string::npos) << e.what();
  }
  o.steps = 1;
  o.kinds = {"gpipe"};
  EXPECT_THROW(run_train_bench(tiny(), o), std::invalid_argument);
}

TEST(BudgetSweep, DescendsToTheSmallestFeasibleBudget) {
  auto o = one_step<BudgetSweepOptions>(0, "budget");
  o.budgets = {"100%", "90%"};
  BudgetSweepResult res = run_budget_sweep(tiny(), o);
  ASSERT_TRUE(res.lead);
  EXPECT_EQ(res.kind, "stp");
  ASSERT_EQ(res.points.size(), 3u);  // 100%, 90%, then the smallest feasible
  std::int64_t previous = INT64_MAX;
  for (const BudgetPoint& pt : res.points) {
    ASSERT_TRUE(pt.feasible) << pt.run.budget;
    EXPECT_LT(pt.run.budget_bytes, previous) << pt.run.budget << ": budgets must descend";
    previous = pt.run.budget_bytes;
    expect_measured(pt.run);
    expect_offload(pt.run);
    EXPECT_TRUE(finite_positive(pt.planner_seconds)) << pt.run.budget;
  }
  for (const BudgetPoint& pt : res.points) {
    EXPECT_GT(pt.run.sets, 0) << pt.run.budget;
    EXPECT_LE(pt.run.recomputed_sets, pt.run.sets) << pt.run.budget;
    EXPECT_LE(pt.run.recomputed_share, pt.run.recomputed_sets) << pt.run.budget;
  }
  EXPECT_EQ(res.points[0].run.recomputed_sets, 0) << "100% of the peak needs no recompute";
  EXPECT_NE(budget_sweep_table(res).find(" 0.0/" + std::to_string(res.points[0].run.sets)),
            std::string::npos);
  EXPECT_FALSE(res.points[0].run.offloads) << "100% of the peak needs no offload";
  EXPECT_EQ(res.points[0].run.offloaded_bytes, 0);
  EXPECT_EQ(res.unconstrained_peak_bytes, res.points[0].run.planned_peak_bytes);
  const BudgetPoint& last = res.points.back();
  EXPECT_TRUE(last.minimum);
  EXPECT_EQ(last.run.budget, "min");
  EXPECT_EQ(res.minimum_budget_bytes, last.run.budget_bytes);
  EXPECT_GT(res.minimum_budget_bytes, 0);
  EXPECT_LE(last.run.planned_peak_bytes, last.run.budget_bytes);
  EXPECT_TRUE(last.run.offloads);
  EXPECT_TRUE(fs::exists(o.out_dir + "/budget.svg"));
  EXPECT_TRUE(fs::exists(o.out_dir + "/results.json"));
  EXPECT_NE(budget_sweep_table(res).find("<- smallest feasible"), std::string::npos);
  fs::remove_all(o.out_dir);
}

TEST(BudgetSweep, InfeasibleBudgetIsReportedWithTheFloor) {
  auto o = one_step<BudgetSweepOptions>(0, "floor");
  o.budgets = {"1KiB"};
  TrainConfig c = tiny();
  c.schedule.kind = "1f1b-i";
  BudgetSweepResult res = run_budget_sweep(c, o);
  ASSERT_EQ(res.points.size(), 2u);
  EXPECT_FALSE(res.points[0].feasible);
  EXPECT_GT(res.points[0].floor_bytes, 1024);
  EXPECT_TRUE(res.points[1].minimum);
  EXPECT_TRUE(res.points[1].feasible);
  EXPECT_GE(res.points[1].run.budget_bytes, res.points[0].floor_bytes);
  expect_offload(res.points[1].run);
  fs::remove_all(o.out_dir);
}

}  // namespace
}  // namespace stp::train
