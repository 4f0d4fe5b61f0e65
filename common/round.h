// round_to(x, decimals): x rounded to `decimals` digits after the point, for figures reported
// at a fixed precision (the bench JSON lines: 27.8 ns, 22.54 GB/s, ratio 0.977) while the
// writer prints the shortest form of the value.
#pragma once

#include <cmath>

namespace stp {

// REQUIRES: 0 <= decimals <= 15.
inline double round_to(double x, int decimals) {
  const double scale = std::pow(10.0, decimals);
  return std::round(x * scale) / scale;
}

}  // namespace stp
