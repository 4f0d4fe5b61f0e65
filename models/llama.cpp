// LlamaChunk construction: its parameters in the order of Note [Llama parameter layout]. The
// unit sequencing is DecoderChunk's (Note [Decoder units]); the numeric work of each unit is in
// llama_layers.cpp.
#include "models/llama.h"

#include <ATen/core/Tensor.h>

#include "models/llama_params.h"

namespace stp::models {

LlamaChunk::LlamaChunk(const LlamaConfig& cfg, int stage, int stages, int tp_rank, int tp_size,
                       at::Device device)
    : DecoderChunk(shape_of(cfg, stages, tp_size, NormKind::kRmsNorm, cfg.rms_eps), stage, stages,
                   tp_rank, tp_size),
      cfg_(cfg),
      kv_split_(llama_kv_split(cfg, tp_size)) {
  const std::int64_t nkv = cfg_.kv_heads();
  kv_heads_local_ = kv_split_ ? nkv / tp_size : 1;
  kv_head_first_ = kv_split_ ? tp_rank * kv_heads_local_ : tp_rank * nkv / tp_size;
  rotary_ = ops::rotary_table(cfg_.seq_len, cfg_.head_dim(), cfg_.rope_theta, cfg_.dtype, device);

  add_params(
      llama_param_specs(cfg_, tp_size),
      [this](const ParamSpec& s) { return llama_init_full(cfg_, s); }, device);
  for (std::int64_t l = layers_.first; l < layers_.first + layers_.count; ++l) {
    auto at = [&](const char* name) { return layer_param(l, name); };
    layer_params_.push_back(
        {at("attn.q.w"), at("attn.kv.w"), at("attn.o.w"), at("mlp.gate_up.w"), at("mlp.down.w")});
  }
  if (is_first_stage()) wte_ = index_of("wte");
}

engine::ModelFactory llama_model(const LlamaConfig& config, at::Device device) {
  return decoder_model<LlamaChunk>(config, device);
}

}  // namespace stp::models
