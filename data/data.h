// Dataset and DataLoader: training tokens, served as (tokens, targets) windows.
//
// Note [Windows, shards and positions]
// A Dataset is a list of token spans (token_span.h), immutable once loaded, so one Dataset may
// be shared by the DataLoaders of every rank in a process. It comes from one of two kinds of
// source (DataSource::format):
//   bytes      text tokenized once by the ByteTokenizer into one span held in memory (2 bytes a
//              token): a text file, a folder of text files (recursively, in sorted path order,
//              documents separated by <eos>, binary files and dot-files skipped), or the
//              generated corpus (corpus.h). The embedded default.
//   llmc,      pre-tokenized shards (token_shards.h), one span per shard, memory-mapped and
//   nanogpt    never copied whole: a shard file, a folder of *.bin shards or a glob, in sorted
//              path order, validated when opened (Note [Shard validation]).
//
// Windows are cut inside each span: span s holds (n_s - 1) / seq_len windows, window k of it
// being the seq_len+1 tokens starting at k*seq_len; tokens are its first seq_len, targets its
// last seq_len (shifted by one). Consecutive windows share one token, so every token of a span
// but the first is a target at most once per epoch. The windows of all spans are numbered
// consecutively in span order (window w, 0 <= w < num_windows); with one span (every text
// source) window w starts at token w*seq_len.
//
// Each epoch e has a permutation P_e of the windows, a Fisher-Yates shuffle driven by
// SplitMix64(seed, e) — the same on every platform and every rank — so every batch mixes
// windows of every shard. DP rank r of d owns the windows P_e[i*d + r] for i in
// [0, windows_per_rank), windows_per_rank = num_windows / d (the remainder is not used that
// epoch), so the DP shards of an epoch are disjoint and together cover all but at most d-1
// windows. A batch takes the rank's next rows in order, continuing into the next epoch when one
// ends. The permutation costs 8 bytes per window per loader (10 M windows: 80 MB).
//
// The position (epoch, index: rows this rank consumed in the epoch) is all the state there is.
// It is the same on every DP rank (all advance in lockstep), it goes into the checkpoint, and a
// loader set to a saved position yields exactly the batches the original would have yielded.
//
// Thread-safety: a Dataset is immutable and may be shared between threads. A DataLoader is used
// by one thread (its rank's).
#pragma once

#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/mapped_file.h"
#include "data/token_span.h"
#include "data/tokenizer.h"
#include "engine/chunk.h"

namespace stp::data {

enum class DataFormat {
  kBytes,    // text through the ByteTokenizer, or the generated corpus
  kLlmc,     // llm.c token shards (token_shards.h)
  kNanoGpt,  // nanoGPT's headerless uint16 .bin files
};

// "bytes", "llmc", "nanogpt" and back; the parser throws std::invalid_argument naming the
// value and the choices.
const char* to_string(DataFormat format);
DataFormat data_format_from_string(const std::string& name);

// Where the tokens come from.
struct DataSource {
  DataFormat format = DataFormat::kBytes;
  // bytes: a text file or folder, "" = the generated corpus. llmc / nanogpt: a shard file, a
  // folder of *.bin shards, or a glob ("DIR/train_*.bin").
  std::string path;
  std::int64_t vocab = 0;               // the model's vocabulary: token ids must be below it; 0:
                                        // unchecked (bytes ids are always < 258)
  std::uint64_t corpus_seed = 1234;     // generated corpus only: its seed
  std::int64_t corpus_bytes = 4 << 20;  // generated corpus only: size in bytes, [80, 2^36]
};

struct Dataset {
  Dataset() = default;
  Dataset(const Dataset&) = delete;  // the spans point into this object's buffers
  Dataset& operator=(const Dataset&) = delete;

  DataFormat format = DataFormat::kBytes;
  std::vector<TokenSpan> spans;  // text: one span over text_tokens; shards: one per shard
  std::int64_t num_tokens = 0;   // over all spans
  std::string description;  // "generated corpus (4194304 bytes, seed 1234)", "3 files under DIR",
                            // "2 llm.c shards (uint16) matching DIR/train_*.bin"
  std::int64_t files = 0;   // text files read or shards opened (1 for the generated corpus)
  std::int64_t skipped_binary = 0;            // folder only: files skipped because they look binary
  std::vector<std::string> skipped_examples;  // the first few skipped paths, for the warning
  std::string shard_note;  // shard folders: files named like a validation split were included
  // Detects resuming on other data: "fnv1a64:<hex>" over the 2-byte token encoding (text), or
  // "shards64:<hex>" over every shard's token count and token bytes (token_shards.h).
  std::string fingerprint;

  std::vector<Token> text_tokens;  // text sources: the whole corpus, documents separated by <eos>
  std::vector<MappedFile> maps;    // shard sources: the mapped files

  // "skipped 3 binary files under DIR (e.g. a.bin)", the shard note, or "" when none; the
  // caller logs it once.
  std::string warning() const;
};

// Reads and tokenizes a text source, or opens and validates the shards (Note [Shard
// validation]). A text file counts as binary when its first 8 KiB contain a NUL byte (git's
// rule). Throws std::invalid_argument naming the path: missing, unreadable, not a file or
// folder, no text file in a folder, no tokens at all; for shards, one line per problem.
std::shared_ptr<const Dataset> load_dataset(const DataSource& source);

struct LoaderOptions {
  std::int64_t seq_len = 128;  // T: tokens per row, [1, 2^24]; every span needs >= T+1 tokens
  std::uint64_t seed = 1234;   // shuffling seed (the epoch permutations)
  int dp_rank = 0;             // this rank's data-parallel index, [0, dp_size)
  int dp_size = 1;             // data-parallel ranks, [1, 2^16]; needs num_windows >= dp_size
};

// Where a loader is; saved in checkpoints (to_json/from_json below).
struct DataPosition {
  std::int64_t epoch = 0;  // current epoch, >= 0
  std::int64_t index = 0;  // rows this rank consumed in the epoch, [0, windows_per_rank)
  bool operator==(const DataPosition&) const = default;
};

class DataLoader {
 public:
  // Throws std::invalid_argument for bad options or too small a dataset (a text source or any
  // shard with fewer than seq_len+1 tokens: one line per shard), naming the value and the legal
  // range.
  DataLoader(std::shared_ptr<const Dataset> dataset, const LoaderOptions& options);
  // Convenience: load_dataset(source), then the above.
  DataLoader(const DataSource& source, const LoaderOptions& options);

  const Dataset& dataset() const { return *dataset_; }
  const LoaderOptions& options() const { return options_; }
  std::int64_t num_windows() const { return num_windows_; }            // over all DP ranks
  std::int64_t windows_per_rank() const { return windows_per_rank_; }  // per epoch

  // The next `batch` rows: tokens and targets (batch, seq_len) int64 on the CPU.
  // REQUIRES: batch >= 1.
  engine::MicroBatch next_batch(std::int64_t batch);
  // One optimizer step's data: m microbatches of micro_batch_size rows each, in order.
  // Equal to m calls of next_batch(micro_batch_size). REQUIRES: m >= 1, micro_batch_size >= 1.
  std::vector<engine::MicroBatch> next_step(int m, std::int64_t micro_batch_size);

  DataPosition position() const { return position_; }
  // REQUIRES: epoch >= 0 and index in [0, windows_per_rank()).
  void set_position(const DataPosition& position);

  // The window ids (see the Note) of the next `rows` rows, without consuming them. For tests
  // and for logging what a step will see.
  std::vector<std::int64_t> peek_windows(std::int64_t rows) const;

  // The position plus what it is valid for (seq_len, dp_size, seed, the dataset's token count
  // and fingerprint), as a JSON object for the checkpoint manifest.
  nlohmann::json position_json() const;
  // Restores position_json() output. Throws std::invalid_argument naming the field when it is
  // malformed or was saved for other data or options ("data seq_len=64 in checkpoint, 128 in
  // this run").
  void restore_position_json(const nlohmann::json& saved);

 private:
  // Permutation of the windows for `epoch` (cached for the current epoch).
  const std::vector<std::int64_t>& permutation(std::int64_t epoch) const;
  std::int64_t window_of(std::int64_t epoch, std::int64_t index) const;
  // Copies window w's seq_len+1 tokens into out.
  void read_window(std::int64_t w, std::int64_t* out) const;

  std::shared_ptr<const Dataset> dataset_;
  LoaderOptions options_;
  std::int64_t num_windows_ = 0;
  std::vector<std::int64_t> first_window_;  // per span: the id of its first window; + the total
  std::int64_t windows_per_rank_ = 0;
  DataPosition position_;
  mutable std::int64_t perm_epoch_ = -1;
  mutable std::vector<std::int64_t> perm_;
};

}  // namespace stp::data
