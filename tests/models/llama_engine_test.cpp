// The Llama through engine::Trainer with threads as ranks: every schedule kind at tp 2 x pp 2
// with activation offload on gives the float64 reference's loss and gradients, with the
// key/value heads split over TP and replicated (Note [Llama key/value heads]); replicated
// parameters stay identical on every TP rank through optimizer steps.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <mutex>

#include "engine/comm.h"
#include "engine/offload_plan.h"
#include "engine/trainer.h"
#include "llama_reference.h"
#include "models/llama.h"
#include "schedule/generators.h"

namespace stp::models {
namespace {

using testing::ParamMap;

struct JobResult {
  std::vector<double> losses;  // per step, rank 0's
  ParamMap grads;              // full gradients of the last step
  std::int64_t offloaded_bytes = 0;
  // Per stage, per TP rank: the chunks (kept alive with their trainers).
  std::map<int, std::vector<engine::Chunk*>> by_stage;
  std::vector<std::unique_ptr<engine::Trainer>> trainers;
};

JobResult run_job(const LlamaConfig& cfg, const ParamMap& full, const std::string& kind, int tp,
                  int pp, const engine::OffloadBudget& budget,
                  const std::vector<std::vector<engine::MicroBatch>>& steps) {
  const int world = tp * pp;
  JobResult res;
  res.trainers.resize(world);
  std::mutex mu;
  engine::CommOptions co;
  co.tp = tp;
  co.pp = pp;
  co.timeout = std::chrono::milliseconds(60000);
  engine::run_in_process(world, co, [&](std::unique_ptr<engine::World> w) {
    const int r = w->rank();
    engine::TrainerOptions o;
    o.schedule = schedule::kind_from_string(kind);
    o.microbatches = static_cast<int>(steps.front().size());
    o.tp = tp;
    o.pp = pp;
    o.offload_budget = budget;
    o.optimizer.lr = 1e-2;
    o.optimizer.max_grad_norm = 1e9;  // no clipping: the gradients stay the reference's
    auto t = std::make_unique<engine::Trainer>(llama_model(cfg), o, std::move(w));
    for (engine::Chunk* c : t->chunks())
      testing::load_full_params(*c, full, t->world().tp_rank(), tp);
    std::vector<double> losses;
    for (const auto& mbs : steps) losses.push_back(t->step(mbs));
    std::lock_guard<std::mutex> lock(mu);
    if (r == 0) res.losses = losses;
    res.offloaded_bytes += t->last_stats().exec.offloaded_bytes;
    res.trainers[r] = std::move(t);
  });
  for (int r = 0; r < world; ++r)  // rank = pp_idx * tp + tp_idx: TP ranks in order
    for (engine::Chunk* c : res.trainers[r]->chunks()) res.by_stage[c->stage()].push_back(c);
  for (const auto& [stage, ranks] : res.by_stage)
    for (auto& [name, g] : testing::gather_grads(ranks)) res.grads[name] = g;
  return res;
}

std::vector<engine::MicroBatch> microbatches(const LlamaConfig& cfg, int m, std::uint64_t seed) {
  std::vector<engine::MicroBatch> mbs;
  for (int i = 0; i < m; ++i)
    mbs.push_back(testing::random_microbatch_for(cfg.vocab, 2, cfg.seq_len, seed * 100 + i));
  return mbs;
}

// schedule kind, key/value heads (2: split over tp 2; 1: replicated)
class LlamaAllSchedules : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(LlamaAllSchedules, Tp2Pp2WithOffloadMatchesTheFloat64Reference) {
  const auto [kind, kv_heads] = GetParam();
  const int tp = 2, pp = 2;
  const auto k = schedule::kind_from_string(kind);
  const int stages = pp * schedule::default_chunks(k);
  const int m = schedule::min_microbatches(k, pp, 0, 4);
  // 7-token vocabulary, odd T = 5, 4 query heads of size 4, uneven layer split.
  LlamaConfig cfg = testing::make_llama_config(7, 5, 16, 4, kv_heads, stages + 1, 12);
  ParamMap full = testing::random_llama_params(cfg, 7);
  auto mbs = microbatches(cfg, m, 3);
  testing::ReferenceStep ref = testing::llama_reference_step(cfg, full, mbs);
  // 60% of the unconstrained peak, or the planner's floor (as much offload as it can place)
  // where 60% is below it: 1F1B's peak is its floor, the V schedules' is about 61-63% here.
  engine::OffloadBudget budget = engine::parse_offload_budget("60%");
  JobResult got;
  try {
    got = run_job(cfg, full, kind, tp, pp, budget, {mbs});
  } catch (const engine::OffloadBudgetTooSmall& e) {
    budget.kind = engine::OffloadBudget::Kind::kBytes;
    budget.bytes = e.minimum_bytes;
    got = run_job(cfg, full, kind, tp, pp, budget, {mbs});
  }
  ASSERT_EQ(got.losses.size(), 1u);
  EXPECT_NEAR(got.losses[0], ref.loss, 1e-12 * std::abs(ref.loss)) << kind;
  if (kind != "1f1b") {
    EXPECT_GT(got.offloaded_bytes, 0) << kind << ": the budget offloads nothing";
  }
  ASSERT_EQ(got.grads.size(), ref.grads.size());
  for (const auto& [name, g] : ref.grads) {
    ASSERT_TRUE(got.grads.count(name)) << name;
    EXPECT_LE(testing::rel_error(got.grads.at(name), g), 1e-10) << kind << " " << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, LlamaAllSchedules,
                         ::testing::Combine(::testing::Values("1f1b", "1f1b-i", "zb-h1", "zb-v",
                                                              "stp"),
                                            ::testing::Values(2, 1)),
                         [](const auto& info) {
                           std::string k = std::get<0>(info.param);
                           for (char& ch : k)
                             if (ch == '-') ch = '_';
                           return k + "_kv" + std::to_string(std::get<1>(info.param));
                         });

TEST(LlamaTrainer, ReplicatedKvHeadsStayIdenticalOnEveryTpRankAcrossSteps) {
  LlamaConfig cfg = testing::make_llama_config(7, 5, 16, 4, 1, 3, 12);  // one kv head, tp 2
  ParamMap full = testing::random_llama_params(cfg, 9);
  JobResult got = run_job(cfg, full, "1f1b", 2, 1, engine::OffloadBudget{},
                          {microbatches(cfg, 4, 1), microbatches(cfg, 4, 2)});
  ASSERT_EQ(got.losses.size(), 2u);
  const auto& ranks = got.by_stage.at(0);
  bool saw_kv = false;
  for (std::size_t i = 0; i < ranks[0]->params().size(); ++i) {
    const engine::Param& p = ranks[0]->params()[i];
    if (p.shard_dim >= 0) continue;
    saw_kv = saw_kv || p.name.find("attn.kv.w") != std::string::npos;
    EXPECT_TRUE(at::equal(p.value, ranks[1]->params()[i].value)) << p.name;
    EXPECT_FALSE(at::equal(p.value, full.at(p.name))) << p.name << " was not updated";
  }
  EXPECT_TRUE(saw_kv);
}

}  // namespace
}  // namespace stp::models
