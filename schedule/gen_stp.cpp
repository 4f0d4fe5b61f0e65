// STP: the V-shaped schedule of braided blocks (stp-notes §2.3), phase by phase as the
// reference generator emits it, with the reference's counter-based microbatch indices.
#include <algorithm>

#include "common/check.h"
#include "schedule/cost_model.h"
#include "schedule/generators.h"
#include "schedule/interpreter.h"
#include "schedule/p2p.h"
#include "schedule/rank_builder.h"

namespace stp::schedule {

namespace {

// One rank of the reference order. REQUIRES m >= 3p-1 (every phase count is >= 0 there).
void stp_rank(Program& prog, int r, int m) {
  const int p = prog.p;
  RankBuilder b(prog, r, m);

  const int n_f0 = 2 * (p - r - 1);                      // step 1: chunk-0 warm-up forwards
  const int n_f0f1 = r + 1;                              // step 2: (F0, F1) up to the turn of the V
  const int n_more_f0 = r + 1;                           // step 3: one F0 if odd, then FF0 pairs
  const int n_fb1_fw0 = p - r - 1;                       // step 4: (FB1 W deferred, FW0) pairs
  const int n_steady = 2 * (m - 3 * p + 1) + 1 + 2 * r;  // step 5: FB1, FB0, ..., FB1
  const int n_steady_fused = n_steady - r;               //   of which the first ones fuse W
  const int n_b0_fb1 = 2 * p - 2 - r;                    // step 6: (B0, FB1 W deferred)
  const int n_b0b1 = r + 1;                              // step 7: (B0, B1)
  const int n_b0_ww = 1 + 2 * (p - r - 1);               // step 8: B0 on even i, W W on odd i
  const int n_tail_w = 2 * r;                            // step 9: the last deferred W's
  STP_ASSERT(n_steady >= 1, "stp phases need m >= 3p-1, got m=", m, " p=", p);

  // Step 1 — nF0: chunk-0 warm-up.
  for (int i = 0; i < n_f0; ++i) b.f(0);
  // Step 2 — n(F0 F1): reach the turn of the V.
  for (int i = 0; i < n_f0f1; ++i) {
    b.f(0);
    b.f(1);
  }
  // Step 3 — r+1 more chunk-0 forwards: a single F0 when odd, then braided FF0 pairs.
  if (n_more_f0 % 2 == 1) b.f(0);
  for (int i = 0; i < n_more_f0 / 2; ++i) b.ff(0);
  // Step 4 — n(FB1 FW0): first braids; each FW0 runs the W the FB1 just deferred.
  for (int i = 0; i < n_fb1_fw0; ++i) {
    b.fb(1, 1, kDeferW);
    b.fw(0);
  }
  // Step 5 — steady state: braided FB blocks alternating chunk 1, 0, 1, ...; the last r defer W.
  for (int i = 0; i < n_steady; ++i) {
    const int chunk = i % 2 == 0 ? 1 : 0;
    b.fb(chunk, chunk, i < n_steady_fused ? kFuseW : kDeferW);
  }
  // Step 6 — n(B0 FB1): chunk-0 forwards are done.
  for (int i = 0; i < n_b0_fb1; ++i) {
    b.b(0, kFuseW);
    b.fb(1, 1, kDeferW);
  }
  // Step 7 — n(B0 B1): standalone backwards, W fused.
  for (int i = 0; i < n_b0b1; ++i) {
    b.b(0, kFuseW);
    b.b(1, kFuseW);
  }
  // Step 8 — B0 and pairs of deferred W filling the cool-down.
  for (int i = 0; i < n_b0_ww; ++i) {
    if (i % 2 == 0) {
      b.b(0, kFuseW);
    } else {
      b.w();
      b.w();
    }
  }
  // Step 9 — nW: the rest of the deferred W's.
  for (int i = 0; i < n_tail_w; ++i) b.w();
  b.finish();
}

// Moves deferred W's into the idle gaps of a program, timed at unit costs (T_F = T_B = T_W =
// 1, free P2P) while the Interpreter runs it: whenever a rank would wait at least T_W for its
// inputs before a compute and the oldest deferred W (the first W part after it) is a standalone
// W whose B already ran, that W moves in front of the compute (and its RECVs). The FIFO order
// of W's is kept, and no instruction starts later than before: a moved W ends before the
// instruction it now precedes could have started.
class GapFiller final : public Interpreter::Observer {
 public:
  explicit GapFiller(const Program& prog)
      : prog_(prog),
        m_(prog.m),
        clock_(prog.p, 0),
        ready_(at(prog.stages(), 0) * 2, 0),
        b_run_(at(prog.stages(), 0), 0),
        sent_(prog.p),
        moved_(prog.p),
        moves_(prog.p) {
    for (int r = 0; r < prog.p; ++r) {
      sent_[r].assign(prog.ranks[r].size(), 0);
      moved_[r].assign(prog.ranks[r].size(), 0);
    }
  }

  void reach(int, std::size_t, const Instr&) override {}

  void execute(int r, std::size_t i, const Instr& in, std::optional<InstrRef> send) override {
    if (send) {  // a RECV: its input arrived when it was sent
      ready_[input(in.ref, in.op == Op::kRecvB)] = sent_[send->rank][send->index];
      return;
    }
    if (!in.is_compute()) {  // a SEND: leaves now, arrives at once
      sent_[r][i] = clock_[r];
      return;
    }
    if (moved_[r][i]) return;  // a W that already ran in a gap
    double t_ready = 0;        // the latest received input (same-rank ones are ready)
    for (const Part& part : in.parts)
      if (part.pass != Pass::kW)
        t_ready = std::max(t_ready, ready_[input(part, part.pass != Pass::kF)]);
    std::size_t before = i;  // a moved W goes in front of the RECVs insert_p2p put before `in`
    while (before > 0 && (prog_.ranks[r][before - 1].op == Op::kRecvF ||
                          prog_.ranks[r][before - 1].op == Op::kRecvB))
      --before;
    while (t_ready >= clock_[r] + 1) {  // a gap of at least T_W
      const std::size_t w = oldest_w(r, i);
      if (w == kNone) break;
      moved_[r][w] = 1;
      moves_[r].push_back({before, w});
      clock_[r] += instr_cost(prog_.ranks[r][w], unit_costs_).duration;
    }
    clock_[r] = std::max(clock_[r], t_ready) + instr_cost(in, unit_costs_).duration;
    for (const Part& part : in.parts)
      if (part.pass == Pass::kB) b_run_[at(part.stage, part.mb)] = 1;
  }

  // The program with the W's moved.
  void apply(Program& prog) const {
    for (int r = 0; r < prog.p; ++r) {
      std::vector<Instr> list;
      auto move = moves_[r].begin();
      for (std::size_t i = 0; i < prog.ranks[r].size(); ++i) {
        for (; move != moves_[r].end() && move->before == i; ++move)
          list.push_back(prog.ranks[r][move->w]);
        if (!moved_[r][i]) list.push_back(prog.ranks[r][i]);
      }
      prog.ranks[r] = std::move(list);
    }
  }

 private:
  static constexpr std::size_t kNone = static_cast<std::size_t>(-1);
  struct Move {
    std::size_t before;  // instruction index the W moves in front of
    std::size_t w;       // the W's index
  };

  std::size_t at(int stage, int mb) const { return static_cast<std::size_t>(stage) * m_ + mb; }
  std::size_t input(const Part& part, bool backward) const {
    return at(part.stage, part.mb) * 2 + (backward ? 1 : 0);
  }

  // The oldest deferred W of rank r at or after instruction i when it can move, else kNone.
  std::size_t oldest_w(int r, std::size_t i) const {
    const auto& list = prog_.ranks[r];
    for (; i < list.size(); ++i) {
      if (!list[i].is_compute() || moved_[r][i] || list[i].parts.back().pass != Pass::kW) continue;
      const Part& w = list[i].parts[0];
      return list[i].op == Op::kW && b_run_[at(w.stage, w.mb)] ? i : kNone;
    }
    return kNone;
  }

  const Program& prog_;
  const int m_;
  const CostModel unit_costs_;             // T_F = T_B = T_W = 1, no TP or P2P time
  std::vector<double> clock_;              // (p) when the rank is free
  std::vector<double> ready_;              // (S*m*2) arrival of a part's received input
  std::vector<char> b_run_;                // (S*m) B ran (its W may move up)
  std::vector<std::vector<double>> sent_;  // [rank][instr] when a SEND's message arrives
  std::vector<std::vector<char>> moved_;   // [rank][instr] a W moved into a gap
  std::vector<std::vector<Move>> moves_;   // (p) in the order the ranks ran them
};

void fill_gaps_with_w(Program& prog) {
  GapFiller filler(prog);
  Interpreter interpreter(prog, ChannelLayout::kPerPairDirection);
  interpreter.run(filler);
  for (int r = 0; r < prog.p; ++r)
    STP_ASSERT(interpreter.finished(r), "fill_gaps_with_w: rank ", r, " stuck at ",
               interpreter.pc(r));
  filler.apply(prog);
}

}  // namespace

Program make_stp(int p, int m) {
  STP_CHECK(p >= 1, "pp=", p, " must be >= 1");
  STP_CHECK(m >= 2 * p, "microbatches=", m, " must be >= 2*pp=", 2 * p, " for the stp schedule");
  if (m >= 3 * p - 1) {
    Program prog = empty_program("stp", p, m, 2, Placement::kV);
    for (int r = 0; r < p; ++r) stp_rank(prog, r, m);
    insert_p2p(prog);
    return prog;
  }
  // 2p <= m < 3p-1: the reference phases need m >= 3p-1 (stp-notes §2.4). Build the smallest
  // program they support and keep microbatches 0..m-1: removing whole microbatches keeps every
  // remaining dependency and order, so the program stays valid and deadlock-free. The removed
  // work leaves holes (mostly where the cool-down's deferred W's sat between B0's); move the
  // deferred W's into them. At T_F = T_B = T_W the bubble is then (p-1) + (3p-1-m): 2(p-1) at
  // m = 2p, falling by one per microbatch to the reference's p-1 (docs/schedule.md).
  const int m_full = 3 * p - 1;
  Program prog = empty_program("stp", p, m_full, 2, Placement::kV);
  for (int r = 0; r < p; ++r) stp_rank(prog, r, m_full);
  drop_microbatches(prog, m);
  insert_p2p(prog);
  fill_gaps_with_w(prog);
  return prog;
}

}  // namespace stp::schedule
