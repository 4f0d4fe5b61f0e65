// ActivationStore: the ActivationSets of one rank, by (chunk, microbatch), with exact accounting
// of the bytes they hold on the device and, when an offloader is attached, their trips to host
// memory and back (Note [Offload lifetime] in offload/offloader.h).
//
// A set is created by its forward, read by its backward and weight-gradient passes, and released
// when it is empty. offload() starts moving a set's tensors to host; reload() starts bringing
// them back into fresh device tensors; acquire() returns the set ready for compute, waiting only
// for that set's own reload.
//
// Thread-safety: one rank's executor thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "engine/activation_set.h"

namespace stp::engine {

class ActivationOffload;  // engine/activation_offload.h: bridge to offload::Offloader

class ActivationStore {
 public:
  ActivationStore();
  ~ActivationStore();
  ActivationStore(const ActivationStore&) = delete;
  ActivationStore& operator=(const ActivationStore&) = delete;

  // Moves sets to host through `offload` (nullptr: offload instructions are errors).
  void attach_offload(ActivationOffload* offload) { offload_ = offload; }

  // Makes the device budget a hard limit: a set of local chunk c is expected to take
  // set_bytes[c]; before one is created while offloads are still copying out and the budget
  // would be exceeded, create() waits for those copies (the planner's timing was optimistic).
  void set_budget(std::int64_t budget_bytes, std::vector<std::int64_t> set_bytes);

  // REQUIRES: no live set for (chunk, mb). Adds the seconds it waited for the host link (see
  // set_budget) to *waited.
  ActivationSet& create(int chunk, int mb, double* waited = nullptr);
  // The set, resident and ready. Waits for its reload if one is in flight; adds the seconds
  // blocked to *waited. REQUIRES: the set exists and is not on host without a reload.
  ActivationSet& acquire(int chunk, int mb, double* waited = nullptr);
  // Drops the set when its passes emptied it.
  void release_if_empty(int chunk, int mb);

  void offload(int chunk, int mb);
  void reload(int chunk, int mb);

  // Call after every compute: refreshes resident bytes from the sets and updates the peaks.
  void account();
  std::int64_t resident_bytes() const { return resident_bytes_; }
  std::int64_t peak_bytes() const { return peak_bytes_; }
  int peak_sets() const { return peak_sets_; }
  std::int64_t offloaded_bytes() const { return offloaded_bytes_; }
  int live_sets() const { return static_cast<int>(sets_.size()); }
  // Starts a new step's peaks. REQUIRES: no live sets.
  void reset_step();

 private:
  enum class Where { kDevice, kHost, kToDevice };  // kHost: offload started
  struct Entry {
    ActivationSet set;
    Where where = Where::kDevice;
  };
  using Key = std::pair<int, int>;

  // Waits for in-flight copies when a new set of `chunk` would exceed the budget.
  double make_room(int chunk);
  std::int64_t current_bytes() const;  // device bytes the sets hold now (after a poll)

  std::map<Key, Entry> sets_;
  ActivationOffload* offload_ = nullptr;
  std::int64_t budget_bytes_ = 0;          // 0: no limit
  std::vector<std::int64_t> set_bytes_;    // expected bytes of a new set, per local chunk
  double host_link_wait_ = 0;              // waited in reload(), reported by the next acquire()
  std::int64_t pending_bytes_ = 0;         // expected bytes of sets created since account()
  std::int64_t resident_bytes_ = 0;
  std::int64_t peak_bytes_ = 0;
  int peak_sets_ = 0;
  std::int64_t offloaded_bytes_ = 0;
};

}  // namespace stp::engine
