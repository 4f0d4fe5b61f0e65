// The Offloader's CUDA contracts without a GPU (Note [Offload lifetime], Note [Offload
// streams]), through FakeCudaDevice: which stream each event is recorded on and waited for,
// the stream-ordered release of D2H sources (record_stream, then release at once), a reload
// whose H2D waits for the D2H of the same set on the copy stream, and no host wait anywhere
// between offload and the consumer's wait.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "allocator/pinned_host_pool.h"
#include "offload/offloader.h"
#include "tests/offload/fake_cuda_device.h"

namespace stp::offload {
namespace {

using testing::FakeCudaDevice;
using Op = FakeCudaDevice::Op;

constexpr std::size_t kMiB = 1 << 20;

// "Device" memory as a caching allocator hands it out: an allocation lives while the engine
// holds it or a record_stream keeps it (retain()).
class FakeDeviceMemory {
 public:
  void* allocate(std::size_t bytes, unsigned seed) {
    auto buf = std::make_shared<std::vector<unsigned char>>(bytes);
    for (std::size_t i = 0; i < bytes; ++i) (*buf)[i] = static_cast<unsigned char>(i * 7 + seed);
    live_[buf->data()] = buf;
    return buf->data();
  }
  void release(void* p) { live_.erase(p); }
  // The allocation stays alive while the returned pointer does.
  std::weak_ptr<void> watch(void* p) { return live_.at(p); }
  testing::Retained retain(void* storage) {
    auto it = live_.find(storage);
    if (it == live_.end()) {
      ADD_FAILURE() << "record_stream on " << storage << ", which the engine already released";
      return {};
    }
    return {it->second, reinterpret_cast<const char*>(it->second->data()), it->second->size()};
  }
  std::vector<unsigned char> bytes(void* p) const { return *live_.at(p); }

 private:
  std::map<void*, std::shared_ptr<std::vector<unsigned char>>> live_;
};

class OffloaderStreams : public ::testing::Test {
 protected:
  explicit OffloaderStreams(bool record_stream = true)
      : device_(record_stream ? testing::RetainFn([this](void* s) { return memory_.retain(s); })
                              : testing::RetainFn()) {
    allocator::PinnedPoolOptions po;
    po.capacity_bytes = 16 * kMiB;
    po.slab_bytes = 16 * kMiB;
    po.memory = allocator::HostMemoryKind::kMmap;
    pool_ = std::make_unique<allocator::PinnedHostPool>(po);
    copies_ = device_.make_copy_engine(device_.ops());
    offloader_ = std::make_unique<Offloader>(*pool_, *copies_, device_.ops());
  }
  ~OffloaderStreams() override {
    offloader_.reset();  // waits for the copies (teardown is allowed to)
  }

  // Offloads one set of `sizes` after a ready event on the compute stream, as the engine does;
  // returns the fields' original contents.
  std::vector<std::vector<unsigned char>> offload(ActivationKey key,
                                                  const std::vector<std::size_t>& sizes) {
    std::vector<SavedBuffer> buffers;
    std::vector<std::vector<unsigned char>> want;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      void* p = memory_.allocate(sizes[i], static_cast<unsigned>(key.mb * 10 + i));
      want.push_back(memory_.bytes(p));
      buffers.push_back({"f" + std::to_string(i), p, sizes[i],
                         [this, p, key] {
                           ++released_[key];
                           memory_.release(p);
                         },
                         p});
    }
    CopyEvent ready =
        ops_.record(ops_.current_stream(FakeCudaDevice::kDevice), FakeCudaDevice::kDevice);
    offloader_->offload(key, std::move(buffers), ready);
    return want;
  }

  // Reloads into fresh allocations on the compute stream; returns them by field.
  std::map<std::string, void*> reload(ActivationKey key) {
    std::map<std::string, void*> got;
    offloader_->reload(
        key,
        [&](const std::string& name, std::size_t bytes) {
          return got[name] = memory_.allocate(bytes, 0xee);
        },
        FakeCudaDevice::compute());
    return got;
  }

  FakeDeviceMemory memory_;
  FakeCudaDevice device_;
  DeviceOps ops_ = device_.ops();
  std::unique_ptr<allocator::PinnedHostPool> pool_;
  std::unique_ptr<CopyEngine> copies_;
  std::unique_ptr<Offloader> offloader_;
  std::map<ActivationKey, int> released_;
};

TEST_F(OffloaderStreams, D2HSourcesAreReleasedInStreamOrderWithoutAHostWait) {
  const ActivationKey key{0, 1};
  const std::vector<std::size_t> sizes = {kMiB + 3, 4099};
  ASSERT_TRUE(offloader_->releases_in_stream_order());
  offload(key, sizes);
  EXPECT_EQ(released_[key], 2) << "the engine should drop the sources as soon as the D2H is queued";
  EXPECT_EQ(device_.count(Op::kRecordStream), 2);
  for (const auto& c : device_.calls) {
    if (c.op == Op::kRecordStream) {
      EXPECT_EQ(c.stream, FakeCudaDevice::stream_of(Direction::kD2H));
    }
  }
  // Host-side accounting: the memory is busy until the host sees the copy complete.
  EXPECT_EQ(offloader_->state(key), SetState::kToHost);
  EXPECT_EQ(offloader_->device_bytes(), static_cast<std::int64_t>(kMiB + 3 + 4099));
  offloader_->poll();
  EXPECT_EQ(offloader_->state(key), SetState::kToHost);
  EXPECT_EQ(device_.host_syncs, 0);

  device_.run_all();  // the D2H stream runs: the checks of FakeCudaDevice see sources retained
  offloader_->poll();
  EXPECT_EQ(offloader_->state(key), SetState::kOnHost);
  EXPECT_EQ(offloader_->device_bytes(), 0);
  EXPECT_EQ(device_.host_syncs, 0);
  EXPECT_TRUE(device_.violations.empty());
}

TEST_F(OffloaderStreams, TheAllocatorKeepsASourceUntilItsD2HRan) {
  const ActivationKey key{1, 0};
  std::vector<SavedBuffer> buffers;
  void* p = memory_.allocate(3 * kMiB, 5);
  const std::vector<unsigned char> want = memory_.bytes(p);
  std::weak_ptr<void> alive = memory_.watch(p);
  buffers.push_back({"x", p, 3 * kMiB, [&] { memory_.release(p); }, p});
  offloader_->offload(key, std::move(buffers));
  EXPECT_FALSE(alive.expired()) << "freed for reuse while the D2H still has to read it";
  device_.run_all();
  EXPECT_TRUE(alive.expired()) << "still held after the D2H ran";
  offloader_->poll();
  auto got = reload(key);
  device_.run_all();
  offloader_->wait(key, FakeCudaDevice::compute());
  EXPECT_EQ(memory_.bytes(got.at("x")), want);
}

TEST_F(OffloaderStreams, AReloadDuringItsD2HWaitsForItOnTheCopyStream) {
  const ActivationKey key{0, 4};
  const auto want = offload(key, {2 * kMiB + 1, 77});
  const auto got = reload(key);  // the D2H has not run: the host blocks are still empty
  EXPECT_EQ(offloader_->stats().cancelled, 0) << "the originals are gone: nothing to cancel to";
  EXPECT_EQ(offloader_->stats().reloads, 1);
  EXPECT_EQ(offloader_->state(key), SetState::kToDevice);
  // The H2D stream is blocked on the D2H's event: it cannot read the host blocks first.
  while (device_.run_one(Direction::kH2D)) {
  }
  EXPECT_EQ(device_.copies_run, 0);
  EXPECT_GT(device_.queued(Direction::kH2D), 0u);
  // The pinned blocks are in flight until both copies ran: the pool cannot hand them out.
  EXPECT_GT(pool_->stats().in_flight_bytes, 0u);

  offloader_->wait(key, FakeCudaDevice::compute());
  ASSERT_EQ(device_.compute_waits.size(), 1u);
  EXPECT_FALSE(device_.compute_waits[0].query()) << "the consumer must wait for the pending H2D";
  while (device_.run_one(Direction::kD2H)) {
  }
  EXPECT_EQ(device_.copies_run, 1);
  EXPECT_FALSE(device_.compute_waits[0].query());
  device_.run_all();
  EXPECT_TRUE(device_.compute_waits[0].query());
  EXPECT_EQ(memory_.bytes(got.at("f0")), want[0]);
  EXPECT_EQ(memory_.bytes(got.at("f1")), want[1]);
  pool_->process_completed();
  EXPECT_EQ(pool_->stats().in_flight_bytes, 0u);
  EXPECT_EQ(device_.host_syncs, 0);
  EXPECT_EQ(offloader_->device_bytes(), 0);
}

TEST_F(OffloaderStreams, EveryEventIsOnTheModelDevicesCurrentStreamOrACopyStream) {
  const ActivationKey a{0, 0}, b{0, 1};
  offload(a, {kMiB});
  offload(b, {kMiB});
  device_.run_all();
  reload(a);
  reload(b);
  offloader_->wait(a, FakeCudaDevice::compute());
  offloader_->wait(b, FakeCudaDevice::compute());
  device_.run_all();
  // The reload's "memory allocated" event is on the compute stream; the copies' on theirs.
  int on_compute = 0;
  for (const auto& c : device_.calls) {
    if (c.op == Op::kRecord && c.stream == FakeCudaDevice::compute()) ++on_compute;
    if (c.op == Op::kWait && c.stream == FakeCudaDevice::compute()) ++on_compute;
    if (c.op == Op::kRecord || c.op == Op::kWait || c.op == Op::kRecordStream) {
      EXPECT_NE(c.stream, nullptr) << "legacy default stream used by op " << static_cast<int>(c.op);
    }
  }
  EXPECT_EQ(on_compute, 2 /*ready*/ + 2 /*alloc*/ + 2 /*consumer waits*/);
  EXPECT_EQ(device_.host_syncs, 0);
  EXPECT_TRUE(device_.violations.empty());
}

// Without an allocator to tell (DeviceOps::record_stream empty) the CUDA path keeps the
// host-observed release: sources are released only once the host saw the D2H complete, and a
// reload during the D2H cancels the round trip.
class OffloaderStreamsNoRecordStream : public OffloaderStreams {
 protected:
  OffloaderStreamsNoRecordStream() : OffloaderStreams(/*record_stream=*/false) {}
};

TEST_F(OffloaderStreamsNoRecordStream, ReleasesAfterTheCopyAndCancelsAnEarlyReload) {
  ASSERT_FALSE(offloader_->releases_in_stream_order());
  const ActivationKey a{0, 0}, b{0, 1};
  offload(a, {kMiB});
  EXPECT_EQ(released_[a], 0);
  device_.run_all();
  offloader_->poll();
  EXPECT_EQ(released_[a], 1);

  offload(b, {kMiB});
  reload(b);
  EXPECT_EQ(offloader_->stats().cancelled, 1);
  offloader_->wait(b, FakeCudaDevice::compute());  // after the D2H that reads the originals
  ASSERT_EQ(device_.compute_waits.size(), 1u);
  EXPECT_FALSE(device_.compute_waits[0].query());
  device_.run_all();
  EXPECT_EQ(released_[b], 0);
  EXPECT_EQ(device_.count(Op::kRecordStream), 0);
}

}  // namespace
}  // namespace stp::offload
