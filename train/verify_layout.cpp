#include "train/verify_layout.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "common/check.h"
#include "engine/comm.h"
#include "engine/trainer.h"
#include "models/gpt.h"
#include "models/llama.h"
#include "schedule/generators.h"
#include "train/train_config.h"

#ifdef STP_WITH_CUDA
#include "common/cuda_check.h"
#endif

namespace stp::train {
namespace {

using engine::MicroBatch;
using models::GptConfig;

constexpr int kMinDefaultMicrobatches = 4;  // a default step accumulates several microbatches

#ifdef STP_WITH_CUDA
constexpr bool kCudaBuilt = true;
#else
constexpr bool kCudaBuilt = false;
#endif

// CUDA devices this process sees (0 without CUDA in the build or without a GPU).
int visible_cuda_devices() {
#ifdef STP_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return count;
#else
  return 0;
#endif
}

// Makes `device` current for the calling thread (each rank thread, or the launched process).
void use_device(int device) {
#ifdef STP_WITH_CUDA
  if (device >= 0) STP_CUDA_CHECK(cudaSetDevice(device));
#else
  (void)device;
#endif
}

at::Device torch_device(int device) {
  return device < 0 ? at::Device(at::kCPU)
                    : at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device));
}

GptConfig verify_config(const VerifyOptions& a, int stages) {
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

// The Llama of the same size: 4*tp query heads of size 2 (rotary needs an even size).
models::LlamaConfig verify_llama_config(const VerifyOptions& a, int stages) {
  models::LlamaConfig c;
  c.vocab = 37;
  c.seq_len = 8;
  c.n_heads = 4 * a.tp;
  c.d_model = 2 * c.n_heads;
  c.n_kv_heads = a.kv_heads > 0 ? a.kv_heads : c.n_heads / 2;
  c.ffn_hidden = 3 * c.d_model;
  c.n_layers = stages + 1;
  c.rope_theta = a.rope_theta;
  c.tie_embeddings = a.tie_embeddings;
  c.dtype = at::kDouble;
  c.init_std = 0.3;
  c.seed = a.seed;
  STP_CHECK(a.kv_heads >= 0 && c.n_heads % c.n_kv_heads == 0, "--kv-heads=", a.kv_heads,
            " must divide the model's 4*tp=", c.n_heads, " query heads (0: half of them)");
  STP_CHECK(std::isfinite(a.rope_theta) && a.rope_theta > 0, "--rope-theta=", a.rope_theta,
            " must be > 0");
  STP_CHECK(!a.tie_embeddings || stages == 1,
            "--tie-embeddings needs one pipeline stage, but pp=", a.pp, " with schedule ",
            a.schedule, " has ", stages, " (use --pp 1 with 1f1b or zb-h1)");
  c.validate_layout(stages, a.tp);
  return c;
}

std::vector<MicroBatch> verify_batches(std::int64_t vocab, std::int64_t seq_len, int m,
                                       std::uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::vector<MicroBatch> mbs;
  for (int i = 0; i < m; ++i)
    mbs.push_back({at::randint(vocab, {2, seq_len}, gen, at::kLong),
                   at::randint(vocab, {2, seq_len}, gen, at::kLong)});
  return mbs;
}

// The reference: the whole model as one chunk, each microbatch forward then backward with W
// fused, gradients of the mean loss.
struct Reference {
  double loss = 0;
  std::map<std::string, at::Tensor> grads;
};

Reference run_reference(const engine::ModelFactory& model, const std::vector<MicroBatch>& mbs) {
  std::unique_ptr<engine::Chunk> whole = model(0, 1, 0, 1);
  engine::Chunk& chunk = *whole;
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
void compare_shards(engine::Trainer& t, const Reference& ref, VerifyReport& e) {
  const int tp = t.world().tp(), tr = t.world().tp_rank();
  for (auto* c : t.chunks()) {
    for (auto& p : c->params()) {
      at::Tensor want = ref.grads.at(p.name);
      if (p.shard_dim >= 0) {
        std::int64_t n = want.size(p.shard_dim) / tp;
        want = want.narrow(p.shard_dim, tr * n, n);
      }
      double denom = want.norm().item<double>();
      double err = (p.grad.to(at::kCPU) - want).norm().item<double>() / (denom > 0 ? denom : 1.0);
      if (!(err <= e.max_rel)) {  // also catches NaN
        e.max_rel = std::isnan(err) ? INFINITY : err;
        e.worst = p.name;
      }
    }
  }
}

engine::TrainerOptions verify_trainer_options(const VerifyOptions& a,
                                              const VerifyPlacement& place) {
  engine::TrainerOptions o;
  o.device = place.device;
  o.backend = place.backend;
  o.schedule = schedule::kind_from_string(a.schedule);
  o.tp = a.tp;
  o.pp = a.pp;
  o.microbatches = a.microbatches;
  o.offload_budget = engine::parse_offload_budget(a.budget);
  o.recompute = engine::parse_recompute(a.recompute);
  o.recompute_share = a.recompute_share;
  // The check reads each shard's gradient after the step; clipping would scale it in place
  // (Note [Fused step]) and the optimizer's tests cover clipping.
  o.optimizer.max_grad_norm = 0;
  return o;
}

// Every rank of a launched job: one Trainer per process, figures reduced over the world.
void run_launched(const VerifyOptions& a, const VerifyPlacement& place,
                  const engine::ModelFactory& model, const std::vector<MicroBatch>& mbs,
                  const Reference& ref, const engine::LaunchEnv& env, VerifyReport& errors) {
  STP_CHECK(env.world_size == a.tp * a.pp, "stp verify runs with world size tp*pp=", a.tp * a.pp,
            " but the launcher started ", env.world_size, " ranks");
  use_device(place.device);
  engine::Trainer t(model, verify_trainer_options(a, place));
  errors.loss = t.step(mbs);
  compare_shards(t, ref, errors);
  auto& wg = t.world().world_group();
  errors.peak_bytes = static_cast<std::int64_t>(
      wg.all_reduce_max(static_cast<double>(t.last_stats().exec.peak_activation_bytes)));
  errors.offloaded_bytes = static_cast<std::int64_t>(
      wg.all_reduce_sum(static_cast<double>(t.last_stats().exec.offloaded_bytes)));
  errors.max_rel = wg.all_reduce_max(errors.max_rel);
  if (errors.max_rel > 0 && errors.worst.empty()) errors.worst = "(another rank's shard)";
  errors.lead = t.world().rank() == 0;
  errors.partial_trips = t.last_stats().exec.partial_trips;
}

// The whole job as threads of this process (engine::run_in_process).
void run_as_threads(const VerifyOptions& a, const VerifyPlacement& place,
                    const engine::ModelFactory& model, const std::vector<MicroBatch>& mbs,
                    const Reference& ref, int cpu_threads, VerifyReport& errors) {
  engine::CommOptions co;
  co.tp = a.tp;
  co.pp = a.pp;
  co.backend = place.backend;
  co.device = place.device;
  std::mutex mu;
  use_device(place.device);  // the World's warm-up runs on this thread's device too
  engine::run_in_process(a.tp * a.pp, co, [&](std::unique_ptr<engine::World> world) {
    at::set_num_threads(cpu_threads);  // OpenMP's thread count is per thread
    use_device(place.device);          // so is CUDA's current device
    const int r = world->rank();
    engine::Trainer t(model, verify_trainer_options(a, place), std::move(world));
    const double l = t.step(mbs);
    VerifyReport mine;
    compare_shards(t, ref, mine);
    std::lock_guard<std::mutex> lock(mu);
    if (r == 0) errors.loss = l;
    if (r == 0) errors.partial_trips = t.last_stats().exec.partial_trips;
    if (!(mine.max_rel <= errors.max_rel)) {
      errors.max_rel = mine.max_rel;
      errors.worst = mine.worst;
    }
    errors.peak_bytes = std::max(errors.peak_bytes, t.last_stats().exec.peak_activation_bytes);
    errors.offloaded_bytes += t.last_stats().exec.offloaded_bytes;
  });
}

}  // namespace

VerifyPlacement verify_placement(const VerifyOptions& a, const engine::LaunchEnv& env,
                                 int visible_devices, bool cuda_built) {
  using engine::CommBackend;
  STP_CHECK(a.device == "cpu" || a.device == "cuda", "--device='", a.device,
            "' is unknown; use cpu or cuda");
  const CommBackend requested = engine::comm_backend_from_string(a.comm, "--comm");
  VerifyPlacement p;
  if (a.device == "cpu") {
    STP_CHECK(requested != CommBackend::kNccl,
              "--comm nccl needs --device cuda (NCCL carries CUDA tensors only); use --comm gloo "
              "or auto on the CPU");
    return p;
  }
  STP_CHECK(cuda_built,
            "--device cuda: this stp was built without CUDA (configure with -DSTP_WITH_CUDA=ON); "
            "use --device cpu");
  STP_CHECK(visible_devices > 0,
            "--device cuda: this process sees no CUDA device (no GPU, or CUDA_VISIBLE_DEVICES "
            "hides them); use --device cpu");
  int local_ranks = a.tp * a.pp;  // as threads: every rank on GPU 0
  p.device = 0;
  p.ranks_per_device = local_ranks;
  if (env.launched) {
    local_ranks = env.local_world_size > 0 ? env.local_world_size : env.world_size;
    p.device = visible_devices == 1 ? 0 : env.local_rank % visible_devices;
    p.ranks_per_device = (local_ranks + visible_devices - 1) / visible_devices;
  }
  if (p.ranks_per_device > 1) {
    STP_CHECK(requested != CommBackend::kNccl, "--comm nccl: ", p.ranks_per_device,
              " ranks share GPU ", p.device, " (", local_ranks, " ranks on this host, ",
              visible_devices,
              " visible GPUs) and NCCL refuses two ranks on one device; use --comm gloo or auto");
    p.backend = CommBackend::kGloo;
  } else {
    p.backend = requested == CommBackend::kAuto ? CommBackend::kNccl : requested;
  }
  return p;
}

VerifyReport verify_layout(const VerifyOptions& options, const engine::LaunchEnv& env) {
  VerifyOptions a = options;
  // (The CPU path never asks the CUDA runtime: no driver initialisation on a GPU machine.)
  const VerifyPlacement place =
      verify_placement(a, env, a.device == "cuda" ? visible_cuda_devices() : 0, kCudaBuilt);
  const auto kind = schedule::kind_from_string(a.schedule);
  STP_CHECK(a.threads >= 0 && a.threads <= kMaxCpuThreads, "--threads=", a.threads,
            " is out of range [0, ", kMaxCpuThreads,
            "] (0: OMP_NUM_THREADS if set, else the cores / the ranks)");
  STP_CHECK(a.tolerance > 0, "--tolerance=", a.tolerance, " must be > 0");
  STP_CHECK(a.recompute == "auto" || a.recompute == "off" || a.recompute == "all", "--recompute='",
            a.recompute, "' is unknown; use auto, off or all");
  STP_CHECK(a.recompute_share > 0 && a.recompute_share <= 1,
            "--recompute-share=", a.recompute_share, " is out of range (0, 1]");
  STP_CHECK(a.recompute_share == 1 || a.recompute == "all", "--recompute-share=", a.recompute_share,
            " needs --recompute all (got --recompute ", a.recompute, ")");
  if (a.microbatches == 0)
    a.microbatches = schedule::min_microbatches(kind, a.pp, 0, kMinDefaultMicrobatches);
  STP_CHECK(a.model == "gpt" || a.model == "llama", "--model='", a.model,
            "' is unknown; use gpt or llama");
  STP_CHECK(a.model == "llama" || (a.kv_heads == 0 && a.rope_theta == VerifyOptions().rope_theta &&
                                   !a.tie_embeddings),
            "--kv-heads, --rope-theta and --tie-embeddings apply to --model llama, not --model ",
            a.model);
  const int stages = a.pp * schedule::default_chunks(kind);
  const GptConfig cfg = verify_config(a, stages);
  engine::ModelFactory model, reference_model;  // on the device, and the reference's on the CPU
  std::int64_t kv_heads = 0;
  if (a.model == "llama") {
    const models::LlamaConfig lc = verify_llama_config(a, stages);
    model = models::llama_model(lc, torch_device(place.device));
    reference_model = models::llama_model(lc);
    kv_heads = lc.kv_heads();
  } else {
    model = models::gpt_model(cfg, torch_device(place.device));
    reference_model = models::gpt_model(cfg);
  }
  const auto mbs = verify_batches(cfg.vocab, cfg.seq_len, a.microbatches, a.seed + 1);
  // Launched: one rank per process. Otherwise tp*pp rank threads share this process's cores.
  const int threads = cpu_threads(a.threads, env, env.launched ? 0 : a.tp * a.pp).count;
  at::set_num_threads(threads);
  const Reference ref = run_reference(reference_model, mbs);

  VerifyReport r;
  if (env.launched)
    run_launched(a, place, model, mbs, ref, env, r);
  else
    run_as_threads(a, place, model, mbs, ref, threads, r);
  r.where = place.device < 0
                ? "cpu"
                : str_cat("cuda:", place.device, ", ", engine::to_string(place.backend));
  r.microbatches = a.microbatches;
  r.layers = cfg.n_layers;  // the same layer count for both models
  r.kv_heads = kv_heads;
  r.reference_loss = ref.loss;
  r.loss_diff = std::abs(r.loss - ref.loss);
  r.ok = r.loss_diff <= a.tolerance * std::max(1.0, std::abs(ref.loss)) && r.max_rel <= a.tolerance;
  return r;
}

}  // namespace stp::train
