// Partial offload (Note [Partial sets] in schedule/program.h), end to end: hand-made programs
// whose OFFLOAD / RELOAD pairs move a share of a set (after its forward, and between B and W)
// run through the Executor on the host offload path and give the same loss and gradients, bit
// for bit, as without offload, holding less than without offload and more than with whole
// trips at the same points. And what the reports say about those trips.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "comm_test_util.h"
#include "engine/activation_offload.h"
#include "engine/activation_store.h"
#include "engine/comm.h"
#include "engine/executor.h"
#include "engine/offload_plan.h"
#include "model_test_util.h"
#include "models/gpt.h"
#include "schedule/generators.h"
#include "schedule/verify.h"
#include "tests/engine/fake_cuda_step.h"
#include "tests/offload/fake_cuda_device.h"

namespace stp::engine {
namespace {

using schedule::Instr;
using schedule::Op;
using schedule::Part;
using schedule::Pass;
using testing::FakeCudaDevice;

models::GptConfig tiny_config(int layers) { return testing::make_config(23, 6, 8, 4, layers); }

// The program of one rank with a round trip of `share` for every forward's set (OFFLOAD right
// after the forward, RELOAD right before its backward) and, with `bw_share` > 0, one of
// `bw_share` for every set whose W is deferred (OFFLOAD right after its B, RELOAD right before
// its W).
schedule::Program with_trips(schedule::Program prog, double share, double bw_share) {
  std::vector<Instr> out;
  std::set<std::pair<int, int>> away;
  for (const Instr& in : prog.ranks.at(0)) {
    for (const Part& p : in.parts)
      if (p.pass != Pass::kF && away.erase({p.chunk, p.mb}))
        out.push_back(
            schedule::offload_instr(Op::kReload, p, p.pass == Pass::kW ? bw_share : share));
    out.push_back(in);
    for (const Part& p : in.parts) {
      const bool after_f = p.pass == Pass::kF, after_b = p.pass == Pass::kB && bw_share > 0;
      if (!after_f && !after_b) continue;
      out.push_back(schedule::offload_instr(Op::kOffload, p, after_f ? share : bw_share));
      away.insert({p.chunk, p.mb});
    }
  }
  prog.ranks[0] = std::move(out);
  return prog;
}

struct StepResult {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;  // by "stage/parameter"
  StepStats stats;
};

enum class Path {
  kNone,      // no offloader
  kHost,      // PooledActivationOffload on the host copy engine (worker threads)
  kFakeCuda,  // PooledActivationOffload on FakeCudaDevice: stream-ordered release, so the
              // store's count drops at each OFFLOAD and the peaks do not depend on timing
};

// One step of `prog` (one rank) with fresh chunks of the same initial parameters.
StepResult run_step(const models::GptConfig& cfg, const schedule::Program& prog, Path path) {
  schedule::verify(prog);
  std::vector<MicroBatch> mbs;
  for (int i = 0; i < prog.m; ++i)
    mbs.push_back(testing::random_microbatch(cfg, 2, cfg.seq_len, 70 + i));
  FakeCudaDevice device(testing::keep_storage);
  offload::DeviceOps ops = testing::ops_running_copies_at_waits(device);
  std::unique_ptr<PooledActivationOffload> offload;
  if (path == Path::kHost) offload = std::make_unique<PooledActivationOffload>(64 << 20, -1);
  if (path == Path::kFakeCuda)
    offload = std::make_unique<PooledActivationOffload>(64 << 20, FakeCudaDevice::kDevice, ops,
                                                        device.make_copy_engine(ops));
  StepResult r;
  CommOptions co;
  run_in_process(1, co, [&](std::unique_ptr<World> w) {
    std::vector<std::unique_ptr<Chunk>> owned;
    std::vector<Chunk*> chunks(prog.v);
    at::manual_seed(5);
    for (int s = 0; s < prog.stages(); ++s) {
      owned.push_back(models::gpt_model(cfg)(s, prog.stages(), 0, 1));
      chunks[prog.stage_chunk[s]] = owned.back().get();
    }
    ActivationStore store;
    store.attach_offload(offload.get());
    Executor ex(chunks, w->tp_group(), w->pipe(), store);
    ex.set_offload(offload.get());
    r.stats = ex.run(prog, mbs);
    r.loss = r.stats.loss_sum;
    for (const auto& c : owned)
      for (const Param& p : c->params())
        r.grads[std::to_string(c->stage()) + "/" + p.name] = p.grad.clone();
  });
  if (path == Path::kFakeCuda) {
    EXPECT_TRUE(device.violations.empty());
  }
  return r;
}

// Bit for bit: the same loss and every gradient byte equal.
void expect_bitwise_equal(const StepResult& got, const StepResult& want, const std::string& what) {
  EXPECT_EQ(got.loss, want.loss) << what;
  ASSERT_EQ(got.grads.size(), want.grads.size()) << what;
  for (const auto& [name, g] : want.grads) {
    ASSERT_TRUE(got.grads.count(name)) << what << ": " << name;
    EXPECT_TRUE(at::equal(got.grads.at(name), g)) << what << ": gradient of " << name;
  }
}

int count_trips(const schedule::Program& prog, double share) {
  int n = 0;
  for (const Instr& in : prog.ranks[0]) n += in.op == Op::kOffload && in.share == share;
  return n;
}

class PartialOffload : public ::testing::TestWithParam<std::string> {};

// Share 1/2 after every forward (and 3/8 between B and W where W is deferred): the numbers of
// a run without offload, bit for bit; the peak between no offload and whole trips.
TEST_P(PartialOffload, SameNumbersBitForBitAndAPeakBetweenNoneAndWhole) {
  const std::string kind = GetParam();
  const schedule::Program base = schedule::make(kind, 1, 4);
  const models::GptConfig cfg = tiny_config(2 * base.stages());  // two layers per chunk
  const bool deferred_w = count_trips(with_trips(base, 1, 0.5), 0.5) > 0;
  const double bw = deferred_w ? 0.375 : 0;
  const schedule::Program half = with_trips(base, 0.5, bw);
  const schedule::Program whole = with_trips(base, 1, deferred_w ? 1 : 0);
  ASSERT_GT(count_trips(half, 0.5), 0);

  const StepResult none = run_step(cfg, base, Path::kNone);
  const StepResult part = run_step(cfg, half, Path::kFakeCuda);
  const StepResult all = run_step(cfg, whole, Path::kFakeCuda);
  expect_bitwise_equal(part, none, kind + " share 1/2, fake CUDA");
  expect_bitwise_equal(all, none, kind + " whole sets, fake CUDA");
  expect_bitwise_equal(run_step(cfg, half, Path::kHost), none, kind + " share 1/2, host");

  EXPECT_LT(part.stats.peak_activation_bytes, none.stats.peak_activation_bytes) << kind;
  EXPECT_GT(part.stats.peak_activation_bytes, all.stats.peak_activation_bytes) << kind;
  EXPECT_GT(part.stats.offloaded_bytes, 0);
  EXPECT_LT(part.stats.offloaded_bytes, all.stats.offloaded_bytes) << kind;
  std::printf(
      "%s: peak %lld bytes without offload, %lld with half of each set, %lld with whole "
      "sets; offloaded %lld of %lld\n",
      kind.c_str(), static_cast<long long>(none.stats.peak_activation_bytes),
      static_cast<long long>(part.stats.peak_activation_bytes),
      static_cast<long long>(all.stats.peak_activation_bytes),
      static_cast<long long>(part.stats.offloaded_bytes),
      static_cast<long long>(all.stats.offloaded_bytes));

  // Every partial trip moved at least its share, and a whole trip is not one.
  ASSERT_EQ(static_cast<int>(part.stats.partial_trips.size()),
            count_trips(half, 0.5) + (deferred_w ? count_trips(half, bw) : 0));
  bool saw_after_b = false;
  for (const PartialTrip& t : part.stats.partial_trips) {
    EXPECT_GE(static_cast<double>(t.moved_bytes), t.share * static_cast<double>(t.set_bytes));
    EXPECT_LT(t.moved_bytes, t.set_bytes) << "c" << t.chunk << "[" << t.mb << "]";
    EXPECT_EQ(t.after_backward, t.share == bw);
    saw_after_b |= t.after_backward;
  }
  EXPECT_EQ(saw_after_b, deferred_w) << kind;
  EXPECT_TRUE(all.stats.partial_trips.empty());
  std::printf("%s", describe_partial_trips(part.stats.partial_trips, 4, "  ").c_str());

  // The copy events are simply smaller: one per OFFLOAD / RELOAD, the bytes of the trip.
  int offload_events = 0;
  for (const schedule::TimelineEvent& ev : part.stats.events)
    offload_events += ev.category == schedule::kCategoryOffload;
  EXPECT_EQ(offload_events, count_trips(half, 0.5) + (deferred_w ? count_trips(half, bw) : 0));
}

INSTANTIATE_TEST_SUITE_P(Schedules, PartialOffload, ::testing::Values("stp", "zb-v", "1f1b-i"),
                         [](const auto& info) {
                           std::string k = info.param;
                           for (char& ch : k)
                             if (ch == '-') ch = '_';
                           return k;
                         });

// ---- what the reports say ---------------------------------------------------------------

PartialTrip trip(int chunk, int mb, double share, bool after_b, std::vector<std::string> fields,
                 std::int64_t moved, std::int64_t set) {
  return {chunk, mb, share, after_b, std::move(fields), moved, set};
}

TEST(PartialOffloadReport, OneLinePerChunkShareAndFieldsWithTheMicrobatchesMerged) {
  const std::vector<std::string> f = {"layers.0.attn.in", "layers.0.attn.qkv", "layers.1.mlp.pre",
                                      "layers.2.ln1.xhat", "emb.tokens"};
  std::vector<PartialTrip> trips;
  for (int mb : {0, 1, 2, 3, 5}) trips.push_back(trip(0, mb, 0.625, false, f, 1536, 2048));
  trips.push_back(trip(1, 0, 0.5, true, {"layers.3.mlp.dout", "layers.3.attn.dout"}, 1024, 1536));
  trips.push_back(trip(1, 1, 0.3, false, {"head.probs"}, 1024, 4096));
  EXPECT_EQ(describe_partial_trips(trips),
            "c0[0-3,5] 5/8: layers.0-2, emb (5 fields, 1.50 KiB of 2.00 KiB: what its backward "
            "reads last)\n"
            "c1[0] after B 1/2: layers.3 (2 fields, 1.00 KiB of 1.50 KiB, of what its W reads)\n"
            "c1[1] 0.3: head (1 field, 1.00 KiB of 4.00 KiB: what its backward reads last)\n");
  EXPECT_EQ(describe_partial_trips({}), "");
}

}  // namespace
}  // namespace stp::engine
