// LineChart: a small SVG line chart — one or more panels stacked vertically, each with its own
// y axis and one or more named series over a shared x axis. Used for the training curves
// (loss and throughput over steps), the offload budget sweeps and benchmark plots, so every
// plot stp writes looks the same and opens in any browser.
//
// Thread-safety: values and a pure function.
#pragma once

#include <string>
#include <vector>

namespace stp {

struct ChartSeries {
  std::string name;       // legend text
  std::vector<double> x;  // same length as y; non-finite points are skipped
  std::vector<double> y;
  std::string color;    // CSS colour; empty: from the palette
  bool dashed = false;  // e.g. a prediction next to a measurement
  bool points = false;  // draw a dot at every point
};

struct ChartPanel {
  std::string y_label;
  std::vector<ChartSeries> series;
  bool y_from_zero = false;  // y axis starts at 0 instead of the data minimum
};

struct LineChart {
  std::string title;
  std::string x_label;
  std::vector<ChartPanel> panels;
  double width_px = 900;         // > 0
  double panel_height_px = 260;  // > 0
};

// Text for SVG/XML content and attribute values: & < > " escaped.
std::string xml_escape(const std::string& text);

// The chart as a standalone SVG document. Panels without finite points are drawn empty.
std::string to_svg(const LineChart& chart);

}  // namespace stp
