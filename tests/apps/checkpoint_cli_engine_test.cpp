// Checkpoints from the command line and from outside stp: the reader script of
// docs/checkpoints.md (safetensors + numpy, run as written there) reproduces the loss
// `stp train` logs from a tp 2 x dp 2 checkpoint; --resume skips a corrupt newest checkpoint for
// the newest intact one, agreed by every rank, with a warning naming it; --resume-from chooses
// one; the manifest records every rank's (pp, dp, tp) and the optimizer settings; the generated
// corpus's seed is a config key a resumed run must keep; a run resumes in another layout
// (resharding on load, or from `stp checkpoint reshard`'s output, 1F1B-I's chunks included) and
// continues the loss curve; another model, family, vocabulary or optimizer is refused in one
// line.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "cli_test_util.h"

#include "tests/support/file_test_util.h"

namespace stp::testing {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A GPT small enough for a CPU test on one rank (later --set flags override the layout),
// checkpoints every 2 steps, kept 3.
std::string tiny(const std::string& log_dir, int steps) {
  std::ostringstream os;
  os << "--set model.d_model=32 --set model.n_heads=2 --set model.n_layers=2 "
     << "--set model.seq_len=16 --set schedule.kind=1f1b --set schedule.microbatches=2 "
     << "--set schedule.micro_batch_size=2 --set data.corpus_bytes=65536 "
     << "--set run.progress=false --set run.checkpoint_interval=2 --set run.keep_checkpoints=3 "
     << "--set offload.budget=off --set parallel.tp=1 --set parallel.pp=1 --set run.steps=" << steps
     << " --set run.log_dir=" << log_dir;
  return os.str();
}

// The loss metrics.jsonl logs for `step` (the last such line: a resumed run logs it again).
double loss_at(const std::string& log_dir, int step) {
  std::ifstream in(log_dir + "/metrics.jsonl");
  std::optional<double> loss;
  for (std::string line; std::getline(in, line);)
    if (const json j = json::parse(line); j.at("step") == step) loss = j.at("loss").get<double>();
  if (loss) return *loss;
  ADD_FAILURE() << "no step " << step << " in " << log_dir << "/metrics.jsonl";
  return 0;
}

// `stp run -n <ranks> -- stp train <whole>`, then the same run as <cut> stopped during step 5,
// after its step-4 checkpoint (both with 6 steps and checkpoints every 2).
void run_whole_and_cut(int ranks, const std::string& whole, const std::string& cut) {
  const std::string run = "run -n " + std::to_string(ranks) + " -- stp train ";
  CliResult r = run_cli(run + whole);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_cli(run + cut + " --stop-after 5");
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

void flip_byte(const std::string& file) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(fs::file_size(file) - 3));
  const char c = static_cast<char>(f.get());
  f.seekp(static_cast<std::streamoff>(fs::file_size(file) - 3));
  f.put(static_cast<char>(c ^ 0x5a));
}

// The python block after "the test extracts and runs the next code block" in the doc.
std::string reader_script() {
  const std::string doc = read_bytes(fs::path(STP_SOURCE_DIR) / "docs" / "checkpoints.md");
  const std::size_t marker = doc.find("the test extracts and runs the next code block");
  EXPECT_NE(marker, std::string::npos);
  const std::size_t open = doc.find("```python\n", marker);
  const std::size_t close = doc.find("\n```", open + 10);
  EXPECT_TRUE(open != std::string::npos && close != std::string::npos);
  return doc.substr(open + 10, close - open - 10 + 1);
}

TEST(CheckpointReader, TheDocsScriptReproducesTheLoggedLossAtTp2Dp2) {
  if (!fs::exists(kPython) ||
      std::system(
          (std::string(kPython) + " -c 'import numpy, safetensors' >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << kPython << " with numpy and safetensors is missing (scripts/setup.sh)";
  const std::string dir = fresh_temp_dir("checkpoint_cli", "reader");
  std::string text;  // a text file the byte tokenizer reads, a few hundred windows
  for (int i = 0; i < 400; ++i) text += "line " + std::to_string(i * 7919 % 1000) + " of text\n";
  write_bytes(fs::path(dir) / "data.txt", text);
  const std::string log = dir + "/run";
  // float64: the engine and numpy agree to rounding. tp 2 x dp 2: the rank order matters.
  CliResult r = run_cli("run -n 4 -- stp train " + tiny(log, 3) +
                        " --set parallel.tp=2 --set parallel.pp=1 --set model.dtype=float64" +
                        " --set data.path=" + dir + "/data.txt");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json manifest =
      json::parse(read_bytes(fs::path(log) / "checkpoints" / "step_000002" / "manifest.json"));
  // Every rank's place, and the optimizer settings in extra.
  ASSERT_EQ(manifest.at("files").size(), 4u);
  for (int rank = 0; rank < 4; ++rank) {
    const json& f = manifest.at("files")[rank];
    EXPECT_EQ(f.at("pp"), 0);
    EXPECT_EQ(f.at("dp"), rank / 2) << f.dump();
    EXPECT_EQ(f.at("tp"), rank % 2) << f.dump();
  }
  EXPECT_EQ(manifest.at("extra").at("optimizer").at("beta2"), 0.95);
  EXPECT_EQ(manifest.at("extra").at("schedule").at("micro_batch_size"), 2);
  write_bytes(fs::path(dir) / "reader.py", reader_script());
  const std::string cmd = std::string(kPython) + " " + dir + "/reader.py " + log +
                          "/checkpoints/step_000002 " + dir + "/data.txt > " + dir +
                          "/reader.log 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << read_bytes(fs::path(dir) / "reader.log");
  const std::string out = read_bytes(fs::path(dir) / "reader.log");
  ASSERT_EQ(out.rfind("step 3 loss ", 0), 0u) << out;
  const double reproduced = std::stod(out.substr(12));
  EXPECT_NEAR(reproduced, loss_at(log, 3), 1e-9) << out;
  fs::remove_all(dir);
}

TEST(CheckpointResume, ACorruptNewestCheckpointIsSkippedByEveryRank) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "skip");
  const std::string whole = dir + "/whole", cut = dir + "/cut";
  // Two ranks (pp 2): the corrupt shard is rank 1's, so rank 0 alone would not see it.
  const std::string layout = " --set parallel.tp=1 --set parallel.pp=2";
  ASSERT_NO_FATAL_FAILURE(run_whole_and_cut(2, tiny(whole, 6) + layout, tiny(cut, 6) + layout));
  const std::string newest = cut + "/checkpoints/step_000004";
  flip_byte(newest + "/rank_00001.safetensors");
  CliResult r = run_cli("run -n 2 -- stp train " + tiny(cut, 6) + layout + " --resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output,
                  {"[r0] warning: --resume skipped " + newest +
                       ": rank_00001.safetensors checksum mismatch: file or manifest corrupt",
                   "[r0] resumed from " + cut + "/checkpoints/step_000002 (step 2)"});
  // From step 2 on, the very losses of the uninterrupted run.
  EXPECT_EQ(loss_at(cut, 6), loss_at(whole, 6));
  fs::remove_all(dir);
}

TEST(CheckpointResume, ResumeFromChoosesACheckpointAndRefusesOneThatIsNot) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "from");
  CliResult r = run_cli("train " + tiny(dir, 4));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string older = dir + "/checkpoints/step_000002";
  r = run_cli("train " + tiny(dir, 4) + " --resume-from " + older);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("resumed from " + older + " (step 2)"), std::string::npos) << r.output;
  // Not a checkpoint; a corrupt one is not skipped when chosen.
  expect_rejected("train " + tiny(dir, 4) + " --resume-from " + dir,
                  dir + "/manifest.json does not exist (not a complete checkpoint)");
  flip_byte(older + "/rank_00000.safetensors");
  expect_rejected("train " + tiny(dir, 4) + " --resume-from " + older,
                  "rank_00000.safetensors checksum mismatch: file or manifest corrupt");
  // Every checkpoint corrupt: --resume says so, in one line.
  flip_byte(dir + "/checkpoints/step_000004/rank_00000.safetensors");
  expect_rejected("train " + tiny(dir, 4) + " --resume",
                  "--resume: no intact checkpoint in " + dir +
                      "/checkpoints (all 2 are corrupt; the newest: rank_00000.safetensors "
                      "checksum mismatch: file or manifest corrupt");
  fs::remove_all(dir);
}

TEST(CheckpointResume, CorpusSeedIsAKeyAResumedRunMustKeep) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "corpus_seed");
  CliResult r = run_cli("train " + tiny(dir, 2) + " --set data.corpus_seed=7");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("generated corpus (65536 bytes, seed 7)"), std::string::npos) << r.output;
  expect_rejected("train " + tiny(dir, 4) + " --set data.corpus_seed=8 --resume",
                  "data.corpus_seed=7 in checkpoint, 8 in this run");
  r = run_cli("train " + tiny(dir, 4) + " --set data.corpus_seed=7 --resume");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("(step 2)"), std::string::npos) << r.output;
  expect_rejected("train --set data.corpus_seed=-1",
                  "data.corpus_seed=-1 is out of range [0, inf]");
  fs::remove_all(dir);
}

// ---- layout changes between runs (checkpoint/reshard.h) ------------------------------------

// tiny() with 4 heads and 4 layers (tp 4, pp 4 fit), 4 microbatches (stp at pp 2), float64.
std::string tiny4(const std::string& log_dir, int steps) {
  return tiny(log_dir, steps) +
         " --set model.n_heads=4 --set model.n_layers=4 --set schedule.microbatches=4"
         " --set model.dtype=float64";
}

json manifest_of(const std::string& checkpoint) {
  return json::parse(read_bytes(fs::path(checkpoint) / "manifest.json"));
}

// `stp checkpoint reshard --checkpoint <from> --out <out><flags>` says "stp checkpoint reshard:
// <said> -> <out>"; then `train` (a whole `stp run ... stp train ...` command line) resumes from
// `out` as from its own checkpoint: without resharding.
void reshard_then_resume(const std::string& from, const std::string& out, const std::string& flags,
                         const std::string& said, const std::string& train) {
  CliResult r = run_cli("checkpoint reshard --checkpoint " + from + " --out " + out + flags);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"stp checkpoint reshard: " + said + " -> " + out});
  r = run_cli(train + " --resume-from " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("resharding"), std::string::npos) << r.output;
  expect_contains(r.output, {"[r0] resumed from " + out + " (step "});
}

// A tp 2 x pp 2 (stp) run stopped in step 5 continues from its step-4 checkpoint as tp 1 x
// pp 4 and as tp 4 x pp 1 (1f1b) with the losses of the uninterrupted run: the same batches
// (the data position of the next checkpoint is the uninterrupted run's, exactly) and the same
// weights and AdamW moments, resharded. Tolerance 1e-9 in float64: changing TP reorders the
// partial sums of every row-parallel matmul and all-reduce (rounding differences near 1e-16,
// carried through two AdamW steps), while a misplaced shard or batch moves the loss in its
// second or third digit. `stp checkpoint reshard` writes the same tensors ahead of time: a run
// resumes from its output as from its own checkpoint, with bitwise the same losses.
TEST(CheckpointReshard, ResumingInAnotherLayoutContinuesTheLossCurve) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "reshard");
  const std::string whole = dir + "/whole", cut = dir + "/cut";
  const std::string tp2pp2 = " --set parallel.tp=2 --set parallel.pp=2 --set schedule.kind=stp";
  ASSERT_NO_FATAL_FAILURE(run_whole_and_cut(4, tiny4(whole, 6) + tp2pp2, tiny4(cut, 6) + tp2pp2));
  CliResult r;
  const std::string step4 = cut + "/checkpoints/step_000004";
  struct Layout {
    std::string name, flags, change;
  };
  const std::vector<Layout> layouts = {
      {"tp1pp4", " --set parallel.tp=1 --set parallel.pp=4 --set schedule.kind=1f1b",
       "tp=2 pp=2 dp=1 schedule=stp into tp=1 pp=4 dp=1 schedule=1f1b"},
      {"tp4pp1", " --set parallel.tp=4 --set parallel.pp=1 --set schedule.kind=1f1b",
       "tp=2 pp=2 dp=1 schedule=stp into tp=4 pp=1 dp=1 schedule=1f1b"}};
  for (const Layout& l : layouts) {
    const std::string log = dir + "/" + l.name;
    r = run_cli("run -n 4 -- stp train " + tiny4(log, 6) + l.flags + " --resume-from " + step4);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    expect_contains(r.output, {"[r0] resuming step 4 saved as " + l.change + ": resharding on load",
                               "[r0] resumed from " + step4 + " (step 4)"});
    for (int step : {5, 6})
      EXPECT_NEAR(loss_at(log, step), loss_at(whole, step), 1e-9) << l.name << " step " << step;
    EXPECT_EQ(manifest_of(log + "/checkpoints/step_000006").at("data"),
              manifest_of(whole + "/checkpoints/step_000006").at("data"))
        << l.name;
  }
  // The command: the same tensors written ahead of time, resumed without resharding.
  const std::string out = dir + "/tp1pp4_step4", log = dir + "/from_command";
  ASSERT_NO_FATAL_FAILURE(reshard_then_resume(
      step4, out, " --tp 1 --pp 4 --schedule 1f1b",
      "step 4 saved as tp=2 pp=2 dp=1 schedule=stp into tp=1 pp=4 dp=1 schedule=1f1b",
      "run -n 4 -- stp train " + tiny4(log, 6) + layouts[0].flags));
  EXPECT_EQ(manifest_of(out).at("layout").at("pp"), 4);
  EXPECT_EQ(loss_at(log, 6), loss_at(dir + "/tp1pp4", 6));
  fs::remove_all(dir);
}

// 1F1B-I's chunks per rank place the stages (the layout records them: Note [Chunks in the
// layout]): a run resumed with other chunks reshards and continues with the losses of the
// uninterrupted run (same TP: the same arithmetic).
TEST(CheckpointReshard, AnotherChunkCountOf1f1bIReshards) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "reshard_chunks");
  const std::string flags =
      " --set model.n_layers=8 --set parallel.pp=2 --set schedule.kind=1f1b-i"
      " --set model.dtype=float64 --set schedule.chunks=";
  CliResult r = run_cli("run -n 2 -- stp train " + tiny(dir + "/whole", 4) + flags + "2");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string step2 = dir + "/whole/checkpoints/step_000002";
  r = run_cli("run -n 2 -- stp train " + tiny(dir + "/c4", 4) + flags + "4 --resume-from " + step2);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"[r0] resuming step 2 saved as schedule.chunks=2 into "
                             "schedule.chunks=4: resharding on load"});
  for (int step : {3, 4})
    EXPECT_NEAR(loss_at(dir + "/c4", step), loss_at(dir + "/whole", step), 1e-12) << step;
  fs::remove_all(dir);
}

// A manifest written before the layout recorded the chunks (Note [Chunks in the layout]): a
// run with other chunks still reshards on load (the chunks come from extra.schedule), and
// `stp checkpoint reshard --chunks 4` writes the 4-chunk checkpoint, which a run with
// chunks 4 resumes without resharding, continuing the uninterrupted losses. --chunks is
// refused where the schedule does not take it.
TEST(CheckpointReshard, TheCommandTakesChunksAndReadsOlderManifests) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "reshard_command_chunks");
  const std::string flags =
      " --set model.n_layers=8 --set parallel.pp=2 --set schedule.kind=1f1b-i"
      " --set model.dtype=float64 --set schedule.chunks=";
  auto train = [&](const std::string& log, int chunks) {
    return "run -n 2 -- stp train " + tiny(log, 4) + flags + std::to_string(chunks);
  };
  const CliResult whole = run_cli(train(dir + "/whole", 2));
  ASSERT_EQ(whole.exit_code, 0) << whole.output;
  const std::string step2 = dir + "/whole/checkpoints/step_000002";
  json older = manifest_of(step2);  // as written before the layout had the chunks
  ASSERT_EQ(older.at("layout").at("chunks"), 2);
  older["layout"].erase("chunks");
  write_bytes(fs::path(step2) / "manifest.json", older.dump(2));
  const CliResult on_load = run_cli(train(dir + "/c4", 4) + " --resume-from " + step2);
  EXPECT_EQ(on_load.exit_code, 0) << on_load.output;
  expect_contains(on_load.output, {"[r0] resuming step 2 saved as schedule.chunks=2 into "
                                   "schedule.chunks=4: resharding on load"});

  const std::string out = dir + "/chunks4_step2", log = dir + "/from_command";
  ASSERT_NO_FATAL_FAILURE(reshard_then_resume(
      step2, out, " --tp 1 --pp 2 --chunks 4",
      "step 2 saved as schedule.chunks=2 into schedule.chunks=4", train(log, 4)));
  EXPECT_EQ(manifest_of(out).at("layout").at("chunks"), 4);
  for (int step : {3, 4}) {
    EXPECT_NEAR(loss_at(log, step), loss_at(dir + "/whole", step), 1e-12) << step;
    EXPECT_EQ(loss_at(log, step), loss_at(dir + "/c4", step)) << step;
  }

  const std::string reshard = "checkpoint reshard --checkpoint " + step2 + " --tp 1 --pp 2 --out ";
  CliResult r = run_cli(reshard + dir + "/zbv --schedule zb-v --chunks 4");
  EXPECT_NE(r.exit_code, 0);
  expect_contains(r.output, {"chunks=4 is not supported by the zb-v schedule (it uses 2)"});
  r = run_cli(reshard + dir + "/one --chunks 1");
  EXPECT_NE(r.exit_code, 0);
  expect_contains(r.output, {"chunks=1 must be >= 2 for the 1f1b-i schedule (use 1f1b for 1)"});
  r = run_cli(reshard + dir + "/many --chunks 65");
  EXPECT_NE(r.exit_code, 0);
  expect_contains(r.output, {"--chunks", "65"});
  EXPECT_FALSE(fs::exists(dir + "/zbv") || fs::exists(dir + "/one") || fs::exists(dir + "/many"));
  fs::remove_all(dir);
}

// dp 2 -> dp 1 with --resume (the newest of the run's checkpoints, verified by every rank): the
// one rank continues at the same global sample, after the rows both ranks read.
TEST(CheckpointReshard, AnotherDpContinuesAtTheSameGlobalSample) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "reshard_dp");
  CliResult r = run_cli("run -n 2 -- stp train " + tiny(dir + "/dp2", 2));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string step2 = dir + "/dp2/checkpoints/step_000002";
  const json saved = manifest_of(step2).at("data");
  ASSERT_EQ(saved.at("dp_size"), 2);
  r = run_cli("train " + tiny(dir + "/dp1", 4) + " --set run.checkpoint_dir=" + dir +
              "/dp2/checkpoints --resume");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output,
                  {"resuming step 2 saved as tp=1 pp=1 dp=2 into tp=1 pp=1 dp=1: resharding on "
                   "load",
                   "resumed from " + step2 + " (step 2)"});
  const json now = manifest_of(dir + "/dp2/checkpoints/step_000004").at("data");
  EXPECT_EQ(now.at("dp_size"), 1);
  // Each of the two ranks read 2 steps x 2 microbatches x 2 rows; the one rank 8 more.
  EXPECT_EQ(now.at("index").get<int>(), saved.at("index").get<int>() * 2 + 8);
  fs::remove_all(dir);
}

TEST(CheckpointReshard, AnotherModelFamilyVocabularyOrOptimizerIsRefused) {
  const std::string dir = fresh_temp_dir("checkpoint_cli", "reshard_refused");
  const std::string ck = dir + "/checkpoints/step_000002";  // of a 2-step run on one rank
  const CliResult trained = run_cli("train " + tiny(dir, 2));
  ASSERT_EQ(trained.exit_code, 0) << trained.output;
  const std::string again = "train " + tiny(dir + "/again", 4) + " --resume-from " + ck;
  expect_rejected(
      {{again + " --set model.n_layers=3", "model.n_layers=2 in checkpoint, 3 in this run"},
       {again + " --set model.vocab=300", "model.vocab=258 in checkpoint, 300 in this run"},
       {again + " --set model.arch=llama",
        "cannot resume from step 2: the checkpoint holds a model.arch=gpt model, this "
        "run trains model.arch=llama"},
       {"checkpoint reshard --checkpoint " + ck + " --out " + dir + "/x --tp 3 --pp 1",
        "n_heads=2 is not divisible by tp=3"},
       {"checkpoint reshard --checkpoint " + ck + " --out " + ck + " --tp 1 --pp 1",
        "already exists"},
       // model.rms_eps is a Llama key, in (0, 0.01].
       {"train --set model.rms_eps=1e-6",
        "model.rms_eps applies to model.arch=llama, not model.arch=gpt"},
       {"train --set model.arch=llama --set model.rms_eps=0.5",
        "model.rms_eps=0.5 is out of range [1e-12, 0.01]"}});
  json m = manifest_of(ck);
  EXPECT_EQ(m.at("extra").at("optimizer").at("kind"), "adamw");
  m["extra"]["optimizer"]["kind"] = "sgd";
  write_bytes(fs::path(ck) / "manifest.json", m.dump(2));
  expect_rejected(again, "the checkpoint's optimizer is sgd, this run's is adamw");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace stp::testing
