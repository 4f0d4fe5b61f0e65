// ActivationStore: the ActivationSets of one rank, by (chunk, microbatch), with exact accounting
// of the bytes they hold on the device and, when an offloader is attached, their trips to host
// memory and back (Note [Offload lifetime] in offload/offloader.h).
//
// A set is created by its forward, read by its backward and weight-gradient passes, and released
// when it is empty. offload() starts moving a set's tensors to host; reload() starts bringing
// them back into fresh device tensors; acquire() returns the set ready for compute, waiting only
// for that set's own reload. See Note [Activation store].
//
// Note [Activation store]
// ~~~~~~~~~~~~~~~~~~~~~~~
// States. The store keeps one Where per set. The Offloader underneath has finer states (Note
// [Offload lifetime]); the store sees them only through ActivationSet::bytes():
//
//   create()            ─►  kDevice    resident: the forward fills the fields, B and W read them
//   offload()           ─►  kHost      start_offload() queued the D2H of every field. Two offloader
//                                      states hide here: kToHost (the copy runs; the fields still
//                                      hold their tensors, which still count) and kOnHost (a
//                                      poll() saw the D2H complete and dropped the tensors: the
//                                      names stay, the fields are undefined, bytes() is 0)
//   reload()            ─►  kToDevice  start_reload() allocated new tensors at once (they count)
//                                      and queued the H2D into them: not to be read yet. If the
//                                      D2H was still running, the offloader cancels the round
//                                      trip instead and the fields keep their original tensors
//   acquire()           ─►  kDevice    wait_reload() returned: the H2D completed
//   release_if_empty()  ─►  (gone)     only from kDevice, once B/W erased every field
//
// acquire() of a kHost set, offload() of a set that is not kDevice and reload() of one that is
// not kHost throw std::logic_error (the program is wrong, e.g. no RELOAD before the backward).
// offload()/reload() with no offloader attached throw std::invalid_argument (offload is off). A
// set away from the device is never dropped by release_if_empty(), so reset_step() catches one
// left behind at the end of a step.
//
// Who waits on what. Every method runs on the rank's executor thread; the copies run on the
// CopyEngine (CUDA: one stream per direction; CPU: worker threads).
//   - The D2H waits for the forward that wrote the set: on CUDA for an event recorded on the
//     legacy default stream in start_offload(); on CPU for nothing (the forward ran on this
//     thread).
//   - The executor thread frees an offloaded set's device memory: poll(), which account() (after
//     every compute instruction) and make_room() call, runs the release closures of the sets
//     whose D2H event has completed. Nothing is freed in stream order.
//   - The H2D waits, on CUDA, for an event recorded on the legacy default stream in reload(),
//     that is for all compute queued before the RELOAD (its target memory was just allocated).
//   - acquire() waits for the H2D on the host, on both backends: wait_reload() ->
//     Offloader::wait(key) -> CopyEvent::synchronize().
//   - The pinned pool reuses a set's host blocks only after its D2H and H2D events completed.
//
// The device budget (set_budget). A limit on the bytes the sets hold, enforced only with an
// offloader attached and budget_bytes > 0, and only for chunks given an expected set size.
// make_room() counts current_bytes() (bytes() of every live set after a poll(): resident sets,
// offloads whose D2H was not yet seen complete, reloads' new tensors) plus pending_bytes_ (the
// expected size of every set created or reloaded since the last account(): a new set is empty
// until its forward runs, and a braided FF creates two before either runs) plus the expected
// size of the set about to be created or reloaded. If that exceeds the budget, drain() waits on
// the host for every copy in flight (both directions, every set) and polls. There is no second
// check: when the drain freed too little (nothing was in flight, or the expected sizes were
// wrong) the create or reload goes ahead over the budget; the overshoot shows in peak_bytes() and
// is not an error. The drain's seconds go to create()'s *waited, or, for reload(), to the next
// acquire()'s *waited (the executor reports both as reload wait).
// Not counted: weights, gradients, P2P buffers, autograd temporaries, allocator caching; a field
// sharing storage with another tensor counts in full. peak_bytes() is sampled at account(), not
// a device high-water mark. A reloaded set counts twice (its new tensors and its expected size)
// until the next account(), which OFFLOAD and RELOAD instructions do not call: conservative, it
// can only cause an early drain.
//
// Known wrong on CUDA today (gpu-review items 8 and 9; not fixed here):
//   - Reloads wait on the host (item 8). acquire() of a reloaded set blocks the executor thread
//     in cudaEventSynchronize on the H2D, which was queued behind all compute issued before the
//     RELOAD, so every backward of a reloaded set drains the GPU's queue. The stream wait
//     Offloader::wait(key, stream) exists and is not used.
//   - The budget is enforced by host synchronisation (item 9). drain() is a
//     cudaStreamSynchronize of both copy streams, and device memory comes back only when the
//     host polls a completed D2H (no recordStream, no stream-ordered free). Today the other host
//     waits keep the host close to the GPU; once they are gone the host runs ahead, D2Hs look
//     pending and every over-budget create() or reload() becomes a full host synchronisation.
//   - The events above are recorded on the legacy default stream of the calling thread's current
//     device (item 3): right only while nothing sets a current stream.
//   - A cancelled round trip (RELOAD while the D2H still ran) hands back the original tensors:
//     acquire()'s wait then waits for that D2H, which still reads them (Note [Offload
//     lifetime]); before that fix a backward that freed them let a copy worker read freed memory.
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
  std::int64_t budget_bytes_ = 0;        // 0: no limit
  std::vector<std::int64_t> set_bytes_;  // expected bytes of a new set, per local chunk
  double host_link_wait_ = 0;            // waited in reload(), reported by the next acquire()
  std::int64_t pending_bytes_ = 0;       // expected bytes of sets created/reloaded since account()
  std::int64_t resident_bytes_ = 0;
  std::int64_t peak_bytes_ = 0;
  int peak_sets_ = 0;
  std::int64_t offloaded_bytes_ = 0;
};

}  // namespace stp::engine
