// The offload planner's search (Note [Offload planning] in offload/planner.h), internal to
// offload/: the trips a plan may make, a Choice (per trip: left on the device or reloaded `lead`
// compute instructions before its consumer; per set: recomputed or not), the Program and the
// simulation of a Choice, and the steps plan_offload() composes: greedy, prune, descend,
// reload_earlier, improve.
//
// Thread-safety: a Search is used by one thread; the free functions are pure apart from it.
#pragma once

#include <vector>

#include "offload/planner.h"
#include "schedule/cost_model.h"
#include "schedule/program.h"
#include "schedule/simulate.h"

namespace stp::offload::detail {

constexpr int kNotOffloaded = -1;  // lead of a candidate the plan leaves on the device

bool fits(double peak, double budget);
bool fits_all(const schedule::SimResult& sim, double budget);
// Byte-seconds above `budget`, summed over ranks: how far a plan is from fitting.
double excess(const schedule::SimResult& sim, double budget);

// A trip the plan may make, located in the input Program: a set from its forward to its
// backward, or (w_held) what a deferred W holds from its B to its W.
struct Candidate {
  int rank = 0, chunk = 0, stage = 0, mb = 0;
  int set = 0;                   // stage * m + mb
  bool w_held = false;           // the second trip: B to W
  int f_instr = 0, b_instr = 0;  // indices in program.ranks[rank]: the producer, the consumer
  int f_pos = 0, b_pos = 0;      // positions among the rank's compute instructions
  double bytes = 0;              // bytes the trip moves when its set is not recomputed
  int max_lead() const { return b_pos - 1 - f_pos; }
};

// Where a set (stage, mb) lives in the input Program: its forward and backward instructions.
struct SetSpan {
  int rank = 0, f_instr = -1, b_instr = -1;
};

// What a plan does: per candidate a reload lead or kNotOffloaded and the share of the trip it
// moves; per set (stage * m + mb) the share of its layers its backward recomputes (Note
// [Recompute], Note [Partial sets] in schedule/program.h). Shares are counted in steps of
// 1/kShareSteps: kShareSteps is the whole, 0 (recompute) none.
struct Choice {
  std::vector<int> lead;
  std::vector<char> share;      // per candidate, in [1, kShareSteps]
  std::vector<char> recompute;  // per set, in [0, kShareSteps]
  friend bool operator==(const Choice&, const Choice&) = default;
};

// Compute-instruction times of one simulation, by rank and index in the input Program.
struct Times {
  std::vector<std::vector<double>> start, end, reload_wait;  // [rank][index]
};

class Search {
 public:
  Search(const schedule::Program& program, const schedule::CostModel& costs,
         const PlanOptions& options);

  const std::vector<Candidate>& candidates() const { return cands_; }
  const std::vector<SetSpan>& sets() const { return spans_; }
  const schedule::Program& program() const { return prog_; }
  const schedule::CostModel& costs() const { return costs_; }
  int simulations() const { return sims_; }
  bool budget_left() const { return sims_ < options_.max_simulations; }
  bool partial_sets() const { return options_.partial_sets; }

  // Nothing offloaded; the sets marked recompute in the input stay marked, and `all` marks
  // every other one too.
  Choice initial(bool all) const;
  // `from` with every candidate offloaded, each reload at the lead that hides its copy in the
  // timeline of `from` (memory aside).
  Choice all_offloaded(const Choice& from);
  // The input's own recompute marks (a fixed choice).
  bool fixed_recompute(int set) const { return fixed_[set] != 0; }
  // The share of the set's layers recomputed under `choice` (0: none; the input's own share
  // for a fixed mark).
  double recompute_share(const Choice& choice, int set) const;

  // Bytes the trip moves under `choice` (a recomputed set's first trip moves from what it
  // keeps; a partial trip its share of that). REQUIRES: k is an element of candidates().
  double bytes(const Candidate& k, const Choice& choice) const;
  // The same with the whole trip (share 1).
  double whole_bytes(const Candidate& k, const Choice& choice) const;
  double transfer(const Candidate& k, const Choice& choice) const;  // seconds of one copy

  // The input with the choice applied; new_index maps [rank][input index] to the index in the
  // result; copy_of maps [rank][result index] of each OFFLOAD / RELOAD to its candidate.
  schedule::Program build(const Choice& choice, std::vector<std::vector<int>>* new_index,
                          std::vector<std::vector<int>>* copy_of = nullptr) const;
  schedule::SimResult simulate(const Choice& choice, Times* times = nullptr);

  // The smallest lead whose span covers the trip's transfer in `t`, else the largest lead.
  int initial_lead(const Candidate& k, const Choice& choice, const Times& t) const;
  // Bytes of the smallest candidate trip under `choice` (a descent's step).
  double smallest_set(const Choice& choice) const;
  // Per candidate: seconds from its producer's end to its consumer's start, without offload.
  std::vector<double> idle_without_offload();

 private:
  void find_candidates();

  const schedule::Program& prog_;
  const schedule::CostModel& costs_;
  const PlanOptions options_;
  std::vector<std::vector<int>> compute_;  // [rank] input indices of compute instructions
  std::vector<Candidate> cands_;
  std::vector<SetSpan> spans_;       // (S*m)
  std::vector<char> fixed_;          // (S*m) marked recompute in the input
  std::vector<double> fixed_share_;  // (S*m) their Part::recompute_share
  int sims_ = 0;
};

// Greedy towards `budget`: on each rank over it, offload the set idle longest at the rank's
// first excess; when no rank can add one, drop the offloads that do not help. Returns whether
// every rank fits.
bool greedy(Search& search, Choice& choice, double budget, const std::vector<double>& idle);
// Drops offloads (shortest idle first) the budget does not need; returns how many.
int prune(Search& search, Choice& choice, double budget, const std::vector<double>& idle,
          std::vector<char>* banned = nullptr);

struct Trial {
  Choice choice;
  double peak = 0;
};
// Plans found pushing the peak down one set at a time from `start` (greedy, then improve when
// the greedy gets stuck); then everything offloaded.
std::vector<Trial> descend(Search& search, const Choice& start, const std::vector<double>& idle,
                           bool allow_recompute);
double lowest_peak(const std::vector<Trial>& trials);

// Moves reloads whose consumer waits one compute instruction earlier while the budget holds
// and the step gets shorter.
void reload_earlier(Search& search, Choice& choice, double budget);

// Local search from a plan (feasible or not) towards the shortest step under the budget, by
// single moves judged in simulation (see Note [Offload planning]). allow_recompute adds the
// recompute moves (mark a set, unmark one the search marked).
void improve(Search& search, Choice& choice, double budget, bool allow_recompute);

// Within budget (Note [Partial sets]): one pass lowering each partial-capable share (a trip's,
// a recomputed set's) one step at a time while the step gets shorter and the budget holds.
// Kept out of improve(): lowering shares there multiplies its passes.
void lower_shares(Search& search, Choice& choice, double budget, bool allow_recompute);

// Most bytes a rank holds on host at once (the pinned pool to reserve); with whole_trips, as if
// each partial trip moved its whole set at the same times (an executor moves whole fields, so
// at least the share and at most the whole: Note [Partial sets]).
double host_footprint(const Search& search, const Choice& choice, const schedule::SimResult& sim,
                      const std::vector<std::vector<int>>& copy_of, bool whole_trips = false);

}  // namespace stp::offload::detail
