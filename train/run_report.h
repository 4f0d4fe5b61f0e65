// RunReport: what `stp train` tells the user while and after it trains — a progress line per
// step on rank 0 (a live bar on a terminal, a line every few steps in a log), the same figures
// as JSON lines in <log_dir>/metrics.jsonl, and at the end a summary, a plot of loss and
// throughput (<log_dir>/training.svg) and the measured timeline of one step next to the
// simulator's prediction (<log_dir>/timeline.svg, <log_dir>/timeline.json for Perfetto).
//
// Thread-safety: one rank's thread.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "schedule/cost_model.h"
#include "schedule/program.h"
#include "schedule/timeline.h"

namespace stp::train {

// One step's figures over all ranks (the slowest rank's waits and memory).
struct StepMetrics {
  std::int64_t step = 0;  // 1-based
  double loss = 0;
  double lr = 0;
  double grad_norm = 0;
  double seconds = 0;       // step wall time, slowest rank
  double tokens_per_s = 0;  // tokens of the whole job / seconds
  double exposed_comm = 0;  // fraction of the step blocked on TP collectives, worst rank
  double pp_idle = 0;       // fraction blocked on pipeline receives, worst rank
  double reload_wait = 0;   // fraction blocked on activation reloads, worst rank
  std::int64_t peak_activation_bytes = 0;  // worst rank
  std::int64_t offloaded_bytes = 0;        // worst rank, this step
  // The device allocator's peaks this step, worst rank (engine::StepStats); -1: not
  // available (the CPU), written as null.
  std::int64_t device_allocated_peak_bytes = -1;
  std::int64_t device_reserved_peak_bytes = -1;
};

std::string to_json_line(const StepMetrics& m);

// The per-pass compute times a measured timeline implies (means over its standalone
// instructions; a missing kind falls back to the forward time): the costs the simulator
// predicts a step with, so prediction and measurement can be compared.
schedule::CostModel fit_costs(const std::vector<schedule::TimelineEvent>& events, int stages);

class RunReport {
 public:
  // Where the report's text goes (stp train: stdout); each call is whole lines, or with
  // live_bar a "\r"-led progress line.
  using Say = std::function<void(const std::string&)>;
  // REQUIRES: rank 0 only writes; other ranks may construct it with enabled = false.
  RunReport(std::string log_dir, std::int64_t total_steps, bool enabled, bool live_bar, Say say);

  void step(const StepMetrics& m);
  // Writes training.svg and prints the summary.
  void finish(const std::string& title);

  const std::vector<StepMetrics>& history() const { return history_; }

 private:
  std::string log_dir_;
  std::int64_t total_steps_;
  bool enabled_;
  bool live_bar_;
  Say say_;
  std::FILE* jsonl_ = nullptr;
  std::vector<StepMetrics> history_;
};

// Each rank writes its events of one step to <dir>/rank_<r>.json; rank 0 then (after a
// barrier) reads them all and writes the measured timeline and the simulated one for the same
// program as <log_dir>/timeline.svg and timeline.json.
void write_rank_events(const std::string& dir, int rank,
                       const std::vector<schedule::TimelineEvent>& events);
std::vector<schedule::TimelineEvent> read_rank_events(const std::string& dir, int ranks);
void write_timelines(const std::string& log_dir, const schedule::Program& program,
                     const std::vector<schedule::TimelineEvent>& measured,
                     const std::string& title);

}  // namespace stp::train
