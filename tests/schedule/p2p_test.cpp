// check_p2p_channels: every generator's program runs on one FIFO per (pair, direction) and
// deadlocks on NCCL's one FIFO per pair, with the cycle named (Note [P2P channel model]).
#include "schedule/p2p.h"

#include <gtest/gtest.h>

#include "schedule/generators.h"
#include "schedule/verify.h"

namespace stp::schedule {
namespace {

// A few m that make(kind, p, m) accepts: the smallest, one more step, and a larger one.
std::vector<int> some_microbatches(Kind kind, int p) {
  const int m0 = min_microbatches(kind, p);
  const int step = kind == Kind::k1F1BInterleaved ? p : 1;
  return {m0, m0 + step, m0 + 3 * step * p};
}

TEST(P2PChannels, NoGeneratorDeadlocksWithAFifoPerPairAndDirection) {
  for (Kind kind : all_kinds())
    for (int p : {2, 3, 4, 5, 8})
      for (int m : some_microbatches(kind, p)) {
        const Program prog = make(kind, p, m);
        ASSERT_EQ(find_error(prog), "");
        const ChannelCheck check = check_p2p_channels(prog, ChannelLayout::kPerPairDirection);
        EXPECT_FALSE(check.deadlocks())
            << to_string(kind) << " p=" << p << " m=" << m << ": " << check.message;
      }
}

TEST(P2PChannels, EveryGeneratorDeadlocksWithOneFifoPerPair) {
  for (Kind kind : all_kinds())
    for (int p : {2, 3, 4, 5, 8}) {
      const Program prog = make(kind, p, min_microbatches(kind, p) + p);
      const ChannelCheck check = check_p2p_channels(prog, ChannelLayout::kPerPair);
      EXPECT_TRUE(check.deadlocks()) << to_string(kind) << " p=" << p;
      // Each rank of the cycle waits in a RECV from the next one, behind a SEND to it: the
      // heads of the pair's queues are two SENDs, which no posting ahead would unblock.
      for (std::size_t i = 0; i < check.cycle.size(); ++i) {
        const ChannelWait& w = check.cycle[i];
        const Instr& recv = prog.ranks[w.rank][w.recv];
        const Instr& head = prog.ranks[w.rank][w.head];
        EXPECT_TRUE(recv.op == Op::kRecvF || recv.op == Op::kRecvB) << to_string(recv);
        EXPECT_TRUE(head.op == Op::kSendF || head.op == Op::kSendB) << to_string(head);
        EXPECT_EQ(recv.peer, check.cycle[(i + 1) % check.cycle.size()].rank) << check.message;
        EXPECT_EQ(head.peer, recv.peer) << check.message;
      }
    }
}

TEST(P2PChannels, OneFOneBOnTwoRanksDeadlocksInItsSteadyStateOnOneFifoPerPair) {
  // r0 queues [SEND_F mb1, RECV_B mb0] towards r1, r1 queues [SEND_B mb0, RECV_F mb1].
  const ChannelCheck check = check_p2p_channels(make_1f1b(2, 4), ChannelLayout::kPerPair);
  EXPECT_EQ(check.message,
            "deadlock: rank 0 instr 4 (RECV_B s0 mb0 <-1) waits behind instr 3 (SEND_F s0 mb1 "
            "->1) for rank 1; rank 1 instr 4 (RECV_F s1 mb1 <-0) waits behind instr 3 (SEND_B s1 "
            "mb0 ->0) for rank 0");
  ASSERT_EQ(check.cycle.size(), 2u);
  EXPECT_EQ(check.cycle[0].rank, 0);
  EXPECT_EQ(check.cycle[0].recv, 4u);
  EXPECT_EQ(check.cycle[0].head, 3u);
  EXPECT_FALSE(check_p2p_channels(make_1f1b(2, 1), ChannelLayout::kPerPair).deadlocks())
      << "one microbatch has no steady state";
}

TEST(P2PChannels, StpOnTwoRanksDeadlocksOnOneFifoPerPair) {
  const ChannelCheck check = check_p2p_channels(make_stp(2, 4), ChannelLayout::kPerPair);
  EXPECT_EQ(check.message,
            "deadlock: rank 0 instr 6 (RECV_F s3 mb0 <-1) waits behind instr 3 (SEND_F s0 mb1 "
            "->1) for rank 1; rank 1 instr 4 (RECV_F s1 mb1 <-0) waits behind instr 3 (SEND_F s2 "
            "mb0 ->0) for rank 0");
}

TEST(P2PChannels, ARankWithoutPeersNeverDeadlocks) {
  for (ChannelLayout layout : {ChannelLayout::kPerPair, ChannelLayout::kPerPairDirection})
    EXPECT_FALSE(check_p2p_channels(make_stp(1, 2), layout).deadlocks());
}

}  // namespace
}  // namespace stp::schedule
