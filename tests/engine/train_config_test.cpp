#include "engine/train_config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

namespace stp::engine {
namespace {

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(TrainConfig, DefaultsAreValidAndRoundTripThroughJson) {
  TrainConfig c;
  EXPECT_NO_THROW(c.validate());
  TrainConfig d;
  d.schedule.microbatches = 99;
  d.apply_json(c.to_json(), "defaults");
  EXPECT_EQ(d.schedule.microbatches, c.schedule.microbatches);
  EXPECT_EQ(d.to_json(), c.to_json());
}

TEST(TrainConfig, FileAndOverridesApplyInOrder) {
  TrainConfig c;
  c.apply_json(R"({"parallel": {"tp": 1, "pp": 4}, "schedule": {"kind": "zb-v"}})", "f.json");
  c.apply_override("schedule.microbatches=16");
  c.apply_override("offload.budget=512MiB");
  c.apply_override("optimizer.lr=0.001");
  c.apply_override("schedule.braid=false");
  EXPECT_EQ(c.parallel.pp, 4);
  EXPECT_EQ(c.schedule.kind, "zb-v");
  EXPECT_EQ(c.schedule.microbatches, 16);
  EXPECT_EQ(c.offload.budget, "512MiB");
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 0.001);
  EXPECT_FALSE(c.schedule.braid);
}

TEST(TrainConfig, UnknownKeysAndSectionsAreNamed) {
  TrainConfig c;
  EXPECT_EQ(error_of([&] { c.apply_json(R"({"model": {"layers": 3}})", "cfg.json"); }),
            "cfg.json: unknown key 'model.layers' (model has: vocab, seq_len, d_model, n_heads, "
            "n_layers, mlp_hidden, dtype, init_seed)");
  EXPECT_EQ(error_of([&] { c.apply_json(R"({"modle": {}})", "cfg.json"); }),
            "cfg.json: unknown section 'modle' (sections: model, parallel, schedule, offload, "
            "optimizer, data, run)");
  EXPECT_EQ(error_of([&] { c.apply_override("run.stepz=3"); }).substr(0, 30),
            "--set: unknown key 'run.stepz'");
}

TEST(TrainConfig, OutOfRangeAndWrongTypesNameValueAndRange) {
  TrainConfig c;
  EXPECT_EQ(error_of([&] { c.apply_override("parallel.tp=0"); }),
            "--set parallel.tp=0 is out of range [1, 1024]");
  EXPECT_EQ(error_of([&] { c.apply_json(R"({"run": {"steps": "ten"}})", "x.json"); }),
            "x.json: run.steps=\"ten\" must be an integer in [1, inf]");
  EXPECT_EQ(error_of([&] { c.apply_override("schedule.kind=gpipe"); }),
            "--set schedule.kind='gpipe' must be one of 1f1b | 1f1b-i | zb-h1 | zb-v | stp");
  EXPECT_EQ(error_of([&] { c.apply_override("optimizer.beta2=1.5"); }),
            "--set optimizer.beta2=1.5 is out of range [0, 0.999999]");
  EXPECT_EQ(error_of([&] { c.apply_json("{not json", "bad.json"); }).substr(0, 23),
            "bad.json: not valid JSO");
}

TEST(TrainConfig, CrossFieldChecks) {
  TrainConfig c;
  c.apply_override("model.n_heads=3");
  c.apply_override("model.d_model=96");
  EXPECT_EQ(error_of([&] { c.validate(); }), "model.n_heads=3 must be divisible by parallel.tp=2");
  TrainConfig d;
  d.apply_override("model.n_layers=3");
  EXPECT_EQ(error_of([&] { d.validate(); }),
            "model.n_layers=3 must be >= 4 pipeline stages (pp=2 with schedule stp)");
}

// docs/config.md carries the generated table verbatim: the docs cannot drift from the code.
TEST(TrainConfig, DocsPageHoldsTheGeneratedTable) {
  std::ifstream in(std::string(STP_SOURCE_DIR) + "/docs/config.md");
  ASSERT_TRUE(in.good()) << "docs/config.md is missing";
  std::string page((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(page.find(config_reference_markdown()), std::string::npos)
      << "docs/config.md is out of date: regenerate its table with `stp train --config-reference`";
}

TEST(TrainConfig, ReferenceTableListsEveryField) {
  std::string md = config_reference_markdown();
  EXPECT_NE(md.find("| `microbatches` | integer | - | [1, 65536] | `8` |"), std::string::npos)
      << md;
  EXPECT_NE(md.find("### [offload]"), std::string::npos);
}

}  // namespace
}  // namespace stp::engine
