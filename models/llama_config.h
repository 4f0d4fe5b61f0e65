// LlamaConfig: the shape of a Llama-family decoder (the model, not its placement), validated
// once. RMSNorm, rotary position embeddings, SwiGLU MLP, grouped-query attention, no biases,
// tied or untied embeddings (Note [Llama parameter layout] in llama_params.h).
//
// Dimensions as in gpt_config.h: B, T, C = d_model, NH heads, hd = C/NH, H = ffn hidden, V, L;
// plus NKV key/value heads (NH divisible by NKV: each key/value head serves G = NH/NKV query
// heads) and the TP-local counts NHl = NH/tp, NKVl (Note [Llama key/value heads] in llama.h).
//
// Placement (stage, TP rank, device) is given to LlamaChunk; the checks that involve it are
// validate_layout().
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>

namespace stp::models {

// The largest RMSNorm epsilon accepted: Llama-family models use 1e-6 or 1e-5; an epsilon near
// the mean square of the activations would change what the norm computes.
constexpr double kMaxRmsEps = 1e-2;

struct LlamaConfig {
  std::int64_t vocab = 32000;         // V, tokens in [0, V); >= 1
  std::int64_t seq_len = 2048;        // T, maximum sequence length (rotary table size); >= 1
  std::int64_t d_model = 4096;        // C, residual width; >= 1, divisible by n_heads
  std::int64_t n_layers = 32;         // L, transformer blocks; >= 1
  std::int64_t n_heads = 32;          // NH, query heads; >= 1; head size C/NH must be even
  std::int64_t n_kv_heads = 0;        // NKV, key/value heads; divides n_heads; 0 means n_heads
  std::int64_t ffn_hidden = 0;        // H, SwiGLU hidden size; 0: Llama's rule (ffn_default())
  double rope_theta = 10000.0;        // rotary base; > 0
  double rms_eps = 1e-5;              // RMSNorm epsilon; (0, kMaxRmsEps]
  bool tie_embeddings = false;        // the LM head reuses the token embedding (one stage only)
  at::ScalarType dtype = at::kFloat;  // compute and parameter dtype: float32, float64, bfloat16
  std::uint64_t seed = 1234;          // weight init seed (each tensor from (seed, its name))
  double init_std = 0.02;             // std of the normal init of weights and embeddings; > 0

  std::int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  std::int64_t head_dim() const { return d_model / n_heads; }
  // ffn_hidden, or Llama's default: 8*C/3 rounded up to a multiple of 256.
  std::int64_t hidden() const;

  // Throws std::invalid_argument naming the first bad field, its value and the legal range.
  void validate() const;
  // validate(), then the placement checks: tp >= 1; n_heads and hidden() divisible by tp; the
  // key/value heads split (n_kv_heads divisible by tp) or replicated (tp divisible by
  // n_kv_heads); stages >= 1 and n_layers >= stages; tied embeddings on one stage only.
  void validate_layout(int stages, int tp_size) const;
};

}  // namespace stp::models
