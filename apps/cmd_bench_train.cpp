// `stp bench train` and `stp bench budget`: the `stp train` run measured under each schedule kind
// with offload off and on, and under a sweep of offload budgets, each measurement next to the
// simulator's and the planner's prediction (train/train_bench.h). Without a launcher the ranks
// run as threads of this process; under `stp run -n N --` each process is one rank.
#include <fstream>
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

  train::TrainConfig resolve() const {
    train::TrainConfig cfg;
    if (!path.empty()) {
      std::ifstream in(path);
      STP_CHECK(in.good(), "--config ", path, ": cannot read the file");
      std::stringstream text;
      text << in.rdbuf();
      cfg.apply_json(text.str(), path);
    }
    for (const auto& s : sets) cfg.apply_override(s);
    cfg.validate();
    return cfg;
  }
};

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
  app.add_option("--steps", o.steps, "measured steps per run")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--warmup", o.warmup, "warm-up steps per run")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  app.add_option("--out", o.out_dir, "output folder (results.json, runs/*/timeline.svg)")
      ->capture_default_str();
  if (int rc = parse(app, args); rc >= 0) return rc;
  o.kinds.clear();
  std::stringstream ks(kinds);
  for (std::string k; std::getline(ks, k, ',');)
    if (!k.empty()) o.kinds.push_back(k);
  auto res = train::run_train_bench(config.resolve(), o);
  if (!res.lead) return 0;
  std::printf("\n%s", train::train_bench_table(res).c_str());
  std::printf("wrote %s/results.json and %s/runs/<kind>-<off|on>/timeline.svg\n", o.out_dir.c_str(),
              o.out_dir.c_str());
  return 0;
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
  app.add_option("--steps", o.steps, "measured steps per budget")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--warmup", o.warmup, "warm-up steps per budget")
      ->check(CLI::Range(0, 1000))
      ->capture_default_str();
  app.add_option("--out", o.out_dir, "output folder (results.json, budget.svg)")
      ->capture_default_str();
  if (int rc = parse(app, args); rc >= 0) return rc;
  std::stringstream bs(budgets);
  for (std::string b; std::getline(bs, b, ',');)
    if (!b.empty()) o.budgets.push_back(b);
  auto res = train::run_budget_sweep(config.resolve(), o);
  if (!res.lead) return 0;
  std::printf("\n%s", train::budget_sweep_table(res).c_str());
  std::printf("wrote %s/results.json and %s/budget.svg\n", o.out_dir.c_str(), o.out_dir.c_str());
  return 0;
}

STP_REGISTER_COMMAND("bench train",
                     "the stp train run under each schedule, offload off/on, vs the simulator",
                     bench_train);
STP_REGISTER_COMMAND("bench budget",
                     "offload budget sweep of the stp train run: measured vs planned peak and time",
                     bench_budget);

}  // namespace
}  // namespace stp::apps
