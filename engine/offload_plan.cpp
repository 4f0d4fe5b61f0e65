#include "engine/offload_plan.h"

#include <cmath>

#include "stp/check.h"

namespace stp::engine {

OffloadBudget parse_offload_budget(const std::string& text) {
  OffloadBudget b;
  if (text == "off" || text == "none" || text.empty()) return b;
  const char* kForms = "use off, a size such as 512MiB or 2GiB, or a percentage such as 60%";
  if (text.back() == '%') {
    std::size_t used = 0;
    double p = 0;
    try {
      p = std::stod(text.substr(0, text.size() - 1), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    STP_CHECK(used == text.size() - 1 && used > 0 && std::isfinite(p) && p > 0 && p <= 100,
              "offload budget '", text, "' is not a percentage in (0%, 100%]; ", kForms);
    b.kind = OffloadBudget::Kind::kPercent;
    b.percent = p;
    return b;
  }
  struct Unit { const char* suffix; double scale; };
  static const Unit kUnits[] = {{"KiB", 1024.0}, {"MiB", 1048576.0}, {"GiB", 1073741824.0},
                                {"TiB", 1099511627776.0}, {"KB", 1e3}, {"MB", 1e6},
                                {"GB", 1e9}, {"TB", 1e12}, {"B", 1.0}};
  std::string number = text;
  double scale = 1;
  for (const Unit& u : kUnits) {
    std::string s = u.suffix;
    if (text.size() > s.size() && text.compare(text.size() - s.size(), s.size(), s) == 0) {
      number = text.substr(0, text.size() - s.size());
      scale = u.scale;
      break;
    }
  }
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(number, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  STP_CHECK(used == number.size() && used > 0 && std::isfinite(v) && v > 0,
            "offload budget '", text, "' is not a positive size; ", kForms);
  b.kind = OffloadBudget::Kind::kBytes;
  b.bytes = static_cast<std::int64_t>(std::llround(v * scale));
  return b;
}

OffloadPlan plan_activation_offload(const schedule::Program& program,
                                    const std::vector<std::int64_t>& stage_bytes,
                                    const std::string& budget, double host_gbps) {
  OffloadPlan plan;
  plan.program = program;
  OffloadBudget b = parse_offload_budget(budget);
  if (b.kind == OffloadBudget::Kind::kOff) return plan;
  STP_CHECK(false, "offload planning is not wired yet");
}

}  // namespace stp::engine
