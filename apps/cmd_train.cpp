// `stp train [--config FILE] [--set section.key=value ...] [--resume | --resume-from DIR]`: the
// main job. With no
// config it trains the embedded default (a small GPT, TP 2 x PP 2, the STP schedule, an offload
// budget that makes the planner offload) on a generated corpus:
//   stp run -n 4 -- stp train
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "cli.h"
#include "command.h"
#include "common/check.h"
#include "train/train_config.h"
#include "train/train_job.h"

namespace stp::apps {
namespace {

int train(const std::vector<std::string>& args) {
  std::string config_path;
  std::vector<std::string> sets;
  bool resume = false;
  int stop_after = 0;
  CLI::App app{"Train a GPT with the STP engine (run under `stp run -n N --`)", "stp train"};
  app.add_option("--config", config_path, "JSON config file (docs/config.md)");
  app.add_option("--set", sets, "override one field: section.key=value (repeatable)");
  std::string resume_from;
  app.add_flag("--resume", resume,
               "continue from the newest complete checkpoint (skipping corrupt ones, with a "
               "warning)");
  app.add_option("--resume-from", resume_from,
                 "continue from this checkpoint (DIR/step_N) and no other");
  app.add_option("--stop-after", stop_after,
                 "stop after N steps without a final checkpoint (tests)")
      ->check(CLI::NonNegativeNumber);
  bool reference = false;
  app.add_flag("--config-reference", reference, "print every config field as a markdown table");
  if (int rc = parse(app, args); rc >= 0) return rc;
  if (reference) {
    std::printf("%s", train::config_reference_markdown().c_str());
    return 0;
  }
  const train::TrainConfig cfg = train::load_config(config_path, sets);
  train::TrainJobOptions opts;
  opts.resume = resume || !resume_from.empty();
  opts.resume_from = resume_from;
  opts.stop_after = stop_after;
  opts.say = [](const std::string& text) {
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  };
  opts.live_bar = isatty(STDOUT_FILENO);
  // The resume tests' fault injection (train/train_job.h): STP_FAULT_KILL_AT_STEP=N and
  // STP_FAULT_KILL_RANK=r make rank r SIGKILL itself in the middle of step N.
  if (const char* step = std::getenv("STP_FAULT_KILL_AT_STEP"))
    opts.kill_at_step = std::atoll(step);
  if (const char* rank = std::getenv("STP_FAULT_KILL_RANK")) opts.kill_rank = std::atoi(rank);
  train::run_train_job(cfg, opts);
  return 0;
}

STP_REGISTER_COMMAND("train", "train a GPT (the main job; run it under `stp run -n N --`)", train);

}  // namespace
}  // namespace stp::apps
