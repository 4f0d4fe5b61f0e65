// The verifier rejects broken programs with a message naming the rank, the instruction and the
// problem; each test breaks one valid program in one way.
#include "schedule/verify.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "schedule/generators.h"
#include "schedule/p2p.h"

namespace stp::schedule {
namespace {

Instr comm(Op op, Part ref, int peer = -1) { return transfer_instr(op, ref, peer); }

// Index of the first instruction of `rank` whose text is `name`.
std::size_t find(const Program& prog, int rank, const std::string& name) {
  const auto& list = prog.ranks[rank];
  for (std::size_t i = 0; i < list.size(); ++i)
    if (to_string(list[i]) == name) return i;
  ADD_FAILURE() << name << " not on rank " << rank << ":\n" << to_text(prog);
  return 0;
}

void move(Program& prog, int rank, std::size_t from, std::size_t to) {
  auto& list = prog.ranks[rank];
  Instr in = list[from];
  list.erase(list.begin() + static_cast<std::ptrdiff_t>(from));
  list.insert(list.begin() + static_cast<std::ptrdiff_t>(to), in);
}

void expect_error(const Program& prog, const std::string& needle) {
  const std::string error = find_error(prog);
  EXPECT_NE(error.find(needle), std::string::npos) << "error: '" << error << "'\nwant: " << needle;
}

TEST(Verify, AcceptsValidProgramsAndThrowsWithTheKindOnInvalidOnes) {
  Program prog = make_1f1b(2, 2);
  EXPECT_NO_THROW(verify(prog));
  prog.ranks[0].pop_back();
  try {
    verify(prog);
    FAIL() << "verify accepted a program without its last backward";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("invalid 1f1b program: ", 0), 0u) << e.what();
  }
}

TEST(Verify, RejectsAMissingW) {
  Program prog = make_zb_v(2, 3);
  auto& list = prog.ranks[1];
  list.erase(
      std::find_if(list.rbegin(), list.rend(), [](const Instr& in) { return in.op == Op::kW; })
          .base() -
      1);
  expect_error(prog, "never runs W of stage");
  expect_error(prog, "(missing W)");
}

TEST(Verify, RejectsABackwardBeforeItsForward) {
  Program prog = make_1f1b(1, 2);  // F0[0] BW0[0] F0[1] BW0[1]
  move(prog, 0, 1, 0);
  expect_error(prog, "rank 0 instr 0 (BW0[0]): backward of stage 0 mb 0 before its F");
}

TEST(Verify, RejectsBAndFOfTheSameSetInOneBraid) {
  Program prog = compute_only(make_1f1b(1, 1));
  Instr fb;
  fb.op = Op::kFB;
  fb.parts = {prog.ranks[0][0].parts[0], prog.ranks[0][1].parts[0]};
  prog.ranks[0] = {fb};
  expect_error(prog, "both parts are stage 0 mb 0");
}

TEST(Verify, RejectsAWBeforeItsBAndAWAfterAFusedBackward) {
  Program prog = make_zb_h1(1, 2);  // F0[0] B0[0] W0[0] F0[1] B0[1] W0[1]
  move(prog, 0, 2, 1);
  expect_error(prog, "rank 0 instr 1 (W0[0]): W of stage 0 mb 0 before its B");

  Program fused = make_1f1b(1, 1);
  Instr w;
  w.op = Op::kW;
  w.parts = {Part{Pass::kW, 0, 0, 0}};
  fused.ranks[0].push_back(w);
  expect_error(fused, "W of stage 0 mb 0 whose backward fused W");
}

TEST(Verify, RejectsWeightGradientsOutOfFifoOrder) {
  Program prog = make_zb_h1(2, 3);
  const std::size_t a = find(prog, 1, "W0[0]");
  const std::size_t b = find(prog, 1, "W0[1]");
  std::swap(prog.ranks[1][a], prog.ranks[1][b]);
  expect_error(prog, "W of stage 1 mb 1 but the oldest deferred weight gradient is stage 1 mb 0");
}

TEST(Verify, RejectsMismatchedSendOrderOnAChannel) {
  Program prog = make_1f1b(2, 2);
  // r0: F0[0] SEND_F s0 mb0 ->1 F0[1] SEND_F s0 mb1 ->1 ...: send mb1 before mb0.
  const std::size_t send0 = find(prog, 0, "SEND_F s0 mb0 ->1");
  const std::size_t send1 = find(prog, 0, "SEND_F s0 mb1 ->1");
  move(prog, 0, send0, send1);
  expect_error(prog,
               "rank 1 instr 0 (RECV_F s1 mb0 <-0): mismatched send order on channel 0->1: "
               "the next message sent there is SEND_F s0 mb1");
}

TEST(Verify, RejectsADeadlock) {
  Program prog = make_1f1b(2, 1);
  // Rank 0 waits for the gradient before sending the activation that produces it.
  const std::size_t recv = find(prog, 0, "RECV_B s0 mb0 <-1");
  move(prog, 0, recv, 0);
  expect_error(prog,
               "deadlock: rank 0 instr 0 (RECV_B s0 mb0 <-1) waits for rank 1; "
               "rank 1 instr 0 (RECV_F s1 mb0 <-0) waits for rank 0");
}

TEST(Verify, RejectsAComputeWithoutItsReceive) {
  Program prog = make_1f1b(2, 1);
  prog.ranks[1].erase(prog.ranks[1].begin() +
                      static_cast<std::ptrdiff_t>(find(prog, 1, "RECV_F s1 mb0 <-0")));
  expect_error(prog, "F of stage 1 mb 0 has no RECV_F of its input before it");
}

TEST(Verify, RejectsASendThatIsNeverReceived) {
  Program prog = make_1f1b(2, 1);
  prog.ranks[0].push_back(comm(Op::kSendF, {Pass::kF, 0, 0, 0}, 1));
  expect_error(prog, "rank 0 sends SEND_F s0 mb0 to rank 1, which never receives it");
}

TEST(Verify, RejectsASendBeforeItsTensorExists) {
  Program prog = make_1f1b(2, 1);
  move(prog, 0, find(prog, 0, "SEND_F s0 mb0 ->1"), 0);
  expect_error(prog, "sends the output of F of stage 0 mb 0 before computing it");
}

TEST(Verify, RejectsPartsOnTheWrongRankOrChunk) {
  Program prog = make_stp(2, 5);
  prog.ranks[0][0].parts[0].stage = 1;  // stage 1 lives on rank 1
  expect_error(prog, "rank 0 instr 0 (F0[0]): stage 1 lives on rank 1");

  Program chunk = make_stp(2, 5);
  chunk.ranks[0][0].parts[0].chunk = 1;
  expect_error(chunk, "stage 0 is chunk 0, the part says chunk 1");
}

TEST(Verify, RejectsDuplicatesAndBadShapes) {
  Program dup = compute_only(make_1f1b(1, 2));
  dup.ranks[0].insert(dup.ranks[0].begin() + 1, dup.ranks[0][0]);
  expect_error(dup, "second F of stage 0 mb 0");

  Program shape = make_1f1b(1, 1);
  shape.ranks[0][0].op = Op::kFF;
  expect_error(shape, "FF needs 2 part(s), has 1");

  Program pass = make_1f1b(1, 1);
  pass.ranks[0][1].op = Op::kB;  // holds a BW part
  expect_error(pass, "part 0 of B cannot be BW");

  Program again = make_1f1b(1, 1);
  again.ranks[0][0].parts[0].recompute = true;  // a recomputed forward is fine
  EXPECT_EQ(find_error(again), "");
  again.ranks[0][1].parts[0].recompute = true;  // a recomputed backward is not
  expect_error(again, "part 0 is BW with recompute; only a forward (F) part may be recomputed");
}

TEST(Verify, RejectsBadLayouts) {
  Program prog = make_1f1b(2, 1);
  prog.stage_rank[1] = 0;  // both stages chunk 0 of rank 0
  expect_error(prog, "stages 0 and 1 are both chunk 0 of rank 0");
  Program ranks = make_1f1b(2, 1);
  ranks.ranks.pop_back();
  expect_error(ranks, "program has 1 rank lists, p=2");
}

// A chunk-0 set offloaded after its forward and reloaded before its backward.
Program with_offload(int reload_at) {
  Program prog = compute_only(make_1f1b(1, 2));  // F0[0] BW0[0] F0[1] BW0[1]
  auto& list = prog.ranks[0];
  list.insert(list.begin() + 1, comm(Op::kOffload, {Pass::kF, 0, 0, 0}));
  if (reload_at >= 0) list.insert(list.begin() + reload_at, comm(Op::kReload, {Pass::kF, 0, 0, 0}));
  return prog;
}

TEST(Verify, ChecksOffloadAndReload) {
  EXPECT_EQ(find_error(with_offload(2)), "");
  expect_error(
      with_offload(-1),
      "backward of stage 0 mb 0 while its activations are offloaded (no RELOAD before it)");
  expect_error(with_offload(4), "while its activations are offloaded");

  Program early = compute_only(make_1f1b(1, 1));
  early.ranks[0].insert(early.ranks[0].begin(), comm(Op::kOffload, {Pass::kF, 0, 0, 0}));
  expect_error(early, "offloads stage 0 mb 0 before its F");

  Program reload_only = compute_only(make_1f1b(1, 1));
  reload_only.ranks[0].insert(reload_only.ranks[0].begin() + 1,
                              comm(Op::kReload, {Pass::kF, 0, 0, 0}));
  expect_error(reload_only, "reloads stage 0 mb 0 which is not offloaded");

  Program twice = with_offload(2);  // a second OFFLOAD before the backward
  twice.ranks[0].insert(twice.ranks[0].begin() + 3, comm(Op::kOffload, {Pass::kF, 0, 0, 0}));
  expect_error(twice, "offloads stage 0 mb 0 twice before its backward");

  Program after_bw = compute_only(make_1f1b(1, 1));  // F0[0] BW0[0]: nothing left after BW
  after_bw.ranks[0].push_back(comm(Op::kOffload, {Pass::kF, 0, 0, 0}));
  expect_error(after_bw, "offloads stage 0 mb 0 after its last backward pass");

  Program bad_chunk = compute_only(make_1f1b(1, 1));
  bad_chunk.ranks[0].insert(bad_chunk.ranks[0].begin() + 1,
                            comm(Op::kOffload, {Pass::kF, 3, 0, 0}));
  expect_error(bad_chunk, "rank 0 has no chunk 3");
}

TEST(InsertP2P, PairsEveryCrossRankHandOffAndNoneOnTheTurnOfTheV) {
  const Program prog = make_stp(3, 8);
  int sends = 0, recvs = 0;
  for (int r = 0; r < prog.p; ++r) {
    for (const Instr& in : prog.ranks[r]) {
      if (in.op == Op::kSendF || in.op == Op::kSendB) ++sends;
      if (in.op == Op::kRecvF || in.op == Op::kRecvB) {
        ++recvs;
        EXPECT_NE(in.peer, r);
      }
    }
  }
  // Every stage boundary except the V's turn (stage p-1 -> p, both on rank p-1) crosses ranks:
  // (2p - 2) boundaries, each carrying m activations and m gradients.
  EXPECT_EQ(sends, (2 * prog.p - 2) * prog.m * 2);
  EXPECT_EQ(recvs, sends);
  EXPECT_EQ(find_error(prog), "");
}

TEST(InsertP2P, RefusesAProgramThatAlreadyHasP2P) {
  Program prog = make_1f1b(2, 1);
  EXPECT_THROW(insert_p2p(prog), std::invalid_argument);
  Program stripped = compute_only(prog);
  insert_p2p(stripped);
  EXPECT_EQ(stripped, prog);
}

}  // namespace
}  // namespace stp::schedule

namespace stp::schedule {
namespace {

// F0[0] B0[0] F0[1] W0[0] ... with what W0[0] holds offloaded after its B and reloaded before
// its W (the second trip); `reload` false leaves the RELOAD out.
Program with_w_trip(bool reload) {
  const Part s0{Pass::kF, 0, 0, 0};
  auto part = [](Pass pass, int mb) { return Part{pass, 0, 0, mb}; };
  Program prog = compute_only(make_1f1b(1, 2));
  prog.ranks[0] = {compute_instr(Op::kF, {part(Pass::kF, 0)}),
                   comm(Op::kOffload, s0),
                   comm(Op::kReload, s0),
                   compute_instr(Op::kB, {part(Pass::kB, 0)}),
                   comm(Op::kOffload, s0),
                   compute_instr(Op::kF, {part(Pass::kF, 1)}),
                   compute_instr(Op::kBW, {part(Pass::kBW, 1)}),
                   compute_instr(Op::kW, {part(Pass::kW, 0)})};
  if (reload) prog.ranks[0].insert(prog.ranks[0].begin() + 7, comm(Op::kReload, s0));
  return prog;
}

TEST(Verify, WhatADeferredWHoldsMakesASecondTrip) {
  EXPECT_EQ(find_error(with_w_trip(true)), "");
  expect_error(with_w_trip(false),
               "W of stage 0 mb 0 while what it holds is offloaded (no RELOAD before it)");
  Program third = with_w_trip(true);  // a second OFFLOAD between B and W
  third.ranks[0].insert(third.ranks[0].begin() + 8, comm(Op::kOffload, {Pass::kF, 0, 0, 0}));
  expect_error(third, "offloads stage 0 mb 0 twice between its B and its W");
}

}  // namespace
}  // namespace stp::schedule
