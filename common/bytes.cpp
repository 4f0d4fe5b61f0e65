#include "common/bytes.h"

#include <cmath>
#include <cstdio>

#include "common/check.h"

namespace stp {

std::int64_t parse_bytes(const std::string& text, const std::string& what) {
  struct Unit {
    const char* suffix;
    double scale;
  };
  static const Unit kUnits[] = {{"KiB", 1024.0},
                                {"MiB", 1024.0 * 1024},
                                {"GiB", 1024.0 * 1024 * 1024},
                                {"TiB", 1024.0 * 1024 * 1024 * 1024},
                                {"KB", 1e3},
                                {"MB", 1e6},
                                {"GB", 1e9},
                                {"TB", 1e12},
                                {"B", 1.0}};
  std::string number = text;
  double scale = 1.0;
  for (const Unit& u : kUnits) {
    std::string s = u.suffix;
    if (text.size() > s.size() && text.compare(text.size() - s.size(), s.size(), s) == 0) {
      number = text.substr(0, text.size() - s.size());
      scale = u.scale;
      break;
    }
  }
  double value = 0;
  std::size_t used = 0;
  try {
    value = std::stod(number, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  STP_CHECK(used == number.size() && !number.empty() && std::isfinite(value) && value >= 0, what,
            "='", text, "' is not a byte size; use e.g. 4096, 512MiB, 20GiB, 1.5GB (>= 0)");
  return static_cast<std::int64_t>(std::llround(value * scale));
}

std::string format_bytes(double bytes, int decimals) {
  static const char* kNames[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (std::fabs(bytes) >= 1024.0 && i < 5) {
    bytes /= 1024.0;
    ++i;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f %s", i == 0 ? 0 : decimals, bytes, kNames[i]);
  return buf;
}

}  // namespace stp
