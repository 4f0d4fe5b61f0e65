// `stp plan`: choose the activation offloads that fit a schedule into a device memory budget
// (offload/planner.h), print the plan, optionally sweep budgets and draw the timeline.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "cli.h"
#include "command.h"
#include "common/bytes.h"
#include "common/check.h"
#include "common/file.h"
#include "offload/plan_sweep.h"
#include "offload/planner.h"
#include "schedule/generators.h"
#include "schedule/simulate.h"
#include "schedule/trace.h"

namespace stp::apps {
namespace {

// ---- stp plan ------------------------------------------------------------------------------

// "1GiB" or "1GiB,2GiB,..." (one per stage).
std::vector<double> parse_act_bytes(const std::string& text) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ','))
    out.push_back(static_cast<double>(parse_bytes(item, "--act-bytes")));
  STP_CHECK(!out.empty(), "--act-bytes='", text, "' is empty; give a size (1GiB) or one per stage");
  return out;
}

// A figure of the plan as JSON: null when unlimited, an integer when whole (byte counts).
nlohmann::ordered_json json_number(double v) {
  if (std::isinf(v)) return nullptr;
  if (v == std::floor(v) && std::fabs(v) < 0x1p53) return static_cast<std::int64_t>(v);
  return v;
}

std::string plan_json(const offload::Plan& p) {
  using Json = nlohmann::ordered_json;  // members in the order written
  // Where a set lives, then what the plan does with it.
  auto set_json = [](const auto& s) {
    return Json{{"rank", s.rank}, {"chunk", s.chunk}, {"stage", s.stage}, {"mb", s.mb}};
  };
  Json sets = Json::array();
  for (const offload::PlannedSet& s : p.sets) {
    Json j = set_json(s);
    j["lead"] = s.lead;
    j["trip"] = s.w_held ? "b_to_w" : "f_to_b";
    j["bytes"] = json_number(s.bytes);
    j["recompute"] = s.recompute;
    j["share"] = s.share;
    sets.push_back(std::move(j));
  }
  Json again = Json::array();
  for (const offload::RecomputedSet& s : p.recomputed) {
    Json j = set_json(s);
    j["bytes"] = json_number(s.bytes);
    j["share"] = s.share;
    again.push_back(std::move(j));
  }
  return Json{{"budget_bytes", json_number(p.budget_bytes)},
              {"peak_bytes_before", json_number(p.peak_bytes_before)},
              {"peak_bytes_after", json_number(p.peak_bytes_after)},
              {"step_before", json_number(p.step_before)},
              {"step_after", json_number(p.step_after)},
              {"slowdown", json_number(p.slowdown())},
              {"host_bytes", json_number(p.host_bytes)},
              {"candidates", p.candidates},
              {"kept_bytes", json_number(p.kept_bytes)},
              {"offloaded_bytes", json_number(p.offloaded_bytes)},
              {"recomputed_bytes", json_number(p.recomputed_bytes)},
              {"simulations", p.simulations},
              {"sets", std::move(sets)},
              {"recomputed", std::move(again)}}
      .dump();
}

struct PlanArgs {
  std::string kind = "stp", act_bytes = "1GiB", budget = "unlimited", format = "text";
  std::string recompute = "auto";
  std::string svg, sweep_svg;
  int pp = 4, microbatches = 0, chunks = 0, sweep = 0;
  double pcie_gbps = 25;
  schedule::CostModel costs = [] {
    schedule::CostModel c;
    c.t_f = 0.040;
    c.t_b = 0.040;
    c.t_w = 0.030;
    c.t_ar = 0.008;
    c.recompute_keep = 0.15;
    c.recompute_time = 1;
    return c;
  }();
};

void add_options(CLI::App& app, PlanArgs& a) {
  schedule::CostModel& costs = a.costs;
  // Every option shows its default in --help.
  auto opt = [&app](const std::string& name, auto& value, const std::string& help) {
    app.add_option(name, value, help)->capture_default_str();
  };
  opt("--kind", a.kind, "schedule: 1f1b, 1f1b-i, zb-h1, zb-v, stp");
  opt("--pp", a.pp, "pipeline ranks p (>= 1)");
  opt("--microbatches,-m", a.microbatches, "microbatches m (0: the kind's minimum, 3p-1 for stp)");
  opt("--chunks", a.chunks, "chunks per rank v (0: the kind's default)");
  opt("--act-bytes", a.act_bytes,
      "bytes of one activation set (one chunk, one microbatch), or one per stage "
      "separated by commas");
  opt("--budget", a.budget, "device bytes for activations per rank, or unlimited");
  opt("--pcie-gbps", a.pcie_gbps, "host link bandwidth per direction, GB/s (> 0)");
  opt("--host-latency", costs.host_latency, "seconds per host copy (>= 0)");
  opt("--offload-fraction", costs.offload_fraction, "share of a set's bytes that moves, [0, 1]");
  opt("--w-held", costs.w_held_fraction,
      "bytes a deferred W holds after its B, as a multiple of the set, [0, 64] "
      "(0: freed at B, the seed table's convention; stp train measures it)");
  opt("--recompute", a.recompute,
      "off, auto (recompute a set where that beats offloading it or keeping it) or all");
  opt("--recompute-keep", costs.recompute_keep,
      "share of a set a recomputed set still holds until its backward, [0, 1]; 0.15: a "
      "transformer layer with flash attention keeps its two residual inputs, ~2 of its ~14 "
      "B*T*C-sized saved tensors at tp 1 (stp train measures it)");
  opt("--recompute-time", costs.recompute_time,
      "extra backward compute of a recomputed set, in forwards (>= 0); 1: the forward runs "
      "again in full");
  opt("--tf,--t-f", costs.t_f, "forward seconds of one chunk (>= 0)");
  opt("--tb,--t-b", costs.t_b, "activation-gradient seconds of one chunk (>= 0)");
  opt("--tw,--t-w", costs.t_w, "weight-gradient seconds of one chunk (>= 0)");
  opt("--tar,--t-ar", costs.t_ar, "TP all-reduce seconds of one pass of one chunk (>= 0)");
  app.add_option("--svg", a.svg, "write the planned timeline (transfer rows under each rank) here");
  app.add_option("--sweep", a.sweep, "plan N budgets from the peak down past the minimum (N >= 2)");
  app.add_option("--sweep-svg", a.sweep_svg, "with --sweep: write step time vs budget as SVG here");
  opt("--format", a.format, "text or json");
}

void validate(const PlanArgs& a) {
  const schedule::CostModel& costs = a.costs;
  STP_CHECK(a.format == "text" || a.format == "json", "--format=", a.format,
            " must be text or json");
  STP_CHECK(a.pp >= 1 && a.pp <= 1024, "--pp=", a.pp, " must be in [1, 1024]");
  STP_CHECK(std::isfinite(a.pcie_gbps) && a.pcie_gbps > 0, "--pcie-gbps=", a.pcie_gbps,
            " must be > 0");
  STP_CHECK(a.sweep == 0 || a.sweep >= 2, "--sweep=", a.sweep, " must be >= 2 (or 0: no sweep)");
  STP_CHECK(a.sweep_svg.empty() || a.sweep > 0, "--sweep-svg needs --sweep N");
  for (auto [flag, value] : {std::pair{"--tf", costs.t_f},
                             {"--tb", costs.t_b},
                             {"--tw", costs.t_w},
                             {"--tar", costs.t_ar},
                             {"--host-latency", costs.host_latency}})
    STP_CHECK(std::isfinite(value) && value >= 0, flag, "=", value,
              " must be a number of seconds >= 0");
  STP_CHECK(costs.offload_fraction >= 0 && costs.offload_fraction <= 1,
            "--offload-fraction=", costs.offload_fraction, " must be in [0, 1]");
  STP_CHECK(a.recompute == "off" || a.recompute == "auto" || a.recompute == "all",
            "--recompute=", a.recompute, " must be off, auto or all");
  STP_CHECK(costs.recompute_keep >= 0 && costs.recompute_keep <= 1,
            "--recompute-keep=", costs.recompute_keep, " must be in [0, 1]");
  STP_CHECK(std::isfinite(costs.recompute_time) && costs.recompute_time >= 0,
            "--recompute-time=", costs.recompute_time, " must be a number of forwards >= 0");
  STP_CHECK(costs.w_held_fraction >= 0 && costs.w_held_fraction <= 64,
            "--w-held=", costs.w_held_fraction, " must be in [0, 64]");
}

// `stp plan --sweep N`: the table, and the chart when asked.
void print_sweep(const PlanArgs& a, const schedule::Program& program,
                 const schedule::CostModel& costs, const offload::PlanOptions& options,
                 const std::string& set_text) {
  offload::Sweep sw = offload::sweep_budgets(program, costs, a.sweep, options);
  std::printf(
      "stp plan --sweep: %s p=%d m=%d, activation set %s, host link %.1f GB/s, recompute %s\n"
      "peak without offload %s, smallest feasible budget %s, step %.4f s\n\n%s",
      a.kind.c_str(), a.pp, a.microbatches, set_text.c_str(), a.pcie_gbps, a.recompute.c_str(),
      format_bytes(sw.peak_bytes).c_str(), format_bytes(sw.min_budget).c_str(), sw.step,
      offload::to_table(sw).c_str());
  if (a.sweep_svg.empty()) return;
  write_file(a.sweep_svg, offload::to_svg(sw, str_cat("stp plan: ", a.kind, " p=", a.pp,
                                                      " m=", a.microbatches, ", set ", set_text,
                                                      ", host link ", a.pcie_gbps, " GB/s")));
  std::printf("wrote %s\n", a.sweep_svg.c_str());
}

// What a user asks first: does it fit and at what price, how low can it go and why, how much
// pinned host memory it takes.
std::string answer_first(const schedule::Program& program, const schedule::CostModel& costs,
                         const offload::PlanOptions& options, const offload::Plan& plan) {
  std::string out;
  char line[512];
  const offload::SetChoices n = offload::count_choices(plan);
  std::snprintf(
      line, sizeof line,
      "fits in %s per rank at %+.2f %% predicted: %d sets offloaded, %d recomputed "
      "(without offload: %s, %.4f s); host pool %s per rank\n"
      "choice per set: %d keep, %d offload, %d recompute, %d both (recompute and "
      "offload what it keeps); %d of them partial\n",
      format_bytes(plan.peak_bytes_after).c_str(), 100 * plan.slowdown(), n.offload + n.both,
      n.recompute + n.both, format_bytes(plan.peak_bytes_before).c_str(), plan.step_before,
      format_bytes(plan.host_bytes).c_str(), n.keep, n.offload, n.recompute, n.both, n.partial);
  out += line;
  const double floor = offload::minimum_budget(program, costs, options);
  const offload::Plan at_floor = offload::plan_offload(program, costs, floor, options);
  std::snprintf(line, sizeof line, "floor %s per rank at %+.2f %% predicted, where ",
                format_bytes(floor).c_str(), 100 * at_floor.slowdown());
  out += line + offload::to_text(offload::peak_moment(at_floor.program, costs)) + "\n";
  return out;
}

// `stp plan`: one plan as text or JSON, and its simulated timeline when asked.
void print_plan(const PlanArgs& a, const schedule::Program& program,
                const schedule::CostModel& costs, const offload::PlanOptions& options,
                const std::string& set_text, double budget_bytes) {
  offload::Plan plan = offload::plan_offload(program, costs, budget_bytes, options);
  if (a.format == "json") {
    std::printf("%s\n", plan_json(plan).c_str());
  } else {
    std::printf(
        "stp plan: %s p=%d m=%d, activation set %s, host link %.1f GB/s, "
        "t_f=%g t_b=%g t_w=%g t_ar=%g s, W holds %g of a set, recompute %s (keeps %g, costs "
        "%g forward)\n%s",
        a.kind.c_str(), a.pp, a.microbatches, set_text.c_str(), a.pcie_gbps, costs.t_f, costs.t_b,
        costs.t_w, costs.t_ar, costs.w_held_fraction, a.recompute.c_str(), costs.recompute_keep,
        costs.recompute_time, answer_first(program, costs, options, plan).c_str());
    std::printf("%s", offload::to_text(plan).c_str());
  }
  if (a.svg.empty()) return;
  schedule::SimOptions so;
  so.record_timeline = true;
  schedule::SimResult sim = schedule::simulate(plan.program, costs, so);
  sim.timeline.title =
      str_cat(a.kind, " p=", a.pp, " m=", a.microbatches, ", budget ",
              std::isinf(budget_bytes) ? std::string("unlimited") : format_bytes(budget_bytes));
  write_file(a.svg, schedule::to_svg(sim.timeline));
  if (a.format == "text") std::printf("wrote %s\n", a.svg.c_str());
}

int plan_main(const std::vector<std::string>& args) {
  CLI::App app{
      "Plan activation offload: choose the sets to park in host memory and place each\n"
      "OFFLOAD/RELOAD so that the simulated peak activation bytes per rank fit --budget with\n"
      "the least simulated slowdown (offload/planner.h, docs/offload.md).",
      "stp plan"};
  PlanArgs a;
  add_options(app, a);
  if (int rc = parse(app, args); rc >= 0) return rc;
  validate(a);

  const schedule::Kind k = schedule::kind_from_string(a.kind);
  if (a.microbatches == 0)  // stp: 3p-1, the smallest m in the reference generator's regime
    a.microbatches =
        schedule::min_microbatches(k, a.pp, a.chunks, k == schedule::Kind::kSTP ? 3 * a.pp - 1 : 1);
  const schedule::Program program = schedule::make(k, a.pp, a.microbatches, a.chunks);
  schedule::CostModel costs = a.costs;
  costs.host_bandwidth = a.pcie_gbps * 1e9;
  std::vector<double> act = parse_act_bytes(a.act_bytes);
  if (act.size() == 1) {
    costs.act_bytes = act[0];
  } else {
    STP_CHECK(static_cast<int>(act.size()) == program.stages(), "--act-bytes has ", act.size(),
              " sizes; ", a.kind, " with p=", a.pp, " has ", program.stages(),
              " stages: give one size or one per stage");
    costs.stage_act_bytes = act;
  }
  std::string set_text;  // "1.00 GiB", or "1.00 GiB/2.00 GiB/... per stage"
  for (double b : act) set_text += (set_text.empty() ? "" : "/") + format_bytes(b);
  if (act.size() > 1) set_text += " per stage";
  double budget_bytes = offload::kUnlimitedBudget;
  if (a.budget != "unlimited") {
    budget_bytes = static_cast<double>(parse_bytes(a.budget, "--budget"));
    STP_CHECK(budget_bytes > 0, "--budget=", a.budget, " must be > 0 (or unlimited)");
  }
  offload::PlanOptions options;
  options.recompute = a.recompute == "off"   ? offload::PlanOptions::Recompute::kOff
                      : a.recompute == "all" ? offload::PlanOptions::Recompute::kAll
                                             : offload::PlanOptions::Recompute::kAuto;
  if (a.sweep > 0)
    print_sweep(a, program, costs, options, set_text);
  else
    print_plan(a, program, costs, options, set_text, budget_bytes);
  return 0;
}

STP_REGISTER_COMMAND("plan", "fit a schedule into a device memory budget with activation offload",
                     plan_main);
}  // namespace
}  // namespace stp::apps
