#include "offload/plan_sweep.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "common/bytes.h"
#include "schedule/simulate.h"
#include "stp/check.h"

namespace stp::offload {

Sweep sweep_budgets(const schedule::Program& program, const schedule::CostModel& costs, int points,
                    const PlanOptions& options) {
  STP_CHECK(points >= 2, "sweep: points=", points, " must be >= 2");
  Sweep sw;
  schedule::SimResult base = schedule::simulate(program, costs);
  sw.peak_bytes = base.max_peak_bytes();
  sw.step = base.makespan;
  sw.min_budget = minimum_budget(program, costs);
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
    } catch (const std::invalid_argument&) {
      pt.feasible = false;  // below the smallest feasible budget
    }
    sw.points.push_back(pt);
  }
  return sw;
}

std::string to_table(const Sweep& sw) {
  std::string out = "budget        feasible  sets  peak          step (s)   slowdown  host pool\n";
  char line[256];
  for (const SweepPoint& p : sw.points) {
    if (p.feasible)
      std::snprintf(line, sizeof line, "%-13s yes       %-5d %-13s %-10.4f %+7.2f %%  %s\n",
                    format_bytes(p.budget_bytes).c_str(), p.sets,
                    format_bytes(p.peak_bytes).c_str(), p.step, 100 * p.slowdown,
                    format_bytes(p.host_bytes).c_str());
    else
      std::snprintf(line, sizeof line, "%-13s no        (below the minimum %s)\n",
                    format_bytes(p.budget_bytes).c_str(),
                    format_bytes(sw.min_budget).c_str());
    out += line;
  }
  return out;
}

namespace {

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else out += c;
  }
  return out;
}

}  // namespace

std::string to_svg(const Sweep& sw, const std::string& title) {
  constexpr double kW = 720, kH = 420, kLeft = 80, kRight = 30, kTop = 50, kBottom = 60;
  constexpr double kGiB = 1024.0 * 1024 * 1024;
  std::vector<const SweepPoint*> ok;
  for (const SweepPoint& p : sw.points)
    if (p.feasible) ok.push_back(&p);
  double x_lo = sw.points.empty() ? 0 : sw.points.back().budget_bytes;
  double x_hi = sw.peak_bytes;
  double y_lo = sw.step, y_hi = sw.step;
  for (const SweepPoint* p : ok) y_hi = std::max(y_hi, p->step);
  if (x_hi <= x_lo) x_hi = x_lo + 1;
  y_lo *= 0.98;
  y_hi = y_hi * 1.02 + 1e-12;
  auto x = [&](double b) { return kLeft + (b - x_lo) / (x_hi - x_lo) * (kW - kLeft - kRight); };
  auto y = [&](double s) { return kH - kBottom - (s - y_lo) / (y_hi - y_lo) * (kH - kTop - kBottom); };
  char buf[512];
  std::string out;
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
                kW, kH);
  out += buf;
  std::snprintf(buf, sizeof buf, "<text x=\"%.0f\" y=\"25\" font-size=\"15\">%s</text>\n", kLeft,
                escape(title).c_str());
  out += buf;
  // Infeasible region: budgets below the minimum.
  std::snprintf(buf, sizeof buf,
                "<rect x=\"%.1f\" y=\"%.0f\" width=\"%.1f\" height=\"%.0f\" fill=\"#eeeeee\"/>"
                "<text x=\"%.1f\" y=\"%.0f\" fill=\"#888\">infeasible</text>\n",
                x(x_lo), kTop, std::max(0.0, x(sw.min_budget) - x(x_lo)), kH - kTop - kBottom,
                x(x_lo) + 4, kTop + 16);
  out += buf;
  // Axes and ticks.
  std::snprintf(buf, sizeof buf,
                "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>"
                "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>\n",
                kLeft, kH - kBottom, kW - kRight, kH - kBottom, kLeft, kTop, kLeft, kH - kBottom);
  out += buf;
  for (int i = 0; i <= 4; ++i) {
    double b = x_lo + (x_hi - x_lo) * i / 4, s = y_lo + (y_hi - y_lo) * i / 4;
    std::snprintf(buf, sizeof buf,
                  "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.2f</text>"
                  "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.3f</text>\n",
                  x(b), kH - kBottom + 18, b / kGiB, kLeft - 6, y(s) + 4, s);
    out += buf;
  }
  std::snprintf(buf, sizeof buf,
                "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">device activation budget per rank (GiB)</text>"
                "<text x=\"18\" y=\"%.0f\" transform=\"rotate(-90 18 %.0f)\" text-anchor=\"middle\">predicted step time (s)</text>\n",
                (kLeft + kW - kRight) / 2, kH - 18, (kTop + kH - kBottom) / 2, (kTop + kH - kBottom) / 2);
  out += buf;
  // The curve, budgets ascending.
  std::string path;
  for (auto it = ok.rbegin(); it != ok.rend(); ++it) {
    std::snprintf(buf, sizeof buf, "%s%.1f,%.1f", path.empty() ? "" : " ", x((*it)->budget_bytes),
                  y((*it)->step));
    path += buf;
  }
  out += "<polyline fill=\"none\" stroke=\"#1b9e9e\" stroke-width=\"2\" points=\"" + path + "\"/>\n";
  for (const SweepPoint* p : ok) {
    std::snprintf(buf, sizeof buf,
                  "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"#1b9e9e\"><title>%s: %d sets, "
                  "step %.4f s (%+.2f %%)</title></circle>\n",
                  x(p->budget_bytes), y(p->step), format_bytes(p->budget_bytes).c_str(),
                  p->sets, p->step, 100 * p->slowdown);
    out += buf;
  }
  return out + "</svg>\n";
}

}  // namespace stp::offload
