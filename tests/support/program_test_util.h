// Hand-written schedules for the simulator's and the executor's tests.
#pragma once

#include <vector>

#include "schedule/program.h"

namespace stp::testing {

// A Program of `m` microbatches on one rank holding one stage, running `instrs` in order.
inline schedule::Program one_stage_program(int m, std::vector<schedule::Instr> instrs) {
  schedule::Program p;
  p.kind = "hand";
  p.p = 1;
  p.m = m;
  p.v = 1;
  p.stage_rank = {0};
  p.stage_chunk = {0};
  p.ranks = {std::move(instrs)};
  return p;
}

}  // namespace stp::testing
