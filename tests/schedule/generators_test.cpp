// Generators: golden orders (the STP reference listings of stp-notes §2.5 verbatim, and orders
// derived by hand from each baseline's published rules), the reference's closed-form counts,
// verification of every kind over p = 1..8 and a spread of m, and argument checks.
#include "schedule/generators.h"

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <sstream>
#include <stdexcept>

#include "common/check.h"
#include "schedule/cost_model.h"
#include "schedule/p2p.h"
#include "schedule/simulate.h"
#include "schedule/verify.h"

namespace stp::schedule {
namespace {

// A compute instruction in the notation of stp-notes §2.5: 1-based microbatches, standalone B is
// the full backward, "W" a deferred weight gradient, "[x&y]" a braided block.
std::string notes_token(const Instr& in) {
  auto one = [](const Part& p) {
    std::ostringstream os;
    switch (p.pass) {
      case Pass::kF: os << 'F' << p.chunk << '(' << p.mb + 1 << ')'; break;
      case Pass::kBW: os << 'B' << p.chunk << '(' << p.mb + 1 << ')'; break;
      case Pass::kB: os << "Bzb" << p.chunk << '(' << p.mb + 1 << ')'; break;  // not in the notes
      case Pass::kW: os << 'W'; break;
    }
    return os.str();
  };
  if (in.parts.size() == 1) return one(in.parts[0]);
  const Part& a = in.parts[0];
  const Part& b = in.parts[1];
  if (in.op == Op::kFB) {
    std::ostringstream os;
    os << '[' << one(a) << "&B" << b.chunk << '(' << b.mb + 1 << ')'
       << (b.pass == Pass::kBW ? "+W" : "") << ']';
    return os.str();
  }
  return '[' + one(a) + '&' + one(b) + ']';
}

std::string notes_listing(const Program& prog) {
  std::string out;
  for (int r = 0; r < prog.p; ++r) {
    out += "r" + std::to_string(r) + ":";
    for (const Instr& in : prog.ranks[r])
      if (in.is_compute()) out += " " + notes_token(in);
    out += "\n";
  }
  return out;
}

// stp-notes §2.5, p=2, m=5, verbatim.
const char* const kStpP2M5 =
    "r0: F0(1) F0(2) F0(3) F1(1) F0(4) [F1(2)&B1(1)] [F0(5)&W] [F1(3)&B1(2)+W] B0(1) [F1(4)&B1(3)] "
    "B0(2) [F1(5)&B1(4)] B0(3) B1(5) B0(4) W W B0(5)\n"
    "r1: F0(1) F1(1) F0(2) F1(2) [F0(3)&F0(4)] [F1(3)&B1(1)+W] [F0(5)&B0(1)+W] [F1(4)&B1(2)] B0(2) "
    "[F1(5)&B1(3)] B0(3) B1(4) B0(4) B1(5) B0(5) W W\n";

// stp-notes §2.5, p=4, m=12 (the README's headline figure), verbatim.
const char* const kStpP4M12 =
    "r0: F0(1) F0(2) F0(3) F0(4) F0(5) F0(6) F0(7) F1(1) F0(8) [F1(2)&B1(1)] [F0(9)&W] "
    "[F1(3)&B1(2)] [F0(10)&W] [F1(4)&B1(3)] [F0(11)&W] [F1(5)&B1(4)+W] [F0(12)&B0(1)+W] "
    "[F1(6)&B1(5)+W] B0(2) [F1(7)&B1(6)] B0(3) [F1(8)&B1(7)] B0(4) [F1(9)&B1(8)] B0(5) "
    "[F1(10)&B1(9)] B0(6) [F1(11)&B1(10)] B0(7) [F1(12)&B1(11)] B0(8) B1(12) B0(9) W W B0(10) W W "
    "B0(11) W W B0(12)\n"
    "r1: F0(1) F0(2) F0(3) F0(4) F0(5) F1(1) F0(6) F1(2) [F0(7)&F0(8)] [F1(3)&B1(1)] [F0(9)&W] "
    "[F1(4)&B1(2)] [F0(10)&W] [F1(5)&B1(3)+W] [F0(11)&B0(1)+W] [F1(6)&B1(4)+W] [F0(12)&B0(2)+W] "
    "[F1(7)&B1(5)] B0(3) [F1(8)&B1(6)] B0(4) [F1(9)&B1(7)] B0(5) [F1(10)&B1(8)] B0(6) "
    "[F1(11)&B1(9)] B0(7) [F1(12)&B1(10)] B0(8) B1(11) B0(9) B1(12) B0(10) W W B0(11) W W B0(12) W "
    "W\n"
    "r2: F0(1) F0(2) F0(3) F1(1) F0(4) F1(2) F0(5) F1(3) F0(6) [F0(7)&F0(8)] [F1(4)&B1(1)] "
    "[F0(9)&W] [F1(5)&B1(2)+W] [F0(10)&B0(1)+W] [F1(6)&B1(3)+W] [F0(11)&B0(2)+W] [F1(7)&B1(4)+W] "
    "[F0(12)&B0(3)] [F1(8)&B1(5)] B0(4) [F1(9)&B1(6)] B0(5) [F1(10)&B1(7)] B0(6) [F1(11)&B1(8)] "
    "B0(7) [F1(12)&B1(9)] B0(8) B1(10) B0(9) B1(11) B0(10) B1(12) B0(11) W W B0(12) W W W W\n"
    "r3: F0(1) F1(1) F0(2) F1(2) F0(3) F1(3) F0(4) F1(4) [F0(5)&F0(6)] [F0(7)&F0(8)] "
    "[F1(5)&B1(1)+W] [F0(9)&B0(1)+W] [F1(6)&B1(2)+W] [F0(10)&B0(2)+W] [F1(7)&B1(3)+W] "
    "[F0(11)&B0(3)+W] [F1(8)&B1(4)] [F0(12)&B0(4)] [F1(9)&B1(5)] B0(5) [F1(10)&B1(6)] B0(6) "
    "[F1(11)&B1(7)] B0(7) [F1(12)&B1(8)] B0(8) B1(9) B0(9) B1(10) B0(10) B1(11) B0(11) B1(12) "
    "B0(12) W W W W W W\n";

TEST(StpGolden, P2M5MatchesTheReferenceListing) {
  EXPECT_EQ(notes_listing(make_stp(2, 5)), kStpP2M5);
}

TEST(StpGolden, P4M12MatchesTheReferenceListing) {
  EXPECT_EQ(notes_listing(make_stp(4, 12)), kStpP4M12);
}

TEST(StpGolden, TrailingWeightGradientsPopInFifoOrder) {
  // stp-notes §2.5: rank 3 ends with W of chunk-1 mb 4, chunk-0 mb 4, then chunk-1 mb 5-8.
  const Program prog = make_stp(4, 12);
  std::vector<Part> tail;
  for (const Instr& in : prog.ranks[3])
    if (in.op == Op::kW) tail.push_back(in.parts[0]);
  ASSERT_EQ(tail.size(), 6u);
  const std::pair<int, int> want[] = {{1, 3}, {0, 3}, {1, 4}, {1, 5}, {1, 6}, {1, 7}};  // 0-based
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(tail[i].chunk, want[i].first) << i;
    EXPECT_EQ(tail[i].mb, want[i].second) << i;
  }
}

// Closed-form per-rank totals of the reference (stp-notes §2.3), for every valid m.
TEST(StpGolden, PerRankCountsFollowTheClosedForms) {
  for (auto [p, m] : std::vector<std::pair<int, int>>{
           {1, 2}, {2, 5}, {2, 9}, {3, 8}, {4, 11}, {4, 12}, {4, 16}, {4, 32}, {8, 23}, {8, 64}}) {
    const Program prog = make_stp(p, m);
    for (int r = 0; r < p; ++r) {
      std::map<std::string, int> n;
      for (const Instr& in : prog.ranks[r]) {
        if (!in.is_compute()) continue;
        if (in.op == Op::kFB)
          ++n[in.parts[1].pass == Pass::kBW ? "FB full" : "FB zb"];
        else
          ++n[to_string(in.op)];
      }
      const std::string at =
          "p=" + std::to_string(p) + " m=" + std::to_string(m) + " r=" + std::to_string(r);
      EXPECT_EQ(n["F"], 2 * p + (r % 2 == 0 ? 1 : 0)) << at;
      EXPECT_EQ(n["FF"], (r + 1) / 2) << at;
      EXPECT_EQ(n["FW"], p - r - 1) << at;
      EXPECT_EQ(n["FB zb"] + n["FB full"], 2 * m - 3 * p) << at;
      EXPECT_EQ(n["FB zb"], 3 * p - 3 - r) << at;
      EXPECT_EQ(n["FB full"], 2 * m - 6 * p + 3 + r) << at;
      EXPECT_EQ(n["BW"], 3 * p) << at;
      EXPECT_EQ(n["B"], 0) << at;
      EXPECT_EQ(n["W"], 2 * p - 2) << at;
    }
  }
}

TEST(StpGolden, UsesTheVPlacement) {
  const Program prog = make_stp(4, 12);
  EXPECT_EQ(prog.v, 2);
  EXPECT_EQ(prog.stage_rank, (std::vector<int>{0, 1, 2, 3, 3, 2, 1, 0}));
  EXPECT_EQ(prog.stage_chunk, (std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1}));
}

// Orders derived by hand from each baseline's rules (see the generator comments).
TEST(BaselineGolden, OneFOneB) {
  EXPECT_EQ(to_text(make_1f1b(3, 4), true),
            "r0: F0[0] F0[1] F0[2] BW0[0] F0[3] BW0[1] BW0[2] BW0[3]\n"
            "r1: F0[0] F0[1] BW0[0] F0[2] BW0[1] F0[3] BW0[2] BW0[3]\n"
            "r2: F0[0] BW0[0] F0[1] BW0[1] F0[2] BW0[2] F0[3] BW0[3]\n");
}

TEST(BaselineGolden, InterleavedOneFOneBFollowsMegatronsTable) {
  const Program prog = make_1f1b_interleaved(2, 4, 2);
  EXPECT_EQ(prog.stage_rank, (std::vector<int>{0, 1, 0, 1}));
  EXPECT_EQ(to_text(prog, true),
            "r0: F0[0] F0[1] F1[0] F1[1] F0[2] BW1[0] F0[3] BW1[1] F1[2] BW0[0] F1[3] BW0[1] "
            "BW1[2] BW1[3] BW0[2] BW0[3]\n"
            "r1: F0[0] F0[1] F1[0] BW1[0] F1[1] BW1[1] F0[2] BW0[0] F0[3] BW0[1] F1[2] BW1[2] "
            "F1[3] BW1[3] BW0[2] BW0[3]\n");
}

TEST(BaselineGolden, ZeroBubbleH1DefersRWeightGradientsOnRankR) {
  EXPECT_EQ(to_text(make_zb_h1(3, 4), true),
            "r0: F0[0] F0[1] F0[2] B0[0] W0[0] F0[3] B0[1] W0[1] B0[2] W0[2] B0[3] W0[3]\n"
            "r1: F0[0] F0[1] B0[0] F0[2] B0[1] W0[0] F0[3] B0[2] W0[1] B0[3] W0[2] W0[3]\n"
            "r2: F0[0] B0[0] F0[1] B0[1] F0[2] B0[2] W0[0] F0[3] B0[3] W0[1] W0[2] W0[3]\n");
}

TEST(BaselineGolden, ZeroBubbleVFollowsPyTorchsPhases) {
  EXPECT_EQ(to_text(make_zb_v(2, 4), true),
            "r0: F0[0] F0[1] F0[2] F1[0] B1[0] W1[0] F1[1] B1[1] W1[1] F0[3] B0[0] W0[0] F1[2] "
            "B1[2] W1[2] B0[1] W0[1] F1[3] B1[3] W1[3] B0[2] W0[2] B0[3] W0[3]\n"
            "r1: F0[0] F1[0] F0[1] F1[1] B1[0] W1[0] F0[2] B0[0] W0[0] F1[2] B1[1] W1[1] F0[3] "
            "B0[1] W0[1] F1[3] B1[2] W1[2] B0[2] B1[3] B0[3] W0[2] W1[3] W0[3]\n");
}

std::vector<int> microbatch_spread(Kind k, int p) {
  std::vector<int> ms;
  for (int m : {1, 2, 3, p, p + 1, 2 * p, 2 * p + 1, 3 * p - 2, 3 * p - 1, 3 * p, 4 * p + 1, 5 * p,
                8 * p, 64})
    if (accepts_microbatches(k, p, m)) ms.push_back(m);
  for (int m = 2 * p; m < 3 * p - 1; ++m)  // STP's own construction, every m
    if (k == Kind::kSTP) ms.push_back(m);
  return ms;
}

TEST(Generators, EveryKindVerifiesForP1To8AndASpreadOfM) {
  int programs = 0;
  for (Kind k : all_kinds()) {
    for (int p = 1; p <= 8; ++p) {
      for (int m : microbatch_spread(k, p)) {
        const Program prog = make(k, p, m);
        EXPECT_EQ(find_error(prog), "") << to_string(k) << " p=" << p << " m=" << m;
        EXPECT_EQ(prog.kind, to_string(k));
        EXPECT_EQ(prog.p, p);
        EXPECT_EQ(prog.m, m);
        EXPECT_EQ(prog.stages(), prog.v * p);
        ++programs;
      }
    }
  }
  EXPECT_GT(programs, 300);
}

TEST(Generators, InterleavedSupportsMoreChunks) {
  for (int v : {3, 4}) {
    for (int p : {1, 2, 3, 5}) {
      const Program prog = make(Kind::k1F1BInterleaved, p, 2 * p, v);
      EXPECT_EQ(prog.v, v);
      EXPECT_EQ(find_error(prog), "") << "v=" << v << " p=" << p;
    }
  }
}

TEST(Generators, AreDeterministic) {
  for (Kind k : all_kinds()) EXPECT_EQ(make(k, 4, 8), make(k, 4, 8)) << to_string(k);
}

TEST(Generators, KindNamesRoundTrip) {
  for (Kind k : all_kinds()) EXPECT_EQ(kind_from_string(to_string(k)), k);
  EXPECT_EQ(make("stp", 2, 5), make_stp(2, 5));
}

void expect_rejected(const std::function<void()>& fn, const std::string& message) {
  try {
    fn();
    FAIL() << "accepted; wanted: " << message;
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(Generators, RejectBadArgumentsNamingValueAndRange) {
  expect_rejected([] { make_stp(4, 7); }, "microbatches=7 must be >= 2*pp=8 for the stp schedule");
  expect_rejected([] { make_stp(0, 7); }, "pp=0 must be >= 1");
  expect_rejected([] { make_1f1b(2, 0); }, "microbatches=0 must be >= 1 for the 1f1b schedule");
  expect_rejected([] { make_1f1b_interleaved(5, 7, 2); },
                  "microbatches=7 must be a positive multiple of pp=5 for the 1f1b-i schedule "
                  "(Megatron's interleaved order)");
  expect_rejected([] { make_1f1b_interleaved(2, 4, 1); },
                  "chunks=1 must be >= 2 for the 1f1b-i schedule (use 1f1b for 1)");
  expect_rejected([] { make(Kind::kSTP, 2, 4, 3); },
                  "chunks=3 is not supported by the stp schedule (it uses 2)");
  expect_rejected([] { kind_from_string("gpipe"); },
                  "kind 'gpipe' is not one of 1f1b, 1f1b-i, zb-h1, zb-v, stp");
  EXPECT_EQ(min_microbatches(Kind::kSTP, 4), 8);
  EXPECT_EQ(min_microbatches(Kind::k1F1BInterleaved, 4), 4);
  EXPECT_FALSE(accepts_microbatches(Kind::k1F1BInterleaved, 4, 6));
}

// Every default m comes from min_microbatches (stp verify asks for at least 4, stp plan for
// 3p-1 with stp): for every kind and p it is one make() takes, and no smaller m >= at_least is.
TEST(Generators, MinMicrobatchesIsTheSmallestAcceptedForEveryKindAndP) {
  for (Kind k : all_kinds()) {
    for (int p = 1; p <= 8; ++p) {
      for (int at_least : {1, 4, 3 * p - 1}) {
        const int m = min_microbatches(k, p, 0, at_least);
        SCOPED_TRACE(str_cat(to_string(k), " p=", p, " at_least=", at_least, " m=", m));
        EXPECT_GE(m, at_least);
        EXPECT_TRUE(accepts_microbatches(k, p, m));
        EXPECT_EQ(find_error(make(k, p, m)), "");
        for (int smaller = at_least; smaller < m; ++smaller) {
          EXPECT_FALSE(accepts_microbatches(k, p, smaller)) << "m=" << smaller;
          EXPECT_THROW(make(k, p, smaller), std::invalid_argument) << "m=" << smaller;
        }
      }
    }
  }
  EXPECT_EQ(min_microbatches(Kind::k1F1BInterleaved, 3, 0, 4), 6);  // issue 11: not 4
  EXPECT_EQ(min_microbatches(Kind::kSTP, 3, 0, 4), 6);
  EXPECT_EQ(min_microbatches(Kind::kZBV, 3, 0, 4), 4);
}

// 2p <= m < 3p-1, where the reference breaks: valid, every microbatch exactly once, and a
// bubble of (p-1) + (3p-1-m) at T_F = T_B = T_W, between 2(p-1) and the reference's p-1.
TEST(StpSmallM, ValidWithBoundedBubble) {
  const CostModel unit;
  for (int p = 1; p <= 8; ++p) {
    for (int m = 2 * p; m < 3 * p - 1; ++m) {
      const Program prog = make_stp(p, m);
      ASSERT_EQ(find_error(prog), "") << "p=" << p << " m=" << m;
      const SimResult sim = simulate(prog, unit);
      EXPECT_DOUBLE_EQ(sim.max_idle(), (p - 1) + (3 * p - 1 - m)) << "p=" << p << " m=" << m;
      EXPECT_LE(sim.max_peak_sets(), 3 * p) << "p=" << p << " m=" << m;
    }
  }
}

TEST(StpSmallM, KeepsTheReferenceWarmUp) {
  // The construction starts from the m' = 3p-1 reference: its first instructions (microbatches
  // that survive) are unchanged.
  const std::string small = to_text(make_stp(4, 9), true);
  EXPECT_EQ(small.substr(0, small.find(" F1[0]")), "r0: F0[0] F0[1] F0[2] F0[3] F0[4] F0[5] F0[6]");
}

}  // namespace
}  // namespace stp::schedule
