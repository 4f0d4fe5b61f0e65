// Interpreter: the one reading of a Program's cross-rank semantics. verify() checks a program
// with it, simulate() times one, the STP generator fills idle gaps with it and
// check_p2p_channels() asks it whether a P2P transport can deadlock. Each of them is an
// Observer; the interpreter owns only program counters and channels.
//
// Note [P2P channel model]
// Every rank runs its instructions in program order. Compute and offload instructions never
// block. A P2P instruction is posted, when the rank reaches it, at the back of the rank's queue
// on its channel; ChannelLayout says which channel a (sender, receiver) pair uses. The heads of
// the two ranks' queues on a channel complete together when one is a SEND and the other a
// RECV (the transport pairs by order, as NCCL does; whether the pair moves the right tensor is
// the observer's business). A SEND never stops its rank; a RECV stops it until it completes.
// With kPerPairDirection a channel's sender queue holds only SENDs and its receiver queue only
// RECVs, so this is "a RECV blocks until the matching SEND was issued" (Note [Schedule
// invariants], program.h). With kPerPair a SEND at the head of a rank's queue also waits for
// the peer to reach the matching RECV, and everything the rank posted on that channel after it
// waits behind it (rendezvous). The executor posts P2P ahead of the compute that needs it
// (engine/executor.cpp); posting later never makes a program progress further, so a program
// that finishes here finishes there, and for kPerPairDirection the two are the same.
//
// Ranks run one at a time, each until it blocks or ends, lowest rank first, and a rank whose
// RECV completes resumes after the rank that completed it stops: the order in which observers
// see instructions (and so the first error verify reports) is fixed.
//
// Thread-safety: an Interpreter reads one Program during run(); not shared.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

#include "schedule/program.h"

namespace stp::schedule {

enum class ChannelLayout : std::uint8_t {
  kPerPairDirection,  // one FIFO per (sender, receiver): a communicator per direction
  kPerPair,           // one FIFO per rank pair: NCCL's one communicator and stream per pair
};

// Instruction `index` of rank `rank`.
struct InstrRef {
  int rank = 0;
  std::size_t index = 0;
};

class Interpreter {
 public:
  class Observer {
   public:
    virtual ~Observer() = default;
    // Rank `rank` reached instruction `index`, before the interpreter posts it; once per
    // instruction. Validation goes here (an observer stops the run by throwing).
    virtual void reach(int rank, std::size_t index, const Instr& in) = 0;
    // Rank `rank` runs instruction `index`: a SEND before it is posted, a RECV once it
    // completed (`send` is the SEND it paired with), everything else right after reach().
    virtual void execute(int rank, std::size_t index, const Instr& in,
                         std::optional<InstrRef> send) = 0;
  };

  // REQUIRES: program.ranks.size() == program.p; P2P peers in [0, p) and not the rank itself
  // (checked by the observer's reach(), else STP_ASSERT).
  Interpreter(const Program& program, ChannelLayout layout);

  // Runs every rank as far as it gets.
  void run(Observer& observer);

  // After run(): the instruction a rank stopped at (== its list's size when it finished) and,
  // when it stopped there, the first instruction still queued on that RECV's channel (the
  // RECV itself, or what it waits behind).
  std::size_t pc(int rank) const { return pc_[rank]; }
  bool finished(int rank) const { return pc_[rank] == program_.ranks[rank].size(); }
  std::size_t queue_head(int rank) const;
  // After run(): the first P2P posted but never completed, by channel then rank; none when
  // every channel drained.
  std::optional<InstrRef> first_unmatched() const;

 private:
  std::size_t queue_of(int rank, const Instr& in) const;
  void advance(int rank, Observer& observer, std::vector<int>& work);
  void post(int rank, std::size_t index, std::vector<int>& work);

  const Program& program_;
  const ChannelLayout layout_;
  const int p_;
  std::vector<std::size_t> pc_;                  // (p) next instruction
  std::vector<char> posted_;                     // (p) the RECV at pc was posted
  std::vector<std::optional<InstrRef>> paired_;  // (p) the SEND the RECV at pc completed with
  std::vector<std::deque<InstrRef>> queue_;      // (p*p*2) [channel*2 + side] posted P2P
};

}  // namespace stp::schedule
