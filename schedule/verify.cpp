#include "schedule/verify.h"

#include <deque>
#include <vector>

#include "common/check.h"
#include "schedule/interpreter.h"

namespace stp::schedule {

namespace {

struct Failure {
  std::string what;
};

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw Failure{str_cat(args...)};
}

// The stage at the other end of a P2P instruction.
int p2p_stage(const Instr& in) {
  const bool up = in.op == Op::kSendF || in.op == Op::kRecvB;  // towards the last stage
  return up ? in.ref.stage + 1 : in.ref.stage - 1;
}

// What the instruction's parts must be. `where` names the instruction (built only on failure).
template <typename Where>
void check_shape(const Instr& in, const Where& where) {
  auto want = [&](std::initializer_list<std::initializer_list<Pass>> slots) {
    if (in.parts.size() != slots.size())
      fail(where(), ": ", to_string(in.op), " needs ", slots.size(), " part(s), has ",
           in.parts.size());
    std::size_t i = 0;
    for (auto allowed : slots) {
      bool ok = false;
      for (Pass p : allowed) ok = ok || in.parts[i].pass == p;
      if (!ok)
        fail(where(), ": part ", i, " of ", to_string(in.op), " cannot be ",
             to_string(in.parts[i].pass));
      ++i;
    }
  };
  for (std::size_t i = 0; i < in.parts.size(); ++i)
    if (in.parts[i].recompute && in.parts[i].pass != Pass::kF)
      fail(where(), ": part ", i, " is ", to_string(in.parts[i].pass),
           " with recompute; only a forward (F) part may be recomputed (Note [Recompute])");
  for (std::size_t i = 0; i < in.parts.size(); ++i)
    if (!(in.parts[i].recompute_share > 0 && in.parts[i].recompute_share <= 1))
      fail(where(), ": part ", i, " has recompute_share ", in.parts[i].recompute_share,
           "; it must be in (0, 1] (Note [Partial sets])");
  if (!(in.share > 0 && in.share <= 1))
    fail(where(), ": share ", in.share, " must be in (0, 1] (Note [Partial sets])");
  if (in.share < 1 && in.op != Op::kOffload && in.op != Op::kReload)
    fail(where(), ": ", to_string(in.op), " has share ", in.share,
         "; only OFFLOAD and RELOAD move part of a set (Note [Partial sets])");
  switch (in.op) {
    case Op::kF: want({{Pass::kF}}); break;
    case Op::kB: want({{Pass::kB}}); break;
    case Op::kW: want({{Pass::kW}}); break;
    case Op::kBW: want({{Pass::kBW}}); break;
    case Op::kFF: want({{Pass::kF}, {Pass::kF}}); break;
    case Op::kFB: want({{Pass::kF}, {Pass::kB, Pass::kBW}}); break;
    case Op::kFW: want({{Pass::kF}, {Pass::kW}}); break;
    case Op::kSendF:
    case Op::kRecvF:
    case Op::kSendB:
    case Op::kRecvB:
    case Op::kOffload:
    case Op::kReload:
      if (!in.parts.empty()) fail(where(), ": ", to_string(in.op), " carries no compute parts");
      break;
  }
}

// Checks the program while the Interpreter runs it (Note [Schedule invariants]).
class Machine final : public Interpreter::Observer {
 public:
  explicit Machine(const Program& prog) : prog_(prog), p_(prog.p), S_(prog.stages()), m_(prog.m) {}

  void run() {
    check_layout();
    const std::size_t n = static_cast<std::size_t>(S_) * m_;
    f_done_.assign(n, 0);
    b_done_.assign(n, 0);
    w_done_.assign(n, 0);
    fused_.assign(n, 0);
    f_in_.assign(n, 0);
    b_in_.assign(n, 0);
    offloaded_.assign(n, 0);
    trips_.assign(n, 0);
    share_.assign(n, 1.0);
    fifo_.assign(p_, {});
    Interpreter interpreter(prog_, ChannelLayout::kPerPairDirection);
    interpreter.run(*this);
    finish(interpreter);
  }

 private:
  std::size_t at(int stage, int mb) const { return static_cast<std::size_t>(stage) * m_ + mb; }
  std::string where(int r, std::size_t i) const {
    return str_cat("rank ", r, " instr ", i, " (", to_string(prog_.ranks[r][i]), ")");
  }
  static std::string sm(int stage, int mb) { return str_cat("stage ", stage, " mb ", mb); }

  void check_layout() {
    if (p_ < 1) fail("p=", p_, " must be >= 1");
    if (m_ < 1) fail("m=", m_, " must be >= 1");
    if (static_cast<int>(prog_.ranks.size()) != p_)
      fail("program has ", prog_.ranks.size(), " rank lists, p=", p_);
    if (S_ < 1 || prog_.stage_chunk.size() != prog_.stage_rank.size())
      fail("stage_rank has ", prog_.stage_rank.size(), " entries and stage_chunk ",
           prog_.stage_chunk.size(), "; need the same number >= 1");
    rank_chunk_stage_.assign(p_, {});
    for (int s = 0; s < S_; ++s) {
      const int r = prog_.stage_rank[s];
      const int c = prog_.stage_chunk[s];
      if (r < 0 || r >= p_) fail("stage ", s, " is on rank ", r, ", outside [0, ", p_, ")");
      if (c < 0 || c >= std::max(prog_.v, 1))
        fail("stage ", s, " is chunk ", c, ", outside [0, v=", prog_.v, ")");
      auto& cs = rank_chunk_stage_[r];
      if (static_cast<int>(cs.size()) <= c) cs.resize(c + 1, -1);
      if (cs[c] >= 0) fail("stages ", cs[c], " and ", s, " are both chunk ", c, " of rank ", r);
      cs[c] = s;
    }
  }

  int stage_of(int r, int chunk) const {
    const auto& cs = rank_chunk_stage_[r];
    return chunk >= 0 && chunk < static_cast<int>(cs.size()) ? cs[chunk] : -1;
  }

  // The ref of a P2P / offload instruction names a stage (and chunk) of this rank.
  void check_ref(int r, std::size_t i, const Part& ref) const {
    if (ref.mb < 0 || ref.mb >= m_) fail(where(r, i), ": mb ", ref.mb, " outside [0, m=", m_, ")");
    if (ref.stage < 0 || ref.stage >= S_)
      fail(where(r, i), ": stage ", ref.stage, " outside [0, ", S_, ")");
    if (prog_.stage_rank[ref.stage] != r || prog_.stage_chunk[ref.stage] != ref.chunk)
      fail(where(r, i), ": stage ", ref.stage, " is chunk ", prog_.stage_chunk[ref.stage],
           " of rank ", prog_.stage_rank[ref.stage], ", not chunk ", ref.chunk, " of rank ", r);
  }

  void check_part(int r, std::size_t i, const Part& part) const {
    if (part.stage < 0 || part.stage >= S_)
      fail(where(r, i), ": stage ", part.stage, " outside [0, ", S_, ")");
    if (part.mb < 0 || part.mb >= m_)
      fail(where(r, i), ": mb ", part.mb, " outside [0, m=", m_, ")");
    if (prog_.stage_rank[part.stage] != r)
      fail(where(r, i), ": stage ", part.stage, " lives on rank ", prog_.stage_rank[part.stage]);
    if (prog_.stage_chunk[part.stage] != part.chunk)
      fail(where(r, i), ": stage ", part.stage, " is chunk ", prog_.stage_chunk[part.stage],
           ", the part says chunk ", part.chunk);
  }

  // Checks one compute part against the state before its instruction.
  void check_compute(int r, std::size_t i, const Part& part) {
    const int s = part.stage;
    const std::size_t k = at(s, part.mb);
    switch (part.pass) {
      case Pass::kF:
        if (f_done_[k]) fail(where(r, i), ": second F of ", sm(s, part.mb));
        if (s > 0) {
          if (prog_.stage_rank[s - 1] == r) {
            if (!f_done_[at(s - 1, part.mb)])
              fail(where(r, i), ": F of ", sm(s, part.mb), " runs before F of stage ", s - 1,
                   " on the same rank");
          } else if (!f_in_[k]) {
            fail(where(r, i), ": F of ", sm(s, part.mb), " has no RECV_F of its input before it");
          }
        }
        break;
      case Pass::kB:
      case Pass::kBW:
        if (b_done_[k]) fail(where(r, i), ": second backward of ", sm(s, part.mb));
        if (!f_done_[k]) fail(where(r, i), ": backward of ", sm(s, part.mb), " before its F");
        if (s < S_ - 1) {
          if (prog_.stage_rank[s + 1] == r) {
            if (!b_done_[at(s + 1, part.mb)])
              fail(where(r, i), ": backward of ", sm(s, part.mb),
                   " runs before the backward of stage ", s + 1, " on the same rank");
          } else if (!b_in_[k]) {
            fail(where(r, i), ": backward of ", sm(s, part.mb),
                 " has no RECV_B of its output gradient before it");
          }
        }
        if (offloaded_[k] == 1)
          fail(where(r, i), ": backward of ", sm(s, part.mb),
               " while its activations are offloaded (no RELOAD before it)");
        break;
      case Pass::kW: {
        if (!b_done_[k]) fail(where(r, i), ": W of ", sm(s, part.mb), " before its B");
        if (fused_[k]) fail(where(r, i), ": W of ", sm(s, part.mb), " whose backward fused W");
        if (w_done_[k]) fail(where(r, i), ": second W of ", sm(s, part.mb));
        if (offloaded_[k] == 1)
          fail(where(r, i), ": W of ", sm(s, part.mb),
               " while what it holds is offloaded (no RELOAD before it)");
        auto& fifo = fifo_[r];
        if (fifo.empty() || fifo.front() != k) {
          const std::size_t front = fifo.empty() ? 0 : fifo.front();
          fail(where(r, i), ": W of ", sm(s, part.mb),
               " but the oldest deferred weight gradient is ",
               sm(static_cast<int>(front / m_), static_cast<int>(front % m_)),
               " (W parts must follow the order of their B parts)");
        }
        break;
      }
    }
  }

  void commit(int r, const Part& part) {
    const std::size_t k = at(part.stage, part.mb);
    switch (part.pass) {
      case Pass::kF: f_done_[k] = 1; break;
      case Pass::kB:
        b_done_[k] = 1;
        fifo_[r].push_back(k);
        break;
      case Pass::kBW:
        b_done_[k] = 1;
        fused_[k] = 1;
        break;
      case Pass::kW:
        w_done_[k] = 1;
        fifo_[r].pop_front();
        break;
    }
  }

  // The shape of the instruction and, for P2P, that its ref and peer exist: what the
  // interpreter needs before it posts a P2P instruction.
  void reach(int r, std::size_t i, const Instr& in) override {
    check_shape(in, [&] { return where(r, i); });
    if (!is_p2p(in.op)) return;
    check_ref(r, i, in.ref);
    const int s = in.ref.stage;
    const int other = p2p_stage(in);
    if (other < 0 || other >= S_)
      fail(where(r, i), ": stage ", s, " has no ", other > s ? "next" : "previous",
           " stage to talk to");
    if (prog_.stage_rank[other] != in.peer)
      fail(where(r, i), ": stage ", other, " lives on rank ", prog_.stage_rank[other],
           ", not on peer ", in.peer);
    if (in.peer == r) fail(where(r, i), ": P2P to its own rank");
  }

  void execute(int r, std::size_t i, const Instr& in, std::optional<InstrRef> send) override {
    if (in.is_compute()) {
      for (const Part& part : in.parts) check_part(r, i, part);
      if (in.parts.size() == 2 && in.parts[0].stage == in.parts[1].stage &&
          in.parts[0].mb == in.parts[1].mb)
        fail(where(r, i), ": both parts are ", sm(in.parts[0].stage, in.parts[0].mb));
      for (const Part& part : in.parts) check_compute(r, i, part);
      for (const Part& part : in.parts) commit(r, part);
    } else if (is_p2p(in.op)) {
      const bool fwd = in.op == Op::kSendF || in.op == Op::kRecvF;
      const std::size_t k = at(in.ref.stage, in.ref.mb);
      if (!send) {  // a SEND
        if (fwd ? !f_done_[k] : !b_done_[k])
          fail(where(r, i), ": sends the ", fwd ? "output of F" : "input gradient of the backward",
               " of ", sm(in.ref.stage, in.ref.mb), " before computing it");
        return;
      }
      const Instr& msg = prog_.ranks[send->rank][send->index];
      if (msg.op != (fwd ? Op::kSendF : Op::kSendB) || msg.ref.stage != p2p_stage(in) ||
          msg.ref.mb != in.ref.mb)
        fail(where(r, i), ": mismatched send order on channel ", in.peer, "->", r,
             ": the next message sent there is ", to_string(msg.op), " s", msg.ref.stage, " mb",
             msg.ref.mb);
      (fwd ? f_in_ : b_in_)[k] = 1;
    } else {  // OFFLOAD / RELOAD
      const int s = stage_of(r, in.ref.chunk);
      if (s < 0) fail(where(r, i), ": rank ", r, " has no chunk ", in.ref.chunk);
      if (in.ref.mb < 0 || in.ref.mb >= m_)
        fail(where(r, i), ": mb ", in.ref.mb, " outside [0, m=", m_, ")");
      const std::size_t k = at(s, in.ref.mb);
      if (in.op == Op::kOffload) {
        if (!f_done_[k]) fail(where(r, i), ": offloads ", sm(s, in.ref.mb), " before its F");
        // After its B a set holds what its deferred W reads: a second trip (Note [Schedule
        // invariants]); a fused BW or a W that ran leaves nothing.
        if (b_done_[k] && (fused_[k] || w_done_[k]))
          fail(where(r, i), ": offloads ", sm(s, in.ref.mb), " after its last backward pass");
        if (offloaded_[k] == 1) fail(where(r, i), ": ", sm(s, in.ref.mb), " is already offloaded");
        if (trips_[k] == (b_done_[k] ? 2 : 1))
          fail(where(r, i), ": offloads ", sm(s, in.ref.mb), " twice ",
               b_done_[k] ? "between its B and its W" : "before its backward");
        trips_[k] = b_done_[k] ? 2 : 1;
        offloaded_[k] = 1;
        share_[k] = in.share;
      } else {
        if (offloaded_[k] != 1)
          fail(where(r, i), ": reloads ", sm(s, in.ref.mb), " which is not offloaded");
        if (in.share != share_[k])
          fail(where(r, i), ": reloads share ", in.share, " of ", sm(s, in.ref.mb),
               ", whose OFFLOAD moved share ", share_[k], " (Note [Partial sets])");
        offloaded_[k] = 2;
      }
    }
  }

  void finish(const Interpreter& interpreter) {
    std::string stuck;
    for (int r = 0; r < p_; ++r) {
      if (!interpreter.finished(r))
        stuck += str_cat(stuck.empty() ? "" : "; ", where(r, interpreter.pc(r)), " waits for rank ",
                         prog_.ranks[r][interpreter.pc(r)].peer);
    }
    if (!stuck.empty()) fail("deadlock: ", stuck);
    if (const auto left = interpreter.first_unmatched()) {
      const Instr& msg = prog_.ranks[left->rank][left->index];
      fail("rank ", left->rank, " sends ", to_string(msg.op), " s", msg.ref.stage, " mb",
           msg.ref.mb, " to rank ", msg.peer, ", which never receives it");
    }
    for (int s = 0; s < S_; ++s) {
      for (int mb = 0; mb < m_; ++mb) {
        const std::size_t k = at(s, mb);
        const int r = prog_.stage_rank[s];
        if (!f_done_[k]) fail("rank ", r, " never runs F of ", sm(s, mb));
        if (!b_done_[k]) fail("rank ", r, " never runs the backward (B or BW) of ", sm(s, mb));
        if (!fused_[k] && !w_done_[k])
          fail("rank ", r, " never runs W of ", sm(s, mb), " (missing W)");
      }
    }
  }

  const Program& prog_;
  const int p_, S_, m_;
  std::vector<std::vector<int>> rank_chunk_stage_;      // [rank][chunk] -> stage
  std::vector<char> f_done_, b_done_, w_done_, fused_;  // (S*m) per (stage, mb)
  std::vector<char> f_in_, b_in_;  // (S*m) input activation / output gradient received
  std::vector<char> offloaded_;    // (S*m) 0 resident, 1 offloaded, 2 reloaded
  std::vector<char> trips_;        // (S*m) last trip started: 0 none, 1 before B, 2 between B and W
  std::vector<double> share_;      // (S*m) the share its last OFFLOAD moved (Note [Partial sets])
  std::vector<std::deque<std::size_t>> fifo_;  // (p) deferred B parts (stage*m+mb), oldest first
};

}  // namespace

std::string find_error(const Program& program) {
  try {
    Machine(program).run();
  } catch (const Failure& f) {
    return f.what;
  }
  return {};
}

void verify(const Program& program) {
  std::string error = find_error(program);
  STP_CHECK(error.empty(), "invalid ", program.kind.empty() ? "" : program.kind + " ",
            "program: ", error);
}

}  // namespace stp::schedule
