// `stp verify`: trust a layout before spending GPU hours on it. Builds a small random GPT in
// float64, runs one training step with the requested TP x PP layout, schedule and offload
// budget, and the same step as a single-process reference (one chunk, TP 1, no pipeline), then
// prints the loss difference and the largest relative gradient error over all parameters.
// Exits 1 when either exceeds --tolerance (default 1e-9).
//
// Without a launcher the ranks run as threads of this process; under `stp run -n N`, torchrun,
// mpirun or srun each process is one rank (N must equal tp*pp) and each compares its own shards.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "cli.h"
#include "command.h"
#include "common/check.h"
#include "engine/comm.h"
#include "engine/trainer.h"
#include "models/gpt.h"
#include "schedule/generators.h"
#include "train/train_config.h"

namespace stp::apps {
namespace {

using engine::MicroBatch;
using models::GptConfig;

struct VerifyArgs {
  int tp = 2, pp = 2, m = 0;
  std::string schedule = "stp", budget = "off";
  double tolerance = 1e-9;
  std::uint64_t seed = 1;
  int threads = 0;  // CPU intra-op threads per rank; 0: train::resolve_cpu_threads's default
};

constexpr int kMinDefaultMicrobatches = 4;  // a default step accumulates several microbatches

struct Errors {
  std::int64_t peak_bytes = 0;       // measured, max over ranks
  std::int64_t offloaded_bytes = 0;  // measured, sum over ranks
  double loss_diff = 0;
  double max_rel = 0;
  std::string worst;
};

GptConfig verify_config(const VerifyArgs& a, int stages) {
  GptConfig c;
  c.vocab = 37;  // not a multiple of any tp
  c.seq_len = 8;
  c.n_heads = 4 * a.tp;
  c.d_model = 2 * c.n_heads;
  c.n_layers = stages + 1;  // uneven split across stages
  c.dtype = at::kDouble;
  c.init_std = 0.3;  // large enough that every gradient is far from zero
  c.seed = a.seed;
  return c;
}

std::vector<MicroBatch> verify_batches(const GptConfig& c, int m, std::uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::vector<MicroBatch> mbs;
  for (int i = 0; i < m; ++i)
    mbs.push_back({at::randint(c.vocab, {2, c.seq_len}, gen, at::kLong),
                   at::randint(c.vocab, {2, c.seq_len}, gen, at::kLong)});
  return mbs;
}

// The reference: the whole model as one chunk, each microbatch forward then backward with W
// fused, gradients of the mean loss.
struct Reference {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
};

Reference run_reference(const GptConfig& c, const std::vector<MicroBatch>& mbs) {
  models::GptChunk chunk(c, 0, 1, 0, 1);
  chunk.zero_grad();
  Reference ref;
  for (std::size_t i = 0; i < mbs.size(); ++i) {
    engine::ActivationSet set(0, static_cast<int>(i));
    auto f = chunk.forward(set, mbs[i], at::Tensor());
    for (int k = 0; k < f->size(); ++k) f->run(k);
    f->finish();
    ref.loss += chunk.loss(set) / mbs.size();
    auto b = chunk.backward(set, at::Tensor());
    auto w = chunk.weight_grad(set);
    for (int k = 0; k < b->size(); ++k) {
      b->run(k);
      w->run(k);
    }
    b->finish();
    w->finish();
  }
  for (auto& p : chunk.params()) ref.grads[p.name] = p.grad / static_cast<double>(mbs.size());
  return ref;
}

// The largest relative error of this rank's shards against the reference's slices.
void compare_shards(engine::Trainer& t, const Reference& ref, Errors& e) {
  const int tp = t.world().tp(), tr = t.world().tp_rank();
  for (auto* c : t.chunks()) {
    for (auto& p : c->params()) {
      at::Tensor want = ref.grads.at(p.name);
      if (p.shard_dim >= 0) {
        std::int64_t n = want.size(p.shard_dim) / tp;
        want = want.narrow(p.shard_dim, tr * n, n);
      }
      double denom = want.norm().item<double>();
      double err = (p.grad - want).norm().item<double>() / (denom > 0 ? denom : 1.0);
      if (!(err <= e.max_rel)) {  // also catches NaN
        e.max_rel = std::isnan(err) ? INFINITY : err;
        e.worst = p.name;
      }
    }
  }
}

engine::TrainerOptions trainer_options(const VerifyArgs& a) {
  engine::TrainerOptions o;
  o.schedule = schedule::kind_from_string(a.schedule);
  o.tp = a.tp;
  o.pp = a.pp;
  o.microbatches = a.m;
  o.offload_budget = engine::parse_offload_budget(a.budget);
  return o;
}

int verify(const std::vector<std::string>& args) {
  VerifyArgs a;
  CLI::App app{"Check a TP x PP layout and schedule against a single-process float64 reference",
               "stp verify"};
  app.add_option("--tp", a.tp, "tensor-parallel size")->check(CLI::Range(1, 64));
  app.add_option("--pp", a.pp, "pipeline-parallel size")->check(CLI::Range(1, 64));
  app.add_option("--schedule", a.schedule, "1f1b, 1f1b-i, zb-h1, zb-v or stp");
  app.add_option("--microbatches", a.m,
                 "microbatches (default: the smallest the schedule takes, at least 4)");
  app.add_option("--offload-budget", a.budget,
                 "off, bytes (2GiB) or a % of the unconstrained peak");
  app.add_option("--tolerance", a.tolerance, "largest accepted relative error");
  app.add_option("--seed", a.seed, "model and data seed");
  app.add_option("--threads", a.threads,
                 "CPU threads per rank (0: OMP_NUM_THREADS if set, else the cores / the ranks)");
  if (int rc = parse(app, args); rc >= 0) return rc;

  const auto kind = schedule::kind_from_string(a.schedule);
  STP_CHECK(a.threads >= 0 && a.threads <= train::kMaxCpuThreads, "--threads=", a.threads,
            " is out of range [0, ", train::kMaxCpuThreads,
            "] (0: OMP_NUM_THREADS if set, else the cores / the ranks)");
  if (a.m == 0) a.m = schedule::min_microbatches(kind, a.pp, 0, kMinDefaultMicrobatches);
  const int stages = a.pp * schedule::default_chunks(kind);
  GptConfig cfg = verify_config(a, stages);
  auto mbs = verify_batches(cfg, a.m, a.seed + 1);
  const bool launched = std::getenv("WORLD_SIZE") != nullptr || std::getenv("OMPI_COMM_WORLD_SIZE");
  // Launched: one rank per process. Otherwise tp*pp rank threads share this process's cores.
  const int cpu_threads =
      train::cpu_threads_from_environment(a.threads, launched ? 0 : a.tp * a.pp).count;
  at::set_num_threads(cpu_threads);
  Reference ref = run_reference(cfg, mbs);

  engine::LaunchEnv env = engine::launch_env_from_environment();
  Errors errors;
  double loss = 0;
  if (launched) {
    STP_CHECK(env.world_size == a.tp * a.pp, "stp verify runs with world size tp*pp=", a.tp * a.pp,
              " but the launcher started ", env.world_size, " ranks");
    engine::Trainer t(models::gpt_model(cfg), trainer_options(a));
    loss = t.step(mbs);
    compare_shards(t, ref, errors);
    auto& wg = t.world().world_group();
    errors.peak_bytes = static_cast<std::int64_t>(
        wg.all_reduce_max(static_cast<double>(t.last_stats().exec.peak_activation_bytes)));
    errors.offloaded_bytes = static_cast<std::int64_t>(
        wg.all_reduce_sum(static_cast<double>(t.last_stats().exec.offloaded_bytes)));
    errors.max_rel = t.world().world_group().all_reduce_max(errors.max_rel);
    if (errors.max_rel > 0 && errors.worst.empty()) errors.worst = "(another rank's shard)";
    if (t.world().rank() != 0) return 0;
  } else {
    const int world = a.tp * a.pp;
    auto store = engine::World::make_in_memory_store();
    std::mutex mu;
    std::exception_ptr error;
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
      threads.emplace_back([&, r] {
        try {
          at::set_num_threads(cpu_threads);  // OpenMP's thread count is per thread
          engine::CommOptions co;
          co.tp = a.tp;
          co.pp = a.pp;
          engine::Trainer t(models::gpt_model(cfg), trainer_options(a),
                            engine::World::in_process(store, r, world, co));
          double l = t.step(mbs);
          Errors mine;
          compare_shards(t, ref, mine);
          std::lock_guard<std::mutex> lock(mu);
          if (r == 0) loss = l;
          if (!(mine.max_rel <= errors.max_rel)) {
            errors.max_rel = mine.max_rel;
            errors.worst = mine.worst;
          }
          errors.peak_bytes =
              std::max(errors.peak_bytes, t.last_stats().exec.peak_activation_bytes);
          errors.offloaded_bytes += t.last_stats().exec.offloaded_bytes;
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu);
          if (!error) error = std::current_exception();
        }
      });
    }
    for (auto& th : threads) th.join();
    if (error) std::rethrow_exception(error);
  }
  errors.loss_diff = std::abs(loss - ref.loss);
  const bool ok = errors.loss_diff <= a.tolerance * std::max(1.0, std::abs(ref.loss)) &&
                  errors.max_rel <= a.tolerance;
  std::printf(
      "stp verify: schedule=%s tp=%d pp=%d microbatches=%d offload=%s (float64, %lld layers)\n",
      a.schedule.c_str(), a.tp, a.pp, a.m, a.budget.c_str(), static_cast<long long>(cfg.n_layers));
  std::printf("  activation peak %s per rank (measured), %s offloaded and reloaded\n",
              format_bytes(static_cast<double>(errors.peak_bytes)).c_str(),
              format_bytes(static_cast<double>(errors.offloaded_bytes)).c_str());
  std::printf("  loss %.15f   reference %.15f   |diff| %.3e\n", loss, ref.loss, errors.loss_diff);
  std::printf("  max relative gradient error %.3e%s%s\n", errors.max_rel,
              errors.worst.empty() ? "" : " at ", errors.worst.c_str());
  std::printf("%s (tolerance %.1e)\n", ok ? "OK" : "FAILED", a.tolerance);
  return ok ? 0 : 1;
}

STP_REGISTER_COMMAND("verify", "check a layout/schedule against a float64 single-process reference",
                     verify);

}  // namespace
}  // namespace stp::apps
