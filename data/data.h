// Dataset and DataLoader: training text as one token buffer, served as (tokens, targets) windows.
//
// Note [Windows, shards and positions]
// A Dataset is the whole corpus tokenized once (ByteTokenizer, 2 bytes per token): a text file,
// a folder of text files (recursively, in sorted path order, documents separated by <eos>,
// binary files and dot-files skipped), or the generated corpus (corpus.h). It is immutable, so
// one Dataset may be shared by the DataLoaders of every rank in a process.
//
// Window w (0 <= w < num_windows) is the seq_len+1 tokens starting at w*seq_len: tokens are its
// first seq_len, targets its last seq_len (shifted by one). Consecutive windows share one token,
// so every token but the first is a target exactly once per epoch.
//
// Each epoch e has a permutation P_e of the windows, a Fisher-Yates shuffle driven by
// SplitMix64(seed, e) — the same on every platform and every rank. DP rank r of d owns the
// windows P_e[i*d + r] for i in [0, windows_per_rank), windows_per_rank = num_windows / d (the
// remainder is not used that epoch), so the DP shards of an epoch are disjoint and together
// cover all but at most d-1 windows. A batch takes the rank's next rows in order, continuing
// into the next epoch when one ends.
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

#include "data/tokenizer.h"
#include "engine/chunk.h"

namespace stp::data {

// Where the text comes from.
struct DataSource {
  std::string path;                     // text file or folder; "" = the generated corpus
  std::uint64_t corpus_seed = 1234;     // generated corpus only: its seed
  std::int64_t corpus_bytes = 4 << 20;  // generated corpus only: size in bytes, [80, 2^36]
};

struct Dataset {
  std::vector<Token> tokens;  // the whole corpus, documents separated by <eos>
  std::string description;    // "generated corpus (4194304 bytes, seed 1234)", "3 files under DIR"
  std::int64_t files = 0;     // text files read (1 for a file or the generated corpus)
  std::int64_t skipped_binary = 0;            // folder only: files skipped because they look binary
  std::vector<std::string> skipped_examples;  // the first few skipped paths, for the warning
  std::uint64_t fingerprint = 0;  // FNV-1a 64 of the tokens; detects resuming on other data

  // "skipped 3 binary files under DIR (e.g. a.bin)" or "" when none; the caller logs it once.
  std::string warning() const;
};

// Reads and tokenizes the source. A file counts as binary when its first 8 KiB contain a NUL
// byte (git's rule). Throws std::invalid_argument naming the path: missing, unreadable, not a
// file or folder, no text file in a folder, or no tokens at all.
std::shared_ptr<const Dataset> load_dataset(const DataSource& source);

struct LoaderOptions {
  std::int64_t seq_len = 128;  // T: tokens per row, [1, 2^24]; the dataset needs >= T+1 tokens
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
  // Throws std::invalid_argument for bad options or too small a dataset, naming the value and
  // the legal range.
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

  // The position plus what it is valid for (seq_len, dp_size, seed, dataset tokens and
  // fingerprint), as a JSON object for the checkpoint manifest.
  nlohmann::json position_json() const;
  // Restores position_json() output. Throws std::invalid_argument naming the field when it is
  // malformed or was saved for other data or options ("data seq_len=64 in checkpoint, 128 in
  // this run").
  void restore_position_json(const nlohmann::json& saved);

 private:
  // Permutation of the windows for `epoch` (cached for the current epoch).
  const std::vector<std::int64_t>& permutation(std::int64_t epoch) const;
  std::int64_t window_of(std::int64_t epoch, std::int64_t index) const;

  std::shared_ptr<const Dataset> dataset_;
  LoaderOptions options_;
  std::int64_t num_windows_ = 0;
  std::int64_t windows_per_rank_ = 0;
  DataPosition position_;
  mutable std::int64_t perm_epoch_ = -1;
  mutable std::vector<std::int64_t> perm_;
};

}  // namespace stp::data
