#include "checkpoint/reshard.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>

#include "common/check.h"
#include "data/mapped_file.h"
#include "models/llama_params.h"
#include "models/placement.h"
#include "schedule/generators.h"

namespace stp::checkpoint {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The fields the GPT's and the Llama's configs share, from a manifest's model section.
template <typename Config>
Config shape_of(const json& model, const std::string& where) {
  auto get = [&](const char* key) {
    STP_CHECK(model.is_object() && model.contains(key) && model[key].is_number_integer(), where,
              ": model.", key, " is missing or not an integer");
    return model[key].get<std::int64_t>();
  };
  Config cfg;
  cfg.vocab = get("vocab");
  cfg.seq_len = get("seq_len");
  cfg.d_model = get("d_model");
  cfg.n_heads = get("n_heads");
  cfg.n_layers = get("n_layers");
  cfg.dtype = models::parse_dtype(model.value("dtype", std::string("float32")));
  return cfg;
}

// "optim/<param>.exp_avg" -> "<param>"; "param/<param>" -> "<param>"; "optim/step" -> "".
std::string param_of(const std::string& name) {
  if (name.rfind("param/", 0) == 0) return name.substr(6);
  if (name == "optim/step") return "";
  if (name.rfind("optim/", 0) == 0) {
    for (const char* state : {".exp_avg_sq", ".exp_avg", ".master"}) {
      const std::string suffix = state;
      if (name.size() > suffix.size() + 6 && name.ends_with(suffix))
        return name.substr(6, name.size() - 6 - suffix.size());
    }
  }
  STP_CHECK(false, "checkpoint tensor '", name,
            "' is neither param/<name>, optim/<name>.{exp_avg,exp_avg_sq,master} nor optim/step");
  return "";
}

// The DP-rank-0 shards of a checkpoint, in rank order.
std::vector<int> dp0_ranks(const Manifest& m) {
  std::vector<int> out;
  for (int r = 0; r < m.info.layout.world; ++r)
    if (rank_coords(m.info.layout, r).dp == 0) out.push_back(r);
  return out;
}

}  // namespace

models::GptConfig gpt_config_of(const json& model, const std::string& where) {
  models::GptConfig cfg = shape_of<models::GptConfig>(model, where);
  cfg.mlp_hidden = model.value("mlp_hidden", std::int64_t{0});
  cfg.validate();
  return cfg;
}

models::LlamaConfig llama_config_of(const json& model, const std::string& where) {
  models::LlamaConfig cfg = shape_of<models::LlamaConfig>(model, where);
  cfg.ffn_hidden = model.value("mlp_hidden", std::int64_t{0});
  cfg.n_kv_heads = model.value("n_kv_heads", std::int64_t{0});
  cfg.rope_theta = model.value("rope_theta", 10000.0);
  cfg.rms_eps = model.value("rms_eps", models::LlamaConfig{}.rms_eps);  // absent: the default
  cfg.tie_embeddings = model.value("tie_embeddings", false);
  cfg.validate();
  return cfg;
}

std::vector<models::ParamSpec> model_param_specs(const json& model, int tp,
                                                 const std::string& where) {
  const std::string arch = model.is_object() ? model.value("arch", std::string("gpt")) : "";
  STP_CHECK(arch == "gpt" || arch == "llama", where, ": model.arch='", arch,
            "' is not a model stp knows (gpt, llama)");
  if (arch == "llama") return models::llama_param_specs(llama_config_of(model, where), tp);
  return models::gpt_param_specs(gpt_config_of(model, where));
}

void verify_reshard_sources(const std::string& checkpoint, const Manifest& manifest, int rank,
                            int world) {
  STP_CHECK(world >= 1 && rank >= 0 && rank < world, "rank ", rank, " is out of range [0, ", world,
            ")");
  const std::vector<int> sources = dp0_ranks(manifest);
  for (std::size_t i = static_cast<std::size_t>(rank); i < sources.size();
       i += static_cast<std::size_t>(world))
    verify_shard(checkpoint, manifest, sources[i]);
}

Resharder::Resharder(const std::string& checkpoint, const Manifest& manifest)
    : checkpoint_(checkpoint), manifest_(manifest) {
  const CheckpointLayout& lay = manifest_.info.layout;
  for (int rank : dp0_ranks(manifest_)) {
    const std::string path =
        (fs::path(checkpoint) / manifest_.files[static_cast<std::size_t>(rank)].name).string();
    STP_CHECK(fs::exists(path), path, " is missing: checkpoint incomplete");
    SafetensorsHeader header = read_safetensors_header(path);
    const int file = static_cast<int>(files_.size());
    files_.push_back(std::make_shared<const data::MappedFile>(path));
    data_start_.push_back(header.data_start);
    const int tp = rank_coords(lay, rank).tp;
    for (SafetensorsEntry& e : header.entries) {
      std::vector<Part>& parts = tensors_[e.name];
      parts.resize(static_cast<std::size_t>(lay.tp));
      parts[tp] = Part{file, std::move(e)};
    }
  }
}

std::map<std::string, int> Resharder::shard_dims(int tp) const {
  std::map<std::string, int> dims;
  for (const models::ParamSpec& s :
       model_param_specs(manifest_.info.model, tp, checkpoint_ + "/manifest.json"))
    dims[s.name] = s.shard_dim;
  return dims;
}

int Resharder::shard_dim(const std::map<std::string, int>& dims, const std::string& name) const {
  const std::string param = param_of(name);
  if (param.empty()) return -1;  // optim/step
  auto it = dims.find(param);
  STP_CHECK(it != dims.end(), checkpoint_, ": tensor '", name, "' is not a parameter of its model");
  return it->second;
}

at::Tensor Resharder::view(const Part& part) const {
  return mapped_tensor(files_[part.file], data_start_[part.file], part.entry);
}

TensorMap Resharder::read(const std::vector<std::string>& names, int tp_rank, int tp) const {
  STP_CHECK(tp >= 1 && tp_rank >= 0 && tp_rank < tp, "tp_rank=", tp_rank, " must be in [0, tp=", tp,
            ")");
  const int old_tp = manifest_.info.layout.tp;
  const std::map<std::string, int> old_dims = shard_dims(old_tp), new_dims = shard_dims(tp);
  TensorMap out;
  for (const std::string& name : names) {
    auto it = tensors_.find(name);
    STP_CHECK(it != tensors_.end(), checkpoint_, ": has no tensor '", name,
              "' (saved by a different model or optimizer?)");
    const int old_dim = shard_dim(old_dims, name), new_dim = shard_dim(new_dims, name);
    std::vector<at::Tensor> pieces;  // the old shards, TP rank order (one when replicated)
    for (int r = 0; r < (old_dim < 0 ? 1 : old_tp); ++r) {
      const Part& p = it->second[r];
      STP_CHECK(p.file >= 0, checkpoint_, ": tensor '", name, "' has no shard from tp rank ", r);
      pieces.push_back(view(p));
    }
    // Every branch copies (at::cat does, even of one tensor): nothing aliases the mapping.
    const auto contiguous = at::MemoryFormat::Contiguous;
    at::Tensor t;
    if (new_dim < 0) {
      t = old_dim < 0 ? pieces[0].clone(contiguous) : at::cat(pieces, old_dim);
    } else {
      // The new slice [begin, begin + len) along new_dim.
      std::int64_t n = pieces[0].size(new_dim);  // the full size, unless split along new_dim
      if (old_dim == new_dim) n *= old_tp;
      STP_CHECK(n % tp == 0, name, ": dimension ", new_dim, " of size ", n,
                " is not divisible by tp=", tp);
      const std::int64_t len = n / tp, begin = tp_rank * len;
      if (old_dim == new_dim) {  // narrow only the old shards the new slice overlaps
        std::vector<at::Tensor> parts;
        std::int64_t offset = 0;  // of pieces[i] along the dimension
        for (const at::Tensor& p : pieces) {
          const std::int64_t lo = std::max(begin, offset);
          const std::int64_t hi = std::min(begin + len, offset + p.size(old_dim));
          if (lo < hi) parts.push_back(p.narrow(old_dim, lo - offset, hi - lo));
          offset += p.size(old_dim);
        }
        t = at::cat(parts, new_dim);
      } else if (old_dim < 0) {
        t = pieces[0].narrow(new_dim, begin, len).clone(contiguous);
      } else {
        t = at::cat(pieces, old_dim).narrow(new_dim, begin, len).clone(contiguous);
      }
    }
    out[name] = std::move(t);
  }
  return out;
}

at::Tensor Resharder::full(const std::string& name) const { return read({name}, 0, 1).at(name); }

std::vector<std::string> Resharder::names_for(const std::vector<std::string>& params) const {
  std::vector<std::string> out;
  for (const std::string& p : params) {
    out.push_back("param/" + p);
    for (const char* state : {".exp_avg", ".exp_avg_sq", ".master"})
      if (tensors_.count("optim/" + p + state)) out.push_back("optim/" + p + state);
  }
  if (tensors_.count("optim/step")) out.push_back("optim/step");
  return out;
}

std::vector<std::string> held_param_names(const std::vector<models::ParamSpec>& specs,
                                          std::int64_t n_layers, const CheckpointLayout& layout,
                                          int pp_rank) {
  const schedule::Program program =
      schedule::make(layout.schedule, layout.pp, layout.microbatches, chunks_of(layout));
  std::vector<std::string> out;
  for (int stage = 0; stage < program.stages(); ++stage) {
    if (program.stage_rank[stage] != pp_rank) continue;
    for (const models::ParamSpec* s :
         models::stage_params(specs, n_layers, stage, program.stages()))
      out.push_back(s->name);
  }
  return out;
}

json reshard_data_position(const json& saved, int dp, std::int64_t num_windows) {
  STP_CHECK(dp >= 1 && num_windows >= dp, "data position: dp=", dp,
            " needs num_windows=", num_windows, " >= dp");
  STP_CHECK(saved.is_object() && saved.contains("dp_size") &&
                saved["dp_size"].is_number_integer() && saved.contains("epoch") &&
                saved["epoch"].is_number_integer() && saved.contains("index") &&
                saved["index"].is_number_integer(),
            "data position in checkpoint lacks an integer dp_size, epoch or index: ", saved.dump());
  const std::int64_t old_dp = saved["dp_size"].get<std::int64_t>();
  if (old_dp == dp) return saved;
  STP_CHECK(old_dp >= 1, "data position in checkpoint: dp_size=", old_dp, " must be >= 1");
  json out = saved;
  const std::int64_t consumed = saved["index"].get<std::int64_t>() * old_dp;  // of this epoch
  std::int64_t epoch = saved["epoch"].get<std::int64_t>(), index = consumed / dp;
  if (index >= num_windows / dp) {
    ++epoch;
    index = 0;
  }
  out["epoch"] = epoch;
  out["index"] = index;
  out["dp_size"] = dp;
  return out;
}

ReshardResult reshard_checkpoint(const std::string& checkpoint, const std::string& out,
                                 const ReshardOptions& options) {
  const Manifest m = read_manifest(checkpoint);
  const std::string where = checkpoint + "/manifest.json";
  CheckpointLayout lay = options.layout;
  lay.world = lay.dp * lay.pp * lay.tp;
  STP_CHECK(lay.tp >= 1 && lay.pp >= 1 && lay.dp >= 1, "reshard: tp=", lay.tp, " pp=", lay.pp,
            " dp=", lay.dp, " must each be >= 1");
  const json& model = m.info.model;
  const std::vector<models::ParamSpec> specs = model_param_specs(model, lay.tp, where);
  // Refuses chunks the kind does not take (Note [Chunks in the layout]).
  const int stages = schedule::make(lay.schedule, lay.pp, lay.microbatches, lay.chunks).stages();
  lay.chunks = chunks_of(lay);
  if (model.value("arch", std::string("gpt")) == "llama")
    llama_config_of(model, where).validate_layout(stages, lay.tp);
  else
    gpt_config_of(model, where).validate_layout(stages, lay.tp);

  verify_reshard_sources(checkpoint, m, 0, 1);
  const Resharder source(checkpoint, m);
  CheckpointInfo info = m.info;
  info.layout = lay;
  if (info.extra.is_object() && info.extra.contains("schedule") &&
      info.extra["schedule"].is_object()) {
    info.extra["schedule"]["kind"] = lay.schedule;
    info.extra["schedule"]["microbatches"] = lay.microbatches;
    info.extra["schedule"]["chunks"] = lay.chunks;
  }
  const std::int64_t n_layers = model.at("n_layers").get<std::int64_t>();
  ReshardResult r;
  r.step = m.step;
  r.files_read = source.files_mapped();
  r.out = write_checkpoint(out, m.step, info, [&](int rank) {
    const RankCoords coords = rank_coords(lay, rank);
    const std::vector<std::string> params = held_param_names(specs, n_layers, lay, coords.pp);
    TensorMap t = source.read(source.names_for(params), coords.tp, lay.tp);
    r.tensors += static_cast<std::int64_t>(t.size());
    return t;
  });
  return r;
}

}  // namespace stp::checkpoint
