#include "offload/planner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <set>

#include "common/bytes.h"
#include "offload/plan_sweep.h"
#include "schedule/generators.h"
#include "schedule/simulate.h"
#include "schedule/verify.h"

namespace stp::offload {
namespace {

using schedule::Op;
using ::testing::HasSubstr;

constexpr double kGiB = 1024.0 * 1024 * 1024;

// Times in seconds; one set = 1 GiB; host link 25 GB/s: a copy takes about one forward.
schedule::CostModel costs(double gbps = 25) {
  schedule::CostModel c;
  c.t_f = 0.040;
  c.t_b = 0.040;
  c.t_w = 0.030;
  c.t_ar = 0.008;
  c.act_bytes = kGiB;
  c.host_bandwidth = gbps * 1e9;
  return c;
}

int count_ops(const schedule::Program& p, Op op) {
  int n = 0;
  for (const auto& rank : p.ranks)
    for (const auto& in : rank) n += in.op == op;
  return n;
}

struct Case {
  std::string kind;
  int p, m;
};

std::vector<Case> cases() {
  return {{"stp", 2, 5},  {"stp", 4, 11},   {"stp", 4, 16}, {"zb-v", 4, 12},
          {"1f1b", 4, 8}, {"1f1b-i", 2, 4}, {"zb-h1", 3, 9}};
}

TEST(Planner, UnlimitedOrAmpleBudgetInsertsNothing) {
  for (const Case& c : cases()) {
    schedule::Program prog = schedule::make(c.kind, c.p, c.m);
    Plan plan = plan_offload(prog, costs(), kUnlimitedBudget);
    EXPECT_EQ(plan.program, prog) << c.kind;
    EXPECT_TRUE(plan.sets.empty());
    EXPECT_EQ(plan.step_after, plan.step_before);
    EXPECT_EQ(plan.host_bytes, 0);
    // A budget equal to the plan-free peak needs nothing either.
    Plan exact = plan_offload(prog, costs(), plan.peak_bytes_before);
    EXPECT_EQ(exact.program, prog) << c.kind;
  }
}

TEST(Planner, StpPeakWithoutOffloadIsThreePSets) {
  schedule::Program prog = schedule::make("stp", 4, 11);
  Plan plan = plan_offload(prog, costs(), kUnlimitedBudget);
  EXPECT_EQ(plan.peak_bytes_before, 12 * kGiB);  // 3p M_a (stp-notes §2.6)
}

// Every budget between the minimum and the plan-free peak: the plan verifies, its simulated
// peak fits on every rank, and it never makes the step faster than without offload.
TEST(Planner, FeasibleBudgetsAreRespectedPerSimulation) {
  for (const Case& c : cases()) {
    schedule::Program prog = schedule::make(c.kind, c.p, c.m);
    const schedule::CostModel cm = costs();
    const double peak = schedule::simulate(prog, cm).max_peak_bytes();
    const double floor = minimum_budget(prog, cm);
    ASSERT_LE(floor, peak) << c.kind;
    for (int i = 1; i <= 6; ++i) {
      const double budget = peak - (peak - floor) * i / 6.0 + (i == 6 ? 0 : 0.3 * kGiB);
      Plan plan = plan_offload(prog, cm, budget);
      SCOPED_TRACE(c.kind + " p=" + std::to_string(c.p) + " budget " + format_bytes(budget));
      EXPECT_EQ(schedule::find_error(plan.program), "");
      schedule::SimResult sim = schedule::simulate(plan.program, cm);
      for (std::size_t r = 0; r < sim.ranks.size(); ++r) {
        EXPECT_LE(sim.ranks[r].peak_bytes, budget) << "rank " << r;
        EXPECT_EQ(sim.ranks[r].peak_bytes, plan.rank_peak_after[r]);
      }
      EXPECT_EQ(sim.makespan, plan.step_after);
      EXPECT_GE(plan.step_after, plan.step_before * (1 - 1e-12));
      EXPECT_EQ(count_ops(plan.program, Op::kOffload), static_cast<int>(plan.sets.size()));
      EXPECT_EQ(count_ops(plan.program, Op::kReload), static_cast<int>(plan.sets.size()));
      if (budget < peak) {
        EXPECT_FALSE(plan.sets.empty());
      }
      EXPECT_LE(plan.host_bytes, plan.sets.size() * kGiB);
      if (!plan.sets.empty()) {
        EXPECT_GT(plan.host_bytes, 0);
      }
    }
  }
}

TEST(Planner, BelowTheMinimumIsAnInputErrorNamingIt) {
  schedule::Program prog = schedule::make("stp", 4, 11);
  const double floor = minimum_budget(prog, costs());
  EXPECT_EQ(floor, 4 * kGiB);
  try {
    plan_offload(prog, costs(), floor - 1);
    FAIL() << "a budget below the minimum was planned";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(),
                HasSubstr("below the smallest feasible budget 4.00 GiB (4294967296 bytes)"));
    EXPECT_THAT(e.what(), HasSubstr("stp p=4 m=11"));
  }
  Plan at_floor = plan_offload(prog, costs(), floor);  // the minimum itself is feasible
  EXPECT_LE(at_floor.peak_bytes_after, floor);
}

// What a deferred W holds after its B (w_held_fraction > 1, as the engine measures) is a
// candidate like a forward's set: with it the floor falls, every plan verifies and fits, and
// the second trips it plans move w_held_fraction of a set.
TEST(Planner, WhatADeferredWHoldsIsOffloadedToo) {
  for (const Case& c : {Case{"stp", 4, 16}, Case{"zb-v", 4, 12}, Case{"zb-h1", 3, 9}}) {
    SCOPED_TRACE(c.kind);
    schedule::Program prog = schedule::make(c.kind, c.p, c.m);
    schedule::CostModel cm = costs(50);
    cm.w_held_fraction = 1.3;
    const double peak = schedule::simulate(prog, cm).max_peak_bytes();
    const double floor = minimum_budget(prog, cm);
    Plan plan = plan_offload(prog, cm, floor);
    EXPECT_EQ(schedule::find_error(plan.program), "");
    EXPECT_LE(schedule::simulate(plan.program, cm).max_peak_bytes(), floor * (1 + 1e-12));
    int w_trips = 0;
    for (const PlannedSet& s : plan.sets)
      if (s.w_held) {
        ++w_trips;
        EXPECT_DOUBLE_EQ(s.bytes, 1.3 * kGiB * s.share);  // Note [Partial sets]
      }
    EXPECT_GT(w_trips, 0) << "the floor " << format_bytes(floor) << " needs no second trip";
    EXPECT_EQ(count_ops(plan.program, Op::kOffload), static_cast<int>(plan.sets.size()));
    // Without second trips the floor is higher.
    PlanOptions first_trips_only;
    first_trips_only.w_held_trips = false;
    EXPECT_LT(floor, minimum_budget(prog, cm, first_trips_only)) << format_bytes(peak);
  }
}

// peak_moment names what the fullest rank holds at its peak: the sets' bytes add up to it, and
// at the floor of STP nothing there is on its way to host or back unaccounted.
TEST(Planner, ThePeakMomentAccountsForEveryByteOfThePeak) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.kind);
    schedule::Program prog = schedule::make(c.kind, c.p, c.m);
    schedule::CostModel cm = costs();
    cm.w_held_fraction = 1.3;
    for (const schedule::Program& p :
         {prog, plan_offload(prog, cm, minimum_budget(prog, cm)).program}) {
      const PeakMoment m = peak_moment(p, cm);
      EXPECT_EQ(m.bytes, schedule::simulate(p, cm).max_peak_bytes());
      double sum = 0;
      for (const HeldSet& h : m.sets) sum += h.bytes;
      EXPECT_NEAR(sum, m.bytes, 1e-6 * m.bytes) << to_text(m);
      EXPECT_THAT(to_text(m), HasSubstr("rank " + std::to_string(m.rank) + " at "));
    }
  }
}

TEST(Planner, StpOffloadsChunkZeroFirstAndHidesTheCopies) {
  // The reference offloads chunk 0 (its sets wait longest for their backward in the V). A
  // budget that needs a few sets per rank gets only chunk-0 sets, and with a link that copies
  // a set in half a forward the transfers hide completely.
  schedule::Program prog = schedule::make("stp", 4, 16);
  Plan plan = plan_offload(prog, costs(50), 9 * kGiB);
  ASSERT_FALSE(plan.sets.empty());
  for (const PlannedSet& s : plan.sets)
    EXPECT_EQ(s.chunk, 0) << "rank " << s.rank << " mb " << s.mb;
  EXPECT_LE(plan.slowdown(), 1e-9);
  // Each OFFLOAD directly follows the instruction that ran its forward.
  for (int r = 0; r < plan.program.p; ++r) {
    const auto& list = plan.program.ranks[r];
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (list[i].op != Op::kOffload) continue;
      std::size_t j = i;
      while (j > 0 && list[j - 1].op == Op::kOffload) --j;
      ASSERT_GT(j, 0u);
      bool has_f = false;
      for (const auto& part : list[j - 1].parts)
        has_f |= part.pass == schedule::Pass::kF && part.stage == list[i].ref.stage &&
                 part.mb == list[i].ref.mb;
      EXPECT_TRUE(has_f) << schedule::to_string(list[i]) << " after "
                         << schedule::to_string(list[j - 1]);
    }
  }
}

TEST(Planner, SlowerLinkCostsMoreAtTheSameBudget) {
  schedule::Program prog = schedule::make("stp", 4, 16);
  const double budget = 11 * kGiB;
  Plan fast = plan_offload(prog, costs(200), budget);
  Plan slow = plan_offload(prog, costs(5), budget);
  EXPECT_LE(fast.slowdown(), slow.slowdown());
  EXPECT_GT(slow.slowdown(), 0.0);
  // At 5 GB/s a set takes ~5 forwards to copy: the last rank's warm-up (12 sets in 0.5 s)
  // leaves time for one whole set to be off the device, so 11 sets is the least it can hold.
  PlanOptions whole;
  whole.partial_sets = false;
  EXPECT_EQ(minimum_budget(prog, costs(5), whole), 11 * kGiB);
  EXPECT_THROW(plan_offload(prog, costs(5), 10.5 * kGiB, whole), std::invalid_argument);
  // Part of a second set goes lower: PartialSets.OffloadAloneGoesBelowTheWholeSetFloor.
}

TEST(Planner, ReloadLeadCoversTheTransferWhereMemoryAllows) {
  // A slow link (a copy takes three forwards, more than one braided block): reloads start two
  // blocks ahead, early enough that no backward waits, so the planned step equals the
  // plan-free one.
  schedule::Program prog = schedule::make("stp", 4, 16);
  Plan plan = plan_offload(prog, costs(8), 10 * kGiB);
  ASSERT_FALSE(plan.sets.empty());
  EXPECT_NEAR(plan.step_after, plan.step_before, 1e-9 * plan.step_before);
  int prefetched = 0;
  for (const PlannedSet& s : plan.sets) prefetched += s.lead >= 2;
  EXPECT_GT(prefetched, 0);
}

TEST(Planner, RejectsBadInput) {
  schedule::Program prog = schedule::make("stp", 2, 5);
  EXPECT_THROW(plan_offload(prog, costs(), 0), std::invalid_argument);
  EXPECT_THROW(plan_offload(prog, costs(), -5), std::invalid_argument);
  EXPECT_THROW(plan_offload(prog, costs(), std::nan("")), std::invalid_argument);
  Plan planned = plan_offload(prog, costs(), 4 * kGiB);
  ASSERT_FALSE(planned.sets.empty());
  try {
    plan_offload(planned.program, costs(), 4 * kGiB);
    FAIL() << "planned a program that already offloads";
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("already has OFFLOAD"));
  }
  schedule::CostModel bad = costs();
  bad.host_bandwidth = -1;
  EXPECT_THROW(plan_offload(prog, bad, 4 * kGiB), std::invalid_argument);
  schedule::Program broken = prog;
  broken.ranks[0].pop_back();
  EXPECT_THROW(plan_offload(broken, costs(), 4 * kGiB), std::invalid_argument);
}

TEST(Planner, PerStageBytesAndSearchBound) {
  schedule::Program prog = schedule::make("stp", 2, 5);
  schedule::CostModel cm = costs();
  cm.act_bytes = 0;
  cm.stage_act_bytes = {2 * kGiB, 1 * kGiB, 1 * kGiB, 0.5 * kGiB};
  const double peak = schedule::simulate(prog, cm).max_peak_bytes();
  const double floor = minimum_budget(prog, cm);
  ASSERT_LT(floor, peak);
  PlanOptions tight;
  tight.max_simulations = 3;  // the search stops early but still returns a feasible plan
  Plan plan = plan_offload(prog, cm, (peak + floor) / 2, tight);
  EXPECT_LE(plan.peak_bytes_after, (peak + floor) / 2);
  EXPECT_EQ(schedule::find_error(plan.program), "");
}

// Random stage sizes, stage speeds, links and budgets: a plan either fits every rank in the
// simulation or the planner refuses with a minimum above the budget.
TEST(Planner, RandomProblemsEitherFitOrNameAMinimumAboveTheBudget) {
  std::mt19937 rng(2024);
  std::uniform_real_distribution<double> u(0, 1);
  const char* kinds[] = {"stp", "zb-v", "1f1b", "zb-h1"};
  int planned = 0, refused = 0;
  for (int trial = 0; trial < 24; ++trial) {
    const std::string kind = kinds[trial % 4];
    const int p = 2 + static_cast<int>(rng() % 3);
    const int m = kind == "stp" ? 3 * p - 1 + static_cast<int>(rng() % 3) : 2 * p;
    schedule::Program prog = schedule::make(kind, p, m);
    schedule::CostModel cm = costs(2 + 60 * u(rng));
    cm.act_bytes = 0;
    for (int s = 0; s < prog.stages(); ++s) {
      cm.stage_act_bytes.push_back((0.25 + u(rng)) * kGiB);
      cm.stage_scale.push_back(0.5 + u(rng));
    }
    const double peak = schedule::simulate(prog, cm).max_peak_bytes();
    const double budget = peak * (0.3 + 0.7 * u(rng));
    SCOPED_TRACE(kind + " p=" + std::to_string(p) + " m=" + std::to_string(m) + " budget " +
                 format_bytes(budget));
    try {
      Plan plan = plan_offload(prog, cm, budget);
      ++planned;
      EXPECT_EQ(schedule::find_error(plan.program), "");
      EXPECT_LE(schedule::simulate(plan.program, cm).max_peak_bytes(), budget * (1 + 1e-9));
    } catch (const std::invalid_argument& e) {
      ++refused;
      const std::string msg = e.what();
      ASSERT_THAT(msg, HasSubstr("smallest feasible budget"));
      const auto at = msg.find(" bytes) for ");
      const auto open = msg.rfind('(', at);
      const double floor = std::stod(msg.substr(open + 1, at - open - 1));
      EXPECT_GT(floor, budget);
    }
  }
  EXPECT_GT(planned, 0);
  EXPECT_GT(refused, 0);
}

TEST(PlanSweep, GoesFromThePeakToInfeasibleAndStepTimeNeverDrops) {
  schedule::Program prog = schedule::make("stp", 4, 11);
  Sweep sw = sweep_budgets(prog, costs(), 6);
  ASSERT_EQ(sw.points.size(), 7u);
  EXPECT_EQ(sw.points.front().budget_bytes, sw.peak_bytes);
  EXPECT_EQ(sw.points.front().sets, 0);
  EXPECT_EQ(sw.points[5].budget_bytes, sw.min_budget);
  EXPECT_TRUE(sw.points[5].feasible);
  EXPECT_FALSE(sw.points.back().feasible);
  for (const SweepPoint& p : sw.points)
    if (p.feasible) {
      EXPECT_LE(p.peak_bytes, p.budget_bytes);
      EXPECT_GE(p.step, sw.step * (1 - 1e-12));
    }
  std::string table = to_table(sw);
  EXPECT_THAT(table, HasSubstr("below the minimum 4.00 GiB"));
  std::string svg = to_svg(sw, "stp p=4");
  EXPECT_THAT(svg, HasSubstr("<svg"));
  EXPECT_THAT(svg, HasSubstr("<polyline"));
  EXPECT_THAT(svg, HasSubstr("infeasible"));
}

// ---- recompute and search quality -------------------------------------------------------------

using Recompute = PlanOptions::Recompute;

PlanOptions with(Recompute r) {
  PlanOptions o;
  o.recompute = r;
  return o;
}

// A transformer layer recomputed from its residual inputs keeps ~15 % of its set (apps/cmd_plan).
schedule::CostModel recompute_costs(double gbps = 25) {
  schedule::CostModel c = costs(gbps);
  c.recompute_keep = 0.15;
  c.recompute_time = 1;
  return c;
}

bool all_forwards_marked(const schedule::Program& p) {
  for (const auto& rank : p.ranks)
    for (const auto& in : rank)
      for (const auto& part : in.parts)
        if (part.pass == schedule::Pass::kF && !part.recompute) return false;
  return true;
}

// The planner before the local search (greedy, prune, reloads earlier; committed at beac0cc):
// its step at each budget, 25 GB/s. With recompute off the planner must match or beat it.
struct Expected {
  const char* kind;
  int p, m;
  double budget_gib, step;
};
TEST(Planner, RecomputeOffNeverLosesToThePreviousSearch) {
  const Expected expected[] = {{"stp", 2, 5, 4.5, 1.210000},   {"stp", 2, 5, 3.0, 1.361799},
                               {"stp", 4, 11, 8.0, 2.718000},  {"stp", 4, 11, 4.0, 3.130446},
                               {"stp", 4, 16, 6.0, 3.818000},  {"stp", 4, 16, 4.0, 4.498144},
                               {"zb-v", 4, 12, 3.5, 3.168000}, {"zb-v", 4, 12, 2.0, 3.729195},
                               {"1f1b", 4, 8, 2.0, 1.426849},  {"1f1b-i", 2, 4, 2.0, 1.104950},
                               {"zb-h1", 3, 9, 2.0, 1.266000}};
  for (const Expected& e : expected) {
    schedule::Program prog = schedule::make(e.kind, e.p, e.m);
    SCOPED_TRACE(std::string(e.kind) + " p=" + std::to_string(e.p) + " budget " +
                 std::to_string(e.budget_gib) + " GiB");
    Plan plan = plan_offload(prog, recompute_costs(), e.budget_gib * kGiB, with(Recompute::kOff));
    EXPECT_LE(plan.step_after, e.step * (1 + 1e-6));
    if (e.step == plan.step_before) {
      EXPECT_EQ(plan.step_after, plan.step_before);
    }
    EXPECT_TRUE(plan.recomputed.empty());
    EXPECT_EQ(plan.recomputed_bytes, 0);
    EXPECT_EQ(schedule::find_error(plan.program), "");
  }
}

// Off ignores the recompute costs entirely, and auto with a recompute that keeps everything
// (recompute_keep 1) is off.
TEST(Planner, RecomputeOffIsTheOffloadPlanner) {
  schedule::Program prog = schedule::make("stp", 4, 11);
  schedule::CostModel plain = costs();
  const double budget = 6 * kGiB;
  Plan off = plan_offload(prog, recompute_costs(), budget, with(Recompute::kOff));
  EXPECT_EQ(off.program, plan_offload(prog, plain, budget, with(Recompute::kOff)).program);
  EXPECT_EQ(off.program, plan_offload(prog, plain, budget, with(Recompute::kAuto)).program);
  EXPECT_EQ(minimum_budget(prog, plain, with(Recompute::kAuto)),
            minimum_budget(prog, plain, with(Recompute::kOff)));
}

TEST(Planner, RecomputeAllMarksEveryForward) {
  for (const Case& c : {Case{"stp", 2, 5}, Case{"zb-v", 4, 12}, Case{"1f1b-i", 2, 4}}) {
    SCOPED_TRACE(c.kind);
    schedule::Program prog = schedule::make(c.kind, c.p, c.m);
    const schedule::CostModel cm = recompute_costs();
    Plan ample = plan_offload(prog, cm, kUnlimitedBudget, with(Recompute::kAll));
    EXPECT_TRUE(all_forwards_marked(ample.program));
    EXPECT_TRUE(ample.sets.empty());
    EXPECT_EQ(static_cast<int>(ample.recomputed.size()), prog.stages() * prog.m);
    EXPECT_NEAR(ample.recomputed_bytes, 0.85 * kGiB * prog.stages() * prog.m, 1);
    EXPECT_GT(ample.slowdown(), 0.0);  // every backward runs its forward again
    const double floor = minimum_budget(prog, cm, with(Recompute::kAll));
    Plan tight = plan_offload(prog, cm, floor, with(Recompute::kAll));
    EXPECT_TRUE(all_forwards_marked(tight.program));
    EXPECT_EQ(schedule::find_error(tight.program), "");
    EXPECT_LE(schedule::simulate(tight.program, cm).max_peak_bytes(), floor * (1 + 1e-12));
    for (const PlannedSet& s : tight.sets)
      if (!s.w_held) {
        EXPECT_TRUE(s.recompute);
        EXPECT_DOUBLE_EQ(s.bytes, 0.15 * kGiB);  // an offload moves what recompute keeps
      }
    const SetChoices n = count_choices(tight);
    EXPECT_EQ(n.keep + n.offload, 0);
    EXPECT_EQ(n.recompute + n.both, prog.stages() * prog.m);
  }
}

// Auto recomputes where offload cannot hide the copy (a slow link) and offloads where it can
// (a fast link, at no predicted cost); every plan verifies and fits.
TEST(Planner, RecomputeAutoPicksTheCheaperLever) {
  schedule::Program prog = schedule::make("stp", 4, 16);
  const double budget = 6 * kGiB;
  Plan fast = plan_offload(prog, recompute_costs(200), budget, with(Recompute::kAuto));
  EXPECT_TRUE(fast.recomputed.empty());
  EXPECT_FALSE(fast.sets.empty());
  EXPECT_LE(fast.slowdown(), 1e-9);
  Plan slow = plan_offload(prog, recompute_costs(2), budget, with(Recompute::kAuto));
  EXPECT_FALSE(slow.recomputed.empty());
  // At 2 GB/s a set takes 13 forwards to copy: offload alone cannot get there.
  EXPECT_THROW(plan_offload(prog, recompute_costs(2), budget, with(Recompute::kOff)),
               std::invalid_argument);
  for (const Plan* p : {&fast, &slow}) {
    EXPECT_EQ(schedule::find_error(p->program), "");
    EXPECT_LE(p->peak_bytes_after, budget);
    EXPECT_NEAR(p->kept_bytes + p->offloaded_bytes + p->recomputed_bytes, 16.0 * 8 * kGiB,
                1e-3 * kGiB);  // every byte of the step's 128 sets is accounted once
  }
  EXPECT_THAT(to_text(slow), HasSubstr("recomputed sets"));
}

TEST(Planner, FloorsFallWithRecompute) {
  for (const Case& c : {Case{"stp", 2, 5}, Case{"zb-v", 2, 6}, Case{"1f1b-i", 2, 4}}) {
    SCOPED_TRACE(c.kind);
    schedule::Program prog = schedule::make(c.kind, c.p, c.m);
    const schedule::CostModel cm = recompute_costs();
    const double off = minimum_budget(prog, cm, with(Recompute::kOff));
    const double automatic = minimum_budget(prog, cm, with(Recompute::kAuto));
    EXPECT_LT(automatic, off);
    EXPECT_LE(automatic, minimum_budget(prog, cm, with(Recompute::kAll)) * (1 + 1e-12));
    Plan at_floor = plan_offload(prog, cm, automatic, with(Recompute::kAuto));
    EXPECT_EQ(schedule::find_error(at_floor.program), "");
    EXPECT_LE(at_floor.peak_bytes_after, automatic * (1 + 1e-12));
  }
}

// Forwards marked in the input are a fixed choice: they stay marked whatever the mode.
TEST(Planner, ForwardsMarkedInTheInputStayMarked) {
  schedule::Program prog = schedule::make("stp", 2, 5);
  for (auto& in : prog.ranks[0])
    for (auto& part : in.parts)
      if (part.pass == schedule::Pass::kF && part.mb == 1) part.recompute = true;
  for (Recompute r : {Recompute::kOff, Recompute::kAuto}) {
    Plan plan = plan_offload(prog, recompute_costs(200), kUnlimitedBudget, with(r));
    int marked = 0;
    for (const auto& in : plan.program.ranks[0])
      for (const auto& part : in.parts) marked += part.recompute && part.mb == 1;
    EXPECT_EQ(marked, 2);  // both chunks of rank 0, mb 1
    EXPECT_EQ(plan.recomputed.size(), 2u);
  }
}

// Note [Partial sets]: every share the plan chooses is a multiple of 1/kShareSteps in (0, 1],
// the program carries it, and the bytes follow it.
void expect_shares_consistent(const Plan& plan, const schedule::CostModel& cm) {
  EXPECT_EQ(schedule::find_error(plan.program), "");
  auto on_grid = [](double share) {
    return share > 0 && share <= 1 && share * kShareSteps == std::round(share * kShareSteps);
  };
  std::map<std::pair<int, int>, double> again;  // (stage, mb) -> recompute share
  for (const RecomputedSet& s : plan.recomputed) again[{s.stage, s.mb}] = s.share;
  for (const PlannedSet& s : plan.sets) {
    EXPECT_TRUE(on_grid(s.share)) << s.share;
    EXPECT_EQ(s.recompute, !s.w_held && again.count({s.stage, s.mb}) > 0);
    const double whole =
        cm.act_bytes * (s.w_held      ? cm.w_held_fraction
                        : s.recompute ? schedule::kept_share(cm, again[{s.stage, s.mb}])
                                      : 1.0);
    EXPECT_NEAR(s.bytes, whole * s.share, 1) << s.share;
  }
  for (const RecomputedSet& s : plan.recomputed) {
    EXPECT_TRUE(on_grid(s.share)) << s.share;
    EXPECT_NEAR(s.bytes, cm.act_bytes * (1 - cm.recompute_keep) * s.share, 1);
  }
  int program_partial = 0;
  for (const auto& rank : plan.program.ranks)
    for (const auto& in : rank) program_partial += in.op == Op::kOffload && in.share < 1;
  int planned_partial = 0;
  for (const PlannedSet& s : plan.sets) planned_partial += s.share < 1;
  EXPECT_EQ(program_partial, planned_partial);
  const double total = plan.kept_bytes + plan.offloaded_bytes + plan.recomputed_bytes;
  EXPECT_NEAR(total, plan.program.stages() * plan.program.m * cm.act_bytes, 1e-3 * kGiB);
}

// A slow link (5 GB/s: a set takes five forwards to copy) leaves time in the last rank's
// warm-up for one whole set to be off the device, so whole sets stop at 11 of its 12 sets; part
// of a set more fits in the same time (Note [Partial sets]): the floor falls, and a budget at it
// plans only with partial trips.
TEST(PartialSets, OffloadAloneGoesBelowTheWholeSetFloor) {
  schedule::Program prog = schedule::make("stp", 4, 16);
  const schedule::CostModel cm = recompute_costs(5);
  PlanOptions whole = with(Recompute::kOff), partial = with(Recompute::kOff);
  whole.partial_sets = false;
  const double whole_floor = minimum_budget(prog, cm, whole);
  const double floor = minimum_budget(prog, cm, partial);
  std::printf("[partial] 5 GB/s, recompute off floor: whole sets %.3f GiB, partial %.3f GiB\n",
              whole_floor / kGiB, floor / kGiB);
  EXPECT_EQ(whole_floor, 11 * kGiB);
  EXPECT_LT(floor, whole_floor - kGiB / 8);
  Plan plan = plan_offload(prog, cm, floor, partial);
  EXPECT_LE(plan.peak_bytes_after, floor * (1 + 1e-12));
  expect_shares_consistent(plan, cm);
  EXPECT_GT(count_choices(plan).partial, 0);
  EXPECT_THAT(to_text(plan), HasSubstr("\u00b7"));  // c0[6]·7/8
  EXPECT_THAT(to_text(plan), HasSubstr("the first layers' fields"));
  EXPECT_THROW(plan_offload(prog, cm, floor, whole), std::invalid_argument);
}

// Within a budget partial sets never lose to whole ones (the search starts where the whole-set
// search does and takes only moves that shorten the step), and every plan is consistent.
TEST(PartialSets, NeverSlowerThanWholeSetsAndConsistent) {
  for (const Case& c : {Case{"stp", 2, 5}, Case{"zb-v", 2, 6}, Case{"1f1b-i", 2, 4}}) {
    SCOPED_TRACE(c.kind);
    schedule::Program prog = schedule::make(c.kind, c.p, c.m);
    const schedule::CostModel cm = recompute_costs();
    for (Recompute r : {Recompute::kOff, Recompute::kAuto}) {
      PlanOptions whole = with(r), partial = with(r);
      whole.partial_sets = false;
      const double floor = minimum_budget(prog, cm, whole);
      EXPECT_LE(minimum_budget(prog, cm, partial), floor * (1 + 1e-9));
      const double budget = floor + 0.3 * kGiB;
      Plan a = plan_offload(prog, cm, budget, whole);
      Plan b = plan_offload(prog, cm, budget, partial);
      EXPECT_LE(b.step_after, a.step_after * (1 + 1e-9));
      expect_shares_consistent(b, cm);
    }
  }
}

// Below what offload alone reaches, many sets recomputed in part beat a few recomputed whole:
// STP p=4 m=16 at 2.5 GiB was +27.84 % with whole sets (104 recomputed); the start from every
// set re-running half its layers finds +17.52 %.
TEST(PartialSets, ManySetsRecomputedInPartBelowWhatOffloadAloneReaches) {
  schedule::Program prog = schedule::make("stp", 4, 16);
  const schedule::CostModel cm = recompute_costs();
  Plan plan = plan_offload(prog, cm, 2.5 * kGiB, with(Recompute::kAuto));
  std::printf("[partial] auto at 2.5 GiB: %+.2f %% (%d sets partial, %d simulations)\n",
              100 * plan.slowdown(), count_choices(plan).partial, plan.simulations);
  EXPECT_LT(plan.slowdown(), 0.2);
  EXPECT_GT(count_choices(plan).partial, 0);
  expect_shares_consistent(plan, cm);
}

// peak_moment with sets recomputed in part: the held sets add up to the peak (a backward that
// starts at the peak counts its rebuilt bytes), and the text names the share re-run.
TEST(PartialSets, ThePeakMomentAccountsForPartialSets) {
  const schedule::CostModel cm = recompute_costs();
  for (const Case& c : {Case{"stp", 4, 16}, Case{"zb-v", 2, 6}, Case{"1f1b-i", 2, 4}}) {
    SCOPED_TRACE(c.kind);
    schedule::Program prog = schedule::make(c.kind, c.p, c.m);
    for (double g : {0.25, 0.5, 0.875}) {
      schedule::mark_recompute_all(prog, g);
      const PeakMoment m = peak_moment(prog, cm);
      EXPECT_EQ(m.bytes, schedule::simulate(prog, cm).max_peak_bytes());
      double sum = 0;
      for (const HeldSet& h : m.sets) sum += h.bytes;
      EXPECT_NEAR(sum, m.bytes, 1e-6 * m.bytes) << to_text(m);
    }
  }
  // The floor of stp p=4 m=16, where rank 0's peak is a partially recomputed set's backward
  // starting the instant its reload lands (end - duration is a rounding off that instant).
  schedule::Program prog = schedule::make("stp", 4, 16);
  const PeakMoment m =
      peak_moment(plan_offload(prog, cm, kGiB, with(Recompute::kAuto)).program, cm);
  double sum = 0;
  for (const HeldSet& h : m.sets) sum += h.bytes;
  EXPECT_NEAR(sum, m.bytes, 1e-6 * m.bytes) << to_text(m);
}

// The target of issue 15 (a benchmark, not timed): STP p=4 m=16 with `stp plan`'s default
// costs fits 4 GiB (p sets, what 1F1B holds) at <= 3 % and 3 GiB at all. The search before
// the local search: +17.81 % at 4 GiB, 3 GiB infeasible.
TEST(PlannerTarget, StpP4M16FitsFourGiBNearlyFreeAndThreeGiB) {
  schedule::Program prog = schedule::make("stp", 4, 16);
  const schedule::CostModel cm = recompute_costs();
  for (Recompute r : {Recompute::kOff, Recompute::kAuto}) {
    const char* mode = r == Recompute::kOff ? "off " : "auto";
    for (double gib : {4.0, 3.0}) {
      try {
        Plan plan = plan_offload(prog, cm, gib * kGiB, with(r));
        std::printf(
            "[target] recompute %s budget %.0f GiB: %+.2f %% (%zu trips, %zu recomputed, "
            "%d simulations)\n",
            mode, gib, 100 * plan.slowdown(), plan.sets.size(), plan.recomputed.size(),
            plan.simulations);
        if (gib == 4.0) {
          EXPECT_LE(plan.slowdown(), 0.03) << mode;
        }
      } catch (const std::invalid_argument& e) {
        std::printf("[target] recompute %s budget %.0f GiB: infeasible\n", mode, gib);
        EXPECT_TRUE(r == Recompute::kOff && gib == 3.0) << mode << " " << e.what();
      }
    }
  }
}

}  // namespace
}  // namespace stp::offload
