// The `stp train` job on one rank: configuration -> data -> (resume candidates, or
// model.init_from) -> world and model (GPT or Llama) -> (the checkpoint every rank resumes from)
// -> steps with progress, metrics, checkpoints -> summary, plots and the measured timeline. It
// reads no environment beyond the launch edge (engine::launch_env_from_environment) and prints
// nothing itself: its text goes to TrainJobOptions::say.
//
// Every rank of the job runs run_train_job with the same configuration (typically under
// `stp run -n N -- stp train ...`); the world size must be dp * pp * tp.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "train/train_config.h"

namespace stp::train {

struct TrainJobOptions {
  // Continue from the newest complete checkpoint, if any; one whose shard fails its size or
  // checksum on any rank is skipped (with a warning naming it) for the next older intact one.
  // A checkpoint saved in another layout (tp, pp, dp, schedule) is resharded on load (Note
  // [Resharding] in checkpoint/reshard.h); another model or optimizer stops the run.
  bool resume = false;
  // Continue from this checkpoint folder (DIR/step_N) and no other: any problem stops the run.
  // Non-empty implies resume.
  std::string resume_from;
  int stop_after = 0;  // > 0: stop (like a crash, without the final checkpoint) after this
                       // many steps of this run — for tests of resume
  // Fault injection for the resume tests (a test hook): rank `kill_rank` SIGKILLs itself in the
  // middle of step `kill_at_step` (after its forward work began), as a crash would. -1: never.
  std::int64_t kill_at_step = -1;
  int kill_rank = 0;
  // Where the job's text goes on rank 0 (stp train: stdout): resolved configuration, data,
  // progress, summary. Empty: nowhere.
  std::function<void(const std::string&)> say;
  bool live_bar = false;  // progress as one rewritten line (the sink is a terminal)
};

struct TrainJobResult {
  std::int64_t first_step = 0;  // the step this run started at (0 unless resumed)
  std::int64_t last_step = 0;   // the last step completed
  double first_loss = 0;
  double final_loss = 0;
};

TrainJobResult run_train_job(const TrainConfig& config, const TrainJobOptions& options);

}  // namespace stp::train
