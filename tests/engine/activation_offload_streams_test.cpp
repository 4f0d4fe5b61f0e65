// The engine's CUDA offload path without a GPU (gpu-review items 3, 8, 9, 10): the
// ActivationStore over PooledActivationOffload driven through FakeCudaDevice
// (tests/offload/fake_cuda_device.h), which logs every stream and event call and runs the copy
// streams only when the test says so, so the host is as far ahead of the "device" as it can be.
// And the planner's timing: a warm-up pass, then a device synchronisation before each clock
// reading, in time_after_warmup and in the trainer's probe.
#include <ATen/ATen.h>
#include <c10/core/StorageImpl.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "comm_test_util.h"
#include "engine/activation_offload.h"
#include "engine/activation_store.h"
#include "engine/comm.h"
#include "engine/offload_plan.h"
#include "engine/trainer.h"
#include "model_test_util.h"
#include "models/gpt.h"
#include "tests/offload/fake_cuda_device.h"

namespace stp::engine {
namespace {

using testing::FakeCudaDevice;
using Op = FakeCudaDevice::Op;
using offload::Direction;

constexpr std::int64_t kMiB = std::int64_t{1} << 20;

// DeviceOps::record_stream's storage is a c10::StorageImpl*: the fake allocator keeps it alive
// (a reference) until the stream ran past the record, as the caching allocator keeps a block.
testing::Retained retain_storage(void* storage) {
  auto* impl = static_cast<c10::StorageImpl*>(storage);
  auto keep = c10::intrusive_ptr<c10::StorageImpl>::unsafe_reclaim_from_nonowning(impl);
  return {std::shared_ptr<void>(impl, [keep](void*) mutable { keep.reset(); }),
          static_cast<const char*>(impl->data()), impl->nbytes()};
}

at::Tensor random_floats(std::int64_t bytes, int seed) {
  at::manual_seed(seed);
  return at::randn({bytes / 4}, at::kFloat);
}

// The store and PooledActivationOffload on the CUDA path (device FakeCudaDevice::kDevice, whose
// current stream is not the legacy default), with CPU tensors standing in for device ones.
class ActivationOffloadCudaPath : public ::testing::Test {
 protected:
  ActivationOffloadCudaPath()
      : device_(retain_storage),
        offload_(64 * kMiB, FakeCudaDevice::kDevice, device_.ops(),
                 device_.make_copy_engine(device_.ops())) {
    store_.attach_offload(&offload_);
  }

  int records_on(offload::StreamHandle s) const {
    int n = 0;
    for (const auto& c : device_.calls)
      if (c.op == Op::kRecord && c.stream == s) ++n;
    return n;
  }

  FakeCudaDevice device_;  // outlives the offload, whose ops log into it
  PooledActivationOffload offload_;
  ActivationStore store_;
};

// A step shaped like a planned one (OFFLOAD after four of six forwards, RELOAD before their
// backwards) under a budget of one set, tighter than the two the schedule keeps resident, and
// no copy runs until a backward needs its set: the host never waits, every event is on the
// model device's current stream or a copy stream, and every set comes back intact.
TEST_F(ActivationOffloadCudaPath, AStepUnderATightBudgetNeverWaitsOnTheHost) {
  constexpr int kMicrobatches = 6;
  constexpr int kOffloaded = 4;
  constexpr std::int64_t kSet = kMiB + 4096;
  ASSERT_TRUE(offload_.releases_in_stream_order());
  store_.set_budget(kSet, {kSet});
  std::vector<at::Tensor> want;
  double waited = 0;
  for (int mb = 0; mb < kMicrobatches; ++mb) {  // F(mb), then OFFLOAD(mb)
    at::Tensor x = random_floats(kSet, 10 + mb);
    want.push_back(x.clone());
    store_.create(0, mb, &waited).put("x", std::move(x));
    store_.account();
    if (mb < kOffloaded) {
      store_.offload(0, mb);
      store_.account();
      EXPECT_EQ(store_.resident_bytes(), 0) << "mb " << mb << ": released in stream order";
    }
  }
  EXPECT_EQ(device_.copies_run, 0);  // the host is ahead: no D2H has run
  EXPECT_EQ(store_.peak_bytes(), 2 * kSet) << "over the budget, as documented, without a wait";
  for (int mb = kMicrobatches - 1; mb >= 0; --mb) {  // RELOAD(mb), then B(mb)
    const bool offloaded = mb < kOffloaded;
    if (offloaded) store_.reload(0, mb);
    ActivationSet& set = store_.acquire(0, mb, &waited);
    if (offloaded) {
      ASSERT_FALSE(device_.compute_waits.empty());
      EXPECT_FALSE(device_.compute_waits.back().query())
          << "mb " << mb << ": the compute stream must wait for the H2D still queued";
      device_.run_all();  // the compute stream reaches the backward
      EXPECT_TRUE(device_.compute_waits.back().query());
    }
    EXPECT_TRUE(at::equal(set.get("x"), want[mb])) << "mb " << mb;
    set.clear();
    store_.release_if_empty(0, mb);
    store_.account();
  }
  EXPECT_EQ(device_.host_syncs, 0) << "reloads and the budget must not synchronise the host";
  EXPECT_EQ(waited, 0);
  EXPECT_EQ(device_.count(Op::kSynchronize), 0);
  EXPECT_EQ(device_.count(Op::kSynchronizeStream), 0);
  // Item 3: the ready event of each offload and the allocation event of each reload are on the
  // compute stream; each reload is consumed by a compute-stream wait (item 8).
  EXPECT_EQ(records_on(FakeCudaDevice::compute()), 2 * kOffloaded);
  EXPECT_EQ(static_cast<int>(device_.compute_waits.size()), kOffloaded);
  EXPECT_EQ(records_on(nullptr), 0) << "an event on the legacy default stream";
  EXPECT_EQ(device_.count(Op::kRecordStream), kOffloaded);
  for (const auto& c : device_.calls)
    EXPECT_TRUE(c.device == FakeCudaDevice::kDevice) << "op " << static_cast<int>(c.op);
  EXPECT_TRUE(device_.violations.empty());
  store_.reset_step();
}

// A D2H source is dropped by the engine as soon as its copy is queued; only the allocator's
// record_stream keeps its memory until the copy ran (a device buffer reused while a copy reads
// it would be silent corruption).
TEST_F(ActivationOffloadCudaPath, AnOffloadedTensorLivesUntilItsD2HRan) {
  at::Tensor x = random_floats(3 * kMiB, 3);
  const at::Tensor want = x.clone();
  c10::weak_intrusive_ptr<c10::StorageImpl> storage(x.storage().getWeakStorageImpl());
  ActivationSet& set = store_.create(0, 0);
  set.put("x", std::move(x));
  store_.account();
  store_.offload(0, 0);
  EXPECT_FALSE(set.get("x").defined()) << "the engine should drop it once the D2H is queued";
  EXPECT_FALSE(storage.expired()) << "freed while its D2H is still queued";
  device_.run_all();
  EXPECT_TRUE(storage.expired()) << "kept after its D2H ran";
  store_.reload(0, 0);
  device_.run_all();
  EXPECT_TRUE(at::equal(store_.acquire(0, 0).get("x"), want));
  device_.run_all();
  store_.acquire(0, 0).clear();
  store_.release_if_empty(0, 0);
}

// A partial trip on the CUDA path (Note [Partial sets]): only the moved fields' storage is
// recorded on the D2H stream and dropped; the others stay, readable, and count; the reload
// brings back exactly the moved fields and the compute stream waits for it as before.
TEST_F(ActivationOffloadCudaPath, APartialTripRecordsAndDropsOnlyTheMovedFields) {
  ActivationSet& set = store_.create(0, 1);
  std::vector<at::Tensor> want;
  const char* names[] = {"layers.0.a", "layers.0.b", "layers.1.a", "layers.1.b"};
  for (int i = 0; i < 4; ++i) {  // 1 MiB each, saved in this order
    want.push_back(random_floats(kMiB, 20 + i));
    set.put(names[i], want.back().clone());
  }
  const void* kept = set.get("layers.1.b").data_ptr();
  store_.account();
  store_.offload(0, 1, 0.375);  // 1.5 MiB: the first two fields go
  EXPECT_EQ(device_.count(Op::kRecordStream), 2);
  EXPECT_FALSE(set.get("layers.0.a").defined());
  EXPECT_FALSE(set.get("layers.0.b").defined());
  EXPECT_EQ(set.get("layers.1.b").data_ptr(), kept);
  EXPECT_TRUE(at::equal(set.get("layers.1.a"), want[2]));
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), 2 * kMiB);
  EXPECT_EQ(store_.offloaded_bytes(), 2 * kMiB);
  device_.run_all();
  store_.reload(0, 1);
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), 4 * kMiB) << "the reload allocated the two moved fields";
  const ActivationSet& back = store_.acquire(0, 1);
  ASSERT_EQ(device_.compute_waits.size(), 1u);
  EXPECT_FALSE(device_.compute_waits.back().query()) << "the H2D is still queued";
  device_.run_all();
  EXPECT_TRUE(device_.compute_waits.back().query());
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(at::equal(back.get(names[i]), want[i])) << names[i];
  EXPECT_EQ(back.get("layers.1.b").data_ptr(), kept);
  EXPECT_EQ(device_.host_syncs, 0);
  EXPECT_TRUE(device_.violations.empty());
  store_.acquire(0, 1).clear();
  store_.release_if_empty(0, 1);
}

// RELOAD right after OFFLOAD: the H2D must not read the host blocks before the D2H filled
// them. It waits for the D2H's event on the H2D stream (no cancellation on CUDA: the originals
// are already the allocator's).
TEST_F(ActivationOffloadCudaPath, AReloadDuringItsOffloadCopyWaitsForIt) {
  at::Tensor x = random_floats(2 * kMiB, 4);
  const at::Tensor want = x.clone();
  store_.create(1, 3).put("x", std::move(x));
  store_.account();
  store_.offload(1, 3);
  store_.reload(1, 3);
  while (device_.run_one(Direction::kH2D)) {
  }
  EXPECT_EQ(device_.copies_run, 0) << "the H2D ran before the D2H of the same set";
  const ActivationSet& back = store_.acquire(1, 3);
  device_.run_all();
  EXPECT_TRUE(at::equal(back.get("x"), want));
  EXPECT_EQ(device_.host_syncs, 0);
  store_.acquire(1, 3).clear();
  store_.release_if_empty(1, 3);
}

// ---- item 10: the planner's timing ---------------------------------------------------------

// The fake clock and device synchronisation log what they were asked, in order.
struct TimingLog {
  std::vector<std::string> events;
  double clock = 100.0;
  PassTimer timer() {
    PassTimer t;
    t.now = [this] {
      events.push_back("now");
      clock += 0.25;
      return clock;
    };
    t.device_sync = [this] { events.push_back("sync"); };
    return t;
  }
};

TEST(PlannerTiming, AWarmUpRunThenASyncBeforeEachClockReading) {
  TimingLog log;
  const double seconds = time_after_warmup([&] { log.events.push_back("pass"); }, log.timer());
  EXPECT_EQ(log.events, (std::vector<std::string>{"pass", "sync", "now", "pass", "sync", "now"}));
  EXPECT_DOUBLE_EQ(seconds, 0.25);
}

TEST(PlannerTiming, TheTrainersProbeTimesEachStageThroughTheTimer) {
  const models::GptConfig cfg = testing::make_config(23, 6, 8, 4, 2);
  std::vector<MicroBatch> mbs;
  for (int i = 0; i < 2; ++i) mbs.push_back(testing::random_microbatch(cfg, 2, cfg.seq_len, i));
  CommOptions co;
  run_in_process(1, co, [&](std::unique_ptr<World> w) {
    TrainerOptions o;
    o.schedule = schedule::Kind::kSTP;  // two stages on the one rank (the V)
    o.microbatches = 2;
    Trainer t(models::gpt_model(cfg), o, std::move(w));
    TimingLog log;
    t.set_probe_timer(log.timer());
    t.step(mbs);
    const int stages = t.program().stages();
    ASSERT_EQ(stages, 2);
    // Per stage: the forward, then four backwards (kept, recomputed, twice: Note [Recompute
    // probe]); the fake clock times each 0.25 s, so the recompute costs nothing extra.
    std::vector<std::string> want;
    for (int s = 0; s < stages; ++s)
      for (int timed = 0; timed < 5; ++timed)
        for (const char* e : {"sync", "now", "sync", "now"}) want.push_back(e);
    EXPECT_EQ(log.events, want) << "each clock reading must follow a device synchronisation";
    EXPECT_EQ(t.stage_forward_seconds(), (std::vector<double>(stages, 0.25)));
    EXPECT_EQ(t.recompute_costs().time, 0);
    EXPECT_THROW(t.set_probe_timer(log.timer()), std::invalid_argument);
  });
}

}  // namespace
}  // namespace stp::engine
