#include "train/train_config.h"

#include <nlohmann/json.hpp>

#include <sched.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <thread>

#include "checkpoint/hf.h"
#include "common/check.h"
#include "data/tokenizer.h"
#include "models/llama_config.h"
#include "schedule/generators.h"

namespace stp::train {
namespace {

using nlohmann::json;

// One configurable field: where it lives, what it means, how it is checked.
struct Field {
  std::string section, key, type, unit, range, meaning;
  std::function<void(TrainConfig&, const json&, const std::string& where)> set;
  std::function<json(const TrainConfig&)> get;
};

template <typename Member>
Field int_field(const char* section, const char* key, Member member, std::int64_t lo,
                std::int64_t hi, const char* unit, const char* meaning) {
  std::string range =
      "[" + std::to_string(lo) + ", " +
      (hi == std::numeric_limits<std::int64_t>::max() ? std::string("inf") : std::to_string(hi)) +
      "]";
  return {section,
          key,
          "integer",
          unit,
          range,
          meaning,
          [=](TrainConfig& c, const json& v, const std::string& where) {
            std::int64_t x = 0;
            if (v.is_number_integer()) {
              x = v.get<std::int64_t>();
            } else if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) {
              x = static_cast<std::int64_t>(v.get<double>());
            } else {
              STP_CHECK(false, where, section, ".", key, "=", v.dump(), " must be an integer in ",
                        range);
            }
            STP_CHECK(x >= lo && x <= hi, where, section, ".", key, "=", x, " is out of range ",
                      range);
            member(c) = x;
          },
          [=](const TrainConfig& c) { return json(member(const_cast<TrainConfig&>(c))); }};
}

template <typename Member>
Field real_field(const char* section, const char* key, Member member, double lo, double hi,
                 const char* unit, const char* meaning) {
  std::ostringstream r;
  r << "[" << lo << ", " << (std::isinf(hi) ? std::string("inf") : std::to_string(hi)) << "]";
  if (!std::isinf(hi)) {
    r.str("");
    r << "[" << lo << ", " << hi << "]";
  }
  std::string range = r.str();
  return {section,
          key,
          "number",
          unit,
          range,
          meaning,
          [=](TrainConfig& c, const json& v, const std::string& where) {
            STP_CHECK(v.is_number(), where, section, ".", key, "=", v.dump(),
                      " must be a number in ", range);
            double x = v.get<double>();
            STP_CHECK(std::isfinite(x) && x >= lo && x <= hi, where, section, ".", key, "=", x,
                      " is out of range ", range);
            member(c) = x;
          },
          [=](const TrainConfig& c) { return json(member(const_cast<TrainConfig&>(c))); }};
}

template <typename Member>
Field string_field(const char* section, const char* key, Member member,
                   std::vector<std::string> choices, const char* unit, const char* meaning) {
  std::string range;
  for (const auto& s : choices) range += (range.empty() ? "" : " | ") + s;
  if (range.empty()) range = "any string";
  return {section,
          key,
          "string",
          unit,
          range,
          meaning,
          [=](TrainConfig& c, const json& v, const std::string& where) {
            STP_CHECK(v.is_string(), where, section, ".", key, "=", v.dump(), " must be a string (",
                      range, ")");
            std::string s = v.get<std::string>();
            bool ok = choices.empty();
            for (const auto& ch : choices) ok = ok || ch == s;
            STP_CHECK(ok, where, section, ".", key, "='", s, "' must be one of ", range);
            member(c) = s;
          },
          [=](const TrainConfig& c) { return json(member(const_cast<TrainConfig&>(c))); }};
}

template <typename Member>
Field bool_field(const char* section, const char* key, Member member, const char* meaning) {
  return {section,
          key,
          "boolean",
          "-",
          "true | false",
          meaning,
          [=](TrainConfig& c, const json& v, const std::string& where) {
            STP_CHECK(v.is_boolean(), where, section, ".", key, "=", v.dump(),
                      " must be true or false");
            member(c) = v.get<bool>();
          },
          [=](const TrainConfig& c) { return json(member(const_cast<TrainConfig&>(c))); }};
}

#define M(path) \
  [](TrainConfig & c) -> auto& { return c.path; }
constexpr std::int64_t kInf = std::numeric_limits<std::int64_t>::max();
constexpr double kInfD = std::numeric_limits<double>::infinity();

const std::vector<Field>& fields() {
  static const std::vector<Field> table = {
      string_field("model", "arch", M(model.arch), {"gpt", "llama"}, "-",
                   "gpt (LayerNorm, GELU, learned positions) or llama (RMSNorm, SwiGLU, rotary, "
                   "grouped-query attention, no biases; docs/model.md)"),
      int_field("model", "vocab", M(model.vocab), 1, 1 << 24, "tokens",
                "vocabulary size; the byte tokenizer needs >= 258, token shards more than their "
                "largest id"),
      int_field("model", "seq_len", M(model.seq_len), 1, 1 << 20, "tokens",
                "sequence length of every sample"),
      int_field("model", "d_model", M(model.d_model), 1, 1 << 16, "-", "residual width C"),
      int_field("model", "n_heads", M(model.n_heads), 1, 1 << 12, "-",
                "attention heads; divides d_model and is divisible by parallel.tp"),
      int_field("model", "n_layers", M(model.n_layers), 1, 1 << 12, "-",
                "transformer blocks; >= the number of pipeline stages"),
      int_field("model", "mlp_hidden", M(model.mlp_hidden), 0, 1 << 20, "-",
                "MLP hidden size; 0 means 4*d_model (gpt), 8*d_model/3 rounded up to 256 (llama)"),
      int_field("model", "n_kv_heads", M(model.n_kv_heads), 0, 1 << 12, "-",
                "llama: key/value heads, dividing n_heads; split over TP when >= parallel.tp, "
                "replicated when fewer; 0 means n_heads"),
      real_field("model", "rope_theta", M(model.rope_theta), 1e-6, kInfD, "-",
                 "llama: rotary embedding base"),
      real_field("model", "rms_eps", M(model.rms_eps), 1e-12, models::kMaxRmsEps, "-",
                 "llama: RMSNorm epsilon (transformers' rms_norm_eps)"),
      bool_field("model", "tie_embeddings", M(model.tie_embeddings),
                 "llama: the LM head reuses the token embedding (needs one pipeline stage)"),
      string_field("model", "dtype", M(model.dtype), {"float32", "float64", "bfloat16"}, "-",
                   "compute dtype (optimizer state is float32 or wider)"),
      int_field("model", "init_seed", M(model.init_seed), 0, kInf, "-", "weight init seed"),
      string_field("model", "init_from", M(model.init_from), {}, "path",
                   "a Hugging Face GPT2LMHeadModel or LlamaForCausalLM folder to start from "
                   "(config.json + safetensors); its config sets arch and the model's shape "
                   "(vocab, d_model, n_heads, n_layers, mlp_hidden; llama: n_kv_heads, "
                   "rope_theta, rms_eps, tie_embeddings); seq_len must be <= its n_positions or "
                   "max_position_embeddings (docs/checkpoints.md); empty: random init"),
      int_field("parallel", "tp", M(parallel.tp), 1, 1024, "ranks", "tensor-parallel size"),
      int_field("parallel", "pp", M(parallel.pp), 1, 1024, "ranks", "pipeline-parallel size"),
      int_field("parallel", "dp", M(parallel.dp), 0, 1 << 20, "ranks",
                "data-parallel size; 0 means world / (tp*pp)"),
      string_field("schedule", "kind", M(schedule.kind), {"1f1b", "1f1b-i", "zb-h1", "zb-v", "stp"},
                   "-", "pipeline schedule"),
      int_field("schedule", "microbatches", M(schedule.microbatches), 1, 1 << 16, "-",
                "microbatches per step (stp needs >= 2*pp, 1f1b-i a multiple of pp)"),
      int_field("schedule", "micro_batch_size", M(schedule.micro_batch_size), 1, 1 << 16,
                "sequences", "sequences per microbatch"),
      int_field("schedule", "chunks", M(schedule.chunks), 1, 64, "-",
                "model chunks per rank for 1f1b-i (the V-shapes always use 2)"),
      bool_field("schedule", "braid", M(schedule.braid),
                 "interleave the units of braided instructions (false: run them back to back)"),
      string_field("offload", "budget", M(offload.budget), {}, "bytes or %",
                   "device memory for activations: auto (80% of the unconstrained peak, or the "
                   "smallest feasible budget when that is below it), off, a size (512MiB, 2GiB) "
                   "or a percentage of the peak (refused below the floor)"),
      real_field("offload", "host_gbps", M(offload.host_gbps), 0.001, kInfD, "GB/s",
                 "host-link bandwidth the planner assumes"),
      string_field("offload", "recompute", M(offload.recompute), {"auto", "off", "all"}, "-",
                   "recompute a set's activations in its backward instead of keeping them "
                   "(docs/offload.md): auto lets the planner choose per set, all recomputes every "
                   "set (also with budget off), off never"),
      real_field("offload", "recompute_share", M(offload.recompute_share), 0.01, 1, "-",
                 "with recompute all: the leading share of each chunk's layers every set "
                 "recomputes, the others kept (1: whole sets; auto chooses shares itself)"),
      real_field("optimizer", "lr", M(optimizer.lr), 0, 10, "-", "peak learning rate"),
      real_field("optimizer", "min_lr", M(optimizer.min_lr), 0, 10, "-",
                 "learning rate at the end of the cosine decay"),
      int_field("optimizer", "warmup_steps", M(optimizer.warmup_steps), 0, kInf, "steps",
                "linear warm-up"),
      real_field("optimizer", "beta1", M(optimizer.beta1), 0, 0.999999, "-", "AdamW beta1"),
      real_field("optimizer", "beta2", M(optimizer.beta2), 0, 0.999999, "-", "AdamW beta2"),
      real_field("optimizer", "eps", M(optimizer.eps), 1e-30, 1, "-", "AdamW epsilon"),
      real_field("optimizer", "weight_decay", M(optimizer.weight_decay), 0, 10, "-",
                 "decoupled weight decay (matrices and embeddings only)"),
      real_field("optimizer", "clip", M(optimizer.clip), 0, kInfD, "-",
                 "global gradient-norm clip; 0 disables"),
      string_field("data", "format", M(data.format), {"bytes", "llmc", "nanogpt"}, "-",
                   "bytes: text through the byte tokenizer; llmc: llm.c token shards (uint16 or "
                   "uint32); nanogpt: headerless uint16 .bin files (docs/data.md)"),
      string_field("data", "path", M(data.path), {}, "path",
                   "bytes: text file or folder of text files, empty: the generated corpus; "
                   "llmc/nanogpt: a shard file, a folder of *.bin shards or a glob"),
      int_field("data", "corpus_bytes", M(data.corpus_bytes), 1024, 1ll << 34, "bytes",
                "size of the generated corpus"),
      int_field("data", "corpus_seed", M(data.corpus_seed), 0, kInf, "-",
                "seed of the generated corpus (its mix of lines); a resumed run must use the "
                "checkpoint's"),
      int_field("run", "steps", M(run.steps), 1, kInf, "steps", "optimizer steps to run"),
      int_field("run", "seed", M(run.seed), 0, kInf, "-", "data-order seed"),
      string_field("run", "log_dir", M(run.log_dir), {}, "path",
                   "metrics (JSON lines), plots, traces and the resolved config"),
      string_field("run", "checkpoint_dir", M(run.checkpoint_dir), {}, "path",
                   "checkpoints; empty: <log_dir>/checkpoints"),
      int_field("run", "checkpoint_interval", M(run.checkpoint_interval), 0, kInf, "steps",
                "save every N steps and at the end; 0 disables"),
      int_field("run", "keep_checkpoints", M(run.keep_checkpoints), 1, 1000, "-",
                "newest complete checkpoints kept"),
      real_field("run", "comm_timeout_s", M(run.comm_timeout_s), 0.1, 86400, "s",
                 "a collective or P2P slower than this fails the run"),
      string_field("run", "device", M(run.device), {"cpu", "cuda"}, "-", "where to compute"),
      int_field("run", "threads", M(run.threads), 0, kMaxCpuThreads, "threads",
                "CPU intra-op threads per rank (cpu runs); 0: OMP_NUM_THREADS if you set it, "
                "else the cores available / the local ranks, at least 1"),
      bool_field("run", "progress", M(run.progress), "progress bar on rank 0"),
  };
  return table;
}
#undef M

const Field* find_field(const std::string& section, const std::string& key) {
  for (const auto& f : fields())
    if (f.section == section && f.key == key) return &f;
  return nullptr;
}

std::string known_keys(const std::string& section) {
  std::string s;
  for (const auto& f : fields())
    if (f.section == section) s += (s.empty() ? "" : ", ") + f.key;
  return s;
}

const char* kSections = "model, parallel, schedule, offload, optimizer, data, run";

// Model chunks along the pipeline: pp, times 2 for the V-shaped schedules, times chunks for
// 1f1b-i.
std::int64_t pipeline_stages(const TrainConfig& c) {
  const std::string& k = c.schedule.kind;
  return c.parallel.pp * (k == "zb-v" || k == "stp" ? 2 : (k == "1f1b-i" ? c.schedule.chunks : 1));
}

}  // namespace

void TrainConfig::apply_json(const std::string& text, const std::string& source) {
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::parse_error& e) {
    STP_CHECK(false, source, ": not valid JSON: ", e.what());
  }
  STP_CHECK(doc.is_object(), source, ": the config must be a JSON object with sections ",
            kSections);
  for (auto& [section, body] : doc.items()) {
    STP_CHECK(!known_keys(section).empty(), source, ": unknown section '", section,
              "' (sections: ", kSections, ")");
    STP_CHECK(body.is_object(), source, ": section '", section, "' must be an object");
    for (auto& [key, value] : body.items()) {
      const Field* f = find_field(section, key);
      STP_CHECK(f != nullptr, source, ": unknown key '", section, ".", key, "' (", section,
                " has: ", known_keys(section), ")");
      f->set(*this, value, source + ": ");
    }
  }
}

void TrainConfig::apply_override(const std::string& assignment) {
  auto eq = assignment.find('=');
  auto dot = assignment.find('.');
  STP_CHECK(eq != std::string::npos && dot != std::string::npos && dot < eq, "--set '", assignment,
            "' must look like section.key=value");
  std::string section = assignment.substr(0, dot);
  std::string key = assignment.substr(dot + 1, eq - dot - 1);
  std::string value = assignment.substr(eq + 1);
  STP_CHECK(!known_keys(section).empty(), "--set: unknown section '", section,
            "' (sections: ", kSections, ")");
  const Field* f = find_field(section, key);
  STP_CHECK(f != nullptr, "--set: unknown key '", section, ".", key, "' (", section,
            " has: ", known_keys(section), ")");
  json v;
  if (f->type == "string") {
    v = value;
  } else {
    try {
      v = json::parse(value);
    } catch (const json::parse_error&) {
      STP_CHECK(false, "--set ", section, ".", key, "='", value, "' must be a ", f->type, " in ",
                f->range);
    }
  }
  f->set(*this, v, "--set ");
}

void TrainConfig::validate() const {
  STP_CHECK(model.d_model % model.n_heads == 0, "model.d_model=", model.d_model,
            " must be divisible by model.n_heads=", model.n_heads);
  STP_CHECK(model.n_heads % parallel.tp == 0, "model.n_heads=", model.n_heads,
            " must be divisible by parallel.tp=", parallel.tp);
  const bool llama = model.arch == "llama";
  STP_CHECK(llama || (model.n_kv_heads == 0 && model.rope_theta == ModelSection{}.rope_theta &&
                      !model.tie_embeddings),
            "model.n_kv_heads, model.rope_theta and model.tie_embeddings apply to "
            "model.arch=llama, not model.arch=",
            model.arch);
  STP_CHECK(llama || model.rms_eps == ModelSection{}.rms_eps,
            "model.rms_eps applies to model.arch=llama, not model.arch=", model.arch);
  const std::int64_t kv = model.n_kv_heads > 0 ? model.n_kv_heads : model.n_heads;
  if (llama) {
    STP_CHECK((model.d_model / model.n_heads) % 2 == 0,
              "model.d_model/model.n_heads=", model.d_model / model.n_heads,
              " must be even for rotary embeddings");
    STP_CHECK(model.n_heads % kv == 0, "model.n_kv_heads=", kv,
              " must divide model.n_heads=", model.n_heads);
    STP_CHECK(kv >= parallel.tp ? kv % parallel.tp == 0 : parallel.tp % kv == 0,
              "model.n_kv_heads=", kv, " and parallel.tp=", parallel.tp,
              " must divide one another (split over TP when n_kv_heads >= tp, replicated when "
              "fewer)");
  }
  std::int64_t hidden = model.mlp_hidden > 0 ? model.mlp_hidden : 4 * model.d_model;
  if (llama) {
    models::LlamaConfig lc;  // Llama's default width rule
    lc.d_model = model.d_model;
    lc.ffn_hidden = model.mlp_hidden;
    hidden = lc.hidden();
  }
  STP_CHECK(hidden % parallel.tp == 0, "MLP hidden size ", hidden,
            " must be divisible by parallel.tp=", parallel.tp);
  const std::int64_t stages = pipeline_stages(*this);
  STP_CHECK(model.n_layers >= stages, "model.n_layers=", model.n_layers, " must be >= ", stages,
            " pipeline stages (pp=", parallel.pp, " with schedule ", schedule.kind, ")");
  STP_CHECK(!model.tie_embeddings || stages == 1, "model.tie_embeddings=true needs one pipeline ",
            "stage, but pp=", parallel.pp, " with schedule ", schedule.kind, " has ", stages,
            " (use parallel.pp=1 with 1f1b or zb-h1)");
  const auto kind = stp::schedule::kind_from_string(schedule.kind);
  const int pp = static_cast<int>(parallel.pp), m = static_cast<int>(schedule.microbatches);
  STP_CHECK(stp::schedule::accepts_microbatches(kind, pp, m), "schedule.microbatches=", m,
            " is not accepted by the ", schedule.kind, " schedule with pp=", pp,
            "; the smallest it accepts from ", m, " up is ",
            stp::schedule::min_microbatches(kind, pp, 0, m));
  STP_CHECK(offload.recompute_share == 1 || offload.recompute == "all",
            "offload.recompute_share=", offload.recompute_share,
            " needs offload.recompute=all (it is ", offload.recompute, ")");
  STP_CHECK(optimizer.min_lr <= optimizer.lr, "optimizer.min_lr=", optimizer.min_lr,
            " must be <= optimizer.lr=", optimizer.lr);
  if (data.format == "bytes") {
    STP_CHECK(model.vocab >= data::ByteTokenizer::kVocabSize, "model.vocab=", model.vocab,
              " must be >= ", data::ByteTokenizer::kVocabSize, " for the byte tokenizer");
  } else {
    STP_CHECK(!data.path.empty(), "data.format=", data.format,
              " needs data.path: a shard file, a folder of *.bin shards or a glob");
  }
}

std::string TrainConfig::to_json() const {
  json doc = json::object();
  for (const auto& f : fields()) doc[f.section][f.key] = f.get(*this);
  return doc.dump(2);
}

std::string TrainConfig::checkpoint_path() const {
  return run.checkpoint_dir.empty() ? run.log_dir + "/checkpoints" : run.checkpoint_dir;
}

CpuThreads resolve_cpu_threads(std::int64_t requested, int omp_num_threads, int cores,
                               int local_ranks) {
  STP_CHECK(requested >= 0 && requested <= kMaxCpuThreads, "threads=", requested,
            " is out of range [0, ", kMaxCpuThreads, "] (0: the default)");
  if (requested > 0) return {static_cast<int>(requested), "run.threads"};
  if (omp_num_threads > 0) return {omp_num_threads, "OMP_NUM_THREADS"};
  cores = std::max(cores, 1);
  local_ranks = std::max(local_ranks, 1);
  return {std::max(1, cores / local_ranks),
          str_cat(cores, cores == 1 ? " core / " : " cores / ", local_ranks,
                  local_ranks == 1 ? " local rank" : " local ranks")};
}

CpuThreads cpu_threads(std::int64_t requested, const engine::LaunchEnv& env, int local_ranks) {
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
  if (local_ranks <= 0) local_ranks = env.local_world_size;
  return resolve_cpu_threads(requested, env.omp_num_threads, cores, local_ranks);
}

void apply_init_from_shape(TrainConfig& c) {
  const std::string arch = checkpoint::read_hf_architecture(c.model.init_from);
  std::int64_t positions = 0;
  const char* positions_key = "n_positions";
  if (arch == "LlamaForCausalLM" || arch == "llama") {
    const models::LlamaConfig hf = checkpoint::read_llama_config(c.model.init_from);
    c.model.arch = "llama";
    c.model.vocab = hf.vocab;
    c.model.d_model = hf.d_model;
    c.model.n_heads = hf.n_heads;
    c.model.n_kv_heads = hf.kv_heads();
    c.model.n_layers = hf.n_layers;
    c.model.mlp_hidden = hf.hidden();
    c.model.rope_theta = hf.rope_theta;
    c.model.rms_eps = hf.rms_eps;
    // stp ties the head to the embedding on one stage only: on more, a tied file loads untied
    // (the head starts as a copy of the embedding).
    c.model.tie_embeddings = hf.tie_embeddings && pipeline_stages(c) == 1;
    positions = hf.seq_len;
    positions_key = "max_position_embeddings";
  } else {
    const models::GptConfig hf = checkpoint::read_gpt2_config(c.model.init_from);
    STP_CHECK(std::abs(hf.ln_eps - models::GptConfig{}.ln_eps) <= 1e-12, c.model.init_from,
              "/config.json: layer_norm_epsilon=", hf.ln_eps,
              " is not supported: stp train's GPT uses ", models::GptConfig{}.ln_eps);
    c.model.arch = "gpt";
    c.model.vocab = hf.vocab;
    c.model.d_model = hf.d_model;
    c.model.n_heads = hf.n_heads;
    c.model.n_layers = hf.n_layers;
    c.model.mlp_hidden = hf.mlp_hidden;
    c.model.n_kv_heads = 0;
    c.model.rope_theta = ModelSection{}.rope_theta;
    c.model.rms_eps = ModelSection{}.rms_eps;
    c.model.tie_embeddings = false;
    positions = hf.seq_len;
  }
  STP_CHECK(c.model.seq_len <= positions, "model.seq_len=", c.model.seq_len,
            " is longer than model.init_from's ", positions_key, "=", positions, " (",
            c.model.init_from, "/config.json); use model.seq_len in [1, ", positions, "]");
}

TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  TrainConfig cfg;
  if (!path.empty()) {
    std::ifstream in(path);
    STP_CHECK(in.good(), "--config ", path, ": cannot read the file");
    std::stringstream text;
    text << in.rdbuf();
    cfg.apply_json(text.str(), path);
  }
  for (const auto& s : overrides) cfg.apply_override(s);
  if (!cfg.model.init_from.empty()) apply_init_from_shape(cfg);
  cfg.validate();
  return cfg;
}

std::string config_reference_markdown() {
  auto cell = [](std::string text) {  // a '|' inside a cell would split it
    for (std::size_t p = text.find('|'); p != std::string::npos; p = text.find('|', p + 2))
      text.replace(p, 1, "\\|");
    return text;
  };
  TrainConfig defaults;
  std::ostringstream os;
  std::string section;
  for (const auto& f : fields()) {
    if (f.section != section) {
      section = f.section;
      os << "\n### [" << section << "]\n\n| key | type | unit | range | default | meaning |\n"
         << "|---|---|---|---|---|---|\n";
    }
    os << "| `" << f.key << "` | " << f.type << " | " << f.unit << " | " << cell(f.range) << " | `"
       << f.get(defaults).dump() << "` | " << cell(f.meaning) << " |\n";
  }
  return os.str();
}

}  // namespace stp::train
