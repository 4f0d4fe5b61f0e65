#include "schedule/interpreter.h"

#include <algorithm>

#include "common/check.h"

namespace stp::schedule {

namespace {

bool is_send(Op op) { return op == Op::kSendF || op == Op::kSendB; }
bool is_recv(Op op) { return op == Op::kRecvF || op == Op::kRecvB; }

}  // namespace

Interpreter::Interpreter(const Program& program, ChannelLayout layout)
    : program_(program),
      layout_(layout),
      p_(program.p),
      pc_(p_, 0),
      posted_(p_, 0),
      paired_(p_),
      queue_(static_cast<std::size_t>(p_) * p_ * 2) {
  STP_ASSERT(static_cast<int>(program.ranks.size()) == p_, program.ranks.size(),
             " rank lists, p=", p_);
}

// Channel of the (sender, receiver) pair, then the side of `rank` on it: the lower rank's
// queue is side 0 (Note [P2P channel model]).
std::size_t Interpreter::queue_of(int rank, const Instr& in) const {
  const int peer = in.peer;
  STP_ASSERT(peer >= 0 && peer < p_ && peer != rank, "rank ", rank, " ", to_string(in));
  const int sender = is_send(in.op) ? rank : peer;
  const int receiver = is_send(in.op) ? peer : rank;
  const int channel = layout_ == ChannelLayout::kPerPairDirection
                          ? sender * p_ + receiver
                          : std::min(rank, peer) * p_ + std::max(rank, peer);
  return static_cast<std::size_t>(channel) * 2 + (rank < peer ? 0 : 1);
}

void Interpreter::run(Observer& observer) {
  std::vector<int> work;  // ranks that can run, the next one at the back
  for (int r = p_ - 1; r >= 0; --r) work.push_back(r);
  while (!work.empty()) {
    const int r = work.back();
    work.pop_back();
    advance(r, observer, work);
  }
}

// Runs `rank` until it blocks on a RECV or ends.
void Interpreter::advance(int rank, Observer& observer, std::vector<int>& work) {
  const auto& list = program_.ranks[rank];
  for (; pc_[rank] < list.size(); ++pc_[rank]) {
    const std::size_t i = pc_[rank];
    const Instr& in = list[i];
    if (!is_recv(in.op)) {
      observer.reach(rank, i, in);
      observer.execute(rank, i, in, std::nullopt);
      if (is_send(in.op)) post(rank, i, work);
      continue;
    }
    if (!posted_[rank]) {
      observer.reach(rank, i, in);
      posted_[rank] = 1;
      post(rank, i, work);
    }
    if (!paired_[rank]) return;  // blocked until a peer's post() completes the RECV
    observer.execute(rank, i, in, paired_[rank]);
    posted_[rank] = 0;
    paired_[rank].reset();
  }
}

// Queues the P2P instruction and completes the pairs that reach the heads of its channel.
void Interpreter::post(int rank, std::size_t index, std::vector<int>& work) {
  const std::size_t q = queue_of(rank, program_.ranks[rank][index]);
  auto& mine = queue_[q];
  auto& theirs = queue_[q ^ 1];
  mine.push_back({rank, index});
  while (!mine.empty() && !theirs.empty()) {
    const bool mine_sends = is_send(program_.ranks[rank][mine.front().index].op);
    const InstrRef other = theirs.front();
    if (mine_sends == is_send(program_.ranks[other.rank][other.index].op)) break;
    const InstrRef send = mine_sends ? mine.front() : other;
    const InstrRef recv = mine_sends ? other : mine.front();
    paired_[recv.rank] = send;  // a rank's only posted RECV is the one at its pc
    if (recv.rank != rank) work.push_back(recv.rank);  // it was blocked there
    mine.pop_front();
    theirs.pop_front();
  }
}

std::size_t Interpreter::queue_head(int rank) const {
  STP_ASSERT(!finished(rank), "rank ", rank, " finished");
  return queue_[queue_of(rank, program_.ranks[rank][pc_[rank]])].front().index;
}

std::optional<InstrRef> Interpreter::first_unmatched() const {
  for (const auto& queue : queue_)
    if (!queue.empty()) return queue.front();
  return std::nullopt;
}

}  // namespace stp::schedule
