// STP: the V-shaped schedule of braided blocks (stp-notes §2.3), phase by phase as the
// reference generator emits it, with the reference's counter-based microbatch indices.
#include <algorithm>

#include "schedule/generators.h"
#include "schedule/p2p.h"
#include "schedule/rank_builder.h"
#include "schedule/simulate.h"
#include "stp/check.h"

namespace stp::schedule {

namespace {

// One rank of the reference order. REQUIRES m >= 3p-1 (every phase count is >= 0 there).
void stp_rank(Program& prog, int r, int m) {
  const int p = prog.p;
  RankBuilder b(prog, r, m);

  const int n_f0 = 2 * (p - r - 1);             // step 1: chunk-0 warm-up forwards
  const int n_f0f1 = r + 1;                     // step 2: (F0, F1) up to the turn of the V
  const int n_more_f0 = r + 1;                  // step 3: one F0 if odd, then FF0 pairs
  const int n_fb1_fw0 = p - r - 1;              // step 4: (FB1 W deferred, FW0) pairs
  const int n_steady = 2 * (m - 3 * p + 1) + 1 + 2 * r;  // step 5: FB1, FB0, ..., FB1
  const int n_steady_fused = n_steady - r;      //   of which the first ones fuse W
  const int n_b0_fb1 = 2 * p - 2 - r;           // step 6: (B0, FB1 W deferred)
  const int n_b0b1 = r + 1;                     // step 7: (B0, B1)
  const int n_b0_ww = 1 + 2 * (p - r - 1);      // step 8: B0 on even i, W W on odd i
  const int n_tail_w = 2 * r;                   // step 9: the last deferred W's
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

// One rank of the DualPipeV order (DeepSeek's DualPipe "cut in half", as PyTorch's
// ScheduleDualPipeV emits it): the same V and braided blocks, but F0 braided with B1 and F1 with
// B0, and a warm-up 2p-1-r forwards deep, so every phase count is >= 0 for m >= 2p. Its bubble
// at T_F = T_B = T_W is 2(p-1).
void dualpipe_v_rank(Program& prog, int r, int m) {
  const int p = prog.p;
  RankBuilder b(prog, r, m);
  const int n_f0 = 2 * (p - r - 1);       // step 1: chunk-0 warm-up
  const int n_f0f1 = r + 1;               // step 2: (F0, F1) up to the turn
  const int n_b1wf1 = p - r - 1;          // step 3: (B1, W, F1)
  const int n_main = m - 2 * p + r + 1;   // step 4: (F0&B1, F1&B0), W fused
  const int n_b1_f1b0 = p - r - 1;        // step 5: (B1, F1&B0)
  const int n_b1b0 = r + 1;               // step 6: (B1, B0); the second half defer W
  const int n_w_b0 = p - r - 1;           // step 7: (W, B0)
  const int n_tail_w = r + 1;             // step 8: W
  STP_ASSERT(n_main >= 1, "dualpipe-v phases need m >= 2p, got m=", m, " p=", p);

  for (int i = 0; i < n_f0; ++i) b.f(0);
  for (int i = 0; i < n_f0f1; ++i) {
    b.f(0);
    b.f(1);
  }
  for (int i = 0; i < n_b1wf1; ++i) {
    b.b(1, kDeferW);
    b.w();
    b.f(1);
  }
  for (int i = 0; i < n_main; ++i) {
    if (i == 0 && r == p - 1) {  // the turn of the V: not braided, to start the backward early
      b.f(0);
      b.b(1, kFuseW);
    } else {
      b.fb(0, 1, kFuseW);
    }
    b.fb(1, 0, kFuseW);
  }
  for (int i = 0; i < n_b1_f1b0; ++i) {
    b.b(1, kFuseW);
    b.fb(1, 0, kFuseW);
  }
  bool defer = false;
  for (int i = 0; i < n_b1b0; ++i) {
    if (i == n_b1b0 / 2 && r % 2 == 1) defer = true;
    b.b(1, !defer);
    if (i == n_b1b0 / 2 && r % 2 == 0) defer = true;
    b.b(0, !defer);
  }
  for (int i = 0; i < n_w_b0; ++i) {
    if (b.deferred() > 0) b.w();
    b.b(0, !defer);
  }
  for (int i = 0; i < n_tail_w; ++i)
    if (b.deferred() > 0) b.w();
  while (b.deferred() > 0) b.w();
  b.finish();
}

// Moves deferred W's into the idle gaps of a program (with P2P), simulated at unit costs:
// wherever a rank waits at least T_W before a compute instruction and the oldest deferred W
// (the first W part after that point) is a standalone W whose B ran before it, that W moves
// into the gap. The FIFO order of W's is kept, and no instruction starts later than before (a
// moved W ends before the instruction it precedes could start). Repeats until nothing moves.
void fill_gaps_with_w(Program& prog) {
  const CostModel unit;  // T_F = T_B = T_W = 1, T_AR = 0
  SimOptions options;
  options.record_timeline = true;
  for (int sweep = 0; sweep < 64 * prog.m; ++sweep) {
    const SimResult sim = simulate(prog, unit, options);
    bool moved = false;
    std::vector<std::vector<std::size_t>> gaps(prog.p);  // instructions a rank waits before
    for (const TimelineEvent& ev : sim.timeline.events)
      if (ev.category == kCategoryCompute && ev.p2p_wait >= unit.t_w)
        gaps[ev.rank].push_back(static_cast<std::size_t>(ev.index));
    for (int r = 0; r < prog.p; ++r) {
      auto& list = prog.ranks[r];
      for (std::size_t gap : gaps[r]) {  // the first gap the oldest deferred W can fill
        std::size_t w = gap;
        while (w < list.size() && !(list[w].is_compute() && list[w].parts.back().pass == Pass::kW))
          ++w;
        if (w == list.size() || list[w].op != Op::kW) break;  // none left, or braided in an FW
        const Part& wp = list[w].parts[0];
        bool b_before = false;
        for (std::size_t i = 0; i < gap && !b_before; ++i)
          for (const Part& part : list[i].parts)
            b_before = b_before ||
                       (part.pass == Pass::kB && part.stage == wp.stage && part.mb == wp.mb);
        if (!b_before) continue;
        Instr moving = list[w];
        list.erase(list.begin() + static_cast<std::ptrdiff_t>(w));
        list.insert(list.begin() + static_cast<std::ptrdiff_t>(gap), std::move(moving));
        moved = true;
        break;  // timings changed: simulate again
      }
    }
    if (!moved) return;
  }
}

}  // namespace

Program make_stp(int p, int m) {
  STP_CHECK(p >= 1, "pp=", p, " must be >= 1");
  STP_CHECK(m >= 2 * p, "microbatches=", m, " must be >= 2*pp=", 2 * p,
            " for the stp schedule");
  if (m >= 3 * p - 1) {
    Program prog = empty_program("stp", p, m, 2, Placement::kV);
    for (int r = 0; r < p; ++r) stp_rank(prog, r, m);
    insert_p2p(prog);
    return prog;
  }
  // 2p <= m < 3p-1: the reference phases need m >= 3p-1 (stp-notes §2.4). Two valid programs,
  // each with its idle gaps filled by deferred W's; keep the one with less bubble at
  // T_F = T_B = T_W (docs/schedule.md "STP for m < 3p-1").
  //  (a) the m' = 3p-1 reference program without microbatches m..m'-1: removing whole
  //      microbatches keeps every remaining dependency and order;
  //  (b) the DualPipeV order.
  const int m_full = 3 * p - 1;
  Program truncated = empty_program("stp", p, m_full, 2, Placement::kV);
  for (int r = 0; r < p; ++r) stp_rank(truncated, r, m_full);
  drop_microbatches(truncated, m);
  insert_p2p(truncated);
  fill_gaps_with_w(truncated);

  Program dualpipe = empty_program("stp", p, m, 2, Placement::kV);
  for (int r = 0; r < p; ++r) dualpipe_v_rank(dualpipe, r, m);
  insert_p2p(dualpipe);
  fill_gaps_with_w(dualpipe);

  const CostModel unit;
  const double idle_truncated = simulate(truncated, unit).max_idle();
  const double idle_dualpipe = simulate(dualpipe, unit).max_idle();
  return idle_dualpipe < idle_truncated ? dualpipe : truncated;
}

}  // namespace stp::schedule
