// P2P insertion: turns a program of compute (and offload) instructions into one that also moves
// activations and gradients between ranks, so every generator gets correct, matching P2P.
//
// For each compute instruction, in braid order of its parts:
//  - before it, a RECV for each input that comes from a stage on another rank
//    (RECV_F for a forward's input activation, RECV_B for a backward's output gradient);
//  - after it, a SEND for each output that a stage on another rank consumes, issued as soon as
//    it is produced AND every message the receiver consumes earlier on that channel was sent
//    (so the k-th SEND on a channel src->dst always pairs with the k-th RECV there).
// A hand-off between stages on the same rank (the turn of a V on the last rank) needs none.
// Delaying a SEND behind an earlier-consumed message never delays the receiver: it could not
// have used the later message before receiving the earlier one.
//
// Thread-safety: pure functions.
#pragma once

#include "schedule/program.h"

namespace stp::schedule {

// REQUIRES: `program` has no P2P instructions (OFFLOAD / RELOAD stay where they are).
void insert_p2p(Program& program);

// The program without its P2P and offload instructions.
Program compute_only(const Program& program);

}  // namespace stp::schedule
