// The simulator: the seed table's figures at equal costs, the TP-bubble column with T_AR > 0,
// the cost model instruction by instruction, P2P latency and bandwidth, stage scaling, host
// offload (copy channels, reload waits, resident memory) and the timeline it records. Expected
// times are worked out by hand in the comments.
#include "schedule/simulate.h"

#include <gtest/gtest.h>

#include <array>

#include "../support/program_test_util.h"  // header-only: the schedule room links no test support
#include "schedule/formulas.h"
#include "schedule/generators.h"
#include "schedule/p2p.h"
#include "schedule/verify.h"

namespace stp::schedule {
namespace {

Instr compute(Op op, std::vector<Part> parts) { return compute_instr(op, std::move(parts)); }

Instr comm(Op op, Part ref, int peer = -1) { return transfer_instr(op, ref, peer); }

CostModel with_tar(double t_ar) {
  CostModel c;
  c.t_ar = t_ar;
  return c;
}

// --- the seed table (stp-notes §2.6) at T_F = T_B = T_W = 1 ------------------------------------

TEST(SeedTable, EqualCostsGiveTheTablesBubblesAndMemory) {
  const CostModel unit;
  for (int p : {2, 4, 8}) {
    for (int m : {4 * p, 64}) {
      const std::string at = "p=" + std::to_string(p) + " m=" + std::to_string(m);
      const SimResult i1f1b = simulate(make(Kind::k1F1BInterleaved, p, m), unit);
      EXPECT_DOUBLE_EQ(i1f1b.max_idle(), 3.0 * (p - 1)) << at;  // (p-1)(T_F + T_B + T_W)
      // The table says (3p-2): the warm-up's forwards. The first steady-state forward runs
      // before the first backward frees one, so 3p-1 are resident (docs/schedule.md).
      EXPECT_EQ(i1f1b.max_peak_sets(), 3 * p - 1) << at;

      const SimResult zbv = simulate(make(Kind::kZBV, p, m), unit);
      EXPECT_DOUBLE_EQ(zbv.max_idle(), 0.0) << at;  // (p-1)(T_F + T_B - 2T_W)
      EXPECT_EQ(zbv.max_peak_sets(), 2 * p) << at;

      const SimResult stp = simulate(make(Kind::kSTP, p, m), unit);
      EXPECT_DOUBLE_EQ(stp.max_idle(), p - 1.0) << at;  // (p-1)(T_F + T_B - T_W)
      EXPECT_EQ(stp.max_peak_sets(), 3 * p) << at;
      for (int r = 0; r < p; ++r) {
        EXPECT_EQ(stp.ranks[r].peak_sets, 3 * p) << at << " r=" << r << ": 3p on every rank";
        // Variant: sets whose W was deferred stay until W -> 3p + r (stp-notes §2.7).
        EXPECT_EQ(stp.ranks[r].peak_sets_until_w, 3 * p + r) << at << " r=" << r;
      }
      for (const SimResult* s : {&i1f1b, &zbv, &stp}) {
        EXPECT_DOUBLE_EQ(s->max_exposed_tp(), 0.0) << at;
        for (const RankStats& r : s->ranks) EXPECT_DOUBLE_EQ(r.busy, 6.0 * m) << at;
      }
    }
  }
}

TEST(SeedTable, LiteratureBaselinesAtEqualCosts) {
  const CostModel unit;
  for (int p : {2, 4, 8}) {
    EXPECT_DOUBLE_EQ(simulate(make_1f1b(p, 32), unit).max_idle(), 3.0 * (p - 1));
    EXPECT_EQ(simulate(make_1f1b(p, 32), unit).max_peak_sets(), p);
    EXPECT_DOUBLE_EQ(simulate(make_zb_h1(p, 32), unit).max_idle(), p - 1.0);
    EXPECT_EQ(simulate(make_zb_h1(p, 32), unit).max_peak_sets(), p);
  }
}

TEST(SeedTable, ExposedTpMatchesTheTpBubbleColumn) {
  const CostModel c = with_tar(0.25);
  for (int p : {2, 4, 8}) {
    const int m = 64;
    const std::string at = "p=" + std::to_string(p);
    const SimResult i1f1b = simulate(make(Kind::k1F1BInterleaved, p, m), c);
    const SimResult zbv = simulate(make(Kind::kZBV, p, m), c);
    const SimResult stp = simulate(make(Kind::kSTP, p, m), c);
    for (int r = 0; r < p; ++r) {
      EXPECT_DOUBLE_EQ(i1f1b.ranks[r].exposed_tp, 2 * m * 0.25) << at;  // every forward
      EXPECT_DOUBLE_EQ(zbv.ranks[r].exposed_tp, 4 * m * 0.25) << at;    // every F and B
      // Only STP's standalone warm-up forwards expose: 2p + [r even] of them.
      EXPECT_DOUBLE_EQ(stp.ranks[r].exposed_tp, (2 * p + (r % 2 == 0 ? 1 : 0)) * 0.25) << at;
    }
    for (Kind k : {Kind::k1F1BInterleaved, Kind::kZBV, Kind::kSTP}) {
      const SimResult& s = k == Kind::kSTP ? stp : k == Kind::kZBV ? zbv : i1f1b;
      EXPECT_DOUBLE_EQ(s.max_exposed_tp(), table_figures(k, p, m, 0, c).tp_bubble) << at;
    }
    // PP bubbles: 1F1B-I and ZB-V equal the formula; STP's rank 0 idles one T_AR less within
    // its own span, while over the whole step the odd ranks idle exactly the formula.
    EXPECT_DOUBLE_EQ(i1f1b.max_idle(), (p - 1) * 3.25) << at;
    EXPECT_DOUBLE_EQ(zbv.max_idle(), (p - 1) * 0.5) << at;
    EXPECT_DOUBLE_EQ(stp.max_idle(), (p - 1) * 1.25 - 0.25) << at;
    double step_idle = 0;
    for (const RankStats& r : stp.ranks) step_idle = std::max(step_idle, r.idle_in_step);
    EXPECT_DOUBLE_EQ(step_idle, (p - 1) * 1.25) << at;
  }
  // stp-notes §2.7: p=4, m=64 spans 384 + 5.75.
  EXPECT_DOUBLE_EQ(simulate(make_stp(4, 64), c).makespan, 389.75);
}

TEST(SeedTable, FormulasAsTabulated) {
  CostModel c;
  c.t_ar = 0.25;
  const TableFigures stp = table_figures(Kind::kSTP, 4, 64, 0, c);
  EXPECT_DOUBLE_EQ(stp.pp_bubble, 3.75);
  EXPECT_DOUBLE_EQ(stp.tp_bubble, 2.25);
  EXPECT_DOUBLE_EQ(stp.peak_sets, 12);
  EXPECT_TRUE(stp.seed);
  const TableFigures zbv = table_figures(Kind::kZBV, 4, 64, 0, c);
  EXPECT_DOUBLE_EQ(zbv.pp_bubble, 1.5);
  EXPECT_DOUBLE_EQ(zbv.tp_bubble, 64);
  EXPECT_DOUBLE_EQ(zbv.peak_sets, 8);
  const TableFigures i = table_figures(Kind::k1F1BInterleaved, 4, 64, 0, c);
  EXPECT_DOUBLE_EQ(i.pp_bubble, 9.75);
  EXPECT_DOUBLE_EQ(i.tp_bubble, 32);
  EXPECT_DOUBLE_EQ(i.peak_sets, 10);
  EXPECT_FALSE(table_figures(Kind::k1F1B, 4, 64, 0, c).seed);
}

// --- the cost model ---------------------------------------------------------------------------

TEST(CostModel, ChargesEachInstructionKind) {
  CostModel c;
  c.t_f = 1;
  c.t_b = 2;
  c.t_w = 0.5;
  c.t_ar = 0.75;
  const Part f{Pass::kF, 0, 0, 0}, f2{Pass::kF, 0, 0, 1}, b{Pass::kB, 0, 0, 1},
      bw{Pass::kBW, 0, 0, 1}, w{Pass::kW, 0, 0, 1};
  auto cost = [&](Op op, std::vector<Part> parts) { return instr_cost(compute(op, parts), c); };
  EXPECT_DOUBLE_EQ(cost(Op::kF, {f}).duration, 1.75);    // AR exposed
  EXPECT_DOUBLE_EQ(cost(Op::kB, {b}).exposed_tp, 0.75);  // AR exposed
  EXPECT_DOUBLE_EQ(cost(Op::kBW, {bw}).busy, 2.5);
  EXPECT_DOUBLE_EQ(cost(Op::kBW, {bw}).exposed_tp, 0.25);  // W covers 0.5 of 0.75
  EXPECT_DOUBLE_EQ(cost(Op::kW, {w}).duration, 0.5);
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, b}).duration, 3.0);  // braided: nothing exposed
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, bw}).duration, 3.5);
  EXPECT_DOUBLE_EQ(cost(Op::kFF, {f, f2}).duration, 2.0);
  EXPECT_DOUBLE_EQ(cost(Op::kFW, {f, w}).exposed_tp, 0.25);  // W (0.5) covers part of F's AR

  c.braid_units = 4;  // the block's last collective stays exposed: 0.75 / 4
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, b}).exposed_tp, 0.1875);
  EXPECT_DOUBLE_EQ(cost(Op::kFF, {f, f2}).exposed_tp, 0.1875);
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, bw}).exposed_tp, 0.0);  // its W runs after it
  c.braid_units = 0;
  c.braid_slowdown = 1.1;
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, b}).busy, 3.3);
  c.braid_slowdown = 1;
  c.t_ar = 3;  // more all-reduce than the other pass computes
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, b}).exposed_tp, (3 - 2) + (3 - 1.0));

  c.stage_scale = {1, 2};
  EXPECT_DOUBLE_EQ(cost(Op::kF, {Part{Pass::kF, 0, 1, 0}}).busy, 2.0);
}

// The backward of a recomputed set runs recompute_time * t_f more, stage-scaled; in a braid
// that compute covers the forward's all-reduce like any other.
TEST(CostModel, ARecomputedBackwardRunsTheForwardAgain) {
  CostModel c;  // t_f = t_b = t_w = 1
  c.t_ar = 1.2;
  c.recompute_time = 0.5;
  const Part f{Pass::kF, 0, 0, 0}, b{Pass::kB, 0, 0, 1}, bw{Pass::kBW, 0, 0, 1};
  auto cost = [&](Op op, std::vector<Part> parts, std::array<bool, 2> again) {
    return instr_cost(compute(op, parts), c, again);
  };
  EXPECT_DOUBLE_EQ(cost(Op::kB, {b}, {}).duration, 1 + 1.2);
  EXPECT_DOUBLE_EQ(cost(Op::kB, {b}, {true}).busy, 1.5);
  EXPECT_DOUBLE_EQ(cost(Op::kB, {b}, {true}).exposed_tp, 1.2);  // standalone: still exposed
  EXPECT_DOUBLE_EQ(cost(Op::kBW, {bw}, {true}).busy, 2.5);
  EXPECT_DOUBLE_EQ(cost(Op::kF, {f}, {true}).busy, 1.0);  // a forward never pays it
  // FB without recompute: each all-reduce (1.2) sees 1 of cover: 0.2 + 0.2 exposed.
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, b}, {}).duration, 2 + 0.4);
  // With it the B computes 1.5, which covers the F's all-reduce; the B's still sees 1.
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, b}, {false, true}).busy, 2.5);
  EXPECT_DOUBLE_EQ(cost(Op::kFB, {f, b}, {false, true}).exposed_tp, 0.2);
  c.stage_scale = {2};
  EXPECT_DOUBLE_EQ(cost(Op::kB, {b}, {true}).busy, 2 * 1.5);
}

TEST(CostModel, ValidateNamesTheBadField) {
  CostModel c;
  c.t_w = -1;
  try {
    validate(c, 2);
    FAIL() << "negative t_w accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "tw=-1 must be a finite number >= 0");
  }
  CostModel s;
  s.stage_scale = {1, 1, 1};
  EXPECT_THROW(validate(s, 2), std::invalid_argument);
  CostModel f;
  f.offload_fraction = 1.5;
  EXPECT_THROW(validate(f, 2), std::invalid_argument);
}

// --- pipeline timing --------------------------------------------------------------------------

TEST(Simulate, P2PLatencyDelaysTheReceiver) {
  CostModel c;
  c.p2p_latency = 0.5;
  // r0 F [0,1] -> arrives 1.5; r1 F [1.5,2.5], BW [2.5,4.5] -> arrives 5; r0 BW [5,7].
  const SimResult s = simulate(make_1f1b(2, 1), c);
  EXPECT_DOUBLE_EQ(s.makespan, 7.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].idle, 4.0);
  EXPECT_DOUBLE_EQ(s.ranks[1].start, 1.5);
  EXPECT_DOUBLE_EQ(s.ranks[1].end, 4.5);
  EXPECT_DOUBLE_EQ(s.ranks[1].idle, 0.0);
  EXPECT_DOUBLE_EQ(s.ranks[1].idle_in_step, 4.0);
}

TEST(Simulate, ALinkSendsOneMessageAtATime) {
  CostModel c;
  c.t_f = 0.5;
  c.p2p_bytes = 100;
  c.p2p_bandwidth = 100;  // 1 s per message
  SimOptions opt;
  opt.record_timeline = true;
  const SimResult s = simulate(make_1f1b(2, 2), c, opt);
  // r0: F0[0] [0,0.5] sends on [0.5,1.5]; F0[1] [0.5,1] waits for the link: [1.5,2.5].
  std::vector<const TimelineEvent*> sends;
  for (const TimelineEvent& ev : s.timeline.events)
    if (ev.category == kCategoryP2P && ev.rank == 0) sends.push_back(&ev);
  ASSERT_EQ(sends.size(), 2u);
  EXPECT_DOUBLE_EQ(sends[0]->start, 0.5);
  EXPECT_DOUBLE_EQ(sends[0]->end, 1.5);
  EXPECT_DOUBLE_EQ(sends[1]->start, 1.5);
  EXPECT_DOUBLE_EQ(sends[1]->end, 2.5);
}

TEST(Simulate, StageScaleSlowsOneStage) {
  CostModel c;
  c.stage_scale = {1, 2};
  // r0 F [0,1]; r1 F [1,3], BW [3,7]; r0 BW [7,9].
  const SimResult s = simulate(make_1f1b(2, 1), c);
  EXPECT_DOUBLE_EQ(s.makespan, 9.0);
  EXPECT_DOUBLE_EQ(s.ranks[1].busy, 6.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].busy, 3.0);
}

TEST(Simulate, ThrowsOnADeadlock) {
  Program prog = make_1f1b(2, 1);
  auto& r0 = prog.ranks[0];
  std::rotate(r0.begin(), r0.end() - 2, r0.end());  // RECV_B, BW first: waits for itself
  ASSERT_NE(find_error(prog).find("deadlock"), std::string::npos);
  try {
    simulate(prog, CostModel{});
    FAIL() << "simulate ran a deadlocked program";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("deadlocks"), std::string::npos) << e.what();
  }
}

TEST(Simulate, TimelineHasOneEventPerInstructionInOrder) {
  SimOptions opt;
  opt.record_timeline = true;
  const Program prog = make_stp(3, 8);
  const SimResult s = simulate(prog, with_tar(0.25), opt);
  std::size_t compute_instrs = 0, sends = 0;
  for (const auto& list : prog.ranks)
    for (const Instr& in : list) {
      compute_instrs += in.is_compute();
      sends += in.op == Op::kSendF || in.op == Op::kSendB;
    }
  std::size_t computes = 0, p2p = 0;
  std::vector<double> last_end(prog.p, 0);
  std::vector<int> last_index(prog.p, -1);
  for (const TimelineEvent& ev : s.timeline.events) {
    if (ev.category == kCategoryP2P) ++p2p;
    if (ev.category != kCategoryCompute) continue;
    ++computes;
    EXPECT_EQ(ev.name, to_string(prog.ranks[ev.rank][ev.index]));
    EXPECT_GT(ev.index, last_index[ev.rank]);
    EXPECT_DOUBLE_EQ(ev.start, last_end[ev.rank]);  // the rank reaches it when the last ended
    EXPECT_GE(ev.compute_start(), ev.start);
    EXPECT_GE(ev.end, ev.compute_start());
    last_end[ev.rank] = ev.end;
    last_index[ev.rank] = ev.index;
  }
  EXPECT_EQ(computes, compute_instrs);
  EXPECT_EQ(p2p, sends);
  EXPECT_EQ(s.timeline.p, 3);
  EXPECT_EQ(s.timeline.title, "stp p=3 m=8");
}

// --- offload ------------------------------------------------------------------------------------

// p = 1, one stage: F0[0] OFFLOAD F0[1] F0[2] BW0[2] BW0[1] RELOAD BW0[0].
Program offload_program() {
  Program prog = compute_only(make_1f1b(1, 3));
  const Part s0{Pass::kF, 0, 0, 0};
  auto part = [](Pass pass, int mb) { return Part{pass, 0, 0, mb}; };
  prog.ranks[0] = {compute(Op::kF, {part(Pass::kF, 0)}),
                   comm(Op::kOffload, s0),
                   compute(Op::kF, {part(Pass::kF, 1)}),
                   compute(Op::kF, {part(Pass::kF, 2)}),
                   compute(Op::kBW, {part(Pass::kBW, 2)}),
                   compute(Op::kBW, {part(Pass::kBW, 1)}),
                   comm(Op::kReload, s0),
                   compute(Op::kBW, {part(Pass::kBW, 0)})};
  return prog;
}

TEST(Offload, CopiesTakeHostBandwidthAndTheBackwardWaitsForItsReload) {
  const Program prog = offload_program();
  ASSERT_EQ(find_error(prog), "");
  CostModel c;
  c.act_bytes = 100;
  c.host_bandwidth = 100;  // 1 s per copy
  SimOptions opt;
  opt.record_timeline = opt.record_memory = true;
  const SimResult s = simulate(prog, c, opt);
  // F0 [0,1]; D2H [1,2]; F1 [1,2]; F2 [2,3]; BW2 [3,5]; BW1 [5,7]; H2D [7,8]; BW0 [8,10].
  EXPECT_DOUBLE_EQ(s.makespan, 10.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].reload_wait, 1.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].idle, 1.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].offloaded_bytes, 100.0);
  // Resident: 100 @1, swap @2 (set 0 leaves as set 1 arrives), 200 @3, 100 @5, swap @7, 0 @10.
  EXPECT_EQ(s.ranks[0].peak_sets, 2);
  EXPECT_DOUBLE_EQ(s.ranks[0].peak_bytes, 200.0);
  const std::vector<std::tuple<double, double, int>> want = {{1, 100, 1}, {2, 100, 1}, {3, 200, 2},
                                                             {5, 100, 1}, {7, 100, 1}, {10, 0, 0}};
  ASSERT_EQ(s.ranks[0].memory.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_DOUBLE_EQ(s.ranks[0].memory[i].time, std::get<0>(want[i])) << i;
    EXPECT_DOUBLE_EQ(s.ranks[0].memory[i].bytes, std::get<1>(want[i])) << i;
    EXPECT_EQ(s.ranks[0].memory[i].sets, std::get<2>(want[i])) << i;
  }
  int copies = 0;
  for (const TimelineEvent& ev : s.timeline.events) {
    if (ev.category == kCategoryOffload) {
      ++copies;
      EXPECT_DOUBLE_EQ(ev.start, 1.0);
      EXPECT_DOUBLE_EQ(ev.end, 2.0);
    }
    if (ev.category == kCategoryReload) {
      ++copies;
      EXPECT_DOUBLE_EQ(ev.start, 7.0);
      EXPECT_DOUBLE_EQ(ev.end, 8.0);
    }
    if (ev.name == "BW0[0]") {
      EXPECT_DOUBLE_EQ(ev.reload_wait, 1.0);
    }
  }
  EXPECT_EQ(copies, 2);

  // Without the copies the same order holds 3 sets.
  const SimResult plain = simulate(compute_only(prog), c);
  EXPECT_EQ(plain.ranks[0].peak_sets, 3);
  EXPECT_DOUBLE_EQ(plain.ranks[0].peak_bytes, 300.0);
}

// A recomputed set holds recompute_keep of its bytes from its forward to its backward (and
// moves only that to host and back), all of them during its backward, whose compute grows by
// recompute_time * t_f.
TEST(Offload, ARecomputedSetHoldsAndMovesItsKeptShare) {
  Program prog = offload_program();
  prog.ranks[0][0].parts[0].recompute = true;  // F0[0]r
  ASSERT_EQ(find_error(prog), "");
  CostModel c;
  c.act_bytes = 100;
  c.host_bandwidth = 100;  // 1 s per 100 bytes
  c.recompute_keep = 0.25;
  c.recompute_time = 0.5;
  SimOptions opt;
  opt.record_memory = true;
  const SimResult s = simulate(prog, c, opt);
  // F0 [0,1] keeps 25; D2H of 25 [1,1.25]; F1 [1,2]; F2 [2,3]; BW2 [3,5]; BW1 [5,7];
  // H2D of 25 [7,7.25]; BW0 [7.25, 7.25 + 2 + 0.5].
  EXPECT_DOUBLE_EQ(s.makespan, 9.75);
  EXPECT_DOUBLE_EQ(s.ranks[0].reload_wait, 0.25);
  EXPECT_DOUBLE_EQ(s.ranks[0].offloaded_bytes, 25.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].busy, 3 * 1.0 + 3 * 2.0 + 0.5);  // F 1, BW 2, again 0.5
  // Resident: 25 @1, 0 @1.25, 100 @2, 200 @3, 100 @5, 25 @7 (BW1 frees 100, the reload's
  // destination takes 25), 100 @7.25 (BW0 rebuilds the other 75), 0 @9.75.
  const std::vector<std::pair<double, double>> want = {{1, 25},  {1.25, 0}, {2, 100},    {3, 200},
                                                       {5, 100}, {7, 25},   {7.25, 100}, {9.75, 0}};
  ASSERT_EQ(s.ranks[0].memory.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    EXPECT_DOUBLE_EQ(s.ranks[0].memory[i].time, want[i].first) << i;
    EXPECT_DOUBLE_EQ(s.ranks[0].memory[i].bytes, want[i].second) << i;
  }
  // Without the OFFLOAD/RELOAD the set holds 25 until BW0 begins at 7.
  Program kept = prog;
  std::erase_if(kept.ranks[0], [](const Instr& in) { return !in.is_compute(); });
  const SimResult k = simulate(kept, c, opt);
  EXPECT_DOUBLE_EQ(k.makespan, 9.5);
  EXPECT_DOUBLE_EQ(k.ranks[0].peak_bytes, 225.0);  // F0's 25 + F1 + F2 at 3
}

// Resident bytes of rank 0 as (time, bytes) samples, recorded with the timeline.
std::vector<std::pair<double, double>> memory_of(const SimResult& s) {
  std::vector<std::pair<double, double>> out;
  for (const MemorySample& m : s.ranks[0].memory) out.push_back({m.time, m.bytes});
  return out;
}

// Note [Partial sets]: a trip with share 0.5 moves half of the set, in half the copy time, and
// the other half stays resident (the set stays counted).
TEST(PartialSets, AHalfShareTripFreesHalfTheBytesInHalfTheTime) {
  Program prog = offload_program();
  for (Instr& in : prog.ranks[0])
    if (in.op == Op::kOffload || in.op == Op::kReload) in.share = 0.5;
  CostModel c;
  c.act_bytes = c.host_bandwidth = 100;  // a whole set copies in 1 s
  const SimResult s = simulate(prog, c, {.record_timeline = true, .record_memory = true});
  // F0 [0,1]; D2H of 50 [1,1.5]; F1 [1,2]; F2 [2,3]; BW2 [3,5]; BW1 [5,7]; H2D of 50 [7,7.5];
  // BW0 [7.5,9.5]. Resident: 100 @1, 50 @1.5, 150 @2, 250 @3, 150 @5, 100 @7 (BW1 frees 100,
  // the reload's destination takes 50), 0 @9.5.
  EXPECT_DOUBLE_EQ(s.makespan, 9.5);
  EXPECT_DOUBLE_EQ(s.ranks[0].reload_wait, 0.5);
  EXPECT_DOUBLE_EQ(s.ranks[0].offloaded_bytes, 50.0);
  EXPECT_EQ(s.ranks[0].peak_sets, 3);  // set 0 is still partly resident
  const std::vector<std::pair<double, double>> want = {{1, 100}, {1.5, 50}, {2, 150}, {3, 250},
                                                       {5, 150}, {7, 100},  {9.5, 0}};
  EXPECT_EQ(memory_of(s), want);
  int copies = 0;
  for (const TimelineEvent& ev : s.timeline.events)
    if (ev.category == kCategoryOffload || ev.category == kCategoryReload) {
      ++copies;
      EXPECT_DOUBLE_EQ(ev.end - ev.start, 0.5);
    }
  EXPECT_EQ(copies, 2);
}

// 100-byte sets over a link of `bandwidth` bytes/s; a recomputed set keeps `keep` and re-runs
// `time` forwards.
CostModel recompute_model(double bandwidth, double keep, double time) {
  CostModel c;
  c.act_bytes = 100;
  c.host_bandwidth = bandwidth;
  c.recompute_keep = keep;
  c.recompute_time = time;
  return c;
}

// A set recomputing half its layers keeps 1 - 0.5 (1 - keep) of its bytes until its backward,
// moves that share on its trip, and its backward runs half the extra compute.
TEST(PartialSets, AHalfShareRecomputeKeepsMoreAndCostsHalfTheExtraTime) {
  const CostModel c = recompute_model(100, 0.25, 0.5);
  Program prog = offload_program();
  prog.ranks[0][0].parts[0].recompute = true;
  prog.ranks[0][0].parts[0].recompute_share = 0.5;
  ASSERT_EQ(find_error(prog), "");
  SimOptions opt;
  opt.record_memory = true;
  Program kept = prog;
  std::erase_if(kept.ranks[0], [](const Instr& in) { return !in.is_compute(); });
  // F0 keeps 62.5; F1 [1,2]; F2 [2,3]; BW2 [3,5]; BW1 [5,7]; BW0 [7, 7 + 2 + 0.25].
  const SimResult k = simulate(kept, c, opt);
  EXPECT_DOUBLE_EQ(k.makespan, 9.25);
  EXPECT_DOUBLE_EQ(k.ranks[0].busy, 3 * 1.0 + 3 * 2.0 + 0.25);
  EXPECT_DOUBLE_EQ(k.ranks[0].peak_bytes, 262.5);
  // The trip moves the kept 62.5: D2H [1,1.625]; H2D [7,7.625]; BW0 [7.625, 9.875].
  const SimResult s = simulate(prog, c, opt);
  EXPECT_DOUBLE_EQ(s.ranks[0].offloaded_bytes, 62.5);
  EXPECT_DOUBLE_EQ(s.makespan, 9.875);
  EXPECT_DOUBLE_EQ(s.ranks[0].peak_bytes, 200.0);
  EXPECT_DOUBLE_EQ(kept_share(c, 0.5), 0.625);
}

// Whole shares are the figures of whole sets to the bit: kept_share(1) is recompute_keep itself
// (1 - (1 - 0.15) is not 0.15 in doubles), and an explicit share of 1 changes nothing.
TEST(PartialSets, ShareOneIsBitIdenticalToAWholeSet) {
  for (double keep : {0.15, 0.1, 0.3, 0.7})
    EXPECT_EQ(kept_share(recompute_model(1, keep, 1), 1.0), keep);
  const CostModel c = recompute_model(70, 0.15, 0.3);
  Program whole = offload_program();
  whole.ranks[0][0].parts[0].recompute = true;
  Program one = whole;
  one.ranks[0][0].parts[0].recompute_share = 1;
  for (Instr& in : one.ranks[0])
    if (in.op == Op::kOffload || in.op == Op::kReload) in.share = 1;
  SimOptions opt;
  opt.record_memory = true;
  const SimResult a = simulate(whole, c, opt), b = simulate(one, c, opt);
  EXPECT_EQ(a.makespan, b.makespan);
  EXPECT_EQ(a.ranks[0].offloaded_bytes, 100 * 0.15);
  ASSERT_EQ(a.ranks[0].memory.size(), b.ranks[0].memory.size());
  for (std::size_t i = 0; i < a.ranks[0].memory.size(); ++i)
    EXPECT_EQ(a.ranks[0].memory[i].bytes, b.ranks[0].memory[i].bytes) << i;
}

// A recomputed backward with share g runs g * recompute_time * t_f more.
TEST(CostModel, APartiallyRecomputedBackwardRunsThatShareOfTheForwardAgain) {
  CostModel c;  // t_f = t_b = t_w = 1
  c.recompute_time = 0.5;
  const Part b{Pass::kB, 0, 0, 1};
  const Instr in = compute(Op::kB, {b});
  EXPECT_DOUBLE_EQ(instr_cost(in, c, std::array<double, 2>{0.25, 0}).busy, 1 + 0.125);
  EXPECT_DOUBLE_EQ(instr_cost(in, c, std::array<double, 2>{1, 0}).busy, 1.5);
  EXPECT_DOUBLE_EQ(instr_cost(in, c, std::array<double, 2>{}).busy, 1.0);
}

TEST(Offload, PartialOffloadKeepsTheRestResident) {
  CostModel c;
  c.act_bytes = 100;
  c.offload_fraction = 0.5;
  const SimResult s = simulate(offload_program(), c);
  EXPECT_DOUBLE_EQ(s.ranks[0].peak_bytes, 250.0);  // 50 stay of set 0, plus sets 1 and 2
  EXPECT_EQ(s.ranks[0].peak_sets, 2);
  EXPECT_DOUBLE_EQ(s.ranks[0].offloaded_bytes, 50.0);
}

// p = 1, one stage, W deferred: F0[0] B0[0] OFFLOAD F0[1] BW0[1] RELOAD W0[0]; what W0[0]
// holds (w_held_fraction of the set) makes the second trip.
TEST(Offload, WhatADeferredWHoldsGoesToHostAndTheWWaitsForItsReload) {
  const Part s0{Pass::kF, 0, 0, 0};
  auto part = [](Pass pass, int mb) { return Part{pass, 0, 0, mb}; };
  Program prog = compute_only(make_1f1b(1, 2));
  prog.ranks[0] = {compute(Op::kF, {part(Pass::kF, 0)}),
                   compute(Op::kB, {part(Pass::kB, 0)}),
                   comm(Op::kOffload, s0),
                   compute(Op::kF, {part(Pass::kF, 1)}),
                   compute(Op::kBW, {part(Pass::kBW, 1)}),
                   comm(Op::kReload, s0),
                   compute(Op::kW, {part(Pass::kW, 0)})};
  ASSERT_EQ(find_error(prog), "");
  CostModel c;
  c.act_bytes = 100;
  c.w_held_fraction = 1.5;
  c.host_bandwidth = 75;  // the 150 held bytes: 2 s per copy
  const SimResult s = simulate(prog, c, SimOptions{.record_timeline = true, .record_memory = true});
  // F0 [0,1]; B0 [1,2] (150 held); D2H [2,4]; F1 [2,3]; BW1 [3,5]; H2D [5,7]; W0 [7,8].
  EXPECT_DOUBLE_EQ(s.makespan, 8.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].reload_wait, 2.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].offloaded_bytes, 150.0);
  // 100 @1, 150 @2, 250 @3, 100 @4 (the held bytes left), 0 @5, 150 @5 (reload), 0 @8.
  EXPECT_DOUBLE_EQ(s.ranks[0].peak_bytes, 250.0);
  EXPECT_EQ(s.ranks[0].peak_sets_until_w, 2);
  std::vector<std::pair<double, double>> got;
  for (const MemorySample& m : s.ranks[0].memory) got.emplace_back(m.time, m.bytes);
  EXPECT_EQ(got, (std::vector<std::pair<double, double>>{
                     {1, 100}, {2, 150}, {3, 250}, {4, 100}, {5, 150}, {8, 0}}));
  for (const TimelineEvent& ev : s.timeline.events)
    if (ev.name == "W0[0]") {
      EXPECT_DOUBLE_EQ(ev.reload_wait, 2.0);
    }
  // Without the trip the held bytes stay: 100 + 150 from 3 to 5.
  EXPECT_DOUBLE_EQ(simulate(compute_only(prog), c).ranks[0].peak_bytes, 250.0);
  c.host_bandwidth = 0;  // instant copies: the held bytes leave at once
  EXPECT_DOUBLE_EQ(simulate(prog, c).ranks[0].peak_bytes, 150.0);
}

TEST(Offload, AReloadWaitsForItsOffloadAndTheH2DChannel) {
  // Slow host link: D2H of set 0 runs [1,6]; the RELOAD issued at 7 starts then, ends at 12.
  CostModel c;
  c.act_bytes = 100;
  c.host_bandwidth = 20;  // 5 s per copy
  SimOptions opt;
  opt.record_timeline = true;
  Program prog = offload_program();
  auto& list = prog.ranks[0];
  std::rotate(list.begin() + 4, list.begin() + 6, list.begin() + 7);  // RELOAD before BW0[2]
  ASSERT_EQ(find_error(prog), "");
  const SimResult s = simulate(prog, c, opt);
  for (const TimelineEvent& ev : s.timeline.events)
    if (ev.category == kCategoryReload) {
      EXPECT_DOUBLE_EQ(ev.start, 6.0);  // issued at 3, after the offload completed at 6
      EXPECT_DOUBLE_EQ(ev.end, 11.0);
    }
  // BW2 [3,5], BW1 [5,7], BW0 waits for the reload: [11,13].
  EXPECT_DOUBLE_EQ(s.makespan, 13.0);
  EXPECT_DOUBLE_EQ(s.ranks[0].reload_wait, 4.0);
}

TEST(Simulate, PerStageActivationBytes) {
  CostModel c;
  c.stage_act_bytes = {10, 30};
  const SimResult s = simulate(make_1f1b(2, 4), c);
  EXPECT_DOUBLE_EQ(s.ranks[0].peak_bytes, 2 * 10.0);  // rank 0 holds p = 2 sets of stage 0
  EXPECT_DOUBLE_EQ(s.ranks[1].peak_bytes, 1 * 30.0);
}

// A deferred W keeps w_held_fraction of its set until it runs: F0 B0 F1 W0 BW1 on one rank,
// sets of 10 bytes, unit times. At 0.4, resident: 10 | 4 | 14 | 10 | 0.
TEST(Simulate, DeferredWHoldsItsShareOfTheSetUntilW) {
  const Program prog = stp::testing::one_stage_program(
      2, {compute(Op::kF, {{Pass::kF, 0, 0, 0}}), compute(Op::kB, {{Pass::kB, 0, 0, 0}}),
          compute(Op::kF, {{Pass::kF, 0, 0, 1}}), compute(Op::kW, {{Pass::kW, 0, 0, 0}}),
          compute(Op::kBW, {{Pass::kBW, 0, 0, 1}})});
  ASSERT_EQ(find_error(prog), "");
  CostModel c;
  c.act_bytes = 10;
  EXPECT_DOUBLE_EQ(simulate(prog, c).ranks[0].peak_bytes, 10.0);  // the table's convention
  c.w_held_fraction = 0.4;
  EXPECT_DOUBLE_EQ(simulate(prog, c).ranks[0].peak_bytes, 14.0);
  EXPECT_EQ(simulate(prog, c).ranks[0].peak_sets, 1);  // set counts keep the table's convention
  c.w_held_fraction = 1.5;  // W reads more than F saved: 10 | 15 | 25 | 10 | 0
  EXPECT_DOUBLE_EQ(simulate(prog, c).ranks[0].peak_bytes, 25.0);
  c.w_held_fraction = -0.5;
  EXPECT_THROW(simulate(prog, c), std::invalid_argument);
}

}  // namespace
}  // namespace stp::schedule
