#include "checkpoint/checkpoint.h"

#include <ATen/ATen.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <array>
#include <atomic>
#include <barrier>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "data/data.h"

#include "file_test_util.h"

namespace stp::checkpoint {
namespace {
namespace fs = std::filesystem;

using namespace stp::testing;  // TempDir, read/write_bytes, expect_invalid, kPython

CheckpointInfo info_for(int tp, int pp, int dp = 1, int n_layers = 4) {
  CheckpointInfo info;
  info.layout = {dp, pp, tp, dp * pp * tp, "stp", 8};
  info.model = {{"n_layers", n_layers}, {"d_model", 64}, {"vocab", 258}, {"norm", {{"eps", 1e-5}}}};
  info.data = {{"epoch", 0}, {"index", 17}};
  info.extra = {{"optimizer", "adamw"}};
  return info;
}

// This rank's state: parameters and optimizer moments that differ per rank and per step.
TensorMap rank_state(int rank, std::int64_t step) {
  const double base = rank * 100.0 + static_cast<double>(step);
  return {{"layers.0.w", at::arange(12, at::kFloat).view({3, 4}) + base},
          {"layers.0.w.exp_avg", at::full({3, 4}, base / 7, at::kFloat)},
          {"embed", (at::arange(6, at::kFloat) * base).to(at::kBFloat16).view({2, 3})},
          {"step", at::scalar_tensor(step, at::kLong)}};
}

bool same(const TensorMap& a, const TensorMap& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [k, t] : a) {
    auto it = b.find(k);
    if (it == b.end() || it->second.scalar_type() != t.scalar_type() ||
        it->second.sizes() != t.sizes() ||
        std::memcmp(it->second.data_ptr(), t.data_ptr(), t.nbytes()) != 0) {
      return false;
    }
  }
  return true;
}

// Runs save() on `world` threads-as-ranks sharing a std::barrier. `barrier_hook(rank, call)`
// runs before each barrier arrival and may throw to simulate that rank being killed; the other
// ranks' barriers then fail as a comm barrier with a timeout would.
void save_all(const std::string& dir, int world, std::int64_t step, const CheckpointInfo& info,
              int keep_last = 3, std::function<void(int, int)> barrier_hook = nullptr) {
  std::barrier<> bar(world);
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(world));
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      int calls = 0;
      auto barrier = [&] {
        if (barrier_hook) barrier_hook(r, calls++);
        bar.arrive_and_wait();
        if (failed) throw std::runtime_error("barrier: a peer rank failed");
      };
      try {
        CheckpointWriter w({dir, keep_last}, r, world, barrier);
        EXPECT_EQ(w.save(step, rank_state(r, step), info),
                  (fs::path(dir) / checkpoint_dir_name(step)).string());
      } catch (...) {
        errors[static_cast<std::size_t>(r)] = std::current_exception();
        failed = true;          // set before leaving, so peers released by the drop see it
        bar.arrive_and_drop();  // this rank leaves the barrier for good
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

TEST(Checkpoint, FourRanksSaveAndEachLoadsItsOwnShard) {
  TempDir dir;
  const CheckpointInfo info = info_for(2, 2);
  save_all(dir.str(), 4, 123, info);
  const auto latest = find_latest_complete(dir.str());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(fs::path(*latest).filename(), "step_000123");
  for (int r = 0; r < 4; ++r) {
    LoadedCheckpoint c = load_checkpoint(*latest, r, info.layout, info.model);
    EXPECT_TRUE(same(c.tensors, rank_state(r, 123))) << "rank " << r;
    EXPECT_EQ(c.manifest.step, 123);
    EXPECT_EQ(c.manifest.info.layout, info.layout);
    EXPECT_EQ(c.manifest.info.data, info.data);
    EXPECT_EQ(c.manifest.info.extra, info.extra);
  }
  const Manifest m = read_manifest(*latest);
  ASSERT_EQ(m.files.size(), 4u);
  for (const CheckpointFile& f : m.files) {
    const std::string bytes = read_bytes(fs::path(*latest) / f.name);
    EXPECT_EQ(f.bytes, static_cast<std::int64_t>(bytes.size()));
    EXPECT_EQ(f.xxh64, xxh64(bytes.data(), bytes.size()));
  }
  // Nothing but the shards and the manifest is left behind.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(*latest)) ++entries;
  EXPECT_EQ(entries, 5);
  EXPECT_NO_THROW(verify_checkpoint(*latest));
}

TEST(Checkpoint, PythonReadsShardsAndManifest) {
  if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found (scripts/setup.sh installs it)";
  TempDir dir;
  save_all(dir.str(), 2, 7, info_for(2, 1));
  const std::string code = R"PY(
import json, os, sys
from safetensors import safe_open
ck = os.path.join(os.path.dirname(sys.argv[0]), "step_000007")
m = json.load(open(os.path.join(ck, "manifest.json")))
assert m["step"] == 7 and m["layout"]["tp"] == 2 and m["model"]["n_layers"] == 4, m
for f in m["files"]:
    path = os.path.join(ck, f["name"])
    assert os.path.getsize(path) == f["bytes"]
    with safe_open(path, framework="pt") as st:
        assert st.metadata()["rank"] == str(f["rank"])
        w = st.get_tensor("layers.0.w")
        assert w.shape == (3, 4) and float(w[0, 0]) == f["rank"] * 100.0 + 7, w
print("ok")
)PY";
  write_bytes(dir.path / "check.py", code);
  const std::string cmd = std::string(kPython) + " " + (dir.path / "check.py").string() + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (std::size_t n = std::fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = ::pclose(p);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
}

TEST(Checkpoint, FindLatestIgnoresTmpAndIncompleteFolders) {
  TempDir dir;
  EXPECT_FALSE(find_latest_complete((dir.path / "absent").string()).has_value());
  EXPECT_FALSE(find_latest_complete(dir.str()).has_value());
  const CheckpointInfo info = info_for(1, 1);
  save_all(dir.str(), 1, 5, info);
  save_all(dir.str(), 1, 9, info);
  // Leftovers of crashed saves and foreign folders, all newer than step 9:
  fs::rename(dir.path / "step_000009", dir.path / "step_000012.tmp");  // complete-looking .tmp
  save_all(dir.str(), 1, 9, info);
  fs::create_directory(dir.path / "step_000010");  // no manifest
  fs::copy(dir.path / "step_000009", dir.path / "step_000011");
  write_bytes(dir.path / "step_000011" / "manifest.json", "{\"format\": \"stp-chec");  // torn
  fs::copy(dir.path / "step_000009", dir.path / "step_000013");  // manifest says step 9
  fs::create_directory(dir.path / "notes");
  const auto latest = find_latest_complete(dir.str());
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(fs::path(*latest).filename(), "step_000009");
  EXPECT_EQ(list_complete(dir.str()).size(), 2u);
  expect_invalid([&] { read_manifest((dir.path / "step_000011").string()); },
                 "manifest.json is not valid JSON");
  expect_invalid([&] { read_manifest((dir.path / "step_000010").string()); },
                 "manifest.json does not exist (not a complete checkpoint)");
}

TEST(Checkpoint, CrashBeforePublishingLeavesThePreviousCheckpoint) {
  TempDir dir;
  const CheckpointInfo info = info_for(2, 1);
  save_all(dir.str(), 2, 1, info);
  // Rank 1 dies before writing its shard: step 2 must not appear.
  EXPECT_ANY_THROW(save_all(dir.str(), 2, 2, info, 3, [](int rank, int call) {
    if (rank == 1 && call == 0) throw std::runtime_error("rank 1 killed");
  }));
  EXPECT_TRUE(fs::exists(dir.path / "step_000002.tmp"));
  EXPECT_FALSE(fs::exists(dir.path / "step_000002"));
  EXPECT_EQ(fs::path(*find_latest_complete(dir.str())).filename(), "step_000001");

  // A rank that crashes while writing its shard: the temp folder holds a torn .part file.
  EXPECT_ANY_THROW(save_all(dir.str(), 2, 3, info, 3, [&](int rank, int call) {
    if (rank == 0 && call == 1) {  // all shards written; tear one and stop before the manifest
      write_bytes(dir.path / "step_000003.tmp" / "rank_00001.safetensors.part", "partial");
      throw std::runtime_error("rank 0 killed");
    }
  }));
  EXPECT_FALSE(fs::exists(dir.path / "step_000003"));
  EXPECT_EQ(fs::path(*find_latest_complete(dir.str())).filename(), "step_000001");

  // A shard whose size report vanished: rank 0 refuses to publish, naming the rank.
  try {
    save_all(dir.str(), 2, 4, info, 3, [&](int rank, int call) {
      if (rank == 1 && call == 1)
        fs::remove(dir.path / "step_000004.tmp" / "rank_00001.safetensors.sum");
    });
    ADD_FAILURE() << "expected the save to fail";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint step 4: rank 1 did not write its shard"),
              std::string::npos)
        << e.what();
  }
  EXPECT_FALSE(fs::exists(dir.path / "step_000004"));

  // The next save of step 2 succeeds and the stale temp folders are cleaned up.
  save_all(dir.str(), 2, 2, info);
  EXPECT_EQ(fs::path(*find_latest_complete(dir.str())).filename(), "step_000002");
  EXPECT_FALSE(fs::exists(dir.path / "step_000002.tmp"));
  EXPECT_FALSE(fs::exists(dir.path / "step_000003.tmp"));
  EXPECT_FALSE(fs::exists(dir.path / "step_000004.tmp"));
  EXPECT_TRUE(
      same(load_checkpoint((dir.path / "step_000002").string(), 1, info.layout, info.model).tensors,
           rank_state(1, 2)));
}

TEST(Checkpoint, KeepsTheLastK) {
  TempDir dir;
  const CheckpointInfo info = info_for(1, 1);
  for (int step = 10; step <= 50; step += 10) save_all(dir.str(), 1, step, info, /*keep_last=*/2);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step_000040", "step_000050"}));
  save_all(dir.str(), 1, 60, info, /*keep_last=*/1);
  EXPECT_EQ(list_complete(dir.str()),
            (std::vector<std::string>{(dir.path / "step_000060").string()}));
}

TEST(Checkpoint, ResavingAStepReplacesIt) {
  TempDir dir;
  CheckpointInfo info = info_for(1, 1);
  save_all(dir.str(), 1, 4, info);
  info.data = {{"epoch", 3}};
  save_all(dir.str(), 1, 4, info);
  EXPECT_EQ(read_manifest((dir.path / "step_000004").string()).info.data, info.data);
}

TEST(Checkpoint, CorruptShardIsRefusedNamingTheFile) {
  TempDir dir;
  const CheckpointInfo info = info_for(2, 1);
  save_all(dir.str(), 2, 3, info);
  const fs::path ck = dir.path / "step_000003";
  const fs::path shard = ck / "rank_00001.safetensors";
  const std::string good = read_bytes(shard);
  std::string flipped = good;
  flipped[flipped.size() - 3] ^= 0x10;  // one bit of tensor data: only the checksum sees it
  write_bytes(shard, flipped);
  expect_invalid([&] { load_checkpoint(ck.string(), 1, info.layout, info.model); },
                 "rank_00001.safetensors checksum mismatch: file or manifest corrupt");
  expect_invalid([&] { verify_checkpoint(ck.string()); },
                 "rank_00001.safetensors checksum mismatch");
  EXPECT_NO_THROW(load_checkpoint(ck.string(), 0, info.layout, info.model));  // rank 0 is fine
  write_bytes(shard, good.substr(0, good.size() - 10));
  expect_invalid([&] { load_checkpoint(ck.string(), 1, info.layout, info.model); },
                 "rank_00001.safetensors is " + std::to_string(good.size() - 10) +
                     " bytes, the manifest says " + std::to_string(good.size()));
  fs::remove(shard);
  expect_invalid([&] { load_checkpoint(ck.string(), 1, info.layout, info.model); },
                 "rank_00001.safetensors is missing");
}

TEST(Checkpoint, MismatchedLayoutOrModelIsRefusedNamingWhatDiffers) {
  TempDir dir;
  const CheckpointInfo saved = info_for(2, 2);
  save_all(dir.str(), 4, 8, saved);
  const std::string ck = *find_latest_complete(dir.str());
  const CheckpointInfo run = info_for(1, 4);
  // Another layout needs resharding (reshard_test.cpp); another microbatch count does not.
  expect_invalid([&] { load_checkpoint(ck, 0, run.layout, run.model); },
                 "was saved in another layout (tp=2 pp=2 dp=1 into tp=1 pp=4 dp=1): its shards "
                 "need resharding. stp train --resume / --resume-from reshards on load; stp "
                 "checkpoint reshard writes a copy in this layout");
  CheckpointLayout sched = saved.layout;
  sched.schedule = "zb-v";
  expect_invalid([&] { load_checkpoint(ck, 0, sched, saved.model); },
                 "(tp=2 pp=2 dp=1 schedule=stp into tp=2 pp=2 dp=1 schedule=zb-v)");
  sched = saved.layout;
  sched.microbatches = 16;
  EXPECT_TRUE(same(load_checkpoint(ck, 3, sched, saved.model).tensors, rank_state(3, 8)));
  // Another family is named alone (every other field would differ too).
  nlohmann::json llama = saved.model;
  llama["arch"] = "llama";
  expect_invalid([&] { load_checkpoint(ck, 0, saved.layout, llama); },
                 "cannot resume from step 8: the checkpoint holds a model.arch=gpt model, this run "
                 "trains model.arch=llama");
  nlohmann::json model = saved.model;
  model["n_layers"] = 6;
  model["norm"]["eps"] = 1e-6;
  model.erase("vocab");
  model["bias"] = true;
  try {
    load_checkpoint(ck, 0, saved.layout, model);
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.n_layers=4 in checkpoint, 6 in this run"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.norm.eps=1e-05 in checkpoint, 1e-06 in this run"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("model.vocab=258 in checkpoint, absent in this run"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("model.bias absent in checkpoint, true in this run"), std::string::npos)
        << msg;
  }
}

// 1F1B-I's chunks per rank place the stages: the layout records them (Note [Chunks in the
// layout]), a load with other chunks is a layout change, and a manifest written before the
// layout had them reads extra.schedule.chunks, else the kind's default.
TEST(Checkpoint, ChunksAreRecordedInTheLayout) {
  TempDir dir;
  CheckpointInfo saved = info_for(1, 2);
  saved.layout.schedule = "1f1b-i";
  saved.layout.chunks = 3;
  saved.extra["schedule"] = {{"kind", "1f1b-i"}, {"chunks", 3}};
  save_all(dir.str(), 2, 4, saved);
  const std::string ck = (dir.path / "step_000004").string();
  const fs::path manifest = fs::path(ck) / "manifest.json";
  const nlohmann::json written = nlohmann::json::parse(read_bytes(manifest));
  EXPECT_EQ(written.at("layout").at("chunks"), 3);
  EXPECT_EQ(read_manifest(ck).info.layout.chunks, 3);
  EXPECT_TRUE(same(load_checkpoint(ck, 1, saved.layout, saved.model).tensors, rank_state(1, 4)));
  CheckpointLayout four = saved.layout;
  four.chunks = 4;
  expect_invalid([&] { load_checkpoint(ck, 1, four, saved.model); },
                 "was saved in another layout (schedule.chunks=3 into schedule.chunks=4): its "
                 "shards need resharding");

  // Written before: the layout has no chunks.
  auto rewrite = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json m = written;
    m["layout"].erase("chunks");
    edit(m);
    write_bytes(manifest, m.dump(2));
  };
  rewrite([](nlohmann::json&) {});
  EXPECT_EQ(read_manifest(ck).info.layout.chunks, 3);  // extra.schedule.chunks
  EXPECT_NO_THROW(load_checkpoint(ck, 1, saved.layout, saved.model));
  rewrite([](nlohmann::json& m) { m["extra"].erase("schedule"); });
  EXPECT_EQ(read_manifest(ck).info.layout.chunks, 2);  // 1f1b-i's default
  expect_invalid([&] { load_checkpoint(ck, 1, saved.layout, saved.model); },
                 "(schedule.chunks=2 into schedule.chunks=3)");
  // Another kind's chunks follow from its name; extra's chunks are 1f1b-i's alone.
  rewrite([](nlohmann::json& m) {
    m["layout"]["schedule"] = "1f1b";
    m["extra"]["schedule"] = {{"kind", "1f1b"}, {"chunks", 2}};
  });
  EXPECT_EQ(read_manifest(ck).info.layout.chunks, 1);
  rewrite([](nlohmann::json& m) { m["layout"]["chunks"] = 0; });
  expect_invalid([&] { read_manifest(ck); }, "layout: chunks=0 must be >= 1");
}

TEST(Checkpoint, BadArgumentsAndManifestsAreRefused) {
  TempDir dir;
  auto noop = [] {};
  expect_invalid(
      [&] {
        CheckpointWriter({dir.str(), 3}, 2, 2, noop);
      },
      "checkpoint rank=2 must be in [0, world=2)");
  expect_invalid(
      [&] {
        CheckpointWriter({dir.str(), 0}, 0, 1, noop);
      },
      "checkpoint keep_last=0 must be in [1, ");
  expect_invalid(
      [&] {
        CheckpointWriter({"", 1}, 0, 1, noop);
      },
      "checkpoint dir must not be empty");
  CheckpointWriter w({dir.str(), 1}, 0, 1, noop);
  expect_invalid([&] { w.save(1, {}, info_for(2, 1)); },
                 "checkpoint layout world=2 differs from the writer's world=1");
  expect_invalid([&] { w.save(-1, {}, info_for(1, 1)); }, "checkpoint step=-1 must be >= 0");
  expect_invalid(
      [&] {
        w.save(1, {{"x", at::ones({2, 2}).t()}}, info_for(1, 1));
      },
      "not contiguous");

  save_all(dir.str(), 1, 2, info_for(1, 1));
  const fs::path manifest = dir.path / "step_000002" / "manifest.json";
  const std::string good = read_bytes(manifest);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const std::size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    write_bytes(manifest, s.replace(at, from.size(), to));
  };
  const std::string ck = (dir.path / "step_000002").string();
  with("\"format_version\": 1", "\"format_version\": 2");
  expect_invalid([&] { read_manifest(ck); }, "format_version=2 must be in [1, 1]");
  with("\"world\": 1", "\"world\": 2");
  expect_invalid([&] { read_manifest(ck); }, "needs one file per rank (world=2), has 1");
  with("\"tp\": 1", "\"tp\": \"one\"");
  expect_invalid([&] { read_manifest(ck); }, "field 'tp' has the wrong type");
  EXPECT_FALSE(find_latest_complete(dir.str()).has_value());
}

TEST(Checkpoint, DataPositionRoundTripsThroughTheManifest) {
  TempDir dir;
  data::DataSource src;
  src.corpus_bytes = 10000;
  auto ds = data::load_dataset(src);
  data::LoaderOptions o;
  o.seq_len = 16;
  data::DataLoader run(ds, o);
  for (int s = 0; s < 5; ++s) run.next_step(2, 4);
  CheckpointInfo info = info_for(1, 1);
  info.data = run.position_json();
  save_all(dir.str(), 1, 5, info);
  const engine::MicroBatch want = run.next_batch(4);

  data::DataLoader resumed(ds, o);
  const Manifest m = read_manifest(*find_latest_complete(dir.str()));
  resumed.restore_position_json(m.info.data);
  const engine::MicroBatch got = resumed.next_batch(4);
  EXPECT_TRUE(at::equal(got.tokens, want.tokens));
  EXPECT_TRUE(at::equal(got.targets, want.targets));
}

}  // namespace
}  // namespace stp::checkpoint
