#include "train/train_setup.h"

#include "common/check.h"
#include "common/cuda_check.h"
#include "models/gpt.h"
#include "models/llama.h"

namespace stp::train {

namespace {

// The fields every model family's config shares, from the [model] section.
template <class ModelConfig>
ModelConfig shared_model_fields(const TrainConfig& c) {
  ModelConfig m;
  m.vocab = c.model.vocab;
  m.seq_len = c.model.seq_len;
  m.d_model = c.model.d_model;
  m.n_heads = c.model.n_heads;
  m.n_layers = c.model.n_layers;
  m.dtype = models::parse_dtype(c.model.dtype);
  m.seed = static_cast<std::uint64_t>(c.model.init_seed);
  return m;
}

}  // namespace

models::GptConfig gpt_config(const TrainConfig& c) {
  auto g = shared_model_fields<models::GptConfig>(c);
  g.mlp_hidden = c.model.mlp_hidden;
  return g;
}

models::LlamaConfig llama_config(const TrainConfig& c) {
  auto l = shared_model_fields<models::LlamaConfig>(c);
  l.n_kv_heads = c.model.n_kv_heads;
  l.ffn_hidden = c.model.mlp_hidden;
  l.rope_theta = c.model.rope_theta;
  l.rms_eps = c.model.rms_eps;
  l.tie_embeddings = c.model.tie_embeddings;
  return l;
}

engine::ModelFactory model_factory(const TrainConfig& c, const at::Device& device) {
  if (c.model.arch == "llama") return models::llama_model(llama_config(c), device);
  return models::gpt_model(gpt_config(c), device);
}

engine::TrainerOptions trainer_options(const TrainConfig& c, const at::Device& device) {
  engine::TrainerOptions to;
  to.schedule = schedule::kind_from_string(c.schedule.kind);
  to.microbatches = static_cast<int>(c.schedule.microbatches);
  to.chunks = c.schedule.kind == "1f1b-i" ? static_cast<int>(c.schedule.chunks) : 0;
  to.tp = static_cast<int>(c.parallel.tp);
  to.pp = static_cast<int>(c.parallel.pp);
  to.offload_budget = engine::parse_offload_budget(c.offload.budget);
  to.host_gbps = c.offload.host_gbps;
  to.recompute = engine::parse_recompute(c.offload.recompute);
  to.recompute_share = c.offload.recompute_share;
  to.braid = c.schedule.braid;
  to.optimizer.lr = c.optimizer.lr;
  to.optimizer.beta1 = c.optimizer.beta1;
  to.optimizer.beta2 = c.optimizer.beta2;
  to.optimizer.eps = c.optimizer.eps;
  to.optimizer.weight_decay = c.optimizer.weight_decay;
  to.optimizer.max_grad_norm = c.optimizer.clip;
  to.comm_timeout =
      std::chrono::milliseconds(static_cast<std::int64_t>(c.run.comm_timeout_s * 1000));
  to.backend = engine::CommBackend::kAuto;  // follows the device
  to.device = device.is_cuda() ? device.index() : -1;
  return to;
}

// On CUDA, rank r of a node uses GPU r (LOCAL_RANK) and binds its thread to it, so NCCL, the
// offload streams and the pinned pool's NUMA placement all see the same current device.
at::Device train_device(const TrainConfig& c, int local_rank) {
  if (c.run.device != "cuda") return at::Device(at::kCPU);
#ifdef STP_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  const int device = engine::pick_cuda_device(local_rank, count);
  STP_CUDA_CHECK(cudaSetDevice(device));
  return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(device));
#else
  STP_CHECK(false, "run.device=cuda but stp was built without CUDA (STP_WITH_CUDA=OFF)");
#endif
}

data::DataSource data_source(const TrainConfig& c) {
  data::DataSource src;
  src.format = data::data_format_from_string(c.data.format);
  src.path = c.data.path;
  src.vocab = c.model.vocab;
  src.corpus_bytes = c.data.corpus_bytes;
  src.corpus_seed = static_cast<std::uint64_t>(c.data.corpus_seed);
  return src;
}

data::LoaderOptions loader_options(const TrainConfig& c, int dp_rank, int dp_size) {
  data::LoaderOptions lo;
  lo.seq_len = c.model.seq_len;
  lo.seed = static_cast<std::uint64_t>(c.run.seed);
  lo.dp_rank = dp_rank;
  lo.dp_size = dp_size;
  return lo;
}

std::int64_t tokens_per_step(const TrainConfig& c, int dp) {
  return c.schedule.microbatches * c.schedule.micro_batch_size * c.model.seq_len * dp;
}

}  // namespace stp::train
