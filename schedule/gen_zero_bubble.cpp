// Zero-bubble schedules (Qi et al., "Zero Bubble Pipeline Parallelism", 2023): B and W split,
// deferred W filling the bubbles.
#include <algorithm>

#include "common/check.h"
#include "schedule/generators.h"
#include "schedule/p2p.h"
#include "schedule/rank_builder.h"

namespace stp::schedule {

// ZB-H1: 1F1B's warm-up, then rank r keeps r weight gradients deferred so that they fill the
// cool-down (the handcrafted schedule of the paper; the order of its DeepSpeed implementation
// with exact semantics). Every rank splits B and W, as the paper's schedule does; DeepSpeed's
// rank 0 fuses them instead, which with TP would hide rank 0's all-reduce but not the others'
// and leave rank 0 waiting T_AR per microbatch.
Program make_zb_h1(int p, int m) {
  Program prog = empty_program("zb-h1", p, m, 1, Placement::kLoop);
  for (int r = 0; r < p; ++r) {
    RankBuilder b(prog, r, m);
    const int n_warmup = std::min(p - r - 1, m);       // forwards before the first backward
    const int n_deferred = std::min(r, m - n_warmup);  // backwards whose W waits for the end

    // Phase nF: warm-up.
    for (int i = 0; i < n_warmup; ++i) b.f(0);
    // Phase n(F B): build up the deferred W's.
    for (int i = 0; i < n_deferred; ++i) {
      b.f(0);
      b.b(0, kDeferW);
    }
    // Phase n(F B W): steady state; each W takes the oldest deferred one.
    while (b.forwards(0) < m) {
      b.f(0);
      b.b(0, kDeferW);
      b.w();
    }
    // Phase n(B W): cool-down.
    while (b.backwards(0) < m) {
      b.b(0, kDeferW);
      b.w();
    }
    // Phase nW: the deferred W's fill the tail.
    while (b.deferred() > 0) b.w();
    b.finish();
  }
  insert_p2p(prog);
  return prog;
}

// ZB-V: V placement, every backward split into B and W. The phases are those of PyTorch's
// ScheduleZBVZeroBubble. It builds the program for n = max(m, 2p-1) microbatches (its warm-up
// needs 2p-1) and drops microbatches >= m. Its W slots take the oldest deferred W of the rank
// (one FIFO across chunks, as the executor keeps); PyTorch names them per chunk instead, which
// changes which W fills a cool-down slot but not when a slot runs.
Program make_zb_v(int p, int m) {
  check_counts(p, m, "zb-v");
  const int n = std::max(m, 2 * p - 1);
  Program prog = empty_program("zb-v", p, n, 2, Placement::kV);
  for (int r = 0; r < p; ++r) {
    RankBuilder b(prog, r, n);
    const int n_warmup_f0 = 2 * (p - r) - 1;  // chunk-0 forwards before the turn arrives
    const int n_warmup_f1f0 = r;              // (F1, F0) pairs
    const int n_warmup_f1bw = p - r;          // (F1, B1, W) triples: chunk-1 1F1B starts
    const int n_cooldown_b0b1 = r;            // (B0, B1), W deferred
    const int n_cooldown_b0w = p - r;         // (B0, W)

    for (int i = 0; i < n_warmup_f0; ++i) b.f(0);
    for (int i = 0; i < n_warmup_f1f0; ++i) {
      b.f(1);
      b.f(0);
    }
    for (int i = 0; i < n_warmup_f1bw; ++i) {
      b.f(1);
      b.b(1, kDeferW);
      b.w();
    }
    // Steady state: F0 B0 W F1 B1 W until every forward ran.
    while (b.forwards(1) < b.forwards(0) || b.forwards(0) < n) {
      if (b.forwards(0) < n) b.f(0);
      b.b(0, kDeferW);
      b.w();
      b.f(1);
      b.b(1, kDeferW);
      b.w();
    }
    for (int i = 0; i < n_cooldown_b0b1; ++i) {
      b.b(0, kDeferW);
      b.b(1, kDeferW);
    }
    for (int i = 0; i < n_cooldown_b0w; ++i) {
      b.b(0, kDeferW);
      b.w();
    }
    while (b.deferred() > 0) b.w();
    b.finish();
  }
  if (n > m) drop_microbatches(prog, m);
  insert_p2p(prog);
  return prog;
}

}  // namespace stp::schedule
