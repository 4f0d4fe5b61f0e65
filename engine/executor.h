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
// Note [Step clock]
// ~~~~~~~~~~~~~~~~~
// Every time the executor reports (compute events, their waits, the step time, the copies) is a
// TimeMark (offload/device_ops.h) taken while the step runs and turned into seconds since the
// step's first mark once, after the step:
//   host clock (default; CPU models): a mark is now_seconds(). A wait is the host blocked, read
//     around the blocking call.
//   device clock (use_device_clock; CUDA models): a mark is a timing event recorded on the
//     compute stream (DeviceOps::mark on current_stream(device)); resolution reads them with
//     DeviceOps::elapsed, the step's only host waits for timing, after its last instruction.
//     A wait that only orders the compute stream (an NCCL collective or receive, a reload's
//     H2D) reads as the compute stream's stall: the mark after it is reached only once the
//     stream passed the wait, the one before it once the work queued earlier ran. Host clocks
//     around asynchronous launches would read ~0 there.
// An instruction's reload_wait is how long it was held up by the host link: the seconds the
// store blocked in create() / acquire() (the CPU's budget drains and reload waits), or, for an
// instruction that consumed a reload, until that copy ended (end - start - p2p_wait), whichever
// is longer, and never longer than until its `ready` mark (taken once every part has its inputs
// and sets). So its compute_start() is never before the end of the reload it consumed, and an
// early reload costs nothing.
// Copies (set_offload): the copy engine marks when each batch began and completed on the same
// clock (host: its workers, around the memcpys; CUDA: events on the copy stream around the
// cudaMemcpyAsyncs, after its waits), and each OFFLOAD / RELOAD becomes an event spanning its
// copies on the rank's D2H / H2D lane; the compute instruction that consumed a reload names it
// (TimelineEvent::reload_index). A reload the CPU offloader cancelled (its D2H still ran; the
// originals never left) spans from the RELOAD to that D2H's end, after which the set is usable.
// On the device clock the executor also resets the device allocator's peaks when the step
// begins and reads them at its end (DeviceOps::memory_stats; none on the CPU).
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

#include "engine/activation_offload.h"
#include "engine/activation_store.h"
#include "engine/chunk.h"
#include "engine/comm.h"
#include "engine/step_stats.h"
#include "offload/device_ops.h"
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

  // Times steps on the device clock of CUDA device `device` through `ops` (Note [Step clock]):
  // events on ops.current_stream(device), resolved after each step, and the allocator's peaks
  // per step. REQUIRES: device >= 0 and ops.mark, ops.elapsed, ops.current_stream set.
  void use_device_clock(offload::DeviceOps ops, int device);
  // The copies `offload` starts join each step's timeline as offload / reload events; nullptr:
  // OFFLOAD / RELOAD events span no copy (zero length at the instruction).
  void set_offload(ActivationOffload* offload);

 private:
  struct Lane;
  class StepRun;

  std::vector<Chunk*> chunks_;
  Group& tp_;
  PipeChannels& pp_;
  ActivationStore& store_;
  bool braid_ = true;
  offload::DeviceOps ops_;  // the device clock's calls (device_ >= 0)
  int device_ = -1;         // -1: host clock
  ActivationOffload* offload_ = nullptr;
};

}  // namespace stp::engine
