// Executor: runs one rank's schedule::Program for one training step (DESIGN.md data flow).
//
// Note [Executor]
// One switch over Instr::op (no default: the compiler flags a missing op).
//  - Standalone F / B / BW / W run a chunk's pass unit by unit, waiting on each unit's TP
//    collective before the next unit (a BW unit starts its collective, then runs its own W unit,
//    so W covers the all-reduce as in Megatron).
//  - Braided FF / FB / FW interleave the units of their two parts (DESIGN.md "Braiding"): unit k
//    of part A starts its collective, unit k of part B runs while it is in flight, and A waits
//    for it only before its unit k+1. FB with BW fuses W unit k after B unit k.
//  - Deferred weight gradients go to a FIFO of (chunk, mb); W and FW pop its front and check it
//    is the part the program names.
//  - P2P is asynchronous and runs in program order on one channel per (pair, direction)
//    (Note [P2P channels], engine/comm.h: messages pair in issue order, untagged, on Gloo as on
//    NCCL): a RECV is posted as soon as every P2P instruction before it is posted — usually a
//    whole compute instruction ahead — and waited on only by the compute that consumes it; a
//    SEND starts as soon as its tensor exists and completes in the background: its handle,
//    which keeps the tensor alive, is dropped after the first compute instruction that finds
//    it droppable (CommHandle::droppable), and the rest are waited for at step end.
//  - OFFLOAD / RELOAD go to the offloader (offload/); a backward waits for its own reload only.
// Every wait is timed: TP-collective waits are the exposed communication, P2P waits the
// pipeline idle, reload waits the offload stall.
//
// Thread-safety: one Executor per rank, used by that rank's thread.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/activation_store.h"
#include "engine/chunk.h"
#include "engine/comm.h"
#include "engine/step_stats.h"
#include "schedule/program.h"
#include "schedule/timeline.h"

namespace stp::engine {

class Executor {
 public:
  // chunks[c] is local chunk c of this rank (Program::stage_chunk); pp is the pipeline's
  // channels, whose index is the Program's rank; tp the tensor-parallel group. `store` holds the
  // activation sets and moves them to host when the program says so.
  Executor(std::vector<Chunk*> chunks, Group& tp, PipeChannels& pp, ActivationStore& store);

  // Runs `program.ranks[pp.rank()]` over the step's microbatches (size program.m).
  // REQUIRES: schedule::verify(program) passed; chunks match the program's stages.
  StepStats run(const schedule::Program& program, const std::vector<MicroBatch>& microbatches);

  // When true (default), braided instructions interleave their parts; false runs the two parts
  // back to back (for measuring what braiding hides).
  void set_braiding(bool on) { braid_ = on; }

 private:
  struct Lane;
  class StepRun;

  std::vector<Chunk*> chunks_;
  Group& tp_;
  PipeChannels& pp_;
  ActivationStore& store_;
  bool braid_ = true;
};

}  // namespace stp::engine
