// The Program IR: names, text forms, and the JSON contract (round trip and errors).
#include "schedule/program.h"

#include <gtest/gtest.h>

#include "schedule/generators.h"
#include "schedule/json_text.h"
#include "schedule/p2p.h"
#include "schedule/verify.h"

namespace stp::schedule {
namespace {

using Json = nlohmann::json;

Instr compute(Op op, std::vector<Part> parts) { return compute_instr(op, std::move(parts)); }

Instr comm(Op op, Part ref, int peer = -1) { return transfer_instr(op, ref, peer); }

TEST(ProgramText, InstructionsPrintCompactly) {
  EXPECT_EQ(to_string(compute(Op::kF, {{Pass::kF, 0, 0, 3}})), "F0[3]");
  EXPECT_EQ(to_string(compute(Op::kBW, {{Pass::kBW, 1, 5, 2}})), "BW1[2]");
  EXPECT_EQ(to_string(compute(Op::kB, {{Pass::kB, 1, 5, 2}})), "B1[2]");
  EXPECT_EQ(to_string(compute(Op::kW, {{Pass::kW, 0, 0, 7}})), "W0[7]");
  EXPECT_EQ(to_string(compute(Op::kFB, {{Pass::kF, 1, 5, 4}, {Pass::kBW, 1, 5, 2}})), "FB1[4,2]+W");
  EXPECT_EQ(to_string(compute(Op::kFB, {{Pass::kF, 1, 5, 4}, {Pass::kB, 1, 5, 2}})), "FB1[4,2]");
  EXPECT_EQ(to_string(compute(Op::kFB, {{Pass::kF, 0, 0, 4}, {Pass::kB, 1, 5, 2}})),
            "FB(F0[4],B1[2])");
  EXPECT_EQ(to_string(compute(Op::kFF, {{Pass::kF, 0, 1, 2}, {Pass::kF, 0, 1, 3}})), "FF0[2,3]");
  EXPECT_EQ(to_string(compute(Op::kFW, {{Pass::kF, 0, 0, 8}, {Pass::kW, 1, 7, 0}})),
            "FW0[8]/W1[0]");
  EXPECT_EQ(to_string(comm(Op::kSendF, {Pass::kF, 0, 2, 3}, 1)), "SEND_F s2 mb3 ->1");
  EXPECT_EQ(to_string(comm(Op::kRecvB, {Pass::kF, 1, 4, 3}, 2)), "RECV_B s4 mb3 <-2");
  EXPECT_EQ(to_string(comm(Op::kOffload, {Pass::kF, 0, 0, 5})), "OFFLOAD c0 mb5");
  EXPECT_EQ(to_string(comm(Op::kReload, {Pass::kF, 0, 0, 5})), "RELOAD c0 mb5");
}

TEST(ProgramText, ARecomputedForwardCarriesAnR) {
  const Part f{Pass::kF, 0, 0, 3, /*recompute=*/true};
  EXPECT_EQ(to_string(f), "F0[3]r");
  EXPECT_EQ(to_string(compute(Op::kF, {f})), "F0[3]r");
  EXPECT_EQ(to_string(compute(Op::kFB, {{Pass::kF, 1, 5, 4, true}, {Pass::kB, 1, 5, 2}})),
            "FB1[4r,2]");
  EXPECT_EQ(to_string(compute(Op::kFF, {{Pass::kF, 0, 1, 2, true}, {Pass::kF, 0, 1, 3}})),
            "FF0[2r,3]");
  EXPECT_EQ(to_string(compute(Op::kFB, {{Pass::kF, 0, 0, 4, true}, {Pass::kB, 1, 5, 2}})),
            "FB(F0[4]r,B1[2])");
  EXPECT_EQ(to_string(compute(Op::kFW, {{Pass::kF, 0, 0, 8, true}, {Pass::kW, 1, 7, 0}})),
            "FW0[8r]/W1[0]");
}

// Note [Partial sets]: a partial recompute prints its share after the "r", a partial trip after
// the set.
TEST(ProgramText, PartialSharesPrintAfterTheirMark) {
  Part f{Pass::kF, 0, 0, 3, /*recompute=*/true};
  f.recompute_share = 0.25;
  EXPECT_EQ(to_string(f), "F0[3]r0.25");
  EXPECT_EQ(to_string(compute(Op::kFF, {f, {Pass::kF, 0, 0, 4}})), "FF0[3r0.25,4]");
  f.recompute = false;  // the share means nothing without recompute
  EXPECT_EQ(to_string(f), "F0[3]");
  const Part ref{Pass::kF, 1, 5, 2};
  EXPECT_EQ(to_string(offload_instr(Op::kOffload, ref, 0.5)), "OFFLOAD c1 mb2 0.5");
  EXPECT_EQ(to_string(offload_instr(Op::kReload, ref, 0.5)), "RELOAD c1 mb2 0.5");
  EXPECT_EQ(to_string(offload_instr(Op::kReload, ref)), "RELOAD c1 mb2");
}

TEST(ProgramText, NamesRoundTripAndUnknownNamesAreRejected) {
  for (Pass p : {Pass::kF, Pass::kB, Pass::kW, Pass::kBW})
    EXPECT_EQ(pass_from_string(to_string(p)), p);
  for (Op o : {Op::kF, Op::kB, Op::kW, Op::kBW, Op::kFF, Op::kFB, Op::kFW, Op::kSendF, Op::kRecvF,
               Op::kSendB, Op::kRecvB, Op::kOffload, Op::kReload})
    EXPECT_EQ(op_from_string(to_string(o)), o);
  EXPECT_THROW(pass_from_string("X"), std::invalid_argument);
  try {
    op_from_string("FBW");
    FAIL() << "op_from_string accepted FBW";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'FBW' is not one of F, B"), std::string::npos)
        << e.what();
  }
}

TEST(ProgramText, ToTextListsEveryRankAndCanDropCommunication) {
  Program prog = make_1f1b(2, 2);
  EXPECT_EQ(to_text(prog, /*compute_only=*/true),
            "r0: F0[0] F0[1] BW0[0] BW0[1]\n"
            "r1: F0[0] BW0[0] F0[1] BW0[1]\n");
  EXPECT_EQ(to_text(prog),
            "r0: F0[0] SEND_F s0 mb0 ->1 F0[1] SEND_F s0 mb1 ->1 RECV_B s0 mb0 <-1 BW0[0] "
            "RECV_B s0 mb1 <-1 BW0[1]\n"
            "r1: RECV_F s1 mb0 <-0 F0[0] BW0[0] SEND_B s1 mb0 ->0 RECV_F s1 mb1 <-0 F0[1] BW0[1] "
            "SEND_B s1 mb1 ->0\n");
}

TEST(ProgramJson, EveryGeneratorRoundTripsExactly) {
  for (Kind k : all_kinds()) {
    for (int p : {1, 2, 3}) {
      const int m = k == Kind::k1F1BInterleaved ? 2 * p : 2 * p + 1;
      Program prog = make(k, p, m);
      Program back = from_json(to_json(prog));
      EXPECT_EQ(back, prog) << to_string(k) << " p=" << p;
      EXPECT_EQ(to_json(back), to_json(prog));
    }
  }
}

TEST(ProgramJson, OffloadInstructionsRoundTrip) {
  Program prog = compute_only(make_1f1b(1, 2));
  prog.ranks[0].insert(prog.ranks[0].begin() + 1, comm(Op::kOffload, {Pass::kF, 0, 0, 0}));
  prog.ranks[0].insert(prog.ranks[0].begin() + 2, comm(Op::kReload, {Pass::kF, 0, 0, 0}));
  ASSERT_EQ(find_error(prog), "");
  EXPECT_EQ(from_json(to_json(prog)), prog);
}

// 1F1B on one rank, m = 2, with a trip of (stage 0, mb 0) after its forward: the OFFLOAD moves
// `offload_share`, the RELOAD says `reload_share`.
Program with_partial_trip(double offload_share, double reload_share) {
  Program prog = compute_only(make_1f1b(1, 2));
  const Part ref{Pass::kF, 0, 0, 0};
  prog.ranks[0].insert(prog.ranks[0].begin() + 1, offload_instr(Op::kOffload, ref, offload_share));
  prog.ranks[0].insert(prog.ranks[0].begin() + 2, offload_instr(Op::kReload, ref, reload_share));
  return prog;
}

// Shares below 1 are written and read back; a whole set writes neither key (Note [Partial sets]).
TEST(ProgramJson, PartialSharesRoundTripAndAreWrittenOnlyBelowOne) {
  Program prog = with_partial_trip(0.375, 0.375);
  prog.ranks[0][0].parts[0].recompute = true;
  prog.ranks[0][0].parts[0].recompute_share = 0.5;
  ASSERT_EQ(find_error(prog), "");
  const std::string json = to_json(prog);
  EXPECT_NE(json.find(R"("share": 0.375)"), std::string::npos) << json;
  EXPECT_NE(json.find(R"("recompute_share": 0.5)"), std::string::npos) << json;
  EXPECT_EQ(from_json(json), prog);
  EXPECT_EQ(to_json(compute_only(make_1f1b(1, 2))).find("share"), std::string::npos);
}

// verify() holds shares to (0, 1], to OFFLOAD / RELOAD, and a RELOAD to its OFFLOAD's share.
TEST(ProgramJson, VerifyRefusesBadShares) {
  Program prog = with_partial_trip(0.5, 0.25);
  EXPECT_NE(find_error(prog).find("reloads share 0.25 of"), std::string::npos) << find_error(prog);
  prog.ranks[0][2].share = 0.5;
  ASSERT_EQ(find_error(prog), "");
  prog.ranks[0][1].share = 0;
  EXPECT_NE(find_error(prog).find("share 0 must be in (0, 1]"), std::string::npos);
  prog.ranks[0][1].share = 0.5;
  prog.ranks[0][0].share = 0.5;  // a compute instruction
  EXPECT_NE(find_error(prog).find("only OFFLOAD and RELOAD move part of a set"), std::string::npos);
  prog.ranks[0][0].share = 1;
  prog.ranks[0][0].parts[0].recompute_share = 1.5;
  EXPECT_NE(find_error(prog).find("recompute_share 1.5; it must be in (0, 1]"), std::string::npos);
}

// "recompute": true appears on a part only when set; it reads back, and documents without it
// (every one written before it existed) read as before.
TEST(ProgramJson, RecomputeRoundTripsAndIsWrittenOnlyWhenSet) {
  Program prog = make_stp(2, 5);
  const std::string plain = to_json(prog);
  EXPECT_EQ(plain.find("recompute"), std::string::npos);
  mark_recompute_all(prog);
  ASSERT_EQ(find_error(prog), "");
  const std::string marked = to_json(prog);
  EXPECT_NE(marked.find(R"("recompute": true)"), std::string::npos);
  EXPECT_EQ(marked.find(R"("recompute": false)"), std::string::npos);
  EXPECT_EQ(from_json(marked), prog);
  EXPECT_EQ(to_json(from_json(marked)), marked);
  EXPECT_NE(from_json(plain), prog);  // the plain document has no marks
  int forwards = 0;
  for (const auto& rank : from_json(marked).ranks)
    for (const Instr& in : rank)
      for (const Part& part : in.parts) {
        EXPECT_EQ(part.recompute, part.pass == Pass::kF) << to_string(in);
        forwards += part.pass == Pass::kF;
      }
  EXPECT_EQ(forwards, prog.stages() * prog.m);
}

TEST(ProgramJson, FollowsTheFixedContract) {
  Program prog = make_stp(2, 5);
  Json doc = Json::parse(to_json(prog));
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc.at("kind"), "stp");
  EXPECT_EQ(doc.at("p"), 2);
  EXPECT_EQ(doc.at("m"), 5);
  EXPECT_EQ(doc.at("stages"), 4);
  const Json& ranks = doc.at("ranks");
  ASSERT_EQ(ranks.size(), 2u);
  bool saw_comm = false, saw_braid = false;
  for (const Json& list : ranks) {
    for (const Json& in : list) {
      const std::string op = in.at("op");
      const Json& parts = in.at("parts");
      ASSERT_TRUE(parts.is_array());
      if (op == "SEND_F" || op == "RECV_B") {
        saw_comm = true;
        EXPECT_TRUE(parts.empty()) << "instructions without compute have \"parts\": []";
        EXPECT_TRUE(in.contains("peer") && in.at("peer").is_number_integer());
        EXPECT_TRUE(in.contains("ref") && in.at("ref").contains("stage"));
      }
      if (op == "FB") {
        saw_braid = true;
        ASSERT_EQ(parts.size(), 2u);
        for (const char* key : {"pass", "chunk", "stage", "mb"})
          EXPECT_TRUE(parts[0].contains(key)) << key;
        EXPECT_EQ(parts[0].at("pass"), "F");
      }
    }
  }
  EXPECT_TRUE(saw_comm);
  EXPECT_TRUE(saw_braid);
}

TEST(ProgramJson, LayoutIsDerivedFromPartsWhenAbsent) {
  Program prog = make_zb_v(2, 3);
  // Rewrite without v, stage_rank and stage_chunk: the contract's minimal form.
  std::string minimal = "{\"kind\": \"zb-v\", \"p\": 2, \"m\": 3, \"stages\": 4, \"ranks\": ";
  std::string full = to_json(prog);
  minimal += full.substr(full.find("\"ranks\": ") + 9);
  Program back = from_json(minimal);
  EXPECT_EQ(back, prog);
}

void expect_json_error(const std::string& text, const std::string& needle) {
  try {
    from_json(text);
    FAIL() << "accepted: " << text;
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(ProgramJson, ErrorsNameTheFirstBadField) {
  const std::string head = R"({"kind": "x", "p": 1, "m": 1, "stages": 1, )";
  expect_json_error("{\"kind\": 1}", "program.kind must be a string, got a number");
  expect_json_error(R"({"kind": "x", "p": 1, "m": 1, "ranks": [[]]})", "has no \"stages\"");
  expect_json_error(head + R"("ranks": [[], []]})", "ranks has 2 lists but p=1");
  expect_json_error(head + R"("ranks": [[{"op": "FX", "parts": []}]]})",
                    "ranks[0][0].op: op 'FX' is not one of");
  expect_json_error(
      head +
          R"("ranks": [[{"op": "F", "parts": [{"pass": "Q", "chunk": 0, "stage": 0, "mb": 0}]}]]})",
      "ranks[0][0].parts[0].pass: pass 'Q'");
  expect_json_error(
      head +
          R"("ranks": [[{"op": "F", "parts": [{"pass": "F", "chunk": 0, "stage": 0, "mb": 0.5}]}]]})",
      "ranks[0][0].parts[0].mb must be an integer");
  expect_json_error(head + R"("ranks": [[{"op": "SEND_F", "parts": []}]]})", "has no \"ref\"");
  expect_json_error(
      head + R"("ranks": [[{"op": "F", "parts": [{"pass": "F", "chunk": 0, "stage": 0, "mb": 0, )"
             R"("recompute": 1}]}]]})",
      "ranks[0][0].parts[0].recompute must be a boolean, got a number");
  expect_json_error(
      head +
          R"("ranks": [[{"op": "OFFLOAD", "parts": [], "ref": {"chunk": 0, "stage": 0, "mb": 0, )"
          R"("recompute": true}}]]})",
      "ranks[0][0].ref has \"recompute\", which only a compute part may carry");
  expect_json_error(
      head + R"("ranks": [[{"op": "F", "parts": [{"pass": "F", "chunk": 0, "stage": 0, "mb": 0, )"
             R"("recompute_share": 0.5}]}]]})",
      "ranks[0][0].parts[0] has \"recompute_share\" without \"recompute\": true");
  expect_json_error(
      head + R"("ranks": [[{"op": "OFFLOAD", "parts": [], "ref": {"chunk": 0, "stage": 0, )"
             R"("mb": 0}, "share": 2}]]})",
      "ranks[0][0].share = 2 must be in (0, 1]");
  expect_json_error(head + R"("ranks": [[{"op": "F", "parts": [], "share": 0.5}]]})",
                    "ranks[0][0] (F) has \"share\", which only OFFLOAD and RELOAD carry");
  expect_json_error(head + R"("ranks": [[]]})", "stage 0 appears in no part");
  expect_json_error(R"({"kind": "x", "p": 0, "m": 1, "stages": 1, "ranks": []})",
                    "p=0 must be >= 1");
  expect_json_error("{\"kind\": \"x\",", "JSON: ");
  expect_json_error("[1, 2] x", "trailing characters");
}

TEST(JsonText, WritesInlineWithEscapesAndWrapsOnlyArraysOfContainers) {
  const OrderedJson v = {{"a", {1, -250, true, false, nullptr}}, {"s", "q\"\\\n\xc3\xa9"}};
  EXPECT_EQ(json_text(v), "{\"a\": [1, -250, true, false, null], \"s\": \"q\\\"\\\\\\n\xc3\xa9\"}");
  EXPECT_EQ(Json::parse(json_text(v)).at("s"), "q\"\\\n\xc3\xa9");
  EXPECT_EQ(Json::parse(json_text(OrderedJson("tab\there \"q\""))), "tab\there \"q\"");
  const OrderedJson rows = {{"rows", {{{"x", 1}}, {{"x", 2}}}}, {"flat", {1, 2}}};
  EXPECT_EQ(json_text(rows, 2), "{\"rows\": [\n  {\"x\": 1},\n  {\"x\": 2}\n ], \"flat\": [1, 2]}");
  EXPECT_EQ(json_text(rows, 1), "{\"rows\": [{\"x\": 1}, {\"x\": 2}], \"flat\": [1, 2]}");
}

}  // namespace
}  // namespace stp::schedule
