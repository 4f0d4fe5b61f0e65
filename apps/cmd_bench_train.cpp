// `stp bench train` and `stp bench budget`: the `stp train` run measured under each schedule kind
// with offload off and on, and under a sweep of offload budgets, each measurement next to the
// simulator's and the planner's prediction (train/train_bench.h). Without a launcher the ranks
// run as threads of this process; under `stp run -n N --` each process is one rank.
#include <cstdio>
#include <sstream>

#include "cli.h"
#include "command.h"
#include "common/check.h"
#include "train/train_bench.h"

namespace stp::apps {
namespace {

// --config and --set, as `stp train` reads them.
struct ConfigArgs {
  std::string path;
  std::vector<std::string> sets;

  void add_to(CLI::App& app) {
    app.add_option("--config", path, "JSON config file (docs/config.md); default: stp train's");
    app.add_option("--set", sets, "override one field: section.key=value (repeatable)");
  }

  train::TrainConfig resolve() const { return train::load_config(path, sets); }
};

// --steps, --warmup and --out of a benchmark; `per` names what one measurement is.
void add_run_options(CLI::App& app, int& steps, int& warmup, std::string& out,
                     const std::string& per, const std::string& writes) {
  app.add_option("--steps", steps, "measured steps per " + per)
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--warmup", warmup, "warm-up steps per " + per)
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  app.add_option("--out", out, "output folder (" + writes + ")")->capture_default_str();
}

// "a,b,,c" -> {a, b, c}.
std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// The lead rank prints the benchmark's table and the files it wrote; other ranks print nothing.
template <class Result>
int print_result(const Result& res, std::string (*table)(const Result&), const std::string& wrote) {
  if (res.lead) std::printf("\n%swrote %s\n", table(res).c_str(), wrote.c_str());
  return 0;
}

int bench_train(const std::vector<std::string>& args) {
  ConfigArgs config;
  train::TrainBenchOptions o;
  std::string kinds = "1f1b-i,zb-v,stp";
  CLI::App app{
      "Measure the stp train run under each schedule, offload off and on, next to the "
      "simulator's prediction",
      "stp bench train"};
  config.add_to(app);
  app.add_option("--kinds", kinds, "schedule kinds, comma-separated")->capture_default_str();
  app.add_option("--budget", o.on_budget,
                 "offload budget of the 'on' runs (default: offload.budget)");
  add_run_options(app, o.steps, o.warmup, o.out_dir, "run", "results.json, runs/*/timeline.svg");
  if (int rc = parse(app, args); rc >= 0) return rc;
  o.kinds = split_list(kinds);
  return print_result(
      train::run_train_bench(config.resolve(), o), train::train_bench_table,
      str_cat(o.out_dir, "/results.json and ", o.out_dir, "/runs/<kind>-<off|on>/timeline.svg"));
}

int bench_budget(const std::vector<std::string>& args) {
  ConfigArgs config;
  train::BudgetSweepOptions o;
  std::string budgets;
  CLI::App app{
      "Sweep the offload budget of the stp train run from the unconstrained peak down to "
      "the smallest feasible budget, measured next to the planner's prediction",
      "stp bench budget"};
  config.add_to(app);
  app.add_option(
      "--budgets", budgets,
      "comma-separated budgets (100%,60%,3MiB); default: 100%, 95%, 90%, ... until infeasible; "
      "the smallest feasible budget is always measured last");
  add_run_options(app, o.steps, o.warmup, o.out_dir, "budget", "results.json, budget.svg");
  if (int rc = parse(app, args); rc >= 0) return rc;
  o.budgets = split_list(budgets);
  return print_result(train::run_budget_sweep(config.resolve(), o), train::budget_sweep_table,
                      str_cat(o.out_dir, "/results.json and ", o.out_dir, "/budget.svg"));
}

STP_REGISTER_COMMAND("bench train",
                     "the stp train run under each schedule, offload off/on, vs the simulator",
                     bench_train);
STP_REGISTER_COMMAND("bench budget",
                     "offload budget sweep of the stp train run: measured vs planned peak and time",
                     bench_budget);

}  // namespace
}  // namespace stp::apps
