#include "checkpoint/hf.h"

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "checkpoint/checkpoint.h"
#include "checkpoint/reshard.h"
#include "common/check.h"
#include "common/file.h"
#include "data/mapped_file.h"
#include "models/gpt_params.h"
#include "models/llama_params.h"

namespace stp::checkpoint {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kGpt2Arch = "GPT2LMHeadModel";
constexpr const char* kLlamaArch = "LlamaForCausalLM";

std::string shape_str(at::IntArrayRef shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

json read_json_file(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  STP_CHECK(in.good(), path, ": cannot read the ", what, " (not a Hugging Face model folder?)");
  std::stringstream text;
  text << in.rdbuf();
  try {
    json j = json::parse(text.str());
    STP_CHECK(j.is_object(), path, ": the ", what, " is not a JSON object");
    return j;
  } catch (const json::parse_error& e) {
    STP_CHECK(false, path, ": the ", what, " is not valid JSON: ", e.what());
  }
  return {};
}

// config.json's integer field `key` (>= lo); `fallback` when absent or null and fallback >= 0.
std::int64_t int_field(const json& c, const std::string& where, const char* key, std::int64_t lo,
                       std::int64_t fallback = -1) {
  if (!c.contains(key) || c[key].is_null()) {
    STP_CHECK(fallback >= 0, where, ": config.json has no '", key, "'");
    return fallback;
  }
  STP_CHECK(c[key].is_number_integer() && c[key].get<std::int64_t>() >= lo, where, ": config.json ",
            key, "=", c[key].dump(), " must be an integer >= ", lo);
  return c[key].get<std::int64_t>();
}

// Refuses config.json's `key` unless absent or equal to `want` (what stp's model computes).
void require_value(const json& c, const std::string& where, const char* key, const json& want,
                   const char* why) {
  if (!c.contains(key) || c[key].is_null() || c[key] == want) return;
  STP_CHECK(false, where, ": config.json ", key, "=", c[key].dump(), " is not supported: stp's ",
            why, " (needs ", want.dump(), ")");
}

std::string architecture_of(const json& c) {
  std::string arch = c.value("model_type", std::string());
  if (c.contains("architectures") && c["architectures"].is_array() && !c["architectures"].empty() &&
      c["architectures"][0].is_string())
    arch = c["architectures"][0].get<std::string>();
  return arch;
}

// config.json's number field `key` (> 0); `fallback` when absent or null.
double real_field(const json& c, const std::string& where, const char* key, double fallback) {
  if (!c.contains(key) || c[key].is_null()) return fallback;
  STP_CHECK(c[key].is_number() && c[key].get<double>() > 0, where, ": config.json ", key, "=",
            c[key].dump(), " must be a number > 0");
  return c[key].get<double>();
}

bool close_to(double a, double b) { return std::abs(a - b) <= 1e-12 * std::abs(b); }

// One dimension config.json gives and stp's model must have.
struct SameDim {
  const char* hf_key;
  std::int64_t file;
  const char* stp_key;
  std::int64_t stp;
};

void require_same_shape(const std::string& where, std::initializer_list<SameDim> dims) {
  for (const SameDim& d : dims)
    STP_CHECK(d.file == d.stp, where, ": ", d.hf_key, "=", d.file, " but stp's model.", d.stp_key,
              "=", d.stp);
}

// Writes `out`/model.safetensors from the stp tensors `full` through `rows` (the head row's
// tensor left out when `tied`) and `out`/config.json. Returns the number of tensors written.
std::int64_t write_hf_folder(const std::string& out, const std::vector<HfTensorMap>& rows,
                             const TensorMap& full, bool tied, const json& config) {
  TensorMap hf;
  for (const HfTensorMap& row : rows) {
    auto it = full.find(row.stp);
    STP_CHECK(it != full.end(), "export: parameter '", row.stp, "' is missing");
    const at::Tensor t = it->second.cpu();
    STP_CHECK(t.sizes().vec() == row.stp_shape, "export: parameter '", row.stp, "' has shape ",
              shape_str(t.sizes()), ", expected ", shape_str(row.stp_shape));
    if (row.stp == "lm_head.w" && tied) continue;
    hf[row.hf] = stp_to_hf(t, row);
    if (row.layout == HfLayout::kStack) hf[row.hf2] = stp_to_hf(t, row, 1);
  }
  fs::create_directories(out);
  write_safetensors(out + "/model.safetensors", hf, {{"format", "pt"}});
  write_file(out + "/config.json", config.dump(2) + "\n");
  return static_cast<std::int64_t>(hf.size());
}

// Whether lm_head.w is exactly wte (the export then ties them).
bool head_is_embedding(const TensorMap& full) {
  auto wte = full.find("wte"), head = full.find("lm_head.w");
  return wte != full.end() && head != full.end() && at::equal(wte->second, head->second);
}

}  // namespace

std::string read_hf_architecture(const std::string& dir) {
  return architecture_of(read_json_file(dir + "/config.json", "model config"));
}

at::Tensor hf_to_stp(const at::Tensor& hf, const HfTensorMap& row) {
  switch (row.layout) {
    case HfLayout::kSame: return hf;
    case HfLayout::kConv1D: return hf.t();
    case HfLayout::kConv1DQkv: return hf.t().view(row.stp_shape);  // (3C, C) -> (3, C, C)
    case HfLayout::kQkvBias: return hf.view(row.stp_shape);        // (3C) -> (3, C)
    case HfLayout::kFirstRows: return hf.narrow(0, 0, row.stp_shape[0]);
    case HfLayout::kStack: break;  // two tensors: HfImport::full
  }
  STP_ASSERT(false, "hf_to_stp cannot map ", row.stp, " from one tensor");
  return {};
}

at::Tensor stp_to_hf(const at::Tensor& full, const HfTensorMap& row, int part) {
  switch (row.layout) {
    case HfLayout::kStack: return full.select(0, part).contiguous();
    case HfLayout::kSame:
    case HfLayout::kFirstRows: return full.contiguous();  // export writes seq_len positions
    case HfLayout::kConv1D: return full.t().contiguous();
    case HfLayout::kConv1DQkv: return full.reshape({-1, full.size(-1)}).t().contiguous();
    case HfLayout::kQkvBias: return full.reshape({-1}).contiguous();
  }
  STP_ASSERT(false, "unknown HfLayout for ", row.stp);
  return {};
}

// ---- GPT-2 -----------------------------------------------------------------------------------

models::GptConfig read_gpt2_config(const std::string& dir) {
  const json c = read_json_file(dir + "/config.json", "model config");
  const std::string where = dir + "/config.json";
  const std::string arch = architecture_of(c);
  STP_CHECK(arch == kGpt2Arch, where, ": architecture '", arch, "' is not supported for stp's GPT",
            " (supported: ", kGpt2Arch, ")");
  // gelu_pytorch_tanh is the same function as gelu_new.
  if (c.value("activation_function", json()) != "gelu_pytorch_tanh")
    require_value(c, where, "activation_function", "gelu_new", "GPT uses tanh-approximated GELU");
  require_value(c, where, "scale_attn_weights", true, "attention scales scores by 1/sqrt(hd)");
  require_value(c, where, "scale_attn_by_inverse_layer_idx", false,
                "attention does not scale by the layer index");
  require_value(c, where, "add_cross_attention", false, "GPT has no cross-attention");
  models::GptConfig g;
  g.vocab = int_field(c, where, "vocab_size", 1);
  g.seq_len = int_field(c, where, "n_positions", 1);
  g.d_model = int_field(c, where, "n_embd", 1);
  g.n_heads = int_field(c, where, "n_head", 1);
  g.n_layers = int_field(c, where, "n_layer", 1);
  g.mlp_hidden = int_field(c, where, "n_inner", 1, 0);
  if (c.contains("layer_norm_epsilon")) {
    STP_CHECK(c["layer_norm_epsilon"].is_number() && c["layer_norm_epsilon"].get<double>() > 0,
              where, ": config.json layer_norm_epsilon=", c["layer_norm_epsilon"].dump(),
              " must be a number > 0");
    g.ln_eps = c["layer_norm_epsilon"].get<double>();
  }
  STP_CHECK(g.d_model % g.n_heads == 0, where, ": config.json n_embd=", g.d_model,
            " is not divisible by n_head=", g.n_heads);
  return g;
}

std::vector<HfTensorMap> gpt2_tensor_map(const models::GptConfig& cfg, std::int64_t n_positions,
                                         const std::string& prefix) {
  const std::int64_t V = cfg.vocab, T = cfg.seq_len, C = cfg.d_model, H = cfg.hidden();
  using L = HfLayout;
  std::vector<HfTensorMap> rows = {
      {"wte", prefix + "wte.weight", L::kSame, {V, C}, {V, C}, ""},
      {"wpe", prefix + "wpe.weight", L::kFirstRows, {n_positions, C}, {T, C}, ""},
  };
  for (std::int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string s = "layers." + std::to_string(l) + ".";
    const std::string h = prefix + "h." + std::to_string(l) + ".";
    const std::vector<HfTensorMap> layer = {
        {s + "ln1.w", h + "ln_1.weight", L::kSame, {C}, {C}, ""},
        {s + "ln1.b", h + "ln_1.bias", L::kSame, {C}, {C}, ""},
        {s + "attn.qkv.w", h + "attn.c_attn.weight", L::kConv1DQkv, {C, 3 * C}, {3, C, C}, ""},
        {s + "attn.qkv.b", h + "attn.c_attn.bias", L::kQkvBias, {3 * C}, {3, C}, ""},
        {s + "attn.proj.w", h + "attn.c_proj.weight", L::kConv1D, {C, C}, {C, C}, ""},
        {s + "attn.proj.b", h + "attn.c_proj.bias", L::kSame, {C}, {C}, ""},
        {s + "ln2.w", h + "ln_2.weight", L::kSame, {C}, {C}, ""},
        {s + "ln2.b", h + "ln_2.bias", L::kSame, {C}, {C}, ""},
        {s + "mlp.fc1.w", h + "mlp.c_fc.weight", L::kConv1D, {C, H}, {H, C}, ""},
        {s + "mlp.fc1.b", h + "mlp.c_fc.bias", L::kSame, {H}, {H}, ""},
        {s + "mlp.fc2.w", h + "mlp.c_proj.weight", L::kConv1D, {H, C}, {C, H}, ""},
        {s + "mlp.fc2.b", h + "mlp.c_proj.bias", L::kSame, {C}, {C}, ""},
    };
    rows.insert(rows.end(), layer.begin(), layer.end());
  }
  rows.push_back({"ln_f.w", prefix + "ln_f.weight", L::kSame, {C}, {C}, ""});
  rows.push_back({"ln_f.b", prefix + "ln_f.bias", L::kSame, {C}, {C}, ""});
  // GPT2LMHeadModel ties the head to wte and save_pretrained then omits lm_head.weight.
  rows.push_back({"lm_head.w", "lm_head.weight", L::kSame, {V, C}, {V, C}, prefix + "wte.weight"});
  return rows;
}

// ---- Llama ---------------------------------------------------------------------------------

models::LlamaConfig read_llama_config(const std::string& dir) {
  const json c = read_json_file(dir + "/config.json", "model config");
  const std::string where = dir + "/config.json";
  const std::string arch = architecture_of(c);
  STP_CHECK(arch == kLlamaArch || arch == "llama", where, ": architecture '", arch,
            "' is not supported for stp's Llama (supported: ", kLlamaArch, ")");
  require_value(c, where, "hidden_act", "silu", "Llama's MLP is SwiGLU with SiLU");
  require_value(c, where, "attention_bias", false, "Llama has no attention biases");
  require_value(c, where, "mlp_bias", false, "Llama has no MLP biases");
  // Rotary scaling (linear, dynamic, yarn, llama3, ...) changes the angles stp computes:
  // rope_parameters (transformers 5) and rope_scaling (earlier) may only say "default".
  double theta = real_field(c, where, "rope_theta", 10000.0);
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (!c.contains(key) || c[key].is_null()) continue;
    const json& rp = c[key];
    STP_CHECK(rp.is_object(), where, ": config.json ", key, "=", rp.dump(), " must be an object");
    for (auto& [k, v] : rp.items()) {
      if (k == "rope_theta") {
        theta = real_field(rp, where + " " + key, "rope_theta", theta);
      } else {
        STP_CHECK((k == "rope_type" || k == "type") && v == "default", where, ": config.json ", key,
                  ".", k, "=", v.dump(), " is not supported: stp's rotary embeddings are unscaled ",
                  "(needs rope_type \"default\" and rope_theta only)");
      }
    }
  }
  models::LlamaConfig l;
  l.vocab = int_field(c, where, "vocab_size", 1);
  l.seq_len = int_field(c, where, "max_position_embeddings", 1);
  l.d_model = int_field(c, where, "hidden_size", 1);
  l.n_heads = int_field(c, where, "num_attention_heads", 1);
  l.n_kv_heads = int_field(c, where, "num_key_value_heads", 1, l.n_heads);
  l.n_layers = int_field(c, where, "num_hidden_layers", 1);
  l.ffn_hidden = int_field(c, where, "intermediate_size", 1);
  l.rope_theta = theta;
  l.rms_eps = real_field(c, where, "rms_norm_eps", 1e-6);  // transformers' default
  const json tie = c.value("tie_word_embeddings", json(false));
  STP_CHECK(tie.is_boolean(), where, ": config.json tie_word_embeddings=", tie.dump(),
            " must be true or false");
  l.tie_embeddings = tie.get<bool>();
  STP_CHECK(l.d_model % l.n_heads == 0, where, ": config.json hidden_size=", l.d_model,
            " is not divisible by num_attention_heads=", l.n_heads);
  const std::int64_t hd = int_field(c, where, "head_dim", 1, l.d_model / l.n_heads);
  STP_CHECK(hd == l.d_model / l.n_heads, where, ": config.json head_dim=", hd,
            " is not supported: stp's Llama uses hidden_size / num_attention_heads = ",
            l.d_model / l.n_heads);
  STP_CHECK(l.n_heads % l.n_kv_heads == 0, where,
            ": config.json num_key_value_heads=", l.n_kv_heads,
            " does not divide num_attention_heads=", l.n_heads);
  STP_CHECK(l.rms_eps <= models::kMaxRmsEps, where, ": config.json rms_norm_eps=", l.rms_eps,
            " is out of stp's range (0, ", models::kMaxRmsEps, "]");
  return l;
}

std::vector<HfTensorMap> llama_tensor_map(const models::LlamaConfig& cfg) {
  const std::int64_t V = cfg.vocab, C = cfg.d_model, H = cfg.hidden(), hd = cfg.head_dim();
  const std::int64_t Q = cfg.n_heads * hd, KV = cfg.kv_heads() * hd;
  using L = HfLayout;
  std::vector<HfTensorMap> rows = {{"wte", "model.embed_tokens.weight", L::kSame, {V, C}, {V, C}}};
  for (std::int64_t l = 0; l < cfg.n_layers; ++l) {
    const std::string s = "layers." + std::to_string(l) + ".";
    const std::string h = "model.layers." + std::to_string(l) + ".";
    const std::vector<HfTensorMap> layer = {
        {s + "ln1.w", h + "input_layernorm.weight", L::kSame, {C}, {C}},
        {s + "attn.q.w", h + "self_attn.q_proj.weight", L::kSame, {Q, C}, {Q, C}},
        {s + "attn.kv.w",
         h + "self_attn.k_proj.weight",
         L::kStack,
         {KV, C},
         {2, KV, C},
         "",
         h + "self_attn.v_proj.weight"},
        {s + "attn.o.w", h + "self_attn.o_proj.weight", L::kSame, {C, Q}, {C, Q}},
        {s + "ln2.w", h + "post_attention_layernorm.weight", L::kSame, {C}, {C}},
        {s + "mlp.gate_up.w",
         h + "mlp.gate_proj.weight",
         L::kStack,
         {H, C},
         {2, H, C},
         "",
         h + "mlp.up_proj.weight"},
        {s + "mlp.down.w", h + "mlp.down_proj.weight", L::kSame, {C, H}, {C, H}},
    };
    rows.insert(rows.end(), layer.begin(), layer.end());
  }
  rows.push_back({"ln_f.w", "model.norm.weight", L::kSame, {C}, {C}});
  // save_pretrained omits lm_head.weight of a tied model: an untied stp head then reads the
  // embedding.
  if (!cfg.tie_embeddings)
    rows.push_back(
        {"lm_head.w", "lm_head.weight", L::kSame, {V, C}, {V, C}, "model.embed_tokens.weight"});
  return rows;
}

// ---- HfImport ----------------------------------------------------------------------------

HfImport::HfImport(const std::string& dir, const std::string& architecture)
    : dir_(dir), architecture_(architecture) {
  const std::string single = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  std::map<std::string, std::string> weight_map;  // HF name -> file, from the index
  if (fs::exists(single)) {
    file_names_.push_back("model.safetensors");
  } else {
    STP_CHECK(fs::exists(index), dir, ": has neither model.safetensors nor ",
              "model.safetensors.index.json (save the model with safe_serialization=True; ",
              "pytorch_model.bin is not read)");
    const json j = read_json_file(index, "safetensors index");
    STP_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), index,
              ": has no weight_map object");
    std::set<std::string> names;
    for (auto& [name, file] : j["weight_map"].items()) {
      STP_CHECK(file.is_string(), index, ": weight_map['", name, "'] is not a file name");
      const std::string f = file.get<std::string>();
      STP_CHECK(f.find('/') == std::string::npos, index, ": weight_map['", name, "']='", f,
                "' must be a file in the folder");
      weight_map[name] = f;
      if (names.insert(f).second) file_names_.push_back(f);
    }
  }
  for (std::size_t i = 0; i < file_names_.size(); ++i) {
    const std::string path = dir + "/" + file_names_[i];
    STP_CHECK(fs::exists(path), dir, ": ", file_names_[i],
              " is missing (named by model.safetensors.index.json)");
    SafetensorsHeader header = read_safetensors_header(path);
    files_.push_back(std::make_shared<const data::MappedFile>(path));
    for (SafetensorsEntry& e : header.entries) {
      auto it = stored_.find(e.name);
      STP_CHECK(it == stored_.end(), dir, ": tensor '", e.name, "' is stored twice (in ",
                file_names_[it->second.file], " and ", file_names_[i], ")");
      if (!weight_map.empty()) {
        auto w = weight_map.find(e.name);
        STP_CHECK(w != weight_map.end() && w->second == file_names_[i], path, ": tensor '", e.name,
                  "' is not listed for this file in model.safetensors.index.json");
      }
      const std::string name = e.name;
      stored_[name] = Stored{static_cast<int>(i), std::move(e), header.data_start};
    }
  }
  for (const auto& [name, file] : weight_map)
    STP_CHECK(stored_.count(name), dir, ": tensor '", name, "' listed in the index is not in ",
              file);
}

at::Tensor HfImport::stored(const std::string& hf_name) const {
  const Stored& s = stored_.at(hf_name);
  // The view is only ever read (copied into parameters).
  return mapped_tensor(files_[s.file], s.data_start, s.entry);
}

void HfImport::match(const std::vector<HfTensorMap>& rows,
                     const std::vector<std::string>& skippable) {
  std::set<std::string> used;
  for (const HfTensorMap& row : rows) {
    std::string name = row.hf;
    if (!stored_.count(name) && !row.tied_to.empty()) name = row.tied_to;
    auto it = stored_.find(name);
    STP_CHECK(it != stored_.end(), dir_, ": tensor '", row.hf, "' is missing (", architecture_,
              " needs it for stp's ", row.stp, ")");
    STP_CHECK(it->second.entry.shape == row.hf_shape, dir_, ": tensor '", name, "' has shape ",
              shape_str(it->second.entry.shape), ", expected ", shape_str(row.hf_shape),
              " from config.json");
    const at::ScalarType t = it->second.entry.dtype;
    STP_CHECK(at::isFloatingType(t), dir_, ": tensor '", name, "' has dtype ", t,
              "; a floating-point dtype was expected");
    used.insert(name);
    if (row.layout == HfLayout::kStack) {
      auto second = stored_.find(row.hf2);
      STP_CHECK(second != stored_.end(), dir_, ": tensor '", row.hf2, "' is missing (",
                architecture_, " needs it for stp's ", row.stp, ")");
      STP_CHECK(second->second.entry.shape == row.hf_shape, dir_, ": tensor '", row.hf2,
                "' has shape ", shape_str(second->second.entry.shape), ", expected ",
                shape_str(row.hf_shape), " from config.json");
      STP_CHECK(at::isFloatingType(second->second.entry.dtype), dir_, ": tensor '", row.hf2,
                "' has dtype ", second->second.entry.dtype,
                "; a floating-point dtype was expected");
      used.insert(row.hf2);
    }
    HfTensorMap resolved = row;
    resolved.hf = name;
    rows_[row.stp] = resolved;
  }
  for (const auto& [name, s] : stored_) {
    if (used.count(name)) continue;
    bool skip = false;
    for (const std::string& suffix : skippable)
      skip = skip || (name.size() >= suffix.size() &&
                      name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0);
    STP_CHECK(skip, dir_, ": tensor '", name, "' (shape ", shape_str(s.entry.shape),
              ") has no place in stp's model for this ", architecture_,
              " (a different architecture or more layers than config.json says)");
  }
}

HfImport HfImport::gpt2(const std::string& dir, const models::GptConfig& cfg) {
  const models::GptConfig file = read_gpt2_config(dir);
  const std::string where = dir + "/config.json";
  require_same_shape(where, {{"vocab_size", file.vocab, "vocab", cfg.vocab},
                             {"n_embd", file.d_model, "d_model", cfg.d_model},
                             {"n_head", file.n_heads, "n_heads", cfg.n_heads},
                             {"n_layer", file.n_layers, "n_layers", cfg.n_layers},
                             {"n_inner (MLP hidden)", file.hidden(), "mlp_hidden", cfg.hidden()}});
  STP_CHECK(cfg.seq_len <= file.seq_len, where, ": n_positions=", file.seq_len,
            " is shorter than stp's model.seq_len=", cfg.seq_len);
  STP_CHECK(close_to(file.ln_eps, cfg.ln_eps), where, ": layer_norm_epsilon=", file.ln_eps,
            " but stp's GPT uses ", cfg.ln_eps);
  HfImport imp(dir, kGpt2Arch);
  const std::string prefix =
      imp.stored_.count("transformer.wte.weight") || !imp.stored_.count("wte.weight")
          ? "transformer."
          : "";
  imp.match(gpt2_tensor_map(cfg, file.seq_len, prefix), {".attn.bias", ".attn.masked_bias"});
  return imp;
}

HfImport HfImport::llama(const std::string& dir, const models::LlamaConfig& cfg) {
  const models::LlamaConfig file = read_llama_config(dir);
  const std::string where = dir + "/config.json";
  require_same_shape(where, {{"vocab_size", file.vocab, "vocab", cfg.vocab},
                             {"hidden_size", file.d_model, "d_model", cfg.d_model},
                             {"num_attention_heads", file.n_heads, "n_heads", cfg.n_heads},
                             {"num_key_value_heads", file.kv_heads(), "n_kv_heads", cfg.kv_heads()},
                             {"num_hidden_layers", file.n_layers, "n_layers", cfg.n_layers},
                             {"intermediate_size", file.hidden(), "mlp_hidden", cfg.hidden()}});
  STP_CHECK(cfg.seq_len <= file.seq_len, where, ": max_position_embeddings=", file.seq_len,
            " is shorter than stp's model.seq_len=", cfg.seq_len);
  STP_CHECK(close_to(file.rope_theta, cfg.rope_theta) && close_to(file.rms_eps, cfg.rms_eps), where,
            ": rope_theta=", file.rope_theta, " rms_norm_eps=", file.rms_eps,
            " but stp's model.rope_theta=", cfg.rope_theta,
            " and its Llama's rms_eps=", cfg.rms_eps);
  STP_CHECK(file.tie_embeddings || !cfg.tie_embeddings, where,
            ": tie_word_embeddings=false but stp's model.tie_embeddings=true (the file has its "
            "own lm_head.weight)");
  HfImport imp(dir, kLlamaArch);
  // Rotary tables some older conversions saved as buffers.
  imp.match(llama_tensor_map(cfg), {".rotary_emb.inv_freq"});
  return imp;
}

const HfTensorMap& HfImport::row(const std::string& stp_name) const {
  auto it = rows_.find(stp_name);
  STP_CHECK(it != rows_.end(), dir_, ": stp parameter '", stp_name, "' has no ", architecture_,
            " tensor");
  return it->second;
}

at::Tensor HfImport::full(const std::string& stp_name) const {
  const HfTensorMap& r = row(stp_name);
  if (r.layout == HfLayout::kStack) return at::stack({stored(r.hf), stored(r.hf2)});
  return hf_to_stp(stored(r.hf), r);
}

at::Tensor HfImport::shard(const std::string& stp_name, int shard_dim, int tp_rank,
                           int tp_size) const {
  const HfTensorMap& r = row(stp_name);
  auto slice = [&](const at::Tensor& t, int dim) {
    const std::int64_t n = t.size(dim);
    STP_CHECK(n % tp_size == 0, stp_name, ": dim ", shard_dim, " of size ", n,
              " is not divisible by tp=", tp_size);
    return t.narrow(dim, tp_rank * (n / tp_size), n / tp_size);
  };
  if (r.layout == HfLayout::kStack && shard_dim >= 1)  // slice each part, then stack the slices
    return at::stack({slice(stored(r.hf), shard_dim - 1), slice(stored(r.hf2), shard_dim - 1)});
  at::Tensor f = full(stp_name);
  return shard_dim < 0 ? f : slice(f, shard_dim);
}

// ---- export ------------------------------------------------------------------------------

std::int64_t write_gpt2_folder(const std::string& out, const models::GptConfig& cfg,
                               const TensorMap& full) {
  cfg.validate();
  STP_CHECK(full.count("wte"), "export: parameter 'wte' is missing");
  const bool tied = head_is_embedding(full);
  const bool gpt2_vocab = cfg.vocab == 50257;  // GPT-2's tokenizer: <|endoftext|> is 50256
  const json c = {
      {"architectures", {kGpt2Arch}},
      {"model_type", "gpt2"},
      {"vocab_size", cfg.vocab},
      {"n_positions", cfg.seq_len},
      {"n_embd", cfg.d_model},
      {"n_head", cfg.n_heads},
      {"n_layer", cfg.n_layers},
      {"n_inner", cfg.mlp_hidden > 0 ? json(cfg.mlp_hidden) : json(nullptr)},
      {"activation_function", "gelu_new"},
      {"layer_norm_epsilon", cfg.ln_eps},
      {"resid_pdrop", 0.0},
      {"embd_pdrop", 0.0},
      {"attn_pdrop", 0.0},
      {"scale_attn_weights", true},
      {"scale_attn_by_inverse_layer_idx", false},
      {"reorder_and_upcast_attn", false},
      {"initializer_range", 0.02},
      {"tie_word_embeddings", tied},
      {"bos_token_id", gpt2_vocab ? json(50256) : json(nullptr)},
      {"eos_token_id", gpt2_vocab ? json(50256) : json(nullptr)},
      {"dtype", models::dtype_name(full.at("wte").scalar_type())},
  };
  return write_hf_folder(out, gpt2_tensor_map(cfg, cfg.seq_len), full, tied, c);
}

std::int64_t write_llama_folder(const std::string& out, const models::LlamaConfig& cfg,
                                const TensorMap& full) {
  cfg.validate();
  STP_CHECK(full.count("wte"), "export: parameter 'wte' is missing");
  const bool tied = cfg.tie_embeddings || head_is_embedding(full);
  const json c = {
      {"architectures", {kLlamaArch}},
      {"model_type", "llama"},
      {"vocab_size", cfg.vocab},
      {"max_position_embeddings", cfg.seq_len},
      {"hidden_size", cfg.d_model},
      {"intermediate_size", cfg.hidden()},
      {"num_hidden_layers", cfg.n_layers},
      {"num_attention_heads", cfg.n_heads},
      {"num_key_value_heads", cfg.kv_heads()},
      {"head_dim", cfg.head_dim()},
      {"hidden_act", "silu"},
      {"rms_norm_eps", cfg.rms_eps},
      {"rope_theta", cfg.rope_theta},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", cfg.rope_theta}}},
      {"attention_bias", false},
      {"attention_dropout", 0.0},
      {"mlp_bias", false},
      {"pretraining_tp", 1},
      {"initializer_range", 0.02},
      {"tie_word_embeddings", tied},
      {"bos_token_id", nullptr},
      {"eos_token_id", nullptr},
      {"dtype", models::dtype_name(full.at("wte").scalar_type())},
  };
  models::LlamaConfig untied = cfg;  // the rows of every tensor; the head's is skipped if tied
  untied.tie_embeddings = false;
  TensorMap with_head = full;
  if (cfg.tie_embeddings) with_head["lm_head.w"] = full.at("wte");
  return write_hf_folder(out, llama_tensor_map(untied), with_head, tied, c);
}

HfExportResult export_checkpoint_to_hf(const std::string& checkpoint, const std::string& out) {
  const Manifest m = read_manifest(checkpoint);
  const json& model = m.info.model;
  const std::string where = checkpoint + "/manifest.json";
  const std::string arch = model.value("arch", std::string("gpt"));
  STP_CHECK(arch == "gpt" || arch == "llama", checkpoint, ": model.arch='", arch,
            "' cannot be exported (supported: gpt as ", kGpt2Arch, ", llama as ", kLlamaArch, ")");
  // The DP-rank-0 replica's shards, each verified, assembled along their shard dimensions.
  verify_reshard_sources(checkpoint, m, 0, 1);
  const Resharder shards(checkpoint, m);
  TensorMap full;
  for (const models::ParamSpec& spec : model_param_specs(model, 1, where))
    full[spec.name] = shards.full("param/" + spec.name);
  HfExportResult r;
  r.ranks_read = shards.files_mapped();
  if (arch == "llama") {
    r.architecture = kLlamaArch;
    r.tensors = write_llama_folder(out, llama_config_of(model, where), full);
  } else {
    r.architecture = kGpt2Arch;
    r.tensors = write_gpt2_folder(out, gpt_config_of(model, where), full);
  }
  return r;
}

}  // namespace stp::checkpoint
