#include "common/svg_chart.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

namespace stp {
namespace {

const char* kPalette[] = {"#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"};

std::string fmt(const char* f, double v) {
  char buf[256];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// A short tick label: 3 significant digits, SI suffix for large values.
std::string tick_label(double v) {
  double a = std::fabs(v);
  if (a >= 1e9) return fmt("%.3gG", v / 1e9);
  if (a >= 1e6) return fmt("%.3gM", v / 1e6);
  if (a >= 1e4) return fmt("%.3gk", v / 1e3);
  return fmt("%.4g", v);  // 8000, not 8e+03
}

// Ticks at a 1-2-5 step covering [lo, hi].
std::vector<double> ticks(double lo, double hi) {
  double span = hi - lo;
  if (!(span > 0)) return {lo};
  double raw = span / 5, mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag * (raw / mag < 1.5 ? 1 : raw / mag < 3.5 ? 2 : raw / mag < 7.5 ? 5 : 10);
  std::vector<double> out;
  for (double t = std::ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push_back(t);
  return out;
}

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (!std::isfinite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
  void pad() {
    if (empty()) {
      lo = 0;
      hi = 1;
    } else if (hi == lo) {
      lo -= 0.5 * (std::fabs(lo) + 1);
      hi += 0.5 * (std::fabs(hi) + 1);
    }
  }
};

}  // namespace

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string to_svg(const LineChart& chart) {
  const double left = 78, right = 24, top = chart.title.empty() ? 16 : 40, gap = 46;
  const double W = std::max(chart.width_px, 200.0), H = std::max(chart.panel_height_px, 80.0);
  const double plot_w = W - left - right;
  const double total_h = top + chart.panels.size() * (H + gap) + 24;
  Range xr;
  for (const auto& p : chart.panels)
    for (const auto& s : p.series)
      for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
        if (std::isfinite(s.y[i])) xr.add(s.x[i]);
  xr.pad();
  auto X = [&](double x) { return left + (x - xr.lo) / (xr.hi - xr.lo) * plot_w; };

  std::string out = fmt("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" ", W) +
                    fmt("height=\"%.0f\" font-family=\"sans-serif\" font-size=\"12\">\n", total_h);
  out += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (!chart.title.empty())
    out += fmt("<text x=\"%.1f\" y=\"24\" font-size=\"15\" font-weight=\"bold\">", left) +
           xml_escape(chart.title) + "</text>\n";
  int color_index = 0;
  for (std::size_t pi = 0; pi < chart.panels.size(); ++pi) {
    const ChartPanel& panel = chart.panels[pi];
    const double y0 = top + pi * (H + gap);
    Range yr;
    if (panel.y_from_zero) yr.add(0);
    for (const auto& s : panel.series)
      for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i)
        if (std::isfinite(s.x[i])) yr.add(s.y[i]);
    yr.pad();
    auto Y = [&](double y) { return y0 + H - (y - yr.lo) / (yr.hi - yr.lo) * H; };
    out += fmt("<rect x=\"%.1f\" ", left) + fmt("y=\"%.1f\" ", y0) +
           fmt("width=\"%.1f\" ", plot_w) +
           fmt("height=\"%.1f\" fill=\"none\" stroke=\"#999\"/>\n", H);
    for (double t : ticks(yr.lo, yr.hi)) {
      out += fmt("<line x1=\"%.1f\" ", left) + fmt("x2=\"%.1f\" ", left + plot_w) +
             fmt("y1=\"%.1f\" ", Y(t)) + fmt("y2=\"%.1f\" stroke=\"#eee\"/>\n", Y(t));
      out += fmt("<text x=\"%.1f\" ", left - 6) + fmt("y=\"%.1f\" text-anchor=\"end\">", Y(t) + 4) +
             tick_label(t) + "</text>\n";
    }
    for (double t : ticks(xr.lo, xr.hi))
      out += fmt("<text x=\"%.1f\" ", X(t)) +
             fmt("y=\"%.1f\" text-anchor=\"middle\">", y0 + H + 16) + tick_label(t) + "</text>\n";
    out += fmt("<text transform=\"translate(16,%.1f) rotate(-90)\" text-anchor=\"middle\">",
               y0 + H / 2) +
           xml_escape(panel.y_label) + "</text>\n";
    double legend_x = left + 8;
    for (const auto& s : panel.series) {
      std::string color = s.color.empty() ? kPalette[color_index++ % 6] : s.color;
      std::string pts, dots;
      for (std::size_t i = 0; i < s.x.size() && i < s.y.size(); ++i) {
        if (!std::isfinite(s.x[i]) || !std::isfinite(s.y[i])) continue;
        pts += fmt("%.1f,", X(s.x[i])) + fmt("%.1f ", Y(s.y[i]));
        if (s.points)
          dots += fmt("<circle cx=\"%.1f\" ", X(s.x[i])) +
                  fmt("cy=\"%.1f\" r=\"2.5\" ", Y(s.y[i])) + "fill=\"" + color + "\"/>\n";
      }
      out += "<polyline fill=\"none\" stroke=\"" + color + "\" stroke-width=\"1.8\"" +
             (s.dashed ? " stroke-dasharray=\"6,4\"" : "") + " points=\"" + pts + "\"/>\n" + dots;
      out += fmt("<line x1=\"%.1f\" ", legend_x) + fmt("x2=\"%.1f\" ", legend_x + 18) +
             fmt("y1=\"%.1f\" ", y0 + 14) + fmt("y2=\"%.1f\" stroke=\"", y0 + 14) + color +
             "\" stroke-width=\"2\"" + (s.dashed ? " stroke-dasharray=\"4,3\"" : "") + "/>\n";
      out += fmt("<text x=\"%.1f\" ", legend_x + 22) + fmt("y=\"%.1f\">", y0 + 18) +
             xml_escape(s.name) + "</text>\n";
      legend_x += 34 + 7.0 * s.name.size();
    }
  }
  if (!chart.x_label.empty())
    out += fmt("<text x=\"%.1f\" ", left + plot_w / 2) +
           fmt("y=\"%.1f\" text-anchor=\"middle\">", total_h - 6) + xml_escape(chart.x_label) +
           "</text>\n";
  out += "</svg>\n";
  return out;
}

}  // namespace stp
