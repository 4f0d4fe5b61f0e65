// FakeCudaDevice: a CUDA device for the offload path's CPU tests (STYLE.md item 17). It hands
// out a logging DeviceOps table (offload/device_ops.h) and a CopyEngine that claims the CUDA
// backend, and models the streams they talk about:
//
//   compute   current_stream(kDevice): a non-default handle, not the legacy stream (nullptr).
//             The test thread is this stream: work "queued" on it has run when the call
//             returns, so an event recorded on it is complete at once.
//   D2H, H2D  one FIFO per copy stream of items queued by the copy engine: a wait for an event,
//             a copy (memcpy, host memory standing in for device memory), an event record, and
//             the end of a record_stream's protection. Nothing runs until the test says so:
//             run_one(dir) runs the head item of a stream, or returns false when the stream is
//             empty or its head waits for an event still pending (a blocked stream).
//
// What it checks, as `violations` (each names the call):
//   - every event record, stream wait and record_stream is on a stream of kDevice: compute, D2H
//     or H2D, with device == kDevice (not the legacy stream, not another device's);
//   - with a retain function (stream-ordered release expected), every D2H source lies inside an
//     allocation that record_stream(storage, D2H stream) retained: the allocator could not have
//     reused it while the copy read it. The allocation stays retained until the stream ran
//     past the point where record_stream was called (the caching allocator's deferred reuse).
// Host waits (synchronize, synchronize_stream) are counted; they run the copy streams until
// the awaited work is done, failing the test if it never can be.
//
// Timing (Note [Step clock] in engine/executor.h): mark() on the compute stream reads a fake
// device clock at once, one tick later than the last reading; on a copy stream it is queued
// and reads the clock when the stream runs it, so a copy's marks say when the stream got there.
// elapsed() is a host wait in CUDA (cudaEventSynchronize): it is logged (Op::kElapsed) and
// runs the copy streams until its marks were reached.
//
// Thread-safety: none; one test thread.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/check.h"
#include "offload/copy_engine.h"
#include "offload/device_ops.h"

namespace stp::testing {

using offload::CopyEngine;
using offload::CopyEvent;
using offload::CopyRegion;
using offload::DeviceOps;
using offload::Direction;
using offload::StreamHandle;

// An allocation kept from reuse by record_stream: `keep` holds it alive; [begin, begin+bytes).
struct Retained {
  std::shared_ptr<void> keep;
  const char* begin = nullptr;
  std::size_t bytes = 0;
};
// Turns DeviceOps::record_stream's storage handle into the allocation it keeps.
using RetainFn = std::function<Retained(void* storage)>;

class FakeCudaDevice {
 public:
  static constexpr int kDevice = 3;  // not device 0, which a thread has current by default

  enum class Op {
    kCurrentStream,
    kRecord,
    kWait,
    kSynchronize,
    kSynchronizeStream,
    kRecordStream,
    kMark,
    kElapsed
  };
  struct Call {
    Op op;
    StreamHandle stream = nullptr;
    int device = -1;
  };

  // `retain`: empty models an allocator that cannot be told (DeviceOps::record_stream empty).
  explicit FakeCudaDevice(RetainFn retain = {}) : retain_(std::move(retain)) {}
  ~FakeCudaDevice() { EXPECT_TRUE(violations.empty()) << str_join(violations); }

  static StreamHandle compute() { return handle(0xC0); }
  static StreamHandle stream_of(Direction dir) {
    return handle(dir == Direction::kD2H ? 0xD2 : 0x2D);
  }

  DeviceOps ops() {
    DeviceOps o;
    o.current_stream = [this](int device) {
      log(Op::kCurrentStream, nullptr, device);
      return device == kDevice ? compute() : handle(0xBAD);
    };
    o.record = [this](StreamHandle s, int device) {
      log(Op::kRecord, s, device);
      CopyEvent e = CopyEvent::host();
      if (Queue* q = queue(s)) {
        q->items.push_back(Item{Item::kRecord, e, {}, {}, {}});
      } else {
        e.signal();  // compute: everything queued on it has run
      }
      return e;
    };
    o.wait = [this](const CopyEvent& e, StreamHandle s) {
      log(Op::kWait, s, kDevice);
      if (Queue* q = queue(s)) q->items.push_back(Item{Item::kWait, e, {}, {}, {}});
      if (s == compute()) compute_waits.push_back(e);
    };
    o.synchronize = [this](const CopyEvent& e) {
      log(Op::kSynchronize, nullptr, kDevice);
      ++host_syncs;
      run_until([&] { return e.query(); }, "synchronize(event)");
    };
    o.synchronize_stream = [this](StreamHandle s, int device) {
      log(Op::kSynchronizeStream, s, device);
      ++host_syncs;
      Queue* q = queue(s);
      run_until([&] { return q == nullptr || q->items.empty(); }, "synchronize_stream");
    };
    o.mark = [this](StreamHandle s, int device) {
      log(Op::kMark, s, device);
      auto m = std::make_shared<double>(-1);
      if (Queue* q = queue(s)) {
        q->items.push_back(Item{Item::kMark, {}, {}, {}, m});
      } else {
        *m = ++ticks;  // compute: reached at once
      }
      return offload::TimeMark::device(m);
    };
    o.elapsed = [this](const offload::TimeMark& from, const offload::TimeMark& to) {
      log(Op::kElapsed, nullptr, kDevice);
      auto reached = [](const offload::TimeMark& m) {
        return *static_cast<const double*>(m.device_event()) >= 0;
      };
      run_until([&] { return reached(from) && reached(to); }, "elapsed");
      return *static_cast<const double*>(to.device_event()) -
             *static_cast<const double*>(from.device_event());
    };
    if (retain_) {
      o.record_stream = [this](void* storage, StreamHandle s, int device) {
        log(Op::kRecordStream, s, device);
        if (Queue* q = queue(s))
          q->items.push_back(Item{Item::kUnretain, {}, {}, retain_(storage), {}});
      };
    }
    return o;
  }

  // A CUDA-backend CopyEngine on kDevice whose calls go through `ops` (as CudaCopyEngine's).
  std::unique_ptr<CopyEngine> make_copy_engine(DeviceOps ops) {
    return std::make_unique<Engine>(*this, std::move(ops));
  }

  // Runs the head item of a copy stream; false when it is empty or blocked on a pending event.
  bool run_one(Direction dir) {
    Queue& q = dir == Direction::kD2H ? d2h_ : h2d_;
    if (q.items.empty()) return false;
    Item& it = q.items.front();
    switch (it.kind) {
      case Item::kWait:
        if (!it.event.query()) return false;
        break;
      case Item::kRecord: it.event.signal(); break;
      case Item::kCopy:
        for (const CopyRegion& r : it.regions) {
          if (dir == Direction::kD2H && retain_ && !retained(q, r.src, r.bytes))
            violations.push_back(
                str_cat("a D2H read ", r.bytes, " bytes at ", r.src,
                        " that no record_stream on the D2H stream kept from reuse"));
          std::memcpy(r.dst, r.src, r.bytes);
        }
        ++copies_run;
        break;
      case Item::kMark: *it.mark = ++ticks; break;
      case Item::kUnretain: break;
    }
    q.items.pop_front();
    return true;
  }
  // Runs both copy streams until empty; a test failure if they block each other for good.
  void run_all() {
    run_until([&] { return d2h_.items.empty() && h2d_.items.empty(); }, "run_all");
  }
  std::size_t queued(Direction dir) const {
    return (dir == Direction::kD2H ? d2h_ : h2d_).items.size();
  }

  // How many calls of `op` were made.
  int count(Op op) const {
    int n = 0;
    for (const Call& c : calls)
      if (c.op == op) ++n;
    return n;
  }

  std::vector<Call> calls;
  std::vector<CopyEvent> compute_waits;  // events the compute stream was made to wait for
  std::vector<std::string> violations;
  int host_syncs = 0;  // synchronize + synchronize_stream (the copy engine's included)
  int copies_run = 0;
  double ticks = 0;  // the fake device clock (seconds): one tick per mark reached

 private:
  struct Item {
    enum Kind { kWait, kRecord, kCopy, kUnretain, kMark } kind;
    CopyEvent event;                  // kWait: waited for; kRecord: signalled
    std::vector<CopyRegion> regions;  // kCopy
    Retained retained;                // kUnretain: protection ends when the stream gets here
    std::shared_ptr<double> mark;     // kMark: the time it was reached, -1 until then
  };
  struct Queue {
    std::deque<Item> items;
  };

  class Engine final : public CopyEngine {
   public:
    Engine(FakeCudaDevice& dev, DeviceOps ops) : dev_(dev), ops_(std::move(ops)) {}
    CopyEvent copy(Direction dir, std::span<const CopyRegion> regions,
                   std::span<const CopyEvent> after) override {
      const StreamHandle s = stream_of(dir);
      for (const CopyEvent& e : after) ops_.wait(e, s);
      Queue& q = dir == Direction::kD2H ? dev_.d2h_ : dev_.h2d_;
      q.items.push_back(Item{Item::kCopy, {}, {regions.begin(), regions.end()}, {}, {}});
      return ops_.record(s, kDevice);
    }
    CopyEvent timed_copy(Direction dir, std::span<const CopyRegion> regions,
                         std::span<const CopyEvent> after, offload::CopySpan& span) override {
      const StreamHandle s = stream_of(dir);
      for (const CopyEvent& e : after) ops_.wait(e, s);
      span.start = ops_.mark(s, kDevice);
      Queue& q = dir == Direction::kD2H ? dev_.d2h_ : dev_.h2d_;
      q.items.push_back(Item{Item::kCopy, {}, {regions.begin(), regions.end()}, {}, {}});
      span.end = ops_.mark(s, kDevice);
      return ops_.record(s, kDevice);
    }
    void synchronize() override {
      ops_.synchronize_stream(stream_of(Direction::kD2H), kDevice);
      ops_.synchronize_stream(stream_of(Direction::kH2D), kDevice);
    }
    offload::Backend backend() const override { return offload::Backend::kCuda; }
    StreamHandle stream(Direction dir) const override { return stream_of(dir); }
    int device() const override { return kDevice; }

   private:
    FakeCudaDevice& dev_;
    DeviceOps ops_;
  };

  static StreamHandle handle(std::uintptr_t v) { return reinterpret_cast<StreamHandle>(v); }

  Queue* queue(StreamHandle s) {
    if (s == stream_of(Direction::kD2H)) return &d2h_;
    if (s == stream_of(Direction::kH2D)) return &h2d_;
    return nullptr;
  }

  void log(Op op, StreamHandle s, int device) {
    calls.push_back({op, s, device});
    if (device != kDevice)
      violations.push_back(str_cat("call ", static_cast<int>(op), " for device ", device,
                                   ", not the model's device ", kDevice));
    if (op != Op::kCurrentStream && op != Op::kSynchronize && op != Op::kElapsed &&
        s != compute() && !queue(s))
      violations.push_back(str_cat("call ", static_cast<int>(op), " on stream ", s,
                                   ": not the current stream of device ", kDevice,
                                   " nor a copy stream"));
  }

  // [p, p+n) inside an allocation retained by a record_stream still ahead in `q`.
  static bool retained(const Queue& q, const void* p, std::size_t n) {
    const char* c = static_cast<const char*>(p);
    for (const Item& it : q.items)
      if (it.kind == Item::kUnretain && c >= it.retained.begin &&
          c + n <= it.retained.begin + it.retained.bytes)
        return true;
    return false;
  }

  template <class Done>
  void run_until(Done done, const char* what) {
    while (!done()) {
      if (!run_one(Direction::kD2H) && !run_one(Direction::kH2D)) {
        violations.push_back(str_cat(what, ": the copy streams are blocked for good"));
        return;
      }
    }
  }

  static std::string str_join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += s + "\n";
    return out;
  }

  RetainFn retain_;
  Queue d2h_, h2d_;
};

}  // namespace stp::testing
