// ActivationStore (Note [Activation store]) through its public API on CPU: the accounting of
// create/acquire/release, offload and reload round trips over the real host path
// (PooledActivationOffload: a pinned pool and the host copy engine's worker threads), the
// errors for a set used while away, and the device budget, which is driven deterministically
// through a fake ActivationOffload whose copies finish only when drained.
#include "engine/activation_store.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "engine/activation_offload.h"

namespace stp::engine {
namespace {

constexpr std::int64_t kMiB = std::int64_t{1} << 20;

// A tensor of `dtype` and `sizes` whose bytes are random (seeded): a round trip that loses or
// moves a single byte shows up in bytes_equal().
at::Tensor random_tensor(at::ScalarType dtype, std::vector<std::int64_t> sizes, int seed) {
  at::manual_seed(seed);
  if (dtype == at::kBool) return at::randint(0, 2, sizes, at::kLong).to(at::kBool);
  const std::int64_t numel = c10::multiply_integers(sizes);
  const std::int64_t bytes = numel * static_cast<std::int64_t>(c10::elementSize(dtype));
  return at::randint(-128, 128, {bytes}, at::kChar).view(dtype).reshape(sizes);
}

// Same shape, dtype and bytes (NaN payloads included, which at::equal would not accept).
bool bytes_equal(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

std::int64_t nbytes(const std::map<std::string, at::Tensor>& fields) {
  std::int64_t total = 0;
  for (const auto& [name, t] : fields)
    if (t.defined()) total += static_cast<std::int64_t>(t.nbytes());
  return total;
}

// The fields of one set: awkward (prime) sizes, several dtypes, a transposed view, a zero-size
// tensor and an undefined one.
std::map<std::string, at::Tensor> mixed_fields(int seed) {
  std::map<std::string, at::Tensor> f;
  f["x"] = random_tensor(at::kFloat, {7, 13}, seed);
  f["attn_probs"] = random_tensor(at::kBFloat16, {3, 5, 11}, seed + 1);
  f["h"] = random_tensor(at::kDouble, {17}, seed + 2);
  f["tokens"] = random_tensor(at::kLong, {2, 19}, seed + 3);
  f["mask"] = random_tensor(at::kBool, {3, 7}, seed + 4);
  f["xt"] = random_tensor(at::kFloat, {11, 5}, seed + 5).t();  // not contiguous
  f["empty"] = at::empty({0, 5}, at::kFloat);
  f["unset"] = at::Tensor();
  return f;
}

// Copies that do not alias the set's tensors: what the forward wrote.
std::map<std::string, at::Tensor> snapshot(const std::map<std::string, at::Tensor>& fields) {
  std::map<std::string, at::Tensor> out;
  for (const auto& [name, t] : fields) out[name] = t.defined() ? t.clone() : at::Tensor();
  return out;
}

void fill(ActivationSet& set, const std::map<std::string, at::Tensor>& fields) {
  for (const auto& [name, t] : fields) set.put(name, t);
}

// Every field of `set` holds exactly what `want` holds, and it has no other fields.
void expect_fields(const ActivationSet& set, const std::map<std::string, at::Tensor>& want) {
  ASSERT_EQ(set.fields().size(), want.size());
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(set.has(name)) << name;
    EXPECT_TRUE(bytes_equal(set.get(name), t))
        << "field '" << name << "' of chunk " << set.chunk() << " mb " << set.mb();
  }
}

// `f()` throws E, and not a subclass that means something else (std::invalid_argument is a
// std::logic_error), with `what` in its message: the store's own check fired, not a later one.
template <class E, class F>
void expect_error(F&& f, const std::string& what) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one saying '" << what << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    if constexpr (std::is_same_v<E, std::logic_error>) {
      EXPECT_EQ(dynamic_cast<const std::invalid_argument*>(&e), nullptr) << e.what();
      EXPECT_EQ(dynamic_cast<const std::out_of_range*>(&e), nullptr) << e.what();
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "unexpected exception: " << e.what();
  }
}

// An ActivationOffload whose copies finish only when the test says so, so the budget logic can
// be driven without timing. start_offload() parks copies of the fields; the D2H "runs" until
// drain(), which completes every offload in flight as PooledActivationOffload does (the fields
// become undefined tensors; the names stay); poll() completes nothing. start_reload() puts
// zero-filled tensors in the fields (allocated, the H2D not run yet); wait_reload() copies the
// parked bytes into them. A reload of a set whose offload is still in flight cancels it (the
// fields keep their tensors), as the Offloader does.
class FakeOffload final : public ActivationOffload {
 public:
  ActivationSet::Selection start_offload(ActivationSet& set, double share) override {
    ++offloads;
    ActivationSet::Selection moved = set.select_leading(share);
    auto& parked = parked_[key(set)];
    for (const std::string& name : moved.fields) parked[name] = set.get(name).clone();
    in_flight_[key(set)] = &set;
    return moved;
  }
  void start_reload(ActivationSet& set) override {
    ++reloads;
    if (in_flight_.erase(key(set))) return;  // cancelled: the originals never left
    for (const auto& [name, t] : parked_.at(key(set))) set.fields()[name] = at::zeros_like(t);
  }
  double wait_reload(ActivationSet& set) override {
    ++waits;
    for (const auto& [name, t] : parked_.at(key(set))) set.fields()[name].copy_(t);
    parked_.erase(key(set));
    return wait_seconds;
  }
  void poll() override {
    ++polls;
    if (copies_done) complete();
  }
  double drain() override {
    ++drains;
    complete();
    return drain_seconds;
  }
  bool releases_in_stream_order() const override { return stream_ordered; }

  int offloads = 0, reloads = 0, waits = 0, polls = 0, drains = 0;
  bool copies_done = false;     // poll() finds every copy in flight completed
  bool stream_ordered = false;  // what releases_in_stream_order() says (false: the host path)
  double drain_seconds = 0.25;  // what drain() reports as blocked
  double wait_seconds = 0.125;  // what wait_reload() reports as blocked

 private:
  using Key = std::pair<int, int>;
  static Key key(const ActivationSet& set) { return {set.chunk(), set.mb()}; }
  void complete() {  // drops the moved fields (those parked)
    for (auto& [k, set] : in_flight_)
      for (const auto& [name, t] : parked_.at(k)) set->fields()[name] = at::Tensor();
    in_flight_.clear();
  }
  std::map<Key, std::map<std::string, at::Tensor>> parked_;
  std::map<Key, ActivationSet*> in_flight_;
};

// ---- accounting and contract, no offloader ------------------------------------------------

TEST(ActivationStore, CreateAcquireReleaseAccountExactBytes) {
  ActivationStore store;
  const auto a = mixed_fields(1), b = mixed_fields(2);
  const at::Tensor c = random_tensor(at::kFloat, {101}, 3);
  fill(store.create(0, 0), a);
  fill(store.create(0, 1), b);
  store.create(1, 0).put("c", c);
  EXPECT_EQ(store.live_sets(), 3);
  EXPECT_EQ(store.resident_bytes(), 0);  // sampled by account(), not by create()
  store.account();
  const std::int64_t all = nbytes(a) + nbytes(b) + 101 * 4;
  EXPECT_EQ(store.resident_bytes(), all);
  EXPECT_EQ(store.peak_bytes(), all);
  EXPECT_EQ(store.peak_sets(), 3);

  // acquire() hands back the same set, fields intact.
  ActivationSet& got = store.acquire(0, 1);
  EXPECT_EQ(&got, &store.acquire(0, 1));
  EXPECT_EQ(got.chunk(), 0);
  EXPECT_EQ(got.mb(), 1);
  expect_fields(got, b);

  // A set with fields left is kept; an emptied one is dropped.
  store.acquire(1, 0).erase("c");
  store.release_if_empty(1, 0);
  store.release_if_empty(0, 0);
  EXPECT_EQ(store.live_sets(), 2);
  expect_error<std::logic_error>([&] { store.acquire(1, 0); },
                                 "no activation set for chunk 1 mb 0");
  store.account();
  EXPECT_EQ(store.resident_bytes(), nbytes(a) + nbytes(b));
  EXPECT_EQ(store.peak_bytes(), all);  // the peak stays
  EXPECT_EQ(store.peak_sets(), 3);

  // A set holding only undefined or zero-size tensors holds no bytes and is not a live peak set.
  ActivationSet& d = store.create(1, 1);
  d.put("unset", at::Tensor());
  d.put("empty", at::empty({0}, at::kFloat));
  store.acquire(0, 0).clear();
  store.acquire(0, 1).clear();
  store.release_if_empty(0, 0);
  store.release_if_empty(0, 1);
  store.account();
  EXPECT_EQ(store.resident_bytes(), 0);
  EXPECT_EQ(store.live_sets(), 1);
  d.clear();
  store.release_if_empty(1, 1);
  EXPECT_EQ(store.live_sets(), 0);
  EXPECT_EQ(store.offloaded_bytes(), 0);
}

// Note [Partial sets]: saved_order() lists names in the order first put; replacing a field
// keeps its place, erasing drops it, clear() empties it; fields() writes bypass it.
TEST(ActivationSet, SavedOrderIsTheOrderFieldsWereFirstPut) {
  ActivationSet set(0, 0);
  set.put("layers.10.attn.q", at::zeros({2}));
  set.put("layers.2.attn.q", at::zeros({2}));
  set.put("layers.10.attn.q", at::ones({3}));
  set.put("a", at::zeros({1}));
  set.fields()["direct"] = at::zeros({1});
  EXPECT_EQ(set.saved_order(),
            (std::vector<std::string>{"layers.10.attn.q", "layers.2.attn.q", "a"}));
  set.erase("layers.2.attn.q");
  set.erase("missing");
  EXPECT_EQ(set.saved_order(), (std::vector<std::string>{"layers.10.attn.q", "a"}));
  EXPECT_EQ(set.get("layers.10.attn.q").numel(), 3);
  set.clear();
  EXPECT_TRUE(set.saved_order().empty());
  EXPECT_TRUE(set.empty());
}

TEST(ActivationStore, MisuseIsAnError) {
  ActivationStore store;
  store.create(0, 3).put("x", at::ones({5}));
  expect_error<std::logic_error>([&] { store.create(0, 3); }, "mb 3 already exists");
  expect_error<std::logic_error>([&] { store.acquire(0, 4); },
                                 "no activation set for chunk 0 mb 4");
  expect_error<std::logic_error>([&] { store.acquire(1, 3); },
                                 "no activation set for chunk 1 mb 3");
  // OFFLOAD/RELOAD in a program while offload is off: a configuration error, not an invariant.
  expect_error<std::invalid_argument>([&] { store.offload(0, 3); }, "no offloader is attached");
  expect_error<std::invalid_argument>([&] { store.reload(0, 3); }, "no offloader is attached");
  EXPECT_EQ(store.live_sets(), 1);
  store.release_if_empty(7, 7);  // unknown: nothing to do
  EXPECT_EQ(store.live_sets(), 1);
}

TEST(ActivationStore, ResetStepRequiresNoLiveSetsAndStartsNewPeaks) {
  ActivationStore store;
  FakeOffload fake;
  store.attach_offload(&fake);
  ActivationSet& s = store.create(0, 0);
  s.put("x", at::zeros({64}, at::kDouble));
  store.account();
  store.offload(0, 0);
  expect_error<std::logic_error>([&] { store.reset_step(); }, "still alive");  // on host
  store.reload(0, 0);
  store.acquire(0, 0).clear();
  store.release_if_empty(0, 0);
  EXPECT_EQ(store.peak_bytes(), 512);
  EXPECT_EQ(store.offloaded_bytes(), 512);
  store.reset_step();
  EXPECT_EQ(store.peak_bytes(), 0);
  EXPECT_EQ(store.peak_sets(), 0);
  EXPECT_EQ(store.resident_bytes(), 0);
  EXPECT_EQ(store.offloaded_bytes(), 0);
  // The next step's peak is its own; a set holding no bytes is not counted as a peak set.
  store.create(0, 1).put("unset", at::Tensor());
  store.account();
  EXPECT_EQ(store.peak_sets(), 0);
  store.create(0, 0).put("x", at::zeros({8}, at::kDouble));
  store.account();
  EXPECT_EQ(store.peak_bytes(), 64);
  EXPECT_EQ(store.peak_sets(), 1);
}

// ---- the real host offload path ----------------------------------------------------------

class ActivationStoreOffload : public ::testing::Test {
 protected:
  explicit ActivationStoreOffload(std::int64_t host_bytes = 64 * kMiB)
      : offload_(host_bytes, /*device=*/-1) {
    store_.attach_offload(&offload_);
  }

  PooledActivationOffload offload_;
  ActivationStore store_;
};

TEST_F(ActivationStoreOffload, RoundTripRestoresEveryFieldBitForBit) {
  auto fields = mixed_fields(10);
  // Large enough that its H2D is still running if acquire() did not wait for it.
  fields["big"] = random_tensor(at::kFloat, {8 * 1024 * 1024 + 3}, 11);
  const auto want = snapshot(fields);
  std::map<std::string, const void*> original_ptr;
  for (const auto& [name, t] : fields)
    if (t.defined()) original_ptr[name] = t.data_ptr();
  fill(store_.create(2, 5), fields);  // `fields` keeps the originals alive: no address reuse
  store_.account();
  const std::int64_t set_bytes = nbytes(want);
  EXPECT_EQ(store_.resident_bytes(), set_bytes);

  store_.offload(2, 5);
  EXPECT_EQ(store_.offloaded_bytes(), set_bytes);
  expect_error<std::logic_error>([&] { store_.acquire(2, 5); }, "no RELOAD was scheduled");
  offload_.drain();  // the D2H completed and its device memory is gone
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), 0);
  EXPECT_EQ(offload_.host_bytes(), set_bytes);
  EXPECT_EQ(store_.peak_bytes(), set_bytes);

  store_.reload(2, 5);
  const ActivationSet& back = store_.acquire(2, 5);
  expect_fields(back, want);
  // The data came back through host memory into new tensors (not the originals kept alive).
  for (const auto& [name, t] : back.fields()) {
    if (t.defined() && t.numel() > 0) {
      EXPECT_NE(t.data_ptr(), original_ptr[name]) << name;
    }
  }
  EXPECT_FALSE(back.get("unset").defined());
  EXPECT_TRUE(back.get("empty").defined());
  EXPECT_EQ(offload_.host_bytes(), 0);
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), set_bytes);
}

// A set whose W is deferred makes a second trip (Note [Schedule invariants]): offloaded after
// its forward, reloaded for its B, which erases what only B read; what W reads is offloaded
// again and reloaded for the W, bit for bit, and the set is released once W emptied it.
TEST_F(ActivationStoreOffload, ASecondTripBetweenBAndWRestoresWhatWReads) {
  auto fields = mixed_fields(30);
  const auto want = snapshot(fields);
  fill(store_.create(1, 3), fields);
  store_.account();
  store_.offload(1, 3);
  offload_.drain();
  store_.reload(1, 3);
  ActivationSet& at_b = store_.acquire(1, 3);
  expect_fields(at_b, want);
  // B: reads everything, leaves what W needs.
  at_b.erase("attn_probs");
  at_b.erase("mask");
  auto w_fields = want;
  w_fields.erase("attn_probs");
  w_fields.erase("mask");
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), nbytes(w_fields));

  store_.offload(1, 3);  // the second trip
  EXPECT_EQ(store_.offloaded_bytes(), nbytes(want) + nbytes(w_fields));
  expect_error<std::logic_error>([&] { store_.acquire(1, 3); }, "no RELOAD was scheduled");
  offload_.drain();
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), 0);
  store_.release_if_empty(1, 3);  // away, not empty: kept
  EXPECT_EQ(store_.live_sets(), 1);
  store_.reload(1, 3);
  ActivationSet& at_w = store_.acquire(1, 3);
  expect_fields(at_w, w_fields);
  at_w.clear();  // W: reads the rest
  store_.release_if_empty(1, 3);
  EXPECT_EQ(store_.live_sets(), 0);
  EXPECT_EQ(offload_.host_bytes(), 0);
}

TEST_F(ActivationStoreOffload, ASetCannotBeUsedWhileAway) {
  const auto want = mixed_fields(20);
  fill(store_.create(0, 1), snapshot(want));
  store_.account();
  expect_error<std::logic_error>([&] { store_.reload(0, 1); }, "which is not on host");
  store_.offload(0, 1);
  // Offloaded, not reloaded: using it is a broken program, not an implicit wait.
  try {
    store_.acquire(0, 1);
    ADD_FAILURE() << "acquire() of an offloaded set returned";
  } catch (const std::logic_error& e) {
    EXPECT_NE(std::string(e.what()).find("no RELOAD"), std::string::npos) << e.what();
  }
  expect_error<std::logic_error>([&] { store_.offload(0, 1); }, "which is not resident");
  offload_.drain();
  // Its fields are all undefined now, yet the set is not empty and not dropped.
  store_.release_if_empty(0, 1);
  EXPECT_EQ(store_.live_sets(), 1);
  expect_error<std::logic_error>([&] { store_.reset_step(); }, "still alive");
  store_.reload(0, 1);
  expect_error<std::logic_error>([&] { store_.reload(0, 1); }, "which is not on host");
  expect_error<std::logic_error>([&] { store_.offload(0, 1); }, "which is not resident");
  store_.release_if_empty(0, 1);  // reloading: kept
  EXPECT_EQ(store_.live_sets(), 1);
  expect_fields(store_.acquire(0, 1), want);
  store_.acquire(0, 1).clear();
  store_.release_if_empty(0, 1);
  EXPECT_EQ(store_.live_sets(), 0);
  store_.reset_step();
}

// Silent corruption: RELOAD right after OFFLOAD, while the D2H is still copying into the host
// blocks. The reload must not read those blocks; the offloader cancels the round trip instead
// and the set keeps its original tensors. No seam can hold a host-backend copy back through
// PooledActivationOffload (it builds its own CopyEngine and passes a null ready event on CPU),
// so a 64 MiB set makes the D2H outlast the next call; if it did not, the test skips.
class ActivationStoreOffloadLarge : public ActivationStoreOffload {
 protected:
  ActivationStoreOffloadLarge() : ActivationStoreOffload(160 * kMiB) {}
};

TEST_F(ActivationStoreOffloadLarge, ReloadDuringTheOffloadCopyNeverReadsAHalfWrittenHostBuffer) {
  const at::Tensor big = random_tensor(at::kFloat, {16 * 1024 * 1024 + 5}, 30);
  const at::Tensor want = big.clone();
  const void* original = big.data_ptr();
  store_.create(1, 2).put("big", big);
  store_.account();
  store_.offload(1, 2);
  store_.reload(1, 2);
  const ActivationSet& back = store_.acquire(1, 2);
  const bool cancelled = back.get("big").data_ptr() == original;
  EXPECT_TRUE(bytes_equal(back.get("big"), want));
  // The originals may still be read by the D2H (its blocks are discarded): let it finish before
  // the test drops them (see the report on the cancelled round trip).
  offload_.drain();
  EXPECT_TRUE(bytes_equal(back.get("big"), want));
  EXPECT_EQ(offload_.host_bytes(), 0);
  if (!cancelled) GTEST_SKIP() << "the D2H finished before the reload: no overlap was exercised";
}

// A step shaped like a planned one (budget of two sets, OFFLOAD after each forward, RELOAD
// before each backward of an offloaded set), twice with reset_step() between: the resident
// bytes never exceed the budget, even though the copies run on real worker threads, and every
// set comes back intact.
class ActivationStoreOffloadStep : public ActivationStoreOffload {
 protected:
  ActivationStoreOffloadStep() : ActivationStoreOffload(128 * kMiB) {}
};

TEST_F(ActivationStoreOffloadStep, PeakNeverExceedsTheBudgetThePlanAllows) {
  constexpr int kMicrobatches = 6;
  constexpr int kKept = 2;  // the last two forwards stay resident for their backwards
  constexpr std::int64_t kSet = 16 * kMiB;
  const std::int64_t budget = 2 * kSet;
  store_.set_budget(budget, {kSet});
  for (int step = 0; step < 2; ++step) {
    std::vector<at::Tensor> want, input;
    for (int mb = 0; mb < kMicrobatches; ++mb) {
      input.push_back(random_tensor(at::kFloat, {kSet / 4}, 100 * step + mb));
      want.push_back(input.back().clone());
    }
    double waited = 0;
    for (int mb = 0; mb < kMicrobatches; ++mb) {  // F(mb), then OFFLOAD(mb)
      store_.create(0, mb, &waited).put("x", std::move(input[mb]));
      store_.account();
      EXPECT_LE(store_.resident_bytes(), budget) << "step " << step << " after F" << mb;
      if (mb < kMicrobatches - kKept) store_.offload(0, mb);
    }
    for (int mb = kMicrobatches - 1; mb >= 0; --mb) {  // RELOAD(mb), then B(mb)
      if (mb < kMicrobatches - kKept) store_.reload(0, mb);
      ActivationSet& set = store_.acquire(0, mb, &waited);
      EXPECT_TRUE(bytes_equal(set.get("x"), want[mb])) << "step " << step << " mb " << mb;
      set.clear();
      store_.release_if_empty(0, mb);
      store_.account();
      EXPECT_LE(store_.resident_bytes(), budget) << "step " << step << " after B" << mb;
    }
    EXPECT_LE(store_.peak_bytes(), budget);
    EXPECT_GE(store_.peak_bytes(), kSet);
    EXPECT_EQ(store_.offloaded_bytes(), (kMicrobatches - kKept) * kSet);
    EXPECT_GE(waited, 0);
    store_.reset_step();
  }
}

// ---- partial sets (Note [Partial sets] in schedule/program.h) ---------------------------------

// Fields of 100, 300, 200 and 400 bytes put in the order a, b, c, d (not the names' order), an
// empty and an undefined one between them.
ActivationSet four_fields() {
  ActivationSet set(0, 0);
  set.put("d_first", random_tensor(at::kFloat, {25}, 1));
  set.put("empty", at::empty({0}, at::kFloat));
  set.put("c_second", random_tensor(at::kFloat, {75}, 2));
  set.put("unset", at::Tensor());
  set.put("b_third", random_tensor(at::kFloat, {50}, 3));
  set.put("a_fourth", random_tensor(at::kFloat, {100}, 4));
  return set;
}

TEST(ActivationSetSelection, WholeFieldsInSavedOrderUntilTheShareIsReached) {
  ActivationSet set = four_fields();
  ASSERT_EQ(set.bytes(), 1000);
  using Names = std::vector<std::string>;
  // Half (500 bytes): 100 + 300 < 500, + 200 = 600 >= 500.
  auto half = set.select_leading(0.5);
  EXPECT_EQ(half.fields, (Names{"d_first", "c_second", "b_third"}));
  EXPECT_EQ(half.bytes, 600);
  EXPECT_EQ(set.select_leading(0.1).fields, (Names{"d_first"}));  // exactly 100 = 0.1
  EXPECT_EQ(set.select_leading(0.101).fields, (Names{"d_first", "c_second"}));
  auto all = set.select_leading(1);
  EXPECT_EQ(all.fields, (Names{"d_first", "c_second", "b_third", "a_fourth"}));
  EXPECT_EQ(all.bytes, 1000);
  // A field put into fields() directly moves last, after every saved one.
  set.fields()["0_direct"] = random_tensor(at::kFloat, {10}, 5);
  EXPECT_EQ(set.select_leading(1).fields,
            (Names{"d_first", "c_second", "b_third", "a_fourth", "0_direct"}));
  EXPECT_EQ(set.select_leading(0.95).fields, (Names{"d_first", "c_second", "b_third", "a_fourth"}));
  // A field erased (either way) is not selected.
  set.erase("c_second");
  set.fields().erase("a_fourth");
  EXPECT_EQ(set.select_leading(1).fields, (Names{"d_first", "b_third", "0_direct"}));
  expect_error<std::invalid_argument>([&] { set.select_leading(0); }, "must be in (0, 1]");
  expect_error<std::invalid_argument>([&] { set.select_leading(1.5); }, "offload share 1.5");
}

// Half of a set over the real host path: the fields saved first go and come back bit for bit;
// the others never leave (the same tensors throughout); the store counts what moved.
TEST_F(ActivationStoreOffload, APartialTripMovesTheLeadingFieldsAndKeepsTheRest) {
  ActivationSet& set = store_.create(0, 2);
  const ActivationSet proto = four_fields();
  for (const std::string& name : proto.saved_order()) set.put(name, snapshot(proto.fields())[name]);
  std::map<std::string, at::Tensor> want = snapshot(set.fields());
  const void* kept_ptr = set.get("a_fourth").data_ptr();
  store_.account();
  store_.offload(0, 2, 0.5);
  EXPECT_EQ(store_.offloaded_bytes(), 600);
  offload_.drain();
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), 400) << "what the trip left on the device still counts";
  EXPECT_EQ(offload_.host_bytes(), 600);
  for (const char* moved : {"d_first", "c_second", "b_third"})
    EXPECT_FALSE(set.get(moved).defined()) << moved;
  EXPECT_EQ(set.get("a_fourth").data_ptr(), kept_ptr);  // readable, untouched
  EXPECT_TRUE(bytes_equal(set.get("a_fourth"), want.at("a_fourth")));
  ASSERT_EQ(store_.partial_trips().size(), 1u);
  const PartialTrip& t = store_.partial_trips()[0];
  EXPECT_EQ(t.fields, (std::vector<std::string>{"d_first", "c_second", "b_third"}));
  EXPECT_EQ(t.moved_bytes, 600);
  EXPECT_EQ(t.set_bytes, 1000);
  EXPECT_FALSE(t.after_backward);

  store_.reload(0, 2);
  const ActivationSet& back = store_.acquire(0, 2);
  expect_fields(back, want);
  EXPECT_EQ(back.get("a_fourth").data_ptr(), kept_ptr);
  EXPECT_EQ(offload_.host_bytes(), 0);
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), 1000);
  EXPECT_EQ(store_.peak_bytes(), 1000);
}

// Share 1 moves every field, as before partial sets: no partial trip is recorded.
TEST_F(ActivationStoreOffload, ShareOneMovesTheWholeSet) {
  ActivationSet& set = store_.create(0, 0);
  const ActivationSet proto = four_fields();
  for (const std::string& name : proto.saved_order()) set.put(name, snapshot(proto.fields())[name]);
  store_.offload(0, 0, 1);
  EXPECT_EQ(store_.offloaded_bytes(), 1000);
  offload_.drain();
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), 0);
  EXPECT_TRUE(store_.partial_trips().empty());
  store_.reload(0, 0);
  store_.acquire(0, 0).clear();
  store_.release_if_empty(0, 0);
}

// ---- the budget, deterministic (FakeOffload) ---------------------------------------------

class ActivationStoreBudget : public ::testing::Test {
 protected:
  static constexpr std::int64_t kSet = 1024;  // bytes of one set: 128 doubles

  ActivationStoreBudget() { store_.attach_offload(&fake_); }

  // F(mb) of `chunk` as the executor runs it: create, fill, account.
  ActivationSet& forward(int chunk, int mb, double* waited = nullptr) {
    ActivationSet& s = store_.create(chunk, mb, waited);
    s.put("x", at::full({kSet / 8}, static_cast<double>(mb + 1), at::kDouble));
    store_.account();
    return s;
  }

  FakeOffload fake_;
  ActivationStore store_;
};

TEST_F(ActivationStoreBudget, CreateWithinTheBudgetDoesNotWait) {
  store_.set_budget(3 * kSet, {kSet});
  double waited = 0;
  for (int mb = 0; mb < 3; ++mb) forward(0, mb, &waited);
  EXPECT_EQ(fake_.drains, 0);
  EXPECT_EQ(waited, 0);
  EXPECT_EQ(store_.peak_bytes(), 3 * kSet);
}

TEST_F(ActivationStoreBudget, CreateOverTheBudgetFirstWaitsForOffloadsInFlight) {
  store_.set_budget(2 * kSet, {kSet});
  ActivationSet& a = forward(0, 0);
  forward(0, 1);
  store_.offload(0, 0);  // its D2H is still running: its bytes still count
  double waited = 0;
  forward(0, 2, &waited);
  EXPECT_EQ(fake_.drains, 1);
  EXPECT_EQ(waited, fake_.drain_seconds);
  EXPECT_FALSE(a.get("x").defined());  // freed before the new set was filled
  EXPECT_EQ(store_.resident_bytes(), 2 * kSet);
  EXPECT_EQ(store_.peak_bytes(), 2 * kSet);
}

TEST_F(ActivationStoreBudget, CompletedOffloadsAreFreedByPollingNotByWaiting) {
  store_.set_budget(2 * kSet, {kSet});
  forward(0, 0);
  forward(0, 1);
  store_.offload(0, 0);
  fake_.copies_done = true;  // the D2H has finished; only a poll() can notice
  store_.account();
  EXPECT_EQ(store_.resident_bytes(), kSet);
  fake_.copies_done = false;
  store_.offload(0, 1);
  fake_.copies_done = true;
  forward(0, 2);  // make_room() polls first: fits without a drain
  EXPECT_EQ(fake_.drains, 0);
  EXPECT_EQ(store_.peak_bytes(), 2 * kSet);
}

TEST_F(ActivationStoreBudget, SetsCreatedInOneInstructionCountAtTheirExpectedSize) {
  // A braided FF creates both sets before either forward has filled one.
  store_.set_budget(2 * kSet, {kSet, kSet});
  forward(0, 0);
  store_.offload(0, 0);  // in flight: still counts
  store_.create(0, 1);   // S in flight + S expected = budget: fits
  EXPECT_EQ(fake_.drains, 0);
  double waited = 0;
  store_.create(1, 1, &waited);  // the empty (0, 1) counts at its expected size: over
  EXPECT_EQ(fake_.drains, 1);
  EXPECT_EQ(waited, fake_.drain_seconds);
}

TEST_F(ActivationStoreBudget, ReloadOverTheBudgetWaitsAndTheNextAcquireReportsIt) {
  store_.set_budget(2 * kSet, {kSet});
  forward(0, 0);
  store_.offload(0, 0);
  forward(0, 1);
  forward(0, 2);  // drains: (0, 0) is on host now
  ASSERT_EQ(fake_.drains, 1);
  store_.reload(0, 0);  // 2 resident + 1 reloading > budget
  EXPECT_EQ(fake_.drains, 2);
  // The reload's drain is reported by the next acquire() (whichever set), once. Each acquire()
  // also drains for the backward's growth while one more set would not fit (3 sets, budget 2).
  double waited = 0;
  store_.acquire(0, 2, &waited);
  EXPECT_EQ(fake_.drains, 3);
  EXPECT_EQ(waited, 2 * fake_.drain_seconds);
  waited = 0;
  store_.acquire(0, 1, &waited);
  EXPECT_EQ(fake_.drains, 4);
  EXPECT_EQ(waited, fake_.drain_seconds);
  // acquire() of the reloading set waits for its H2D exactly once, and sees its bytes.
  waited = 0;
  ActivationSet& s = store_.acquire(0, 0, &waited);
  EXPECT_EQ(fake_.waits, 1);
  EXPECT_EQ(waited, fake_.drain_seconds + fake_.wait_seconds);
  EXPECT_TRUE(bytes_equal(s.get("x"), at::full({kSet / 8}, 1.0, at::kDouble)));
  store_.acquire(0, 0);
  EXPECT_EQ(fake_.waits, 1);
}

TEST_F(ActivationStoreBudget, AcquireNeverReturnsASetWhoseReloadIsStillCopying) {
  store_.set_budget(0, {});
  const at::Tensor x = random_tensor(at::kDouble, {37}, 40);
  store_.create(0, 0).put("x", x.clone());
  store_.account();
  store_.offload(0, 0);
  fake_.drain();  // on host
  store_.reload(0, 0);
  ASSERT_EQ(fake_.waits, 0);  // the fields hold zero-filled tensors: the "H2D" has not run
  const ActivationSet& s = store_.acquire(0, 0);
  EXPECT_EQ(fake_.waits, 1);
  EXPECT_TRUE(bytes_equal(s.get("x"), x));
}

TEST_F(ActivationStoreBudget, WhenNothingCanBeFreedTheCreateGoesAheadOverTheBudget) {
  // The documented behaviour: drain once, no second check, no error; the peak shows it.
  store_.set_budget(2 * kSet, {kSet});
  forward(0, 0);
  forward(0, 1);
  double waited = 0;
  EXPECT_NO_THROW(forward(0, 2, &waited));
  EXPECT_EQ(fake_.drains, 1);
  EXPECT_EQ(store_.live_sets(), 3);
  EXPECT_EQ(store_.peak_bytes(), 3 * kSet);
}

TEST_F(ActivationStoreBudget, AStreamOrderedReleaseIsNeverDrained) {
  // CUDA: offloads leave the count when their D2H is queued and the allocator reuses their
  // memory in stream order; a host wait could free nothing, so over the budget nothing waits.
  fake_.stream_ordered = true;
  store_.set_budget(2 * kSet, {kSet});
  forward(0, 0);
  forward(0, 1);
  store_.offload(0, 0);
  double waited = 0;
  forward(0, 2, &waited);
  store_.reload(0, 0);
  store_.acquire(0, 1, &waited);
  EXPECT_EQ(fake_.drains, 0);
  EXPECT_EQ(waited, 0);
}

// A partial trip frees only what it moved, and its RELOAD expects only that back: with two
// sets resident, half of a third on host and a budget of 2.5 sets, the reload fits (2 + 0.5)
// without a drain, where a whole set expected would not (2 + 1). The trip between B and W is
// recorded as such.
TEST_F(ActivationStoreBudget, APartialReloadExpectsWhatItsOffloadMoved) {
  store_.set_budget(5 * kSet / 2, {kSet});
  auto forward4 = [&](int mb) {  // F(mb): four fields of a quarter set each
    ActivationSet& s = store_.create(0, mb);
    for (const char* f : {"u0", "u1", "u2", "u3"})
      s.put(f, at::full({kSet / 32}, static_cast<double>(mb + 1), at::kDouble));
    store_.account();
    return &s;
  };
  ActivationSet* a = forward4(0);
  store_.offload(0, 0, 0.5);
  EXPECT_EQ(store_.offloaded_bytes(), kSet / 2);
  forward4(1);  // 1.5 in flight or resident + 1 expected = 2.5: fits
  EXPECT_EQ(fake_.drains, 0);
  forward4(2);  // 2.5 + 1 > 2.5: waits for the half in flight
  EXPECT_EQ(fake_.drains, 1);
  EXPECT_EQ(store_.resident_bytes(), 5 * kSet / 2) << "the half left of set 0 still counts";
  EXPECT_TRUE(a->get("u2").defined());
  EXPECT_FALSE(a->get("u0").defined());
  store_.account();
  store_.reload(0, 0);  // 2.5 resident + 0.5 expected > 2.5: but the drain has nothing left
  EXPECT_EQ(fake_.drains, 2);
  ActivationSet& b = store_.acquire(0, 0);
  EXPECT_TRUE(at::equal(b.get("u0"), at::full({kSet / 32}, 1.0, at::kDouble)));
  store_.account();
  EXPECT_EQ(store_.peak_bytes(), 3 * kSet);

  // B of mb 2 leaves two fields; the trip between B and W moves one of them.
  ActivationSet& c = store_.acquire(0, 2);
  c.erase("u0");
  c.erase("u1");
  store_.account();
  store_.offload(0, 2, 0.5);
  ASSERT_EQ(store_.partial_trips().size(), 2u);
  EXPECT_FALSE(store_.partial_trips()[0].after_backward);
  EXPECT_TRUE(store_.partial_trips()[1].after_backward);
  EXPECT_EQ(store_.partial_trips()[1].fields, (std::vector<std::string>{"u2"}));
  EXPECT_EQ(store_.partial_trips()[1].set_bytes, kSet / 2);
  EXPECT_EQ(store_.offloaded_bytes(), kSet / 2 + kSet / 4);
}

// Two sets and the half a partial trip left resident (2.5 sets) under a budget of 3: the
// RELOAD of the half that went fits (2.5 + 0.5) without a drain; a whole set expected back
// (2.5 + 1) would have drained.
TEST_F(ActivationStoreBudget, AReloadOfHalfASetFitsWhereAWholeOneWouldWait) {
  store_.set_budget(3 * kSet, {kSet});
  ActivationSet& s = store_.create(0, 0);
  for (const char* f : {"u0", "u1", "u2", "u3"}) s.put(f, at::full({kSet / 32}, 1.0, at::kDouble));
  store_.account();
  store_.offload(0, 0, 0.5);
  fake_.copies_done = true;  // the D2H ran; a poll() frees the half
  forward(0, 1);
  forward(0, 2);
  EXPECT_EQ(store_.resident_bytes(), 2 * kSet + kSet / 2);
  store_.reload(0, 0);
  EXPECT_EQ(fake_.drains, 0) << "the reload expected more than its offload moved";
  double waited = 0;
  store_.acquire(0, 0, &waited);
  EXPECT_EQ(waited, fake_.wait_seconds + fake_.drain_seconds) << "B's growth: one more set";
  store_.account();
  EXPECT_EQ(store_.peak_bytes(), 3 * kSet);
}

TEST_F(ActivationStoreBudget, NoBudgetOrAnUnsizedChunkIsNotLimited) {
  store_.set_budget(0, {kSet});  // 0: no limit
  for (int mb = 0; mb < 4; ++mb) forward(0, mb);
  EXPECT_EQ(fake_.drains, 0);
  store_.set_budget(kSet, {kSet});  // chunk 1 has no expected size
  forward(1, 0);
  EXPECT_EQ(fake_.drains, 0);
  forward(0, 4);  // chunk 0 does, and is far over
  EXPECT_EQ(fake_.drains, 1);
}

}  // namespace
}  // namespace stp::engine
