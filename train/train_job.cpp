#include "train/train_job.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <signal.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hf.h"
#include "common/check.h"
#include "common/file.h"
#include "data/data.h"
#include "engine/comm.h"
#include "engine/trainer.h"
#include "models/gpt.h"
#include "schedule/trace.h"
#include "train/run_report.h"
#include "train/train_setup.h"

namespace stp::train {
namespace {

using nlohmann::json;

// The model's identity in a checkpoint: where its first weights came from is not part of it.
json model_json(const TrainConfig& c) {
  json m = json::parse(c.to_json()).at("model");
  m.erase("init_from");
  // A GPT's manifest stays what it was before the Llama keys existed: older checkpoints resume.
  if (c.model.arch == "gpt")
    for (const char* k : {"arch", "n_kv_heads", "rope_theta", "tie_embeddings"}) m.erase(k);
  return m;
}

// model.init_from: every parameter's TP shard read from the mapped Hugging Face folder (and the
// optimizer's float32 master copy, for bfloat16 parameters, from the same full-precision view).
void load_init_from(engine::Trainer& t, const checkpoint::HfImport& hf) {
  std::map<std::string, at::Tensor> state = t.optimizer().state_dict();  // aliases the masters
  const int tp_rank = t.world().tp_rank(), tp = t.world().tp();
  for (engine::Chunk* c : t.chunks()) {
    for (engine::Param& p : c->params()) {
      const at::Tensor src = hf.shard(p.name, p.shard_dim, tp_rank, tp);
      p.value.copy_(src);
      auto master = state.find(p.name + ".master");
      if (master != state.end()) master->second.copy_(src);
    }
  }
}

// Linear warm-up, then cosine decay from lr to min_lr over the remaining steps.
double lr_at(const OptimizerSection& o, std::int64_t step, std::int64_t total) {
  if (o.warmup_steps > 0 && step < o.warmup_steps)
    return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup_steps);
  double span = std::max<std::int64_t>(1, total - o.warmup_steps);
  double t = std::min(1.0, static_cast<double>(step - o.warmup_steps) / span);
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + std::cos(M_PI * t));
}

checkpoint::TensorMap state_of(engine::Trainer& t) {
  checkpoint::TensorMap m;
  for (engine::Chunk* c : t.chunks())
    for (const engine::Param& p : c->params())
      m["param/" + p.name] = p.value.detach().cpu().contiguous();
  for (auto& [k, v] : t.optimizer().state_dict()) m["optim/" + k] = v.detach().cpu().contiguous();
  return m;
}

void load_state(engine::Trainer& t, const checkpoint::TensorMap& m) {
  std::map<std::string, at::Tensor> optim;
  for (const auto& [k, v] : m)
    if (k.rfind("optim/", 0) == 0) optim[k.substr(6)] = v;
  for (engine::Chunk* c : t.chunks()) {
    for (engine::Param& p : c->params()) {
      auto it = m.find("param/" + p.name);
      STP_CHECK(it != m.end(), "checkpoint shard has no parameter ", p.name,
                " (saved by a different model)");
      STP_CHECK(it->second.sizes() == p.value.sizes(), "checkpoint parameter ", p.name,
                " has shape ", it->second.sizes(), ", this run's is ", p.value.sizes());
      p.value.copy_(it->second);
    }
  }
  t.optimizer().load_state_dict(optim);
}

checkpoint::CheckpointLayout layout_of(const TrainConfig& c, int world_size) {
  checkpoint::CheckpointLayout l;
  l.tp = static_cast<int>(c.parallel.tp);
  l.pp = static_cast<int>(c.parallel.pp);
  l.world = world_size;
  l.dp = world_size / (l.tp * l.pp);
  l.schedule = c.schedule.kind;
  l.microbatches = static_cast<int>(c.schedule.microbatches);
  return l;
}

// One all-reduce (max) of this rank's step figures.
StepMetrics gather_metrics(engine::Trainer& t, std::int64_t step, double lr, std::int64_t tokens) {
  const engine::TrainStepStats& s = t.last_stats();
  const double secs = std::max(s.seconds, 1e-9);
  at::Tensor v = at::tensor(
      {s.seconds, s.exec.tp_wait_seconds / secs, s.exec.p2p_wait_seconds / secs,
       s.exec.reload_wait_seconds / secs, static_cast<double>(s.exec.peak_activation_bytes),
       static_cast<double>(s.exec.offloaded_bytes),
       static_cast<double>(s.exec.device_allocated_peak_bytes),
       static_cast<double>(s.exec.device_reserved_peak_bytes)},
      at::kDouble);
  t.world().world_group().all_reduce_async(v, c10d::ReduceOp::MAX).wait();
  StepMetrics m;
  m.step = step;
  m.loss = s.loss;
  m.lr = lr;
  m.grad_norm = s.grad_norm;
  m.seconds = v[0].item<double>();
  m.tokens_per_s = static_cast<double>(tokens) / m.seconds;
  m.exposed_comm = v[1].item<double>();
  m.pp_idle = v[2].item<double>();
  m.reload_wait = v[3].item<double>();
  m.peak_activation_bytes = static_cast<std::int64_t>(v[4].item<double>());
  m.offloaded_bytes = static_cast<std::int64_t>(v[5].item<double>());
  m.device_allocated_peak_bytes = static_cast<std::int64_t>(v[6].item<double>());  // -1: CPU
  m.device_reserved_peak_bytes = static_cast<std::int64_t>(v[7].item<double>());
  return m;
}

}  // namespace

TrainJobResult run_train_job(const TrainConfig& cfg, const TrainJobOptions& opts) {
  cfg.validate();
  const engine::LaunchEnv env = engine::launch_env_from_environment();
  // CPU runs: run.threads, else the user's OMP_NUM_THREADS, else cores / local ranks.
  const CpuThreads threads = cpu_threads(cfg.run.threads, env);
  if (cfg.run.device != "cuda") at::set_num_threads(threads.count);
  const int per_replica = static_cast<int>(cfg.parallel.tp * cfg.parallel.pp);
  STP_CHECK(env.world_size % per_replica == 0 && env.world_size >= per_replica,
            "tp=", cfg.parallel.tp, " x pp=", cfg.parallel.pp, " needs a multiple of ", per_replica,
            " ranks but this job has ", env.world_size,
            env.world_size == 1
                ? str_cat("; launch it with `stp run -n ", per_replica, " -- stp train ...`")
                : std::string());
  STP_CHECK(cfg.parallel.dp == 0 || cfg.parallel.dp * per_replica == env.world_size,
            "parallel.dp=", cfg.parallel.dp, " x tp x pp = ", cfg.parallel.dp * per_replica,
            " ranks, but the job has ", env.world_size);
  // The data is opened and validated (every shard; enough windows for seq_len and dp) before
  // anything is built, so bad data costs one line and nothing else.
  const std::shared_ptr<const data::Dataset> dataset = data::load_dataset(data_source(cfg));
  data::DataLoader(dataset, loader_options(cfg, 0, env.world_size / per_replica));
  // A checkpoint to resume from is found and verified (layout, model, this rank's checksum)
  // before anything is built, so a bad one costs one line and nothing else.
  checkpoint::CheckpointInfo info;
  info.layout = layout_of(cfg, env.world_size);
  info.model = model_json(cfg);
  const std::string ckpt_dir = cfg.checkpoint_path();
  std::optional<std::string> resume_from;
  checkpoint::LoadedCheckpoint resumed;
  if (opts.resume) {
    resume_from = checkpoint::find_latest_complete(ckpt_dir);
    if (resume_from)
      resumed = checkpoint::load_checkpoint(*resume_from, env.rank, info.layout, info.model);
  }
  // model.init_from is opened (mapped) and matched against the model before anything is built.
  std::optional<checkpoint::HfImport> init_from;
  if (!cfg.model.init_from.empty() && !resume_from)
    init_from = checkpoint::HfImport::gpt2(cfg.model.init_from, gpt_config(cfg));
  const at::Device device = train_device(cfg, env.local_rank);
  engine::Trainer trainer(model_factory(cfg, device), trainer_options(cfg, device));
  engine::World& world = trainer.world();
  const bool lead = world.rank() == 0;
  auto say = [&](const std::string& text) {  // rank 0's lines go to the caller's sink
    if (lead && opts.say) opts.say(text);
  };
  say(str_cat("stp train: resolved configuration\n", cfg.to_json(), "\n"));
  if (cfg.run.device != "cuda")
    say(str_cat("cpu threads: ", threads.count, " per rank (", threads.source, ")\n"));

  const data::LoaderOptions lo = loader_options(cfg, world.dp_rank(), world.dp());
  data::DataLoader loader(dataset, lo);
  say(str_cat("data: ", loader.dataset().description, ", ", loader.dataset().num_tokens,
              " tokens, ", loader.num_windows(), " windows of ", lo.seq_len, "\n"));
  if (!loader.dataset().warning().empty()) say(str_cat("data: ", loader.dataset().warning(), "\n"));

  checkpoint::CheckpointOptions co;
  co.dir = ckpt_dir;
  co.keep_last = static_cast<int>(cfg.run.keep_checkpoints);
  checkpoint::CheckpointWriter writer(co, world.rank(), world.size(),
                                      [&world] { world.world_group().barrier(); });

  TrainJobResult result;
  std::int64_t step = 0;
  if (resume_from) {
    load_state(trainer, resumed.tensors);
    loader.restore_position_json(resumed.manifest.info.data);
    step = resumed.manifest.step;
    resumed.tensors.clear();
    say(str_cat("resumed from ", *resume_from, " (step ", step, ")\n"));
  } else if (opts.resume) {
    say(str_cat("--resume: no complete checkpoint in ", ckpt_dir, "; starting at step 0\n"));
  }
  if (init_from) {
    load_init_from(trainer, *init_from);
    say(str_cat("model: initialised from ", init_from->dir(), " (", init_from->architecture(), ", ",
                init_from->size(), " tensors)\n"));
  }
  result.first_step = step;
  const std::int64_t total = cfg.run.steps;
  const std::int64_t step_tokens = tokens_per_step(cfg, world.dp());
  RunReport report(cfg.run.log_dir, total, lead, lead && cfg.run.progress && opts.live_bar,
                   opts.say);
  if (lead) write_file(cfg.run.log_dir + "/config.json", cfg.to_json() + "\n");
  auto save = [&](std::int64_t s) {
    info.data = loader.position_json();
    std::string dir = writer.save(s, state_of(trainer), info);
    if (cfg.run.progress) say(str_cat("checkpoint: ", dir, "\n"));
  };
  int ran = 0;
  bool first = true;
  while (step < total) {
    const double lr = lr_at(cfg.optimizer, step, total);
    trainer.optimizer().set_lr(lr);
    auto mbs = loader.next_step(static_cast<int>(cfg.schedule.microbatches),
                                cfg.schedule.micro_batch_size);
    if (step + 1 == opts.kill_at_step && world.rank() == opts.kill_rank)
      ::kill(::getpid(), SIGKILL);
    trainer.step(mbs);
    ++step;
    ++ran;
    if (first && trainer.offload_plan().at_floor) {
      const engine::OffloadPlan& plan = trainer.offload_plan();
      say(plan.offloads
              ? str_cat("offload: budget auto: 80% of the peak (", plan.asked_bytes,
                        " bytes) is below the smallest feasible budget; running at ",
                        plan.budget_bytes, " bytes (set offload.budget to choose)\n")
              : str_cat("offload: budget auto: no offloadable set lowers this layout's peak of ",
                        plan.peak_bytes_before, " bytes; running without offload\n"));
    }
    if (first && trainer.offload_plan().budget_bytes > 0 &&
        (trainer.offload_plan().offloads || !trainer.offload_plan().at_floor)) {
      const engine::OffloadPlan& plan = trainer.offload_plan();
      char pct[32];
      std::snprintf(pct, sizeof pct, "%+.1f%%", 100 * plan.slowdown);
      say(str_cat("offload: budget ", plan.budget_bytes, " bytes per rank; simulated peak ",
                  plan.peak_bytes_before, " -> ", plan.peak_bytes_after, " bytes, ", pct,
                  " step time\n"));
    }
    first = false;
    StepMetrics m = gather_metrics(trainer, step, lr, step_tokens);
    if (result.first_loss == 0) result.first_loss = m.loss;
    result.final_loss = m.loss;
    result.last_step = step;
    report.step(m);
    if (opts.stop_after > 0 && ran >= opts.stop_after) return result;
    if (cfg.run.checkpoint_interval > 0 &&
        (step % cfg.run.checkpoint_interval == 0 || step == total))
      save(step);
  }
  // The measured timeline of the last step, next to the simulator's prediction.
  const std::string tl_dir = cfg.run.log_dir + "/timeline";
  if (world.tp_rank() == 0 && world.dp_rank() == 0)
    write_rank_events(tl_dir, world.pp_rank(), trainer.last_stats().exec.events);
  world.world_group().barrier();
  if (lead) {
    std::string title = str_cat(cfg.schedule.kind, " p=", world.pp(),
                                " m=", cfg.schedule.microbatches, " tp=", world.tp());
    write_timelines(cfg.run.log_dir, trainer.program(), read_rank_events(tl_dir, world.pp()),
                    title);
    report.finish(str_cat("stp train: ", title));
    say(str_cat("wrote ", cfg.run.log_dir,
                "/timeline.svg and timeline.json (measured step next to the simulated one)\n"));
  }
  return result;
}

}  // namespace stp::train
