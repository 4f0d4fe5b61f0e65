#include "offload/plan_sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "common/bytes.h"
#include "common/check.h"
#include "common/svg_chart.h"
#include "schedule/simulate.h"

namespace stp::offload {

Sweep sweep_budgets(const schedule::Program& program, const schedule::CostModel& costs, int points,
                    const PlanOptions& options) {
  STP_CHECK(points >= 2, "sweep: points=", points, " must be >= 2");
  Sweep sw;
  schedule::SimResult base = schedule::simulate(program, costs);
  sw.peak_bytes = base.max_peak_bytes();
  sw.step = base.makespan;
  sw.min_budget = minimum_budget(program, costs, options);
  std::vector<double> budgets;
  for (int i = 0; i < points; ++i)
    budgets.push_back(sw.peak_bytes - (sw.peak_bytes - sw.min_budget) * i / (points - 1));
  budgets.push_back(sw.min_budget * 0.97);
  for (double b : budgets) {
    SweepPoint pt;
    pt.budget_bytes = b;
    try {
      Plan plan = plan_offload(program, costs, b, options);
      pt.feasible = true;
      pt.peak_bytes = plan.peak_bytes_after;
      pt.step = plan.step_after;
      pt.slowdown = plan.slowdown();
      pt.sets = static_cast<int>(plan.sets.size());
      pt.host_bytes = plan.host_bytes;
      pt.kept_bytes = plan.kept_bytes;
      pt.offloaded_bytes = plan.offloaded_bytes;
      pt.recomputed_bytes = plan.recomputed_bytes;
      pt.recomputed = static_cast<int>(plan.recomputed.size());
      pt.partial = count_choices(plan).partial;
      pt.simulations = plan.simulations;
    } catch (const std::invalid_argument&) {
      pt.feasible = false;  // below the smallest feasible budget
    }
    sw.points.push_back(pt);
  }
  return sw;
}

std::string to_table(const Sweep& sw) {
  const bool again = std::any_of(sw.points.begin(), sw.points.end(),
                                 [](const SweepPoint& p) { return p.recomputed > 0; });
  std::string out =
      "budget        feasible  sets  peak          step (s)   slowdown  host pool     "
      "kept/step     offloaded/step";
  const bool partial = std::any_of(sw.points.begin(), sw.points.end(),
                                   [](const SweepPoint& p) { return p.partial > 0; });
  out += again ? "  recomputed  recomputed/step" : "";
  out += partial ? "  partial\n" : "\n";
  char line[256];
  for (const SweepPoint& p : sw.points) {
    if (!p.feasible) {
      std::snprintf(line, sizeof line, "%-13s no        (below the minimum %s)\n",
                    format_bytes(p.budget_bytes).c_str(), format_bytes(sw.min_budget).c_str());
      out += line;
      continue;
    }
    std::snprintf(line, sizeof line, "%-13s yes       %-5d %-13s %-10.4f %+7.2f %%  %-13s %-13s ",
                  format_bytes(p.budget_bytes).c_str(), p.sets, format_bytes(p.peak_bytes).c_str(),
                  p.step, 100 * p.slowdown, format_bytes(p.host_bytes).c_str(),
                  format_bytes(p.kept_bytes).c_str());
    out += line;
    if (again)
      std::snprintf(line, sizeof line, "%-16s%-12d%-16s", format_bytes(p.offloaded_bytes).c_str(),
                    p.recomputed, format_bytes(p.recomputed_bytes).c_str());
    else
      std::snprintf(line, sizeof line, "%-16s", format_bytes(p.offloaded_bytes).c_str());
    out += line;
    if (partial) out += std::to_string(p.partial);
    while (!out.empty() && out.back() == ' ') out.pop_back();
    out += "\n";
  }
  return out;
}

std::string to_svg(const Sweep& sw, const std::string& title) {
  constexpr double kGiB = 1024.0 * 1024 * 1024;
  ChartSeries planned{"planned step time", {}, {}, "#1b9e9e", false, true};
  for (auto it = sw.points.rbegin(); it != sw.points.rend(); ++it)  // budgets ascending
    if (it->feasible) {
      planned.x.push_back(it->budget_bytes / kGiB);
      planned.y.push_back(it->step);
    }
  double y_hi = sw.step;
  for (double v : planned.y) y_hi = std::max(y_hi, v);
  const double x_lo = sw.points.empty() ? 0 : sw.points.back().budget_bytes / kGiB;
  ChartSeries off{
      "without offload", {x_lo, sw.peak_bytes / kGiB}, {sw.step, sw.step}, "#888888", true, false};
  ChartSeries floor{"smallest feasible budget (left of it: infeasible)",
                    {sw.min_budget / kGiB, sw.min_budget / kGiB},
                    {sw.step, y_hi},
                    "#d95f02",
                    true,
                    false};
  LineChart chart;
  chart.title = title;
  chart.x_label = "device activation budget per rank (GiB)";
  chart.panels.push_back({"predicted step time (s)", {planned, off, floor}, false});
  ChartSeries kept{"kept on the device", {}, {}, "#1b9e9e", false, true};
  ChartSeries moved{"offloaded to host", {}, {}, "#7570b3", false, true};
  ChartSeries again{"recomputed (not held)", {}, {}, "#d95f02", false, true};
  for (auto it = sw.points.rbegin(); it != sw.points.rend(); ++it)
    if (it->feasible) {
      kept.x.push_back(it->budget_bytes / kGiB);
      kept.y.push_back(it->kept_bytes / kGiB);
      moved.x.push_back(it->budget_bytes / kGiB);
      moved.y.push_back(it->offloaded_bytes / kGiB);
      again.x.push_back(it->budget_bytes / kGiB);
      again.y.push_back(it->recomputed_bytes / kGiB);
    }
  chart.panels.push_back(
      {"activation bytes per step, all ranks (GiB)", {kept, moved, again}, true});
  return to_svg(chart);
}

}  // namespace stp::offload
