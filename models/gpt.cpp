// GptChunk construction: its parameters in the order of Note [GPT parameter layout]. The unit
// sequencing is DecoderChunk's (Note [Decoder units]); the numeric work of each unit is in
// gpt_layers.cpp.
#include "models/gpt.h"

#include <ATen/core/Tensor.h>

#include "models/gpt_params.h"

namespace stp::models {

GptChunk::GptChunk(const GptConfig& cfg, int stage, int stages, int tp_rank, int tp_size,
                   at::Device device)
    : DecoderChunk(shape_of(cfg, stages, tp_size, NormKind::kLayerNorm, cfg.ln_eps), stage, stages,
                   tp_rank, tp_size),
      cfg_(cfg) {
  add_params(
      gpt_param_specs(cfg_), [this](const ParamSpec& s) { return gpt_init_full(cfg_, s); }, device);
  for (std::int64_t l = layers_.first; l < layers_.first + layers_.count; ++l) {
    auto at = [&](const char* name) { return layer_param(l, name); };
    layer_params_.push_back({at("attn.qkv.w"), at("attn.qkv.b"), at("attn.proj.w"),
                             at("attn.proj.b"), at("mlp.fc1.w"), at("mlp.fc1.b"), at("mlp.fc2.w"),
                             at("mlp.fc2.b")});
  }
  if (is_first_stage()) {
    wte_ = index_of("wte");
    wpe_ = index_of("wpe");
  }
}

engine::ModelFactory gpt_model(const GptConfig& config, at::Device device) {
  return decoder_model<GptChunk>(config, device);
}

}  // namespace stp::models
