#include "offload/planner.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>

#include "common/bytes.h"
#include "common/check.h"
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

constexpr int kNotOffloaded = -1;  // lead of a candidate the plan leaves on the device

bool fits(double peak, double budget) { return peak <= budget * (1 + 1e-12) + 1e-6; }

bool fits_all(const SimResult& sim, double budget) {
  return std::all_of(sim.ranks.begin(), sim.ranks.end(),
                     [&](const schedule::RankStats& r) { return fits(r.peak_bytes, budget); });
}

std::string bytes_text(double b) { return format_bytes(b); }

// A trip the plan may make, located in the input Program: a set from its forward to its
// backward, or (w_held) what a deferred W holds from its B to its W.
struct Candidate {
  int rank = 0, chunk = 0, stage = 0, mb = 0;
  bool w_held = false;           // the second trip: B to W
  int f_instr = 0, b_instr = 0;  // indices in program.ranks[rank]: the producer, the consumer
  int f_pos = 0, b_pos = 0;      // positions among the rank's compute instructions
  double bytes = 0;              // bytes the trip moves
  double transfer = 0;           // seconds of one copy over the host link
  int max_lead() const { return b_pos - 1 - f_pos; }
};

// Compute-instruction times of one simulation, by rank and index in the simulated Program.
struct Times {
  std::vector<std::vector<double>> start, end, reload_wait;  // [rank][index]
};

class Search {
 public:
  Search(const Program& program, const CostModel& costs, const PlanOptions& options)
      : prog_(program), costs_(costs), options_(options) {
    find_candidates();
  }

  const std::vector<Candidate>& candidates() const { return cands_; }
  int simulations() const { return sims_; }

  // The input with the offloads of `lead` (one entry per candidate) inserted; new_index maps
  // [rank][input index] to the index in the result.
  // copy_of, when given, maps [rank][result index] of each OFFLOAD / RELOAD to its candidate.
  Program build(const std::vector<int>& lead, std::vector<std::vector<int>>* new_index,
                std::vector<std::vector<int>>* copy_of = nullptr) const {
    Program out = prog_;
    std::vector<std::vector<std::vector<int>>> offloads(prog_.p),
        reloads(prog_.p);  // [r][i] -> cands
    for (int r = 0; r < prog_.p; ++r) {
      offloads[r].resize(prog_.ranks[r].size());
      reloads[r].resize(prog_.ranks[r].size());
    }
    for (std::size_t c = 0; c < cands_.size(); ++c) {
      if (lead[c] == kNotOffloaded) continue;
      const Candidate& k = cands_[c];
      offloads[k.rank][k.f_instr].push_back(static_cast<int>(c));
      int anchor = compute_[k.rank][k.b_pos - 1 - lead[c]];
      reloads[k.rank][anchor].push_back(static_cast<int>(c));
    }
    if (new_index) new_index->assign(prog_.p, {});
    if (copy_of) copy_of->assign(prog_.p, {});
    auto push_copy = [&](std::vector<Instr>& list, int r, Op op, int c) {
      list.push_back(copy_instr(op, cands_[c]));
      if (!copy_of) return;
      (*copy_of)[r].resize(list.size(), -1);
      (*copy_of)[r].back() = c;
    };
    for (int r = 0; r < prog_.p; ++r) {
      auto& list = out.ranks[r];
      list.clear();
      if (new_index) (*new_index)[r].resize(prog_.ranks[r].size());
      for (std::size_t i = 0; i < prog_.ranks[r].size(); ++i) {
        if (new_index) (*new_index)[r][i] = static_cast<int>(list.size());
        list.push_back(prog_.ranks[r][i]);
        for (int c : offloads[r][i]) push_copy(list, r, Op::kOffload, c);
        // The reload needed first goes first on the H2D channel.
        std::vector<int>& rl = reloads[r][i];
        std::sort(rl.begin(), rl.end(),
                  [&](int a, int b) { return cands_[a].b_pos < cands_[b].b_pos; });
        for (int c : rl) push_copy(list, r, Op::kReload, c);
      }
    }
    return out;
  }

  SimResult simulate(const std::vector<int>& lead, Times* times = nullptr) {
    ++sims_;
    std::vector<std::vector<int>> index;
    Program program = build(lead, times ? &index : nullptr);
    schedule::SimOptions so;
    so.record_timeline = times != nullptr;
    so.record_memory = true;  // for excess()
    SimResult sim = schedule::simulate(program, costs_, so);
    if (times) {
      // Times by *input* index, through new_index.
      std::vector<std::vector<double>> s(prog_.p), e(prog_.p), w(prog_.p);
      for (int r = 0; r < prog_.p; ++r) {
        s[r].assign(program.ranks[r].size(), 0);
        e[r].assign(program.ranks[r].size(), 0);
        w[r].assign(program.ranks[r].size(), 0);
      }
      for (const schedule::TimelineEvent& ev : sim.timeline.events) {
        if (ev.category != std::string(schedule::kCategoryCompute) || ev.index < 0) continue;
        s[ev.rank][ev.index] = ev.start;
        e[ev.rank][ev.index] = ev.end;
        w[ev.rank][ev.index] = ev.reload_wait;
      }
      times->start.assign(prog_.p, {});
      times->end.assign(prog_.p, {});
      times->reload_wait.assign(prog_.p, {});
      for (int r = 0; r < prog_.p; ++r)
        for (int i : index[r]) {
          times->start[r].push_back(s[r][i]);
          times->end[r].push_back(e[r][i]);
          times->reload_wait[r].push_back(w[r][i]);
        }
    }
    return sim;
  }

  // The smallest lead whose span covers the set's transfer in `t`, else the largest lead.
  int initial_lead(const Candidate& k, const Times& t) const {
    const double need = t.start[k.rank][k.b_instr] - k.transfer;
    for (int lead = 0; lead <= k.max_lead(); ++lead) {
      int anchor = compute_[k.rank][k.b_pos - 1 - lead];
      if (t.end[k.rank][anchor] <= need) return lead;
    }
    return k.max_lead();
  }

  bool budget_left() const { return sims_ < options_.max_simulations; }

  // Bytes of the smallest candidate set (the step of a descent).
  double smallest_set() const {
    double low = 0;
    for (const Candidate& k : cands_)
      if (low == 0 || k.bytes < low) low = k.bytes;
    return low;
  }

  // Per candidate: seconds from its forward's end to its backward's start, without offload.
  std::vector<double> idle_without_offload() {
    Times t;
    simulate(std::vector<int>(cands_.size(), kNotOffloaded), &t);
    std::vector<double> idle;
    for (const Candidate& k : cands_)
      idle.push_back(t.start[k.rank][k.b_instr] - t.end[k.rank][k.f_instr]);
    return idle;
  }

 private:
  static Instr copy_instr(Op op, const Candidate& k) {
    return schedule::transfer_instr(op, schedule::Part{Pass::kF, k.chunk, k.stage, k.mb});
  }

  void find_candidates() {
    const int S = prog_.stages(), m = prog_.m;
    compute_.assign(prog_.p, {});
    std::vector<int> f_instr(static_cast<std::size_t>(S) * m, -1), b_instr(f_instr);
    std::vector<int> f_pos(f_instr), b_pos(f_instr), w_instr(f_instr), w_pos(f_instr);
    for (int r = 0; r < prog_.p; ++r) {
      const auto& list = prog_.ranks[r];
      for (std::size_t i = 0; i < list.size(); ++i) {
        const Instr& in = list[i];
        STP_CHECK(in.op != Op::kOffload && in.op != Op::kReload, "plan: the program already has ",
                  schedule::to_string(in), " on rank ", r,
                  "; plan a program without OFFLOAD/RELOAD instructions");
        if (!in.is_compute()) continue;
        const int pos = static_cast<int>(compute_[r].size());
        compute_[r].push_back(static_cast<int>(i));
        for (const schedule::Part& part : in.parts) {
          const std::size_t k = static_cast<std::size_t>(part.stage) * m + part.mb;
          if (part.pass == Pass::kF) {
            f_instr[k] = static_cast<int>(i);
            f_pos[k] = pos;
          } else if (part.pass == Pass::kB || part.pass == Pass::kBW) {
            b_instr[k] = static_cast<int>(i);
            b_pos[k] = pos;
          } else if (part.pass == Pass::kW) {
            w_instr[k] = static_cast<int>(i);
            w_pos[k] = pos;
          }
        }
      }
    }
    for (int s = 0; s < S; ++s) {
      const double bytes = schedule::set_bytes(costs_, s) * costs_.offload_fraction;
      for (int mb = 0; mb < m; ++mb) {
        const std::size_t k = static_cast<std::size_t>(s) * m + mb;
        add_candidate(s, mb, false, bytes, f_instr[k], f_pos[k], b_instr[k], b_pos[k]);
        if (options_.w_held_trips)
          add_candidate(s, mb, true, bytes * costs_.w_held_fraction, b_instr[k], b_pos[k],
                        w_instr[k], w_pos[k]);
      }
    }
  }

  // A trip from compute instruction `from` (position from_pos) to `to`, when it moves bytes
  // and at least one compute instruction lies in between (else an offload only costs time).
  void add_candidate(int s, int mb, bool w_held, double bytes, int from, int from_pos, int to,
                     int to_pos) {
    if (bytes <= 0 || from < 0 || to < 0 || to_pos - from_pos < 2) return;
    const double transfer =
        (costs_.host_bandwidth > 0 ? bytes / costs_.host_bandwidth : 0) + costs_.host_latency;
    const Candidate c{.rank = prog_.stage_rank[s],
                      .chunk = prog_.stage_chunk[s],
                      .stage = s,
                      .mb = mb,
                      .w_held = w_held,
                      .f_instr = from,
                      .b_instr = to,
                      .f_pos = from_pos,
                      .b_pos = to_pos,
                      .bytes = bytes,
                      .transfer = transfer};
    cands_.push_back(c);
  }

  const Program& prog_;
  const CostModel& costs_;
  const PlanOptions options_;
  std::vector<std::vector<int>> compute_;  // [rank] input indices of compute instructions
  std::vector<Candidate> cands_;
  int sims_ = 0;
};

void check_inputs(const Program& program, const CostModel& costs) {
  schedule::verify(program);
  schedule::validate(costs, program.stages());
}

// The set (on `rank`, not yet offloaded) to offload next: resident at time `when`, preferring
// sets whose copies fit around that moment, then the longest idle, then the earlier chunk and
// microbatch (chunk 0 in STP). -1 when no candidate is resident then.
int pick(const Search& search, const std::vector<int>& lead, const std::vector<char>& banned,
         const Times& t, int rank, double when) {
  int best = -1;
  std::tuple<bool, double, int, int> best_key{};
  const auto& cands = search.candidates();
  for (std::size_t c = 0; c < cands.size(); ++c) {
    const Candidate& k = cands[c];
    if (k.rank != rank || lead[c] != kNotOffloaded || banned[c]) continue;
    const double f_end = t.end[rank][k.f_instr], b_start = t.start[rank][k.b_instr];
    if (f_end > when || b_start < when) continue;  // not resident at that moment
    const bool helps = f_end + k.transfer <= when && b_start - k.transfer >= when;
    auto key = std::make_tuple(helps, b_start - f_end, -k.chunk, -k.mb);
    if (best < 0 || key > best_key) {
      best = static_cast<int>(c);
      best_key = key;
    }
  }
  return best;
}

// The first time rank r holds more than `level` bytes (its memory samples).
double first_above(const schedule::RankStats& rs, double level) {
  for (const schedule::MemorySample& s : rs.memory)
    if (s.bytes > level) return s.time;
  return rs.memory.empty() ? 0 : rs.memory.back().time;
}

// Byte-seconds above `budget`, summed over ranks: how far a plan is from fitting. Unlike the
// peak it also drops when an offload shortens an excess without removing it, which is what a
// congested host link needs: several offloads must land before the peak moves.
double excess(const SimResult& sim, double budget) {
  const double level = budget * (1 + 1e-12) + 1e-6;  // as fits()
  double area = 0;
  for (const schedule::RankStats& r : sim.ranks)
    for (std::size_t i = 0; i + 1 < r.memory.size(); ++i)
      area += std::max(0.0, r.memory[i].bytes - level) * (r.memory[i + 1].time - r.memory[i].time);
  return area;
}

// Drops offloads, shortest idle first, that a fitting plan does not need to keep fitting, or
// that do not reduce the excess of a plan that does not fit yet; a dropped set is banned from
// being picked again. Returns how many it dropped. Besides the final clean-up this frees a
// congested host link: an offload that does not help still delays the copies queued behind it.
int prune(Search& search, std::vector<int>& lead, double budget, const std::vector<double>& idle,
          std::vector<char>* banned = nullptr) {
  std::vector<std::size_t> order;
  for (std::size_t c = 0; c < lead.size(); ++c)
    if (lead[c] != kNotOffloaded) order.push_back(c);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return idle[a] < idle[b]; });
  SimResult current = search.simulate(lead);
  bool fit = fits_all(current, budget);
  double now = excess(current, budget);
  int dropped = 0;
  for (std::size_t c : order) {
    if (!search.budget_left()) break;
    const int saved = lead[c];
    lead[c] = kNotOffloaded;
    SimResult sim = search.simulate(lead);
    const double without = excess(sim, budget);
    if (fit ? fits_all(sim, budget) : without <= now * (1 + 1e-9) + 1e-9) {
      fit = fits_all(sim, budget);
      now = without;
      ++dropped;
      if (banned) (*banned)[c] = 1;
    } else {
      lead[c] = saved;
    }
  }
  return dropped;
}

// Greedy towards `budget`: on each rank over it, offload the set idle longest at the rank's
// first excess; when no rank can add one, drop the offloads that do not help and go on. Returns
// whether every rank fits.
bool greedy(Search& search, std::vector<int>& lead, double budget,
            const std::vector<double>& idle) {
  const auto& cands = search.candidates();
  std::vector<char> banned(cands.size(), 0);
  Times t;
  while (search.budget_left()) {
    SimResult sim = search.simulate(lead, &t);
    if (fits_all(sim, budget)) return true;
    bool progress = false;
    for (int r = 0; r < static_cast<int>(sim.ranks.size()); ++r) {
      if (fits(sim.ranks[r].peak_bytes, budget)) continue;
      int c =
          pick(search, lead, banned, t, r, first_above(sim.ranks[r], budget * (1 + 1e-12) + 1e-6));
      if (c < 0) continue;
      lead[c] = search.initial_lead(cands[c], t);
      progress = true;
    }
    if (!progress && prune(search, lead, budget, idle, &banned) == 0) return false;
  }
  return fits_all(search.simulate(lead), budget);
}

// Plans found while pushing the peak down one set at a time (greedy towards just below the
// last peak, from the last plan) until that fails; then the everything-offloaded plan.
struct Trial {
  std::vector<int> lead;
  double peak = 0;
};
std::vector<Trial> descend(Search& search, const std::vector<double>& idle, double smallest_set) {
  const std::size_t n = search.candidates().size();
  std::vector<int> lead(n, kNotOffloaded);
  std::vector<Trial> trials{{lead, search.simulate(lead).max_peak_bytes()}};
  while (search.budget_left()) {
    std::vector<int> next = trials.back().lead;
    if (!greedy(search, next, trials.back().peak - smallest_set / 2, idle)) break;
    trials.push_back({next, search.simulate(next).max_peak_bytes()});
  }
  std::vector<int> all(n, 0);
  trials.push_back({all, search.simulate(all).max_peak_bytes()});
  return trials;
}

double lowest_peak(const std::vector<Trial>& trials) {
  double low = trials.front().peak;
  for (const Trial& t : trials) low = std::min(low, t.peak);
  return low;
}

// Moves reloads whose backward still waits one compute instruction earlier while the budget
// holds and the step gets shorter.
void reload_earlier(Search& search, std::vector<int>& lead, double budget) {
  const auto& cands = search.candidates();
  Times t;
  double step = search.simulate(lead, &t).makespan;
  for (bool improved = true; improved && search.budget_left();) {
    improved = false;
    std::vector<std::pair<double, std::size_t>> waiting;
    for (std::size_t c = 0; c < cands.size(); ++c) {
      const Candidate& k = cands[c];
      if (lead[c] != kNotOffloaded && lead[c] < k.max_lead() &&
          t.reload_wait[k.rank][k.b_instr] > 0)
        waiting.push_back({t.reload_wait[k.rank][k.b_instr], c});
    }
    std::sort(waiting.rbegin(), waiting.rend());
    for (const auto& [wait, c] : waiting) {
      if (!search.budget_left()) break;
      ++lead[c];
      SimResult sim = search.simulate(lead);
      if (fits_all(sim, budget) && sim.makespan < step * (1 - 1e-12)) {
        step = sim.makespan;
        improved = true;
      } else {
        --lead[c];
      }
    }
    if (improved) search.simulate(lead, &t);
  }
}

// Most bytes a rank holds on host at once: each trip from its OFFLOAD's start to its RELOAD's
// end. copy_of: the candidate of each copy instruction (Search::build).
double host_footprint(const std::vector<Candidate>& cands, const SimResult& sim,
                      const std::vector<std::vector<int>>& copy_of, int p) {
  double most = 0;
  for (int r = 0; r < p; ++r) {
    std::vector<std::pair<double, double>> changes;  // (time, +-bytes)
    for (const schedule::TimelineEvent& ev : sim.timeline.events) {
      if (ev.rank != r || ev.index < 0 || ev.index >= static_cast<int>(copy_of[r].size()) ||
          copy_of[r][ev.index] < 0)
        continue;
      const double bytes = cands[copy_of[r][ev.index]].bytes;
      if (ev.category == std::string(schedule::kCategoryOffload))
        changes.push_back({ev.start, bytes});
      if (ev.category == std::string(schedule::kCategoryReload))
        changes.push_back({ev.end, -bytes});
    }
    std::sort(changes.begin(), changes.end());  // at equal times the release (negative) first
    double now = 0;
    for (const auto& change : changes) {
      now += change.second;
      most = std::max(most, now);
    }
  }
  return most;
}

}  // namespace

double minimum_budget(const Program& program, const CostModel& costs, const PlanOptions& options) {
  check_inputs(program, costs);
  Search search(program, costs, options);
  return lowest_peak(descend(search, search.idle_without_offload(), search.smallest_set()));
}

Plan plan_offload(const Program& program, const CostModel& costs, double budget,
                  const PlanOptions& options) {
  STP_CHECK(budget > 0, "plan: budget=", budget, " bytes must be > 0 (use +inf for unlimited)");
  STP_CHECK(options.max_simulations >= 1, "plan: max_simulations=", options.max_simulations,
            " must be >= 1");
  check_inputs(program, costs);
  Search search(program, costs, options);
  const auto& cands = search.candidates();
  const std::size_t n = cands.size();

  Plan plan;
  plan.budget_bytes = budget;
  plan.candidates = static_cast<int>(n);
  std::vector<int> lead(n, kNotOffloaded);
  SimResult base_sim = search.simulate(lead);
  plan.step_before = base_sim.makespan;
  plan.peak_bytes_before = base_sim.max_peak_bytes();
  for (const auto& r : base_sim.ranks) plan.rank_peak_before.push_back(r.peak_bytes);
  const std::vector<double> idle = search.idle_without_offload();

  if (!fits_all(base_sim, budget)) {
    if (!greedy(search, lead, budget, idle)) {
      // Stuck: take the first plan of the descent that fits, or report the lowest it reached.
      std::vector<Trial> trials = descend(search, idle, search.smallest_set());
      const double floor = lowest_peak(trials);
      STP_CHECK(fits(floor, budget), "budget ", bytes_text(budget), " (", std::llround(budget),
                " bytes) is below the smallest feasible budget ", bytes_text(floor), " (",
                std::llround(std::ceil(floor)), " bytes) for ", program.kind, " p=", program.p,
                " m=", program.m, ": no choice of the ", n,
                " offloadable sets brings the peak "
                "lower (",
                bytes_text(plan.peak_bytes_before),
                " without offload); raise the "
                "budget to at least ",
                bytes_text(floor), " or use a faster host link");
      auto first_fit = std::find_if(trials.begin(), trials.end(),
                                    [&](const Trial& t) { return fits(t.peak, budget); });
      lead = first_fit->lead;
    }
    prune(search, lead, budget, idle);
    reload_earlier(search, lead, budget);
  }

  std::vector<std::vector<int>> copy_of;
  plan.program = search.build(lead, nullptr, &copy_of);
  schedule::SimOptions so;
  so.record_timeline = true;
  SimResult sim = schedule::simulate(plan.program, costs, so);
  plan.step_after = sim.makespan;
  plan.peak_bytes_after = sim.max_peak_bytes();
  for (const auto& r : sim.ranks) plan.rank_peak_after.push_back(r.peak_bytes);
  plan.host_bytes = host_footprint(cands, sim, copy_of, program.p);
  for (int st = 0; st < program.stages(); ++st)
    plan.kept_bytes += program.m * schedule::set_bytes(costs, st);
  for (const auto& rank : program.ranks)
    for (const Instr& in : rank)
      for (const schedule::Part& part : in.parts)
        if (part.pass == Pass::kB)
          plan.kept_bytes += schedule::set_bytes(costs, part.stage) * costs.w_held_fraction;
  for (std::size_t c = 0; c < n; ++c)
    if (lead[c] != kNotOffloaded) plan.offloaded_bytes += cands[c].bytes;
  plan.kept_bytes -= plan.offloaded_bytes;
  for (std::size_t c = 0; c < n; ++c)
    if (lead[c] != kNotOffloaded)
      plan.sets.push_back({cands[c].rank, cands[c].chunk, cands[c].stage, cands[c].mb,
                           cands[c].w_held, lead[c], idle[c], cands[c].bytes});
  std::sort(plan.sets.begin(), plan.sets.end(), [](const PlannedSet& a, const PlannedSet& b) {
    return std::tie(a.rank, a.stage, a.mb, a.w_held) < std::tie(b.rank, b.stage, b.mb, b.w_held);
  });
  plan.simulations = search.simulations() + 1;
  STP_ASSERT(schedule::find_error(plan.program).empty(), schedule::find_error(plan.program));
  STP_ASSERT(fits_all(sim, budget), "planned peak ", sim.max_peak_bytes(), " over budget ", budget);
  return plan;
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
    const char* state;
    double share;
  };
  std::map<std::pair<int, int>, std::vector<Change>> changes;  // (stage, mb)
  std::map<std::pair<int, int>, bool> after_b;
  double clock = 0;  // when the rank issues the next instruction
  const double off = 1 - costs.offload_fraction, held = costs.w_held_fraction;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const Instr& in = list[i];
    if (in.is_compute()) {
      for (const schedule::Part& part : in.parts) {
        auto& c = changes[{part.stage, part.mb}];
        const double begin = end[i] - schedule::instr_cost(in, costs).duration;
        switch (part.pass) {
          case Pass::kF: c.push_back({end[i], "saved for B", 1}); break;
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
    const double share = w ? held : 1;
    if (in.op == Op::kOffload) {
      c.push_back({clock, "offloading", share});
      c.push_back({end[i], "on host", share * off});
    } else {
      c.push_back({clock, w ? "reloaded for W" : "reloaded for B", share});
    }
  }
  for (const auto& [key, list_of] : changes) {
    const Change* now = nullptr;
    for (const Change& c : list_of)
      if (c.time <= out.time) now = &c;
    if (now == nullptr || now->share <= 0 || now->state[0] == '\0') continue;
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
  out += "rank  peak before   peak after    offloaded sets\n";
  for (std::size_t r = 0; r < p.rank_peak_before.size(); ++r) {
    std::string sets;
    for (const PlannedSet& s : p.sets)
      if (s.rank == static_cast<int>(r))
        sets += str_cat(sets.empty() ? "" : " ", "c", s.chunk, "[", s.mb, "]", s.w_held ? "w" : "");
    std::snprintf(line, sizeof line, "%-5zu %-13s %-13s ", r,
                  bytes_text(p.rank_peak_before[r]).c_str(),
                  bytes_text(p.rank_peak_after[r]).c_str());
    out += line + (sets.empty() ? std::string("-") : sets) + "\n";
  }
  return out;
}

}  // namespace stp::offload
