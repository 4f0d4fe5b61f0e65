// trainer_options: what the config's offload section becomes in engine::TrainerOptions.
#include "train/train_setup.h"

#include <gtest/gtest.h>

#include "engine/offload_plan.h"
#include "train/train_config.h"

namespace stp::train {
namespace {

TEST(TrainSetup, OffloadRecomputeReachesTheTrainer) {
  TrainConfig c;
  EXPECT_EQ(trainer_options(c, at::kCPU).recompute, engine::Recompute::kAuto);
  c.apply_override("offload.recompute=all");
  EXPECT_EQ(trainer_options(c, at::kCPU).recompute, engine::Recompute::kAll);
  EXPECT_EQ(trainer_options(c, at::kCPU).recompute_share, 1);
  c.apply_override("offload.recompute_share=0.25");
  EXPECT_EQ(trainer_options(c, at::kCPU).recompute_share, 0.25);
  c.apply_override("offload.recompute=off");
  EXPECT_EQ(trainer_options(c, at::kCPU).recompute, engine::Recompute::kOff);
  c.apply_override("offload.budget=60%");
  EXPECT_EQ(engine::to_string(trainer_options(c, at::kCPU).offload_budget), "60%");
}

}  // namespace
}  // namespace stp::train
