#include "fifo_backend.h"

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <algorithm>
#include <deque>
#include <sstream>
#include <stdexcept>

#include "common/check.h"

namespace stp::testing {

struct FifoFabric::Op {
  enum Kind { kSend, kRecv, kAllReduce, kBroadcast, kBarrier };
  Kind kind = kBarrier;
  int rank = 0;  // the issuer's index in its group
  int peer = -1;
  int root = 0;
  c10d::ReduceOp::RedOpType reduce = c10d::ReduceOp::SUM;
  at::Tensor tensor;
  std::string group;
  std::string channel;
  bool done = false;
  bool waited = false;
  std::string error;

  const char* name() const {
    static const char* kNames[] = {"send", "recv", "allreduce", "broadcast", "barrier"};
    return kNames[kind];
  }

  std::string describe() const {
    std::ostringstream os;
    os << name();
    if (kind == kSend) os << " to " << peer;
    if (kind == kRecv) os << " from " << peer;
    os << " by rank " << rank << " of " << group;
    if (tensor.defined()) os << " " << tensor.sizes() << " " << tensor.scalar_type();
    return os.str();
  }
};

// A communicator: per rank, one queue per peer and one for collectives.
struct FifoFabric::Channel {
  explicit Channel(int n) : size(n), pair(n * n), coll(n) {}
  std::deque<std::shared_ptr<Op>>& queue(int me, int peer) { return pair[me * size + peer]; }
  int size;
  std::vector<std::deque<std::shared_ptr<Op>>> pair;  // [me * size + peer]
  std::vector<std::deque<std::shared_ptr<Op>>> coll;  // [me]
};

class FifoFabric::Work : public c10d::Work {
 public:
  Work(FifoFabric* fabric, std::shared_ptr<Op> op) : fabric_(fabric), op_(std::move(op)) {}
  bool isCompleted() override {
    std::lock_guard<std::mutex> lock(fabric_->mu_);
    return op_->done;
  }
  bool wait(std::chrono::milliseconds timeout) override { return fabric_->wait(op_, timeout); }

 private:
  FifoFabric* fabric_;
  std::shared_ptr<Op> op_;
};

class FifoFabric::Backend : public c10d::Backend {
 public:
  Backend(FifoFabric* fabric, const engine::GroupSpec& spec, std::string channel, std::string name)
      : c10d::Backend(spec.my_index, static_cast<int>(spec.ranks.size())),
        fabric_(fabric),
        group_(spec.name),
        carries_(spec.carries),
        channel_(std::move(channel)),
        name_(std::move(name)) {}

  const std::string getBackendName() const override { return name_; }

  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>& ts,
                                           const c10d::AllreduceOptions& opts) override {
    auto op = make(Op::kAllReduce, ts);
    op->reduce = opts.reduceOp.op_;
    return post(op);
  }
  c10::intrusive_ptr<c10d::Work> broadcast(std::vector<at::Tensor>& ts,
                                           const c10d::BroadcastOptions& opts) override {
    auto op = make(Op::kBroadcast, ts);
    op->root = static_cast<int>(opts.rootRank);
    return post(op);
  }
  c10::intrusive_ptr<c10d::Work> send(std::vector<at::Tensor>& ts, int peer, int) override {
    auto op = make(Op::kSend, ts);
    op->peer = peer;
    return post(op);
  }
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>& ts, int peer, int) override {
    auto op = make(Op::kRecv, ts);
    op->peer = peer;
    return post(op);
  }
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions&) override {
    std::vector<at::Tensor> none;
    return post(make(Op::kBarrier, none));
  }

 private:
  std::shared_ptr<Op> make(Op::Kind kind, std::vector<at::Tensor>& ts) {
    STP_ASSERT(ts.size() <= 1, "one tensor per operation");
    auto op = std::make_shared<Op>();
    op->kind = kind;
    op->rank = getRank();
    op->group = group_;
    op->channel = channel_;
    if (!ts.empty()) op->tensor = ts[0];
    return op;
  }
  c10::intrusive_ptr<c10d::Work> post(const std::shared_ptr<Op>& op) {
    {
      std::lock_guard<std::mutex> lock(fabric_->mu_);
      fabric_->records_.push_back({group_, carries_, op->name(),
                                   op->tensor.defined() ? op->tensor.scalar_type() : at::kByte,
                                   op->tensor.defined() ? op->tensor.numel() : 0});
      if (op->kind == Op::kSend) {
        auto& sent = fabric_->sent_[str_cat(group_, "@", op->rank)];
        std::erase_if(sent, [](const auto& w) { return w.expired(); });
        fabric_->max_live_sends_ =
            std::max(fabric_->max_live_sends_, static_cast<int>(sent.size()));
        sent.emplace_back(op->tensor.storage().getWeakStorageImpl());
      }
      if (op->kind == Op::kAllReduce) {
        auto& open = fabric_->unwaited_[str_cat(group_, "@", op->rank)];
        std::erase_if(open, [](const auto& o) { return o->waited; });
        fabric_->max_in_flight_ = std::max(fabric_->max_in_flight_, static_cast<int>(open.size()));
        open.push_back(op);
      }
    }
    fabric_->post(channel_, op);
    return c10::make_intrusive<Work>(fabric_, op);
  }

  FifoFabric* fabric_;
  std::string group_;
  engine::Carries carries_;
  std::string channel_;
  std::string name_;
};

FifoFabric::FifoFabric() : FifoFabric(Options()) {}
FifoFabric::FifoFabric(Options options) : options_(std::move(options)) {}
FifoFabric::~FifoFabric() = default;

engine::BackendFactory FifoFabric::factory() {
  return [this](const engine::GroupSpec& spec) -> c10::intrusive_ptr<c10d::Backend> {
    std::string channel = options_.channel ? options_.channel(spec.name) : spec.name;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& ch = channels_[channel];
      if (!ch) ch = std::make_unique<Channel>(static_cast<int>(spec.ranks.size()));
      STP_ASSERT(ch->size == static_cast<int>(spec.ranks.size()), "channel ", channel,
                 " shared by groups of different sizes");
    }
    std::string name =
        spec.carries == engine::Carries::kHost ? "fifo-host" : options_.device_backend_name;
    return c10::make_intrusive<Backend>(this, spec, channel, name);
  };
}

std::vector<FifoFabric::Record> FifoFabric::records() const {
  std::lock_guard<std::mutex> lock(mu_);
  return records_;
}

int FifoFabric::max_collectives_in_flight() const {
  std::lock_guard<std::mutex> lock(mu_);
  return max_in_flight_;
}

int FifoFabric::max_live_sends() const {
  std::lock_guard<std::mutex> lock(mu_);
  return max_live_sends_;
}

void FifoFabric::post(const std::string& channel, const std::shared_ptr<Op>& op) {
  std::lock_guard<std::mutex> lock(mu_);
  Channel& ch = *channels_.at(channel);
  if (op->kind == Op::kSend || op->kind == Op::kRecv) {
    STP_ASSERT(op->peer >= 0 && op->peer < ch.size && op->peer != op->rank, "peer ", op->peer);
    ch.queue(op->rank, op->peer).push_back(op);
  } else {
    ch.coll[op->rank].push_back(op);
  }
  progress();
  cv_.notify_all();
}

void FifoFabric::progress() {
  auto fail = [](const std::vector<std::shared_ptr<Op>>& ops, const std::string& why) {
    for (const auto& op : ops) {
      op->error = why;
      op->done = true;
    }
  };
  for (bool moved = true; moved;) {
    moved = false;
    for (auto& [name, chp] : channels_) {
      Channel& ch = *chp;
      for (int a = 0; a < ch.size; ++a) {
        for (int b = a + 1; b < ch.size; ++b) {
          auto& qa = ch.queue(a, b);
          auto& qb = ch.queue(b, a);
          if (qa.empty() || qb.empty()) continue;
          auto x = qa.front(), y = qb.front();
          if (x->kind == y->kind) continue;  // two sends or two recvs: both wait
          const Op& s = x->kind == Op::kSend ? *x : *y;
          const Op& r = x->kind == Op::kSend ? *y : *x;
          if (!s.tensor.sizes().equals(r.tensor.sizes()) ||
              s.tensor.scalar_type() != r.tensor.scalar_type()) {
            fail({x, y},
                 str_cat("message order mismatch on ", name, ": ", s.describe(), " met ",
                         r.describe(), " (the two ranks disagree on the order of their messages)"));
          } else {
            r.tensor.copy_(s.tensor);
            x->done = y->done = true;
          }
          qa.pop_front();
          qb.pop_front();
          moved = true;
        }
      }
      bool all = true;
      for (const auto& q : ch.coll) all = all && !q.empty();
      if (!all) continue;
      std::vector<std::shared_ptr<Op>> heads;
      for (auto& q : ch.coll) heads.push_back(q.front());
      bool same = true;
      for (const auto& h : heads)
        same = same && h->kind == heads[0]->kind &&
               (!h->tensor.defined() || h->tensor.sizes().equals(heads[0]->tensor.sizes()));
      if (!same) {
        fail(heads, str_cat("collective mismatch on ", name, ": ", heads[0]->describe(), " met ",
                            heads.back()->describe()));
      } else if (heads[0]->kind == Op::kAllReduce) {
        at::Tensor acc = heads[0]->tensor.clone();
        for (std::size_t i = 1; i < heads.size(); ++i) {
          if (heads[0]->reduce == c10d::ReduceOp::MAX)
            acc = at::maximum(acc, heads[i]->tensor);
          else if (heads[0]->reduce == c10d::ReduceOp::MIN)
            acc = at::minimum(acc, heads[i]->tensor);
          else
            acc.add_(heads[i]->tensor);
        }
        for (const auto& h : heads) {
          h->tensor.copy_(acc);
          h->done = true;
        }
      } else if (heads[0]->kind == Op::kBroadcast) {
        for (const auto& h : heads) {
          if (h->rank != heads[0]->root) h->tensor.copy_(heads[heads[0]->root]->tensor);
          h->done = true;
        }
      } else {
        for (const auto& h : heads) h->done = true;
      }
      for (auto& q : ch.coll) q.pop_front();
      moved = true;
    }
  }
}

std::string FifoFabric::stuck(const Op& op) const {
  std::string s = str_cat(op.describe(), " did not complete");
  if (op.kind != Op::kSend && op.kind != Op::kRecv) return s;
  Channel& ch = *channels_.at(op.channel);
  auto head = [](const std::deque<std::shared_ptr<Op>>& q) {
    return q.empty() ? std::string("nothing") : q.front()->describe();
  };
  return str_cat(s, ": its queue's head is ", head(ch.queue(op.rank, op.peer)), ", the peer's is ",
                 head(ch.queue(op.peer, op.rank)));
}

bool FifoFabric::wait(const std::shared_ptr<Op>& op, std::chrono::milliseconds timeout) {
  if (timeout == ::kNoTimeout) timeout = options_.timeout;
  std::unique_lock<std::mutex> lock(mu_);
  op->waited = true;
  if (!cv_.wait_for(lock, timeout, [&] { return op->done; }))
    throw std::runtime_error(
        str_cat("fifo backend: ", stuck(*op), " within ", timeout.count(), " ms (deadlock)"));
  if (!op->error.empty()) throw std::runtime_error(op->error);
  return true;
}

}  // namespace stp::testing
