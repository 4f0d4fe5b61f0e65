#include "engine/activation_store.h"

#include <algorithm>

#include "common/check.h"
#include "engine/activation_offload.h"

namespace stp::engine {

ActivationStore::ActivationStore() = default;
ActivationStore::~ActivationStore() = default;

void ActivationStore::set_budget(std::int64_t budget_bytes, std::vector<std::int64_t> set_bytes) {
  budget_bytes_ = budget_bytes;
  set_bytes_ = std::move(set_bytes);
}

// The budget guard (Note [Activation store]: what is counted, and why only the CPU waits).
// Sets created during the current instruction are still empty (their forward fills them), so
// they count at their expected size until the instruction ends (account()). No re-check after
// the drain: if it freed too little, the caller goes ahead over the budget.
double ActivationStore::make_room(std::int64_t expected) {
  if (!offload_ || budget_bytes_ <= 0 || expected < 0) return 0;
  if (current_bytes() + pending_bytes_ + expected <= budget_bytes_) return 0;
  // CUDA: offloads were released in stream order when their D2H was queued; a host wait would
  // free nothing and stall the host (gpu-review item 9).
  if (offload_->releases_in_stream_order()) return 0;
  return offload_->drain();
}

std::int64_t ActivationStore::expected_set_bytes(int chunk) const {
  return chunk >= 0 && chunk < static_cast<int>(set_bytes_.size()) ? set_bytes_[chunk] : -1;
}

ActivationSet& ActivationStore::create(int chunk, int mb, double* waited) {
  const double w = make_room(expected_set_bytes(chunk));
  if (waited) *waited += w;
  pending_bytes_ += std::max<std::int64_t>(0, expected_set_bytes(chunk));
  auto [it, inserted] = sets_.try_emplace(Key{chunk, mb});
  STP_ASSERT(inserted, "activation set for chunk ", chunk, " mb ", mb, " already exists");
  it->second.set = ActivationSet(chunk, mb);
  return it->second.set;
}

ActivationSet& ActivationStore::acquire(int chunk, int mb, double* waited) {
  auto it = sets_.find(Key{chunk, mb});
  STP_ASSERT(it != sets_.end(), "no activation set for chunk ", chunk, " mb ", mb);
  Entry& e = it->second;
  STP_ASSERT(e.where != Where::kHost, "activation set chunk ", chunk, " mb ", mb,
             " is on host and no RELOAD was scheduled before its use");
  // A backward grows its set again (B writes the output gradients W reads; a recomputed set
  // rebuilds its fields): as for a new set, wait for the copies in flight when one more set
  // would not fit (CPU only; Note [Activation store], "The device budget").
  const double room = make_room(expected_set_bytes(chunk));
  if (waited) {
    *waited += host_link_wait_ + room;
    host_link_wait_ = 0;
  }
  e.acquired = true;
  if (e.where == Where::kToDevice) {
    // CUDA: the compute stream waits for the H2D; CPU: the host does (Note [Activation store]).
    double w = offload_->wait_reload(e.set);
    if (waited) *waited += w;
    e.where = Where::kDevice;
  }
  return e.set;
}

void ActivationStore::release_if_empty(int chunk, int mb) {
  auto it = sets_.find(Key{chunk, mb});
  if (it != sets_.end() && it->second.set.empty() && it->second.where == Where::kDevice)
    sets_.erase(it);
}

void ActivationStore::offload(int chunk, int mb, double share) {
  STP_CHECK(offload_ != nullptr, "the program offloads chunk ", chunk, " mb ", mb,
            " but no offloader is attached (offload is off)");
  auto it = sets_.find(Key{chunk, mb});
  STP_ASSERT(it != sets_.end() && it->second.where == Where::kDevice, "OFFLOAD of chunk ", chunk,
             " mb ", mb, " which is not resident");
  Entry& e = it->second;
  const std::int64_t before = e.set.bytes();
  ActivationSet::Selection moved = offload_->start_offload(e.set, share);
  offloaded_bytes_ += moved.bytes;
  e.moved_bytes = moved.bytes;
  e.where = Where::kHost;
  if (share < 1)  // acquired: its backward ran, this is the trip between B and W
    partial_trips_.push_back(
        {chunk, mb, share, e.acquired, std::move(moved.fields), moved.bytes, before});
}

void ActivationStore::reload(int chunk, int mb) {
  STP_CHECK(offload_ != nullptr, "the program reloads chunk ", chunk, " mb ", mb,
            " but no offloader is attached (offload is off)");
  auto it = sets_.find(Key{chunk, mb});
  STP_ASSERT(it != sets_.end() && it->second.where == Where::kHost, "RELOAD of chunk ", chunk,
             " mb ", mb, " which is not on host");
  // The reload allocates what its offload moved, now: share of a set (Note [Partial sets]).
  const std::int64_t expected = expected_set_bytes(chunk) < 0 ? -1 : it->second.moved_bytes;
  host_link_wait_ += make_room(expected);
  pending_bytes_ += std::max<std::int64_t>(0, expected);
  offload_->start_reload(it->second.set);
  it->second.where = Where::kToDevice;
}

// Exact because a set's fields are its device memory at every moment of an offload round trip
// (engine/activation_offload.h). On the CPU the poll() is where offloaded sets' device memory
// is freed (Note [Activation store]).
std::int64_t ActivationStore::current_bytes() const {
  if (offload_) offload_->poll();
  std::int64_t bytes = 0;
  for (const auto& [key, e] : sets_) bytes += e.set.bytes();
  return bytes;
}

// A set counts as resident while it holds any device bytes.
void ActivationStore::account() {
  resident_bytes_ = current_bytes();
  pending_bytes_ = 0;
  int sets = 0;
  for (const auto& [key, e] : sets_)
    if (e.set.bytes() > 0) ++sets;
  peak_bytes_ = std::max(peak_bytes_, resident_bytes_);
  peak_sets_ = std::max(peak_sets_, sets);
}

void ActivationStore::reset_step() {
  STP_ASSERT(sets_.empty(), sets_.size(), " activation sets are still alive at the step start");
  resident_bytes_ = peak_bytes_ = offloaded_bytes_ = pending_bytes_ = 0;
  peak_sets_ = 0;
  partial_trips_.clear();
}

}  // namespace stp::engine
