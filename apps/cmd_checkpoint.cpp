// `stp checkpoint reshard`: a checkpoint of one layout written as a checkpoint of another
// (tp, pp, dp, schedule, 1f1b-i's chunks), which a run in that layout resumes with --resume-from
// (checkpoint/reshard.h does the work; Note [Resharding]).
#include <cstdio>

#include "checkpoint/checkpoint.h"
#include "checkpoint/reshard.h"
#include "cli.h"
#include "command.h"
#include "common/check.h"
#include "schedule/generators.h"

namespace stp::apps {
namespace {

int reshard(const std::vector<std::string>& args) {
  std::string checkpoint, out, kind;
  int tp = 0, pp = 0, dp = 0, microbatches = 0, chunks = 0;
  CLI::App app{"Write a checkpoint in another parallel layout", "stp checkpoint reshard"};
  app.add_option("--checkpoint", checkpoint,
                 "a checkpoint (DIR/step_N) or a run's checkpoint folder (its newest complete one)")
      ->required();
  app.add_option("--out", out,
                 "the checkpoint folder to write (must not exist); resume with --resume-from OUT")
      ->required();
  app.add_option("--tp", tp, "tensor-parallel size")->required()->check(CLI::Range(1, 1024));
  app.add_option("--pp", pp, "pipeline-parallel size")->required()->check(CLI::Range(1, 1024));
  app.add_option("--dp", dp, "data-parallel size (default: the checkpoint's)")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--schedule", kind, "schedule kind (default: the checkpoint's)");
  app.add_option("--microbatches", microbatches,
                 "microbatches per step (default: the checkpoint's)")
      ->check(CLI::Range(1, 1 << 16));
  app.add_option("--chunks", chunks,
                 "1f1b-i: model chunks per rank (default: the checkpoint's, or 2 from another "
                 "schedule; the other schedules have their own)")
      ->check(CLI::Range(1, 64));
  if (int rc = parse(app, args); rc >= 0) return rc;
  const std::string from = checkpoint::resolve_checkpoint(checkpoint);
  const checkpoint::Manifest m = checkpoint::read_manifest(from);
  checkpoint::ReshardOptions o;
  o.layout = m.info.layout;
  o.layout.tp = tp;
  o.layout.pp = pp;
  if (dp > 0) o.layout.dp = dp;
  if (!kind.empty()) o.layout.schedule = schedule::to_string(schedule::kind_from_string(kind));
  if (microbatches > 0) o.layout.microbatches = microbatches;
  o.layout.world = o.layout.dp * o.layout.pp * o.layout.tp;
  // The checkpoint's chunks stay with its schedule kind; another kind starts at its default.
  if (chunks > 0)
    o.layout.chunks = chunks;  // reshard_checkpoint refuses what the kind does not take
  else if (o.layout.schedule != m.info.layout.schedule)
    o.layout.chunks = 0;
  const checkpoint::ReshardResult r = checkpoint::reshard_checkpoint(from, out, o);
  const std::string change = checkpoint::layout_change(m.info.layout, o.layout);
  std::printf(
      "stp checkpoint reshard: step %lld saved as %s -> %s (%d shards read, %lld tensors "
      "in %d shards)\n",
      static_cast<long long>(r.step), change.empty() ? "this layout (copied)" : change.c_str(),
      r.out.c_str(), r.files_read, static_cast<long long>(r.tensors), o.layout.world);
  return 0;
}

STP_REGISTER_COMMAND(
    "checkpoint reshard",
    "write a checkpoint in another layout (--tp, --pp, --dp, --schedule, --chunks)", reshard);

}  // namespace
}  // namespace stp::apps
