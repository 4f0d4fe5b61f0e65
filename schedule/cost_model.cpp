#include "schedule/cost_model.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace stp::schedule {

namespace {

void check_nonnegative(double value, const char* name) {
  STP_CHECK(std::isfinite(value) && value >= 0, name, "=", value, " must be a finite number >= 0");
}

double scale(const CostModel& c, int stage) {
  return c.stage_scale.empty() ? 1.0 : c.stage_scale[stage];
}

// Compute of a part; the backward of a recomputed set re-runs (the leading `share` of) its
// forward units as well.
double compute(const CostModel& c, const Part& part, double share) {
  const double s = scale(c, part.stage);
  const double again = share > 0 ? share * c.recompute_time * c.t_f * s : 0.0;
  switch (part.pass) {
    case Pass::kF: return c.t_f * s;
    case Pass::kB: return c.t_b * s + again;
    case Pass::kW: return c.t_w * s;
    case Pass::kBW: return (c.t_b + c.t_w) * s + again;
  }
  return 0;
}

// The all-reduce a part issues (W issues none).
double all_reduce(const CostModel& c, const Part& part) {
  return part.pass == Pass::kW ? 0.0 : c.t_ar * scale(c, part.stage);
}

// Compute of the W inside a fused backward, which covers that backward's own all-reduce.
double own_w(const CostModel& c, const Part& part) {
  return part.pass == Pass::kBW ? c.t_w * scale(c, part.stage) : 0.0;
}

}  // namespace

void validate(const CostModel& c, int stages) {
  check_nonnegative(c.t_f, "tf");
  check_nonnegative(c.t_b, "tb");
  check_nonnegative(c.t_w, "tw");
  check_nonnegative(c.t_ar, "tar");
  STP_CHECK(c.stage_scale.empty() || static_cast<int>(c.stage_scale.size()) == stages,
            "stage_scale has ", c.stage_scale.size(), " entries; need 0 or stages=", stages);
  for (double s : c.stage_scale)
    STP_CHECK(std::isfinite(s) && s > 0, "stage_scale entry ", s, " must be > 0");
  STP_CHECK(c.braid_units >= 0, "braid_units=", c.braid_units, " must be >= 0");
  STP_CHECK(std::isfinite(c.braid_slowdown) && c.braid_slowdown > 0,
            "braid_slowdown=", c.braid_slowdown, " must be > 0");
  check_nonnegative(c.p2p_latency, "p2p_latency");
  check_nonnegative(c.p2p_bandwidth, "p2p_bandwidth");
  check_nonnegative(c.p2p_bytes, "p2p_bytes");
  check_nonnegative(c.act_bytes, "act_bytes");
  STP_CHECK(c.stage_act_bytes.empty() || static_cast<int>(c.stage_act_bytes.size()) == stages,
            "stage_act_bytes has ", c.stage_act_bytes.size(),
            " entries; need 0 or stages=", stages);
  for (double b : c.stage_act_bytes) check_nonnegative(b, "stage_act_bytes entry");
  STP_CHECK(std::isfinite(c.offload_fraction) && c.offload_fraction >= 0 && c.offload_fraction <= 1,
            "offload_fraction=", c.offload_fraction, " must be in [0, 1]");
  STP_CHECK(std::isfinite(c.recompute_keep) && c.recompute_keep >= 0 && c.recompute_keep <= 1,
            "recompute_keep=", c.recompute_keep, " must be in [0, 1]");
  STP_CHECK(std::isfinite(c.recompute_time) && c.recompute_time >= 0,
            "recompute_time=", c.recompute_time, " must be finite and >= 0");
  STP_CHECK(std::isfinite(c.w_held_fraction) && c.w_held_fraction >= 0 && c.w_held_fraction <= 64,
            "w_held_fraction=", c.w_held_fraction, " must be in [0, 64]");
  check_nonnegative(c.host_bandwidth, "host_bandwidth");
  check_nonnegative(c.host_latency, "host_latency");
}

double set_bytes(const CostModel& c, int stage) {
  return c.stage_act_bytes.empty() ? c.act_bytes : c.stage_act_bytes[stage];
}

double kept_share(const CostModel& c, double share) {
  return share >= 1 ? c.recompute_keep : 1 - share * (1 - c.recompute_keep);
}

InstrCost instr_cost(const Instr& in, const CostModel& c, std::array<bool, 2> recomputed) {
  return instr_cost(in, c,
                    std::array<double, 2>{recomputed[0] ? 1.0 : 0.0, recomputed[1] ? 1.0 : 0.0});
}

InstrCost instr_cost(const Instr& in, const CostModel& c, std::array<double, 2> recomputed) {
  InstrCost cost;
  if (in.parts.size() == 1) {
    const Part& part = in.parts[0];
    cost.busy = compute(c, part, recomputed[0]);
    cost.exposed_tp = std::max(0.0, all_reduce(c, part) - own_w(c, part));
  } else {
    STP_ASSERT(in.parts.size() == 2, to_string(in), " has ", in.parts.size(), " parts");
    const Part& a = in.parts[0];
    const Part& b = in.parts[1];
    const double ca = compute(c, a, recomputed[0]), cb = compute(c, b, recomputed[1]);
    cost.busy = (ca + cb) * c.braid_slowdown;
    // Each pass's collectives are in flight while the other pass computes (and, for a fused
    // backward, while its own W runs).
    double exposed_a = std::max(0.0, all_reduce(c, a) - (cb - own_w(c, b)) - own_w(c, a));
    double exposed_b = std::max(0.0, all_reduce(c, b) - ca - own_w(c, b));
    // The block's last collective is b's last unit's unless b is W or runs a fused W after it.
    if (c.braid_units > 0 && b.pass != Pass::kW && b.pass != Pass::kBW)
      exposed_b = std::max(exposed_b, all_reduce(c, b) / c.braid_units);
    cost.exposed_tp = exposed_a + exposed_b;
  }
  cost.duration = cost.busy + cost.exposed_tp;
  return cost;
}

}  // namespace stp::schedule
