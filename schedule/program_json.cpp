// The JSON contract of a Program (docs/schedule.md "JSON contract"):
//   {"kind": str, "p": int, "m": int, "v": int, "stages": int,
//    "stage_rank": [int], "stage_chunk": [int],
//    "ranks": [[{"op": str, "parts": [{"pass": str, "chunk": int, "stage": int, "mb": int,
//                                      "recompute": true, "recompute_share": num}],
//                "ref": {"chunk": int, "stage": int, "mb": int}, "peer": int, "share": num},
//               ...], ...]}
// "recompute" appears on a compute part only when set (Note [Recompute]: F parts), and
// "recompute_share" only with it and below 1; "share" only on an OFFLOAD / RELOAD that moves
// part of its trip (Note [Partial sets]). So documents written before they existed read the
// same; "ref" appears on P2P and offload instructions,
// "peer" on P2P ones; "v", "stage_rank" and "stage_chunk" are optional on input (derived from
// the parts when absent).
#include <algorithm>
#include <cmath>
#include <limits>

#include "common/check.h"
#include "schedule/json_text.h"
#include "schedule/program.h"

namespace stp::schedule {

namespace {

using Json = nlohmann::json;

// --- writing -----------------------------------------------------------------------------------

OrderedJson part_json(const Part& p, bool with_pass) {
  OrderedJson j = OrderedJson::object();
  if (with_pass) j["pass"] = to_string(p.pass);
  j["chunk"] = p.chunk;
  j["stage"] = p.stage;
  j["mb"] = p.mb;
  if (p.recompute) j["recompute"] = true;
  if (p.recompute && p.recompute_share < 1) j["recompute_share"] = p.recompute_share;
  return j;
}

OrderedJson instr_json(const Instr& in) {
  OrderedJson parts = OrderedJson::array();
  for (const Part& p : in.parts) parts.push_back(part_json(p, true));
  OrderedJson j = {{"op", to_string(in.op)}, {"parts", std::move(parts)}};
  if (!in.is_compute()) j["ref"] = part_json(in.ref, false);
  if (is_p2p(in.op)) j["peer"] = in.peer;
  if (in.share < 1) j["share"] = in.share;
  return j;
}

// --- reading -----------------------------------------------------------------------------------

// "a number", "an object", ... for messages.
std::string type_text(const Json& v) {
  const std::string name = v.type_name();
  return (name == "object" || name == "array" ? "an " : "a ") + name;
}

// A number with an integral value that fits an int (2.0 counts, as JSON does not tell them apart).
bool is_int(const Json& v) {
  if (v.is_number_integer())
    return v.is_number_unsigned() ? v.get<std::uint64_t>() <= std::numeric_limits<int>::max()
                                  : v.get<std::int64_t>() >= std::numeric_limits<int>::min() &&
                                        v.get<std::int64_t>() <= std::numeric_limits<int>::max();
  if (!v.is_number_float()) return false;
  const double x = v.get<double>();
  return std::isfinite(x) && x == std::floor(x) && x >= std::numeric_limits<int>::min() &&
         x <= std::numeric_limits<int>::max();
}

const Json* find(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

const Json& member(const Json& obj, const char* key, const std::string& path) {
  const Json* v = find(obj, key);
  STP_CHECK(v != nullptr, "program JSON: ", path, " has no \"", key, "\"");
  return *v;
}

int int_member(const Json& obj, const char* key, const std::string& path) {
  const Json& v = member(obj, key, path);
  STP_CHECK(is_int(v), "program JSON: ", path, ".", key, " must be an integer, got ", type_text(v));
  return static_cast<int>(v.get<double>());
}

const Json& typed(const Json& obj, const char* key, const std::string& path, Json::value_t type) {
  const Json& v = member(obj, key, path);
  STP_CHECK(v.type() == type, "program JSON: ", path, ".", key, " must be ", type_text(Json(type)),
            ", got ", type_text(v));
  return v;
}

std::vector<int> int_array(const Json& v, const std::string& path) {
  STP_CHECK(v.is_array(), "program JSON: ", path, " must be an array");
  std::vector<int> out;
  for (std::size_t i = 0; i < v.size(); ++i) {
    STP_CHECK(is_int(v[i]), "program JSON: ", path, "[", i, "] must be an integer");
    out.push_back(static_cast<int>(v[i].get<double>()));
  }
  return out;
}

// A share (Note [Partial sets]): a number in (0, 1].
double share_value(const Json& v, const std::string& path) {
  STP_CHECK(v.is_number(), "program JSON: ", path, " must be a number in (0, 1], got ",
            type_text(v));
  const double x = v.get<double>();
  STP_CHECK(x > 0 && x <= 1, "program JSON: ", path, " = ", x, " must be in (0, 1]");
  return x;
}

Part read_part(const Json& v, const std::string& path, bool with_pass) {
  STP_CHECK(v.is_object(), "program JSON: ", path, " must be an object");
  Part p;
  if (with_pass) {
    const Json& pass = typed(v, "pass", path, Json::value_t::string);
    try {
      p.pass = pass_from_string(pass.get<std::string>());
    } catch (const std::invalid_argument& e) {
      STP_CHECK(false, "program JSON: ", path, ".pass: ", e.what());
    }
  }
  p.chunk = int_member(v, "chunk", path);
  p.stage = int_member(v, "stage", path);
  p.mb = int_member(v, "mb", path);
  if (const Json* recompute = find(v, "recompute")) {
    STP_CHECK(with_pass, "program JSON: ", path, " has \"recompute\", which only a compute part ",
              "may carry");
    STP_CHECK(recompute->is_boolean(), "program JSON: ", path, ".recompute must be a boolean, got ",
              type_text(*recompute));
    p.recompute = recompute->get<bool>();
  }
  if (const Json* share = find(v, "recompute_share")) {
    STP_CHECK(p.recompute, "program JSON: ", path, " has \"recompute_share\" without ",
              "\"recompute\": true");
    p.recompute_share = share_value(*share, path + ".recompute_share");
  }
  return p;
}

Instr read_instr(const Json& v, const std::string& path) {
  STP_CHECK(v.is_object(), "program JSON: ", path, " must be an object");
  Instr in;
  const std::string op = typed(v, "op", path, Json::value_t::string).get<std::string>();
  try {
    in.op = op_from_string(op);
  } catch (const std::invalid_argument& e) {
    STP_CHECK(false, "program JSON: ", path, ".op: ", e.what());
  }
  const Json& parts = typed(v, "parts", path, Json::value_t::array);
  for (std::size_t i = 0; i < parts.size(); ++i)
    in.parts.push_back(read_part(parts[i], str_cat(path, ".parts[", i, "]"), true));
  if (const Json* ref = find(v, "ref")) in.ref = read_part(*ref, path + ".ref", false);
  if (is_p2p(in.op) || in.op == Op::kOffload || in.op == Op::kReload)
    STP_CHECK(find(v, "ref"), "program JSON: ", path, " (", op, ") has no \"ref\"");
  if (is_p2p(in.op) || find(v, "peer")) in.peer = int_member(v, "peer", path);
  if (const Json* share = find(v, "share")) {
    STP_CHECK(in.op == Op::kOffload || in.op == Op::kReload, "program JSON: ", path, " (", op,
              ") has \"share\", which only OFFLOAD and RELOAD carry");
    in.share = share_value(*share, path + ".share");
  }
  return in;
}

// The document, or a one-line error: nlohmann's message, with "trailing characters" named as such.
Json parse_document(const std::string& text) {
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    const bool trailing = std::string(e.what()).find("expected end of input") != std::string::npos;
    STP_CHECK(false, "program JSON: ", trailing ? "trailing characters after the JSON value; " : "",
              e.what());
  }
  return {};
}

// Stage placement from the compute parts, for documents without stage_rank/stage_chunk.
void derive_layout(Program& prog) {
  const int stages = static_cast<int>(prog.stage_rank.size());
  std::vector<int> rank(stages, -1), chunk(stages, -1);
  int v = 0;
  for (std::size_t r = 0; r < prog.ranks.size(); ++r) {
    for (const Instr& in : prog.ranks[r]) {
      for (const Part& p : in.parts) {
        STP_CHECK(p.stage >= 0 && p.stage < stages, "program JSON: part stage=", p.stage,
                  " on rank ", r, " is outside [0, ", stages, ")");
        STP_CHECK(rank[p.stage] < 0 ||
                      (rank[p.stage] == static_cast<int>(r) && chunk[p.stage] == p.chunk),
                  "program JSON: stage ", p.stage, " appears on rank ", rank[p.stage], " chunk ",
                  chunk[p.stage], " and on rank ", r, " chunk ", p.chunk);
        rank[p.stage] = static_cast<int>(r);
        chunk[p.stage] = p.chunk;
        v = std::max(v, p.chunk + 1);
      }
    }
  }
  for (int s = 0; s < stages; ++s)
    STP_CHECK(rank[s] >= 0, "program JSON: stage ", s,
              " appears in no part; give \"stage_rank\" and \"stage_chunk\"");
  prog.stage_rank = rank;
  prog.stage_chunk = chunk;
  if (prog.v <= 0) prog.v = v;
}

}  // namespace

std::string to_json(const Program& program) {
  OrderedJson ranks = OrderedJson::array();
  for (const auto& list : program.ranks) {
    OrderedJson instrs = OrderedJson::array();
    for (const Instr& in : list) instrs.push_back(instr_json(in));
    ranks.push_back(std::move(instrs));
  }
  const OrderedJson doc = {{"kind", program.kind},
                           {"p", program.p},
                           {"m", program.m},
                           {"v", program.v},
                           {"stages", program.stages()},
                           {"stage_rank", program.stage_rank},
                           {"stage_chunk", program.stage_chunk},
                           {"ranks", std::move(ranks)}};
  return json_text(doc, /*wrap_depth=*/3) + "\n";  // a line per rank and per instruction
}

Program from_json(const std::string& text) {
  const Json doc = parse_document(text);
  STP_CHECK(doc.is_object(), "program JSON: the document must be an object");
  Program prog;
  prog.kind = typed(doc, "kind", "program", Json::value_t::string).get<std::string>();
  prog.p = int_member(doc, "p", "program");
  prog.m = int_member(doc, "m", "program");
  STP_CHECK(prog.p >= 1, "program JSON: p=", prog.p, " must be >= 1");
  STP_CHECK(prog.m >= 1, "program JSON: m=", prog.m, " must be >= 1");
  const int stages = int_member(doc, "stages", "program");
  STP_CHECK(stages >= 1, "program JSON: stages=", stages, " must be >= 1");
  prog.v = find(doc, "v") ? int_member(doc, "v", "program") : 0;
  const Json& ranks = typed(doc, "ranks", "program", Json::value_t::array);
  STP_CHECK(static_cast<int>(ranks.size()) == prog.p, "program JSON: ranks has ", ranks.size(),
            " lists but p=", prog.p);
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const Json& list = ranks[r];
    std::string path = str_cat("ranks[", r, "]");
    STP_CHECK(list.is_array(), "program JSON: ", path, " must be an array");
    std::vector<Instr> instrs;
    instrs.reserve(list.size());
    for (std::size_t i = 0; i < list.size(); ++i)
      instrs.push_back(read_instr(list[i], str_cat(path, "[", i, "]")));
    prog.ranks.push_back(std::move(instrs));
  }
  const Json* sr = find(doc, "stage_rank");
  const Json* sc = find(doc, "stage_chunk");
  STP_CHECK((sr == nullptr) == (sc == nullptr),
            "program JSON: give both \"stage_rank\" and \"stage_chunk\" or neither");
  if (sr) {
    prog.stage_rank = int_array(*sr, "stage_rank");
    prog.stage_chunk = int_array(*sc, "stage_chunk");
    STP_CHECK(static_cast<int>(prog.stage_rank.size()) == stages &&
                  static_cast<int>(prog.stage_chunk.size()) == stages,
              "program JSON: stage_rank and stage_chunk must have stages=", stages,
              " entries, got ", prog.stage_rank.size(), " and ", prog.stage_chunk.size());
    if (prog.v <= 0)
      for (int c : prog.stage_chunk) prog.v = std::max(prog.v, c + 1);
  } else {
    prog.stage_rank.assign(stages, -1);
    derive_layout(prog);
  }
  return prog;
}

}  // namespace stp::schedule
