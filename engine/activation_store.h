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
//   offload(share)      ─►  kHost      start_offload() queued the D2H of the moved fields:
//                                      every field (share 1), or the leading ones of
//                                      saved_order() up to share of the bytes (Note [Partial
//                                      sets]); the others stay resident, readable, and count.
//                                      On CUDA the moved fields are dropped at once (stream-
//                                      ordered release: the names stay, the fields are
//                                      undefined). On CPU two offloader states hide here:
//                                      kToHost (the copy runs; the moved fields still hold their
//                                      tensors, which still count) and kOnHost (a poll() saw the
//                                      D2H complete and dropped them)
//   reload()            ─►  kToDevice  start_reload() allocated new tensors for the moved fields
//                                      at once (they count) and queued the H2D into them: not to
//                                      be read yet. On CPU, if the D2H was still running, the
//                                      offloader cancels the round trip instead and the fields
//                                      keep their original tensors
//   acquire()           ─►  kDevice    wait_reload() returned: the H2D completed (CPU) or the
//                                      compute stream waits for it (CUDA)
//   release_if_empty()  ─►  (gone)     only from kDevice, once B/W erased every field
//
// acquire() of a kHost set, offload() of a set that is not kDevice and reload() of one that is
// not kHost throw std::logic_error (the program is wrong, e.g. no RELOAD before the backward).
// offload()/reload() with no offloader attached throw std::invalid_argument (offload is off). A
// set away from the device is never dropped by release_if_empty(), so reset_step() catches one
// left behind at the end of a step.
//
// Who waits on what. Every method runs on the rank's executor thread; the copies run on the
// CopyEngine (CUDA: one stream per direction; CPU: worker threads). On CUDA "compute" is the
// current stream of the model's device (Note [Offload streams] in offload/device_ops.h).
//   - The D2H waits for the forward that wrote the set: on CUDA for an event recorded on the
//     compute stream in start_offload(); on CPU for nothing (the forward ran on this thread).
//   - A set's device memory is released
//       CUDA: in start_offload(), right after its D2H was queued: each field's storage is
//         recorded on the D2H stream (the caching allocator's recordStream) and the field
//         dropped, so the allocator reuses the memory only after the copy, in stream order;
//       CPU: by poll(), which account() (after every compute instruction) and make_room()
//         call, once the host saw the D2H complete.
//   - The H2D waits for an event recorded on the compute stream in reload() (all compute
//     queued before the RELOAD: its target memory was just allocated there) and for the set's
//     D2H (the host blocks it reads). On CPU a RELOAD while the D2H still runs cancels the
//     round trip instead (the originals were not released yet).
//   - acquire() consumes a reload: on CUDA the compute stream waits for the H2D's event (no
//     host wait: wait_reload() -> Offloader::wait(key, stream)); on CPU the host waits.
//   - The pinned pool reuses a set's host blocks only after its D2H and H2D events completed.
//
// The device budget (set_budget). A limit on the bytes the sets hold, enforced only with an
// offloader attached and budget_bytes > 0, and only for chunks given an expected set size.
// make_room() counts current_bytes() (bytes() of every live set after a poll(): resident sets
// and the fields a partial offload left, offloads not yet released, reloads' new tensors) plus
// pending_bytes_ (the expected size of every set created or reloaded since the last account():
// a new set is empty until its forward runs, and a braided FF creates two before either runs)
// plus the expected size of what is about to be created or reloaded: a new set is expected at
// set_bytes[c]; a reload at the bytes its offload moved (exact: what start_reload() allocates;
// share * the set, rounded up to whole fields, for a partial trip; for the trip between B and
// W, what W reads); in acquire(), one set's worth for the backward about to grow it (B writes
// what W reads and a recomputed set rebuilds its fields, growth the planner's copy timing
// cannot promise is covered on a loaded host). If that exceeds the budget:
//   CUDA (stream-ordered release): nothing to wait for. Every offload left the count when its
//     D2H was queued, and the allocator hands its memory to later allocations as soon as the
//     copy ran, in stream order; a host synchronisation could free nothing more.
//   CPU: drain() waits on the host for every copy in flight (both directions, every set) and
//     polls. Its seconds go to create()'s *waited, or, for reload(), to the next acquire()'s
//     *waited (the executor reports both as reload wait).
// There is no second check: when too little could be freed (nothing was in flight, or the
// expected sizes were wrong) the create or reload goes ahead over the budget; the overshoot shows
// in peak_bytes() and is not an error.
// Not counted: weights, gradients, P2P buffers, autograd temporaries, allocator caching, and on
// CUDA the memory of released offloads whose D2H has not run yet (the allocator keeps it until
// then: the host may be ahead of the device, so the budget is one in stream order); a field
// sharing storage with another tensor counts in full. peak_bytes() is sampled at account(), not
// a device high-water mark. A reloaded set counts twice (its new tensors and its expected size)
// until the next account(), which OFFLOAD and RELOAD instructions do not call: conservative, it
// can only cause an early drain.
//
// A cancelled round trip (CPU: RELOAD while the D2H still ran) hands back the original tensors:
// acquire()'s wait then waits for that D2H, which still reads them (Note [Offload lifetime]).
//
// Thread-safety: one rank's executor thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/activation_set.h"
#include "engine/step_stats.h"

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
  // would be exceeded, create() waits for those copies on the CPU (the planner's timing was
  // optimistic); on CUDA offloads are released in stream order and nothing waits.
  void set_budget(std::int64_t budget_bytes, std::vector<std::int64_t> set_bytes);

  // REQUIRES: no live set for (chunk, mb). Adds the seconds it waited for the host link (see
  // set_budget) to *waited.
  ActivationSet& create(int chunk, int mb, double* waited = nullptr);
  // The set, resident and ready. Waits for its reload if one is in flight; adds the seconds
  // blocked to *waited. REQUIRES: the set exists and is not on host without a reload.
  ActivationSet& acquire(int chunk, int mb, double* waited = nullptr);
  // Drops the set when its passes emptied it.
  void release_if_empty(int chunk, int mb);

  // Starts moving `share` of the set to host (Note [Partial sets] in schedule/program.h): the
  // fields its backward reads last, at least share of its bytes; share 1 moves the whole set.
  // REQUIRES: share in (0, 1].
  void offload(int chunk, int mb, double share = 1);
  // Starts bringing back what the set's offload moved.
  void reload(int chunk, int mb);

  // The trips of this step that moved part of a set (engine/step_stats.h), in program order;
  // reset_step() clears them.
  const std::vector<PartialTrip>& partial_trips() const { return partial_trips_; }

  // Call after every compute: refreshes resident bytes from the sets and updates the peaks.
  void account();
  std::int64_t resident_bytes() const { return resident_bytes_; }
  std::int64_t peak_bytes() const { return peak_bytes_; }
  int peak_sets() const { return peak_sets_; }
  // Bytes the offloads of this step moved to host (a partial trip counts what it moved).
  std::int64_t offloaded_bytes() const { return offloaded_bytes_; }
  int live_sets() const { return static_cast<int>(sets_.size()); }
  // Starts a new step's peaks. REQUIRES: no live sets.
  void reset_step();

 private:
  enum class Where { kDevice, kHost, kToDevice };  // kHost: offload started
  struct Entry {
    ActivationSet set;
    Where where = Where::kDevice;
    std::int64_t moved_bytes = 0;  // what its last offload moved: what its reload allocates
    bool acquired = false;         // a backward (B / BW) read it: a later trip is B -> W
  };
  using Key = std::pair<int, int>;

  // Waits for in-flight copies when `expected` more bytes would exceed the budget (expected < 0:
  // not budgeted).
  double make_room(std::int64_t expected);
  // set_bytes[chunk], or -1 for a chunk given no expected size.
  std::int64_t expected_set_bytes(int chunk) const;
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
  std::vector<PartialTrip> partial_trips_;
};

}  // namespace stp::engine
