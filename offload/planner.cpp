#include "offload/planner.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <tuple>

#include "common/bytes.h"
#include "common/check.h"
#include "offload/planner_search.h"
#include "schedule/simulate.h"
#include "schedule/verify.h"

namespace stp::offload {

using schedule::CostModel;
using schedule::Instr;
using schedule::Op;
using schedule::Pass;
using schedule::Program;
using schedule::SimResult;

namespace {

using detail::Choice;
using detail::fits;
using detail::fits_all;
using detail::kNotOffloaded;
using detail::Search;
using Recompute = PlanOptions::Recompute;

std::string bytes_text(double b) { return format_bytes(b); }

// What a partial trip or recompute leaves where (Note [Partial sets] in schedule/program.h), in
// words a user can act on.
constexpr const char* kShareMark = "\u00b7";  // "c0[6]·5/8": the set, then its share
constexpr const char* kPartialTripText =
    "a trip of share k/8 moves the fields its backward reads last (the first layers' fields) "
    "until k/8 of the set is on host; the rest stays on the device";
constexpr const char* kPartialRecomputeText =
    "a recompute of share k/8 re-runs the first k/8 of the chunk's layers; the others keep "
    "their fields";

void check_inputs(const Program& program, const CostModel& costs) {
  schedule::verify(program);
  schedule::validate(costs, program.stages());
}

// Whether recompute can be chosen at all: kOff never; a set that keeps all its bytes gains
// nothing.
bool recompute_helps(const CostModel& costs, const PlanOptions& options) {
  return options.recompute != Recompute::kOff && costs.recompute_keep < 1;
}

// The descents minimum_budget() runs (Note [Offload planning]), from nothing offloaded and from
// everything offloaded with hidden copies, in a Search of their own so that plan_offload's
// fallback reaches exactly the floor minimum_budget() reports.
// With partial sets the whole-set descents run too: neither reaches lower everywhere (the
// embedded default's stp p=2 m=8: whole sets 77.99 KiB where partial moves stop at 79.74 KiB;
// stp p=4 m=16 at 5 GB/s: partial 10.5 GiB where whole sets stop at 11).
std::vector<detail::Trial> descents(const Program& program, const CostModel& costs,
                                    const PlanOptions& options, bool all_recomputed,
                                    bool allow_recompute) {
  std::vector<bool> modes = {options.partial_sets};
  if (options.partial_sets) modes.push_back(false);
  std::vector<detail::Trial> trials;
  for (bool partial : modes) {
    PlanOptions o = options;
    o.partial_sets = partial;
    Search search(program, costs, o);
    const std::vector<double> idle = search.idle_without_offload();
    const Choice none = search.initial(all_recomputed);
    for (detail::Trial& t : detail::descend(search, none, idle, allow_recompute))
      trials.push_back(std::move(t));
    for (detail::Trial& t :
         detail::descend(search, search.all_offloaded(none), idle, allow_recompute))
      trials.push_back(std::move(t));
  }
  return trials;
}

// Prune, reloads earlier, local search: the finish of a plan that fits.
void polish(Search& search, Choice& choice, double budget, const std::vector<double>& idle,
            bool allow_recompute) {
  detail::prune(search, choice, budget, idle);
  detail::reload_earlier(search, choice, budget);
  detail::improve(search, choice, budget, allow_recompute);
  detail::lower_shares(search, choice, budget, allow_recompute);
}

// The plans that fit `budget` from `none` (nothing offloaded; some sets recomputed or none):
// the greedy from it, and everything offloaded with its copies hidden; each repaired by local
// search where it does not fit.
void attempt(Search& search, const Choice& none, bool allow_recompute, double budget,
             const std::vector<double>& idle, std::vector<Choice>& fitting) {
  if (fits_all(search.simulate(none), budget)) {
    fitting.push_back(none);
    return;
  }
  Choice greedy = none;
  if (!detail::greedy(search, greedy, budget, idle))
    detail::improve(search, greedy, budget, allow_recompute);
  Choice hidden = search.all_offloaded(none);
  detail::improve(search, hidden, budget, allow_recompute);
  for (Choice* c : {&greedy, &hidden})
    if (fits_all(search.simulate(*c), budget)) fitting.push_back(*c);
}

// When no attempt fits: the descents minimum_budget() runs; the first plan of each that fits,
// and the lowest peak reached.
void fall_back(const Program& program, const CostModel& costs, const PlanOptions& options,
               bool all_recomputed, bool allow_recompute, double budget,
               std::vector<Choice>& fitting, double& floor) {
  const std::vector<detail::Trial> trials =
      descents(program, costs, options, all_recomputed, allow_recompute);
  floor = std::min(floor, detail::lowest_peak(trials));
  for (const detail::Trial& t : trials)
    if (fits(t.peak, budget)) {
      fitting.push_back(t.choice);
      return;
    }
}

// The figures of `plan` for `choice` (the inputs were checked and the choice fits `budget`).
void fill(Plan& plan, Search& search, const Choice& choice, double budget) {
  const Program& program = search.program();
  const CostModel& costs = search.costs();
  const auto& cands = search.candidates();
  std::vector<std::vector<int>> copy_of;
  plan.program = search.build(choice, nullptr, &copy_of);
  schedule::SimOptions so;
  so.record_timeline = true;
  so.record_memory = true;
  SimResult sim = schedule::simulate(plan.program, costs, so);
  plan.step_after = sim.makespan;
  plan.peak_bytes_after = sim.max_peak_bytes();
  for (const auto& r : sim.ranks) plan.rank_peak_after.push_back(r.peak_bytes);
  plan.host_bytes = detail::host_footprint(search, choice, sim, copy_of);
  plan.host_bytes_whole = detail::host_footprint(search, choice, sim, copy_of, true);
  for (int st = 0; st < program.stages(); ++st)
    plan.kept_bytes += program.m * schedule::set_bytes(costs, st);
  for (const auto& rank : program.ranks)
    for (const Instr& in : rank)
      for (const schedule::Part& part : in.parts)
        if (part.pass == Pass::kB)
          plan.kept_bytes += schedule::set_bytes(costs, part.stage) * costs.w_held_fraction;
  const std::vector<double> idle = search.idle_without_offload();
  for (std::size_t c = 0; c < cands.size(); ++c) {
    if (choice.lead[c] == kNotOffloaded) continue;
    const detail::Candidate& k = cands[c];
    const double bytes = search.bytes(k, choice);
    plan.offloaded_bytes += bytes;
    plan.sets.push_back({k.rank, k.chunk, k.stage, k.mb, k.w_held, choice.lead[c], idle[c], bytes,
                         !k.w_held && search.recompute_share(choice, k.set) > 0,
                         choice.share[c] >= kShareSteps
                             ? 1.0
                             : static_cast<double>(choice.share[c]) / kShareSteps});
  }
  std::sort(plan.sets.begin(), plan.sets.end(), [](const PlannedSet& a, const PlannedSet& b) {
    return std::tie(a.rank, a.stage, a.mb, a.w_held) < std::tie(b.rank, b.stage, b.mb, b.w_held);
  });
  for (int st = 0; st < program.stages(); ++st)
    for (int mb = 0; mb < program.m; ++mb) {
      const double g = search.recompute_share(choice, st * program.m + mb);
      if (g <= 0) continue;
      const double whole = schedule::set_bytes(costs, st) * (1 - costs.recompute_keep);
      const double bytes = g >= 1 ? whole : whole * g;
      plan.recomputed.push_back(
          {program.stage_rank[st], program.stage_chunk[st], st, mb, bytes, g});
      plan.recomputed_bytes += bytes;
    }
  std::sort(plan.recomputed.begin(), plan.recomputed.end(),
            [](const RecomputedSet& a, const RecomputedSet& b) {
              return std::tie(a.rank, a.stage, a.mb) < std::tie(b.rank, b.stage, b.mb);
            });
  plan.kept_bytes -= plan.offloaded_bytes + plan.recomputed_bytes;
  STP_ASSERT(schedule::find_error(plan.program).empty(), schedule::find_error(plan.program));
  STP_ASSERT(fits_all(sim, budget), "planned peak ", sim.max_peak_bytes(), " over budget ", budget);
}

}  // namespace

double minimum_budget(const Program& program, const CostModel& costs, const PlanOptions& options) {
  check_inputs(program, costs);
  const bool helps = recompute_helps(costs, options);
  const bool all = helps && options.recompute == Recompute::kAll;
  double floor = detail::lowest_peak(descents(program, costs, options, all, false));
  if (helps && !all)
    floor = std::min(floor, detail::lowest_peak(descents(program, costs, options, true, true)));
  return floor;
}

Plan plan_offload(const Program& program, const CostModel& costs, double budget,
                  const PlanOptions& options) {
  STP_CHECK(budget > 0, "plan: budget=", budget, " bytes must be > 0 (use +inf for unlimited)");
  STP_CHECK(options.max_simulations >= 1, "plan: max_simulations=", options.max_simulations,
            " must be >= 1");
  check_inputs(program, costs);
  const bool helps = recompute_helps(costs, options);
  const bool auto_choice = helps && options.recompute == Recompute::kAuto;
  // kAll marks every set; kAuto starts from no recompute and from all of it, free to change
  // either, and keeps the faster plan.
  Search search(program, costs, options);
  const std::vector<double> idle = search.idle_without_offload();
  std::vector<bool> starts;  // all_recomputed of each start
  if (auto_choice)
    starts = {false, true};
  else
    starts = {helps};
  std::vector<Choice> from;
  for (bool all : starts) from.push_back(search.initial(all));
  // With partial sets kAuto also starts, where offload alone does not fit, from every set
  // re-running half its layers: between offload alone and everything recomputed, many sets
  // recomputed in part is a plan no single move reaches (stp p=4 m=16 at 2.5 GiB: +27.84 %
  // without this start, +17.52 % with it).
  if (auto_choice && options.partial_sets) {
    Choice half = search.initial(true);
    for (std::size_t s = 0; s < half.recompute.size(); ++s)
      if (!search.fixed_recompute(static_cast<int>(s))) half.recompute[s] = kShareSteps / 2;
    from.push_back(half);
  }
  std::vector<Choice> fitting;
  std::size_t without_recompute = 0;  // plans found from the first start
  for (std::size_t i = 0; i < from.size(); ++i) {
    if (i == 2 && without_recompute > 0) break;  // the half start only where offload alone fails
    attempt(search, from[i], auto_choice, budget, idle, fitting);
    if (i == 0) without_recompute = fitting.size();
    if (!fitting.empty() && fitting.front() == from.front()) break;  // ample
  }
  double floor = std::numeric_limits<double>::infinity();
  if (fitting.empty())
    for (bool all : starts)  // as minimum_budget(): only the all-recomputed start may unmark
      fall_back(program, costs, options, all, auto_choice && all, budget, fitting, floor);
  const bool found = !fitting.empty();
  // Where partial moves find nothing, whole sets may: their greedy and hidden-copy starts
  // take other paths (the embedded default's stp p=2 m=8 at 77.99 KiB).
  if (!found && options.partial_sets) {
    PlanOptions whole = options;
    whole.partial_sets = false;
    try {
      return plan_offload(program, costs, budget, whole);
    } catch (const std::invalid_argument&) {
      // fall through: report the floor both found
    }
  }
  Choice choice;
  double best = std::numeric_limits<double>::infinity();
  for (Choice& c : fitting) {
    polish(search, c, budget, idle, auto_choice);
    const double step = search.simulate(c).makespan;
    if (step < best * (1 - 1e-12)) {
      best = step;
      choice = c;
    }
  }
  const int simulations = search.simulations();
  const auto& cands = search.candidates();
  const std::size_t n = cands.size();
  Plan plan;
  plan.budget_bytes = budget;
  plan.candidates = static_cast<int>(n);
  SimResult base_sim = search.simulate(search.initial(false));
  plan.step_before = base_sim.makespan;
  plan.peak_bytes_before = base_sim.max_peak_bytes();
  for (const auto& r : base_sim.ranks) plan.rank_peak_before.push_back(r.peak_bytes);
  STP_CHECK(found, "budget ", bytes_text(budget), " (", std::llround(budget),
            " bytes) is below the smallest feasible budget ", bytes_text(floor), " (",
            std::llround(std::ceil(floor)), " bytes) for ", program.kind, " p=", program.p,
            " m=", program.m, ": no choice of the ", n, " offloadable sets",
            helps ? " and of recompute" : "", " brings the peak lower (",
            bytes_text(plan.peak_bytes_before), " without offload); raise the budget to at least ",
            bytes_text(floor), " or use a faster host link");
  fill(plan, search, choice, budget);
  plan.simulations = simulations;
  return plan;
}

SetChoices count_choices(const Plan& plan) {
  const int m = plan.program.m;
  std::vector<char> offloaded(static_cast<std::size_t>(plan.program.stages()) * m, 0);
  std::vector<char> again(offloaded), partial(offloaded);
  for (const PlannedSet& s : plan.sets)
    if (!s.w_held) {
      offloaded[static_cast<std::size_t>(s.stage) * m + s.mb] = 1;
      if (s.share < 1) partial[static_cast<std::size_t>(s.stage) * m + s.mb] = 1;
    }
  for (const RecomputedSet& s : plan.recomputed) {
    again[static_cast<std::size_t>(s.stage) * m + s.mb] = 1;
    if (s.share < 1) partial[static_cast<std::size_t>(s.stage) * m + s.mb] = 1;
  }
  SetChoices n;
  for (std::size_t k = 0; k < offloaded.size(); ++k) {
    ++(offloaded[k] ? (again[k] ? n.both : n.offload) : (again[k] ? n.recompute : n.keep));
    n.partial += partial[k];
  }
  return n;
}

PeakMoment peak_moment(const Program& program, const CostModel& costs) {
  check_inputs(program, costs);
  schedule::SimOptions so;
  so.record_timeline = so.record_memory = true;
  const SimResult sim = schedule::simulate(program, costs, so);
  PeakMoment out;
  out.bytes = sim.max_peak_bytes();
  for (std::size_t r = 0; r < sim.ranks.size(); ++r)
    if (sim.ranks[r].peak_bytes == out.bytes) {
      out.rank = static_cast<int>(r);
      break;
    }
  const schedule::RankStats& rs = sim.ranks[out.rank];
  for (const schedule::MemorySample& m : rs.memory)
    if (m.bytes == out.bytes) {
      out.time = m.time;
      break;
    }
  // Per instruction of the rank: [start, end] of computes and copies; a RELOAD's destination
  // is allocated when the rank issues it, at the end of the compute before it.
  const auto& list = program.ranks[out.rank];
  std::vector<double> start(list.size(), 0), end(list.size(), 0);
  for (const schedule::TimelineEvent& ev : sim.timeline.events)
    if (ev.rank == out.rank && ev.index >= 0) {
      start[ev.index] = ev.start;
      end[ev.index] = ev.end;
    }
  // One entry per set: its state changes (time, state, resident share of the set), in order.
  struct Change {
    double time;
    std::string state;
    double share;
  };
  std::map<std::pair<int, int>, std::vector<Change>> changes;  // (stage, mb)
  std::map<std::pair<int, int>, bool> after_b;
  std::map<std::pair<int, int>, double> recomputed;  // recompute share, 0: none
  double clock = 0;                                  // when the rank issues the next instruction
  const double off = 1 - costs.offload_fraction, held = costs.w_held_fraction;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const Instr& in = list[i];
    if (in.is_compute()) {
      std::array<double, 2> rebuilt{};  // per part: the recompute share of a backward's set
      for (std::size_t j = 0; j < in.parts.size() && j < 2; ++j)
        if (in.parts[j].pass == Pass::kB || in.parts[j].pass == Pass::kBW)
          rebuilt[j] = recomputed[{in.parts[j].stage, in.parts[j].mb}];
      for (const schedule::Part& part : in.parts) {
        auto& c = changes[{part.stage, part.mb}];
        const double begin = end[i] - schedule::instr_cost(in, costs, rebuilt).duration;
        switch (part.pass) {
          case Pass::kF: {
            const double g = part.recompute ? part.recompute_share : 0.0;
            recomputed[{part.stage, part.mb}] = g;
            c.push_back({end[i],
                         g <= 0   ? "saved for B"
                         : g >= 1 ? "saved for B, recomputed"
                                  : str_cat("saved for B, the first ", share_text(g),
                                            " of its layers recomputed"),
                         g > 0 ? schedule::kept_share(costs, g) : 1});
            break;
          }
          case Pass::kB:
            c.push_back({begin, "in B", 1});
            c.push_back({end[i], "held for W", held});
            after_b[{part.stage, part.mb}] = true;
            break;
          case Pass::kBW:
            c.push_back({begin, "in B", 1});
            c.push_back({end[i], "", 0});
            break;
          case Pass::kW:
            c.push_back({begin, "in W", held});
            c.push_back({end[i], "", 0});
            break;
        }
      }
      clock = end[i];
      continue;
    }
    if (in.op != Op::kOffload && in.op != Op::kReload) continue;
    const int stage = program.stage_of(out.rank, in.ref.chunk);
    auto& c = changes[{stage, in.ref.mb}];
    const bool w = after_b[{stage, in.ref.mb}];
    const double g = recomputed[{stage, in.ref.mb}];
    const double share = w ? held : g > 0 ? schedule::kept_share(costs, g) : 1;
    if (in.op == Op::kOffload && in.share < 1) {
      // Note [Partial sets]: what the backward reads last leaves; the rest stays.
      const std::string part =
          str_cat(share_text(in.share), " on host (",
                  w ? "the fields its W reads last"
                    : "the first layers' fields, which its backward reads last",
                  "), on the device the rest");
      c.push_back({clock, "offloading " + share_text(in.share), share});
      c.push_back({end[i], part, share * (1 - costs.offload_fraction * in.share)});
    } else if (in.op == Op::kOffload) {
      c.push_back({clock, "offloading", share});
      c.push_back({end[i], "on host", share * off});
    } else {
      c.push_back({clock, w ? "reloaded for W" : "reloaded for B", share});
    }
  }
  for (const auto& [key, list_of] : changes) {
    const Change* now = nullptr;
    for (const Change& c : list_of)
      // A backward's start is end - duration here: within rounding of the simulator's.
      if (c.time <= out.time + 1e-12 * std::max(1.0, out.time)) now = &c;
    if (now == nullptr || now->share <= 0 || now->state.empty()) continue;
    HeldSet h;
    h.stage = key.first;
    h.mb = key.second;
    h.chunk = program.stage_chunk[h.stage];
    h.bytes = schedule::set_bytes(costs, h.stage) * now->share;
    h.state = now->state;
    out.sets.push_back(h);
  }
  return out;
}

std::string share_text(double share) {
  const double steps = share * kShareSteps;
  if (share >= 1) return "1";
  if (steps == std::round(steps)) return str_cat(std::llround(steps), "/", kShareSteps);
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", share);
  return text;
}

std::string to_text(const PeakMoment& m) {
  std::string out = str_cat("rank ", m.rank, " at ");
  char t[32];
  std::snprintf(t, sizeof t, "%.4f s", m.time);
  out += str_cat(t, " holds ", bytes_text(m.bytes), ":");
  for (std::size_t i = 0; i < m.sets.size(); ++i) {
    const HeldSet& h = m.sets[i];
    out +=
        str_cat(i ? ", " : " ", "c", h.chunk, "[", h.mb, "] ", h.state, " ", bytes_text(h.bytes));
  }
  return out;
}

std::string to_text(const Plan& p) {
  std::string out;
  const bool unlimited = std::isinf(p.budget_bytes);
  out +=
      str_cat("budget        ", unlimited ? std::string("unlimited") : bytes_text(p.budget_bytes),
              " of activations per rank\n");
  char line[256];
  std::snprintf(line, sizeof line, "peak before   %-12s step %.4f s\n",
                bytes_text(p.peak_bytes_before).c_str(), p.step_before);
  out += line;
  std::snprintf(line, sizeof line, "peak after    %-12s step %.4f s (%+.2f %%)\n",
                bytes_text(p.peak_bytes_after).c_str(), p.step_after, 100 * p.slowdown());
  out += line;
  std::snprintf(line, sizeof line,
                "offloaded     %zu of %d candidate sets; host pool %s per rank\n", p.sets.size(),
                p.candidates, bytes_text(p.host_bytes).c_str());
  out += line;
  if (!p.recomputed.empty()) {
    std::snprintf(line, sizeof line, "recomputed    %zu of %d sets; %s per step not held\n",
                  p.recomputed.size(), p.program.stages() * p.program.m,
                  bytes_text(p.recomputed_bytes).c_str());
    out += line;
  }
  out += p.recomputed.empty()
             ? "rank  peak before   peak after    offloaded sets\n"
             : "rank  peak before   peak after    offloaded sets; recomputed sets\n";
  for (std::size_t r = 0; r < p.rank_peak_before.size(); ++r) {
    std::string sets;
    for (const PlannedSet& s : p.sets)
      if (s.rank == static_cast<int>(r))
        sets += str_cat(sets.empty() ? "" : " ", "c", s.chunk, "[", s.mb, "]", s.w_held ? "w" : "",
                        s.share < 1 ? kShareMark + share_text(s.share) : "");
    std::snprintf(line, sizeof line, "%-5zu %-13s %-13s ", r,
                  bytes_text(p.rank_peak_before[r]).c_str(),
                  bytes_text(p.rank_peak_after[r]).c_str());
    std::string again;
    for (const RecomputedSet& s : p.recomputed)
      if (s.rank == static_cast<int>(r))
        again += str_cat(again.empty() ? "" : " ", "c", s.chunk, "[", s.mb, "]",
                         s.share < 1 ? kShareMark + share_text(s.share) : "");
    out += line + (sets.empty() ? std::string("-") : sets);
    if (!p.recomputed.empty()) out += "; " + (again.empty() ? std::string("-") : again);
    out += "\n";
  }
  const bool partial_trip =
      std::any_of(p.sets.begin(), p.sets.end(), [](const PlannedSet& s) { return s.share < 1; });
  const bool partial_again = std::any_of(p.recomputed.begin(), p.recomputed.end(),
                                         [](const RecomputedSet& s) { return s.share < 1; });
  if (partial_trip) out += str_cat("partial       ", kShareMark, "k/8: ", kPartialTripText, "\n");
  if (partial_again)
    out += str_cat("partial       ", kShareMark, "k/8 recomputed: ", kPartialRecomputeText, "\n");
  return out;
}

}  // namespace stp::offload
