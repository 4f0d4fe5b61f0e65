#include "engine/executor.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <tuple>
#include <vector>

#include "common/check.h"

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
    const bool on_device = ex_.device_ >= 0;
    if (on_device && ex_.ops_.reset_peak_memory) ex_.ops_.reset_peak_memory(ex_.device_);
    mark();  // marks_[0]: the step's origin
    for (std::size_t pc = 0; pc < instrs_.size(); ++pc) {
      advance_p2p(pc);
      const Instr& instr = instrs_[pc];
      if (!instr.is_compute()) {
        execute(instr, pc);
        continue;
      }
      Timed t;
      t.ev.rank = rank_;
      t.ev.index = static_cast<int>(pc);
      t.ev.name = schedule::to_string(instr);
      t.ev.category = schedule::kCategoryCompute;
      t.ev.op = instr.op;
      t.ev.parts = instr.parts;
      t.start = mark();
      timed_.push_back(std::move(t));
      cur_ = static_cast<int>(timed_.size()) - 1;
      execute(instr, pc);
      timed_[cur_].end = mark();
      cur_ = -1;
      release_sends();
    }
    // Sends complete in the background; the step ends when they have.
    const int w0 = mark();
    for (auto& s : sends_) s.wait();
    waits_.push_back({-1, false, w0, mark()});
    STP_ASSERT(recvs_.empty(), recvs_.size(), " posted receives were never consumed");
    STP_ASSERT(w_fifo_.empty(), w_fifo_.size(), " deferred weight gradients never ran");
    STP_ASSERT(
        fwd_input_.empty() && bwd_grad_.empty() && fwd_output_.empty() && bwd_output_.empty(),
        "tensors left over at the end of the step");
    const int end = mark();
    if (loss_sum_.defined()) stats_.loss_sum = loss_sum_.item<double>();  // the step's one read
    resolve(end);
    stats_.peak_activation_bytes = ex_.store_.peak_bytes();
    stats_.peak_activation_sets = ex_.store_.peak_sets();
    stats_.offloaded_bytes = ex_.store_.offloaded_bytes();
    stats_.partial_trips = ex_.store_.partial_trips();
    if (on_device && ex_.ops_.memory_stats) {
      const offload::DeviceMemoryStats m = ex_.ops_.memory_stats(ex_.device_);
      stats_.device_allocated_peak_bytes = m.allocated_peak_bytes;
      stats_.device_reserved_peak_bytes = m.reserved_peak_bytes;
    }
    return std::move(stats_);
  }

 private:
  // A compute instruction being measured: marks (indices into marks_) and what it waited for.
  struct Timed {
    schedule::TimelineEvent ev;
    int start = -1, ready = -1, end = -1;  // Note [Step clock]
    double store_waited = 0;  // host seconds create() / acquire() blocked (CPU budget, reload)
    int reload = -1;          // copies_ index of the reload it consumed
  };
  // A blocking wait: a TP collective (exposed communication) or a receive / send (PP idle).
  struct TimedWait {
    int event;  // timed_ index; -1: outside any compute instruction
    bool tp;
    int from, to;  // marks
  };
  // An OFFLOAD / RELOAD: its issue mark and the copies it started.
  struct TimedCopy {
    schedule::TimelineEvent ev;
    int issue = -1;
    std::vector<offload::CopyRecord> records;
  };

  // ---- clock (Note [Step clock]) -------------------------------------------------------
  int mark() {
    marks_.push_back(ex_.device_ >= 0
                         ? ex_.ops_.mark(ex_.ops_.current_stream(ex_.device_), ex_.device_)
                         : offload::TimeMark::host_now());
    return static_cast<int>(marks_.size()) - 1;
  }

  // Seconds from the step's origin to `m`; NaN when `m` holds no time (null, still pending, or
  // of the other clock).
  double since_origin(const offload::TimeMark& m) const {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (ex_.device_ >= 0) return m.is_device() ? ex_.ops_.elapsed(marks_.front(), m) : nan;
    if (m.is_null() || m.is_device() || m.host_seconds() < 0) return nan;
    return m.host_seconds() - marks_.front().host_seconds();
  }

  // Turns every mark into seconds, once, after the step: waits, events, copies, step time.
  void resolve(int end_mark) {
    std::vector<double> t(marks_.size());
    for (std::size_t i = 0; i < marks_.size(); ++i) t[i] = since_origin(marks_[i]);
    for (const TimedWait& w : waits_) {
      const double d = std::max(0.0, t[w.to] - t[w.from]);
      if (w.tp) {
        stats_.tp_wait_seconds += d;
        if (w.event >= 0) timed_[w.event].ev.tp_wait += d;
      } else {
        stats_.p2p_wait_seconds += d;
        if (w.event >= 0) timed_[w.event].ev.p2p_wait += d;
      }
    }
    std::vector<schedule::TimelineEvent> events;
    for (TimedCopy& c : copies_) {
      const double issue = t[c.issue];
      double start = std::numeric_limits<double>::infinity(), end = issue;
      for (const offload::CopyRecord& r : c.records) {
        const double b = r.cancelled ? issue : since_origin(r.span.start);
        const double e = since_origin(r.span.end);
        start = std::min(start, std::isnan(b) ? issue : b);
        end = std::max(end, std::isnan(e) ? issue : e);
      }
      c.ev.start = std::isinf(start) ? issue : start;
      c.ev.end = std::max(end, c.ev.start);
      events.push_back(c.ev);
    }
    for (Timed& x : timed_) {
      x.ev.start = t[x.start];
      x.ev.end = t[x.end];
      // Blocked on the host link: as long as the store blocked, or until the reload it consumed
      // ended, whichever is later, but never past the moment its parts were ready.
      double wait = x.store_waited;
      if (x.reload >= 0)
        wait = std::max(wait, copies_[x.reload].ev.end - x.ev.start - x.ev.p2p_wait);
      if (x.ready >= 0) wait = std::min(wait, t[x.ready] - x.ev.start - x.ev.p2p_wait);
      x.ev.reload_wait = std::max(0.0, wait);
      stats_.reload_wait_seconds += x.ev.reload_wait;
      if (x.reload >= 0) x.ev.reload_index = copies_[x.reload].ev.index;
      events.push_back(std::move(x.ev));
    }
    std::stable_sort(events.begin(), events.end(),
                     [](const auto& a, const auto& b) { return a.index < b.index; });
    stats_.events = std::move(events);
    stats_.seconds = t[end_mark];
  }

  // OFFLOAD / RELOAD: `start_copy` hands the set to the store, which starts its copies.
  template <class Start>
  void copy_instr(const Instr& in, std::size_t pc, Start start_copy) {
    TimedCopy c;
    c.ev.rank = rank_;
    c.ev.index = static_cast<int>(pc);
    c.ev.name = schedule::to_string(in);
    c.ev.category = in.op == Op::kOffload ? schedule::kCategoryOffload : schedule::kCategoryReload;
    c.ev.op = in.op;
    c.ev.parts = {in.ref};
    c.issue = mark();
    start_copy();
    if (ex_.offload_) c.records = ex_.offload_->take_copies();
    if (in.op == Op::kReload) unconsumed_reloads_[{in.ref.chunk, in.ref.mb}] = copies_.size();
    copies_.push_back(std::move(c));
  }

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
      const int w0 = mark();
      r->second.wait();
      waits_.push_back({cur_, false, w0, mark()});
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
      case Op::kOffload:
        copy_instr(in, pc, [&] { ex_.store_.offload(in.ref.chunk, in.ref.mb, in.share); });
        return;
      case Op::kReload:
        copy_instr(in, pc, [&] { ex_.store_.reload(in.ref.chunk, in.ref.mb); });
        return;
      case Op::kF:
      case Op::kB:
      case Op::kBW:
      case Op::kW: {
        Lane a = make_lane(in.parts.at(0));
        mark_ready();
        run_one(a);
        break;
      }
      case Op::kFF:
      case Op::kFB:
      case Op::kFW: {
        Lane a = make_lane(in.parts.at(0));
        Lane b = make_lane(in.parts.at(1));
        mark_ready();
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
        if (cur_ >= 0) timed_[cur_].store_waited += waited;
        set.set_recompute(part.recompute, part.recompute_share);  // Note [Partial sets]
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

  // The set, resident; a reload it consumes is named by the current instruction's event.
  ActivationSet& acquire(int chunk_idx, int mb) {
    double waited = 0;
    ActivationSet& set = ex_.store_.acquire(chunk_idx, mb, &waited);
    if (cur_ >= 0) {
      Timed& t = timed_[cur_];
      auto it = unconsumed_reloads_.find({chunk_idx, mb});
      if (it != unconsumed_reloads_.end()) {
        t.reload = static_cast<int>(it->second);
        unconsumed_reloads_.erase(it);
      }
      t.store_waited += waited;
    }
    return set;
  }

  // Every part has its inputs and sets: compute starts (Note [Step clock]).
  void mark_ready() {
    if (cur_ >= 0) timed_[cur_].ready = mark();
  }

  void wait_tp(CommHandle& h) {
    if (!h.pending()) return;
    const int w0 = mark();
    h.wait();
    waits_.push_back({cur_, true, w0, mark()});
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
  std::vector<offload::TimeMark> marks_;  // Note [Step clock]; [0] is the step's origin
  std::vector<Timed> timed_;              // compute instructions, in program order
  std::vector<TimedWait> waits_;
  std::vector<TimedCopy> copies_;  // OFFLOAD / RELOAD instructions, in program order
  std::map<Key, std::size_t> unconsumed_reloads_;  // (chunk, mb) -> copies_ index
  int cur_ = -1;                                   // timed_ index being measured; -1: none
};

Executor::Executor(std::vector<Chunk*> chunks, Group& tp, PipeChannels& pp, ActivationStore& store)
    : chunks_(std::move(chunks)), tp_(tp), pp_(pp), store_(store) {
  STP_ASSERT(!chunks_.empty(), "executor without chunks");
}

void Executor::use_device_clock(offload::DeviceOps ops, int device) {
  STP_CHECK(device >= 0, "use_device_clock: device=", device, " must be a CUDA device >= 0");
  STP_CHECK(ops.mark && ops.elapsed && ops.current_stream,
            "use_device_clock: the DeviceOps table needs mark, elapsed and current_stream");
  ops_ = std::move(ops);
  device_ = device;
}

void Executor::set_offload(ActivationOffload* offload) {
  if (offload_ == offload) return;
  if (offload_) offload_->record_copies(false);
  offload_ = offload;
  if (offload_) offload_->record_copies(true);
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
