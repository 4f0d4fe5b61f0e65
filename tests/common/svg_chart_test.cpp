#include "common/svg_chart.h"

#include <gtest/gtest.h>

#include <cmath>

namespace stp {
namespace {

int count(const std::string& s, const std::string& what) {
  int n = 0;
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(SvgChart, DrawsEveryPanelSeriesAndEscapesText) {
  LineChart c;
  c.title = "loss <train>";
  c.x_label = "step";
  c.panels.push_back({"loss", {{"train", {1, 2, 3}, {3.0, 2.0, 1.5}}}});
  c.panels.push_back(
      {"tokens/s",
       {{"measured", {1, 2, 3}, {10, 12, NAN}}, {"predicted", {1, 2, 3}, {11, 11, 11}, "", true}}});
  std::string svg = to_svg(c);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(count(svg, "<polyline"), 3);
  EXPECT_NE(svg.find("loss &lt;train&gt;"), std::string::npos);
  EXPECT_EQ(svg.find("loss <train>"), std::string::npos);
  EXPECT_NE(svg.find("stroke-dasharray"), std::string::npos);  // the predicted series
  EXPECT_NE(svg.find("rotate(-90)\" text-anchor=\"middle\">tokens/s</text>"), std::string::npos)
      << svg;
  EXPECT_EQ(svg.find("nan"), std::string::npos);  // non-finite points skipped
}

TEST(SvgChart, HigherValuesAreDrawnHigher) {
  LineChart c;
  c.panels.push_back({"y", {{"s", {0, 1}, {0, 10}}}});
  std::string svg = to_svg(c);
  auto pts = svg.substr(svg.find("points=\"") + 8);
  double x0, y0, x1, y1;
  ASSERT_EQ(std::sscanf(pts.c_str(), "%lf,%lf %lf,%lf", &x0, &y0, &x1, &y1), 4);
  EXPECT_LT(x0, x1);
  EXPECT_GT(y0, y1);  // SVG y grows downwards
}

TEST(SvgChart, EmptyAndConstantSeriesDoNotDivideByZero) {
  LineChart c;
  c.panels.push_back({"flat", {{"s", {5, 5}, {2, 2}}}});
  c.panels.push_back({"none", {}});
  std::string svg = to_svg(c);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
}

}  // namespace
}  // namespace stp
