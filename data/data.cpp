#include "data/data.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "common/check.h"
#include "common/enum_names.h"
#include "data/corpus.h"
#include "data/token_shards.h"

namespace stp::data {
namespace fs = std::filesystem;
namespace {

constexpr std::size_t kBinaryProbeBytes = 8192;  // bytes searched for a NUL (git's rule)
constexpr std::size_t kSkippedExamples = 3;      // skipped paths named in the warning
constexpr std::int64_t kMaxSeqLen = std::int64_t{1} << 24;
constexpr int kMaxDp = 1 << 16;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  STP_CHECK(in.good(), "data file '", path.string(), "' cannot be opened for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  STP_CHECK(!in.bad(), "data file '", path.string(), "' could not be read");
  return std::move(ss).str();
}

bool looks_binary(const std::string& bytes) {
  const std::size_t n = std::min(bytes.size(), kBinaryProbeBytes);
  return std::find(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n), '\0') !=
         bytes.begin() + static_cast<std::ptrdiff_t>(n);
}

std::uint64_t fnv1a64(const std::vector<Token>& tokens) {
  std::uint64_t h = 0xCBF29CE484222325ull;
  for (Token t : tokens) {
    for (int b = 0; b < 2; ++b) {  // little-endian bytes of the 16-bit token
      h ^= static_cast<std::uint64_t>((t >> (8 * b)) & 0xFF);
      h *= 0x100000001B3ull;
    }
  }
  return h;
}

// Regular files under `root`, recursively, sorted by path; entries whose name starts with '.'
// (".git", ".cache", editor swap files) are skipped along with everything below them.
std::vector<fs::path> list_files(const fs::path& root) {
  std::vector<fs::path> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
  STP_CHECK(!ec, "data folder '", root.string(), "' cannot be listed: ", ec.message());
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    STP_CHECK(!ec, "data folder '", root.string(), "' cannot be listed: ", ec.message());
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {
      if (it->is_directory()) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file()) files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// A shard folder's files whose name says "val" (llm.c's fineweb_val_000000.bin, nanoGPT's
// val.bin, prepare_data.py's val_000000.bin): trained on, but the user likely meant otherwise.
std::string validation_split_note(const std::string& folder,
                                  const std::vector<std::string>& files) {
  std::vector<std::string> named;
  for (const std::string& f : files) {
    const std::string name = fs::path(f).filename().string();
    if (name.find("val") != std::string::npos) named.push_back(name);
  }
  if (named.empty()) return "";
  return str_cat("folder ", folder, " includes ", named.size(), " shard",
                 named.size() == 1 ? "" : "s", " named like a validation split (e.g. ", named[0],
                 "), trained on like the others; name the training shards with a glob such as '",
                 (fs::path(folder) / "*train*.bin").string(), "' to leave ",
                 named.size() == 1 ? "it" : "them", " out");
}

void load_text(const DataSource& source, Dataset& ds) {
  const ByteTokenizer tok;
  std::vector<Token>& tokens = ds.text_tokens;
  if (source.path.empty()) {
    tok.encode_append(generate_corpus(source.corpus_seed, source.corpus_bytes), tokens);
    ds.files = 1;
    ds.description = str_cat("generated corpus (", source.corpus_bytes, " bytes, seed ",
                             source.corpus_seed, ")");
  } else {
    const fs::path path(source.path);
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    STP_CHECK(fs::exists(st), "data path '", source.path, "' does not exist");
    if (fs::is_regular_file(st)) {
      tok.encode_append(read_file(path), tokens);
      ds.files = 1;
      ds.description = str_cat("file ", source.path);
    } else {
      STP_CHECK(fs::is_directory(st), "data path '", source.path,
                "' is neither a regular file nor a folder");
      for (const fs::path& f : list_files(path)) {
        const std::string text = read_file(f);
        if (looks_binary(text)) {
          ++ds.skipped_binary;
          if (ds.skipped_examples.size() < kSkippedExamples) {
            ds.skipped_examples.push_back(f.lexically_relative(path).string());
          }
          continue;
        }
        ++ds.files;
        if (text.empty()) continue;
        if (!tokens.empty()) tokens.push_back(ByteTokenizer::kEos);
        tok.encode_append(text, tokens);
      }
      ds.description = str_cat("folder ", source.path);
      STP_CHECK(ds.files > 0, "data folder '", source.path, "' contains no text files (",
                ds.skipped_binary, " binary files skipped)");
      ds.description = str_cat(ds.files, " text files under ", source.path);
    }
  }
  STP_CHECK(!tokens.empty(), "dataset ", ds.description, " is empty (0 tokens)");
  STP_CHECK(source.vocab <= 0 || source.vocab >= ByteTokenizer::kVocabSize, "vocabulary ",
            source.vocab,
            " is too small for the byte tokenizer (needs >= ", ByteTokenizer::kVocabSize, ")");
  ds.spans.push_back({reinterpret_cast<const std::byte*>(tokens.data()),
                      static_cast<std::int64_t>(tokens.size()), 2, ""});
  ds.num_tokens = static_cast<std::int64_t>(tokens.size());
  ds.fingerprint = "fnv1a64:" + hex64(fnv1a64(tokens));
}

void load_shards(const DataSource& source, Dataset& ds) {
  STP_CHECK(!source.path.empty(), "data format ", to_string(source.format),
            " needs a path: a shard file, a folder of *.bin shards or a glob");
  const std::vector<std::string> files = list_shard_files(source.path);
  const ShardFormat format =
      source.format == DataFormat::kLlmc ? ShardFormat::kLlmc : ShardFormat::kNanoGpt;
  OpenedShards shards = open_shards(files, format, source.vocab);
  bool u16 = false, u32 = false;
  for (const TokenSpan& s : shards.spans) (s.width == 2 ? u16 : u32) = true;
  const char* kind = format == ShardFormat::kLlmc ? "llm.c" : "nanoGPT";
  const char* width = u16 && u32 ? "uint16 and uint32" : (u32 ? "uint32" : "uint16");
  const std::int64_t n = static_cast<std::int64_t>(files.size());
  ds.files = n;
  if (fs::is_directory(source.path)) {
    ds.description =
        str_cat(n, " ", kind, " shard", n == 1 ? "" : "s", " (", width, ") in ", source.path);
    ds.shard_note = validation_split_note(source.path, files);
  } else if (fs::is_regular_file(source.path)) {
    ds.description = str_cat(kind, " shard ", source.path, " (", width, ")");
  } else {
    ds.description =
        str_cat(n, " ", kind, " shard", n == 1 ? "" : "s", " (", width, ") matching ", source.path);
  }
  ds.spans = std::move(shards.spans);
  ds.maps = std::move(shards.maps);
  ds.num_tokens = shards.tokens;
  ds.fingerprint = "shards64:" + hex64(shards.fingerprint);
}

}  // namespace

namespace {

constexpr EnumName<DataFormat> kFormatNames[] = {
    {DataFormat::kBytes, "bytes"}, {DataFormat::kLlmc, "llmc"}, {DataFormat::kNanoGpt, "nanogpt"}};

}  // namespace

const char* to_string(DataFormat format) { return name_of(kFormatNames, format); }

DataFormat data_format_from_string(const std::string& name) {
  std::optional<DataFormat> f = value_named(kFormatNames, name);
  STP_CHECK(f.has_value(), "data format '", name, "' must be one of bytes | llmc | nanogpt");
  return *f;
}

std::string Dataset::warning() const {
  if (skipped_binary == 0) return shard_note;
  std::string s = str_cat("skipped ", skipped_binary, " binary file",
                          skipped_binary == 1 ? "" : "s", " in ", description, " (e.g. ");
  for (std::size_t i = 0; i < skipped_examples.size(); ++i) {
    s += (i ? ", " : "") + skipped_examples[i];
  }
  return s + ")";
}

std::shared_ptr<const Dataset> load_dataset(const DataSource& source) {
  auto ds = std::make_shared<Dataset>();
  ds->format = source.format;
  if (source.format == DataFormat::kBytes) {
    load_text(source, *ds);
  } else {
    load_shards(source, *ds);
  }
  return ds;
}

DataLoader::DataLoader(const DataSource& source, const LoaderOptions& options)
    : DataLoader(load_dataset(source), options) {}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& options)
    : dataset_(std::move(dataset)), options_(options) {
  STP_CHECK(dataset_ != nullptr, "DataLoader: dataset is null");
  const std::int64_t T = options_.seq_len;
  STP_CHECK(T >= 1 && T <= kMaxSeqLen, "data seq_len=", T, " must be in [1, ", kMaxSeqLen, "]");
  STP_CHECK(options_.dp_size >= 1 && options_.dp_size <= kMaxDp, "data dp_size=", options_.dp_size,
            " must be in [1, ", kMaxDp, "]");
  STP_CHECK(options_.dp_rank >= 0 && options_.dp_rank < options_.dp_size,
            "data dp_rank=", options_.dp_rank, " must be in [0, dp_size=", options_.dp_size, ")");
  // Windows per span (Note [Windows, shards and positions]); a span too short for one window
  // is refused, every such shard on its own line.
  std::string too_short;
  first_window_.push_back(0);
  for (const TokenSpan& span : dataset_->spans) {
    if (span.size < T + 1) {
      too_short += span.path.empty()
                       ? str_cat("dataset ", dataset_->description, " has ", span.size,
                                 " tokens, fewer than one window of seq_len+1=", T + 1,
                                 " (lower seq_len or add data)")
                       : str_cat(too_short.empty() ? "" : "\n", "shard '", span.path, "' has ",
                                 span.size, " tokens, fewer than one window of seq_len+1=", T + 1,
                                 " (lower seq_len, or merge or drop the shard)");
    }
    first_window_.push_back(first_window_.back() + std::max<std::int64_t>(0, (span.size - 1) / T));
  }
  STP_CHECK(too_short.empty(), too_short);
  num_windows_ = first_window_.back();
  windows_per_rank_ = num_windows_ / options_.dp_size;
  STP_CHECK(windows_per_rank_ >= 1, "dataset ", dataset_->description, " has ", num_windows_,
            " windows of seq_len=", T, ", fewer than dp_size=", options_.dp_size,
            " (each data-parallel rank needs at least one)");
}

void DataLoader::read_window(std::int64_t w, std::int64_t* out) const {
  // The span holding window w: the last one whose first window is <= w.
  const auto it = std::upper_bound(first_window_.begin(), first_window_.end(), w) - 1;
  const auto s = static_cast<std::size_t>(it - first_window_.begin());
  dataset_->spans[s].copy((w - *it) * options_.seq_len, options_.seq_len + 1, out);
}

const std::vector<std::int64_t>& DataLoader::permutation(std::int64_t epoch) const {
  if (epoch == perm_epoch_) return perm_;
  perm_.resize(static_cast<std::size_t>(num_windows_));
  for (std::int64_t i = 0; i < num_windows_; ++i) perm_[static_cast<std::size_t>(i)] = i;
  // SplitMix64 seeded from (seed, epoch): bit-identical on every platform.
  std::uint64_t state =
      options_.seed ^ (0xD1B54A32D192ED03ull * static_cast<std::uint64_t>(epoch + 1));
  auto next = [&state] {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  for (std::int64_t i = num_windows_ - 1; i > 0; --i) {
    const auto j = static_cast<std::int64_t>(next() % static_cast<std::uint64_t>(i + 1));
    std::swap(perm_[static_cast<std::size_t>(i)], perm_[static_cast<std::size_t>(j)]);
  }
  perm_epoch_ = epoch;
  return perm_;
}

std::int64_t DataLoader::window_of(std::int64_t epoch, std::int64_t index) const {
  return permutation(epoch)[static_cast<std::size_t>(index * options_.dp_size + options_.dp_rank)];
}

std::vector<std::int64_t> DataLoader::peek_windows(std::int64_t rows) const {
  STP_CHECK(rows >= 0, "peek_windows rows=", rows, " must be >= 0");
  std::vector<std::int64_t> out;
  out.reserve(static_cast<std::size_t>(rows));
  DataPosition p = position_;
  for (std::int64_t r = 0; r < rows; ++r) {
    out.push_back(window_of(p.epoch, p.index));
    if (++p.index == windows_per_rank_) {
      ++p.epoch;
      p.index = 0;
    }
  }
  return out;
}

engine::MicroBatch DataLoader::next_batch(std::int64_t batch) {
  STP_CHECK(batch >= 1, "batch size=", batch, " must be >= 1");
  const std::int64_t T = options_.seq_len;
  const std::vector<std::int64_t> windows = peek_windows(batch);
  at::Tensor tokens = at::empty({batch, T}, at::kLong);   // (B, T)
  at::Tensor targets = at::empty({batch, T}, at::kLong);  // (B, T)
  std::int64_t* tk = tokens.data_ptr<std::int64_t>();
  std::int64_t* tg = targets.data_ptr<std::int64_t>();
  std::vector<std::int64_t> window(static_cast<std::size_t>(T + 1));  // (T+1,)
  for (std::int64_t b = 0; b < batch; ++b) {
    read_window(windows[static_cast<std::size_t>(b)], window.data());
    std::copy_n(window.begin(), T, tk + b * T);
    std::copy_n(window.begin() + 1, T, tg + b * T);
  }
  position_.index += batch;
  position_.epoch += position_.index / windows_per_rank_;
  position_.index %= windows_per_rank_;
  return {tokens, targets};
}

std::vector<engine::MicroBatch> DataLoader::next_step(int m, std::int64_t micro_batch_size) {
  STP_CHECK(m >= 1, "microbatches m=", m, " must be >= 1");
  STP_CHECK(micro_batch_size >= 1, "micro_batch_size=", micro_batch_size, " must be >= 1");
  std::vector<engine::MicroBatch> out;
  out.reserve(static_cast<std::size_t>(m));
  for (int i = 0; i < m; ++i) out.push_back(next_batch(micro_batch_size));
  return out;
}

void DataLoader::set_position(const DataPosition& position) {
  STP_CHECK(position.epoch >= 0, "data position epoch=", position.epoch, " must be >= 0");
  STP_CHECK(position.index >= 0 && position.index < windows_per_rank_,
            "data position index=", position.index,
            " must be in [0, windows_per_rank=", windows_per_rank_, ")");
  position_ = position;
}

nlohmann::json DataLoader::position_json() const {
  return {{"epoch", position_.epoch},
          {"index", position_.index},
          {"seq_len", options_.seq_len},
          {"dp_size", options_.dp_size},
          {"seed", options_.seed},
          {"dataset_tokens", dataset_->num_tokens},
          {"dataset_fingerprint", dataset_->fingerprint}};
}

void DataLoader::restore_position_json(const nlohmann::json& saved) {
  STP_CHECK(saved.is_object(), "data position in checkpoint is not a JSON object: ", saved.dump());
  const nlohmann::json now = position_json();
  std::string diffs;
  for (const char* key : {"seq_len", "dp_size", "seed", "dataset_tokens", "dataset_fingerprint"}) {
    STP_CHECK(saved.contains(key), "data position in checkpoint lacks '", key, "'");
    if (saved[key] != now[key]) {
      diffs += str_cat(diffs.empty() ? "" : ", ", "data ", key, "=", saved[key].dump(),
                       " in checkpoint, ", now[key].dump(), " in this run");
    }
  }
  STP_CHECK(diffs.empty(), diffs);
  for (const char* key : {"epoch", "index"}) {
    STP_CHECK(saved.contains(key) && saved[key].is_number_integer(),
              "data position in checkpoint: '", key, "' must be an integer, got ",
              saved.value(key, nlohmann::json()).dump());
  }
  set_position({saved["epoch"].get<std::int64_t>(), saved["index"].get<std::int64_t>()});
}

}  // namespace stp::data
