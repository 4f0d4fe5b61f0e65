#include "models/llama_params.h"

namespace stp::models {

bool llama_kv_split(const LlamaConfig& cfg, int tp_size) { return cfg.kv_heads() >= tp_size; }

std::vector<ParamSpec> llama_layer_param_specs(const LlamaConfig& cfg, std::int64_t layer,
                                               int tp_size) {
  const std::int64_t C = cfg.d_model, H = cfg.hidden(), hd = cfg.head_dim();
  const std::int64_t NH = cfg.n_heads, NKV = cfg.kv_heads();
  const std::string p = "layers." + std::to_string(layer) + ".";
  return {
      {p + "ln1.w", {C}, -1, false, ParamInit::kOnes},
      {p + "attn.q.w", {NH * hd, C}, 0, true, ParamInit::kNormal},
      {p + "attn.kv.w",
       {2, NKV * hd, C},
       llama_kv_split(cfg, tp_size) ? 1 : -1,
       true,
       ParamInit::kNormal},
      {p + "attn.o.w", {C, NH * hd}, 1, true, ParamInit::kNormalResidual},
      {p + "ln2.w", {C}, -1, false, ParamInit::kOnes},
      {p + "mlp.gate_up.w", {2, H, C}, 1, true, ParamInit::kNormal},
      {p + "mlp.down.w", {C, H}, 1, true, ParamInit::kNormalResidual},
  };
}

std::vector<ParamSpec> llama_param_specs(const LlamaConfig& cfg, int tp_size) {
  const std::int64_t C = cfg.d_model;
  std::vector<ParamSpec> specs = {{"wte", {cfg.vocab, C}, -1, true, ParamInit::kNormal}};
  for (std::int64_t l = 0; l < cfg.n_layers; ++l) {
    for (ParamSpec& s : llama_layer_param_specs(cfg, l, tp_size)) specs.push_back(std::move(s));
  }
  specs.push_back({"ln_f.w", {C}, -1, false, ParamInit::kOnes});
  if (!cfg.tie_embeddings) specs.push_back({"lm_head.w", {cfg.vocab, C}, -1, true});
  return specs;
}

at::Tensor llama_init_full(const LlamaConfig& cfg, const ParamSpec& spec) {
  // The GPT's initialiser reads exactly these four fields: one init for both models.
  GptConfig g;
  g.seed = cfg.seed;
  g.init_std = cfg.init_std;
  g.n_layers = cfg.n_layers;
  g.dtype = cfg.dtype;
  return gpt_init_full(g, spec);
}

}  // namespace stp::models
