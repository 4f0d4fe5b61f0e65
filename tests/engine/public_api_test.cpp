// The public header is the whole API an embedding program needs, and it keeps c10d out of the
// user's translation unit: this file includes only <stp/stp.h>, then defines the c10d classes
// the communication layer uses. Had stp.h reached c10d's Backend, Store or Work headers, these
// would be redefinitions and this file would not compile.
#include <stp/stp.h>

#include <ATen/ops/arange.h>
#include <gtest/gtest.h>

#include <cmath>

namespace c10d {
class Backend {};
class Store {};
class Work {};
}  // namespace c10d

namespace {

TEST(PublicApi, TypedOptionsAndTheirTextForms) {
  stp::TrainerOptions opt;
  EXPECT_EQ(opt.schedule, stp::ScheduleKind::kSTP);
  EXPECT_TRUE(opt.offload_budget.is_off());
  opt.offload_budget = stp::OffloadBudget::of_percent(80);
  EXPECT_NO_THROW(opt.validate());
  EXPECT_EQ(stp::engine::to_string(opt.offload_budget), "80%");
  EXPECT_EQ(stp::engine::to_string(stp::engine::parse_offload_budget("512MiB")), "536870912");
  opt.offload_budget = stp::OffloadBudget::of_percent(120);
  EXPECT_THROW(opt.validate(), std::invalid_argument);
  opt.offload_budget = stp::OffloadBudget::of_bytes(0);
  EXPECT_THROW(opt.validate(), std::invalid_argument);
}

TEST(PublicApi, TrainsTheGptInOneProcess) {
  stp::GptConfig cfg;  // 12 heads of 2
  cfg.vocab = 16;
  cfg.seq_len = 8;
  cfg.d_model = 24;
  cfg.n_layers = 2;
  stp::TrainerOptions opt;
  opt.schedule = stp::ScheduleKind::k1F1B;
  opt.microbatches = 2;
  stp::Trainer trainer(stp::gpt_model(cfg), opt);
  EXPECT_EQ(trainer.rank(), 0);
  EXPECT_EQ(trainer.world_size(), 1);
  at::Tensor tokens = at::arange(32, at::kLong).remainder(16).view({4, 8});
  const double loss = trainer.step(stp::MicroBatch{tokens, tokens});
  EXPECT_TRUE(std::isfinite(loss));
}

}  // namespace
