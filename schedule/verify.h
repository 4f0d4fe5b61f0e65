// verify: the cross-rank checker of a Program (Note [Schedule invariants] in program.h).
//
// It checks the layout (every stage on exactly one rank and chunk), the shape of every
// instruction, and then executes the program on an abstract machine in which compute and SENDs
// never block and a RECV blocks until the matching SEND was issued. While executing it checks:
//  - each (stage, mb) has exactly one F and one B+W or one BW, on the stage's rank;
//  - F before B before W; a backward's inputs (the next stage's gradient, or the loss on the
//    last stage) and a forward's input (the previous stage's activation) exist when it runs:
//    from an earlier instruction on the same rank or through a RECV that preceded it;
//  - the W parts of a rank run in the order of its deferred B parts (the executor's FIFO);
//  - the k-th SEND on each channel src->dst pairs with the k-th RECV (same kind and tensor);
//  - OFFLOAD after the set's F and before its backward, RELOAD after OFFLOAD, and the
//    backward finds its set resident;
//  - the program finishes: no rank waits forever (deadlock) and no SEND is left unreceived.
//
// Thread-safety: pure functions.
#pragma once

#include <string>

#include "schedule/program.h"

namespace stp::schedule {

// The first violation as one line naming the rank, the instruction and what is wrong, or ""
// when the program is valid.
std::string find_error(const Program& program);

// Throws std::invalid_argument("invalid <kind> program: <find_error>") when invalid.
void verify(const Program& program);

}  // namespace stp::schedule
