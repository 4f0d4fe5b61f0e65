#include "engine/trainer.h"

#include <ATen/ATen.h>

#ifdef STP_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include <algorithm>
#include <chrono>
#include <optional>

#include "common/check.h"
#include "common/clock.h"
#include "engine/activation_offload.h"
#include "engine/comm.h"
#include "engine/executor.h"
#include "engine/grad_buckets.h"
#include "engine/offload_plan.h"
#include "schedule/generators.h"
#include "schedule/verify.h"

namespace stp::engine {
void TrainerOptions::validate() const {
  STP_CHECK(tp >= 1 && tp <= 1024, "tp=", tp, " must be in [1, 1024]");
  STP_CHECK(pp >= 1 && pp <= 1024, "pp=", pp, " must be in [1, 1024]");
  STP_CHECK(microbatches >= 1, "microbatches=", microbatches, " must be >= 1");
  STP_CHECK(chunks >= 0, "chunks=", chunks, " must be >= 0 (0: the schedule's default)");
  STP_CHECK(host_gbps > 0, "host_gbps=", host_gbps, " must be > 0");
  STP_CHECK(recompute_share > 0 && recompute_share <= 1, "recompute_share=", recompute_share,
            " must be in (0, 1]");
  STP_CHECK(recompute_share == 1 || recompute == Recompute::kAll,
            "recompute_share=", recompute_share, " needs recompute=all (recompute is ",
            to_string(recompute), ")");
  STP_CHECK(device >= -1, "device=", device, " must be a CUDA device index >= 0, or -1 (CPU)");
  STP_CHECK(grad_bucket_bytes >= 1, "grad_bucket_bytes=", grad_bucket_bytes, " must be >= 1");
  STP_CHECK(comm_timeout.count() >= 1, "comm_timeout=", comm_timeout.count(), " ms must be >= 1");
  optimizer.validate();
  offload_budget.validate();
}

Trainer::Trainer(ModelFactory model, TrainerOptions options) : options_(std::move(options)) {
  options_.validate();
  CommOptions co;
  co.backend = resolve_backend(options_.backend, options_.device >= 0);
  co.device = options_.device;
  co.timeout = options_.comm_timeout;
  co.tp = options_.tp;
  co.pp = options_.pp;
  world_ = World::connect(launch_env_from_environment(), co);
  init(std::move(model));
}

Trainer::Trainer(ModelFactory model, TrainerOptions options, std::unique_ptr<World> world)
    : options_(std::move(options)), world_(std::move(world)) {
  options_.validate();
  STP_CHECK(world_->tp() == options_.tp && world_->pp() == options_.pp,
            "the world has tp=", world_->tp(), " pp=", world_->pp(),
            " but the options ask for tp=", options_.tp, " pp=", options_.pp);
  init(std::move(model));
}

int Trainer::rank() const { return world_->rank(); }
int Trainer::world_size() const { return world_->size(); }

Trainer::~Trainer() = default;

void Trainer::init(ModelFactory model) {
  program_ = schedule::make(options_.schedule, options_.pp, options_.microbatches, options_.chunks);
  schedule::verify(program_);
  const int r = world_->pp_rank();
  chunks_.resize(program_.v);
  for (int s = 0; s < program_.stages(); ++s) {
    if (program_.stage_rank[s] != r) continue;
    chunks_[program_.stage_chunk[s]] = model(s, program_.stages(), world_->tp_rank(), world_->tp());
    STP_CHECK(chunks_[program_.stage_chunk[s]] != nullptr,
              "the model factory returned no chunk for stage ", s);
  }
  // The groups must carry what the model holds (gpu-review item 4): CUDA tensors need NCCL.
  const at::Tensor& first = chunks().front()->params().front().value;
  STP_CHECK(!first.is_cuda() || first.device().index() == options_.device || world_->size() == 1,
            "the model's parameters are on ", first.device(), " but TrainerOptions::device is ",
            options_.device, "; set it to the device's index");
  if (world_->size() > 1) resolve_backend(world_->options().backend, first.is_cuda());
  device_ = first.device();
  probe_timer_.now = now_seconds;
  probe_timer_.device_sync = [device = device_] {
#ifdef STP_WITH_CUDA
    if (device.is_cuda()) {
      c10::cuda::CUDAGuard guard(device);
      c10::cuda::device_synchronize();  // timing only (STYLE.md item 6)
    }
#else
    (void)device;
#endif
  };
  for (auto* c : chunks()) c->zero_grad();  // a gradient for every parameter, to bucket
  grad_buckets_ = std::make_unique<GradBuckets>(params_of(chunks()), options_.grad_bucket_bytes);
  optimizer_ = std::make_unique<AdamW>(params_of(chunks()), options_.optimizer, world_->tp_rank());
  executor_ = std::make_unique<Executor>(chunks(), world_->tp_group(), world_->pipe(), store_);
  executor_->set_braiding(options_.braid);
  // On a GPU the step is timed with events on the compute stream (Note [Step clock]).
  if (device_.is_cuda()) executor_->use_device_clock(torch_device_ops(), device_.index());
}

std::vector<Chunk*> Trainer::chunks() {
  std::vector<Chunk*> out;
  for (auto& c : chunks_) out.push_back(c.get());
  return out;
}

std::vector<MicroBatch> Trainer::split(const MicroBatch& batch) const {
  const std::int64_t n = batch.tokens.size(0), m = options_.microbatches;
  STP_CHECK(batch.tokens.dim() == 2 && batch.targets.sizes() == batch.tokens.sizes(),
            "a batch holds tokens and targets of shape (m*b, T); got tokens ", batch.tokens.sizes(),
            " and targets ", batch.targets.sizes());
  STP_CHECK(n % m == 0 && n >= m, "the batch has ", n, " sequences, not a positive multiple of ",
            "microbatches=", m);
  std::vector<MicroBatch> out;
  auto tokens = batch.tokens.chunk(m, 0), targets = batch.targets.chunk(m, 0);
  for (std::int64_t i = 0; i < m; ++i) out.push_back({tokens[i], targets[i]});
  return out;
}

double Trainer::step(const MicroBatch& batch) { return step(split(batch)); }

void Trainer::set_probe_timer(PassTimer timer) {
  STP_CHECK(!planned_, "set_probe_timer() after the first step: the probe has already run");
  probe_timer_ = std::move(timer);
}

double Trainer::step(const std::vector<MicroBatch>& given) {
  const double t0 = now_seconds();
  STP_CHECK(static_cast<int>(given.size()) == options_.microbatches, "step() got ", given.size(),
            " microbatches; the trainer was built for microbatches=", options_.microbatches);
#ifdef STP_WITH_CUDA
  // The model's device is current for the whole step, whichever device the calling thread had
  // (threads as ranks, an embedder's thread): its current stream is the compute stream every
  // event and stream wait of the step uses (Note [Offload streams] in offload/device_ops.h).
  std::optional<c10::cuda::CUDAGuard> on_device;
  if (device_.is_cuda()) on_device.emplace(device_);
#endif
  // Microbatches live where the model does.
  std::vector<MicroBatch> mbs;
  for (const auto& mb : given) mbs.push_back({mb.tokens.to(device_), mb.targets.to(device_)});
  if (!planned_) {
    probe_activation_bytes(mbs);
    plan_offload();
    planned_ = true;
  }
  grad_buckets_->zero();
  TrainStepStats st;
  st.exec = executor_->run(program_, mbs);
  reduce_gradients();
  auto model_group = &world_->model_group();
  StepResult res =
      optimizer_->step([model_group](double x) { return model_group->all_reduce_sum(x); });
  st.grad_norm = res.grad_norm;
  st.skipped = res.skipped;
  // Every rank returns the mean loss: the last stage's TP rank 0 of each replica contributes.
  const double mine = world_->tp_rank() == 0 ? st.exec.loss_sum : 0.0;
  st.loss = world_->world_group().all_reduce_sum(mine) / (options_.microbatches * world_->dp());
  st.seconds = now_seconds() - t0;
  last_ = std::move(st);
  return last_.loss;
}

// Gradients hold the sum over microbatches of each microbatch's mean-loss gradient; the step's
// gradient is that of the mean over all m * dp microbatches of the job.
void Trainer::reduce_gradients() {
  const double scale = 1.0 / (static_cast<double>(options_.microbatches) * world_->dp());
  grad_buckets_->reduce(&world_->dp_group(), scale);
}

// Exact activation bytes per stage, from one forward and one backward (W deferred) of
// microbatch 0 per local chunk (outputs discarded; collectives are skipped since only sizes
// matter; the gradients it leaves are zeroed by the step), shared with every rank so each can
// plan the whole pipeline: the set's bytes after F, the forward's seconds (after a warm-up
// forward, Note [Planner timing]), the share a deferred W still holds, and the bytes a
// recomputed set keeps after F (one more forward, Note [Recompute] in schedule/program.h).
// Unless recompute is off, also what recompute costs (Note [Recompute probe]).
//
// Note [Recompute probe]
// ~~~~~~~~~~~~~~~~~~~~~~
// recompute_time is the recomputed backward's extra time over the forward's: per stage, a
// backward of a recomputed set (whole: the cost model charges a share g of it) timed against a
// backward of a kept one, each on device-synchronised clocks as the forward is (Note [Planner
// timing]). The first backward above (the W-held measurement) warms the backward's kernels;
// the recomputed backward re-runs the forward's, warm too. Each is timed twice, interleaved
// (kept, recomputed, kept, recomputed), and the faster of each pair taken, so a spike on a
// loaded host does not land in one side only; each timed backward reads a set from a fresh
// untimed forward. Then (recomputed - kept) / forward, the largest over stages, clamped to
// [0, 2]: the re-run is the forward's units less the embedding and the head, so about 1. Cost:
// 4 more forwards and 4 more backwards per stage, in the first step only. With recompute off
// nothing is timed and recompute_time stays 1 (unused).
void Trainer::probe_activation_bytes(const std::vector<MicroBatch>& mbs) {
  const int S = program_.stages();
  // Per stage: set bytes after F, forward seconds, bytes a deferred W still holds after B,
  // bytes a recomputed set keeps after F, the recomputed backward's extra time over the
  // forward's (Note [Recompute probe]).
  at::Tensor bytes = at::zeros({5 * S}, at::kDouble);
  const bool contributor = world_->tp_rank() == 0 && world_->dp_rank() == 0;
  const bool time_recompute = options_.recompute != Recompute::kOff;
  for (int s = 0; s < S; ++s) {
    if (program_.stage_rank[s] != world_->pp_rank()) continue;
    Chunk& c = *chunks_[program_.stage_chunk[s]];
    ActivationSet set(program_.stage_chunk[s], 0);
    at::Tensor input;
    if (!c.is_first_stage())
      input = at::zeros(c.input_shape(mbs[0].tokens.size(0)), c.params().front().value.options());
    // A warm-up forward, then a timed one on device-synchronised clocks (Note [Planner
    // timing]); the backward below reads the timed forward's set.
    std::unique_ptr<Pass> pass;
    auto run_forward = [&](bool recompute) {
      pass.reset();  // drop the previous pass before its set is replaced
      set = ActivationSet(program_.stage_chunk[s], 0);
      set.set_recompute(recompute);
      pass = c.forward(set, mbs[0], input);
      for (int k = 0; k < pass->size(); ++k) pass->run(k);
      pass->finish();
    };
    const double forward_seconds = time_after_warmup([&] { run_forward(false); }, probe_timer_);
    const double full = static_cast<double>(set.bytes());
    at::Tensor grad;
    if (!c.is_last_stage()) grad = at::zeros_like(pass->output());
    auto run_backward = [&] {
      auto back = c.backward(set, grad);
      for (int k = 0; k < back->size(); ++k) back->run(k);
      back->finish();
    };
    run_backward();
    const double w_held = static_cast<double>(set.bytes());
    run_forward(true);
    const double kept_by_recompute = static_cast<double>(set.bytes());
    double extra = 0;
    if (time_recompute) {
      double kept_b = 0, recomputed_b = 0;  // the faster of two timed backwards each
      for (int i = 0; i < 4; ++i) {
        const bool recompute = i % 2 == 1;
        run_forward(recompute);
        probe_timer_.device_sync();
        const double t0 = probe_timer_.now();
        run_backward();
        probe_timer_.device_sync();
        const double t = probe_timer_.now() - t0;
        double& best = recompute ? recomputed_b : kept_b;
        best = i < 2 ? t : std::min(best, t);
      }
      extra = forward_seconds > 0 ? (recomputed_b - kept_b) / forward_seconds : 1;
    }
    pass.reset();
    set = ActivationSet(program_.stage_chunk[s], 0);
    if (contributor) {
      bytes[s] = full;
      bytes[S + s] = forward_seconds;
      bytes[2 * S + s] = w_held;
      bytes[3 * S + s] = kept_by_recompute;
      bytes[4 * S + s] = std::clamp(extra, 0.0, 2.0);
    }
  }
  auto& wg = world_->world_group();
  if (wg.size() > 1) {
    CommHandle h = wg.all_reduce_async(bytes);
    h.wait();
  }
  stage_bytes_.assign(S, 0);
  stage_seconds_.assign(S, 0);
  w_held_fraction_ = 0;
  recompute_ = RecomputeCosts{options_.recompute, 0, time_recompute ? 0.0 : 1.0};
  for (int s = 0; s < S; ++s) {
    stage_bytes_[s] = static_cast<std::int64_t>(bytes[s].item<double>());
    stage_seconds_[s] = bytes[S + s].item<double>();
    if (stage_bytes_[s] > 0) {
      w_held_fraction_ =
          std::max(w_held_fraction_, bytes[2 * S + s].item<double>() / stage_bytes_[s]);
      recompute_.keep =
          std::max(recompute_.keep, bytes[3 * S + s].item<double>() / stage_bytes_[s]);
    }
    if (time_recompute)
      recompute_.time = std::max(recompute_.time, bytes[4 * S + s].item<double>());
  }
  recompute_.keep = std::min(recompute_.keep, 1.0);
}

void Trainer::plan_offload() {
  // Every set recomputed: marked before planning, so the plan keeps the marks (and runs them
  // with offload off too).
  if (options_.recompute == Recompute::kAll)
    schedule::mark_recompute_all(program_, options_.recompute_share);
  plan_ = plan_activation_offload(program_, stage_bytes_, stage_seconds_, w_held_fraction_,
                                  options_.offload_budget, options_.host_gbps, recompute_);
  budget_bytes_ = plan_.budget_bytes;
  // The planned program, also without offloads: the planner may choose recompute alone.
  program_ = std::move(plan_.program);
  plan_.program = schedule::Program();
  if (!plan_.offloads) return;
  offload_ = std::make_unique<PooledActivationOffload>(plan_.host_bytes_per_rank,
                                                       device_.is_cuda() ? device_.index() : -1);
  executor_->set_offload(offload_.get());  // its copies join the step's timeline
  store_.attach_offload(offload_.get());
  std::vector<std::int64_t> local(program_.v, 0);
  for (int s = 0; s < program_.stages(); ++s)
    if (program_.stage_rank[s] == world_->pp_rank())
      local[program_.stage_chunk[s]] = stage_bytes_[s];
  store_.set_budget(budget_bytes_, std::move(local));
}

}  // namespace stp::engine
