// P2P insertion and the P2P channel check. insert_p2p turns a program of compute (and offload)
// instructions into one that also moves activations and gradients between ranks, so every generator
// gets correct, matching P2P.
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
// check_p2p_channels runs a valid program on transports whose channels are laid out as
// ChannelLayout says (Note [P2P channel model], schedule/interpreter.h) and names the first
// deadlock. All generators' programs run with kPerPairDirection (a communicator, or a tag
// space, per direction). With kPerPair (NCCL's unbatched P2P: one communicator and stream per
// rank pair) they deadlock for p >= 2: in 1F1B's steady state rank 0 queues [SEND_F mb1,
// RECV_B mb0] towards rank 1 while rank 1 queues [SEND_B mb0, RECV_F mb1] towards rank 0, and
// both SENDs wait for a RECV that waits behind the other SEND.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "schedule/interpreter.h"
#include "schedule/program.h"

namespace stp::schedule {

// REQUIRES: `program` has no P2P instructions (OFFLOAD / RELOAD stay where they are).
void insert_p2p(Program& program);

// A rank stuck in a deadlock.
struct ChannelWait {
  int rank = 0;
  std::size_t recv = 0;  // the RECV it waits in (an index into program.ranks[rank])
  std::size_t head = 0;  // the first instruction it still has queued on that channel: `recv`
                         // itself, or an earlier SEND that `recv` waits behind
};

struct ChannelCheck {
  std::vector<ChannelWait> cycle;  // each rank waits for the next, the last for the first;
                                   // empty when the program runs to its end
  std::string message;             // the cycle as one line, "" when there is none
  bool deadlocks() const { return !cycle.empty(); }
};

// REQUIRES: find_error(program) is "" (schedule/verify.h).
ChannelCheck check_p2p_channels(const Program& program, ChannelLayout layout);

// The program without its P2P and offload instructions.
Program compute_only(const Program& program);

}  // namespace stp::schedule
