#include "engine/offload_plan.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <utility>

#include "common/bytes.h"
#include "common/check.h"
#include "offload/planner.h"
#include "schedule/simulate.h"

namespace stp::engine {

OffloadBudget parse_offload_budget(const std::string& text) {
  OffloadBudget b;
  if (text == "off" || text == "none" || text.empty()) return b;
  if (text == "auto") return OffloadBudget::automatic();
  const char* kForms = "use off, auto, a size such as 512MiB or 2GiB, or a percentage such as 60%";
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
  try {
    b.bytes = parse_bytes(text, "offload budget");
  } catch (const std::invalid_argument&) {
    b.bytes = -1;
  }
  STP_CHECK(b.bytes > 0, "offload budget '", text, "' is not a positive size; ", kForms);
  b.kind = OffloadBudget::Kind::kBytes;
  return b;
}

void OffloadBudget::validate() const {
  switch (kind) {
    case Kind::kOff: return;
    case Kind::kBytes:
      STP_CHECK(bytes > 0, "offload budget of ", bytes, " bytes must be > 0");
      return;
    case Kind::kPercent:
      STP_CHECK(std::isfinite(percent) && percent > 0 && percent <= 100, "offload budget of ",
                percent, "% must be in (0%, 100%]");
      return;
  }
}

std::string to_string(const OffloadBudget& budget) {
  switch (budget.kind) {
    case OffloadBudget::Kind::kOff: return "off";
    case OffloadBudget::Kind::kBytes: return std::to_string(budget.bytes);
    case OffloadBudget::Kind::kPercent:
      return budget.floor_if_below ? "auto" : str_cat(budget.percent, "%");
  }
  return "off";
}

namespace {

constexpr std::pair<Recompute, const char*> kRecomputeNames[] = {
    {Recompute::kAuto, "auto"}, {Recompute::kOff, "off"}, {Recompute::kAll, "all"}};

offload::PlanOptions plan_options(Recompute recompute) {
  offload::PlanOptions o;
  switch (recompute) {
    case Recompute::kOff: o.recompute = offload::PlanOptions::Recompute::kOff; break;
    case Recompute::kAuto: o.recompute = offload::PlanOptions::Recompute::kAuto; break;
    case Recompute::kAll: o.recompute = offload::PlanOptions::Recompute::kAll; break;
  }
  return o;
}

}  // namespace

Recompute parse_recompute(const std::string& text) {
  for (const auto& [r, name] : kRecomputeNames)
    if (text == name) return r;
  STP_CHECK(false, "recompute '", text, "' is not one of auto, off, all");
  return Recompute::kAuto;
}

std::string to_string(Recompute recompute) {
  for (const auto& [r, name] : kRecomputeNames)
    if (r == recompute) return name;
  return "auto";
}

OffloadPlan plan_activation_offload(const schedule::Program& program,
                                    const std::vector<std::int64_t>& stage_bytes,
                                    const std::vector<double>& stage_forward_seconds,
                                    double w_held_fraction, const OffloadBudget& b,
                                    double host_gbps, const RecomputeCosts& recompute) {
  OffloadPlan out;
  out.program = program;
  b.validate();
  if (b.kind == OffloadBudget::Kind::kOff) return out;
  const int S = program.stages();
  STP_ASSERT(static_cast<int>(stage_bytes.size()) == S &&
                 static_cast<int>(stage_forward_seconds.size()) == S,
             "per-stage inputs for ", S, " stages");
  schedule::CostModel costs;
  double mean_t = 0;
  for (double t : stage_forward_seconds) mean_t += t / S;
  mean_t = std::max(mean_t, 1e-9);
  costs.t_f = costs.t_b = costs.t_w = mean_t;
  for (int s = 0; s < S; ++s) {
    costs.stage_scale.push_back(std::max(stage_forward_seconds[s], 1e-12) / mean_t);
    costs.stage_act_bytes.push_back(static_cast<double>(stage_bytes[s]));
  }
  costs.host_bandwidth = host_gbps * 1e9;
  costs.w_held_fraction = w_held_fraction;
  costs.recompute_keep = recompute.keep;
  costs.recompute_time = recompute.time;
  const offload::PlanOptions options = plan_options(recompute.mode);
  const double peak = schedule::simulate(program, costs).max_peak_bytes();
  double budget_bytes = b.kind == OffloadBudget::Kind::kBytes ? static_cast<double>(b.bytes)
                                                              : peak * b.percent / 100.0;
  out.budget_bytes = out.asked_bytes = static_cast<std::int64_t>(budget_bytes);
  out.peak_bytes_before = out.peak_bytes_after = static_cast<std::int64_t>(peak);
  if (budget_bytes >= peak) return out;
  offload::Plan plan;
  try {
    plan = offload::plan_offload(program, costs, budget_bytes, options);
  } catch (const std::invalid_argument& e) {
    const double minimum = std::ceil(offload::minimum_budget(program, costs, options));
    if (budget_bytes >= minimum) throw;
    if (!b.floor_if_below)
      throw OffloadBudgetTooSmall(e.what(), static_cast<std::int64_t>(minimum));
    out.at_floor = true;
    out.budget_bytes = static_cast<std::int64_t>(std::min(minimum, peak));
    if (minimum >= peak) return out;  // nothing offloadable lowers the peak: run without
    plan = offload::plan_offload(program, costs, minimum, options);
  }
  out.program = std::move(plan.program);
  out.offloads = !plan.sets.empty();
  out.peak_bytes_after = static_cast<std::int64_t>(plan.peak_bytes_after);
  // The pool holds the most bytes a rank parks at once, plus the size classes' bounded waste
  // (<= 12.5 %, Note [Pinned pool design]) and a slab's rounding. A partial trip moves whole
  // fields, at least its share and at most its set (Note [Partial sets]): counted whole.
  out.host_bytes_per_rank = static_cast<std::int64_t>(plan.host_bytes_whole * 1.15) + (4 << 20);
  out.slowdown = plan.slowdown();
  return out;
}

namespace {

// "5/8" for a multiple of 1/8 (what the planner emits), else "0.3".
std::string share_text(double share) {
  const double eighths = share * 8;
  if (std::abs(eighths - std::round(eighths)) < 1e-9) {
    int n = static_cast<int>(std::round(eighths)), d = 8;
    while (n % 2 == 0 && d > 1) n /= 2, d /= 2;
    return str_cat(n, '/', d);
  }
  return str_cat(share);
}

// "0-3,5": sorted integers with runs merged.
std::string ranges_text(std::vector<long> v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
  std::string out;
  for (std::size_t i = 0; i < v.size();) {
    std::size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    out += str_cat(out.empty() ? "" : ",", v[i], j > i ? str_cat('-', v[j]) : std::string());
    i = j + 1;
  }
  return out;
}

// "layers.0-2, emb": the units the field names belong to, in the order they first appear.
std::string units_text(const std::vector<std::string>& fields) {
  std::vector<std::string> units;                     // in order of first appearance
  std::map<std::string, std::vector<long>> numbered;  // "layers" -> its numbers
  for (const std::string& f : fields) {
    const std::size_t a = f.find('.');
    const std::string head = f.substr(0, a);
    std::string unit = head;
    if (a != std::string::npos) {
      const std::size_t b = f.find('.', a + 1);
      const std::string n = f.substr(a + 1, b == std::string::npos ? b : b - a - 1);
      if (!n.empty() && n.size() < 10 &&
          std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) {
        numbered[head].push_back(std::stol(n));
        unit = head + ".";
      }
    }
    if (std::find(units.begin(), units.end(), unit) == units.end()) units.push_back(unit);
  }
  std::string out;
  for (const std::string& u : units) {
    const bool is_numbered = u.back() == '.';
    out += str_cat(out.empty() ? "" : ", ", u,
                   is_numbered ? ranges_text(numbered.at(u.substr(0, u.size() - 1))) : "");
  }
  return out;
}

}  // namespace

std::string describe_partial_trips(const std::vector<PartialTrip>& trips, int max_lines,
                                   const std::string& indent) {
  // One line per (chunk, kind, share, fields moved); the microbatches that made it together.
  struct Line {
    std::string what;  // everything after the chunk and microbatches
    int chunk;
    std::vector<long> mbs;
  };
  std::vector<Line> lines;
  for (const PartialTrip& t : trips) {
    const std::string what = str_cat(
        t.after_backward ? " after B " : " ", share_text(t.share), ": ", units_text(t.fields), " (",
        t.fields.size(), t.fields.size() == 1 ? " field, " : " fields, ",
        format_bytes(static_cast<double>(t.moved_bytes)), " of ",
        format_bytes(static_cast<double>(t.set_bytes)),
        t.after_backward ? ", of what its W reads)" : ": what its backward reads last)");
    auto it = std::find_if(lines.begin(), lines.end(),
                           [&](const Line& l) { return l.chunk == t.chunk && l.what == what; });
    if (it == lines.end()) it = lines.insert(lines.end(), Line{what, t.chunk, {}});
    it->mbs.push_back(t.mb);
  }
  std::string out;
  for (std::size_t i = 0; i < lines.size() && static_cast<int>(i) < max_lines; ++i)
    out += str_cat(indent, 'c', lines[i].chunk, '[', ranges_text(lines[i].mbs), ']', lines[i].what,
                   '\n');
  if (static_cast<int>(lines.size()) > max_lines)
    out += str_cat(indent, "... and ", lines.size() - max_lines, " more\n");
  return out;
}

double time_after_warmup(const std::function<void()>& pass, const PassTimer& timer) {
  pass();  // warm-up: first-use costs (handles, allocator growth, caches) stay out of the time
  timer.device_sync();
  const double t0 = timer.now();
  pass();
  timer.device_sync();  // the pass's kernels ran, not just their launches
  return timer.now() - t0;
}

}  // namespace stp::engine
