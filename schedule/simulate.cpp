#include "schedule/simulate.h"

#include <algorithm>
#include <array>

#include "common/check.h"
#include "schedule/interpreter.h"

namespace stp::schedule {

namespace {

// A change of a rank's resident activation memory.
struct MemEvent {
  double time;
  bool alloc;        // at the same time, releases (false) sort before allocations (true)
  double bytes;      // signed
  int sets;          // signed: the main convention
  int sets_until_w;  // signed: the variant that holds deferred-W sets until W
};

double transfer(double bytes, double bandwidth) { return bandwidth > 0 ? bytes / bandwidth : 0.0; }

// Times the program while the Interpreter runs it.
class Simulator final : public Interpreter::Observer {
 public:
  Simulator(const Program& prog, const CostModel& costs, const SimOptions& options)
      : prog_(prog), c_(costs), opt_(options), p_(prog.p), S_(prog.stages()), m_(prog.m) {}

  SimResult run() {
    validate(c_, S_);
    STP_CHECK(p_ >= 1 && m_ >= 1 && static_cast<int>(prog_.ranks.size()) == p_ && S_ >= 1,
              "simulate: malformed program (p=", p_, ", m=", m_, ", ", prog_.ranks.size(),
              " rank lists, ", S_, " stages); run verify() first");
    const std::size_t n = static_cast<std::size_t>(S_) * m_;
    f_in_.assign(n, 0);
    b_in_.assign(n, 0);
    offload_end_.assign(n, 0);
    reload_end_.assign(n, -1);
    w_reload_end_.assign(n, -1);
    b_done_.assign(n, 0);
    recomputed_.assign(n, 0);
    arrival_.assign(p_, {});
    for (int r = 0; r < p_; ++r) arrival_[r].assign(prog_.ranks[r].size(), 0);
    link_free_.assign(static_cast<std::size_t>(p_) * p_, 0);
    rank_chunk_stage_.assign(p_, std::vector<int>(std::max(prog_.v, 1), -1));
    for (int s = 0; s < S_; ++s) rank_chunk_stage_[prog_.stage_rank[s]][prog_.stage_chunk[s]] = s;
    state_.assign(p_, RankState{});
    mem_.assign(p_, {});
    result_.ranks.assign(p_, RankStats{});
    result_.timeline.p = p_;
    result_.timeline.title = str_cat(prog_.kind, " p=", p_, " m=", m_);

    Interpreter interpreter(prog_, ChannelLayout::kPerPairDirection);
    interpreter.run(*this);
    for (int r = 0; r < p_; ++r) {
      const std::size_t pc = interpreter.pc(r);
      STP_CHECK(interpreter.finished(r), "simulate: rank ", r, " never gets past instr ", pc, " (",
                to_string(prog_.ranks[r][pc]),
                "): the program deadlocks; run verify() for the cause");
    }
    finish();
    return std::move(result_);
  }

 private:
  struct RankState {
    double clock = 0;                   // when the rank is free for its next instruction
    bool started = false;               // ran a compute instruction
    double d2h_free = 0, h2d_free = 0;  // when each host channel is free
  };

  std::size_t at(int stage, int mb) const { return static_cast<std::size_t>(stage) * m_ + mb; }

  void compute(int r, std::size_t index, const Instr& in) {
    RankState& st = state_[r];
    RankStats& rs = result_.ranks[r];
    double ready_p2p = st.clock, ready_reload = st.clock;
    std::array<double, 2> recomputed{};  // per part: the recompute share of a backward's set
    for (std::size_t i = 0; i < in.parts.size(); ++i) {
      const Part& part = in.parts[i];
      const std::size_t k = at(part.stage, part.mb);
      if (part.pass == Pass::kF) {
        recomputed_[k] = part.recompute ? part.recompute_share : 0.0;
        if (part.stage > 0 && prog_.stage_rank[part.stage - 1] != r)
          ready_p2p = std::max(ready_p2p, f_in_[k]);
      } else if (part.pass == Pass::kB || part.pass == Pass::kBW) {
        if (i < recomputed.size()) recomputed[i] = recomputed_[k];
        if (part.stage < S_ - 1 && prog_.stage_rank[part.stage + 1] != r)
          ready_p2p = std::max(ready_p2p, b_in_[k]);
        if (reload_end_[k] >= 0) ready_reload = std::max(ready_reload, reload_end_[k]);
      } else if (w_reload_end_[k] >= 0) {  // kW after a second trip
        ready_reload = std::max(ready_reload, w_reload_end_[k]);
      }
    }
    const double begin = std::max(ready_p2p, ready_reload);
    const InstrCost cost = instr_cost(in, c_, recomputed);
    const double end = begin + cost.duration;
    if (!st.started) {
      st.started = true;
      rs.start = begin;
    }
    rs.end = end;
    rs.busy += cost.busy;
    rs.exposed_tp += cost.exposed_tp;
    const double p2p_wait = ready_p2p - st.clock;
    const double reload_wait = begin - ready_p2p;
    rs.reload_wait += reload_wait;

    // Memory at the instruction's end (Note [Activation memory convention]); a recomputed
    // set holds kept_share of its bytes until its backward starts, all of them during it.
    for (const Part& part : in.parts) {
      const std::size_t k = at(part.stage, part.mb);
      const double bytes = set_bytes(c_, part.stage);
      const double g = recomputed_[k];
      const double rebuilt = g <= 0   ? 0.0
                             : g >= 1 ? bytes * (1 - c_.recompute_keep)
                                      : bytes * g * (1 - c_.recompute_keep);
      if (part.pass == Pass::kB) b_done_[k] = 1;
      if ((part.pass == Pass::kB || part.pass == Pass::kBW) && rebuilt > 0)
        mem_[r].push_back({begin, true, rebuilt, 0, 0});
      switch (part.pass) {
        case Pass::kF: mem_[r].push_back({end, true, bytes - rebuilt, 1, 1}); break;
        case Pass::kB: {  // keeps w_held_fraction of the set: may grow it (> 1)
          const double change = bytes * (c_.w_held_fraction - 1);
          mem_[r].push_back({end, change > 0, change, -1, 0});
          break;
        }
        case Pass::kBW: mem_[r].push_back({end, false, -bytes, -1, -1}); break;
        case Pass::kW: mem_[r].push_back({end, false, -bytes * c_.w_held_fraction, 0, -1}); break;
      }
    }
    if (opt_.record_timeline) {
      TimelineEvent ev = event(r, index, in, kCategoryCompute, st.clock, end);
      ev.parts = in.parts;
      ev.p2p_wait = p2p_wait;
      ev.reload_wait = reload_wait;
      ev.tp_wait = cost.exposed_tp;
      result_.timeline.events.push_back(std::move(ev));
    }
    st.clock = end;
  }

  TimelineEvent event(int r, std::size_t index, const Instr& in, const char* category, double start,
                      double end) const {
    TimelineEvent ev;
    ev.rank = r;
    ev.index = static_cast<int>(index);
    ev.name = to_string(in);
    ev.category = category;
    ev.op = in.op;
    ev.parts = {in.ref};
    ev.start = start;
    ev.end = end;
    return ev;
  }

  void send(int r, std::size_t index, const Instr& in) {
    double& link = link_free_[r * p_ + in.peer];
    const double leave = std::max(state_[r].clock, link);
    const double wire = transfer(c_.p2p_bytes, c_.p2p_bandwidth);
    link = leave + wire;
    arrival_[r][index] = leave + wire + c_.p2p_latency;
    if (opt_.record_timeline)
      result_.timeline.events.push_back(
          event(r, index, in, kCategoryP2P, leave, arrival_[r][index]));
  }

  void host_copy(int r, std::size_t index, const Instr& in) {
    RankState& st = state_[r];
    const int chunk = in.ref.chunk;
    const int s = chunk >= 0 && chunk < static_cast<int>(rank_chunk_stage_[r].size())
                      ? rank_chunk_stage_[r][chunk]
                      : -1;
    STP_CHECK(s >= 0 && in.ref.mb >= 0 && in.ref.mb < m_, "simulate: rank ", r, " has a malformed ",
              to_string(in), "; run verify() first");
    const std::size_t k = at(s, in.ref.mb);
    // After its B the set holds what its deferred W reads (the second trip); before it a
    // recomputed set holds kept_share of its bytes. A partial trip moves in.share of that and
    // leaves the set counted as resident (the rest of it stays).
    const bool w_trip = b_done_[k] != 0;
    const double held = w_trip               ? c_.w_held_fraction
                        : recomputed_[k] > 0 ? kept_share(c_, recomputed_[k])
                                             : 1.0;
    const double bytes = set_bytes(c_, s) * held * c_.offload_fraction * in.share;
    const bool whole = in.share >= 1;
    const int sets =
        w_trip || !whole ? 0 : 1;  // the main convention no longer counts a set after B
    const double wire = transfer(bytes, c_.host_bandwidth);
    double start, end;
    if (in.op == Op::kOffload) {
      start = std::max(st.clock, st.d2h_free);
      st.d2h_free = start + wire;
      end = start + wire + c_.host_latency;
      offload_end_[k] = end;
      mem_[r].push_back({end, false, -bytes, -sets, whole ? -1 : 0});
      result_.ranks[r].offloaded_bytes += bytes;
    } else {
      start = std::max({st.clock, st.h2d_free, offload_end_[k]});
      st.h2d_free = start + wire;
      end = start + wire + c_.host_latency;
      (w_trip ? w_reload_end_ : reload_end_)[k] = end;
      // The destination is allocated when the RELOAD is issued (as the engine does), even if
      // the H2D channel only starts the copy later.
      mem_[r].push_back({st.clock, true, bytes, sets, whole ? 1 : 0});
    }
    if (opt_.record_timeline)
      result_.timeline.events.push_back(event(
          r, index, in, in.op == Op::kOffload ? kCategoryOffload : kCategoryReload, start, end));
  }

  void reach(int r, std::size_t index, const Instr& in) override {
    if (in.op == Op::kSendF || in.op == Op::kSendB)
      STP_CHECK(in.peer >= 0 && in.peer < p_ && in.peer != r, "simulate: rank ", r, " instr ",
                index, " sends to rank ", in.peer, "; run verify() first");
    if (in.op == Op::kRecvF || in.op == Op::kRecvB)
      STP_CHECK(in.peer >= 0 && in.peer < p_ && in.peer != r && in.ref.stage >= 0 &&
                    in.ref.stage < S_ && in.ref.mb >= 0 && in.ref.mb < m_,
                "simulate: rank ", r, " has a malformed ", to_string(in), "; run verify() first");
  }

  void execute(int r, std::size_t index, const Instr& in, std::optional<InstrRef> sent) override {
    switch (in.op) {
      case Op::kF:
      case Op::kB:
      case Op::kW:
      case Op::kBW:
      case Op::kFF:
      case Op::kFB:
      case Op::kFW: compute(r, index, in); break;
      case Op::kSendF:
      case Op::kSendB: send(r, index, in); break;
      case Op::kRecvF:
      case Op::kRecvB:  // hands the arrival time to the compute that consumes it
        (in.op == Op::kRecvF ? f_in_ : b_in_)[at(in.ref.stage, in.ref.mb)] =
            arrival_[sent->rank][sent->index];
        break;
      case Op::kOffload:
      case Op::kReload: host_copy(r, index, in); break;
    }
  }

  void finish() {
    for (const RankStats& rs : result_.ranks) result_.makespan = std::max(result_.makespan, rs.end);
    for (int r = 0; r < p_; ++r) {
      RankStats& rs = result_.ranks[r];
      rs.idle = std::max(0.0, rs.end - rs.start - rs.busy - rs.exposed_tp);
      rs.idle_in_step = std::max(0.0, result_.makespan - rs.busy - rs.exposed_tp);
      auto& events = mem_[r];
      std::stable_sort(events.begin(), events.end(), [](const MemEvent& a, const MemEvent& b) {
        return a.time < b.time || (a.time == b.time && !a.alloc && b.alloc);
      });
      double bytes = 0;
      int sets = 0, sets_w = 0;
      for (const MemEvent& e : events) {
        bytes += e.bytes;
        sets += e.sets;
        sets_w += e.sets_until_w;
        rs.peak_bytes = std::max(rs.peak_bytes, bytes);
        rs.peak_sets = std::max(rs.peak_sets, sets);
        rs.peak_sets_until_w = std::max(rs.peak_sets_until_w, sets_w);
        if (opt_.record_memory) {
          if (!rs.memory.empty() && rs.memory.back().time == e.time) {
            rs.memory.back().bytes = bytes;
            rs.memory.back().sets = sets;
          } else {
            rs.memory.push_back({e.time, bytes, sets});
          }
        }
      }
      STP_ASSERT(sets == 0, "rank ", r, " ends the step holding ", sets, " activation sets");
    }
  }

  const Program& prog_;
  const CostModel& c_;
  const SimOptions& opt_;
  const int p_, S_, m_;
  std::vector<double> f_in_, b_in_;   // (S*m) arrival of a forward's input / a backward's gradient
  std::vector<double> offload_end_;   // (S*m) when the set's OFFLOAD copy completed
  std::vector<double> reload_end_;    // (S*m) when its RELOAD copy completes, -1 if none
  std::vector<double> w_reload_end_;  // (S*m) the same for the second trip (before W)
  std::vector<char> b_done_;          // (S*m) its B ran: a copy now is the second trip
  std::vector<double> recomputed_;    // (S*m) its F part's recompute_share, 0 without recompute
  std::vector<std::vector<double>> arrival_;        // [rank][instr] when a SEND's message arrives
  std::vector<double> link_free_;                   // (p*p) when the directed link is free
  std::vector<std::vector<int>> rank_chunk_stage_;  // [rank][chunk] -> stage
  std::vector<RankState> state_;                    // (p)
  std::vector<std::vector<MemEvent>> mem_;          // (p) memory changes, unsorted
  SimResult result_;
};

}  // namespace

namespace {

// The largest `field` over the ranks (0 when there are none).
template <class T>
T max_over(const std::vector<RankStats>& ranks, T RankStats::*field) {
  T x = 0;
  for (const RankStats& r : ranks) x = std::max(x, r.*field);
  return x;
}

}  // namespace

double SimResult::max_idle() const { return max_over(ranks, &RankStats::idle); }
double SimResult::max_exposed_tp() const { return max_over(ranks, &RankStats::exposed_tp); }
int SimResult::max_peak_sets() const { return max_over(ranks, &RankStats::peak_sets); }
int SimResult::max_peak_sets_until_w() const {
  return max_over(ranks, &RankStats::peak_sets_until_w);
}
double SimResult::max_peak_bytes() const { return max_over(ranks, &RankStats::peak_bytes); }

SimResult simulate(const Program& program, const CostModel& costs, const SimOptions& options) {
  return Simulator(program, costs, options).run();
}

}  // namespace stp::schedule
