#include "train/train_bench.h"

#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "common/bytes.h"
#include "common/check.h"
#include "common/file.h"
#include "common/svg_chart.h"
#include "data/data.h"
#include "engine/comm.h"
#include "engine/trainer.h"
#include "models/gpt.h"
#include "schedule/generators.h"
#include "schedule/simulate.h"
#include "schedule/trace.h"
#include "train/run_report.h"
#include "train/train_setup.h"

namespace stp::train {
namespace {

using nlohmann::json;

// The ranks of the benchmark job (Note [Bench ranks]) and what every run shares: the store, the
// tokenized data.
class BenchJob {
 public:
  explicit BenchJob(const TrainConfig& cfg) : env_(engine::launch_env_from_environment()) {
    cfg.validate();
    const int per_replica = static_cast<int>(cfg.parallel.tp * cfg.parallel.pp);
    co_.tp = static_cast<int>(cfg.parallel.tp);
    co_.pp = static_cast<int>(cfg.parallel.pp);
    co_.timeout =
        std::chrono::milliseconds(static_cast<std::int64_t>(cfg.run.comm_timeout_s * 1000));
    co_.backend = engine::resolve_backend(engine::CommBackend::kAuto, cfg.run.device == "cuda");
    if (env_.launched) {
      world_size_ = env_.world_size;
      STP_CHECK(world_size_ % per_replica == 0, "tp=", cfg.parallel.tp, " x pp=", cfg.parallel.pp,
                " needs a multiple of ", per_replica, " ranks but this job has ", world_size_);
      engine::check_layout(world_size_, co_.tp, co_.pp);
      threads_ = false;
      store_ = connect_store();
    } else {
      STP_CHECK(cfg.run.device != "cuda",
                "run.device=cuda needs one process per GPU: launch the "
                "benchmark with `stp run -n ",
                per_replica * std::max<std::int64_t>(1, cfg.parallel.dp), " -- stp bench ...`");
      world_size_ = per_replica * static_cast<int>(std::max<std::int64_t>(1, cfg.parallel.dp));
      threads_ = true;
      store_ =
          engine::World::make_in_memory_store();  // World::in_process turns c10d's recorder off
    }
    STP_CHECK(cfg.parallel.dp == 0 || cfg.parallel.dp * per_replica == world_size_,
              "parallel.dp=", cfg.parallel.dp, " x tp x pp = ", cfg.parallel.dp * per_replica,
              " ranks, but the job has ", world_size_);
    if (cfg.run.device != "cuda") at::set_num_threads(1);
    dataset_ = data::load_dataset(data_source(cfg));
  }

  bool lead() const { return threads_ || env_.rank == 0; }
  std::shared_ptr<const data::Dataset> dataset() const { return dataset_; }
  int local_rank() const { return threads_ ? 0 : env_.local_rank; }

  std::string setup(const TrainConfig& c) const {
    const int dp = world_size_ / static_cast<int>(c.parallel.tp * c.parallel.pp);
    return str_cat("tp=", c.parallel.tp, " pp=", c.parallel.pp, " dp=", dp,
                   ", m=", c.schedule.microbatches, " x ", c.schedule.micro_batch_size, " seqs x ",
                   c.model.seq_len, " tokens (", tokens_per_step(c, dp), " tokens/step), ",
                   c.model.arch == "llama" ? "Llama" : "GPT", " d_model=", c.model.d_model,
                   " layers=", c.model.n_layers, " ", c.model.dtype, ", ", world_size_,
                   threads_ ? " ranks as threads" : " ranks as processes", " on ", c.run.device);
  }

  // Runs fn(world) on every rank this process hosts, each World over a fresh key prefix.
  // Rethrows the first exception any rank threw, after all of them returned.
  void run(const std::function<void(std::unique_ptr<engine::World>)>& fn) {
    auto store = c10::make_intrusive<c10d::PrefixStore>(str_cat("bench/", runs_++), store_);
    if (!threads_) {
      fn(engine::World::in_process(store, env_.rank, world_size_, co_));
      return;
    }
    engine::run_in_process(
        world_size_, co_,
        [&](std::unique_ptr<engine::World> world) {
          at::set_num_threads(1);
          fn(std::move(world));
        },
        store);
  }

 private:
  // The rendezvous of World::connect, kept for the whole benchmark (each run prefixes it).
  c10::intrusive_ptr<c10d::Store> connect_store() const {
    if (world_size_ == 1) return engine::World::make_in_memory_store();
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env_.master_port);
    so.isServer = env_.rank == 0 && !env_.agent_store;
    so.numWorkers = world_size_;
    so.waitWorkers = false;
    so.timeout = co_.timeout;
    return c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
  }

  engine::LaunchEnv env_;
  engine::CommOptions co_;
  bool threads_ = true;
  int world_size_ = 1;
  int runs_ = 0;
  c10::intrusive_ptr<c10d::Store> store_;
  std::shared_ptr<const data::Dataset> dataset_;
};

// The result of one measured run: the lead's figures, or the planner's smallest feasible budget
// when the budget was below it (every rank plans the same, so every rank learns it).
struct Outcome {
  bool infeasible = false;
  std::int64_t floor_bytes = 0;
  BenchRun run;
};

// The planner names the floor as "... below the smallest feasible budget 1.2 MiB (1234567 bytes)".
void predict(const TrainConfig& cfg, engine::Trainer& t,
             const std::vector<schedule::TimelineEvent>& pooled, BenchRun& run) {
  const schedule::Program& program = t.program();
  schedule::CostModel c = fit_costs(pooled, program.stages());
  for (std::int64_t b : t.stage_activation_bytes())
    c.stage_act_bytes.push_back(static_cast<double>(b));
  c.host_bandwidth = cfg.offload.host_gbps * 1e9;
  const schedule::SimResult sim = schedule::simulate(program, c);
  const double span = std::max(sim.makespan, 1e-12);
  run.predicted_seconds = sim.makespan;
  run.predicted_exposed_comm = sim.max_exposed_tp() / span;
  double idle = 0, off = 0;
  for (const auto& r : sim.ranks) {
    idle = std::max(idle, r.start + r.idle - r.reload_wait);
    off = std::max(off, r.offloaded_bytes);
  }
  run.predicted_pp_idle = idle / span;
  run.predicted_offloaded_bytes = static_cast<std::int64_t>(off);
  run.costs = str_cat("t_f=", c.t_f * 1e3, "ms t_b=", c.t_b * 1e3, "ms t_w=", c.t_w * 1e3,
                      "ms t_ar=", c.t_ar * 1e3, "ms");
}

// One run of `cfg` with `budget` ("off" or a planner budget) on every rank of `job`: warm-up,
// measured steps (worst rank per step, mean over steps), then the prediction.
Outcome measure(BenchJob& job, TrainConfig cfg, const std::string& budget, int warmup, int steps,
                const std::string& dir) {
  Outcome out;
  out.run.kind = cfg.schedule.kind;
  out.run.budget = budget;
  cfg.validate();
  // "off" runs with a 100% budget: the planner simulates the unconstrained peak (the predicted
  // peak) and, the budget being that peak, leaves the program unchanged and attaches no
  // offloader, so the execution is exactly that of offload off.
  cfg.offload.budget = budget == "off" ? "100%" : budget;
  const at::Device device = train_device(cfg, job.local_rank());
  const engine::TrainerOptions to = trainer_options(cfg, device);
  const engine::ModelFactory model = model_factory(cfg, device);
  std::mutex mu;
  job.run([&](std::unique_ptr<engine::World> world) {
    const int rank = world->rank();
    const bool lead = rank == 0;
    engine::Trainer t(model, to, std::move(world));
    engine::World& w = t.world();
    data::DataLoader loader(job.dataset(), loader_options(cfg, w.dp_rank(), w.dp()));
    const int m = static_cast<int>(cfg.schedule.microbatches);
    BenchRun r = out.run;
    std::vector<schedule::TimelineEvent> pooled;
    double sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // means of times and fractions, maxima of the rest
    try {
      for (int i = 0; i < warmup + steps; ++i) {
        t.step(loader.next_step(m, cfg.schedule.micro_batch_size));
        const engine::TrainStepStats& s = t.last_stats();
        if (i == 0) r.first_loss = s.loss;
        r.last_loss = s.loss;
        if (i < warmup) continue;
        const double prog = std::max(s.exec.seconds, 1e-9);
        at::Tensor v = at::zeros({8}, at::kDouble);
        double* p = v.data_ptr<double>();
        p[0] = s.seconds, p[1] = s.exec.seconds, p[2] = s.exec.tp_wait_seconds / prog;
        p[3] = s.exec.p2p_wait_seconds / prog, p[4] = s.exec.reload_wait_seconds / prog;
        p[5] = static_cast<double>(s.exec.peak_activation_bytes);
        p[6] = s.exec.peak_activation_sets, p[7] = static_cast<double>(s.exec.offloaded_bytes);
        w.world_group().all_reduce_async(v, c10d::ReduceOp::MAX).wait();
        for (int k = 0; k < 5; ++k) sum[k] += p[k] / steps;
        for (int k = 5; k < 8; ++k) sum[k] = std::max(sum[k], p[k]);
        pooled.insert(pooled.end(), s.exec.events.begin(), s.exec.events.end());
      }
    } catch (const engine::OffloadBudgetTooSmall& e) {
      // Planning (the first step) refused the budget; every rank plans the same and stops here.
      const std::int64_t floor = e.minimum_bytes;
      std::lock_guard<std::mutex> lock(mu);
      out.infeasible = true;
      out.floor_bytes = floor;
      return;
    }
    r.step_seconds = sum[0], r.program_seconds = sum[1], r.exposed_comm = sum[2];
    r.pp_idle = sum[3], r.reload_wait = sum[4];
    r.peak_activation_bytes = static_cast<std::int64_t>(sum[5]);
    r.peak_activation_sets = static_cast<int>(sum[6]);
    r.offloaded_bytes = static_cast<std::int64_t>(sum[7]);
    r.tokens_per_s =
        static_cast<double>(tokens_per_step(cfg, w.dp())) / std::max(r.step_seconds, 1e-12);
    // Every pipeline rank's events reach the lead through files, as in `stp train`.
    if (w.tp_rank() == 0 && w.dp_rank() == 0) {
      write_rank_events(dir + "/events", w.pp_rank(), pooled);
      write_rank_events(dir + "/last_step", w.pp_rank(), t.last_stats().exec.events);
    }
    w.world_group().barrier();
    if (!lead) return;
    const engine::OffloadPlan& plan = t.offload_plan();
    r.offloads = plan.offloads;
    r.budget_bytes = budget == "off" ? 0 : plan.budget_bytes;
    r.planned_peak_bytes = plan.peak_bytes_after;
    r.planned_slowdown = plan.slowdown;
    for (const auto& list : t.program().ranks)
      for (const schedule::Instr& in : list)
        for (const schedule::Part& part : in.parts)
          if (part.pass == schedule::Pass::kF) {
            ++r.sets;
            r.recomputed_sets += part.recompute ? 1 : 0;
            r.recomputed_share += part.recompute ? part.recompute_share : 0;
          }
    predict(cfg, t, read_rank_events(dir + "/events", w.pp()), r);
    write_timelines(
        dir, t.program(), read_rank_events(dir + "/last_step", w.pp()),
        str_cat(cfg.schedule.kind, " p=", w.pp(), " m=", m, " tp=", w.tp(), " offload ", budget));
    std::lock_guard<std::mutex> lock(mu);
    out.run = std::move(r);
  });
  return out;
}

// Measures at the smallest feasible budget `floor_bytes`. Each run probes its own pass times,
// so the floor the planner names may move a little between runs: up to 3 tries, each at the
// floor the previous one named.
Outcome measure_at_floor(BenchJob& job, const TrainConfig& cfg, std::int64_t floor_bytes,
                         int warmup, int steps, const std::string& dir) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    Outcome out = measure(job, cfg, std::to_string(floor_bytes), warmup, steps, dir);
    if (!out.infeasible) return out;
    floor_bytes = std::max(floor_bytes + 1, out.floor_bytes);
  }
  throw std::invalid_argument(str_cat("no run of ", cfg.schedule.kind,
                                      " at its smallest feasible budget (", floor_bytes,
                                      " bytes) fitted the plan after 3 tries"));
}

void print_run(const BenchRun& r) {
  std::printf(
      "  %-7s offload %-9s %9.0f tok/s  program %.3f s (simulated %.3f s)  peak %s (planned "
      "%s)  offloaded %s\n",
      r.kind.c_str(), r.budget.c_str(), r.tokens_per_s, r.program_seconds, r.predicted_seconds,
      format_bytes(static_cast<double>(r.peak_activation_bytes)).c_str(),
      format_bytes(static_cast<double>(r.planned_peak_bytes)).c_str(),
      format_bytes(static_cast<double>(r.offloaded_bytes)).c_str());
  std::fflush(stdout);
}

void check_counts(int warmup, int steps) {
  STP_CHECK(warmup >= 0 && warmup <= 1000, "warmup=", warmup, " must be in [0, 1000]");
  STP_CHECK(steps >= 1 && steps <= 10000, "steps=", steps, " must be in [1, 10000]");
}

json run_json(const BenchRun& r) {
  return {{"kind", r.kind},
          {"budget", r.budget},
          {"budget_bytes", r.budget_bytes},
          {"offloads", r.offloads},
          {"step_seconds", r.step_seconds},
          {"program_seconds", r.program_seconds},
          {"tokens_per_s", r.tokens_per_s},
          {"exposed_comm", r.exposed_comm},
          {"pp_idle", r.pp_idle},
          {"reload_wait", r.reload_wait},
          {"peak_activation_bytes", r.peak_activation_bytes},
          {"peak_activation_sets", r.peak_activation_sets},
          {"offloaded_bytes", r.offloaded_bytes},
          {"first_loss", r.first_loss},
          {"last_loss", r.last_loss},
          {"predicted_seconds", r.predicted_seconds},
          {"predicted_exposed_comm", r.predicted_exposed_comm},
          {"predicted_pp_idle", r.predicted_pp_idle},
          {"predicted_offloaded_bytes", r.predicted_offloaded_bytes},
          {"planned_peak_bytes", r.planned_peak_bytes},
          {"recomputed_sets", r.recomputed_sets},
          {"recomputed_share", r.recomputed_share},
          {"sets", r.sets},
          {"planned_slowdown", r.planned_slowdown},
          {"fitted_costs", r.costs}};
}

const char* kPredictionNote =
    "sim: schedule::simulate of each run's own program (OFFLOAD/RELOAD included) with pass times\n"
    "fitted from that run's measured standalone F/B/W/BW passes and F all-reduce waits\n"
    "(engine::fit_costs, pooled over the measured steps of every pipeline rank); P2P latency and\n"
    "braided-compute slowdown are not modelled. planned: the offload planner's simulated peak.\n";

// The results.json document of `stp bench train`.
json train_bench_doc(const TrainBenchResult& res) {
  json runs = json::array();
  for (std::size_t i = 0; i < res.runs.size(); ++i) {
    json j = run_json(res.runs[i]);
    j["ratio"] = i < res.ratio.size() ? res.ratio[i] : 0.0;
    runs.push_back(j);
  }
  return json{{"benchmark", "stp bench train"}, {"setup", res.setup},
              {"baseline", res.baseline},       {"on_budget", res.on_budget},
              {"prediction", kPredictionNote},  {"runs", runs}};
}

// The results.json document of `stp bench budget`.
json budget_sweep_doc(const BudgetSweepResult& res) {
  json points = json::array();
  for (const auto& pt : res.points) {
    json j = run_json(pt.run);
    j["feasible"] = pt.feasible;
    j["minimum"] = pt.minimum;
    j["floor_bytes"] = pt.floor_bytes;
    j["planner_seconds"] = pt.planner_seconds;
    points.push_back(j);
  }
  return json{{"benchmark", "stp bench budget"},
              {"setup", res.setup},
              {"kind", res.kind},
              {"unconstrained_peak_bytes", res.unconstrained_peak_bytes},
              {"minimum_budget_bytes", res.minimum_budget_bytes},
              {"prediction", kPredictionNote},
              {"points", points}};
}

}  // namespace

std::string train_bench_json(const TrainBenchResult& res) { return train_bench_doc(res).dump(); }

std::string budget_sweep_json(const BudgetSweepResult& res) { return budget_sweep_doc(res).dump(); }

TrainBenchResult run_train_bench(const TrainConfig& config, const TrainBenchOptions& o) {
  check_counts(o.warmup, o.steps);
  STP_CHECK(!o.kinds.empty(),
            "kinds: name at least one schedule kind (1f1b, 1f1b-i, zb-h1, zb-v, stp)");
  for (const auto& k : o.kinds) schedule::kind_from_string(k);  // names the legal kinds
  std::string on = o.on_budget.empty() ? config.offload.budget : o.on_budget;
  if (engine::parse_offload_budget(on).kind == engine::OffloadBudget::Kind::kOff)
    on = TrainConfig{}.offload.budget;
  BenchJob job(config);
  TrainBenchResult res;
  res.lead = job.lead();
  res.on_budget = on;
  res.setup = job.setup(config);
  if (res.lead && o.progress)
    std::printf("stp bench train: %s; %d warm-up + %d measured steps per run\n", res.setup.c_str(),
                o.warmup, o.steps);
  for (const auto& kind : o.kinds) {
    for (const std::string& budget : {std::string("off"), on}) {
      TrainConfig cfg = config;
      cfg.schedule.kind = kind;
      std::string dir = str_cat(o.out_dir, "/runs/", kind, "-", budget == "off" ? "off" : "on");
      Outcome out = measure(job, cfg, budget, o.warmup, o.steps, dir);
      if (out.infeasible) {  // below this kind's floor: measure at the floor, shown as "min"
        out = measure_at_floor(job, cfg, out.floor_bytes, o.warmup, o.steps, dir);
        out.run.budget = "min";
      }
      if (res.lead && o.progress) print_run(out.run);
      res.runs.push_back(std::move(out.run));
    }
  }
  if (!res.lead) return res;
  std::size_t base = 0;
  for (std::size_t i = 0; i < res.runs.size(); ++i)
    if (res.runs[i].kind == "1f1b-i" && res.runs[i].budget == "off") {
      base = i;
      break;
    }
  res.baseline = res.runs[base].kind + " " + res.runs[base].budget;
  for (const auto& r : res.runs) res.ratio.push_back(r.tokens_per_s / res.runs[base].tokens_per_s);
  write_file(o.out_dir + "/results.json", train_bench_doc(res).dump(2) + "\n");
  return res;
}

std::string train_bench_table(const TrainBenchResult& res) {
  std::string out = str_cat("stp bench train: ", res.setup, "\n");
  out += str_printf("%-7s %-7s %10s %9s %6s %7s %7s %7s %6s %5s %6s %5s %10s %10s %10s\n", "kind",
                    "offload", "budget", "tok/s", "ratio", "step s", "prog s", "sim s", "comm%",
                    "sim", "idle%", "sim", "act peak", "planned", "offloaded");
  bool any_min = false;
  for (std::size_t i = 0; i < res.runs.size(); ++i) {
    const BenchRun& r = res.runs[i];
    any_min = any_min || r.budget == "min";
    out += str_printf(
        "%-7s %-7s %10s %9.0f %5.2fx %7.3f %7.3f %7.3f %6.1f %5.1f %6.1f %5.1f %10s %10s %10s\n",
        r.kind.c_str(), r.budget.c_str(),
        r.budget_bytes > 0 ? format_bytes(static_cast<double>(r.budget_bytes)).c_str() : "-",
        r.tokens_per_s, i < res.ratio.size() ? res.ratio[i] : 0.0, r.step_seconds,
        r.program_seconds, r.predicted_seconds, 100 * r.exposed_comm,
        100 * r.predicted_exposed_comm, 100 * r.pp_idle, 100 * r.predicted_pp_idle,
        format_bytes(static_cast<double>(r.peak_activation_bytes)).c_str(),
        format_bytes(static_cast<double>(r.planned_peak_bytes)).c_str(),
        format_bytes(static_cast<double>(r.offloaded_bytes)).c_str());
  }
  out += str_cat(
      "tok/s: job tokens / whole step (program + gradient reduction + AdamW); ratio: against ",
      res.baseline,
      " measured in this run.\nstep s, prog s: whole step and the schedule's program, "
      "worst rank, mean over the measured steps. budget: per rank, as planned.\n",
      any_min ? str_cat("min: the offload budget ", res.on_budget,
                        " is below that kind's smallest "
                        "feasible budget; measured at the smallest feasible one instead.\n")
              : std::string(),
      "comm% / idle%: worst rank's time blocked on TP collectives / pipeline receives, of the "
      "program's time.\nact peak: resident activation bytes per rank, worst rank; offloaded: "
      "bytes per step, worst rank.\n",
      kPredictionNote);
  return out;
}

BudgetSweepResult run_budget_sweep(const TrainConfig& config, const BudgetSweepOptions& o) {
  check_counts(o.warmup, o.steps);
  std::vector<std::string> budgets = o.budgets;
  const bool until_infeasible = budgets.empty();
  if (until_infeasible)
    for (int p = 100; p >= 5; p -= 5) budgets.push_back(str_cat(p, "%"));
  for (const auto& b : budgets)
    STP_CHECK(engine::parse_offload_budget(b).kind != engine::OffloadBudget::Kind::kOff, "budget '",
              b, "' must be a size or a percentage for a budget sweep, not off");
  BenchJob job(config);
  BudgetSweepResult res;
  res.lead = job.lead();
  res.kind = config.schedule.kind;
  res.setup = job.setup(config);
  res.layout = str_cat(res.kind, " tp=", config.parallel.tp, " pp=", config.parallel.pp,
                       " m=", config.schedule.microbatches, ", ",
                       config.model.arch == "llama" ? "Llama" : "GPT",
                       " d_model=", config.model.d_model, " x ", config.model.n_layers, " layers");
  if (res.lead && o.progress)
    std::printf("stp bench budget: %s, %s; %d warm-up + %d measured steps per budget\n",
                res.kind.c_str(), res.setup.c_str(), o.warmup, o.steps);
  std::int64_t floor = 0;
  double unconstrained_seconds = 0;
  auto dir_of = [&](const std::string& b) {
    return str_cat(o.out_dir, "/runs/", res.points.size(), "-",
                   b.back() == '%' ? b.substr(0, b.size() - 1) + "pct" : b);
  };
  auto add = [&](const std::string& b, Outcome out) {
    BudgetPoint pt;
    pt.feasible = !out.infeasible;
    pt.floor_bytes = out.floor_bytes;
    pt.run = std::move(out.run);
    if (pt.feasible && !pt.run.offloads && unconstrained_seconds == 0) {
      unconstrained_seconds = pt.run.program_seconds;
      res.unconstrained_peak_bytes = pt.run.planned_peak_bytes;
    }
    pt.planner_seconds =
        unconstrained_seconds > 0 ? unconstrained_seconds * (1 + pt.run.planned_slowdown) : NAN;
    if (res.lead && o.progress) {
      if (pt.feasible)
        print_run(pt.run);
      else
        std::printf("  %-7s offload %-9s infeasible: the smallest feasible budget is %s\n",
                    res.kind.c_str(), b.c_str(),
                    format_bytes(static_cast<double>(pt.floor_bytes)).c_str());
    }
    res.points.push_back(std::move(pt));
  };
  for (const auto& b : budgets) {
    Outcome out = measure(job, config, b, o.warmup, o.steps, dir_of(b));
    const bool infeasible = out.infeasible;
    if (infeasible) floor = out.floor_bytes;
    add(b, std::move(out));
    if (infeasible && until_infeasible) break;
  }
  // The smallest feasible budget: the planner names it when a budget is below it (a 1-byte
  // budget fails at the first step's planning, before any training work).
  if (floor == 0) floor = measure(job, config, "1", 0, 1, dir_of("floor")).floor_bytes;
  STP_ASSERT(floor > 0, "the planner named no smallest feasible budget");
  Outcome at_floor = measure_at_floor(job, config, floor, o.warmup, o.steps, dir_of("min"));
  res.minimum_budget_bytes = at_floor.run.budget_bytes;
  at_floor.run.budget = "min";
  add(at_floor.run.budget, std::move(at_floor));
  res.points.back().minimum = true;
  if (!res.lead) return res;
  write_file(o.out_dir + "/results.json", budget_sweep_doc(res).dump(2) + "\n");
  write_file(o.out_dir + "/budget.svg", budget_sweep_svg(res));
  return res;
}

std::string budget_sweep_table(const BudgetSweepResult& res) {
  std::string out = str_cat("stp bench budget: ", res.kind, ", ", res.setup, "\n");
  out +=
      str_printf("%-10s %10s %10s %10s %10s %7s %7s %7s %6s %7s\n", "budget", "bytes", "act peak",
                 "planned", "offloaded", "prog s", "sim s", "plan s", "reload%", "recomp");
  for (const auto& pt : res.points) {
    const BenchRun& r = pt.run;
    if (!pt.feasible) {
      out +=
          str_printf("%-10s infeasible: below the smallest feasible budget %s\n", r.budget.c_str(),
                     format_bytes(static_cast<double>(pt.floor_bytes)).c_str());
    } else {
      out +=
          str_printf("%-10s %10s %10s %10s %10s %7.3f %7.3f %7.3f %6.1f %7s%s\n", r.budget.c_str(),
                     format_bytes(static_cast<double>(r.budget_bytes)).c_str(),
                     format_bytes(static_cast<double>(r.peak_activation_bytes)).c_str(),
                     format_bytes(static_cast<double>(r.planned_peak_bytes)).c_str(),
                     format_bytes(static_cast<double>(r.offloaded_bytes)).c_str(),
                     r.program_seconds, r.predicted_seconds, pt.planner_seconds,
                     100 * r.reload_wait, str_printf("%.1f/%d", r.recomputed_share, r.sets).c_str(),
                     pt.minimum ? "  <- smallest feasible" : "");
    }
  }
  out += str_cat(
      "unconstrained peak (planner) ",
      format_bytes(static_cast<double>(res.unconstrained_peak_bytes)),
      ", smallest feasible budget ", format_bytes(static_cast<double>(res.minimum_budget_bytes)),
      " per rank.\nact peak, offloaded (per step), prog s, reload%: measured, worst rank; "
      "plan s: the unconstrained run's measured program time x (1 + the planner's simulated "
      "slowdown); recomp: sets' worth per step the plan recomputes (offload.recompute; a set "
      "re-running g of its layers counts g), of all.\n",
      kPredictionNote);
  return out;
}

std::string budget_sweep_svg(const BudgetSweepResult& res) {
  constexpr double kMiB = 1048576.0;
  LineChart chart;
  chart.title = str_cat("stp bench budget: ", res.layout);
  chart.x_label = "activation budget per rank (MiB)";
  ChartSeries measured{"measured peak", {}, {}, "", false, true},
      planned{"planned peak", {}, {}, "", true, true},
      budget{"budget", {}, {}, "#888888", true, false};
  ChartSeries t_meas{"measured program time", {}, {}, "", false, true},
      t_sim{"simulated (fitted costs)", {}, {}, "", true, true},
      t_plan{"planner (slowdown)", {}, {}, "", true, true};
  // Ascending budget: the sweep measured it descending.
  for (auto it = res.points.rbegin(); it != res.points.rend(); ++it) {
    if (!it->feasible) continue;
    const BenchRun& r = it->run;
    const double x = static_cast<double>(r.budget_bytes) / kMiB;
    for (auto* s : {&measured, &planned, &budget, &t_meas, &t_sim, &t_plan}) s->x.push_back(x);
    measured.y.push_back(static_cast<double>(r.peak_activation_bytes) / kMiB);
    planned.y.push_back(static_cast<double>(r.planned_peak_bytes) / kMiB);
    budget.y.push_back(x);
    t_meas.y.push_back(r.program_seconds);
    t_sim.y.push_back(r.predicted_seconds);
    t_plan.y.push_back(it->planner_seconds);
  }
  chart.panels.push_back({"peak activation MiB", {measured, planned, budget}, true});
  chart.panels.push_back({"program seconds", {t_meas, t_sim, t_plan}, true});
  return to_svg(chart);
}

}  // namespace stp::train
