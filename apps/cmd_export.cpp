// `stp export --format hf`: an stp checkpoint (any tp x pp x dp layout) as a Hugging Face model
// folder that `transformers` loads with from_pretrained (checkpoint/hf.h does the work).
#include <cstdio>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hf.h"
#include "cli.h"
#include "command.h"
#include "common/check.h"

namespace stp::apps {
namespace {

int export_checkpoint(const std::vector<std::string>& args) {
  std::string format, checkpoint, out;
  CLI::App app{"Write an stp checkpoint as a Hugging Face model folder", "stp export"};
  app.add_option("--format", format, "output format: hf (config.json + model.safetensors)")
      ->required();
  app.add_option("--checkpoint", checkpoint,
                 "a checkpoint (DIR/step_N) or a run's checkpoint folder (its newest complete one)")
      ->required();
  app.add_option("--out", out, "folder to write (created if missing)")->required();
  if (int rc = parse(app, args); rc >= 0) return rc;
  STP_CHECK(format == "hf", "--format=", format, " is not supported (formats: hf)");
  const std::string step_dir = checkpoint::resolve_checkpoint(checkpoint);
  const checkpoint::HfExportResult r = checkpoint::export_checkpoint_to_hf(step_dir, out);
  std::printf("stp export: %s -> %s (%s, %lld tensors from %lld rank shards)\n", step_dir.c_str(),
              out.c_str(), r.architecture.c_str(), static_cast<long long>(r.tensors),
              static_cast<long long>(r.ranks_read));
  return 0;
}

STP_REGISTER_COMMAND("export", "write a checkpoint as a Hugging Face model folder (--format hf)",
                     export_checkpoint);

}  // namespace
}  // namespace stp::apps
