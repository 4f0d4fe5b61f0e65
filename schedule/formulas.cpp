#include "schedule/formulas.h"

namespace stp::schedule {

TableFigures table_figures(Kind kind, int p, int m, int v, const CostModel& c) {
  if (v == 0) v = default_chunks(kind);
  TableFigures t;
  const double n = p - 1;
  switch (kind) {
    case Kind::k1F1B:
      t.pp_bubble = n * (c.t_f + c.t_ar + c.t_b + c.t_w);
      t.tp_bubble = m * c.t_ar;
      t.peak_sets = p;
      break;
    case Kind::k1F1BInterleaved:
      t.pp_bubble = n * (c.t_f + c.t_ar + c.t_b + c.t_w);
      t.tp_bubble = v * m * c.t_ar;
      t.peak_sets = 2 * (p - 1) + (v - 1) * p;  // (3p-2) for v = 2
      t.seed = v == 2;
      break;
    case Kind::kZBH1:
      t.pp_bubble = n * (c.t_f + 2 * c.t_ar + c.t_b - c.t_w);
      t.tp_bubble = 2 * m * c.t_ar;
      t.peak_sets = p;
      break;
    case Kind::kZBV:
      t.pp_bubble = n * (c.t_f + 2 * c.t_ar + c.t_b - 2 * c.t_w);
      t.tp_bubble = 4 * m * c.t_ar;
      t.peak_sets = 2 * p;
      t.seed = true;
      break;
    case Kind::kSTP:
      t.pp_bubble = n * (c.t_f + c.t_ar + c.t_b - c.t_w);
      t.tp_bubble = (2 * p + 1) * c.t_ar;
      t.peak_sets = 3 * p;
      t.seed = true;
      break;
  }
  return t;
}

}  // namespace stp::schedule
