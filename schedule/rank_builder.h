// RankBuilder: what every generator uses to write one rank's compute instructions. It takes
// microbatch indices from per-chunk counters (the next forward / next backward of each local
// chunk, as the reference code's counters do) and keeps the rank's deferred-W FIFO, so a
// generator reads as its phases: `b.f(0); b.fb(1, 1, kDeferW); b.fw(0);`.
//
// Also here: the stage placements and the post-passes generators share. Internal to
// schedule/ (generators.h is the public surface).
//
// Thread-safety: a builder writes one rank of one Program; not shared.
#pragma once

#include <deque>
#include <vector>

#include "schedule/program.h"

namespace stp::schedule {

inline constexpr bool kFuseW = true;    // backward runs its weight gradient inline (BW)
inline constexpr bool kDeferW = false;  // backward defers its weight gradient to a later W

enum class Placement {
  kLoop,  // chunk c of rank r is stage c*p + r (Megatron interleaving; v = 1 is plain PP)
  kV,     // v = 2: chunk 0 of rank r is stage r, chunk 1 is stage 2p-1-r
};

// The preconditions of a generator that takes any p >= 1 and m >= 1; the message names the
// value and the schedule `kind`.
void check_counts(int p, int m, const char* kind);

// A Program with the layout filled in and p empty instruction lists; check_counts(p, m, kind)
// first.
Program empty_program(const char* kind, int p, int m, int v, Placement placement);

class RankBuilder {
 public:
  // Writes rank `rank` of `prog`; microbatches run 0..m-1 (m may exceed prog.m for generators
  // that build a larger program and drop microbatches afterwards).
  RankBuilder(Program& prog, int rank, int m);

  void f(int chunk);                               // F  of the chunk's next forward
  void b(int chunk, bool fuse_w);                  // B (W deferred) or BW of its next backward
  void w();                                        // W  of the oldest deferred backward
  void ff(int chunk);                              // FF: the chunk's next two forwards, braided
  void fb(int f_chunk, int b_chunk, bool fuse_w);  // FB: next F braided with next B / BW
  void fw(int chunk);                              // FW: next F braided with the oldest deferred W

  int forwards(int chunk) const { return fwd_[chunk]; }   // forwards issued so far
  int backwards(int chunk) const { return bwd_[chunk]; }  // backwards issued so far
  int deferred() const { return static_cast<int>(fifo_.size()); }

  // The rank's invariant, checked last (STP_ASSERT): every local chunk ran m forwards and m
  // backwards and no weight gradient is left deferred.
  void finish() const;

 private:
  Part next_f(int chunk);
  Part next_b(int chunk, bool fuse_w);
  Part pop_w();
  void emit(Op op, std::vector<Part> parts);

  Program& prog_;
  int rank_;
  int m_;
  std::vector<int> stage_;  // (v) stage of each local chunk
  std::vector<int> fwd_, bwd_;
  std::deque<Part> fifo_;  // deferred W parts, oldest first
};

// Removes every part of microbatch >= m and sets prog.m = m. A braided instruction that loses
// one part becomes the standalone op of the other; one that loses both disappears. Keeps the
// order of what remains, so a valid program stays valid (dependencies only link parts of the
// same microbatch). REQUIRES: compute-only program.
void drop_microbatches(Program& prog, int m);

}  // namespace stp::schedule
