#include "train/train_config.h"
#include "engine/comm_options.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

namespace stp::train {
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
  EXPECT_EQ(
      error_of([&] { c.apply_json(R"({"model": {"layers": 3}})", "cfg.json"); }),
      "cfg.json: unknown key 'model.layers' (model has: arch, vocab, seq_len, d_model, "
      "n_heads, n_layers, mlp_hidden, n_kv_heads, rope_theta, rms_eps, tie_embeddings, dtype, "
      "init_seed, init_from)");
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

// offload.recompute: auto by default, off or all, anything else refused naming the values.
TEST(TrainConfig, RecomputeTakesAutoOffOrAll) {
  TrainConfig c;
  EXPECT_EQ(c.offload.recompute, "auto");
  c.apply_override("offload.recompute=all");
  EXPECT_EQ(c.offload.recompute, "all");
  c.apply_json(R"({"offload": {"recompute": "off"}})", "x.json");
  EXPECT_EQ(c.offload.recompute, "off");
  EXPECT_EQ(error_of([&] { c.apply_override("offload.recompute=some"); }),
            "--set offload.recompute='some' must be one of auto | off | all");
  // offload.recompute_share (Note [Partial sets]): 1 by default, in [0.01, 1], only with all.
  EXPECT_EQ(c.offload.recompute_share, 1);
  EXPECT_NE(error_of([&] { c.apply_override("offload.recompute_share=1.5"); }).find("[0.01, 1]"),
            std::string::npos);
  c.apply_override("offload.recompute_share=0.5");
  EXPECT_EQ(c.offload.recompute_share, 0.5);
  EXPECT_EQ(error_of([&] { c.validate(); }),
            "offload.recompute_share=0.5 needs offload.recompute=all (it is off)");
  c.apply_override("offload.recompute=all");
  c.validate();
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

// Issue 11: the train config's microbatches are checked against the schedule up front, naming
// the smallest count that works.
TEST(TrainConfig, MicrobatchesMustSuitTheSchedule) {
  TrainConfig c;
  c.apply_override("parallel.pp=3");
  c.apply_override("schedule.kind=1f1b-i");
  c.apply_override("model.n_layers=6");
  EXPECT_EQ(
      error_of([&] { c.validate(); }),
      "schedule.microbatches=8 is not accepted by the 1f1b-i schedule with pp=3; the smallest "
      "it accepts from 8 up is 9");
  c.apply_override("schedule.microbatches=9");
  EXPECT_NO_THROW(c.validate());
}

// run.threads = 0: the user's OMP_NUM_THREADS, else the cores divided among the local ranks.
TEST(TrainConfig, CpuThreadsDefault) {
  auto count = [](std::int64_t req, int omp, int cores, int local) {
    return resolve_cpu_threads(req, omp, cores, local).count;
  };
  EXPECT_EQ(count(3, 5, 8, 2), 3);  // an explicit run.threads wins
  EXPECT_EQ(resolve_cpu_threads(3, 5, 8, 2).source, "run.threads");
  EXPECT_EQ(count(0, 5, 8, 2), 5);  // then OMP_NUM_THREADS
  EXPECT_EQ(resolve_cpu_threads(0, 5, 8, 2).source, "OMP_NUM_THREADS");
  EXPECT_EQ(count(0, 0, 2, 1), 2);  // the issue's single rank on 2 cores
  EXPECT_EQ(count(0, 0, 8, 3), 2);  // rounded down
  EXPECT_EQ(resolve_cpu_threads(0, 0, 8, 3).source, "8 cores / 3 local ranks");
  EXPECT_EQ(count(0, 0, 2, 4), 1);  // at least 1
  EXPECT_EQ(count(0, 0, 0, 0), 1);  // unknown cores and ranks count as 1
  EXPECT_EQ(resolve_cpu_threads(0, 0, 1, 1).source, "1 core / 1 local rank");
  EXPECT_EQ(error_of([] { resolve_cpu_threads(-1, 0, 8, 1); }),
            "threads=-1 is out of range [0, 1024] (0: the default)");
  TrainConfig c;
  EXPECT_EQ(c.run.threads, 0);
  EXPECT_EQ(error_of([&] { c.apply_override("run.threads=-2"); }),
            "--set run.threads=-2 is out of range [0, 1024]");
  c.apply_override("run.threads=4");
  EXPECT_EQ(c.run.threads, 4);
}

// The environment's part, read once at the launch edge: OMP_NUM_THREADS counts unless `stp run`
// set it (STP_OMP_FROM_LAUNCHER=1); LOCAL_WORLD_SIZE divides the cores.
TEST(TrainConfig, CpuThreadsFromTheEnvironment) {
  struct Saved {
    const char* name;
    std::optional<std::string> value;
  };
  std::vector<Saved> saved;
  for (const char* name : {"OMP_NUM_THREADS", "STP_OMP_FROM_LAUNCHER", "LOCAL_WORLD_SIZE"}) {
    const char* v = std::getenv(name);
    saved.push_back({name, v ? std::optional<std::string>(v) : std::nullopt});
  }
  setenv("OMP_NUM_THREADS", "3", 1);
  unsetenv("STP_OMP_FROM_LAUNCHER");
  setenv("LOCAL_WORLD_SIZE", "1024", 1);
  engine::LaunchEnv env = engine::launch_env_from_environment();
  EXPECT_EQ(env.omp_num_threads, 3);
  EXPECT_EQ(env.local_world_size, 1024);
  EXPECT_EQ(cpu_threads(0, env).count, 3);
  EXPECT_EQ(cpu_threads(5, env).count, 5);
  setenv("STP_OMP_FROM_LAUNCHER", "1", 1);
  env = engine::launch_env_from_environment();
  EXPECT_EQ(env.omp_num_threads, 0);
  CpuThreads t = cpu_threads(0, env);
  EXPECT_EQ(t.count, 1);  // the cores among 1024 local ranks
  EXPECT_NE(t.source.find(" / 1024 local ranks"), std::string::npos) << t.source;
  t = cpu_threads(0, env, 1);  // an explicit local rank count wins
  EXPECT_NE(t.source.find(" / 1 local rank"), std::string::npos) << t.source;
  EXPECT_GE(t.count, 1);
  for (const auto& s : saved) {
    if (s.value)
      setenv(s.name, s.value->c_str(), 1);
    else
      unsetenv(s.name);
  }
}

}  // namespace
}  // namespace stp::train
