// The JSON contract of a Program (docs/schedule.md "JSON contract"):
//   {"kind": str, "p": int, "m": int, "v": int, "stages": int,
//    "stage_rank": [int], "stage_chunk": [int],
//    "ranks": [[{"op": str, "parts": [{"pass": str, "chunk": int, "stage": int, "mb": int}],
//                "ref": {"chunk": int, "stage": int, "mb": int}, "peer": int}, ...], ...]}
// "ref" appears on P2P and offload instructions, "peer" on P2P ones; "v", "stage_rank" and
// "stage_chunk" are optional on input (derived from the parts when absent).
#include <algorithm>
#include <sstream>

#include "common/check.h"
#include "schedule/json.h"
#include "schedule/program.h"

namespace stp::schedule {

namespace {

void write_ints(std::ostringstream& os, const std::vector<int>& xs) {
  os << '[';
  for (std::size_t i = 0; i < xs.size(); ++i) os << (i ? ", " : "") << xs[i];
  os << ']';
}

void write_ref(std::ostringstream& os, const Part& p) {
  os << "{\"chunk\": " << p.chunk << ", \"stage\": " << p.stage << ", \"mb\": " << p.mb << '}';
}

// --- reading -----------------------------------------------------------------------------------

const json::Value& member(const json::Value& obj, const char* key, const std::string& path) {
  const json::Value* v = obj.find(key);
  STP_CHECK(v != nullptr, "program JSON: ", path, " has no \"", key, "\"");
  return *v;
}

int int_member(const json::Value& obj, const char* key, const std::string& path) {
  const json::Value& v = member(obj, key, path);
  STP_CHECK(v.is_int(), "program JSON: ", path, ".", key, " must be an integer, got ",
            json::type_name(v.type));
  return static_cast<int>(v.number);
}

const json::Value& typed(const json::Value& obj, const char* key, const std::string& path,
                         json::Value::Type type) {
  const json::Value& v = member(obj, key, path);
  STP_CHECK(v.type == type, "program JSON: ", path, ".", key, " must be ", json::type_name(type),
            ", got ", json::type_name(v.type));
  return v;
}

std::vector<int> int_array(const json::Value& v, const std::string& path) {
  STP_CHECK(v.type == json::Value::Type::kArray, "program JSON: ", path, " must be an array");
  std::vector<int> out;
  for (std::size_t i = 0; i < v.array.size(); ++i) {
    STP_CHECK(v.array[i].is_int(), "program JSON: ", path, "[", i, "] must be an integer");
    out.push_back(static_cast<int>(v.array[i].number));
  }
  return out;
}

Part read_part(const json::Value& v, const std::string& path, bool with_pass) {
  STP_CHECK(v.type == json::Value::Type::kObject, "program JSON: ", path, " must be an object");
  Part p;
  if (with_pass) {
    const json::Value& pass = typed(v, "pass", path, json::Value::Type::kString);
    try {
      p.pass = pass_from_string(pass.string);
    } catch (const std::invalid_argument& e) {
      STP_CHECK(false, "program JSON: ", path, ".pass: ", e.what());
    }
  }
  p.chunk = int_member(v, "chunk", path);
  p.stage = int_member(v, "stage", path);
  p.mb = int_member(v, "mb", path);
  return p;
}

Instr read_instr(const json::Value& v, const std::string& path) {
  STP_CHECK(v.type == json::Value::Type::kObject, "program JSON: ", path, " must be an object");
  Instr in;
  const json::Value& op = typed(v, "op", path, json::Value::Type::kString);
  try {
    in.op = op_from_string(op.string);
  } catch (const std::invalid_argument& e) {
    STP_CHECK(false, "program JSON: ", path, ".op: ", e.what());
  }
  const json::Value& parts = typed(v, "parts", path, json::Value::Type::kArray);
  for (std::size_t i = 0; i < parts.array.size(); ++i)
    in.parts.push_back(read_part(parts.array[i], str_cat(path, ".parts[", i, "]"), true));
  if (const json::Value* ref = v.find("ref")) in.ref = read_part(*ref, path + ".ref", false);
  if (is_p2p(in.op) || in.op == Op::kOffload || in.op == Op::kReload)
    STP_CHECK(v.find("ref"), "program JSON: ", path, " (", op.string, ") has no \"ref\"");
  if (is_p2p(in.op))
    in.peer = int_member(v, "peer", path);
  else if (v.find("peer"))
    in.peer = int_member(v, "peer", path);
  return in;
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
  std::ostringstream os;
  os << "{\"kind\": " << json::quote(program.kind) << ", \"p\": " << program.p
     << ", \"m\": " << program.m << ", \"v\": " << program.v << ", \"stages\": " << program.stages()
     << ",\n \"stage_rank\": ";
  write_ints(os, program.stage_rank);
  os << ", \"stage_chunk\": ";
  write_ints(os, program.stage_chunk);
  os << ",\n \"ranks\": [";
  for (std::size_t r = 0; r < program.ranks.size(); ++r) {
    os << (r ? ",\n  [" : "\n  [");
    const auto& list = program.ranks[r];
    for (std::size_t i = 0; i < list.size(); ++i) {
      const Instr& in = list[i];
      os << (i ? ",\n   " : "") << "{\"op\": \"" << to_string(in.op) << "\", \"parts\": [";
      for (std::size_t k = 0; k < in.parts.size(); ++k) {
        const Part& p = in.parts[k];
        os << (k ? ", " : "") << "{\"pass\": \"" << to_string(p.pass)
           << "\", \"chunk\": " << p.chunk << ", \"stage\": " << p.stage << ", \"mb\": " << p.mb
           << '}';
      }
      os << ']';
      if (!in.is_compute()) {
        os << ", \"ref\": ";
        write_ref(os, in.ref);
      }
      if (is_p2p(in.op)) os << ", \"peer\": " << in.peer;
      os << '}';
    }
    os << ']';
  }
  os << "]}\n";
  return os.str();
}

Program from_json(const std::string& text) {
  json::Value doc = json::parse(text);
  STP_CHECK(doc.type == json::Value::Type::kObject, "program JSON: the document must be an object");
  Program prog;
  prog.kind = typed(doc, "kind", "program", json::Value::Type::kString).string;
  prog.p = int_member(doc, "p", "program");
  prog.m = int_member(doc, "m", "program");
  STP_CHECK(prog.p >= 1, "program JSON: p=", prog.p, " must be >= 1");
  STP_CHECK(prog.m >= 1, "program JSON: m=", prog.m, " must be >= 1");
  const int stages = int_member(doc, "stages", "program");
  STP_CHECK(stages >= 1, "program JSON: stages=", stages, " must be >= 1");
  prog.v = doc.find("v") ? int_member(doc, "v", "program") : 0;
  const json::Value& ranks = typed(doc, "ranks", "program", json::Value::Type::kArray);
  STP_CHECK(static_cast<int>(ranks.array.size()) == prog.p, "program JSON: ranks has ",
            ranks.array.size(), " lists but p=", prog.p);
  for (std::size_t r = 0; r < ranks.array.size(); ++r) {
    const json::Value& list = ranks.array[r];
    std::string path = str_cat("ranks[", r, "]");
    STP_CHECK(list.type == json::Value::Type::kArray, "program JSON: ", path, " must be an array");
    std::vector<Instr> instrs;
    instrs.reserve(list.array.size());
    for (std::size_t i = 0; i < list.array.size(); ++i)
      instrs.push_back(read_instr(list.array[i], str_cat(path, "[", i, "]")));
    prog.ranks.push_back(std::move(instrs));
  }
  const json::Value* sr = doc.find("stage_rank");
  const json::Value* sc = doc.find("stage_chunk");
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
