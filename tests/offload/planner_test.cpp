#include "offload/planner.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
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
        EXPECT_DOUBLE_EQ(s.bytes, 1.3 * kGiB);
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
  // leaves time for one set to be off the device, so 11 sets is the least it can hold.
  EXPECT_EQ(minimum_budget(prog, costs(5)), 11 * kGiB);
  EXPECT_THROW(plan_offload(prog, costs(5), 10.5 * kGiB), std::invalid_argument);
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

}  // namespace
}  // namespace stp::offload
