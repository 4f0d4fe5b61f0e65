#include "offload/offloader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <thread>

#include "offload/planner.h"
#include "schedule/generators.h"

namespace stp::offload {
namespace {

using ::testing::HasSubstr;

constexpr std::size_t kMiB = 1 << 20;

// "Device" buffers on the host backend, owned by the test as the engine owns its tensors:
// release() frees one and records that it ran; allocate() makes a new one.
class FakeEngine {
 public:
  ~FakeEngine() {
    for (auto& [ptr, bytes] : live_) std::free(ptr);
  }

  // A set of buffers with the given sizes, filled with a pattern; keeps a reference copy.
  std::vector<SavedBuffer> make_set(ActivationKey key, const std::vector<std::size_t>& sizes) {
    std::vector<SavedBuffer> out;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      std::string name = "field" + std::to_string(i);
      void* p = allocate(sizes[i]);
      std::mt19937_64 rng(key.chunk * 1000 + key.mb * 10 + static_cast<int>(i));
      auto* bytes = static_cast<unsigned char*>(p);
      for (std::size_t k = 0; k < sizes[i]; k += 8) {
        std::uint64_t word = rng();
        std::memcpy(bytes + k, &word, std::min<std::size_t>(8, sizes[i] - k));
      }
      reference_[{key, name}].assign(bytes, bytes + sizes[i]);
      current_[{key, name}] = p;
      out.push_back({name, p, sizes[i], [this, key, name, p] {
                       ++releases_[key];
                       EXPECT_EQ((current_[Field{key, name}]), p);
                       free(p);
                       current_.erase({key, name});
                     }});
    }
    return out;
  }

  AllocateFn allocator_for(ActivationKey key) {
    return [this, key](const std::string& name, std::size_t bytes) {
      ++allocations_[key];
      void* p = allocate(bytes);
      std::memset(p, 0xcd, bytes);
      current_[{key, name}] = p;
      return p;
    };
  }

  // Every field of `key` holds exactly what its forward wrote.
  void expect_intact(ActivationKey key, std::size_t fields) {
    for (std::size_t i = 0; i < fields; ++i) {
      std::string name = "field" + std::to_string(i);
      ASSERT_TRUE(current_.count({key, name})) << name;
      const auto& ref = reference_[{key, name}];
      ASSERT_EQ(std::memcmp(current_[{key, name}], ref.data(), ref.size()), 0)
          << "chunk " << key.chunk << " mb " << key.mb << " " << name;
    }
  }

  int releases(ActivationKey key) { return releases_[key]; }
  int allocations(ActivationKey key) { return allocations_[key]; }
  std::size_t live_buffers() const { return live_.size(); }

 private:
  void* allocate(std::size_t bytes) {
    void* p = std::malloc(bytes);
    live_[p] = bytes;
    return p;
  }
  void free(void* p) {
    live_.erase(p);
    std::free(p);
  }

  using Field = std::pair<ActivationKey, std::string>;
  std::map<void*, std::size_t> live_;
  std::map<Field, std::vector<unsigned char>> reference_;
  std::map<Field, void*> current_;
  std::map<ActivationKey, int> releases_, allocations_;
};

class OffloaderTest : public ::testing::Test {
 protected:
  OffloaderTest() {
    allocator::PinnedPoolOptions po;
    po.capacity_bytes = 32 * kMiB;
    po.slab_bytes = 16 * kMiB;
    po.memory = allocator::HostMemoryKind::kMmap;
    pool_ = std::make_unique<allocator::PinnedHostPool>(po);
    CopyEngineOptions co;
    co.backend = Backend::kHost;
    co.threads = 2;
    co.min_piece_bytes = 64 << 10;
    copies_ = make_copy_engine(co);
    offloader_ = std::make_unique<Offloader>(*pool_, *copies_);
  }

  std::unique_ptr<allocator::PinnedHostPool> pool_;
  std::unique_ptr<CopyEngine> copies_;
  FakeEngine engine_;  // destroyed after the offloader (its closures point here)
  std::unique_ptr<Offloader> offloader_;
};

const std::vector<std::size_t> kSizes = {1, 4097, 3 * kMiB + 5, 12345, kMiB};
const std::int64_t kSetBytes = 1 + 4097 + 3 * kMiB + 5 + 12345 + kMiB;

TEST_F(OffloaderTest, RoundTripIsByteExactAndReleasesDeviceMemoryOnce) {
  ActivationKey key{0, 3};
  offloader_->offload(key, engine_.make_set(key, kSizes));
  EXPECT_EQ(offloader_->device_bytes(), kSetBytes);  // still on the device until the D2H is done
  offloader_->synchronize();
  EXPECT_EQ(offloader_->state(key), SetState::kOnHost);
  EXPECT_EQ(engine_.releases(key), static_cast<int>(kSizes.size()));
  EXPECT_EQ(engine_.live_buffers(), 0u);
  EXPECT_EQ(offloader_->device_bytes(), 0);
  EXPECT_EQ(offloader_->stats().host_bytes, kSetBytes);

  offloader_->reload(key, engine_.allocator_for(key));
  EXPECT_EQ(offloader_->state(key), SetState::kToDevice);
  EXPECT_EQ(engine_.allocations(key), static_cast<int>(kSizes.size()));
  EXPECT_EQ(offloader_->device_bytes(), kSetBytes);
  EXPECT_EQ(offloader_->stats().host_bytes, 0);
  double waited = offloader_->wait(key);
  EXPECT_GE(waited, 0.0);
  EXPECT_EQ(offloader_->state(key), SetState::kAbsent);
  engine_.expect_intact(key, kSizes.size());
  EXPECT_EQ(engine_.releases(key), static_cast<int>(kSizes.size()));  // never again
  EXPECT_EQ(offloader_->device_bytes(), 0);
  EXPECT_EQ(offloader_->peak_device_bytes(), kSetBytes);

  OffloaderStats s = offloader_->stats();
  EXPECT_EQ(s.offloads, 1);
  EXPECT_EQ(s.reloads, 1);
  EXPECT_EQ(s.offloaded_bytes, kSetBytes);
  EXPECT_EQ(s.reloaded_bytes, kSetBytes);
  pool_->synchronize();
  EXPECT_EQ(pool_->stats().in_use_bytes, 0u);
  EXPECT_EQ(pool_->stats().in_flight_bytes, 0u);
}

TEST_F(OffloaderTest, DeviceMemoryIsReleasedOnlyAfterTheCopyCompleted) {
  ActivationKey key{1, 0};
  CopyEvent forward_done = CopyEvent::host();  // the forward that wrote the set is still running
  offloader_->offload(key, engine_.make_set(key, kSizes), forward_done);
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    offloader_->poll();
  }
  EXPECT_EQ(offloader_->state(key), SetState::kToHost);
  EXPECT_EQ(engine_.releases(key), 0);
  EXPECT_EQ(offloader_->device_bytes(), kSetBytes);
  forward_done.signal();
  offloader_->synchronize();
  EXPECT_EQ(engine_.releases(key), static_cast<int>(kSizes.size()));
  EXPECT_EQ(offloader_->device_bytes(), 0);
}

TEST_F(OffloaderTest, ReloadBeforeTheOffloadCompletedKeepsTheOriginals) {
  ActivationKey key{0, 7};
  CopyEvent forward_done = CopyEvent::host();
  offloader_->offload(key, engine_.make_set(key, kSizes), forward_done);
  offloader_->reload(key, engine_.allocator_for(key));
  EXPECT_EQ(offloader_->stats().cancelled, 1);
  EXPECT_EQ(offloader_->stats().reloads, 0);
  EXPECT_EQ(engine_.allocations(key), 0);
  EXPECT_EQ(offloader_->state(key), SetState::kToDevice);
  EXPECT_EQ(offloader_->device_bytes(), kSetBytes);
  // The D2H (gated on the forward) still has to read the originals: wait() must not hand them
  // back before it did, or the engine could free memory a copy still reads.
  std::atomic<bool> opened{false};
  std::thread forward([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    opened = true;
    forward_done.signal();
  });
  offloader_->wait(key);
  EXPECT_TRUE(opened) << "wait() returned while the D2H could still read the originals";
  forward.join();
  EXPECT_EQ(offloader_->state(key), SetState::kAbsent);
  EXPECT_EQ(offloader_->device_bytes(), 0);
  offloader_->synchronize();
  pool_->synchronize();
  EXPECT_EQ(pool_->stats().in_flight_bytes, 0u);
  EXPECT_EQ(pool_->stats().in_use_bytes, 0u);
  EXPECT_EQ(engine_.releases(key), 0);  // never released: the engine kept its buffers
  engine_.expect_intact(key, kSizes.size());
}

TEST_F(OffloaderTest, HostBlocksOfAReloadStayInFlightUntilTheH2DCompleted) {
  // One worker, busy with a copy gated on `plug`: the reload's H2D queues behind it.
  CopyEngineOptions co;
  co.backend = Backend::kHost;
  co.threads = 1;
  auto copies = make_copy_engine(co);
  Offloader offloader(*pool_, *copies);
  ActivationKey key{0, 1};
  offloader.offload(key, engine_.make_set(key, {2 * kMiB}));
  offloader.synchronize();
  std::vector<unsigned char> a(16), b(16);
  CopyEvent plug = CopyEvent::host();
  copies->copy(Direction::kD2H, b.data(), a.data(), a.size(), {&plug, 1});
  offloader.reload(key, engine_.allocator_for(key));
  // The block was freed by reload() but the H2D has not run: the pool must not hand it out.
  EXPECT_EQ(pool_->stats().in_flight_bytes, 2 * kMiB);
  std::vector<allocator::HostBlock> taken;
  for (int i = 0; i < 8; ++i) taken.push_back(pool_->allocate(2 * kMiB));  // 16 of 32 MiB
  for (const auto& t : taken) std::memset(t.ptr, 0x11, t.bytes);  // would corrupt the reload
  plug.signal();
  offloader.wait(key);
  engine_.expect_intact(key, 1);
  for (const auto& t : taken) pool_->free(t);
}

TEST_F(OffloaderTest, AccountsDeviceBytesAcrossInterleavedSets) {
  // The STP pattern on one rank: chunk-0 sets go to host after their forward and come back
  // before their backward, several in flight at once.
  std::vector<ActivationKey> keys = {{0, 0}, {0, 1}, {0, 2}, {0, 3}};
  std::vector<std::size_t> sizes = {kMiB, 3 * kMiB};
  const std::int64_t set_bytes = 4 * kMiB;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    offloader_->offload(keys[i], engine_.make_set(keys[i], sizes));
    offloader_->synchronize();
    EXPECT_EQ(offloader_->device_bytes(), 0) << i;
    EXPECT_EQ(offloader_->stats().host_bytes, static_cast<std::int64_t>(i + 1) * set_bytes);
  }
  offloader_->reload(keys[0], engine_.allocator_for(keys[0]));
  offloader_->reload(keys[1], engine_.allocator_for(keys[1]));
  EXPECT_EQ(offloader_->device_bytes(), 2 * set_bytes);
  offloader_->wait(keys[0]);
  EXPECT_EQ(offloader_->device_bytes(), set_bytes);
  offloader_->reload(keys[2], engine_.allocator_for(keys[2]));
  offloader_->wait(keys[1]);
  offloader_->wait(keys[2]);
  offloader_->reload(keys[3], engine_.allocator_for(keys[3]));
  offloader_->wait(keys[3]);
  EXPECT_EQ(offloader_->device_bytes(), 0);
  EXPECT_EQ(offloader_->peak_device_bytes(), 2 * set_bytes);
  EXPECT_EQ(offloader_->stats().host_bytes, 0);
  for (const auto& k : keys) engine_.expect_intact(k, sizes.size());
}

TEST_F(OffloaderTest, MisuseIsAnInputErrorNamingTheSet) {
  ActivationKey key{1, 5};
  try {
    offloader_->reload(key, engine_.allocator_for(key));
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(),
                HasSubstr("reload of activation set (chunk 1, mb 5): the set was never offloaded"));
  }
  EXPECT_THROW(offloader_->wait(key), std::invalid_argument);
  EXPECT_THROW(offloader_->offload(key, {}), std::invalid_argument);
  std::vector<unsigned char> buf(8);
  EXPECT_THROW(offloader_->offload(key, {{"x", buf.data(), 0, nullptr}}), std::invalid_argument);
  EXPECT_THROW(offloader_->offload(key, {{"x", nullptr, 8, nullptr}}), std::invalid_argument);
  try {
    offloader_->offload(key, {{"x", buf.data(), 4, nullptr}, {"x", buf.data() + 4, 4, nullptr}});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("buffer name 'x' appears twice"));
  }
  EXPECT_EQ(offloader_->state(key), SetState::kAbsent);

  offloader_->offload(key, engine_.make_set(key, {100}));
  try {
    offloader_->offload(key, {{"y", buf.data(), 8, nullptr}});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("(chunk 1, mb 5): already offloaded"));
  }
  offloader_->synchronize();
  try {
    offloader_->wait(key);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_THAT(e.what(), HasSubstr("in state on-host: reload() it first"));
  }
  offloader_->reload(key, engine_.allocator_for(key));
  EXPECT_THROW(offloader_->reload(key, engine_.allocator_for(key)), std::invalid_argument);
  offloader_->wait(key);
}

TEST_F(OffloaderTest, PoolExhaustionLeavesNothingBehind) {
  ActivationKey key{0, 0};
  // Two slabs of 16 MiB hold two 12 MiB blocks, not three: the third block fails and the
  // first two go back.
  auto buffers = engine_.make_set(key, {12 * kMiB, 12 * kMiB, 12 * kMiB});
  EXPECT_THROW(offloader_->offload(key, buffers), allocator::PinnedPoolOutOfMemory);
  EXPECT_EQ(offloader_->state(key), SetState::kAbsent);
  EXPECT_EQ(offloader_->device_bytes(), 0);
  EXPECT_EQ(pool_->stats().in_use_bytes, 0u);
  EXPECT_EQ(engine_.releases(key), 0);
  offloader_->offload(key, {buffers[0]});  // the engine can still offload what fits
  offloader_->synchronize();
  EXPECT_EQ(engine_.releases(key), 1);
}

TEST_F(OffloaderTest, ReleaseErrorsPropagateAfterEveryReleaseRan) {
  ActivationKey key{0, 0};
  std::vector<unsigned char> a(64), b(64);
  int ran = 0;
  offloader_->offload(key, {{"a", a.data(), 64,
                             [&] {
                               ++ran;
                               throw std::runtime_error("boom");
                             }},
                            {"b", b.data(), 64, [&] { ++ran; }}});
  EXPECT_THROW(offloader_->synchronize(), std::runtime_error);
  EXPECT_EQ(ran, 2);
  EXPECT_EQ(offloader_->state(key), SetState::kOnHost);
  EXPECT_EQ(offloader_->device_bytes(), 0);
}

TEST_F(OffloaderTest, DestructionReleasesAndFreesEverything) {
  ActivationKey on_host{0, 0}, to_host{0, 1}, to_device{0, 2};
  offloader_->offload(on_host, engine_.make_set(on_host, {kMiB}));
  offloader_->offload(to_device, engine_.make_set(to_device, {kMiB}));
  offloader_->synchronize();
  offloader_->reload(to_device, engine_.allocator_for(to_device));
  offloader_->offload(to_host, engine_.make_set(to_host, {kMiB}));
  offloader_.reset();
  EXPECT_EQ(engine_.releases(to_host), 1);
  pool_->synchronize();
  EXPECT_EQ(pool_->stats().in_use_bytes, 0u);
  EXPECT_EQ(pool_->stats().in_flight_bytes, 0u);
}

// A planned STP program run through the offloader the way the executor runs it (one rank at a
// time, instructions in order; copies completed before the next instruction): every backward
// finds its set byte-exact, and the device bytes the sets hold never exceed the budget.
TEST_F(OffloaderTest, PlannedProgramRunsWithinItsBudget) {
  schedule::Program prog = schedule::make("stp", 2, 6);
  schedule::CostModel cm;
  cm.t_f = cm.t_b = cm.t_w = 0.01;
  cm.act_bytes = 256 << 10;  // one set: two buffers, 64 KiB + 192 KiB
  cm.host_bandwidth = 50e9;
  const double budget = 3 * cm.act_bytes;  // the plan-free peak is 3p = 6 sets
  Plan plan = plan_offload(prog, cm, budget);
  ASSERT_FALSE(plan.sets.empty());
  for (int r = 0; r < prog.p; ++r) {
    allocator::MemoryAccount held;  // device bytes of this rank's sets
    std::map<ActivationKey, std::vector<SavedBuffer>> saved;
    for (const schedule::Instr& in : plan.program.ranks[r]) {
      if (in.op == schedule::Op::kOffload) {
        ActivationKey key{in.ref.chunk, in.ref.mb};
        std::vector<SavedBuffer> buffers = saved.at(key);
        for (SavedBuffer& b : buffers)
          b.release = [&held, bytes = b.bytes, inner = b.release] {
            held.sub(static_cast<std::int64_t>(bytes));
            inner();
          };
        offloader_->offload(key, std::move(buffers));
        offloader_->synchronize();
      } else if (in.op == schedule::Op::kReload) {
        ActivationKey key{in.ref.chunk, in.ref.mb};
        AllocateFn inner = engine_.allocator_for(key);
        offloader_->reload(key, [&held, inner](const std::string& name, std::size_t bytes) {
          held.add(static_cast<std::int64_t>(bytes));
          return inner(name, bytes);
        });
      }
      // Backward parts first: a braided F&B block frees the backward's set as the forward
      // fills its own (Note [Activation memory convention] in schedule/simulate.h).
      for (const schedule::Part& part : in.parts) {
        ActivationKey key{part.chunk, part.mb};
        if (part.pass == schedule::Pass::kB || part.pass == schedule::Pass::kBW) {
          if (offloader_->state(key) == SetState::kToDevice) offloader_->wait(key);
          ASSERT_EQ(offloader_->state(key), SetState::kAbsent);
          engine_.expect_intact(key, 2);
          held.sub(256 << 10);  // the backward frees its set
        }
      }
      for (const schedule::Part& part : in.parts) {
        ActivationKey key{part.chunk, part.mb};
        if (part.pass == schedule::Pass::kF) {
          saved[key] = engine_.make_set(key, {64 << 10, 192 << 10});
          held.add(256 << 10);
        }
      }
      EXPECT_LE(held.resident(), budget) << "rank " << r << " at " << schedule::to_string(in);
    }
    EXPECT_EQ(held.resident(), 0);
    EXPECT_LE(held.peak(), budget);
  }
  EXPECT_EQ(offloader_->device_bytes(), 0);
  EXPECT_EQ(offloader_->stats().offloads, static_cast<int>(plan.sets.size()));
}

// Many sets and microbatches, reloads issued while other offloads still run, every set checked.
TEST_F(OffloaderTest, StressRoundTripsManySets) {
  std::mt19937 rng(11);
  std::vector<ActivationKey> on_host;
  std::vector<ActivationKey> reloading;
  int next_mb = 0;
  for (int step = 0; step < 300; ++step) {
    int action = rng() % 3;
    if (action == 0 || on_host.empty()) {
      ActivationKey key{static_cast<int>(rng() % 2), next_mb++};
      std::vector<std::size_t> sizes = {1 + rng() % 200000, 1 + rng() % 50000};
      offloader_->offload(key, engine_.make_set(key, sizes));
      on_host.push_back(key);
    } else if (action == 1) {
      std::size_t i = rng() % on_host.size();
      offloader_->reload(on_host[i], engine_.allocator_for(on_host[i]));
      reloading.push_back(on_host[i]);
      on_host.erase(on_host.begin() + i);
    } else if (!reloading.empty()) {
      ActivationKey key = reloading.front();
      reloading.erase(reloading.begin());
      offloader_->wait(key);
      engine_.expect_intact(key, 2);
    }
  }
  for (const auto& key : reloading) {
    offloader_->wait(key);
    engine_.expect_intact(key, 2);
  }
  EXPECT_GT(offloader_->stats().reloads + offloader_->stats().cancelled, 50);
}

}  // namespace
}  // namespace stp::offload
