#include "models/gpt_config.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace stp::models {

void validate_decoder_fields(std::int64_t vocab, std::int64_t seq_len, std::int64_t d_model,
                             std::int64_t n_heads, std::int64_t n_layers, at::ScalarType dtype,
                             double init_std) {
  STP_CHECK(vocab >= 1, "vocab=", vocab, " must be >= 1");
  STP_CHECK(seq_len >= 1, "seq_len=", seq_len, " must be >= 1");
  STP_CHECK(d_model >= 1, "d_model=", d_model, " must be >= 1");
  STP_CHECK(n_heads >= 1, "n_heads=", n_heads, " must be >= 1");
  STP_CHECK(n_layers >= 1, "n_layers=", n_layers, " must be >= 1");
  STP_CHECK(d_model % n_heads == 0, "d_model=", d_model, " is not divisible by n_heads=", n_heads);
  STP_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16,
            "dtype=", c10::toString(dtype), " is not supported; use float32, float64 or bfloat16");
  STP_CHECK(std::isfinite(init_std) && init_std > 0, "init_std=", init_std, " must be > 0");
}

void validate_decoder_layout(std::int64_t n_heads, std::int64_t hidden, const char* hidden_name,
                             std::int64_t n_layers, int stages, int tp_size) {
  STP_CHECK(tp_size >= 1, "tp=", tp_size, " must be >= 1");
  STP_CHECK(stages >= 1, "stages=", stages, " must be >= 1");
  STP_CHECK(n_heads % tp_size == 0, "n_heads=", n_heads, " is not divisible by tp=", tp_size);
  STP_CHECK(hidden % tp_size == 0, hidden_name, "=", hidden, " is not divisible by tp=", tp_size);
  STP_CHECK(n_layers >= stages, "n_layers=", n_layers, " is fewer than the ", stages,
            " pipeline stages (each stage needs >= 1 layer)");
}

void GptConfig::validate() const {
  validate_decoder_fields(vocab, seq_len, d_model, n_heads, n_layers, dtype, init_std);
  STP_CHECK(mlp_hidden >= 0, "mlp_hidden=", mlp_hidden, " must be >= 1 (or 0 for 4*d_model)");
  STP_CHECK(std::isfinite(ln_eps) && ln_eps > 0, "ln_eps=", ln_eps, " must be > 0");
}

void GptConfig::validate_layout(int stages, int tp_size) const {
  validate();
  validate_decoder_layout(n_heads, hidden(), "mlp hidden", n_layers, stages, tp_size);
}

at::ScalarType parse_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "float64" || name == "fp64" || name == "double") return at::kDouble;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  STP_CHECK(false, "dtype='", name, "' is unknown; use float32, float64 or bfloat16");
  return at::kFloat;  // unreachable
}

std::string dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(dtype);
  }
}

LayerRange stage_layers(std::int64_t n_layers, int stage, int stages) {
  STP_ASSERT(stages >= 1 && stage >= 0 && stage < stages && n_layers >= stages, "stage=", stage,
             " stages=", stages, " n_layers=", n_layers);
  std::int64_t base = n_layers / stages;
  std::int64_t extra = n_layers % stages;  // the first `extra` stages get one more layer
  LayerRange r;
  r.count = base + (stage < extra ? 1 : 0);
  r.first = stage * base + std::min<std::int64_t>(stage, extra);
  return r;
}

}  // namespace stp::models
