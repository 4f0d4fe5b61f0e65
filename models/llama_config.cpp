#include "models/llama_config.h"

#include <cmath>

#include "common/check.h"
#include "models/gpt_config.h"

namespace stp::models {

std::int64_t LlamaConfig::hidden() const {
  if (ffn_hidden > 0) return ffn_hidden;
  constexpr std::int64_t kMultipleOf = 256;  // Llama's rounding of the SwiGLU width
  const std::int64_t h = 8 * d_model / 3;
  return (h + kMultipleOf - 1) / kMultipleOf * kMultipleOf;
}

void LlamaConfig::validate() const {
  validate_decoder_fields(vocab, seq_len, d_model, n_heads, n_layers, dtype, init_std);
  STP_CHECK(n_kv_heads >= 0, "n_kv_heads=", n_kv_heads, " must be >= 1 (or 0 for n_heads)");
  STP_CHECK(ffn_hidden >= 0, "ffn_hidden=", ffn_hidden,
            " must be >= 1 (or 0 for 8*d_model/3 rounded up to 256)");
  STP_CHECK(head_dim() % 2 == 0, "head size d_model/n_heads=", head_dim(),
            " must be even for rotary embeddings");
  STP_CHECK(n_heads % kv_heads() == 0, "n_heads=", n_heads,
            " is not divisible by n_kv_heads=", kv_heads(),
            " (each key/value head serves a whole group of query heads)");
  STP_CHECK(std::isfinite(rope_theta) && rope_theta > 0, "rope_theta=", rope_theta, " must be > 0");
  STP_CHECK(std::isfinite(rms_eps) && rms_eps > 0, "rms_eps=", rms_eps, " must be > 0");
  STP_CHECK(rms_eps <= kMaxRmsEps, "rms_eps=", rms_eps, " must be <= ", kMaxRmsEps,
            " (Llama-family models use 1e-6 or 1e-5)");
}

void LlamaConfig::validate_layout(int stages, int tp_size) const {
  validate();
  validate_decoder_layout(n_heads, hidden(), "ffn hidden", n_layers, stages, tp_size);
  const std::int64_t nkv = kv_heads();
  STP_CHECK(nkv >= tp_size ? nkv % tp_size == 0 : tp_size % nkv == 0, "n_kv_heads=", nkv,
            " and tp=", tp_size,
            ": one must divide the other (key/value heads are split over TP when n_kv_heads >= tp, "
            "replicated when fewer)");
  STP_CHECK(!tie_embeddings || stages == 1, "tie_embeddings=true needs the embedding and the LM ",
            "head on one stage, but the model has ", stages,
            " stages; untie them or run one stage (pp=1, one chunk per rank)");
}

}  // namespace stp::models
