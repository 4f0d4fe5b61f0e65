// Placement (models/placement.h, Note [Parameter placement]): what a pipeline stage holds, for
// an uneven split (5 layers over 3 stages), and a chunk holds exactly that (DecoderChunk builds
// by the rule that checkpoint::held_param_names reshards by).
#include "models/placement.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model_test_util.h"
#include "models/gpt.h"

namespace stp::models {
namespace {

// Names only: the rule reads nothing else.
std::vector<ParamSpec> specs_of(const std::vector<std::string>& names) {
  std::vector<ParamSpec> out;
  for (const std::string& n : names) out.push_back({n, {1}});
  return out;
}

std::vector<std::string> names(const std::vector<const ParamSpec*>& specs) {
  std::vector<std::string> out;
  for (const ParamSpec* s : specs) out.push_back(s->name);
  return out;
}

TEST(Placement, LayerOfParam) {
  EXPECT_EQ(layer_of_param("layers.12.attn.qkv.w"), 12);
  EXPECT_EQ(layer_of_param("layers.0.ln1.w"), 0);
  EXPECT_EQ(layer_of_param("ln_f.w"), -1);
  EXPECT_EQ(layer_of_param("wte"), -1);
}

TEST(Placement, StagesHoldTheirLayersEmbeddingsFirstRestLast) {
  // Out of order on purpose: a stage lists the embeddings, its layers, then the rest.
  const std::vector<ParamSpec> specs =
      specs_of({"layers.0.a", "wte", "layers.1.a", "layers.2.a", "ln_f.w", "layers.3.a", "wpe",
                "layers.4.a", "lm_head.w", "layers.4.b"});
  using V = std::vector<std::string>;
  EXPECT_EQ(names(stage_params(specs, 5, 0, 3)), (V{"wte", "wpe", "layers.0.a", "layers.1.a"}));
  EXPECT_EQ(names(stage_params(specs, 5, 1, 3)), (V{"layers.2.a", "layers.3.a"}));
  EXPECT_EQ(names(stage_params(specs, 5, 2, 3)),
            (V{"layers.4.a", "layers.4.b", "ln_f.w", "lm_head.w"}));
  EXPECT_EQ(names(stage_params(specs, 5, 0, 1)),
            (V{"wte", "wpe", "layers.0.a", "layers.1.a", "layers.2.a", "layers.3.a", "layers.4.a",
               "layers.4.b", "ln_f.w", "lm_head.w"}));
  EXPECT_THROW(stage_params(specs, 5, 3, 3), std::invalid_argument);
}

TEST(Placement, AChunkHoldsItsStagesParameters) {
  const GptConfig cfg = testing::make_config(11, 4, 8, 2, 5);
  const std::vector<ParamSpec> specs = gpt_param_specs(cfg);
  for (int stage = 0; stage < 3; ++stage) {
    GptChunk chunk(cfg, stage, 3, 0, 1);
    std::vector<std::string> built;
    for (const engine::Param& p : chunk.params()) built.push_back(p.name);
    EXPECT_EQ(built, names(stage_params(specs, 5, stage, 3))) << "stage " << stage;
  }
}

}  // namespace
}  // namespace stp::models
