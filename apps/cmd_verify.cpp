// `stp verify`: trust a layout before spending GPU hours on it (train/verify_layout.h runs it;
// this prints the report). Exits 1 when the loss or a gradient is off by more than --tolerance.
#include <cstdio>

#include "cli.h"
#include "command.h"
#include "common/bytes.h"
#include "common/check.h"
#include "engine/comm_options.h"
#include "engine/offload_plan.h"
#include "train/verify_layout.h"

namespace stp::apps {
namespace {

int verify(const std::vector<std::string>& args) {
  train::VerifyOptions a;
  CLI::App app{"Check a TP x PP layout and schedule against a single-process float64 reference",
               "stp verify"};
  app.add_option("--tp", a.tp, "tensor-parallel size")->check(CLI::Range(1, 64));
  app.add_option("--pp", a.pp, "pipeline-parallel size")->check(CLI::Range(1, 64));
  app.add_option("--schedule", a.schedule, "1f1b, 1f1b-i, zb-h1, zb-v or stp");
  app.add_option("--microbatches", a.microbatches,
                 "microbatches (default: the smallest the schedule takes, at least 4)");
  app.add_option("--offload-budget", a.budget,
                 "off, bytes (2GiB) or a % of the unconstrained peak");
  app.add_option("--recompute", a.recompute,
                 "auto (default: the offload planner chooses), off, or all (every activation "
                 "set recomputed in its backward)");
  app.add_option("--recompute-share", a.recompute_share,
                 "with --recompute all: the leading share of each chunk's layers a set "
                 "recomputes, in (0, 1] (default 1: every layer)");
  app.add_option("--tolerance", a.tolerance, "largest accepted relative error");
  app.add_option("--seed", a.seed, "model and data seed");
  app.add_option("--model", a.model, "gpt (default) or llama");
  app.add_option("--kv-heads", a.kv_heads,
                 "llama: key/value heads, dividing the 4*tp query heads (0: half of them; fewer "
                 "than tp: replicated over TP)");
  app.add_option("--rope-theta", a.rope_theta, "llama: rotary base (default 10000)");
  app.add_flag("--tie-embeddings", a.tie_embeddings,
               "llama: the LM head reuses the token embedding (one stage: --pp 1, 1f1b or zb-h1)");
  app.add_option("--threads", a.threads,
                 "CPU threads per rank (0: OMP_NUM_THREADS if set, else the cores / the ranks)");
  app.add_option(
      "--device", a.device,
      "cpu (default) or cuda: every rank's model, executor, streams and offload on a GPU "
      "(local rank r on GPU r modulo the visible ones; still float64)");
  app.add_option("--comm", a.comm,
                 "auto (default), gloo or nccl; auto takes gloo when several ranks share one GPU "
                 "(gloo stages CUDA tensors through pinned host memory; NCCL refuses that)");
  if (int rc = parse(app, args); rc >= 0) return rc;

  const train::VerifyReport r = train::verify_layout(a, engine::launch_env_from_environment());
  if (!r.lead) return 0;  // rank 0 reports for the job
  std::string model;      // the GPT's line is unchanged
  if (a.model == "llama")
    model =
        str_printf("model=llama kv_heads=%lld rope_theta=%g%s ", static_cast<long long>(r.kv_heads),
                   a.rope_theta, a.tie_embeddings ? " tied_embeddings" : "");
  const std::string where = r.where == "cpu" ? "" : ", " + r.where;  // the CPU line is unchanged
  std::string recompute = a.recompute == "auto" ? "" : " recompute=" + a.recompute;
  if (a.recompute_share < 1) recompute += str_printf(" share=%g", a.recompute_share);
  std::printf(
      "stp verify: %sschedule=%s tp=%d pp=%d microbatches=%d offload=%s%s (float64, %lld "
      "layers%s)\n",
      model.c_str(), a.schedule.c_str(), a.tp, a.pp, r.microbatches, a.budget.c_str(),
      recompute.c_str(), static_cast<long long>(r.layers), where.c_str());
  std::printf("  activation peak %s per rank (measured), %s offloaded and reloaded\n",
              format_bytes(static_cast<double>(r.peak_bytes)).c_str(),
              format_bytes(static_cast<double>(r.offloaded_bytes)).c_str());
  if (!r.partial_trips.empty())  // Note [Partial sets]: which fields those trips moved
    std::printf("  partial offloads on rank 0 (chunk[microbatches] share: fields moved):\n%s",
                engine::describe_partial_trips(r.partial_trips, 8, "    ").c_str());
  std::printf("  loss %.15f   reference %.15f   |diff| %.3e\n", r.loss, r.reference_loss,
              r.loss_diff);
  std::printf("  max relative gradient error %.3e%s%s\n", r.max_rel, r.worst.empty() ? "" : " at ",
              r.worst.c_str());
  std::printf("%s (tolerance %.1e)\n", r.ok ? "OK" : "FAILED", a.tolerance);
  return r.ok ? 0 : 1;
}

STP_REGISTER_COMMAND("verify", "check a layout/schedule against a float64 single-process reference",
                     verify);

}  // namespace
}  // namespace stp::apps
