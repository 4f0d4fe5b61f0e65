// Resharding (checkpoint/reshard.h): a checkpoint written in one layout, resharded into another
// and back, holds bitwise the tensors it started with, optimizer states included; every rank's
// shard equals the reference slice of the full tensors (models::shard_of) for its layout; which
// parameters a pipeline rank holds follows its schedule kind and chunks; the data position
// continues at the same global sample; refusals name what differs.
#include "checkpoint/reshard.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "models/llama_params.h"
#include "models/placement.h"
#include "schedule/generators.h"

#include "file_test_util.h"

namespace stp::checkpoint {
namespace {

namespace fs = std::filesystem;
using namespace stp::testing;  // TempDir, expect_invalid
using nlohmann::json;

json gpt_model(const std::string& dtype = "float32") {
  return {{"vocab", 50},   {"seq_len", 8},    {"d_model", 16},  {"n_heads", 4},
          {"n_layers", 4}, {"mlp_hidden", 0}, {"dtype", dtype}, {"init_seed", 1}};
}

// Two key/value heads: split at tp 2, replicated at tp 4.
json llama_model(const std::string& dtype = "float32") {
  json m = gpt_model(dtype);
  m["arch"] = "llama";
  m["mlp_hidden"] = 24;
  m["n_kv_heads"] = 2;
  m["rope_theta"] = 500.0;
  m["tie_embeddings"] = false;
  return m;
}

CheckpointLayout layout(int tp, int pp, int dp, const std::string& kind, int chunks = 0) {
  return {dp, pp, tp, dp * pp * tp, kind, 12, chunks};
}

// Every parameter's full tensor and AdamW state (a float32 master for bfloat16), at random.
TensorMap full_state(const json& model) {
  const at::ScalarType dtype = models::parse_dtype(model.at("dtype").get<std::string>());
  const at::ScalarType state = dtype == at::kDouble ? at::kDouble : at::kFloat;
  TensorMap full;
  at::manual_seed(7);
  for (const models::ParamSpec& s : model_param_specs(model, 1, "test")) {
    full["param/" + s.name] = at::randn(s.full_shape, at::kFloat).to(dtype);
    full["optim/" + s.name + ".exp_avg"] = at::randn(s.full_shape, at::kFloat).to(state);
    full["optim/" + s.name + ".exp_avg_sq"] = at::rand(s.full_shape, at::kFloat).to(state);
    if (dtype == at::kBFloat16)
      full["optim/" + s.name + ".master"] = at::randn(s.full_shape, at::kFloat);
  }
  full["optim/step"] = at::scalar_tensor(17, at::kLong);
  return full;
}

// The reference: a checkpoint of `lay` cut out of `full` by models::shard_of.
std::string write_reference(const std::string& out, const json& model, const TensorMap& full,
                            const CheckpointLayout& lay) {
  CheckpointInfo info;
  info.layout = lay;
  info.model = model;
  info.data = {{"epoch", 0}, {"index", 5}, {"dp_size", lay.dp}};
  info.extra = {{"schedule", {{"kind", lay.schedule}, {"microbatches", lay.microbatches}}}};
  const auto specs = model_param_specs(model, lay.tp, "test");
  return write_checkpoint(out, 3, info, [&](int rank) {
    const RankCoords c = rank_coords(lay, rank);
    const auto held = held_param_names(specs, model.at("n_layers").get<std::int64_t>(), lay, c.pp);
    TensorMap t;
    for (const models::ParamSpec& s : specs) {
      if (std::find(held.begin(), held.end(), s.name) == held.end()) continue;
      for (const auto& [name, value] : full)
        if (name == "param/" + s.name || name.rfind("optim/" + s.name + ".", 0) == 0)
          t[name] = models::shard_of(value, s.shard_dim, c.tp, lay.tp).contiguous();
    }
    t["optim/step"] = full.at("optim/step");
    return t;
  });
}

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

// Every shard of checkpoint `a` holds bitwise the tensors of the same shard of `b`.
void expect_same_shards(const std::string& a, const std::string& b, const std::string& what) {
  const Manifest ma = read_manifest(a), mb = read_manifest(b);
  ASSERT_EQ(ma.files.size(), mb.files.size()) << what;
  EXPECT_TRUE(ma.info.layout == mb.info.layout) << what;
  for (std::size_t r = 0; r < ma.files.size(); ++r) {
    const TensorMap ta = load_shard(a, ma, static_cast<int>(r));
    const TensorMap tb = load_shard(b, mb, static_cast<int>(r));
    ASSERT_EQ(ta.size(), tb.size()) << what << ", rank " << r;
    for (const auto& [name, t] : ta) {
      ASSERT_TRUE(tb.count(name)) << what << ", rank " << r << " lacks " << name;
      EXPECT_TRUE(same_bytes(t, tb.at(name))) << what << ", rank " << r << ": " << name;
    }
  }
}

// full -> layout `from` (reference) -> resharded into `to` (== the reference of `to`) -> back
// into `from` (== the first, bitwise).
void round_trip(const json& model, const CheckpointLayout& from, const CheckpointLayout& to,
                const std::string& what) {
  TempDir dir;
  const TensorMap full = full_state(model);
  const std::string a = write_reference((dir.path / "a").string(), model, full, from);
  const std::string b_ref = write_reference((dir.path / "b_ref").string(), model, full, to);
  const ReshardResult b = reshard_checkpoint(a, (dir.path / "b").string(), {to});
  EXPECT_EQ(b.step, 3);
  verify_checkpoint(b.out);  // a valid manifest with fresh checksums
  expect_same_shards(b.out, b_ref, what + ": resharded");
  const ReshardResult back = reshard_checkpoint(b.out, (dir.path / "back").string(), {from});
  expect_same_shards(back.out, a, what + ": and back");
  EXPECT_EQ(read_manifest(b.out).info.extra.at("schedule").at("kind"), to.schedule);
}

TEST(Reshard, GptTp2Pp2ToTp1Pp4AndBackIsBitwise) {
  round_trip(gpt_model(), layout(2, 2, 1, "stp"), layout(1, 4, 1, "1f1b"), "gpt");
}

TEST(Reshard, GptTp2Pp2ToTp4Pp1Dp2AndBack) {
  round_trip(gpt_model(), layout(2, 2, 1, "stp"), layout(4, 1, 2, "1f1b"), "gpt tp4 dp2");
}

TEST(Reshard, LlamaKeyValueHeadsSplitThenReplicatedAndBack) {
  // tp 2 splits the two key/value heads, tp 4 replicates them.
  round_trip(llama_model(), layout(2, 2, 1, "stp"), layout(4, 1, 1, "1f1b"), "llama tp2 -> tp4");
  round_trip(llama_model(), layout(2, 2, 1, "zb-v"), layout(1, 2, 1, "1f1b-i"), "llama zb-v");
}

// 1F1B-I's chunks place the stages (Note [Chunks in the layout]): other chunks alone reshard.
TEST(Reshard, AnotherChunkCountOf1f1bIAndBack) {
  json eight = gpt_model();
  eight["n_layers"] = 8;
  round_trip(eight, layout(1, 2, 1, "1f1b-i", 2), layout(1, 2, 1, "1f1b-i", 4), "chunks 2 -> 4");
  round_trip(gpt_model(), layout(2, 1, 1, "1f1b-i", 4), layout(1, 2, 1, "1f1b-i"),
             "tp, pp, chunks");
  TempDir dir;
  const std::string a = write_reference((dir.path / "a").string(), eight, full_state(eight),
                                        layout(1, 2, 1, "1f1b-i", 4));
  EXPECT_EQ(read_manifest(a).info.layout.chunks, 4);
  expect_invalid(
      [&] { reshard_checkpoint(a, (dir.path / "b").string(), {layout(1, 2, 1, "zb-v", 4)}); },
      "chunks=4 is not supported by the zb-v schedule (it uses 2)");
  expect_invalid(
      [&] { reshard_checkpoint(a, (dir.path / "b").string(), {layout(1, 2, 1, "1f1b-i", 1)}); },
      "chunks=1 must be >= 2 for the 1f1b-i schedule (use 1f1b for 1)");
}

TEST(Reshard, BfloatMasterCopiesMoveToo) {
  round_trip(llama_model("bfloat16"), layout(2, 2, 1, "stp"), layout(1, 2, 2, "1f1b"), "bf16");
}

TEST(Reshard, ReadsTheSliceOfANewTpRank) {
  TempDir dir;
  const json model = gpt_model();
  const TensorMap full = full_state(model);
  const std::string a =
      write_reference((dir.path / "a").string(), model, full, layout(4, 1, 1, "1f1b"));
  const Resharder r(a, read_manifest(a));
  EXPECT_EQ(r.files_mapped(), 4);
  // fc1.w is split along dim 0 (64 rows over 4 ranks); tp 2's rank 1 spans old ranks 2 and 3.
  const std::string fc1 = "param/layers.1.mlp.fc1.w";
  EXPECT_TRUE(same_bytes(r.read({fc1}, 1, 2).at(fc1), full.at(fc1).narrow(0, 32, 32).contiguous()));
  EXPECT_TRUE(same_bytes(r.full(fc1), full.at(fc1)));
  EXPECT_TRUE(same_bytes(r.full("optim/step"), full.at("optim/step")));
  expect_invalid([&] { r.read({fc1}, 0, 3); }, "of size 64 is not divisible by tp=3");
  expect_invalid([&] { r.read({"param/layers.9.mlp.fc1.w"}, 0, 1); },
                 "has no tensor 'param/layers.9.mlp.fc1.w'");
  EXPECT_EQ(r.names_for({"wte"}), (std::vector<std::string>{"param/wte", "optim/wte.exp_avg",
                                                            "optim/wte.exp_avg_sq", "optim/step"}));
}

// The layers a rank holds, and the parameters outside layers, of held_param_names' answer.
std::string summary(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) {
    const std::int64_t l = models::layer_of_param(n);
    const std::string item = l < 0 ? n : "L" + std::to_string(l);
    if (out.empty() || out.substr(out.rfind(' ') + 1) != item)
      out += (out.empty() ? "" : " ") + item;
  }
  return out;
}

// Which stages a pipeline rank holds is the schedule's (kind and chunks); what a stage holds is
// models::stage_params' (tests/models/placement_test.cpp).
TEST(Reshard, HeldParamNamesFollowTheScheduleAndChunks) {
  json eight = gpt_model();
  eight["n_layers"] = 8;
  const auto specs = model_param_specs(eight, 2, "test");
  auto held = [&](const CheckpointLayout& lay, int rank) {
    return summary(held_param_names(specs, 8, lay, rank));
  };
  EXPECT_EQ(held(layout(2, 1, 1, "1f1b"), 0),
            "wte wpe L0 L1 L2 L3 L4 L5 L6 L7 ln_f.w ln_f.b lm_head.w");
  EXPECT_EQ(held(layout(2, 2, 1, "1f1b"), 0), "wte wpe L0 L1 L2 L3");
  EXPECT_EQ(held(layout(2, 2, 1, "1f1b"), 1), "L4 L5 L6 L7 ln_f.w ln_f.b lm_head.w");
  // V: rank 0 holds stages 0 and 3 of 4.
  EXPECT_EQ(held(layout(2, 2, 1, "zb-v"), 0), "wte wpe L0 L1 L6 L7 ln_f.w ln_f.b lm_head.w");
  EXPECT_EQ(held(layout(2, 2, 1, "stp"), 1), "L2 L3 L4 L5");
  // Loop: rank r holds stages r, r + p, ...; the chunks decide how many.
  EXPECT_EQ(held(layout(2, 2, 1, "1f1b-i"), 0), "wte wpe L0 L1 L4 L5");
  EXPECT_EQ(held(layout(2, 2, 1, "1f1b-i", 2), 1), "L2 L3 L6 L7 ln_f.w ln_f.b lm_head.w");
  EXPECT_EQ(held(layout(2, 2, 1, "1f1b-i", 4), 0), "wte wpe L0 L2 L4 L6");
  EXPECT_EQ(held(layout(2, 2, 1, "1f1b-i", 4), 1), "L1 L3 L5 L7 ln_f.w ln_f.b lm_head.w");
}

TEST(Reshard, LayoutChangeNamesBothLayouts) {
  EXPECT_EQ(layout_change(layout(2, 2, 1, "stp"), layout(2, 2, 1, "stp")), "");
  CheckpointLayout more_mb = layout(2, 2, 1, "stp");
  more_mb.microbatches = 16;  // the shards are the same
  EXPECT_EQ(layout_change(layout(2, 2, 1, "stp"), more_mb), "");
  EXPECT_EQ(layout_change(layout(2, 2, 1, "stp"), layout(1, 4, 1, "stp")),
            "tp=2 pp=2 dp=1 into tp=1 pp=4 dp=1");
  EXPECT_EQ(layout_change(layout(2, 2, 1, "stp"), layout(2, 2, 1, "1f1b")),
            "tp=2 pp=2 dp=1 schedule=stp into tp=2 pp=2 dp=1 schedule=1f1b");
  // 1F1B-I's chunks (0: its default, 2) are named when they differ.
  EXPECT_EQ(layout_change(layout(2, 2, 1, "1f1b-i"), layout(2, 2, 1, "1f1b-i", 2)), "");
  EXPECT_EQ(layout_change(layout(2, 2, 1, "1f1b-i"), layout(2, 2, 1, "1f1b-i", 4)),
            "schedule.chunks=2 into schedule.chunks=4");
  EXPECT_EQ(layout_change(layout(2, 2, 1, "1f1b-i", 4), layout(1, 4, 1, "1f1b-i", 2)),
            "tp=2 pp=2 dp=1 schedule.chunks=4 into tp=1 pp=4 dp=1 schedule.chunks=2");
  EXPECT_EQ(layout_change(layout(2, 2, 1, "1f1b-i", 4), layout(2, 2, 1, "zb-v")),
            "tp=2 pp=2 dp=1 schedule=1f1b-i schedule.chunks=4 into tp=2 pp=2 dp=1 schedule=zb-v "
            "schedule.chunks=2");
  EXPECT_EQ(layout_change(layout(2, 2, 1, "1f1b-i"), layout(2, 2, 1, "zb-v")),
            "tp=2 pp=2 dp=1 schedule=1f1b-i into tp=2 pp=2 dp=1 schedule=zb-v");
}

TEST(Reshard, DataPositionContinuesAtTheSameGlobalSample) {
  const json saved = {{"epoch", 3}, {"index", 10}, {"dp_size", 2}, {"seq_len", 16}};
  EXPECT_EQ(reshard_data_position(saved, 2, 100), saved);  // same dp: as saved
  // dp 2 -> 1: the 20 windows both ranks read are the new rank's first 20.
  json one = reshard_data_position(saved, 1, 100);
  EXPECT_EQ(one.at("index"), 20);
  EXPECT_EQ(one.at("epoch"), 3);
  EXPECT_EQ(one.at("dp_size"), 1);
  EXPECT_EQ(one.at("seq_len"), 16);
  // dp 2 -> 3: 20 / 3 rounds down (windows 18 and 19 read again).
  EXPECT_EQ(reshard_data_position(saved, 3, 100).at("index"), 6);
  // 98 windows read at dp 2 are past the 24 of each of 4 ranks: the next epoch starts.
  const json late = {{"epoch", 0}, {"index", 49}, {"dp_size", 2}};
  const json next = reshard_data_position(late, 4, 99);
  EXPECT_EQ(next.at("epoch"), 1);
  EXPECT_EQ(next.at("index"), 0);
  expect_invalid([&] { reshard_data_position(json::object(), 1, 10); },
                 "data position in checkpoint lacks an integer dp_size, epoch or index");
}

TEST(Reshard, RefusesALayoutTheModelCannotTake) {
  TempDir dir;
  const json model = gpt_model();
  const std::string a =
      write_reference((dir.path / "a").string(), model, full_state(model), layout(2, 2, 1, "stp"));
  expect_invalid(
      [&] { reshard_checkpoint(a, (dir.path / "b").string(), {layout(3, 1, 1, "1f1b")}); },
      "divisible by tp=3");
  expect_invalid(
      [&] { reshard_checkpoint(a, (dir.path / "c").string(), {layout(1, 8, 1, "1f1b")}); },
      "n_layers=4 is fewer than the 8 pipeline stages");
  expect_invalid([&] { reshard_checkpoint(a, a, {layout(1, 1, 1, "1f1b")}); }, "already exists");
}

}  // namespace
}  // namespace stp::checkpoint
