// Names and text forms of the Program IR (program.h). JSON lives in program_json.cpp.
#include "schedule/program.h"

#include <sstream>

#include "common/check.h"

namespace stp::schedule {

namespace {

constexpr Pass kAllPasses[] = {Pass::kF, Pass::kB, Pass::kW, Pass::kBW};
constexpr Op kAllOps[] = {Op::kF,     Op::kB,       Op::kW,     Op::kBW,    Op::kFF,
                          Op::kFB,    Op::kFW,      Op::kSendF, Op::kRecvF, Op::kSendB,
                          Op::kRecvB, Op::kOffload, Op::kReload};

// "r" for a recomputed forward (Note [Recompute]), "r0.5" when it recomputes half its layers
// (Note [Partial sets]); "" otherwise.
std::string recompute_text(const Part& part) {
  if (!part.recompute) return "";
  return part.recompute_share < 1 ? str_cat('r', part.recompute_share) : std::string("r");
}

// A part's microbatch with its recompute mark: "3r".
std::string mb_text(const Part& part) { return str_cat(part.mb, recompute_text(part)); }

// "FB1[4,2]" when both parts share a chunk, else "FB(F0[4],B1[2])"; a recomputed forward's
// microbatch carries an "r": "FB1[4r,2]", "FF0[2r,3r]", "FW0[8r]/W1[0]", "FB(F0[4]r,B1[2])".
std::string braided(const char* op, const Instr& in) {
  const Part& a = in.parts[0];
  const Part& b = in.parts[1];
  std::ostringstream os;
  if (in.op == Op::kFW) {  // the W part names its own chunk and mb: "FW0[8]/W1[0]"
    os << op << a.chunk << '[' << mb_text(a) << "]/" << to_string(b);
  } else if (a.chunk == b.chunk) {
    os << op << a.chunk << '[' << mb_text(a) << ',' << mb_text(b) << ']';
    if (b.pass == Pass::kBW) os << "+W";
  } else {
    os << op << '(' << to_string(a) << ',' << to_string(b) << ')';
  }
  return os.str();
}

}  // namespace

const char* to_string(Pass pass) {
  switch (pass) {
    case Pass::kF: return "F";
    case Pass::kB: return "B";
    case Pass::kW: return "W";
    case Pass::kBW: return "BW";
  }
  return "?";
}

const char* to_string(Op op) {
  switch (op) {
    case Op::kF: return "F";
    case Op::kB: return "B";
    case Op::kW: return "W";
    case Op::kBW: return "BW";
    case Op::kFF: return "FF";
    case Op::kFB: return "FB";
    case Op::kFW: return "FW";
    case Op::kSendF: return "SEND_F";
    case Op::kRecvF: return "RECV_F";
    case Op::kSendB: return "SEND_B";
    case Op::kRecvB: return "RECV_B";
    case Op::kOffload: return "OFFLOAD";
    case Op::kReload: return "RELOAD";
  }
  return "?";
}

Pass pass_from_string(const std::string& text) {
  for (Pass p : kAllPasses)
    if (text == to_string(p)) return p;
  STP_CHECK(false, "pass '", text, "' is not one of F, B, W, BW");
  return Pass::kF;
}

Op op_from_string(const std::string& text) {
  for (Op o : kAllOps)
    if (text == to_string(o)) return o;
  STP_CHECK(false, "op '", text,
            "' is not one of F, B, W, BW, FF, FB, FW, SEND_F, RECV_F, SEND_B, RECV_B, OFFLOAD, "
            "RELOAD");
  return Op::kF;
}

void mark_recompute_all(Program& program, double share) {
  STP_CHECK(share > 0 && share <= 1, "recompute share ", share, " must be in (0, 1]");
  for (auto& list : program.ranks)
    for (Instr& in : list)
      for (Part& part : in.parts)
        if (part.pass == Pass::kF) {
          part.recompute = true;
          part.recompute_share = share;
        }
}

std::string to_string(const Part& part) {
  return str_cat(to_string(part.pass), part.chunk, '[', part.mb, ']', recompute_text(part));
}

std::string to_string(const Instr& in) {
  const Part& r = in.ref;
  switch (in.op) {
    case Op::kF:
    case Op::kB:
    case Op::kW:
    case Op::kBW:
      return in.parts.empty() ? std::string(to_string(in.op)) + "[]" : to_string(in.parts[0]);
    case Op::kFF:
    case Op::kFB:
    case Op::kFW:
      return in.parts.size() == 2 ? braided(to_string(in.op), in)
                                  : std::string(to_string(in.op)) + "[?]";
    case Op::kSendF:
    case Op::kSendB: return str_cat(to_string(in.op), " s", r.stage, " mb", r.mb, " ->", in.peer);
    case Op::kRecvF:
    case Op::kRecvB: return str_cat(to_string(in.op), " s", r.stage, " mb", r.mb, " <-", in.peer);
    case Op::kOffload:
    case Op::kReload:
      return in.share < 1 ? str_cat(to_string(in.op), " c", r.chunk, " mb", r.mb, ' ', in.share)
                          : str_cat(to_string(in.op), " c", r.chunk, " mb", r.mb);
  }
  return "?";
}

std::string to_text(const Program& program, bool compute_only) {
  std::ostringstream os;
  for (std::size_t r = 0; r < program.ranks.size(); ++r) {
    os << 'r' << r << ':';
    for (const Instr& in : program.ranks[r]) {
      if (compute_only && !in.is_compute()) continue;
      os << ' ' << to_string(in);
    }
    os << '\n';
  }
  return os.str();
}

}  // namespace stp::schedule
