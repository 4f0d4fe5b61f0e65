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

}  // namespace

Program make_stp(int p, int m) {
  STP_CHECK(p >= 1, "pp=", p, " must be >= 1");
  STP_CHECK(m >= 2 * p, "microbatches=", m, " must be >= 2*pp=", 2 * p,
            " for the stp schedule");
  // The reference phases need m >= 3p-1 (stp-notes §2.4). Below that, build the smallest
  // program they support and keep microbatches 0..m-1: removing whole microbatches keeps every
  // remaining dependency and order, so the program stays valid and deadlock-free.
  const int m_full = std::max(m, 3 * p - 1);
  Program prog = empty_program("stp", p, m_full, 2, Placement::kV);
  for (int r = 0; r < p; ++r) stp_rank(prog, r, m_full);
  if (m_full > m) drop_microbatches(prog, m);
  insert_p2p(prog);
  return prog;
}

}  // namespace stp::schedule
