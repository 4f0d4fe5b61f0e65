// Closed-form figures per schedule kind, to print beside simulated ones: the seed table
// (stp-notes §2.6, the paper's Table 1) for 1F1B-I, ZB-V and STP, and the literature's for
// 1F1B and ZB-H1 (Qi et al., Zero Bubble, 2023). T_F, T_B, T_W, T_AR are the CostModel's
// per-chunk times (stage scale 1); a forward or an unfused backward exposes its all-reduce.
//
//   kind    PP bubble                          TP bubble      peak activations (M_a)
//   1f1b    (p-1)(T_F + T_AR + T_B + T_W)      m T_AR         p
//   1f1b-i  (p-1)(T_F + T_AR + T_B + T_W)      v m T_AR       (3p-2) for v=2; 2(p-1)+(v-1)p
//   zb-h1   (p-1)(T_F + 2T_AR + T_B - T_W)     2m T_AR        p
//   zb-v    (p-1)(T_F + 2T_AR + T_B - 2T_W)    4m T_AR        2p
//   stp     (p-1)(T_F + T_AR + T_B - T_W)      (2p+1) T_AR    3p
//
// Thread-safety: pure functions.
#pragma once

#include "schedule/cost_model.h"
#include "schedule/generators.h"

namespace stp::schedule {

struct TableFigures {
  double pp_bubble = 0;  // idle seconds per rank
  double tp_bubble = 0;  // exposed TP seconds per rank
  double peak_sets = 0;  // activation sets (M_a) per rank
  bool seed = false;     // from the seed table (else from the literature)
};

TableFigures table_figures(Kind kind, int p, int m, int v, const CostModel& costs);

}  // namespace stp::schedule
