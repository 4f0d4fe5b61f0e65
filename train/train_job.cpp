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
#include "checkpoint/reshard.h"
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
    for (const char* k : {"arch", "n_kv_heads", "rope_theta", "rms_eps", "tie_embeddings"})
      m.erase(k);
  // So is a Llama's at the default epsilon (the only one before model.rms_eps existed).
  if (c.model.arch == "llama" && c.model.rms_eps == ModelSection{}.rms_eps) m.erase("rms_eps");
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

constexpr const char* kOptimizer = "adamw";  // the only optimizer stp has

// What the manifest's `extra` holds: the optimizer settings and learning-rate schedule, the
// pipeline schedule (micro_batch_size: the rows of a microbatch), the steps and data-order seed,
// and the data source (docs/checkpoints.md). Informational, except that a resumed run must have
// the checkpoint's optimizer kind and, on the generated corpus, its corpus_seed and corpus_bytes.
json extra_json(const TrainConfig& c) {
  const json all = json::parse(c.to_json());
  json optimizer = all.at("optimizer");
  optimizer["kind"] = kOptimizer;
  return {{"optimizer", optimizer},
          {"schedule", all.at("schedule")},
          {"run", {{"steps", c.run.steps}, {"seed", c.run.seed}}},
          {"data", all.at("data")}};
}

// Another optimizer's state cannot continue as AdamW's (checkpoints before extra named it hold
// AdamW's). The generated corpus is fingerprinted like any text, but a different corpus_seed
// is named as such rather than as a different fingerprint. Checked before anything is built.
void check_extra(const json& saved_extra, const TrainConfig& c, const std::string& checkpoint) {
  const json& o = saved_extra.contains("optimizer") ? saved_extra["optimizer"] : json();
  const std::string saved_kind = o.is_object() ? o.value("kind", std::string(kOptimizer)) : "";
  STP_CHECK(saved_kind.empty() || saved_kind == kOptimizer, "cannot resume from ", checkpoint,
            ": the checkpoint's optimizer is ", saved_kind, ", this run's is ", kOptimizer);
  if (c.data.format != "bytes" || !c.data.path.empty()) return;
  if (!saved_extra.contains("data") || !saved_extra["data"].is_object()) return;  // older stp
  const json& d = saved_extra["data"];
  std::string diffs;
  auto cmp = [&](const char* key, std::int64_t now) {
    if (d.contains(key) && d[key] != json(now))
      diffs += str_cat(diffs.empty() ? "" : ", ", "data.", key, "=", d[key].dump(),
                       " in checkpoint, ", now, " in this run");
  };
  if (d.value("format", std::string()) == "bytes" && d.value("path", std::string()).empty()) {
    cmp("corpus_seed", c.data.corpus_seed);
    cmp("corpus_bytes", c.data.corpus_bytes);
  }
  STP_CHECK(diffs.empty(), "cannot resume from ", checkpoint, ": ", diffs);
}

// This rank's shard of a checkpoint of this run's layout (size and checksum verified); for
// another layout, verifies this rank's share of the old shards and returns nothing: the model's
// tensors are resharded once it exists (reshard_into).
checkpoint::TensorMap read_or_verify(const std::string& dir, const checkpoint::Manifest& m,
                                     int rank, const checkpoint::CheckpointLayout& layout) {
  if (checkpoint::layout_change(m.info.layout, layout).empty())
    return checkpoint::load_shard(dir, m, rank);
  checkpoint::verify_reshard_sources(dir, m, rank, layout.world);
  return {};
}

// Note [Resume from the newest intact checkpoint]
// --resume's candidates are the complete checkpoints of the folder, newest first. Every
// manifest is checked against this run before anything is built (a mismatch stops the run: an
// older checkpoint of the same run would not fit either). A shard's size and checksum can only
// be checked by reading it, and each rank reads only its own, so the ranks agree: candidate i is
// taken when its shard is intact on every rank (one all-reduce MIN per candidate tried, all
// ranks in the same order), else skipped with a warning and i + 1 tried. Before anything is
// built each rank reads its shards newest first up to its first intact one, so a rank with
// none stops the run in one line; on the usual path the newest is read once. A checkpoint of
// another layout is checked the same way, each rank verifying its share of the old shards
// (Note [Resharding] in checkpoint/reshard.h), and read once the model exists.
class ResumeCandidates {
 public:
  ResumeCandidates(const std::vector<std::string>& oldest_first, int rank,
                   const checkpoint::CheckpointInfo& info, const TrainConfig& c)
      : rank_(rank), layout_(info.layout) {
    for (auto it = oldest_first.rbegin(); it != oldest_first.rend(); ++it) {
      checkpoint::Manifest m = checkpoint::read_manifest(*it);
      checkpoint::check_compatible(m, info.model);
      check_extra(m.info.extra, c, *it);
      dirs_.push_back(*it);
      manifests_.push_back(std::move(m));
    }
    errors_.resize(dirs_.size());
    checked_.resize(dirs_.size(), false);
  }
  std::size_t size() const { return dirs_.size(); }
  const std::string& dir(std::size_t i) const { return dirs_[i]; }
  // Whether this rank's shard of candidate i (or its share of the old shards, for another
  // layout) is intact; "" if so (its tensors then kept until another is read), else why not.
  // Reads the shards once.
  const std::string& check(std::size_t i) {
    if (!checked_[i]) {
      checked_[i] = true;
      try {
        tensors_ = read_or_verify(dirs_[i], manifests_[i], rank_, layout_);
        tensors_of_ = static_cast<int>(i);
      } catch (const std::exception& e) {
        errors_[i] = e.what();
      }
    }
    return errors_[i];
  }
  // Candidate i, whose check() passed.
  checkpoint::LoadedCheckpoint take(std::size_t i) {
    if (tensors_of_ != static_cast<int>(i))
      tensors_ = read_or_verify(dirs_[i], manifests_[i], rank_, layout_);
    return {std::move(manifests_[i]), std::move(tensors_)};
  }

 private:
  int rank_;
  checkpoint::CheckpointLayout layout_;
  std::vector<std::string> dirs_;
  std::vector<checkpoint::Manifest> manifests_;
  std::vector<std::string> errors_;
  std::vector<bool> checked_;
  checkpoint::TensorMap tensors_;
  int tensors_of_ = -1;
};

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

// This rank's parameters and optimizer state read out of a checkpoint of another layout (Note
// [Resharding] in checkpoint/reshard.h), named as state_of() names them.
checkpoint::TensorMap reshard_into(engine::Trainer& t, const std::string& dir,
                                   const checkpoint::Manifest& m) {
  std::vector<std::string> names;
  for (engine::Chunk* c : t.chunks())
    for (const engine::Param& p : c->params()) names.push_back("param/" + p.name);
  for (const auto& [k, v] : t.optimizer().state_dict()) names.push_back("optim/" + k);
  return checkpoint::Resharder(dir, m).read(names, t.world().tp_rank(), t.world().tp());
}

checkpoint::CheckpointLayout layout_of(const TrainConfig& c, int world_size) {
  checkpoint::CheckpointLayout l;
  l.tp = static_cast<int>(c.parallel.tp);
  l.pp = static_cast<int>(c.parallel.pp);
  l.world = world_size;
  l.dp = world_size / (l.tp * l.pp);
  l.schedule = c.schedule.kind;
  l.microbatches = static_cast<int>(c.schedule.microbatches);
  // schedule.chunks is 1f1b-i's alone (Note [Chunks in the layout] in checkpoint/checkpoint.h).
  l.chunks = c.schedule.kind == "1f1b-i" ? static_cast<int>(c.schedule.chunks) : 0;
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
  const data::DataSource source = data_source(cfg);
  const std::shared_ptr<const data::Dataset> dataset = data::load_dataset(source);
  data::DataLoader(dataset, loader_options(cfg, 0, env.world_size / per_replica));
  // A checkpoint to resume from is found and verified (layout, model, this rank's checksum)
  // before anything is built, so a bad one costs one line and nothing else.
  checkpoint::CheckpointInfo info;
  info.layout = layout_of(cfg, env.world_size);
  info.model = model_json(cfg);
  info.extra = extra_json(cfg);
  const std::string ckpt_dir = cfg.checkpoint_path();
  std::optional<std::string> resume_from;
  checkpoint::LoadedCheckpoint resumed;
  std::optional<ResumeCandidates> candidates;
  if (!opts.resume_from.empty()) {
    resumed.manifest = checkpoint::read_manifest(opts.resume_from);
    checkpoint::check_compatible(resumed.manifest, info.model);
    check_extra(resumed.manifest.info.extra, cfg, opts.resume_from);
    resumed.tensors = read_or_verify(opts.resume_from, resumed.manifest, env.rank, info.layout);
    resume_from = opts.resume_from;
  } else if (opts.resume) {
    // Which candidate every rank resumes from is agreed once the world exists (below).
    candidates.emplace(checkpoint::list_complete(ckpt_dir), env.rank, info, cfg);
    bool any = false;
    for (std::size_t i = 0; i < candidates->size() && !any; ++i) any = candidates->check(i).empty();
    STP_CHECK(any || candidates->size() == 0, "--resume: no intact checkpoint in ", ckpt_dir,
              " (all ", candidates->size(), " are corrupt; the newest: ", candidates->check(0),
              ")");
    if (candidates->size() == 0) candidates.reset();
  }
  // model.init_from is opened (mapped) and matched against the model before anything is built.
  std::optional<checkpoint::HfImport> init_from;
  if (!cfg.model.init_from.empty() && !resume_from && !candidates)
    init_from = cfg.model.arch == "llama"
                    ? checkpoint::HfImport::llama(cfg.model.init_from, llama_config(cfg))
                    : checkpoint::HfImport::gpt2(cfg.model.init_from, gpt_config(cfg));
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
  if (candidates) {  // Note [Resume from the newest intact checkpoint]
    for (std::size_t i = 0; i < candidates->size() && !resume_from; ++i) {
      const std::string error = candidates->check(i);
      at::Tensor ok = at::full({1}, error.empty() ? 1 : 0, at::kLong);
      world.world_group().all_reduce_async(ok, c10d::ReduceOp::MIN).wait();
      if (ok.item<std::int64_t>() == 1) {
        resume_from = candidates->dir(i);
        resumed = candidates->take(i);
        break;
      }
      std::string why = error;  // rank 0's own reason, else the first shard that fails
      if (why.empty() && lead) {
        try {
          checkpoint::verify_checkpoint(candidates->dir(i));
        } catch (const std::exception& e) {
          why = e.what();
        }
      }
      say(str_cat("warning: --resume skipped ", candidates->dir(i), ": ",
                  why.empty() ? "a shard of another rank is corrupt" : why, "\n"));
    }
    STP_CHECK(resume_from.has_value(), "--resume: no checkpoint in ", ckpt_dir,
              " is intact on every rank (each has a corrupt shard)");
  }
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
    step = resumed.manifest.step;
    const std::string change = checkpoint::layout_change(resumed.manifest.info.layout, info.layout);
    if (!change.empty()) {
      say(str_cat("resuming step ", step, " saved as ", change, ": resharding on load\n"));
      resumed.tensors = reshard_into(trainer, *resume_from, resumed.manifest);
    }
    load_state(trainer, resumed.tensors);
    loader.restore_position_json(checkpoint::reshard_data_position(
        resumed.manifest.info.data, world.dp(), loader.num_windows()));
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
    if (first && !trainer.last_stats().exec.partial_trips.empty())  // Note [Partial sets]
      say(str_cat(
          "offload: partial sets (chunk[microbatches] share: fields moved):\n",
          engine::describe_partial_trips(trainer.last_stats().exec.partial_trips, 8, "  ")));
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
