// Token shards (data/token_shards.h) and the DataLoader over them: llm.c and nanoGPT files are
// memory-mapped, not read into the heap; every validation problem is one line naming the file,
// the value and the legal range; folders and globs list in a stable sorted order; windows stay
// inside their shard; DP shards are disjoint and covering; a resumed loader yields bit-identical
// batches across shards and epochs.
#include "data/token_shards.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "data/data.h"

#include "data_test_util.h"
#include "file_test_util.h"

namespace stp::data {
namespace {
namespace fs = std::filesystem;

using namespace stp::testing;  // file_test_util.h, data_test_util.h

// An llm.c shard: the 256-int32 header, then `tokens` at `width` bytes each. The header fields
// can be overridden to write broken files; `extra` bytes are appended (or removed when < 0).
struct LlmcShard {
  std::vector<std::uint32_t> tokens;
  int width = 2;
  std::int32_t magic = 0;    // 0: the one for `width`
  std::int32_t version = 0;  // 0: the one for the magic
  std::int64_t count = -1;   // -1: tokens.size()
  std::int64_t extra = 0;
};

std::string llmc_bytes(const LlmcShard& s) {
  std::vector<std::int32_t> header(kLlmcHeaderInts, 0);
  header[0] = s.magic ? s.magic : (s.width == 2 ? kLlmcMagicU16 : kLlmcMagicU32);
  header[1] = s.version ? s.version : (header[0] == kLlmcMagicU16 ? 1 : 7);
  header[2] = static_cast<std::int32_t>(s.count >= 0 ? s.count : std::ssize(s.tokens));
  std::string bytes(reinterpret_cast<const char*>(header.data()), kLlmcHeaderBytes);
  for (std::uint32_t t : s.tokens) bytes.append(reinterpret_cast<const char*>(&t), s.width);
  if (s.extra > 0) bytes.append(static_cast<std::size_t>(s.extra), '\0');
  if (s.extra < 0) bytes.resize(bytes.size() - static_cast<std::size_t>(-s.extra));
  return bytes;
}

void write_llmc(const fs::path& p, const LlmcShard& s) { write_with_dirs(p, llmc_bytes(s)); }

void write_nanogpt(const fs::path& p, const std::vector<std::uint16_t>& tokens) {
  write_with_dirs(p, std::string(reinterpret_cast<const char*>(tokens.data()), 2 * tokens.size()));
}

// Tokens that name their place: shard s, index i -> s*10000 + i (so a row tells where it
// came from).
std::vector<std::uint32_t> numbered(int shard, int n) {
  std::vector<std::uint32_t> t(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) t[static_cast<std::size_t>(i)] = shard * 10000 + i;
  return t;
}

// Three shards of 1000, 777 and 1501 tokens under DIR/train_00000{0,1,2}.bin.
void three_shards(const fs::path& dir) {
  const int sizes[] = {1000, 777, 1501};
  for (int s = 0; s < 3; ++s)
    write_llmc(dir / ("train_00000" + std::to_string(s) + ".bin"), {numbered(s, sizes[s])});
}

// ---- formats -----------------------------------------------------------------------------------

TEST(Shards, LlmcUint16AndUint32AreReadInPlace) {
  TempDir dir;
  write_llmc(dir.path / "a.bin", {numbered(1, 300)});
  std::vector<std::uint32_t> wide = numbered(0, 300);
  for (auto& t : wide) t += 70000;  // ids beyond uint16
  write_llmc(dir.path / "b.bin", {wide, 4});
  auto ds = load_dataset(shard_source(dir.path, 80000));
  ASSERT_EQ(ds->spans.size(), 2u);
  EXPECT_EQ(ds->spans[0].width, 2);
  EXPECT_EQ(ds->spans[1].width, 4);
  EXPECT_EQ(ds->num_tokens, 600);
  EXPECT_EQ(ds->files, 2);
  // The spans point into the mappings, just past the header: nothing was copied.
  EXPECT_EQ(ds->spans[0].data, ds->maps[0].data() + kLlmcHeaderBytes);
  EXPECT_EQ(ds->spans[1].data, ds->maps[1].data() + kLlmcHeaderBytes);
  EXPECT_EQ(ds->spans[1].at(299), 70299);
  EXPECT_EQ(ds->description, "2 llm.c shards (uint16 and uint32) in " + dir.str());
  EXPECT_EQ(ds->fingerprint.rfind("shards64:", 0), 0u) << ds->fingerprint;

  // Windows stay inside a shard: 299/10 = 29 windows each; every row is 11 consecutive tokens
  // of one shard, starting at a multiple of 10.
  DataLoader loader(ds, loader_options(10));
  EXPECT_EQ(loader.num_windows(), 58);
  const engine::MicroBatch mb = loader.next_batch(58);
  std::set<std::int64_t> starts;
  for (int b = 0; b < 58; ++b) {
    const std::int64_t first = mb.tokens[b][0].item<std::int64_t>();
    EXPECT_EQ(first % 10, 0) << first;
    for (int t = 0; t < 10; ++t) {
      EXPECT_EQ(mb.tokens[b][t].item<std::int64_t>(), first + t);
      EXPECT_EQ(mb.targets[b][t].item<std::int64_t>(), first + t + 1);
    }
    starts.insert(first);
  }
  EXPECT_EQ(starts.size(), 58u);  // one epoch: every window once
}

TEST(Shards, NanoGptBinIsHeaderlessUint16) {
  TempDir dir;
  std::vector<std::uint16_t> tokens(1000);
  for (int i = 0; i < 1000; ++i)
    tokens[static_cast<std::size_t>(i)] = static_cast<std::uint16_t>(3 * i);
  write_nanogpt(dir.path / "train.bin", tokens);
  auto ds = load_dataset(shard_source(dir.path / "train.bin", 3000, DataFormat::kNanoGpt));
  ASSERT_EQ(ds->spans.size(), 1u);
  EXPECT_EQ(ds->spans[0].data, ds->maps[0].data());
  EXPECT_EQ(ds->num_tokens, 1000);
  EXPECT_EQ(ds->description, "nanoGPT shard " + (dir.path / "train.bin").string() + " (uint16)");
  DataLoader loader(ds, loader_options(7));
  EXPECT_EQ(loader.num_windows(), 999 / 7);
  const engine::MicroBatch mb = loader.next_batch(3);
  for (int b = 0; b < 3; ++b) {
    const std::int64_t first = mb.tokens[b][0].item<std::int64_t>();
    EXPECT_EQ(first % 21, 0);  // a window starts at a multiple of seq_len=7 tokens (3*i)
    EXPECT_EQ(mb.targets[b][6].item<std::int64_t>(), first + 21);
  }
}

// ---- listing -----------------------------------------------------------------------------------

TEST(Shards, FolderAndGlobListInStableSortedOrder) {
  TempDir dir;
  for (const char* name : {"b.bin", "a.bin", "10.bin", "9.bin", "B.bin", ".hidden.bin"})
    write_llmc(dir.path / name, {numbered(0, 20)});
  write_with_dirs(dir.path / "notes.txt", "not a shard");
  write_llmc(dir.path / "sub" / "deeper.bin", {numbered(0, 20)});  // folders are not recursed
  const std::string d = dir.str();
  const std::vector<std::string> sorted = {d + "/10.bin", d + "/9.bin", d + "/B.bin", d + "/a.bin",
                                           d + "/b.bin"};
  EXPECT_EQ(list_shard_files(d), sorted);
  EXPECT_EQ(list_shard_files(d + "/*.bin"), sorted);
  EXPECT_EQ(list_shard_files(d + "/[ab].bin"),
            (std::vector<std::string>{d + "/a.bin", d + "/b.bin"}));
  EXPECT_EQ(list_shard_files(d + "/a.bin"), std::vector<std::string>{d + "/a.bin"});
  // The order is the file order of the spans, so the same files always give the same windows.
  auto a = load_dataset(shard_source(dir.path)), b = load_dataset(shard_source(dir.path / "*.bin"));
  EXPECT_EQ(a->fingerprint, b->fingerprint);
  for (std::size_t i = 0; i < sorted.size(); ++i) EXPECT_EQ(a->spans[i].path, sorted[i]);

  expect_invalid([&] { list_shard_files(d + "/nope"); },
                 "data path '" + d + "/nope' does not exist");
  expect_invalid([&] { list_shard_files(d + "/*.pt"); },
                 "data glob '" + d + "/*.pt' matches no shard file");
  TempDir empty;
  write_with_dirs(empty.path / "readme.txt", "x");
  expect_invalid([&] { list_shard_files(empty.str()); },
                 "data folder '" + empty.str() + "' contains no *.bin shard files");
}

TEST(Shards, FolderWithAValidationShardWarns) {
  TempDir dir;
  write_llmc(dir.path / "fineweb_train_000001.bin", {numbered(0, 50)});
  write_llmc(dir.path / "fineweb_val_000000.bin", {numbered(1, 50)});
  auto ds = load_dataset(shard_source(dir.path));
  EXPECT_NE(ds->warning().find("includes 1 shard named like a validation split (e.g. "
                               "fineweb_val_000000.bin)"),
            std::string::npos)
      << ds->warning();
  EXPECT_NE(ds->warning().find(dir.str() + "/*train*.bin"), std::string::npos) << ds->warning();
  EXPECT_EQ(load_dataset(shard_source(dir.path / "*train*.bin"))->warning(), "");
}

// ---- validation --------------------------------------------------------------------------------

TEST(Shards, EachProblemIsOneLineNamingTheFileTheValueAndTheRange) {
  TempDir dir;
  auto one = [&](const std::string& name, const std::string& bytes, std::int64_t vocab = 65536,
                 DataFormat format = DataFormat::kLlmc) {
    write_with_dirs(dir.path / name, bytes);
    const std::string msg =
        error_of([&] { load_dataset(shard_source(dir.path / name, vocab, format)); });
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;  // one problem, one line
    EXPECT_NE(msg.find("'" + (dir.path / name).string() + "'"), std::string::npos) << msg;
    return msg;
  };
  auto has = [](const std::string& msg, const std::string& needle) {
    EXPECT_NE(msg.find(needle), std::string::npos) << "message: " << msg << "\nwant: " << needle;
  };
  has(one("magic.bin", llmc_bytes({numbered(0, 10), 2, 12345})),
      "bad magic 12345; llm.c shards start with 20240520 (uint16 tokens) or 20240801 (uint32 "
      "tokens)");
  has(one("version.bin", llmc_bytes({numbered(0, 10), 2, 0, 3})),
      "bad version 3 for magic 20240520; it must be 1");
  has(one("version32.bin", llmc_bytes({numbered(0, 10), 4, 0, 1})),
      "bad version 1 for magic 20240801; it must be 7");
  has(one("count.bin", llmc_bytes({{}, 2, 0, 0, 0})), "header token count 0 must be >= 1");
  has(one("truncated.bin", llmc_bytes({numbered(0, 10), 2, 0, 0, -1, -3})),
      "is truncated: its header says 10 tokens (1024 + 10*2 = 1044 bytes) but the file has 1041 "
      "bytes");
  has(one("long.bin", llmc_bytes({numbered(0, 10), 2, 0, 0, -1, 6})),
      "has 1050 bytes, 6 more than the header's token count 10 needs (1024 + 10*2 = 1044)");
  has(one("tiny.bin", "abc"),
      "has 3 bytes, fewer than llm.c's 1024-byte header (a headerless nanoGPT .bin? set "
      "data.format=nanogpt)");
  has(one("vocab.bin", llmc_bytes({numbered(0, 40000)}), 35000),
      "token id 35000 at position 35000 is >= the model's vocabulary of 35000 (ids must be in "
      "[0, 34999]; this shard's largest is 39999: raise model.vocab to at least 40000)");
  has(one("vocab32.bin", llmc_bytes({{5, 99999, 7}, 4}), 50257),
      "token id 99999 at position 1 is >= the model's vocabulary of 50257");
  has(one("odd.bin", "abc", 65536, DataFormat::kNanoGpt),
      "has 3 bytes, not a whole number of 2-byte tokens (truncated?)");
  has(one("empty.bin", "", 65536, DataFormat::kNanoGpt), "is empty (0 bytes");
  has(one("llmc_as_nano.bin", llmc_bytes({numbered(0, 10)}), 65536, DataFormat::kNanoGpt),
      "starts with an llm.c header (magic 20240520, version 1), not nanoGPT's headerless uint16 "
      "tokens: set data.format=llmc");
}

TEST(Shards, EveryBadShardOfAGlobGetsItsOwnLine) {
  TempDir dir;
  write_llmc(dir.path / "s0.bin", {numbered(0, 100)});
  write_llmc(dir.path / "s1.bin", {numbered(0, 100), 2, 777});
  write_llmc(dir.path / "s2.bin", {numbered(0, 100)});
  write_llmc(dir.path / "s3.bin", {numbered(0, 100), 2, 0, 0, 500});
  const std::string msg = error_of([&] { load_dataset(shard_source(dir.path / "s*.bin")); });
  EXPECT_EQ(std::count(msg.begin(), msg.end(), '\n'), 1) << msg;
  EXPECT_EQ(msg.rfind("shard '" + (dir.path / "s1.bin").string() + "': bad magic 777", 0), 0u)
      << msg;
  EXPECT_NE(msg.find("\nshard '" + (dir.path / "s3.bin").string() + "' is truncated"),
            std::string::npos)
      << msg;
}

TEST(Shards, AShardShorterThanOneWindowIsRefusedByName) {
  TempDir dir;
  write_llmc(dir.path / "a.bin", {numbered(0, 100)});
  write_llmc(dir.path / "b.bin", {numbered(1, 16)});
  write_llmc(dir.path / "c.bin", {numbered(2, 17)});
  auto ds = load_dataset(shard_source(dir.path));
  const std::string msg = error_of([&] { DataLoader(ds, loader_options(16)); });
  EXPECT_EQ(msg, "shard '" + (dir.path / "b.bin").string() +
                     "' has 16 tokens, fewer than one window of seq_len+1=17 (lower seq_len, or "
                     "merge or drop the shard)");
  DataLoader ok(ds, loader_options(15));  // 99/15 + 15/15 + 16/15 windows
  EXPECT_EQ(ok.num_windows(), 6 + 1 + 1);
}

TEST(Shards, ScanFindsTheFirstBadIdAcrossBlocksAndHashesTheContent) {
  std::vector<std::uint16_t> t(100000, 7);
  t[70001] = 900;  // past the first 64 KiB block
  t[90000] = 1000;
  TokenSpan span{reinterpret_cast<const std::byte*>(t.data()), std::ssize(t), 2, ""};
  TokenScan s = scan_tokens(span, 900);
  EXPECT_EQ(s.first_bad, 70001);
  EXPECT_EQ(s.bad_id, 900);
  EXPECT_EQ(s.max_id, 1000);
  EXPECT_EQ(scan_tokens(span, 0).first_bad, -1);  // vocab 0: unchecked
  EXPECT_EQ(scan_tokens(span, 1001).first_bad, -1);
  const std::uint64_t h = s.hash;
  EXPECT_EQ(scan_tokens(span, 0).hash, h);
  t[123] = 8;  // one token changed
  EXPECT_NE(scan_tokens(span, 0).hash, h);
  t[123] = 7;
  span.size -= 1;  // one token fewer (a tail shorter than a stripe)
  EXPECT_NE(scan_tokens(span, 0).hash, h);
}

// ---- memory ------------------------------------------------------------------------------------

// This process's anonymous resident memory (heap and anonymous mappings), in bytes.
std::int64_t rss_anon_bytes() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("RssAnon:", 0) == 0) return std::stoll(line.substr(8)) * 1024;  // kB
  }
  return -1;
}

TEST(Shards, A64MiBShardIsMappedNotReadIntoTheHeap) {
  TempDir dir;
  const std::int64_t n = 32 << 20;  // 64 MiB of uint16 tokens
  {
    std::ofstream out(dir.path / "big.bin", std::ios::binary);
    const std::string header = llmc_bytes({{}, 2, 0, 0, n});
    out << header;
    std::vector<std::uint16_t> block(1 << 20);
    for (std::int64_t done = 0; done < n; done += std::ssize(block)) {
      for (std::size_t i = 0; i < block.size(); ++i)
        block[i] = static_cast<std::uint16_t>((done + static_cast<std::int64_t>(i)) % 50000);
      out.write(reinterpret_cast<const char*>(block.data()), 2 * std::ssize(block));
    }
  }
  const std::int64_t before = rss_anon_bytes();
  ASSERT_GT(before, 0) << "no RssAnon in /proc/self/status";
  auto ds = load_dataset(shard_source(dir.path / "big.bin", 50000));
  DataLoader loader(ds, loader_options(1024, 3));  // 32767 windows: a 256 KiB permutation
  for (int i = 0; i < 4; ++i) {
    const engine::MicroBatch mb = loader.next_batch(8);
    const std::int64_t first = mb.tokens[0][0].item<std::int64_t>();
    EXPECT_EQ(mb.targets[0][1022].item<std::int64_t>(), (first + 1023) % 50000);
  }
  const std::int64_t grown = rss_anon_bytes() - before;
  // A copy of the tokens would add 64 MiB (512 MiB as int64); the loader's own state is the
  // permutation and a few batches.
  EXPECT_LT(grown, 16 << 20) << "anonymous memory grew by " << grown << " bytes";
  EXPECT_EQ(ds->num_tokens, n);
}

// ---- order, DP sharding, resume ----------------------------------------------------------------

// The (shard, first token index) a row came from, decoded from numbered() tokens.
std::pair<std::int64_t, std::int64_t> origin(const at::Tensor& row) {
  const std::int64_t v = row[0].item<std::int64_t>();
  return {v / 10000, v % 10000};
}

TEST(Shards, DpShardsAreDisjointAndCoverEveryShardsWindows) {
  TempDir dir;
  three_shards(dir.path);
  auto ds = load_dataset(shard_source(dir.path));
  const int dp = 3;
  const std::int64_t T = 32;
  std::set<std::pair<std::int64_t, std::int64_t>> seen;
  std::int64_t total = 0, per_rank = 0;
  for (int r = 0; r < dp; ++r) {
    DataLoader loader(ds, loader_options(T, 9, r, dp));
    per_rank = loader.windows_per_rank();
    total = loader.num_windows();
    const engine::MicroBatch mb = loader.next_batch(per_rank);
    for (std::int64_t b = 0; b < per_rank; ++b) {
      auto o = origin(mb.tokens[b]);
      EXPECT_TRUE(seen.insert(o).second)
          << "window of shard " << o.first << " at " << o.second << " served twice";
      EXPECT_EQ(o.second % T, 0);
      // A row never crosses into another shard: its last target is in the same shard.
      EXPECT_EQ(mb.targets[b][T - 1].item<std::int64_t>(), o.first * 10000 + o.second + T);
    }
  }
  EXPECT_EQ(total, 999 / 32 + 776 / 32 + 1500 / 32);
  EXPECT_EQ(static_cast<std::int64_t>(seen.size()), per_rank * dp);
  EXPECT_GT(static_cast<std::int64_t>(seen.size()), total - dp);  // covers all but < dp
  std::set<std::int64_t> shards_seen;
  for (const auto& o : seen) shards_seen.insert(o.first);
  EXPECT_EQ(shards_seen.size(), 3u);
}

TEST(Shards, OrderIsDeterministicFromTheSeedAndTheFiles) {
  TempDir dir;
  three_shards(dir.path);
  auto a = load_dataset(shard_source(dir.path)),
       b = load_dataset(shard_source(dir.path / "train_*.bin"));
  DataLoader x(a, loader_options(16, 5)), y(b, loader_options(16, 5)), z(a, loader_options(16, 6));
  stp::testing::expect_order_from_seed(x, y, z, 40);
}

TEST(Shards, ResumeAcrossShardsAndEpochsIsBitIdentical) {
  TempDir dir;
  three_shards(dir.path);
  const LoaderOptions o = loader_options(24, 17, 1, 2);
  DataLoader run(load_dataset(shard_source(dir.path)), o);
  for (int s = 0; s < 5; ++s) run.next_step(2, 3);
  const std::string saved = run.position_json().dump();  // as the checkpoint manifest holds it
  std::vector<engine::MicroBatch> expected;
  std::set<std::int64_t> shards_in_expected;
  for (int s = 0; s < 12; ++s) {
    for (engine::MicroBatch& mb : run.next_step(2, 3)) {
      for (int b = 0; b < 3; ++b) shards_in_expected.insert(origin(mb.tokens[b]).first);
      expected.push_back(mb);
    }
  }
  EXPECT_GE(run.position().epoch, 1);        // crossed an epoch boundary
  EXPECT_EQ(shards_in_expected.size(), 3u);  // and drew from every shard

  // A fresh process: the shards opened again, the position restored from the saved JSON.
  DataLoader resumed(load_dataset(shard_source(dir.path)), o);
  ASSERT_NO_FATAL_FAILURE(expect_resumes_bit_identically(resumed, saved, expected, 3, run));

  // Other data is refused: one token of one shard changed, same sizes.
  LlmcShard changed{numbered(1, 777)};
  changed.tokens[500] = 1;
  write_llmc(dir.path / "train_000001.bin", changed);
  DataLoader other(load_dataset(shard_source(dir.path)), o);
  expect_invalid([&] { other.restore_position_json(nlohmann::json::parse(saved)); },
                 "data dataset_fingerprint=\"shards64:");
}

TEST(Shards, BadSourcesNameTheValue) {
  expect_invalid([] { data_format_from_string("tfrecord"); },
                 "data format 'tfrecord' must be one of bytes | llmc | nanogpt");
  EXPECT_EQ(data_format_from_string("nanogpt"), DataFormat::kNanoGpt);
  DataSource none;
  none.format = DataFormat::kLlmc;
  expect_invalid([&] { load_dataset(none); },
                 "data format llmc needs a path: a shard file, a folder of *.bin shards or a glob");
  DataSource small;
  small.corpus_bytes = 1000;
  small.vocab = 100;
  expect_invalid([&] { load_dataset(small); },
                 "vocabulary 100 is too small for the byte tokenizer (needs >= 258)");
}

}  // namespace
}  // namespace stp::data
