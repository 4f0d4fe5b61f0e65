// `stp schedule` prints or draws one schedule; `stp simulate` costs schedules side by side with
// the seed table's formulas (docs/schedule.md).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "cli.h"
#include "command.h"
#include "common/check.h"
#include "common/file.h"
#include "schedule/cost_model.h"
#include "schedule/formulas.h"
#include "schedule/generators.h"
#include "schedule/p2p.h"
#include "schedule/simulate.h"
#include "schedule/trace.h"
#include "schedule/verify.h"

namespace stp::apps {
namespace {

namespace sch = stp::schedule;

// Cost-model flags shared by both commands (plain strings for byte sizes: "4MiB").
struct CostFlags {
  sch::CostModel costs;
  std::string p2p_bytes = "0";
  std::string act_bytes = "0";

  void add_to(CLI::App& app) {
    app.add_option("--tf", costs.t_f, "forward time of one chunk (T_F)")->default_val(1.0);
    app.add_option("--tb", costs.t_b, "activation-gradient time of one chunk (T_B)")
        ->default_val(1.0);
    app.add_option("--tw", costs.t_w, "weight-gradient time of one chunk (T_W)")->default_val(1.0);
    app.add_option("--tar", costs.t_ar, "TP all-reduce time of one pass of one chunk (T_AR)")
        ->default_val(0.0);
    app.add_option("--braid-units", costs.braid_units,
                   "units per pass; > 0 leaves each braid's last all-reduce (T_AR/units) exposed")
        ->default_val(0);
    app.add_option("--braid-slowdown", costs.braid_slowdown,
                   "compute inside braided blocks runs this much slower")
        ->default_val(1.0);
    app.add_option("--p2p-latency", costs.p2p_latency, "seconds per pipeline message")
        ->default_val(0.0);
    app.add_option("--p2p-bandwidth", costs.p2p_bandwidth,
                   "bytes/s of each directed pipeline link (0 = unlimited)")
        ->default_val(0.0);
    app.add_option("--p2p-bytes", p2p_bytes, "bytes of one activation message, e.g. 16MiB");
    app.add_option("--act-bytes", act_bytes, "bytes of one activation set M_a, e.g. 1.5GiB");
  }

  sch::CostModel resolve(int stages) {
    costs.p2p_bytes = static_cast<double>(parse_bytes(p2p_bytes, "p2p-bytes"));
    costs.act_bytes = static_cast<double>(parse_bytes(act_bytes, "act-bytes"));
    sch::validate(costs, stages);
    return costs;
  }
};

// The flags that name the program, shared by both commands.
struct ProgramFlags {
  std::string kind;  // empty: --kind is required
  int pp = 0, microbatches = 0, chunks = 0;

  void add_to(CLI::App& app, const std::string& kind_help, const std::string& chunks_help) {
    CLI::Option* k = app.add_option("--kind", kind, kind_help);
    if (kind.empty()) k->required();
    app.add_option("--pp", pp, "pipeline ranks p (>= 1)")->required();
    app.add_option("--microbatches", microbatches, "microbatches m per step")->required();
    app.add_option("--chunks", chunks, chunks_help);
  }
};

std::vector<sch::Kind> kinds_from(const std::string& kind) {
  if (kind == "all") return sch::all_kinds();
  return {sch::kind_from_string(kind)};
}

void emit(const std::string& out, const std::string& text) {
  if (out.empty()) {
    std::fwrite(text.data(), 1, text.size(), stdout);
  } else {
    write_file(out, text);
  }
}

int run_schedule(const std::vector<std::string>& args) {
  CLI::App app("Print or draw one pipeline schedule", "stp schedule");
  std::string format = "text", out;
  ProgramFlags flags;
  auto& [kind, pp, microbatches, chunks] = flags;
  bool with_comm = false;
  CostFlags cost;
  flags.add_to(app, "1f1b, 1f1b-i, zb-h1, zb-v or stp",
               "chunks per rank v (1f1b-i only; default 2)");
  app.add_option("--format", format, "text, json, svg or trace (Chrome/Perfetto JSON)");
  app.add_option("--out", out, "write to FILE instead of stdout");
  app.add_flag("--with-comm", with_comm, "text: also list P2P and offload instructions");
  cost.add_to(app);
  if (int rc = parse(app, args); rc >= 0) return rc;

  STP_CHECK(format == "text" || format == "json" || format == "svg" || format == "trace",
            "format='", format, "' is not one of text, json, svg, trace");
  STP_CHECK(pp >= 1, "pp=", pp, " must be >= 1");
  const sch::Program program = sch::make(sch::kind_from_string(kind), pp, microbatches, chunks);
  sch::verify(program);
  const sch::CostModel costs = cost.resolve(program.stages());  // checked for every format
  if (format == "text") {
    emit(out, sch::to_text(program, !with_comm));
  } else if (format == "json") {
    emit(out, sch::to_json(program));
  } else {
    sch::SimOptions options;
    options.record_timeline = true;
    sch::SimResult sim = sch::simulate(program, costs, options);
    emit(out, format == "svg" ? sch::to_svg(sim.timeline) : sch::to_chrome_trace(sim.timeline));
  }
  return 0;
}

void print_rank_table(const sch::SimResult& sim) {
  std::printf(
      "  rank   start      end     busy  exposed_tp   idle  idle_step  peak_sets  sets_until_w  "
      "peak_bytes\n");
  for (std::size_t r = 0; r < sim.ranks.size(); ++r) {
    const sch::RankStats& s = sim.ranks[r];
    std::printf("  %4zu %7.2f %8.2f %8.2f %11.2f %6.2f %10.2f %10d %13d  %s\n", r, s.start, s.end,
                s.busy, s.exposed_tp, s.idle, s.idle_in_step, s.peak_sets, s.peak_sets_until_w,
                format_bytes(s.peak_bytes).c_str());
  }
}

int run_simulate(const std::vector<std::string>& args) {
  CLI::App app("Simulate schedules under a cost model, beside the seed table's formulas",
               "stp simulate");
  std::string svg, trace;
  ProgramFlags flags{"all"};
  auto& [kind, pp, microbatches, chunks] = flags;
  bool per_rank = false;
  CostFlags cost;
  flags.add_to(app, "all, 1f1b, 1f1b-i, zb-h1, zb-v or stp",
               "chunks per rank for 1f1b-i (default 2)");
  app.add_option("--svg", svg, "draw the simulated timelines to FILE");
  app.add_option("--trace", trace, "write the simulated timelines as a Chrome trace to FILE");
  app.add_flag("--per-rank", per_rank, "also print each rank's figures");
  cost.add_to(app);
  if (int rc = parse(app, args); rc >= 0) return rc;

  STP_CHECK(pp >= 1, "pp=", pp, " must be >= 1");
  STP_CHECK(microbatches >= 1, "microbatches=", microbatches, " must be >= 1");
  const std::vector<sch::Kind> kinds = kinds_from(kind);
  sch::validate(cost.costs, 1);  // negative times fail here, before any schedule is built

  // Build (and check) every program and the cost model before printing anything, so a bad
  // argument is the only line of output.
  std::vector<std::string> skipped;
  std::vector<sch::Program> programs;
  for (sch::Kind k : kinds) {
    const int v = k == sch::Kind::k1F1BInterleaved ? chunks : 0;
    if (kinds.size() > 1 && !sch::accepts_microbatches(k, pp, microbatches)) {
      try {
        sch::make(k, pp, microbatches, v);
      } catch (const std::invalid_argument& e) {
        skipped.push_back(str_cat(sch::to_string(k), ": skipped, ", e.what()));
      }
      continue;
    }
    programs.push_back(sch::make(k, pp, microbatches, v));
    sch::verify(programs.back());
  }
  for (const sch::Program& program : programs) cost.resolve(program.stages());

  std::printf(
      "p=%d m=%d  T_F=%g T_B=%g T_W=%g T_AR=%g  (times in the cost model's unit; "
      "max over ranks)\n",
      pp, microbatches, cost.costs.t_f, cost.costs.t_b, cost.costs.t_w, cost.costs.t_ar);
  std::printf("%-7s %9s  %-29s  %-19s  %-18s\n", "", "", "PP bubble", "TP bubble (exposed)",
              "peak activations (M_a)");
  std::printf("%-7s %9s  %9s %9s %9s  %9s %9s  %4s %5s %7s  %s\n", "kind", "span", "sim", "formula",
              "step-idle", "sim", "formula", "sim", "form.", "W-held", "formula from");
  std::vector<sch::Timeline> timelines;
  for (const sch::Program& program : programs) {
    const sch::Kind k = sch::kind_from_string(program.kind);
    sch::SimOptions options;
    options.record_timeline = !svg.empty() || !trace.empty();
    const sch::CostModel costs = cost.resolve(program.stages());
    sch::SimResult sim = sch::simulate(program, costs, options);
    const sch::TableFigures f = sch::table_figures(k, pp, microbatches, program.v, costs);
    double step_idle = 0;
    for (const auto& r : sim.ranks) step_idle = std::max(step_idle, r.idle_in_step);
    std::printf("%-7s %9.2f  %9.2f %9.2f %9.2f  %9.2f %9.2f  %4d %5.0f %7d  %s\n",
                sch::to_string(k), sim.makespan, sim.max_idle(), f.pp_bubble, step_idle,
                sim.max_exposed_tp(), f.tp_bubble, sim.max_peak_sets(), f.peak_sets,
                sim.max_peak_sets_until_w(), f.seed ? "seed table" : "literature");
    if (costs.act_bytes > 0)
      std::printf("        peak activation bytes per rank: %s\n",
                  format_bytes(sim.max_peak_bytes()).c_str());
    if (per_rank) print_rank_table(sim);
    timelines.push_back(std::move(sim.timeline));
  }
  for (const std::string& s : skipped) std::printf("%s\n", s.c_str());
  if (!svg.empty()) write_file(svg, sch::to_svg(timelines));
  if (!trace.empty()) write_file(trace, sch::to_chrome_trace(timelines));
  return 0;
}

STP_REGISTER_COMMAND("schedule", "print or draw a pipeline schedule (text, json, svg, trace)",
                     run_schedule);
STP_REGISTER_COMMAND("simulate", "simulate schedules under a cost model beside the seed table",
                     run_simulate);

}  // namespace
}  // namespace stp::apps
