// scripts/prepare_data.py as a user runs it: text in, llm.c shards and the tokenizer out, read
// by the C++ loader. The shards decode back to the text; a tokenizer.json brought by the user
// gives the same shards; a vocabulary beyond uint16 gives uint32 shards; bad arguments are one
// line and exit code 2. Needs the `tokenizers` package in /opt/stp-venv (scripts/setup.sh).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>

#include "data/corpus.h"
#include "data/data.h"
#include "data/token_shards.h"

#include "data_test_util.h"
#include "file_test_util.h"

namespace stp::data {
namespace {
namespace fs = std::filesystem;

using namespace stp::testing;  // file_test_util.h, data_test_util.h

const std::string kScript = std::string(STP_SOURCE_DIR) + "/scripts/prepare_data.py";

struct ScriptRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `python <args>` with its output into a file beside the data.
ScriptRun python(const TempDir& dir, const std::string& args) {
  const std::string log = (dir.path / "python.log").string();
  const int status =
      std::system((std::string(kPython) + " " + args + " > " + log + " 2>&1").c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read_bytes(log)};
}

// Skips the test with the reason when the script's packages are missing.
#define SKIP_WITHOUT_TOKENIZERS(dir)                                                      \
  do {                                                                                    \
    if (!fs::exists(kPython)) GTEST_SKIP() << kPython << " not found (scripts/setup.sh)"; \
    if (python(dir, "-c 'import tokenizers, numpy'").exit_code != 0)                      \
      GTEST_SKIP() << "the tokenizers package is not in " << kPython                      \
                   << " (scripts/setup.sh installs it)";                                  \
  } while (0)

std::int64_t meta_int(const fs::path& meta, const std::string& key) {
  std::smatch m;
  const std::string text = read_bytes(meta);
  EXPECT_TRUE(std::regex_search(text, m, std::regex("\"" + key + "\": (\\d+)"))) << text;
  return m.empty() ? -1 : std::stoll(m[1]);
}

std::int32_t header_int(const fs::path& shard, int i) {
  const std::string bytes = read_bytes(shard);
  std::int32_t v = 0;
  std::memcpy(&v, bytes.data() + 4 * i, 4);
  return v;
}

// Two documents of generated-corpus text (real lines of several small languages).
void write_texts(const fs::path& dir) {
  fs::create_directories(dir);
  write_bytes(dir / "a.txt", generate_corpus(7, 60000));
  write_bytes(dir / "b.txt", generate_corpus(8, 40000));
  write_bytes(dir / ".hidden.txt", "never read");
}

TEST(PrepareData, TrainsABpeAndWritesShardsTheLoaderReads) {
  TempDir dir;
  SKIP_WITHOUT_TOKENIZERS(dir);
  write_texts(dir.path / "text");
  const fs::path out = dir.path / "out";
  const ScriptRun run = python(dir, kScript +
                                        " --vocab-size 400 --val-tokens 3000 --shard-tokens 9000 "
                                        "--out " +
                                        out.string() + " " + (dir.path / "text").string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("prepare_data: 2 documents, vocabulary 400 (eot id 0), uint16 tokens"),
            std::string::npos)
      << run.output;
  EXPECT_NE(
      run.output.find("--set 'data.path=" + out.string() + "/train_*.bin' --set model.vocab=400"),
      std::string::npos)
      << run.output;
  ASSERT_TRUE(fs::exists(out / "tokenizer.json"));
  ASSERT_TRUE(fs::exists(out / "val_000000.bin"));
  EXPECT_EQ(meta_int(out / "meta.json", "vocab_size"), 400);
  EXPECT_EQ(header_int(out / "train_000000.bin", 0), kLlmcMagicU16);
  EXPECT_EQ(header_int(out / "train_000000.bin", 1), kLlmcVersionU16);
  EXPECT_EQ(header_int(out / "train_000000.bin", 2), 9000);
  EXPECT_EQ(header_int(out / "val_000000.bin", 2), 3000);

  // The C++ loader opens and validates them at the tokenizer's vocabulary, and serves windows.
  DataSource src = stp::testing::shard_source(out / "train_*.bin", 400);
  auto ds = load_dataset(src);
  EXPECT_GE(ds->spans.size(), 2u);
  LoaderOptions o;
  o.seq_len = 64;
  DataLoader loader(ds, o);
  const engine::MicroBatch mb = loader.next_batch(4);
  EXPECT_LT(mb.tokens.max().item<std::int64_t>(), 400);
  src.vocab = 300;  // a model with too small a vocabulary is refused by name
  EXPECT_NE(error_of([&] { load_dataset(src); }).find("raise model.vocab to at least"),
            std::string::npos);

  // The shards hold the text: val + train decode to <eot> a.txt <eot> b.txt exactly.
  const ScriptRun decoded =
      python(dir,
             "-c '\n"
             "import glob, numpy as np, tokenizers\n"
             "out = \"" +
                 out.string() +
                 "\"\n"
                 "tok = tokenizers.Tokenizer.from_file(out + \"/tokenizer.json\")\n"
                 "files = [out + \"/val_000000.bin\"] + sorted(glob.glob(out + \"/train_*.bin\"))\n"
                 "ids = np.concatenate([np.fromfile(f, dtype=\"<u2\")[512:] for f in files])\n"
                 "text = tok.decode(ids.tolist(), skip_special_tokens=False)\n"
                 "want = \"\".join(\"<|endoftext|>\" + open(\"" +
                 (dir.path / "text").string() +
                 "/\" + n).read() for n in (\"a.txt\", \"b.txt\"))\n"
                 "print(\"same\" if text == want else \"differ\", len(text), len(want))\n'");
  EXPECT_EQ(decoded.output.rfind("same", 0), 0u) << decoded.output;

  // The tokenizer brought back in gives the very same shards.
  const fs::path again = dir.path / "again";
  const ScriptRun rerun =
      python(dir, kScript + " --tokenizer " + (out / "tokenizer.json").string() +
                      " --val-tokens 3000 --shard-tokens 9000 --out " + again.string() + " " +
                      (dir.path / "text").string());
  ASSERT_EQ(rerun.exit_code, 0) << rerun.output;
  for (const char* f : {"val_000000.bin", "train_000000.bin", "train_000001.bin"})
    EXPECT_EQ(read_bytes(out / f), read_bytes(again / f)) << f;
}

TEST(PrepareData, AVocabularyBeyondUint16WritesUint32Shards) {
  TempDir dir;
  SKIP_WITHOUT_TOKENIZERS(dir);
  write_texts(dir.path / "text");
  // A word-level tokenizer with 70000 entries: the corpus's words get the highest ids.
  const fs::path tok = dir.path / "big.json";
  const ScriptRun made =
      python(dir,
             "-c '\n"
             "import re\n"
             "from tokenizers import Tokenizer, models, pre_tokenizers\n"
             "words = sorted(set(re.findall(r\"\\w+|[^\\w\\s]\", open(\"" +
                 (dir.path / "text" / "a.txt").string() + "\").read() + open(\"" +
                 (dir.path / "text" / "b.txt").string() +
                 "\").read())))\n"
                 "vocab = {\"<|endoftext|>\": 0, \"[UNK]\": 1}\n"
                 "for i in range(70000 - 2 - len(words)): vocab[\"filler%d\" % i] = len(vocab)\n"
                 "for w in words: vocab[w] = len(vocab)\n"
                 "t = Tokenizer(models.WordLevel(vocab, unk_token=\"[UNK]\"))\n"
                 "t.pre_tokenizer = pre_tokenizers.Whitespace()\n"
                 "t.save(\"" +
                 tok.string() + "\")\n'");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const fs::path out = dir.path / "out";
  const ScriptRun run =
      python(dir, kScript + " --tokenizer " + tok.string() + " --val-tokens 0 --out " +
                      out.string() + " " + (dir.path / "text" / "a.txt").string());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_FALSE(fs::exists(out / "val_000000.bin"));
  EXPECT_EQ(header_int(out / "train_000000.bin", 0), kLlmcMagicU32);
  EXPECT_EQ(header_int(out / "train_000000.bin", 1), kLlmcVersionU32);
  EXPECT_EQ(read_bytes(out / "tokenizer.json"), read_bytes(tok));  // copied as it was
  DataSource src = stp::testing::shard_source(out / "train_000000.bin", 70000);
  auto ds = load_dataset(src);
  ASSERT_EQ(ds->spans.size(), 1u);
  EXPECT_EQ(ds->spans[0].width, 4);
  std::int64_t top = 0;
  for (std::int64_t i = 0; i < ds->spans[0].size; ++i) top = std::max(top, ds->spans[0].at(i));
  EXPECT_GT(top, 65535);
}

TEST(PrepareData, BadArgumentsAreOneLineWithExitCode2) {
  TempDir dir;
  SKIP_WITHOUT_TOKENIZERS(dir);
  write_texts(dir.path / "text");
  const std::string out = " --out " + (dir.path / "out").string() + " ";
  const std::string text = (dir.path / "text").string();
  const struct {
    std::string args, needle;
  } cases[] = {
      {"--vocab-size 100" + out + text, "--vocab-size=100 must be in [257, 16777216]"},
      {"--vocab-size 300 --shard-tokens 0" + out + text, "--shard-tokens=0 must be in [1, "},
      {"--vocab-size 300" + out + (dir.path / "missing").string(),
       "input '" + (dir.path / "missing").string() + "' does not exist"},
      {"--tokenizer " + (dir.path / "no.json").string() + out + text,
       "--tokenizer '" + (dir.path / "no.json").string() + "' is not a file"},
      {"--vocab-size 300 --eot '</s>' --val-tokens 10000000" + out + text,
       "all taken by --val-tokens=10000000; lower --val-tokens"},
  };
  for (const auto& c : cases) {
    const ScriptRun r = python(dir, kScript + " " + c.args);
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    // One error line naming the value (argparse prints its usage lines before it).
    const std::string last = r.output.substr(r.output.rfind('\n', r.output.size() - 2) + 1);
    EXPECT_EQ(last.rfind("prepare_data.py: error: ", 0), 0u) << c.args << "\n" << r.output;
    EXPECT_NE(last.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
    EXPECT_EQ(r.output.find("Traceback"), std::string::npos) << r.output;
  }
  const ScriptRun help = python(dir, kScript + " --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--tokenizer FILE"), std::string::npos) << help.output;
}

}  // namespace
}  // namespace stp::data
