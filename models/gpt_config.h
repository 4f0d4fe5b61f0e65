// GptConfig: the shape of a GPT decoder (the model, not its placement), validated once.
//
// One vocabulary of dimensions is used in every model file and shape comment:
//   B batch (microbatch size), T sequence length, C d_model, NH heads, hd = C/NH head size,
//   H MLP hidden size, V vocabulary, L layers; a trailing /tp marks a tensor-parallel shard
//   (Cl = C/tp, NHl = NH/tp heads, Hl = H/tp).
//
// Placement (pipeline stage, TP rank, device) is given to GptChunk, not stored here; the layout
// checks that involve it (heads divisible by tp, layers >= stages) are validate_layout().
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace stp::models {

struct GptConfig {
  std::int64_t vocab = 50257;         // V, tokens in [0, V); >= 1
  std::int64_t seq_len = 1024;        // T, maximum sequence length (position table size); >= 1
  std::int64_t d_model = 768;         // C, residual width; >= 1, divisible by n_heads
  std::int64_t n_heads = 12;          // NH, attention heads; >= 1
  std::int64_t n_layers = 12;         // L, transformer blocks; >= 1
  std::int64_t mlp_hidden = 0;        // H, MLP hidden size; 0 means the default 4*d_model
  at::ScalarType dtype = at::kFloat;  // compute and parameter dtype: float32, float64, bfloat16
  std::uint64_t seed = 1234;          // weight init seed (each tensor from (seed, its name))
  double init_std = 0.02;             // std of the normal init of weights and embeddings; > 0
  double ln_eps = 1e-5;               // LayerNorm epsilon; > 0

  std::int64_t hidden() const { return mlp_hidden > 0 ? mlp_hidden : 4 * d_model; }
  std::int64_t head_dim() const { return d_model / n_heads; }

  // Throws std::invalid_argument naming the first bad field, its value and the legal range.
  void validate() const;
  // validate(), then the placement checks: tp_size >= 1, n_heads and hidden() divisible by
  // tp_size, stages >= 1, n_layers >= stages.
  void validate_layout(int stages, int tp_size) const;
};

// The checks every decoder family's config makes of the fields they share, each a
// std::invalid_argument naming the field, its value and the legal range: vocab, seq_len,
// d_model, n_heads, n_layers >= 1; d_model divisible by n_heads; dtype float32, float64 or
// bfloat16; init_std > 0.
void validate_decoder_fields(std::int64_t vocab, std::int64_t seq_len, std::int64_t d_model,
                             std::int64_t n_heads, std::int64_t n_layers, at::ScalarType dtype,
                             double init_std);
// The placement checks every family makes: tp_size >= 1, stages >= 1, n_heads and the MLP
// hidden size (named `hidden_name` in the message) divisible by tp_size, n_layers >= stages.
void validate_decoder_layout(std::int64_t n_heads, std::int64_t hidden, const char* hidden_name,
                             std::int64_t n_layers, int stages, int tp_size);

// "float32"/"fp32"/"float", "float64"/"fp64"/"double", "bfloat16"/"bf16". Throws
// std::invalid_argument naming the unknown value and the accepted names.
at::ScalarType parse_dtype(const std::string& name);
// The canonical name of a supported dtype ("float32", "float64", "bfloat16").
std::string dtype_name(at::ScalarType dtype);

// The layers [first, first + count) a pipeline stage holds: a uniform split of n_layers over
// `stages`, the remainder going one each to the earliest stages.
// REQUIRES: 0 <= stage < stages <= n_layers.
struct LayerRange {
  std::int64_t first = 0;
  std::int64_t count = 0;
};
LayerRange stage_layers(std::int64_t n_layers, int stage, int stages);

}  // namespace stp::models
