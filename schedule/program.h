// Program: the schedule IR. A Program is plain data — one instruction list per pipeline rank —
// produced by the generators (schedule/generators.h), checked by verify(), costed by simulate()
// and executed by engine::Executor with one switch over Instr::op. Nothing here touches a device.
//
// Vocabulary (one set of names everywhere):
//   p       pipeline ranks                 m      microbatches per step
//   v       model chunks per rank          S=v*p  pipeline stages
//   chunk   local chunk index on a rank (0..v-1); stage = global stage index (0..S-1)
//   mb      microbatch index (0..m-1)
// The loss is computed by the last stage, S-1. Stage s's forward consumes stage s-1's output;
// stage s's backward consumes stage s+1's input gradient.
//
// Note [Schedule invariants] (checked by schedule::verify, see schedule/verify.h)
//  - Every (stage, mb) has exactly one F part and either one BW part or one B part and one W
//    part, all on the rank that holds the stage; F runs before B/BW, B before W.
//  - Deferred weight gradients: on each rank the W parts appear in the order their B parts ran,
//    across chunks (one FIFO per rank). The executor pops the front of its FIFO and asserts it is
//    the part the W names.
//  - P2P: a stage's input from a stage on another rank arrives through a RECV placed before the
//    consuming compute and a SEND placed after the producing compute; a hand-off between two
//    stages on the same rank (the turn of a V on the last rank) has none. On each directed
//    channel (src rank -> dst rank) the k-th SEND matches the k-th RECV (NCCL pairs them in issue
//    order). SEND_F ref=(s, mb) pairs with RECV_F ref=(s+1, mb); SEND_B ref=(s, mb) with
//    RECV_B ref=(s-1, mb). A RECV blocks until its SEND was issued; SENDs never block.
//  - OFFLOAD(c, mb) follows the forward that produced the set; RELOAD(c, mb) follows its OFFLOAD
//    and precedes the backward (B or BW) of that set. A set whose W is deferred may make a
//    second trip: OFFLOAD after its B (what is left: what W reads) and RELOAD before its W. At
//    most one trip before the backward and one between B and W. A trip may move part of the
//    set (Instr::share, Note [Partial sets]); its RELOAD carries its OFFLOAD's share.
//
// Note [Recompute]
//  A forward part may carry `recompute`: that (stage, mb) set then holds only the input of each
//  forward unit (the residual stream entering it) from its forward to its backward, and the
//  backward re-runs each forward unit just before the matching B unit, which rebuilds the
//  unit's other fields exactly (a forward unit's fields are all written by that one call, Note
//  [Decoder units]); no collective is needed (the re-run's partial-sum output is discarded).
//  The set may still be offloaded (it is smaller) and its W deferred (B leaves what W reads, as
//  without recompute). The planner chooses it per set (offload/planner.h); the executor copies
//  the flag into the ActivationSet before the forward; the cost model charges the backward
//  recompute_time * t_f more and the set recompute_keep of its bytes until its backward.
//
// Note [Partial sets]
//  Both levers also apply to part of a set, so a plan is not limited to whole sets:
//  - Partial offload: an OFFLOAD / RELOAD pair with share s < 1 moves at least s of the bytes
//    the trip would move (the set's after its forward, or what W reads after its B); the rest
//    stays on the device. The engine moves whole fields, in the order the forward saved them
//    (the fields the backward reads last go first), until the moved bytes reach s of the set,
//    so the device holds at most (1 - s) of it: what the planner budgeted, or less.
//  - Partial recompute: an F part with recompute and recompute_share g < 1 re-runs only the
//    leading ceil(g * L) of the chunk's L layers (both forward units of each); the others keep
//    their fields. Layers of a chunk are alike, so at least g of what recomputing the whole
//    set would save is saved, at about g of its time (the cost model charges g exactly).
//  The planner chooses shares in multiples of 1/8; 1 is the whole set, as before.
//
// Additions since the first version (nothing was renamed or removed): the invariants note
// above, from_string for Pass/Op, to_string(Part), Program::stage_of(), is_p2p(),
// Part::recompute, mark_recompute_all(); Part::recompute_share and Instr::share (Note [Partial
// sets]).
//
// Thread-safety: values; no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace stp::schedule {

// What one part of an instruction computes for one (stage, mb).
enum class Pass : std::uint8_t {
  kF,   // forward
  kB,   // activation gradient only; its weight gradient runs later as a kW part
  kW,   // weight gradient deferred from an earlier kB of the same (stage, mb)
  kBW,  // activation gradient with the weight gradient fused in
};

struct Part {
  Pass pass = Pass::kF;
  int chunk = 0;  // local chunk on the executing rank
  int stage = 0;  // global pipeline stage
  int mb = 0;     // microbatch
  // kF parts only (Note [Recompute]): the forward saves only each unit's input and its
  // backward re-runs the forward units, one before each B unit, to rebuild the rest.
  bool recompute = false;
  // With recompute (Note [Partial sets]): the leading share of the chunk's layers that is
  // re-run, in (0, 1]; 1 recomputes every layer. Ignored without recompute.
  double recompute_share = 1;
  friend bool operator==(const Part&, const Part&) = default;
};

enum class Op : std::uint8_t {
  // Compute. parts.size() is 1 for the standalone ops and 2 for the braided ones.
  kF,   // {F}
  kB,   // {B}            standalone activation gradient, W deferred
  kW,   // {W}            one deferred weight gradient
  kBW,  // {BW}           standalone backward with W fused
  kFF,  // {F, F}         two forwards braided
  kFB,  // {F, B | BW}    a forward braided with a backward (W deferred or fused)
  kFW,  // {F, W}         a forward braided with one deferred W
  // Point-to-point. `ref` names the (chunk, stage, mb) whose tensor moves; `peer` the other rank.
  kSendF,  // send stage ref.stage's output activation of ref.mb to stage ref.stage+1 on peer
  kRecvF,  // receive the input activation of (ref.stage, ref.mb) from stage ref.stage-1 on peer
  kSendB,  // send the input gradient of (ref.stage, ref.mb) to stage ref.stage-1 on peer
  kRecvB,  // receive the output gradient of (ref.stage, ref.mb) from stage ref.stage+1 on peer
  // Host offload of the activation set (ref.chunk, ref.mb) saved by its forward.
  kOffload,  // start D2H after the forward that produced it (or after its B: what a deferred W
             // holds); device memory freed when done
  kReload,   // start H2D (a prefetch); the next backward pass of (ref.chunk, ref.mb) waits for it
};

struct Instr {
  Op op = Op::kF;
  std::vector<Part> parts;  // compute parts in braid order; empty for P2P and offload ops
  Part ref;                 // P2P / offload: what moves (pass is unused there)
  int peer = -1;            // P2P: the other rank
  // OFFLOAD / RELOAD (Note [Partial sets]): the share, in (0, 1], of what the trip would move
  // that it moves; 1 moves it all. A RELOAD carries its OFFLOAD's share.
  double share = 1;

  bool is_compute() const { return !parts.empty(); }
  friend bool operator==(const Instr&, const Instr&) = default;
};

inline bool is_p2p(Op op) {
  return op == Op::kSendF || op == Op::kRecvF || op == Op::kSendB || op == Op::kRecvB;
}

// A compute instruction: `op` with its parts in braid order.
inline Instr compute_instr(Op op, std::vector<Part> parts) {
  Instr in;
  in.op = op;
  in.parts = std::move(parts);
  return in;
}
// A P2P or offload instruction: what moves and, for P2P, the other rank.
inline Instr transfer_instr(Op op, Part ref, int peer = -1) {
  Instr in;
  in.op = op;
  in.ref = ref;
  in.peer = peer;
  return in;
}
// An OFFLOAD or RELOAD of `share` of the trip (Note [Partial sets]).
inline Instr offload_instr(Op op, Part ref, double share = 1) {
  Instr in = transfer_instr(op, ref);
  in.share = share;
  return in;
}

struct Program {
  std::string kind;              // generator name: "1f1b", "1f1b-i", "zb-h1", "zb-v", "stp"
  int p = 1;                     // pipeline ranks
  int m = 1;                     // microbatches
  int v = 1;                     // chunks per rank
  std::vector<int> stage_rank;   // (S) rank that holds stage s
  std::vector<int> stage_chunk;  // (S) local chunk index of stage s on that rank
  std::vector<std::vector<Instr>> ranks;  // (p) instruction list per rank, in execution order

  int stages() const { return static_cast<int>(stage_rank.size()); }
  // The stage that local chunk `chunk` of `rank` holds, or -1 when there is none.
  int stage_of(int rank, int chunk) const {
    for (int s = 0; s < stages(); ++s)
      if (stage_rank[s] == rank && stage_chunk[s] == chunk) return s;
    return -1;
  }
  friend bool operator==(const Program&, const Program&) = default;
};

const char* to_string(Pass pass);  // "F", "B", "W", "BW"
const char* to_string(Op op);      // "F" ... "FW", "SEND_F", "RECV_F", "SEND_B", "RECV_B",
                                   // "OFFLOAD", "RELOAD" (the JSON names)
// Inverse of to_string; throws std::invalid_argument naming the text and the legal names.
Pass pass_from_string(const std::string& text);
Op op_from_string(const std::string& text);

// Sets Part::recompute on every forward part (Note [Recompute]): every set recomputed, each
// re-running the leading `share` of its layers (Note [Partial sets]; 1: all of them).
// REQUIRES: share in (0, 1] (std::invalid_argument naming it otherwise).
void mark_recompute_all(Program& program, double share = 1);

// "F0[3]" (pass, chunk, mb) or "BW1[2]"; a recomputed forward "F0[3]r", recomputing half its
// layers "F0[3]r0.5".
std::string to_string(const Part& part);

// Compact text: "F0[3]", "FB1[4,2]+W", "SEND_F s2 mb3 ->1" ... (microbatches 0-based); a
// recomputed forward's microbatch carries an "r": "F0[3]r", "FB1[4r,2]", "FF0[2r,3]",
// "FF0[2r0.25,3]"; a partial trip "OFFLOAD c0 mb3 0.5".
std::string to_string(const Instr& instr);
// One line per rank: "r0: F0[0] F0[1] ...". compute_only drops P2P and offload ops.
std::string to_text(const Program& program, bool compute_only = false);
// The fixed JSON contract of `stp schedule --format json` (see docs/schedule.md).
std::string to_json(const Program& program);
// Parses what to_json wrote; throws std::invalid_argument naming the first bad field.
Program from_json(const std::string& json);

}  // namespace stp::schedule
