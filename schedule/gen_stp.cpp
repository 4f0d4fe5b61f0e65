// STP: the V-shaped schedule of braided blocks (stp-notes §2.3), phase by phase as the
// reference generator emits it, with the reference's counter-based microbatch indices.
#include <algorithm>

#include "schedule/generators.h"
#include "schedule/p2p.h"
#include "schedule/rank_builder.h"
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

// Moves deferred W's into the idle gaps of a compute-only program, timed at unit costs
// (T_F = T_B = T_W = 1, free P2P) in one dataflow pass: whenever a rank would wait at least
// T_W before an instruction and the oldest deferred W (the first W part after it) is a
// standalone W whose B already ran, that W moves in front of the instruction. The FIFO order of
// W's is kept, and no instruction starts later than before: a moved W ends before the
// instruction it now precedes could have started.
void fill_gaps_with_w(Program& prog) {
  const int p = prog.p, S = prog.stages(), m = prog.m;
  constexpr double kUnknown = -1;
  auto at = [m](int stage, int mb) { return static_cast<std::size_t>(stage) * m + mb; };
  std::vector<double> f_end(static_cast<std::size_t>(S) * m, kUnknown);
  std::vector<double> b_end(static_cast<std::size_t>(S) * m, kUnknown);
  std::vector<char> b_run(static_cast<std::size_t>(S) * m, 0);  // B ran (its W may move up)
  std::vector<std::size_t> pc(p, 0);
  std::vector<double> clock(p, 0);

  // When the instruction's inputs from other instructions are ready; kUnknown if not yet known.
  auto ready = [&](const Instr& in) {
    double t = 0;
    for (const Part& part : in.parts) {
      double dep = 0;
      if (part.pass == Pass::kF && part.stage > 0) dep = f_end[at(part.stage - 1, part.mb)];
      if ((part.pass == Pass::kB || part.pass == Pass::kBW) && part.stage < S - 1)
        dep = b_end[at(part.stage + 1, part.mb)];
      if (dep == kUnknown) return kUnknown;
      t = std::max(t, dep);
    }
    return t;
  };
  bool progress = true;
  while (progress) {
    progress = false;
    for (int r = 0; r < p; ++r) {
      auto& list = prog.ranks[r];
      while (pc[r] < list.size()) {
        const double t_ready = ready(list[pc[r]]);
        if (t_ready == kUnknown) break;  // an input is computed later on another rank
        if (t_ready >= clock[r] + 1) {   // a gap of at least T_W: try the oldest deferred W
          std::size_t w = pc[r];
          while (w < list.size() && list[w].parts.back().pass != Pass::kW) ++w;
          if (w < list.size() && list[w].op == Op::kW &&
              b_run[at(list[w].parts[0].stage, list[w].parts[0].mb)]) {
            Instr moving = std::move(list[w]);
            list.erase(list.begin() + static_cast<std::ptrdiff_t>(w));
            list.insert(list.begin() + static_cast<std::ptrdiff_t>(pc[r]), std::move(moving));
            clock[r] += 1;
            ++pc[r];
            progress = true;
            continue;
          }
        }
        const Instr& in = list[pc[r]];
        const double end = std::max(clock[r], t_ready) + static_cast<double>(in.parts.size()) +
                           (in.parts.back().pass == Pass::kBW ? 1 : 0);
        for (const Part& part : in.parts) {
          if (part.pass == Pass::kF) f_end[at(part.stage, part.mb)] = end;
          if (part.pass == Pass::kB || part.pass == Pass::kBW) b_end[at(part.stage, part.mb)] = end;
          if (part.pass == Pass::kB) b_run[at(part.stage, part.mb)] = 1;
        }
        clock[r] = end;
        ++pc[r];
        progress = true;
      }
    }
  }
  for (int r = 0; r < p; ++r)
    STP_ASSERT(pc[r] == prog.ranks[r].size(), "fill_gaps_with_w: rank ", r, " stuck at ", pc[r]);
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
  fill_gaps_with_w(prog);
  insert_p2p(prog);
  return prog;
}

}  // namespace stp::schedule
