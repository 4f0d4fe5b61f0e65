// TrainConfig: everything `stp train` reads, in one struct per section, with one table of
// fields (name, unit, range, default, meaning) that drives parsing, validation, `--set`
// overrides, the resolved-config printout and docs/config.md — so they cannot disagree.
//
// Sources, later ones win: built-in defaults (the embedded default run), the config file
// (JSON, sections as objects), then `--set section.key=value` flags. Unknown sections or keys
// and out-of-range values stop with one line naming them and the legal range.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/comm_options.h"

namespace stp::train {

struct ModelSection {
  std::string arch = "gpt";  // gpt or llama (models/llama.h)
  std::int64_t vocab = 258;  // the byte tokenizer's: 256 bytes + 2 specials
  std::int64_t seq_len = 64;
  std::int64_t d_model = 128;
  std::int64_t n_heads = 4;
  std::int64_t n_layers = 4;
  std::int64_t mlp_hidden = 0;  // 0: 4*d_model (gpt), 8*d_model/3 rounded up to 256 (llama)
  std::int64_t n_kv_heads = 0;  // llama: key/value heads; 0: n_heads
  double rope_theta = 10000;    // llama: rotary base
  double rms_eps = 1e-5;        // llama: RMSNorm epsilon
  bool tie_embeddings = false;  // llama: the LM head reuses the embedding (one stage only)
  std::string dtype = "float32";
  std::int64_t init_seed = 1234;
  std::string init_from;  // a Hugging Face model folder to start from; empty: init_seed's init
};

struct ParallelSection {
  std::int64_t tp = 2;
  std::int64_t pp = 2;
  std::int64_t dp = 0;  // 0: world / (tp*pp)
};

struct ScheduleSection {
  std::string kind = "stp";           // 1f1b, 1f1b-i, zb-h1, zb-v, stp
  std::int64_t microbatches = 8;      // m per step
  std::int64_t micro_batch_size = 4;  // sequences per microbatch
  std::int64_t chunks = 2;            // 1f1b-i only: model chunks per rank
  bool braid = true;                  // interleave braided instructions' units
};

struct OffloadSection {
  std::string budget = "auto";     // off, auto, bytes ("512MiB") or % of the unconstrained peak
  double host_gbps = 20.0;         // host link bandwidth the planner assumes, GB/s
  std::string recompute = "auto";  // auto, off or all (engine::parse_recompute)
  double recompute_share = 1;      // with recompute all: the leading share of each chunk's layers
};

struct OptimizerSection {
  double lr = 3e-3;
  double min_lr = 3e-4;  // cosine decay floor
  std::int64_t warmup_steps = 20;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip = 1.0;  // global grad-norm clip; 0 disables
};

struct DataSection {
  std::string format = "bytes";  // bytes (text), llmc or nanogpt (token shards; docs/data.md)
  std::string path;  // bytes: text file or folder, empty: the generated corpus; shards: a shard
                     // file, a folder of *.bin shards or a glob
  std::int64_t corpus_bytes = 4 << 20;  // size of the generated corpus
  std::int64_t corpus_seed = 1234;      // seed of the generated corpus
};

struct RunSection {
  std::int64_t steps = 600;
  std::int64_t seed = 1234;  // data order
  std::string log_dir = "runs/latest";
  std::string checkpoint_dir;              // empty: <log_dir>/checkpoints
  std::int64_t checkpoint_interval = 100;  // steps; 0 disables
  std::int64_t keep_checkpoints = 2;
  double comm_timeout_s = 120;
  std::string device = "cpu";  // cpu or cuda
  std::int64_t threads = 0;    // CPU intra-op threads per rank; 0: resolve_cpu_threads
  bool progress = true;        // progress bar on rank 0 (JSON lines are always written)
};

struct TrainConfig {
  ModelSection model;
  ParallelSection parallel;
  ScheduleSection schedule;
  OffloadSection offload;
  OptimizerSection optimizer;
  DataSection data;
  RunSection run;

  // Applies a JSON document (the config file). Throws std::invalid_argument naming the first
  // unknown key, wrong type or out-of-range value.
  void apply_json(const std::string& text, const std::string& source);
  // Applies one `section.key=value` override.
  void apply_override(const std::string& assignment);
  // Cross-field checks (heads divisible by tp, ...). Throws std::invalid_argument.
  void validate() const;
  // The resolved configuration as pretty JSON (what rank 0 prints and the log dir keeps).
  std::string to_json() const;
  std::string checkpoint_path() const;
};

// docs/config.md's table, generated from the field table.
// The configuration `stp train` and `stp bench` run: the defaults, then the JSON file at `path`
// (none when empty), then each `section.key=value` override in order; validated. Throws
// std::invalid_argument naming an unreadable file, a bad field or value.
TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides);

// model.init_from set: model.arch and the model's shape come from that Hugging Face folder's
// config.json (load_config calls it after the overrides): GPT2LMHeadModel -> gpt (vocab,
// d_model, n_heads, n_layers, mlp_hidden); LlamaForCausalLM -> llama (also n_kv_heads,
// rope_theta, and tie_embeddings when the file ties them and the layout has one pipeline stage;
// on more stages a tied file loads untied). Throws std::invalid_argument for a folder stp's
// models cannot hold, or seq_len above its n_positions / max_position_embeddings.
void apply_init_from_shape(TrainConfig& config);

std::string config_reference_markdown();

constexpr std::int64_t kMaxCpuThreads = 1024;  // upper bound of run.threads and verify --threads

// The intra-op CPU threads one rank runs with (at::set_num_threads), and where the number came
// from, for the log: "run.threads", "OMP_NUM_THREADS" or "8 cores / 4 local ranks".
struct CpuThreads {
  int count = 1;
  std::string source;
};

// run.threads (and `stp verify --threads`) resolved: `requested` when > 0; else the user's
// OMP_NUM_THREADS when > 0; else the cores available divided among the local ranks, at least 1.
// REQUIRES (checked, std::invalid_argument naming the value and the range):
// 0 <= requested <= kMaxCpuThreads. cores and local_ranks below 1 count as 1.
CpuThreads resolve_cpu_threads(std::int64_t requested, int omp_num_threads, int cores,
                               int local_ranks);

// resolve_cpu_threads with this process's figures: the user's OMP_NUM_THREADS as the launch
// environment read it (not the one `stp run` sets); the CPUs this process may run on
// (sched_getaffinity, else std::thread::hardware_concurrency); and `local_ranks`, or when 0
// the launcher's LOCAL_WORLD_SIZE (1 when not set).
CpuThreads cpu_threads(std::int64_t requested, const engine::LaunchEnv& env, int local_ranks = 0);

}  // namespace stp::train
