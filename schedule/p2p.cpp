#include "schedule/p2p.h"

#include <vector>

#include "common/check.h"

namespace stp::schedule {

namespace {

// A message is identified by its sender part: (direction, sender stage, mb).
struct Message {
  bool backward = false;  // gradient (SEND_B/RECV_B) rather than activation (SEND_F/RECV_F)
  int stage = 0;          // the sending stage
  int mb = 0;
};

// check_p2p_channels needs only where the ranks stop.
class NoChecks final : public Interpreter::Observer {
  void reach(int, std::size_t, const Instr&) override {}
  void execute(int, std::size_t, const Instr&, std::optional<InstrRef>) override {}
};

}  // namespace

void insert_p2p(Program& prog) {
  const int p = prog.p;
  const int S = prog.stages();
  const int m = prog.m;
  auto key = [&](const Message& msg) {
    return (msg.stage * m + msg.mb) * 2 + (msg.backward ? 1 : 0);
  };
  auto crosses = [&](int from_stage, int to_stage, int rank) {
    return to_stage >= 0 && to_stage < S && prog.stage_rank[to_stage] != rank &&
           prog.stage_rank[from_stage] == rank;
  };

  // Receiver side: RECV before each consumer; the consumption order defines each channel.
  std::vector<std::vector<Message>> channel(static_cast<std::size_t>(p) * p);  // [src*p+dst]
  std::vector<std::vector<Instr>> out(p);
  for (int r = 0; r < p; ++r) {
    for (const Instr& in : prog.ranks[r]) {
      STP_CHECK(!is_p2p(in.op), "insert_p2p: rank ", r, " already has P2P (", to_string(in), ")");
      for (const Part& part : in.parts) {
        const bool fwd = part.pass == Pass::kF;
        const bool bwd = part.pass == Pass::kB || part.pass == Pass::kBW;
        if (!fwd && !bwd) continue;
        const int from = fwd ? part.stage - 1 : part.stage + 1;  // the producing stage
        if (from < 0 || from >= S || prog.stage_rank[from] == r) continue;
        const int src = prog.stage_rank[from];
        out[r].push_back(transfer_instr(fwd ? Op::kRecvF : Op::kRecvB,
                                        Part{Pass::kF, part.chunk, part.stage, part.mb}, src));
        channel[src * p + r].push_back(Message{bwd, from, part.mb});
      }
      out[r].push_back(in);
    }
  }

  // Sender side: SEND after production, in each channel's consumption order.
  std::vector<char> produced(static_cast<std::size_t>(S) * m * 2, 0);
  std::vector<std::size_t> next(static_cast<std::size_t>(p) * p, 0);
  for (int r = 0; r < p; ++r) {
    std::vector<Instr> list;
    list.reserve(out[r].size() * 2);
    auto flush = [&](int dst) {
      auto& ch = channel[r * p + dst];
      std::size_t& i = next[r * p + dst];
      while (i < ch.size() && produced[key(ch[i])]) {
        const Message& msg = ch[i++];
        list.push_back(
            transfer_instr(msg.backward ? Op::kSendB : Op::kSendF,
                           Part{Pass::kF, prog.stage_chunk[msg.stage], msg.stage, msg.mb}, dst));
      }
    };
    for (Instr& in : out[r]) {
      list.push_back(in);
      for (const Part& part : in.parts) {
        const bool fwd = part.pass == Pass::kF;
        const bool bwd = part.pass == Pass::kB || part.pass == Pass::kBW;
        if (!fwd && !bwd) continue;
        const int to = fwd ? part.stage + 1 : part.stage - 1;
        if (!crosses(part.stage, to, r)) continue;
        produced[key(Message{bwd, part.stage, part.mb})] = 1;
        flush(prog.stage_rank[to]);
      }
    }
    for (int dst = 0; dst < p; ++dst)
      STP_CHECK(next[r * p + dst] == channel[r * p + dst].size(), "insert_p2p: rank ", dst,
                " consumes ", channel[r * p + dst].size(), " messages from rank ", r, " but only ",
                next[r * p + dst],
                " can be sent in that order (a consumed tensor is never produced)");
    prog.ranks[r] = std::move(list);
  }
}

ChannelCheck check_p2p_channels(const Program& program, ChannelLayout layout) {
  Interpreter interpreter(program, layout);
  NoChecks observer;
  interpreter.run(observer);
  int r = 0;
  while (r < program.p && interpreter.finished(r)) ++r;
  if (r == program.p) return {};
  // A stuck rank waits in a RECV for its peer; follow that until a rank repeats.
  std::vector<int> seen(program.p, -1);  // position of a rank on the walk
  std::vector<ChannelWait> walk;
  while (seen[r] < 0) {
    STP_ASSERT(!interpreter.finished(r), "rank ", r, " finished but a rank waits for it");
    seen[r] = static_cast<int>(walk.size());
    walk.push_back({r, interpreter.pc(r), interpreter.queue_head(r)});
    r = program.ranks[r][interpreter.pc(r)].peer;
  }
  ChannelCheck check;
  check.cycle.assign(walk.begin() + seen[r], walk.end());
  for (const ChannelWait& w : check.cycle) {
    const auto& list = program.ranks[w.rank];
    check.message += str_cat(check.message.empty() ? "deadlock: " : "; ", "rank ", w.rank,
                             " instr ", w.recv, " (", to_string(list[w.recv]), ")");
    if (w.head != w.recv)
      check.message += str_cat(" waits behind instr ", w.head, " (", to_string(list[w.head]), ")");
    check.message += str_cat(" for rank ", list[w.recv].peer);
  }
  return check;
}

Program compute_only(const Program& program) {
  Program out = program;
  for (auto& list : out.ranks) {
    std::vector<Instr> kept;
    for (Instr& in : list)
      if (in.is_compute()) kept.push_back(std::move(in));
    list = std::move(kept);
  }
  return out;
}

}  // namespace stp::schedule
