#include "data/data.h"

#include <ATen/ATen.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "data/corpus.h"

#include "data_test_util.h"
#include "file_test_util.h"

namespace stp::data {
namespace {
namespace fs = std::filesystem;

using namespace stp::testing;  // file_test_util.h, data_test_util.h

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// ---- generated corpus ------------------------------------------------------------------------

TEST(Corpus, DeterministicFromSeedAndSized) {
  const std::string a = generate_corpus(7, 100000);
  EXPECT_EQ(a, generate_corpus(7, 100000));
  EXPECT_NE(a, generate_corpus(8, 100000));
  EXPECT_LE(a.size(), 100000u);
  EXPECT_GT(a.size(), 100000u - kCorpusMaxLine);
  EXPECT_EQ(a.back(), '\n');
  // A shorter corpus of the same seed is a prefix: the stream depends on the seed only.
  const std::string b = generate_corpus(7, 5000);
  EXPECT_EQ(a.compare(0, b.size(), b), 0);
}

TEST(Corpus, EveryLineIsCorrectAndEveryKindAppears) {
  const std::string text = generate_corpus(1234, 200000);
  std::map<std::string, int> kinds;
  for (const std::string& l : lines_of(text)) {
    ASSERT_TRUE(corpus_line_is_valid(l)) << "invalid line: '" << l << "'";
    int a = 0, b = 0, c = 0;
    char op = 0;
    // Arithmetic checked here independently of the library's validator.
    if (std::sscanf(l.c_str(), "%d%c%d=%d", &a, &op, &b, &c) == 4 && (op == '+' || op == '*')) {
      if (op == '+') {
        EXPECT_EQ(a + b, c) << l;
        EXPECT_LE(a, 99);
        EXPECT_LE(b, 99);
      } else {
        EXPECT_EQ(a * b, c) << l;
        EXPECT_LE(a, 12);
      }
      ++kinds[std::string(1, op)];
    } else if (l.rfind("sort ", 0) == 0) {
      const std::size_t arrow = l.find(" -> ");
      ASSERT_NE(arrow, std::string::npos) << l;
      std::string in = l.substr(5, arrow - 5), out = l.substr(arrow + 4);
      std::erase(in, ' ');
      std::erase(out, ' ');
      std::sort(in.begin(), in.end());
      EXPECT_EQ(in, out) << l;
      ++kinds["sort"];
    } else if (l.rfind("rev ", 0) == 0) {
      ++kinds["rev"];
    } else if (l.rfind("bal ", 0) == 0) {
      ++kinds["bal"];
    } else {
      EXPECT_EQ(l.back(), '.') << l;
      ++kinds["grammar"];
    }
  }
  const int n = static_cast<int>(lines_of(text).size());
  // Weights 20/15/15/10/15/25 percent; each kind within a loose band around its share.
  const std::map<std::string, double> share = {{"+", .20},   {"*", .15},   {"sort", .15},
                                               {"rev", .10}, {"bal", .15}, {"grammar", .25}};
  for (const auto& [kind, p] : share) {
    EXPECT_GT(kinds[kind], 0.8 * p * n) << kind;
    EXPECT_LT(kinds[kind], 1.2 * p * n) << kind;
  }
}

TEST(Corpus, ValidatorRejectsWrongLines) {
  for (const char* bad :
       {"2+2=5", "100+1=101", "7*8=54", "0*3=0", "sort 3 1 2 -> 1 3 2", "sort 3 1 -> 1 3",
        "rev abc -> abc", "rev xyz -> zyx", "bal ([)]", "bal (", "bal ", "the cat .",
        "cat sees the dog .", "the dog sees a cat", "the dog sleeps and .", "", "07+1=8"}) {
    EXPECT_FALSE(corpus_line_is_valid(bad)) << "'" << bad << "'";
  }
  for (const char* good :
       {"2+2=4", "99+99=198", "12*12=144", "sort 3 1 2 -> 1 2 3", "rev abc -> cba", "bal ([]{()})",
        "the red fox sees a cat .", "a robot sleeps and chases the old bird ."}) {
    EXPECT_TRUE(corpus_line_is_valid(good)) << "'" << good << "'";
  }
}

TEST(Corpus, RejectsSizeOutOfRange) {
  expect_invalid([] { generate_corpus(1, 10); }, "corpus bytes=10 must be in [80, ");
}

// ---- loader ----------------------------------------------------------------------------------

std::shared_ptr<const Dataset> small_corpus() {
  DataSource src;
  src.corpus_bytes = 20000;
  return load_dataset(src);
}

TEST(Data, RowsAreWindowsWithTargetsShiftedByOne) {
  auto ds = small_corpus();
  DataLoader loader(ds, loader_options(16));
  EXPECT_EQ(loader.num_windows(), (static_cast<std::int64_t>(ds->text_tokens.size()) - 1) / 16);
  const std::vector<std::int64_t> windows = loader.peek_windows(5);
  const engine::MicroBatch mb = loader.next_batch(5);
  ASSERT_EQ(mb.tokens.sizes(), (std::vector<std::int64_t>{5, 16}));
  ASSERT_EQ(mb.targets.sizes(), (std::vector<std::int64_t>{5, 16}));
  EXPECT_EQ(mb.tokens.scalar_type(), at::kLong);
  for (int b = 0; b < 5; ++b) {
    for (int t = 0; t < 16; ++t) {
      const std::int64_t start = windows[static_cast<std::size_t>(b)] * 16;
      EXPECT_EQ(mb.tokens[b][t].item<std::int64_t>(), ds->text_tokens[start + t]);
      EXPECT_EQ(mb.targets[b][t].item<std::int64_t>(), ds->text_tokens[start + t + 1]);
    }
  }
}

TEST(Data, DeterministicFromSeed) {
  auto ds = small_corpus();
  DataLoader a(ds, loader_options(32, 5)), b(ds, loader_options(32, 5)),
      c(ds, loader_options(32, 6));
  stp::testing::expect_order_from_seed(a, b, c, 8);
}

TEST(Data, DpShardsAreDisjointAndCoverTheEpoch) {
  auto ds = small_corpus();
  const int dp = 3;
  std::set<std::int64_t> seen;
  std::int64_t per_rank = 0, total = 0;
  for (int r = 0; r < dp; ++r) {
    DataLoader loader(ds, loader_options(16, 9, r, dp));
    per_rank = loader.windows_per_rank();
    total = loader.num_windows();
    for (std::int64_t w : loader.peek_windows(per_rank)) {
      EXPECT_TRUE(seen.insert(w).second) << "window " << w << " on two ranks";
      EXPECT_GE(w, 0);
      EXPECT_LT(w, total);
    }
  }
  EXPECT_EQ(per_rank, total / dp);
  EXPECT_EQ(static_cast<std::int64_t>(seen.size()), per_rank * dp);
  EXPECT_LT(total - static_cast<std::int64_t>(seen.size()), dp);
}

TEST(Data, ReshufflesEveryEpochAndWrapsIntoIt) {
  auto ds = small_corpus();
  DataLoader loader(ds, loader_options(64, 3));
  const std::int64_t n = loader.windows_per_rank();
  const std::vector<std::int64_t> two = loader.peek_windows(2 * n);
  std::vector<std::int64_t> e0(two.begin(), two.begin() + n), e1(two.begin() + n, two.end());
  EXPECT_NE(e0, e1);  // a different order ...
  std::sort(e0.begin(), e0.end());
  std::sort(e1.begin(), e1.end());
  EXPECT_EQ(e0, e1);  // ... of the same windows
  loader.next_batch(n - 1);
  EXPECT_EQ(loader.position(), (DataPosition{0, n - 1}));
  loader.next_batch(3);  // crosses into epoch 1
  EXPECT_EQ(loader.position(), (DataPosition{1, 2}));
}

TEST(Data, NextStepIsMConsecutiveBatches) {
  auto ds = small_corpus();
  DataLoader a(ds, loader_options(16, 2)), b(ds, loader_options(16, 2));
  const std::vector<engine::MicroBatch> step = a.next_step(4, 3);
  ASSERT_EQ(step.size(), 4u);
  for (const engine::MicroBatch& mb : step) {
    const engine::MicroBatch ref = b.next_batch(3);
    EXPECT_TRUE(at::equal(mb.tokens, ref.tokens));
    EXPECT_TRUE(at::equal(mb.targets, ref.targets));
  }
  EXPECT_EQ(a.position(), b.position());
}

TEST(Data, ResumedPositionGivesIdenticalNextBatches) {
  auto ds = small_corpus();
  DataLoader run(ds, loader_options(32, 11, 1, 2));
  const std::int64_t n = run.windows_per_rank();
  for (int s = 0; s < 7; ++s) run.next_step(2, 5);
  // Save through JSON text, as a checkpoint manifest does.
  const std::string saved = run.position_json().dump();
  std::vector<engine::MicroBatch> expected;
  for (int s = 0; s < 2 * n / 10 + 3; ++s) {  // long enough to cross an epoch boundary
    for (engine::MicroBatch& mb : run.next_step(2, 5)) expected.push_back(mb);
  }
  DataLoader resumed(ds, loader_options(32, 11, 1, 2));
  ASSERT_NO_FATAL_FAILURE(expect_resumes_bit_identically(resumed, saved, expected, 5, run));
  EXPECT_GE(run.position().epoch, 1);
}

TEST(Data, RestoreRefusesAPositionForOtherDataOrOptions) {
  auto ds = small_corpus();
  DataLoader a(ds, loader_options(16, 1)), b(ds, loader_options(32, 1));
  expect_invalid([&] { b.restore_position_json(a.position_json()); },
                 "data seq_len=16 in checkpoint, 32 in this run");
  DataSource other;
  other.corpus_bytes = 20000;
  other.corpus_seed = 99;
  DataLoader c(load_dataset(other), loader_options(16, 1));
  expect_invalid([&] { c.restore_position_json(a.position_json()); }, "data dataset_fingerprint=");
  nlohmann::json bad = a.position_json();
  bad["index"] = 1 << 30;
  expect_invalid([&] { a.restore_position_json(bad); },
                 "data position index=1073741824 must be in [0, ");
}

TEST(Data, FolderIsReadRecursivelyInSortedOrderSkippingBinaryAndHidden) {
  TempDir dir;
  write_with_dirs(dir.path / "b.txt", "bbb");
  write_with_dirs(dir.path / "a.txt", "aa");
  write_with_dirs(dir.path / "sub" / "c.md", "c");
  write_with_dirs(dir.path / "empty.txt", "");
  write_with_dirs(dir.path / "x.bin", std::string("\x01\x00\x02", 3));
  write_with_dirs(dir.path / ".git" / "HEAD", "ref: hidden");
  DataSource src;
  src.path = dir.path.string();
  auto ds = load_dataset(src);
  const ByteTokenizer tok;
  EXPECT_EQ(tok.decode(ds->text_tokens), "aa<eos>bbb<eos>c");
  EXPECT_EQ(ds->files, 4);  // a, b, empty, sub/c
  EXPECT_EQ(ds->skipped_binary, 1);
  EXPECT_NE(ds->warning().find("skipped 1 binary file"), std::string::npos) << ds->warning();
  EXPECT_NE(ds->warning().find("x.bin"), std::string::npos) << ds->warning();
}

TEST(Data, SingleFileIsOneDocument) {
  TempDir dir;
  write_with_dirs(dir.path / "t.txt", "hello world\n");
  DataSource src;
  src.path = (dir.path / "t.txt").string();
  auto ds = load_dataset(src);
  EXPECT_EQ(ByteTokenizer().decode(ds->text_tokens), "hello world\n");
  EXPECT_TRUE(ds->warning().empty());
  DataLoader loader(ds, loader_options(11));
  EXPECT_EQ(loader.num_windows(), 1);
  const engine::MicroBatch mb = loader.next_batch(2);  // wraps: the same window twice
  EXPECT_EQ(ByteTokenizer().decode(mb.targets[1]), "ello world\n");
}

TEST(Data, BadInputsNameTheValueAndTheRange) {
  TempDir dir;
  DataSource missing;
  missing.path = (dir.path / "nope").string();
  expect_invalid([&] { load_dataset(missing); }, "data path '" + missing.path + "' does not exist");

  write_with_dirs(dir.path / "empty" / "e.txt", "");
  DataSource empty;
  empty.path = (dir.path / "empty").string();
  expect_invalid([&] { load_dataset(empty); }, "is empty (0 tokens)");

  write_with_dirs(dir.path / "bin" / "x.bin", std::string(10, '\0'));
  DataSource binary;
  binary.path = (dir.path / "bin").string();
  expect_invalid([&] { load_dataset(binary); }, "contains no text files (1 binary files skipped)");

  write_with_dirs(dir.path / "short.txt", "abcd");
  DataSource shrt;
  shrt.path = (dir.path / "short.txt").string();
  expect_invalid([&] { DataLoader(shrt, loader_options(4)); },
                 "has 4 tokens, fewer than one window of seq_len+1=5");
  auto ds = small_corpus();
  expect_invalid([&] { DataLoader(ds, loader_options(0)); },
                 "data seq_len=0 must be in [1, 16777216]");
  expect_invalid([&] { DataLoader(ds, loader_options(8, 1, 2, 2)); },
                 "data dp_rank=2 must be in [0, dp_size=2)");
  expect_invalid([&] { DataLoader(ds, loader_options(8, 1, 0, 0)); },
                 "data dp_size=0 must be in [1, 65536]");
  write_with_dirs(dir.path / "ten.txt", "0123456789");
  DataSource ten;
  ten.path = (dir.path / "ten.txt").string();
  expect_invalid([&] { DataLoader(ten, loader_options(3, 1, 0, 4)); },
                 "has 3 windows of seq_len=3, fewer than dp_size=4");
  DataLoader loader(ds, loader_options(8));
  expect_invalid([&] { loader.next_batch(0); }, "batch size=0 must be >= 1");
  expect_invalid([&] { loader.next_step(0, 1); }, "microbatches m=0 must be >= 1");
  expect_invalid([&] { loader.set_position({-1, 0}); }, "epoch=-1 must be >= 0");
}

}  // namespace
}  // namespace stp::data
