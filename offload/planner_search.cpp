#include "offload/planner_search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>

#include "common/check.h"

namespace stp::offload::detail {

using schedule::Instr;
using schedule::Op;
using schedule::Pass;
using schedule::Program;
using schedule::SimResult;

bool fits(double peak, double budget) { return peak <= budget * (1 + 1e-12) + 1e-6; }

bool fits_all(const SimResult& sim, double budget) {
  return std::all_of(sim.ranks.begin(), sim.ranks.end(),
                     [&](const schedule::RankStats& r) { return fits(r.peak_bytes, budget); });
}

// Unlike the peak it also drops when an offload shortens an excess without removing it, which
// is what a congested host link needs: several offloads must land before the peak moves.
double excess(const SimResult& sim, double budget) {
  const double level = budget * (1 + 1e-12) + 1e-6;  // as fits()
  double area = 0;
  for (const schedule::RankStats& r : sim.ranks)
    for (std::size_t i = 0; i + 1 < r.memory.size(); ++i)
      area += std::max(0.0, r.memory[i].bytes - level) * (r.memory[i + 1].time - r.memory[i].time);
  return area;
}

// ---- Search ---------------------------------------------------------------------------------

Search::Search(const Program& program, const schedule::CostModel& costs, const PlanOptions& options)
    : prog_(program), costs_(costs), options_(options) {
  find_candidates();
}

Choice Search::initial(bool all) const {
  Choice c;
  c.lead.assign(cands_.size(), kNotOffloaded);
  c.share.assign(cands_.size(), kShareSteps);
  c.recompute.assign(fixed_.size(), 0);
  for (std::size_t s = 0; s < fixed_.size(); ++s)
    if (all || fixed_[s]) c.recompute[s] = kShareSteps;
  return c;
}

Choice Search::all_offloaded(const Choice& from) {
  Times t;
  simulate(from, &t);
  Choice out = from;
  for (std::size_t c = 0; c < cands_.size(); ++c) out.lead[c] = initial_lead(cands_[c], from, t);
  return out;
}

double Search::recompute_share(const Choice& choice, int set) const {
  if (fixed_[set]) return fixed_share_[set];
  const int g = choice.recompute[set];
  return g >= kShareSteps ? 1.0 : static_cast<double>(g) / kShareSteps;
}

double Search::whole_bytes(const Candidate& k, const Choice& choice) const {
  const double g = k.w_held ? 0.0 : recompute_share(choice, k.set);
  return g > 0 ? k.bytes * schedule::kept_share(costs_, g) : k.bytes;
}

double Search::bytes(const Candidate& k, const Choice& choice) const {
  const std::ptrdiff_t c = &k - cands_.data();  // k is one of candidates()
  STP_ASSERT(c >= 0 && c < static_cast<std::ptrdiff_t>(cands_.size()), "not a candidate");
  const int share = choice.share[c];
  const double whole = whole_bytes(k, choice);
  return share >= kShareSteps ? whole : whole * share / kShareSteps;
}

double Search::transfer(const Candidate& k, const Choice& choice) const {
  const double b = bytes(k, choice);
  return (costs_.host_bandwidth > 0 ? b / costs_.host_bandwidth : 0) + costs_.host_latency;
}

Program Search::build(const Choice& choice, std::vector<std::vector<int>>* new_index,
                      std::vector<std::vector<int>>* copy_of) const {
  Program out = prog_;
  std::vector<std::vector<std::vector<int>>> offloads(prog_.p), reloads(prog_.p);  // [r][i]
  for (int r = 0; r < prog_.p; ++r) {
    offloads[r].resize(prog_.ranks[r].size());
    reloads[r].resize(prog_.ranks[r].size());
  }
  for (std::size_t c = 0; c < cands_.size(); ++c) {
    if (choice.lead[c] == kNotOffloaded) continue;
    const Candidate& k = cands_[c];
    offloads[k.rank][k.f_instr].push_back(static_cast<int>(c));
    reloads[k.rank][compute_[k.rank][k.b_pos - 1 - choice.lead[c]]].push_back(static_cast<int>(c));
  }
  if (new_index) new_index->assign(prog_.p, {});
  if (copy_of) copy_of->assign(prog_.p, {});
  auto push_copy = [&](std::vector<Instr>& list, int r, Op op, int c) {
    const Candidate& k = cands_[c];
    const int share = choice.share[c];
    list.push_back(schedule::offload_instr(
        op, schedule::Part{Pass::kF, k.chunk, k.stage, k.mb},
        share >= kShareSteps ? 1.0 : static_cast<double>(share) / kShareSteps));
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
      for (schedule::Part& part : list.back().parts)
        if (part.pass == Pass::kF) {
          const double g = recompute_share(choice, part.stage * prog_.m + part.mb);
          part.recompute = g > 0;
          part.recompute_share = g > 0 ? g : 1.0;
        }
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

SimResult Search::simulate(const Choice& choice, Times* times) {
  ++sims_;
  std::vector<std::vector<int>> index;
  Program program = build(choice, times ? &index : nullptr);
  schedule::SimOptions so;
  so.record_timeline = times != nullptr;
  so.record_memory = true;  // for excess() and first_above()
  SimResult sim = schedule::simulate(program, costs_, so);
  if (!times) return sim;
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
  return sim;
}

int Search::initial_lead(const Candidate& k, const Choice& choice, const Times& t) const {
  const double need = t.start[k.rank][k.b_instr] - transfer(k, choice);
  for (int lead = 0; lead <= k.max_lead(); ++lead) {
    int anchor = compute_[k.rank][k.b_pos - 1 - lead];
    if (t.end[k.rank][anchor] <= need) return lead;
  }
  return k.max_lead();
}

double Search::smallest_set(const Choice& choice) const {
  double low = 0;
  for (const Candidate& k : cands_) {
    const double b = bytes(k, choice);
    if (b > 0 && (low == 0 || b < low)) low = b;
  }
  return low;
}

std::vector<double> Search::idle_without_offload() {
  Times t;
  simulate(initial(false), &t);
  std::vector<double> idle;
  for (const Candidate& k : cands_)
    idle.push_back(t.start[k.rank][k.b_instr] - t.end[k.rank][k.f_instr]);
  return idle;
}

void Search::find_candidates() {
  const int S = prog_.stages(), m = prog_.m;
  compute_.assign(prog_.p, {});
  spans_.assign(static_cast<std::size_t>(S) * m, {});
  fixed_.assign(spans_.size(), 0);
  fixed_share_.assign(spans_.size(), 0);
  std::vector<int> f_pos(spans_.size(), -1), b_pos(f_pos), w_instr(f_pos), w_pos(f_pos);
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
        spans_[k].rank = r;
        if (part.pass == Pass::kF) {
          spans_[k].f_instr = static_cast<int>(i);
          f_pos[k] = pos;
          fixed_[k] = part.recompute;
          fixed_share_[k] = part.recompute ? part.recompute_share : 0.0;
        } else if (part.pass == Pass::kB || part.pass == Pass::kBW) {
          spans_[k].b_instr = static_cast<int>(i);
          b_pos[k] = pos;
        } else if (part.pass == Pass::kW) {
          w_instr[k] = static_cast<int>(i);
          w_pos[k] = pos;
        }
      }
    }
  }
  // A trip from compute instruction `from` (position from_pos) to `to`, when it moves bytes
  // and at least one compute instruction lies in between (else an offload only costs time).
  auto add = [&](int s, int mb, bool w_held, double bytes, int from, int from_pos, int to,
                 int to_pos) {
    if (bytes <= 0 || from < 0 || to < 0 || to_pos - from_pos < 2) return;
    cands_.push_back(Candidate{.rank = prog_.stage_rank[s],
                               .chunk = prog_.stage_chunk[s],
                               .stage = s,
                               .mb = mb,
                               .set = s * m + mb,
                               .w_held = w_held,
                               .f_instr = from,
                               .b_instr = to,
                               .f_pos = from_pos,
                               .b_pos = to_pos,
                               .bytes = bytes});
  };
  for (int s = 0; s < S; ++s) {
    const double bytes = schedule::set_bytes(costs_, s) * costs_.offload_fraction;
    for (int mb = 0; mb < m; ++mb) {
      const std::size_t k = static_cast<std::size_t>(s) * m + mb;
      add(s, mb, false, bytes, spans_[k].f_instr, f_pos[k], spans_[k].b_instr, b_pos[k]);
      if (options_.w_held_trips)
        add(s, mb, true, bytes * costs_.w_held_fraction, spans_[k].b_instr, b_pos[k], w_instr[k],
            w_pos[k]);
    }
  }
}

// ---- greedy, prune, descend -----------------------------------------------------------------

namespace {

// The set (on `rank`, not yet offloaded) to offload next: resident at time `when`, preferring
// sets whose copies fit around that moment, then the longest idle, then the earlier chunk and
// microbatch (chunk 0 in STP). -1 when no candidate is resident then.
int pick(const Search& search, const Choice& choice, const std::vector<char>& banned,
         const Times& t, int rank, double when) {
  int best = -1;
  std::tuple<bool, double, int, int> best_key{};
  const auto& cands = search.candidates();
  for (std::size_t c = 0; c < cands.size(); ++c) {
    const Candidate& k = cands[c];
    if (k.rank != rank || choice.lead[c] != kNotOffloaded || banned[c]) continue;
    const double f_end = t.end[rank][k.f_instr], b_start = t.start[rank][k.b_instr];
    if (f_end > when || b_start < when) continue;  // not resident at that moment
    const double copy = search.transfer(k, choice);
    const bool helps = f_end + copy <= when && b_start - copy >= when;
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

double level_of(double budget) { return budget * (1 + 1e-12) + 1e-6; }

}  // namespace

// Besides the final clean-up this frees a congested host link: an offload that does not help
// still delays the copies queued behind it. A dropped set is banned from being picked again.
int prune(Search& search, Choice& choice, double budget, const std::vector<double>& idle,
          std::vector<char>* banned) {
  std::vector<std::size_t> order;
  for (std::size_t c = 0; c < choice.lead.size(); ++c)
    if (choice.lead[c] != kNotOffloaded) order.push_back(c);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return idle[a] < idle[b]; });
  SimResult current = search.simulate(choice);
  bool fit = fits_all(current, budget);
  double now = excess(current, budget);
  int dropped = 0;
  for (std::size_t c : order) {
    if (!search.budget_left()) break;
    const int saved = choice.lead[c];
    choice.lead[c] = kNotOffloaded;
    SimResult sim = search.simulate(choice);
    const double without = excess(sim, budget);
    if (fit ? fits_all(sim, budget) : without <= now * (1 + 1e-9) + 1e-9) {
      fit = fits_all(sim, budget);
      now = without;
      ++dropped;
      if (banned) (*banned)[c] = 1;
    } else {
      choice.lead[c] = saved;
    }
  }
  return dropped;
}

bool greedy(Search& search, Choice& choice, double budget, const std::vector<double>& idle) {
  const auto& cands = search.candidates();
  std::vector<char> banned(cands.size(), 0);
  Times t;
  while (search.budget_left()) {
    SimResult sim = search.simulate(choice, &t);
    if (fits_all(sim, budget)) return true;
    bool progress = false;
    for (int r = 0; r < static_cast<int>(sim.ranks.size()); ++r) {
      if (fits(sim.ranks[r].peak_bytes, budget)) continue;
      int c = pick(search, choice, banned, t, r, first_above(sim.ranks[r], level_of(budget)));
      if (c < 0) continue;
      choice.lead[c] = search.initial_lead(cands[c], choice, t);
      progress = true;
    }
    if (!progress && prune(search, choice, budget, idle, &banned) == 0) return false;
  }
  return fits_all(search.simulate(choice), budget);
}

std::vector<Trial> descend(Search& search, const Choice& start, const std::vector<double>& idle,
                           bool allow_recompute) {
  const double step = search.smallest_set(start);
  std::vector<Trial> trials{{start, search.simulate(start).max_peak_bytes()}};
  while (search.budget_left()) {
    Choice next = trials.back().choice;
    const double target = trials.back().peak - step / 2;
    if (!greedy(search, next, target, idle)) {
      improve(search, next, target, allow_recompute);
      if (!fits_all(search.simulate(next), target)) break;
    }
    trials.push_back({next, search.simulate(next).max_peak_bytes()});
  }
  Choice all = start;
  std::fill(all.lead.begin(), all.lead.end(), 0);
  trials.push_back({all, search.simulate(all).max_peak_bytes()});
  return trials;
}

double lowest_peak(const std::vector<Trial>& trials) {
  double low = trials.front().peak;
  for (const Trial& t : trials) low = std::min(low, t.peak);
  return low;
}

void reload_earlier(Search& search, Choice& choice, double budget) {
  const auto& cands = search.candidates();
  Times t;
  double step = search.simulate(choice, &t).makespan;
  for (bool improved = true; improved && search.budget_left();) {
    improved = false;
    std::vector<std::pair<double, std::size_t>> waiting;
    for (std::size_t c = 0; c < cands.size(); ++c) {
      const Candidate& k = cands[c];
      if (choice.lead[c] != kNotOffloaded && choice.lead[c] < k.max_lead() &&
          t.reload_wait[k.rank][k.b_instr] > 0)
        waiting.push_back({t.reload_wait[k.rank][k.b_instr], c});
    }
    std::sort(waiting.rbegin(), waiting.rend());
    for (const auto& [wait, c] : waiting) {
      if (!search.budget_left()) break;
      ++choice.lead[c];
      SimResult sim = search.simulate(choice);
      if (fits_all(sim, budget) && sim.makespan < step * (1 - 1e-12)) {
        step = sim.makespan;
        improved = true;
      } else {
        --choice.lead[c];
      }
    }
    if (improved) search.simulate(choice, &t);
  }
}

// ---- improve --------------------------------------------------------------------------------

namespace {

// How good a plan is: over budget first (byte-seconds), then the step.
struct Score {
  double excess = 0;
  double step = 0;
};

Score score_of(const SimResult& sim, double budget) {
  const bool fit = fits_all(sim, budget);
  return {fit ? 0.0 : std::max(excess(sim, budget), 1e-300), sim.makespan};
}

// One change to a Choice.
struct Move {
  enum Kind { kLead, kRecompute } kind = kLead;
  int index = 0;  // candidate (kLead) or set (kRecompute)
  int value = 0;  // the new lead (kNotOffloaded: drop) or recompute share in steps (0: none)
  int share = 0;  // kLead: the trip's new share in steps; 0 leaves it
  // One step less of the trip's share or of the set's recompute share than the choice has
  // (value and share unused); a no-op where there is no step to take.
  bool lower = false;
};

// Whether `m` changes `choice` (a `lower` move may find nothing to lower).
bool changes(const Choice& choice, const Move& m) {
  if (!m.lower) return true;
  return m.kind == Move::kRecompute
             ? choice.recompute[m.index] > 1
             : choice.lead[m.index] != kNotOffloaded && choice.share[m.index] > 1;
}

void apply(Choice& choice, const Move& m) {
  if (m.lower) {
    --(m.kind == Move::kRecompute ? choice.recompute : choice.share)[m.index];
    return;
  }
  if (m.kind == Move::kRecompute) {
    choice.recompute[m.index] = static_cast<char>(m.value);
    return;
  }
  choice.lead[m.index] = m.value;
  if (m.share > 0) choice.share[m.index] = static_cast<char>(m.share);
  if (m.value == kNotOffloaded) choice.share[m.index] = kShareSteps;  // a later offload: whole
}

// The steps of share (of `whole` bytes) that remove `over` bytes, rounded up, in
// [1, kShareSteps].
int steps_for(double over, double whole) {
  if (whole <= 0) return kShareSteps;
  const double steps = std::ceil(over / whole * kShareSteps * (1 - 1e-12));
  return static_cast<int>(std::clamp(steps, 1.0, static_cast<double>(kShareSteps)));
}

// Most bytes rank r holds above `level` in [from, to): what one set resident then could cure.
double excess_within(const schedule::RankStats& rs, double level, double from, double to) {
  double most = 0;
  for (std::size_t i = 0; i < rs.memory.size(); ++i) {
    const double begin = rs.memory[i].time;
    const double end = i + 1 < rs.memory.size() ? rs.memory[i + 1].time : begin;
    if (end > from && begin < to) most = std::max(most, rs.memory[i].bytes - level);
  }
  return most;
}

// Moves that lower the excess: at each over-budget rank's first excess, offload a resident
// set, reload an offloaded one a compute instruction later, or recompute a resident set.
std::vector<Move> repair_moves(const Search& search, const Choice& choice, const SimResult& sim,
                               const Times& t, double budget, bool allow_recompute) {
  std::vector<Move> moves;
  const auto& cands = search.candidates();
  for (int r = 0; r < static_cast<int>(sim.ranks.size()); ++r) {
    if (fits(sim.ranks[r].peak_bytes, budget)) continue;
    const double level = level_of(budget);
    const double when = first_above(sim.ranks[r], level);
    for (std::size_t c = 0; c < cands.size(); ++c) {
      const Candidate& k = cands[c];
      if (k.rank != r) continue;
      const double f_end = t.end[r][k.f_instr], b_start = t.start[r][k.b_instr];
      if (f_end > when || b_start <= when) continue;  // not held for this trip then
      // The share of the trip the excess over its span needs (Note [Partial sets]).
      const int need = steps_for(excess_within(sim.ranks[r], level, f_end, b_start),
                                 search.whole_bytes(k, choice));
      const int id = static_cast<int>(c);
      if (choice.lead[c] == kNotOffloaded) {
        const int lead = search.initial_lead(k, choice, t);
        moves.push_back({Move::kLead, id, lead, kShareSteps});
        if (need < kShareSteps && search.partial_sets())
          moves.push_back({Move::kLead, id, lead, need});
        continue;
      }
      if (choice.lead[c] > 0) moves.push_back({Move::kLead, id, choice.lead[c] - 1});
      if (choice.share[c] < kShareSteps)  // only partial trips: raise by what is needed
        moves.push_back(
            {Move::kLead, id, choice.lead[c], std::min(kShareSteps, choice.share[c] + need)});
    }
    if (!allow_recompute) continue;
    for (std::size_t s = 0; s < search.sets().size(); ++s) {
      const SetSpan& span = search.sets()[s];
      if (span.rank != r || search.fixed_recompute(static_cast<int>(s)) ||
          choice.recompute[s] >= kShareSteps || span.f_instr < 0 || span.b_instr < 0)
        continue;
      const double f_end = t.end[r][span.f_instr], b_start = t.start[r][span.b_instr];
      if (f_end > when || b_start <= when) continue;
      const int id = static_cast<int>(s);
      const double saved = schedule::set_bytes(search.costs(), id / search.program().m) *
                           (1 - search.costs().recompute_keep);
      const int need = std::min(
          kShareSteps, choice.recompute[s] +
                           steps_for(excess_within(sim.ranks[r], level, f_end, b_start), saved));
      moves.push_back({Move::kRecompute, id, kShareSteps});
      if (need < kShareSteps && search.partial_sets())
        moves.push_back({Move::kRecompute, id, need});
    }
  }
  return moves;
}

// Moves that may shorten a fitting plan: reload earlier where a consumer waits, drop an
// offload, undo a recompute the search chose.
std::vector<Move> speed_moves(const Search& search, const Choice& choice, const Times& t,
                              bool allow_recompute, bool lower) {
  std::vector<Move> moves;
  const auto& cands = search.candidates();
  for (std::size_t c = 0; c < cands.size(); ++c) {
    if (choice.lead[c] == kNotOffloaded) continue;
    const Candidate& k = cands[c];
    const int id = static_cast<int>(c);
    if (choice.lead[c] < k.max_lead() && t.reload_wait[k.rank][k.b_instr] > 0)
      moves.push_back({Move::kLead, id, choice.lead[c] + 1});
    moves.push_back({Move::kLead, id, kNotOffloaded});
    if (lower && choice.share[c] > 1)  // move one step less of it
      moves.push_back({Move::kLead, id, 0, 0, true});
  }
  if (allow_recompute)
    for (std::size_t s = 0; s < choice.recompute.size(); ++s)
      if (choice.recompute[s] && !search.fixed_recompute(static_cast<int>(s))) {
        moves.push_back({Move::kRecompute, static_cast<int>(s), 0});
        if (lower && choice.recompute[s] > 1)  // re-run a step fewer of its layers
          moves.push_back({Move::kRecompute, static_cast<int>(s), 0, 0, true});
      }
  return moves;
}

// Whether `a` is a better plan than `b`: fits where b does not, less over budget, or (both
// fitting) a shorter step.
bool better(const Score& a, const Score& b) {
  if (a.excess == 0 && b.excess == 0) return a.step < b.step * (1 - 1e-12);
  if (a.excess == 0 || b.excess == 0) return a.excess == 0;
  return a.excess < b.excess * (1 - 1e-9);
}

}  // namespace

namespace {

// A repair move that lowers the excess, with its value: excess removed per second it adds to
// the step (a move that makes the plan fit rates highest, the fastest first).
struct Rated {
  int move = 0;
  int rank = 0;
  double value = 0;
  Score score;
};

int rank_of(const Search& search, const Move& m) {
  return m.kind == Move::kLead ? search.candidates()[m.index].rank : search.sets()[m.index].rank;
}

std::vector<Rated> rate_repairs(Search& search, const Choice& choice,
                                const std::vector<Move>& moves, const Score& now, double budget) {
  std::vector<Rated> out;
  for (std::size_t i = 0; i < moves.size() && search.budget_left(); ++i) {
    Choice next = choice;
    apply(next, moves[i]);
    const Score s = score_of(search.simulate(next), budget);
    if (!better(s, now)) continue;
    const double value = s.excess == 0 ? 1e300 - s.step
                                       : (now.excess - s.excess) /
                                             (std::max(0.0, s.step - now.step) + 1e-3 * now.step);
    out.push_back({static_cast<int>(i), rank_of(search, moves[i]), value, s});
  }
  return out;
}

// The index in `rated` of the highest value, -1 when empty.
int best_of(const std::vector<Rated>& rated) {
  int best = -1;
  for (std::size_t i = 0; i < rated.size(); ++i)
    if (best < 0 || rated[i].value > rated[best].value) best = static_cast<int>(i);
  return best;
}

// One repair step: the best move of each over-budget rank at once when that beats the single
// best move (ranks are nearly independent, so this saves a search round per rank), else the
// single best. Returns false when no move lowers the excess.
bool repair_step(Search& search, Choice& choice, const SimResult& sim, const Times& t,
                 double budget, bool allow_recompute) {
  const Score now = score_of(sim, budget);
  std::vector<Move> moves = repair_moves(search, choice, sim, t, budget, allow_recompute);
  std::vector<Rated> rated = rate_repairs(search, choice, moves, now, budget);
  const int best = best_of(rated);
  if (best < 0) return false;
  std::vector<int> per_rank(sim.ranks.size(), -1);
  for (std::size_t i = 0; i < rated.size(); ++i) {
    int& b = per_rank[rated[i].rank];
    if (b < 0 || rated[i].value > rated[b].value) b = static_cast<int>(i);
  }
  Choice all = choice;
  int applied = 0;
  for (int i : per_rank)
    if (i >= 0) {
      apply(all, moves[rated[i].move]);
      ++applied;
    }
  if (applied > 1 && search.budget_left() &&
      !better(rated[best].score, score_of(search.simulate(all), budget))) {
    choice = all;
    return true;
  }
  apply(choice, moves[rated[best].move]);
  return true;
}

// Up to `steps` repair moves from `choice`; whether it fits then.
bool repair(Search& search, Choice& choice, double budget, bool allow_recompute, int steps) {
  Times t;
  for (int i = 0; i < steps && search.budget_left(); ++i) {
    SimResult sim = search.simulate(choice, &t);
    const Score now = score_of(sim, budget);
    if (now.excess == 0) return true;
    if (!repair_step(search, choice, sim, t, budget, allow_recompute)) return false;
  }
  return fits_all(search.simulate(choice), budget);
}

// One pass over the speed moves from `choice` (fitting, scored `now`), taking each that shortens
// the step; a reload moved earlier that breaks the budget gets two repair moves to fit again
// (moving one reload usually needs room that another set's offload or a later reload makes),
// and a share lowered by one step that helps is lowered again at once. Whether any was taken.
bool speed_pass(Search& search, Choice& choice, Score& now, const Times& t, double budget,
                bool allow_recompute, bool lower) {
  constexpr int kRepairSteps = 2;
  bool changed = false;
  for (const Move& m : speed_moves(search, choice, t, allow_recompute, lower)) {
    for (bool again = true; again && search.budget_left() && changes(choice, m);) {
      again = false;
      Choice next = choice;
      apply(next, m);
      Score s = score_of(search.simulate(next), budget);
      const bool earlier = m.kind == Move::kLead && m.value != kNotOffloaded && !m.lower;
      if (s.excess > 0 && earlier && s.step < now.step * (1 - 1e-12) &&
          repair(search, next, budget, allow_recompute, kRepairSteps))
        s = score_of(search.simulate(next), budget);
      if (!better(s, now)) continue;
      choice = next;
      now = s;
      changed = true;
      again = m.lower;
    }
  }
  return changed;
}

}  // namespace

// Over budget: repair moves, steepest by excess removed per second added. Fitting: passes over
// the speed moves (speed_pass) until one takes none.
void improve(Search& search, Choice& choice, double budget, bool allow_recompute) {
  Times t;
  while (search.budget_left()) {
    SimResult sim = search.simulate(choice, &t);
    Score now = score_of(sim, budget);
    if (now.excess > 0) {
      if (!repair_step(search, choice, sim, t, budget, allow_recompute)) return;
      continue;
    }
    if (!speed_pass(search, choice, now, t, budget, allow_recompute, false)) return;
  }
}

void lower_shares(Search& search, Choice& choice, double budget, bool allow_recompute) {
  if (!search.partial_sets() || !search.budget_left()) return;
  Times t;
  SimResult sim = search.simulate(choice, &t);
  Score now = score_of(sim, budget);
  if (now.excess == 0) speed_pass(search, choice, now, t, budget, allow_recompute, true);
}

double host_footprint(const Search& search, const Choice& choice, const SimResult& sim,
                      const std::vector<std::vector<int>>& copy_of, bool whole_trips) {
  const auto& cands = search.candidates();
  double most = 0;
  for (int r = 0; r < search.program().p; ++r) {
    std::vector<std::pair<double, double>> changes;  // (time, +-bytes)
    for (const schedule::TimelineEvent& ev : sim.timeline.events) {
      if (ev.rank != r || ev.index < 0 || ev.index >= static_cast<int>(copy_of[r].size()) ||
          copy_of[r][ev.index] < 0)
        continue;
      const Candidate& k = cands[copy_of[r][ev.index]];
      const double bytes = whole_trips ? search.whole_bytes(k, choice) : search.bytes(k, choice);
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

}  // namespace stp::offload::detail
