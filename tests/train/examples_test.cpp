// The configurations under examples/ load, validate and describe the model they say they do.
#include <gtest/gtest.h>

#include <string>

#include "models/llama_config.h"
#include "train/train_config.h"
#include "train/train_setup.h"

namespace stp::train {
namespace {

// Parameters of a Llama (untied: embedding and head; tied: one of them), from its shape.
std::int64_t llama_parameters(const models::LlamaConfig& c) {
  const std::int64_t C = c.d_model, kv = c.kv_heads() * c.head_dim(), H = c.hidden();
  const std::int64_t block = 2 * C + C * C + 2 * C * kv + C * C + 2 * C * H + H * C;
  return c.vocab * C * (c.tie_embeddings ? 1 : 2) + c.n_layers * block + C;
}

TEST(Examples, Llama100mOnShardsIsALlamaOfAbout100MParameters) {
  const TrainConfig cfg =
      load_config(std::string(STP_SOURCE_DIR) + "/examples/llama-100m/config.json", {});
  EXPECT_EQ(cfg.model.arch, "llama");
  EXPECT_EQ(cfg.data.format, "llmc");
  const models::LlamaConfig m = llama_config(cfg);
  EXPECT_NO_THROW(m.validate_layout(cfg.parallel.pp * 2, cfg.parallel.tp));  // STP: 2 chunks a rank
  const std::int64_t n = llama_parameters(m);
  EXPECT_GE(n, 90'000'000) << n;
  EXPECT_LE(n, 110'000'000) << n;
}

}  // namespace
}  // namespace stp::train
