// Token shards: corpora that were tokenized ahead of time (scripts/prepare_data.py, llm.c's
// dev/data scripts, nanoGPT's prepare.py), opened as memory maps and validated once.
//
// Note [Shard formats]
//   llm.c    a header of 256 little-endian int32 (1024 bytes), then the tokens:
//              header[0] magic   20240520: uint16 tokens, header[1] version must be 1
//                                20240801: uint32 tokens, header[1] version must be 7
//                                          (llm.c's llama-3 shards)
//              header[2]         number of tokens, >= 1; file size = 1024 + tokens * width
//   nanoGPT  headerless: the whole file is uint16 tokens (train.bin / val.bin).
//
// Note [Shard validation]
// Every shard is checked when it is opened, and every problem of every shard is reported, one
// line each naming the file, the value and the legal range: unreadable, bad magic or version,
// a size that does not match the header's token count (truncated), a nanoGPT file of an odd
// number of bytes, a token id >= the model's vocabulary. Token ids are checked by one
// sequential pass over each mapping at open (the only time a shard is read whole); the same
// pass hashes the token bytes into the dataset's fingerprint, so resuming on other data is
// refused. Training then reads only the windows it serves, at random offsets. Shards with fewer
// tokens than one window are refused by the DataLoader, which knows seq_len.
//
// Thread-safety: pure functions; any thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/mapped_file.h"
#include "data/token_span.h"

namespace stp::data {

enum class ShardFormat { kLlmc, kNanoGpt };

constexpr std::int32_t kLlmcMagicU16 = 20240520;  // llm.c GPT-2 shards: uint16 tokens
constexpr std::int32_t kLlmcVersionU16 = 1;
constexpr std::int32_t kLlmcMagicU32 = 20240801;  // llm.c llama-3 shards: uint32 tokens
constexpr std::int32_t kLlmcVersionU32 = 7;
constexpr std::int64_t kLlmcHeaderInts = 256;
constexpr std::int64_t kLlmcHeaderBytes = kLlmcHeaderInts * 4;  // bytes before the tokens

// The shard files `path` names, sorted by path (bytewise, independent of the locale):
//   a regular file      itself;
//   a folder            every regular "*.bin" file directly in it, dot-files skipped;
//   a glob pattern      (contains *, ? or [) its matches that are regular files.
// Throws std::invalid_argument naming the path when it does not exist or nothing matches.
std::vector<std::string> list_shard_files(const std::string& path);

// What one pass over a span found.
struct TokenScan {
  std::int64_t max_id = -1;     // the largest id (-1 for an empty span)
  std::int64_t first_bad = -1;  // index of the first id >= vocab, -1 when none (or vocab <= 0)
  std::int64_t bad_id = 0;      // that id
  std::uint64_t hash = 0;       // hash of the span's token bytes (Note [Shard validation])
};

// One sequential pass over `span`: its largest id, the first id >= vocab (vocab <= 0: none
// checked) and the hash of its bytes.
TokenScan scan_tokens(const TokenSpan& span, std::int64_t vocab);

struct OpenedShards {
  std::vector<MappedFile> maps;   // owns the bytes the spans point into
  std::vector<TokenSpan> spans;   // one per shard, in file order
  std::int64_t tokens = 0;        // over all shards
  std::uint64_t fingerprint = 0;  // over every shard's token count and hash, in order
};

// Opens and validates `files` (Note [Shard validation]); `vocab` > 0 is the model's
// vocabulary, which every token id must be below. Throws std::invalid_argument whose message
// has one line per problem (the first 20, then a count of the rest).
OpenedShards open_shards(const std::vector<std::string>& files, ShardFormat format,
                         std::int64_t vocab);

}  // namespace stp::data
