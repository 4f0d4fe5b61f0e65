#include "engine/executor.h"

#include <ATen/ATen.h>

#include <chrono>
#include <deque>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "common/clock.h"

namespace stp::engine {
namespace {

using schedule::Instr;
using schedule::Op;
using schedule::Part;
using PassKind = schedule::Pass;
using Key = std::pair<int, int>;  // (stage, mb)

}  // namespace

// One part of an instruction being executed: a pass driven unit by unit.
struct Executor::Lane {
  std::unique_ptr<engine::Pass> pass;
  std::unique_ptr<engine::Pass> fused_w;  // BW: W unit k right after B unit k's collective starts
  std::function<void()> on_finish;        // routes the output, releases the set
  int k = 0;
  CommHandle pending;
  bool finished = false;

  bool has_next() const { return k < pass->size(); }
};

class Executor::StepRun {
 public:
  StepRun(Executor& ex, const schedule::Program& program, const std::vector<MicroBatch>& mbs)
      : ex_(ex),
        prog_(program),
        mbs_(mbs),
        rank_(ex.pp_.rank()),
        instrs_(program.ranks.at(rank_)) {}

  StepStats run() {
    const double t0 = now_seconds();
    for (std::size_t pc = 0; pc < instrs_.size(); ++pc) {
      advance_p2p(pc);
      const Instr& instr = instrs_[pc];
      if (!instr.is_compute()) {
        execute(instr, pc);
        continue;
      }
      schedule::TimelineEvent ev;
      ev.rank = rank_;
      ev.index = static_cast<int>(pc);
      ev.name = schedule::to_string(instr);
      ev.category = schedule::kCategoryCompute;
      ev.op = instr.op;
      ev.parts = instr.parts;
      ev.start = now_seconds() - t0;
      cur_ = &ev;
      execute(instr, pc);
      cur_ = nullptr;
      ev.end = now_seconds() - t0;
      stats_.events.push_back(std::move(ev));
      release_sends();
    }
    // Sends complete in the background; the step ends when they have.
    double w0 = now_seconds();
    for (auto& s : sends_) s.wait();
    stats_.p2p_wait_seconds += now_seconds() - w0;
    STP_ASSERT(recvs_.empty(), recvs_.size(), " posted receives were never consumed");
    STP_ASSERT(w_fifo_.empty(), w_fifo_.size(), " deferred weight gradients never ran");
    STP_ASSERT(
        fwd_input_.empty() && bwd_grad_.empty() && fwd_output_.empty() && bwd_output_.empty(),
        "tensors left over at the end of the step");
    if (loss_sum_.defined()) stats_.loss_sum = loss_sum_.item<double>();  // the step's one read
    stats_.seconds = now_seconds() - t0;
    stats_.peak_activation_bytes = ex_.store_.peak_bytes();
    stats_.peak_activation_sets = ex_.store_.peak_sets();
    stats_.offloaded_bytes = ex_.store_.offloaded_bytes();
    return std::move(stats_);
  }

 private:
  int stage_rank(int stage) const { return prog_.stage_rank.at(stage); }
  Chunk& chunk(int c) const { return *ex_.chunks_.at(c); }

  // ---- P2P -----------------------------------------------------------------------------
  // Posts P2P instructions in program order, up to the end of the compute instruction after
  // the current one; a SEND whose tensor does not exist yet stops the walk.
  void advance_p2p(std::size_t pc) {
    std::size_t limit = pc;
    int computes = 0;
    while (limit < instrs_.size() && computes < 2) {
      if (instrs_[limit].is_compute()) ++computes;
      ++limit;
    }
    for (; p2p_cursor_ < limit; ++p2p_cursor_) {
      const Instr& in = instrs_[p2p_cursor_];
      if (!post_p2p(in)) break;
    }
  }

  // A sent tensor lives as long as its handle: drop every handle that no longer needs it
  // (gpu-review item 12), so sent activations and gradients leave memory as soon as the
  // transfer allows instead of at the end of the step.
  void release_sends() {
    std::erase_if(sends_, [](const CommHandle& h) { return h.droppable(); });
  }

  // Returns false when the instruction cannot be posted yet (a send of a future tensor).
  bool post_p2p(const Instr& in) {
    const Key key{in.ref.stage, in.ref.mb};
    switch (in.op) {
      case Op::kRecvF: {
        at::Tensor buf = recv_buffer(in.ref);
        CommHandle h = ex_.pp_.recv_async(buf, in.peer);
        fwd_input_[key] = buf;
        recvs_.emplace(std::make_tuple(0, in.ref.stage, in.ref.mb), std::move(h));
        return true;
      }
      case Op::kRecvB: {
        at::Tensor buf = recv_buffer(in.ref);
        CommHandle h = ex_.pp_.recv_async(buf, in.peer);
        bwd_grad_[key] = buf;
        recvs_.emplace(std::make_tuple(1, in.ref.stage, in.ref.mb), std::move(h));
        return true;
      }
      case Op::kSendF: {
        auto it = fwd_output_.find(key);
        if (it == fwd_output_.end()) return false;
        sends_.push_back(ex_.pp_.send_async(it->second, in.peer));
        fwd_output_.erase(it);
        return true;
      }
      case Op::kSendB: {
        auto it = bwd_output_.find(key);
        if (it == bwd_output_.end()) return false;
        sends_.push_back(ex_.pp_.send_async(it->second, in.peer));
        bwd_output_.erase(it);
        return true;
      }
      case Op::kF:
      case Op::kB:
      case Op::kW:
      case Op::kBW:
      case Op::kFF:
      case Op::kFB:
      case Op::kFW:
      case Op::kOffload:
      case Op::kReload: return true;  // not P2P: nothing to post
    }
    return true;
  }

  at::Tensor recv_buffer(const Part& ref) {
    Chunk& c = chunk(prog_.stage_chunk.at(ref.stage));
    const at::Tensor& like = c.params().front().value;
    auto shape = c.input_shape(mbs_.at(ref.mb).tokens.size(0));
    return at::empty(shape, like.options());
  }

  // Takes the tensor for (stage, mb) out of `map`, waiting for its receive if one was posted.
  at::Tensor take(std::map<Key, at::Tensor>& map, int dir, int stage, int mb) {
    auto it = map.find({stage, mb});
    STP_ASSERT(it != map.end(), "no ", dir == 0 ? "activation" : "gradient", " for stage ", stage,
               " mb ", mb, " (missing RECV or producer)");
    at::Tensor t = std::move(it->second);
    map.erase(it);
    auto r = recvs_.find(std::make_tuple(dir, stage, mb));
    if (r != recvs_.end()) {
      double w0 = now_seconds();
      r->second.wait();
      double w = now_seconds() - w0;
      stats_.p2p_wait_seconds += w;
      if (cur_) cur_->p2p_wait += w;
      recvs_.erase(r);
    }
    return t;
  }

  // ---- compute ---------------------------------------------------------------------------
  void execute(const Instr& in, std::size_t pc) {
    switch (in.op) {
      case Op::kSendF:
      case Op::kRecvF:
      case Op::kSendB:
      case Op::kRecvB:
        STP_ASSERT(p2p_cursor_ > pc, "P2P instruction ", pc, " (", schedule::to_string(in),
                   ") could not be posted: its tensor does not exist");
        return;
      case Op::kOffload: ex_.store_.offload(in.ref.chunk, in.ref.mb); return;
      case Op::kReload: ex_.store_.reload(in.ref.chunk, in.ref.mb); return;
      case Op::kF:
      case Op::kB:
      case Op::kBW:
      case Op::kW: {
        Lane a = make_lane(in.parts.at(0));
        run_one(a);
        break;
      }
      case Op::kFF:
      case Op::kFB:
      case Op::kFW: {
        Lane a = make_lane(in.parts.at(0));
        Lane b = make_lane(in.parts.at(1));
        if (ex_.braid_) {
          run_braided(a, b);
        } else {
          run_one(a);
          run_one(b);
        }
        break;
      }
    }
    ex_.store_.account();
  }

  Lane make_lane(const Part& part) {
    Chunk& c = chunk(part.chunk);
    STP_ASSERT(c.stage() == part.stage, "part names stage ", part.stage, " but local chunk ",
               part.chunk, " is stage ", c.stage());
    Lane lane;
    const int s = part.stage, mb = part.mb;
    switch (part.pass) {
      case PassKind::kF: {
        at::Tensor input = c.is_first_stage() ? at::Tensor() : take(fwd_input_, 0, s, mb);
        double waited = 0;
        ActivationSet& set = ex_.store_.create(part.chunk, mb, &waited);
        stats_.reload_wait_seconds += waited;
        if (cur_) cur_->reload_wait += waited;
        lane.pass = c.forward(set, mbs_.at(mb), input);
        lane.on_finish = [this, &c, &set, s, mb, lane_pass = lane.pass.get()] {
          if (c.is_last_stage()) {
            at::Tensor l = c.loss_tensor(set).detach().to(at::kDouble);
            loss_sum_ = loss_sum_.defined() ? loss_sum_.add(l) : l;  // stays on the device
            ++stats_.losses;
            return;
          }
          at::Tensor out = lane_pass->output();
          if (stage_rank(s + 1) == rank_) {
            fwd_input_[{s + 1, mb}] = out;  // the V turns on this rank: no P2P
          } else {
            fwd_output_[{s, mb}] = out;
          }
        };
        break;
      }
      case PassKind::kB:
      case PassKind::kBW: {
        at::Tensor grad = c.is_last_stage() ? at::Tensor() : take(bwd_grad_, 1, s, mb);
        ActivationSet& set = acquire(part.chunk, mb);
        lane.pass = c.backward(set, grad);
        const bool fused = part.pass == PassKind::kBW;
        if (fused) lane.fused_w = c.weight_grad(set);
        lane.on_finish = [this, &c, s, mb, fused, chunk_idx = part.chunk,
                          lane_pass = lane.pass.get()] {
          if (!c.is_first_stage()) {
            at::Tensor gin = lane_pass->output();
            if (stage_rank(s - 1) == rank_) {
              bwd_grad_[{s - 1, mb}] = gin;
            } else {
              bwd_output_[{s, mb}] = gin;
            }
          }
          if (fused) {
            ex_.store_.release_if_empty(chunk_idx, mb);
          } else {
            w_fifo_.emplace_back(chunk_idx, mb);
          }
        };
        break;
      }
      case PassKind::kW: {
        STP_ASSERT(!w_fifo_.empty(), "W for chunk ", part.chunk, " mb ", mb,
                   " but no deferred weight gradient is queued");
        STP_ASSERT(w_fifo_.front() == std::make_pair(part.chunk, mb), "W names chunk ", part.chunk,
                   " mb ", mb, " but the oldest deferred one is chunk ", w_fifo_.front().first,
                   " mb ", w_fifo_.front().second);
        w_fifo_.pop_front();
        ActivationSet& set = acquire(part.chunk, mb);
        lane.pass = c.weight_grad(set);
        lane.on_finish = [this, chunk_idx = part.chunk, mb] {
          ex_.store_.release_if_empty(chunk_idx, mb);
        };
        break;
      }
    }
    return lane;
  }

  ActivationSet& acquire(int chunk_idx, int mb) {
    double waited = 0;
    ActivationSet& set = ex_.store_.acquire(chunk_idx, mb, &waited);
    stats_.reload_wait_seconds += waited;
    if (cur_) cur_->reload_wait += waited;
    return set;
  }

  void wait_tp(CommHandle& h) {
    if (!h.pending()) return;
    double w0 = now_seconds();
    h.wait();
    double w = now_seconds() - w0;
    stats_.tp_wait_seconds += w;
    if (cur_) cur_->tp_wait += w;
  }

  // Unit k: wait for unit k-1's collective, compute, start this unit's collective, and in a
  // fused backward run W unit k while that collective is in flight.
  void step(Lane& l) {
    wait_tp(l.pending);
    at::Tensor t = l.pass->run(l.k);
    if (t.defined()) l.pending = ex_.tp_.all_reduce_async(t);
    if (l.fused_w) {
      at::Tensor none = l.fused_w->run(l.k);
      STP_ASSERT(!none.defined(), "a weight-gradient unit asked for a collective");
    }
    ++l.k;
  }

  void finish(Lane& l) {
    wait_tp(l.pending);
    l.pass->finish();
    if (l.fused_w) l.fused_w->finish();
    if (l.on_finish) l.on_finish();
    l.finished = true;
  }

  void run_one(Lane& l) {
    while (l.has_next()) step(l);
    finish(l);
  }

  // DESIGN.md "Braiding": A's collective k is in flight while B's unit k runs and vice versa;
  // a lane that ran out of units finishes after the other lane's next unit.
  void run_braided(Lane& a, Lane& b) {
    while (!a.finished || !b.finished) {
      if (!a.finished) a.has_next() ? step(a) : finish(a);
      if (!b.finished) b.has_next() ? step(b) : finish(b);
    }
  }

  Executor& ex_;
  const schedule::Program& prog_;
  const std::vector<MicroBatch>& mbs_;
  const int rank_;
  const std::vector<Instr>& instrs_;

  std::map<Key, at::Tensor> fwd_input_;   // (stage, mb): input activation, received or local
  std::map<Key, at::Tensor> bwd_grad_;    // (stage, mb): output gradient, received or local
  std::map<Key, at::Tensor> fwd_output_;  // (stage, mb): activation waiting for its SEND_F
  std::map<Key, at::Tensor> bwd_output_;  // (stage, mb): input gradient waiting for its SEND_B
  std::map<std::tuple<int, int, int>, CommHandle> recvs_;  // (dir, stage, mb): posted receives
  std::vector<CommHandle> sends_;
  at::Tensor loss_sum_;  // last stage: the microbatch losses summed on the device
  std::deque<std::pair<int, int>> w_fifo_;  // deferred W: (chunk, mb), oldest first
  std::size_t p2p_cursor_ = 0;              // first instruction whose P2P is not posted
  StepStats stats_;
  schedule::TimelineEvent* cur_ = nullptr;  // the compute event being measured
};

Executor::Executor(std::vector<Chunk*> chunks, Group& tp, PipeChannels& pp, ActivationStore& store)
    : chunks_(std::move(chunks)), tp_(tp), pp_(pp), store_(store) {
  STP_ASSERT(!chunks_.empty(), "executor without chunks");
}

StepStats Executor::run(const schedule::Program& program,
                        const std::vector<MicroBatch>& microbatches) {
  STP_CHECK(static_cast<int>(microbatches.size()) == program.m, "the step has ",
            microbatches.size(), " microbatches but the program was built for m=", program.m);
  STP_CHECK(program.p == pp_.size(), "program for p=", program.p,
            " pipeline ranks run on a pipeline group of ", pp_.size());
  STP_CHECK(static_cast<int>(chunks_.size()) == program.v, "program has v=", program.v,
            " chunks per rank but the executor holds ", chunks_.size());
  store_.reset_step();
  StepRun run(*this, program, microbatches);
  return run.run();
}

}  // namespace stp::engine
