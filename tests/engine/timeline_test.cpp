// The measured timeline (Note [Step clock] in engine/executor.h): every OFFLOAD and RELOAD is an
// event on the rank's copy lane with the copy's own start and end, a reload names the compute
// that waited for it, and on CUDA (FakeCudaDevice, tests/offload/fake_cuda_device.h) every time
// comes from timing events on the compute and copy streams, resolved once after the step.
#include <ATen/ATen.h>
#include <c10/core/Storage.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "engine/activation_offload.h"
#include "engine/activation_store.h"
#include "engine/comm.h"
#include "engine/executor.h"
#include "engine/trainer.h"
#include "model_test_util.h"
#include "models/gpt.h"
#include "schedule/generators.h"
#include "schedule/trace.h"
#include "tests/engine/fake_cuda_step.h"
#include "tests/offload/fake_cuda_device.h"

namespace stp::engine {
namespace {

using schedule::Instr;
using schedule::Op;
using schedule::Part;
using schedule::TimelineEvent;
using testing::FakeCudaDevice;
using FakeOp = FakeCudaDevice::Op;
using offload::Direction;

models::GptConfig tiny_config(int layers) { return testing::make_config(23, 6, 8, 4, layers); }

std::vector<MicroBatch> microbatches(const models::GptConfig& cfg, int m) {
  std::vector<MicroBatch> mbs;
  for (int i = 0; i < m; ++i)
    mbs.push_back(testing::random_microbatch(cfg, 2, cfg.seq_len, 40 + i));
  return mbs;
}

int count_op(const std::vector<Instr>& instrs, Op op) {
  return static_cast<int>(
      std::count_if(instrs.begin(), instrs.end(), [op](const Instr& in) { return in.op == op; }));
}

// What every measured timeline of a rank must say about its copies: one event per OFFLOAD and
// RELOAD on the copy lane, start <= end, each reload consumed by exactly one later compute
// event that names it and starts computing only after the copy ended. Returns the reloads.
int expect_copy_events(const std::vector<Instr>& instrs, const std::vector<TimelineEvent>& events,
                       const std::string& where) {
  std::map<int, const TimelineEvent*> reloads;  // instruction index -> event
  int offloads = 0;
  for (const TimelineEvent& ev : events) {
    if (ev.category == schedule::kCategoryCompute) continue;
    EXPECT_TRUE(ev.category == schedule::kCategoryOffload ||
                ev.category == schedule::kCategoryReload)
        << where << ": " << ev.name;
    const Instr& in = instrs.at(ev.index);
    EXPECT_EQ(ev.op, in.op) << where << ": " << ev.name;
    EXPECT_EQ(ev.category,
              in.op == Op::kOffload ? schedule::kCategoryOffload : schedule::kCategoryReload)
        << where << ": " << ev.name;
    if (ev.parts.size() != 1u) {
      ADD_FAILURE() << where << ": " << ev.name << " has " << ev.parts.size() << " parts";
      continue;
    }
    EXPECT_EQ(ev.parts[0], in.ref) << where << ": " << ev.name;
    EXPECT_GE(ev.start, 0) << where << ": " << ev.name;
    EXPECT_LE(ev.start, ev.end) << where << ": " << ev.name;
    if (in.op == Op::kReload) reloads[ev.index] = &ev;
    if (in.op == Op::kOffload) ++offloads;
  }
  EXPECT_EQ(offloads, count_op(instrs, Op::kOffload)) << where;
  EXPECT_EQ(static_cast<int>(reloads.size()), count_op(instrs, Op::kReload)) << where;
  std::set<int> consumed;
  for (const TimelineEvent& ev : events) {
    if (ev.category != schedule::kCategoryCompute || ev.reload_index < 0) continue;
    auto it = reloads.find(ev.reload_index);
    if (it == reloads.end()) {
      ADD_FAILURE() << where << ": " << ev.name << " names no RELOAD";
      continue;
    }
    EXPECT_TRUE(consumed.insert(ev.reload_index).second) << where << ": consumed twice";
    EXPECT_GT(ev.index, ev.reload_index) << where << ": " << ev.name;
    EXPECT_LE(it->second->end, ev.compute_start())
        << where << ": " << ev.name << " computed before " << it->second->name << " ended";
    bool reads_the_set = false;
    for (const Part& p : ev.parts)
      reads_the_set |= p.pass != schedule::Pass::kF && p.chunk == it->second->parts[0].chunk &&
                       p.mb == it->second->parts[0].mb;
    EXPECT_TRUE(reads_the_set) << where << ": " << ev.name << " for " << it->second->name;
  }
  EXPECT_EQ(consumed.size(), reloads.size()) << where << ": a reload no compute consumed";
  return static_cast<int>(reloads.size());
}

// A tight-budget CPU step (the host copy engine's worker threads): the copies are measured on
// the compute events' clock and drawn on the copy lanes of the trace and the SVG.
TEST(MeasuredTimeline, ATightBudgetStepHasEveryCopyOnTheCopyLane) {
  const int pp = 2, m = 8;
  models::GptConfig cfg = tiny_config(2 * pp);
  auto mbs = microbatches(cfg, m);
  std::vector<StepStats> stats(pp);
  std::vector<std::vector<Instr>> programs(pp);
  std::mutex mu;
  CommOptions co;
  co.pp = pp;
  run_in_process(pp, co, [&](std::unique_ptr<World> w) {
    TrainerOptions o;
    o.schedule = schedule::Kind::kSTP;
    o.microbatches = m;
    o.pp = pp;
    o.offload_budget = parse_offload_budget("85%");
    Trainer t(models::gpt_model(cfg), o, std::move(w));
    t.step(mbs);
    t.step(mbs);  // the second step: the plan's program, timed like any step
    std::lock_guard<std::mutex> lock(mu);
    const int r = t.world().pp_rank();
    stats[r] = t.last_stats().exec;
    programs[r] = t.program().ranks.at(r);
  });
  schedule::Timeline tl;
  tl.title = "measured";
  tl.p = pp;
  int reloads = 0;
  for (int r = 0; r < pp; ++r) {
    reloads += expect_copy_events(programs[r], stats[r].events, "rank " + std::to_string(r));
    for (const TimelineEvent& ev : stats[r].events) {
      EXPECT_LE(ev.end, stats[r].seconds) << ev.name;
      if (ev.category == schedule::kCategoryOffload) {  // the worker's memcpy, not the issue
        EXPECT_GT(ev.end, ev.start) << ev.name << ": no copy measured";
      }
      tl.events.push_back(ev);
    }
    EXPECT_EQ(stats[r].device_allocated_peak_bytes, -1) << "no allocator statistics on the CPU";
  }
  ASSERT_GT(reloads, 0) << "the budget planned no round trip";

  // The trace: each copy a slice on its rank's D2H (tid 2) or H2D (tid 3) thread.
  const auto trace = nlohmann::json::parse(schedule::to_chrome_trace(tl));
  int offload_slices = 0, reload_slices = 0;
  for (const auto& e : trace.at("traceEvents")) {
    if (e.at("ph") != "X") continue;
    if (e.at("cat") == schedule::kCategoryOffload) {
      EXPECT_EQ(e.at("tid"), 2);
      ++offload_slices;
    }
    if (e.at("cat") == schedule::kCategoryReload) {
      EXPECT_EQ(e.at("tid"), 3);
      ++reload_slices;
    }
  }
  int planned_offloads = 0;
  for (const auto& p : programs) planned_offloads += count_op(p, Op::kOffload);
  EXPECT_EQ(offload_slices, planned_offloads);
  EXPECT_EQ(reload_slices, reloads);
  const std::string svg = schedule::to_svg(tl);
  EXPECT_NE(svg.find("class=\"reload\""), std::string::npos);
  EXPECT_NE(svg.find("class=\"offload\""), std::string::npos);
}

TimelineEvent event(const char* name, const char* category, Op op, int index, Part part,
                    double start, double end) {
  TimelineEvent ev;
  ev.name = name;
  ev.category = category;
  ev.op = op;
  ev.index = index;
  ev.parts = {part};
  ev.start = start;
  ev.end = end;
  return ev;
}

// A trace marks a reload wait: the wait slice names the reload, and a flow joins the two.
TEST(MeasuredTimeline, AReloadWaitNamesItsReloadInTheTraceAndTheSvg) {
  schedule::Timeline tl;
  tl.title = "t";
  tl.p = 1;
  const TimelineEvent reload = event("RELOAD c0 mb1", schedule::kCategoryReload, Op::kReload, 3,
                                     Part{schedule::Pass::kF, 0, 0, 1}, 1, 4);
  TimelineEvent b = event("B[0,1]", schedule::kCategoryCompute, Op::kB, 5,
                          Part{schedule::Pass::kB, 0, 0, 1}, 2, 6);
  b.reload_wait = 2;
  b.reload_index = 3;
  tl.events = {reload, b};
  const auto trace = nlohmann::json::parse(schedule::to_chrome_trace(tl));
  int flows = 0;
  bool named = false;
  for (const auto& e : trace.at("traceEvents")) {
    if (e.at("ph") == "s" || e.at("ph") == "f") ++flows;
    if (e.at("name") == "wait reload") named = e.at("args").value("reload", "") == reload.name;
  }
  EXPECT_EQ(flows, 2);
  EXPECT_TRUE(named);
  const std::string svg = schedule::to_svg(tl);
  EXPECT_NE(svg.find("class=\"reload-wait\"><title>B[0,1] waited 2000.00 ms for RELOAD c0 mb1"),
            std::string::npos)
      << svg;
}

// The program of one rank with every forward's set offloaded right after it and reloaded right
// before its backward.
schedule::Program with_round_trips(schedule::Program prog) {
  std::vector<Instr> out;
  std::set<std::pair<int, int>> away;
  for (const Instr& in : prog.ranks.at(0)) {
    for (const Part& p : in.parts)
      if (p.pass != schedule::Pass::kF && away.erase({p.chunk, p.mb}))
        out.push_back(schedule::transfer_instr(Op::kReload, p));
    out.push_back(in);
    for (const Part& p : in.parts) {
      if (p.pass != schedule::Pass::kF) continue;
      out.push_back(schedule::transfer_instr(Op::kOffload, p));
      away.insert({p.chunk, p.mb});
    }
  }
  prog.ranks[0] = std::move(out);
  return prog;
}

// On CUDA (the fake device): each copy's start and end are a pair of marks on its copy stream,
// every compute time a mark on the model device's current stream, and nothing waits on the
// host until the step's instructions are done; then the marks are resolved, and the
// allocator's peaks are reset when the step begins and read at its end.
TEST(MeasuredTimeline, OnCudaTimesAreEventPairsResolvedOnceAfterTheStep) {
  models::GptConfig cfg = tiny_config(2);
  auto mbs = microbatches(cfg, 4);
  const schedule::Program prog = with_round_trips(schedule::make(schedule::Kind::kSTP, 1, 4));
  FakeCudaDevice device(testing::keep_storage);
  offload::DeviceOps ops = testing::ops_running_copies_at_waits(device);
  std::vector<std::string> memory_calls;
  ops.reset_peak_memory = [&](int dev) {
    EXPECT_EQ(dev, FakeCudaDevice::kDevice);
    EXPECT_EQ(device.count(FakeOp::kMark), 0) << "the peaks are reset after the step began";
    memory_calls.push_back("reset");
  };
  ops.memory_stats = [&](int dev) {
    EXPECT_EQ(dev, FakeCudaDevice::kDevice);
    memory_calls.push_back("stats");
    return offload::DeviceMemoryStats{1234, 5678};
  };
  PooledActivationOffload offload(64 << 20, FakeCudaDevice::kDevice, ops,
                                  device.make_copy_engine(ops));
  ActivationStore store;
  store.attach_offload(&offload);
  StepStats st;
  CommOptions co;
  run_in_process(1, co, [&](std::unique_ptr<World> w) {
    std::vector<std::unique_ptr<Chunk>> owned;
    std::vector<Chunk*> chunks(prog.v);
    for (int s = 0; s < prog.stages(); ++s) {
      owned.push_back(models::gpt_model(cfg)(s, prog.stages(), 0, 1));
      chunks[prog.stage_chunk[s]] = owned.back().get();
    }
    Executor ex(chunks, w->tp_group(), w->pipe(), store);
    ex.use_device_clock(ops, FakeCudaDevice::kDevice);
    ex.set_offload(&offload);
    st = ex.run(prog, mbs);
  });
  const auto& instrs = prog.ranks[0];
  const int reloads = expect_copy_events(instrs, st.events, "fake CUDA");
  const int offloads = count_op(instrs, Op::kOffload);
  ASSERT_GT(reloads, 0);

  int compute_marks = 0, d2h_marks = 0, h2d_marks = 0, elapsed = 0;
  std::size_t last_mark = 0, first_host_wait = device.calls.size();
  for (std::size_t i = 0; i < device.calls.size(); ++i) {
    const FakeCudaDevice::Call& c = device.calls[i];
    if (c.op == FakeOp::kMark) {
      last_mark = i;
      compute_marks += c.stream == FakeCudaDevice::compute();
      d2h_marks += c.stream == FakeCudaDevice::stream_of(Direction::kD2H);
      h2d_marks += c.stream == FakeCudaDevice::stream_of(Direction::kH2D);
    }
    if (c.op == FakeOp::kElapsed) ++elapsed;
    if (c.op == FakeOp::kElapsed || c.op == FakeOp::kSynchronize ||
        c.op == FakeOp::kSynchronizeStream)
      first_host_wait = std::min(first_host_wait, i);
  }
  EXPECT_EQ(d2h_marks, 2 * offloads) << "a start and an end mark per D2H, on its copy stream";
  EXPECT_EQ(h2d_marks, 2 * reloads) << "a start and an end mark per H2D, on its copy stream";
  const int computes = static_cast<int>(
      std::count_if(instrs.begin(), instrs.end(), [](const Instr& in) { return in.is_compute(); }));
  EXPECT_GE(compute_marks, 3 * computes) << "start, ready and end of each compute instruction";
  EXPECT_GT(first_host_wait, last_mark) << "a host wait inside the step";
  EXPECT_GT(elapsed, 0) << "the marks are resolved with elapsed()";
  EXPECT_EQ(device.host_syncs, 0);
  // The fake clock ticks once per mark reached: times are ticks, not host seconds.
  EXPECT_GE(st.seconds, compute_marks - 1);
  for (const TimelineEvent& ev : st.events) {
    if (ev.category != schedule::kCategoryCompute) {
      EXPECT_GE(ev.end - ev.start, 1) << ev.name << ": not the copy stream's marks";
    }
  }
  EXPECT_EQ(memory_calls, (std::vector<std::string>{"reset", "stats"}));
  EXPECT_EQ(st.device_allocated_peak_bytes, 1234);
  EXPECT_EQ(st.device_reserved_peak_bytes, 5678);
}

}  // namespace
}  // namespace stp::engine
