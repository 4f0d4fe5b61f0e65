// 1F1B and interleaved 1F1B (Megatron-LM's orders), backward with W fused (BW).
#include <algorithm>

#include "common/check.h"
#include "schedule/generators.h"
#include "schedule/p2p.h"
#include "schedule/rank_builder.h"

namespace stp::schedule {

Program make_1f1b(int p, int m) {
  Program prog = empty_program("1f1b", p, m, 1, Placement::kLoop);
  for (int r = 0; r < p; ++r) {
    RankBuilder b(prog, r, m);
    const int n_warmup = std::min(p - r - 1, m);  // forwards in flight before the first backward
    const int n_steady = m - n_warmup;            // one forward, one backward

    // Phase nF: warm-up.
    for (int i = 0; i < n_warmup; ++i) b.f(0);
    // Phase n(F BW): steady 1F1B.
    for (int i = 0; i < n_steady; ++i) {
      b.f(0);
      b.b(0, kFuseW);
    }
    // Phase nBW: cool-down.
    for (int i = 0; i < n_warmup; ++i) b.b(0, kFuseW);
    b.finish();
  }
  insert_p2p(prog);
  return prog;
}

// Megatron's interleaved order: microbatches go in groups of p; within a group every chunk
// runs the whole group before the next chunk (forwards chunk 0 -> v-1, backwards v-1 -> 0).
// The k-th forward of a rank runs chunk order[k]; the k-th backward chunk v-1-order[k]. Within a
// chunk microbatches run in increasing order, so RankBuilder's per-chunk counters name them.
Program make_1f1b_interleaved(int p, int m, int v) {
  STP_CHECK(p >= 1, "pp=", p, " must be >= 1");
  STP_CHECK(v >= 2, "chunks=", v, " must be >= 2 for the 1f1b-i schedule (use 1f1b for 1)");
  // Megatron's rule for its default group of p microbatches: a smaller last group has
  // dependency cycles (the verifier finds them, e.g. p=5, m=7).
  STP_CHECK(m >= p && m % p == 0, "microbatches=", m, " must be a positive multiple of pp=", p,
            " for the 1f1b-i schedule (Megatron's interleaved order)");
  Program prog = empty_program("1f1b-i", p, m, v, Placement::kLoop);

  const int n_total = m * v;  // passes of each kind per rank
  std::vector<int> order;     // (n_total) chunk of the k-th forward
  order.reserve(n_total);
  for (int group = 0; group < m; group += p) {
    const int group_size = std::min(p, m - group);
    for (int c = 0; c < v; ++c)
      for (int i = 0; i < group_size; ++i) order.push_back(c);
  }

  for (int r = 0; r < p; ++r) {
    RankBuilder b(prog, r, m);
    const int n_warmup = std::min(2 * (p - r - 1) + (v - 1) * p, n_total);
    const int n_steady = n_total - n_warmup;

    // Phase nF: warm-up.
    for (int k = 0; k < n_warmup; ++k) b.f(order[k]);
    // Phase n(F BW): steady state, forward k+n_warmup then backward k.
    for (int k = 0; k < n_steady; ++k) {
      b.f(order[k + n_warmup]);
      b.b(v - 1 - order[k], kFuseW);
    }
    // Phase nBW: cool-down.
    for (int k = n_steady; k < n_total; ++k) b.b(v - 1 - order[k], kFuseW);
    b.finish();
  }
  insert_p2p(prog);
  return prog;
}

}  // namespace stp::schedule
