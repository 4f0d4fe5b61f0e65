// Generators: the pipeline schedules as data. Each returns a complete Program — compute
// instructions in the schedule's order plus the P2P instructions (schedule/p2p.h) — that passes
// schedule::verify. Generators never touch a device (STYLE.md item 2).
//
//   kind     chunks v  placement                      m accepted   source of the order
//   1f1b     1         stage = r                      m >= 1       Megatron 1F1B (BW fused)
//   1f1b-i   v >= 2    stage = c*p + r (loop)         m = k*p      Megatron interleaved 1F1B
//   zb-h1    1         stage = r                      m >= 1       ZB-H1 (Qi et al. 2023)
//   zb-v     2         V: c0 = r, c1 = 2p-1-r         m >= 1       ZB-V as in PyTorch's
//                                                                  ScheduleZBVZeroBubble
//   stp      2         V                              m >= 2p      the STP reference
//                                                                  (stp-notes §2.3) for
//                                                                  m >= 3p-1; see make_stp
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schedule/program.h"

namespace stp::schedule {

enum class Kind : std::uint8_t { k1F1B, k1F1BInterleaved, kZBH1, kZBV, kSTP };

const char* to_string(Kind kind);  // "1f1b", "1f1b-i", "zb-h1", "zb-v", "stp"
// Throws std::invalid_argument naming the text and the legal names.
Kind kind_from_string(const std::string& text);
const std::vector<Kind>& all_kinds();  // in the order above

int default_chunks(Kind kind);  // 1, 2, 1, 2, 2
// The smallest m >= at_least that make(kind, p, m, v) accepts: at_least rounded up to a
// multiple of p for 1f1b-i, max(at_least, 2p) for stp, at_least for the others. Every default
// m (stp verify, stp plan) comes from here, so a default is valid for every kind and p.
// REQUIRES: p >= 1, at_least >= 1.
int min_microbatches(Kind kind, int p, int v = 0, int at_least = 1);
// Whether make(kind, p, m) accepts m (1f1b-i also needs m to be a multiple of p).
bool accepts_microbatches(Kind kind, int p, int m);

// The schedule `kind` for p ranks and m microbatches; v = 0 means default_chunks(kind).
// REQUIRES (checked, std::invalid_argument naming the value and the legal range): p >= 1,
// accepts_microbatches(kind, p, m), v == default_chunks(kind) except 1f1b-i (v >= 2).
Program make(Kind kind, int p, int m, int v = 0);
Program make(const std::string& kind, int p, int m, int v = 0);

Program make_1f1b(int p, int m);
Program make_1f1b_interleaved(int p, int m, int v);
Program make_zb_h1(int p, int m);
Program make_zb_v(int p, int m);
// STP. For m >= 3p-1 the compute order is exactly the reference generator's (its nine phases,
// stp-notes §2.3). For 2p <= m < 3p-1, where the reference breaks, it is the m' = 3p-1 program
// without microbatches m..m'-1, with deferred W's moved into the idle gaps that leaves; its
// bubble at T_F = T_B = T_W is (p-1) + (3p-1-m) (docs/schedule.md "STP for m < 3p-1").
Program make_stp(int p, int m);

}  // namespace stp::schedule
