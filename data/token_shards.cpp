#include "data/token_shards.h"

#include <glob.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <optional>

#include "common/check.h"

namespace stp::data {
namespace fs = std::filesystem;
namespace {

constexpr std::int64_t kScanBlockBytes = 1 << 16;  // max and hash run per block (in L2)
constexpr std::size_t kMaxProblemLines = 20;       // lines of a validation error

// ---- hash: four independent 64-bit lanes over 32-byte stripes (xxHash64's round) ----------
constexpr std::uint64_t kP1 = 0x9E3779B185EBCA87ull;
constexpr std::uint64_t kP2 = 0xC2B2AE3D27D4EB4Full;
constexpr std::uint64_t kP3 = 0x165667B19E3779F9ull;

std::uint64_t rotl(std::uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
std::uint64_t mix_round(std::uint64_t acc, std::uint64_t w) {
  return rotl(acc + w * kP2, 31) * kP1;
}
std::uint64_t avalanche(std::uint64_t h) {
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  return h ^ (h >> 32);
}

class StripeHasher {
 public:
  // REQUIRES: n is a multiple of 32 except in the last call.
  void feed(const std::byte* p, std::int64_t n) {
    std::int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
      std::uint64_t w[4];
      std::memcpy(w, p + i, 32);
      for (int l = 0; l < 4; ++l) lane_[l] = mix_round(lane_[l], w[l]);
    }
    for (; i < n; ++i) tail_ = rotl(tail_ ^ static_cast<std::uint64_t>(p[i]), 8) * kP1;
    bytes_ += n;
  }
  std::uint64_t digest() const {
    std::uint64_t h =
        rotl(lane_[0], 1) + rotl(lane_[1], 7) + rotl(lane_[2], 12) + rotl(lane_[3], 18);
    h = mix_round(h, tail_) ^ static_cast<std::uint64_t>(bytes_);
    return avalanche(h);
  }

 private:
  std::uint64_t lane_[4] = {kP1 + kP2, kP2, 0, 0 - kP1};
  std::uint64_t tail_ = kP3;
  std::int64_t bytes_ = 0;
};

template <typename T>
std::int64_t block_max(const T* p, std::int64_t n) {
  T m = 0;
  for (std::int64_t i = 0; i < n; ++i) m = p[i] > m ? p[i] : m;
  return static_cast<std::int64_t>(m);
}

template <typename T>
void scan_typed(const TokenSpan& span, std::int64_t vocab, TokenScan& out, StripeHasher& hash) {
  const T* tokens = reinterpret_cast<const T*>(span.data);
  const std::int64_t per_block = kScanBlockBytes / static_cast<std::int64_t>(sizeof(T));
  for (std::int64_t begin = 0; begin < span.size; begin += per_block) {
    const std::int64_t n = std::min(per_block, span.size - begin);
    const std::int64_t m = block_max(tokens + begin, n);
    out.max_id = std::max(out.max_id, m);
    if (vocab > 0 && m >= vocab && out.first_bad < 0) {
      for (std::int64_t i = begin; i < begin + n; ++i) {
        if (static_cast<std::int64_t>(tokens[i]) >= vocab) {
          out.first_bad = i;
          out.bad_id = tokens[i];
          break;
        }
      }
    }
    hash.feed(span.data + begin * span.width, n * span.width);
  }
}

bool is_glob(const std::string& path) { return path.find_first_of("*?[") != std::string::npos; }

std::int32_t header_int(const MappedFile& m, int i) {
  std::int32_t v;
  std::memcpy(&v, m.data() + 4 * i, 4);
  return v;
}

// Validates the layout of one shard. Returns "" and fills `span`, or the problem's line.
std::string check_layout(const MappedFile& m, ShardFormat format, TokenSpan& span) {
  const std::string& f = m.path();
  const std::int64_t size = m.size();
  span.path = f;
  if (format == ShardFormat::kNanoGpt) {
    if (size >= 8) {
      const std::int32_t magic = header_int(m, 0), version = header_int(m, 1);
      if ((magic == kLlmcMagicU16 && version == kLlmcVersionU16) ||
          (magic == kLlmcMagicU32 && version == kLlmcVersionU32))
        return str_cat("shard '", f, "' starts with an llm.c header (magic ", magic, ", version ",
                       version, "), not nanoGPT's headerless uint16 tokens: set data.format=llmc");
    }
    if (size == 0) return str_cat("shard '", f, "' is empty (0 bytes; needs >= 1 uint16 token)");
    if (size % 2 != 0)
      return str_cat("shard '", f, "' has ", size,
                     " bytes, not a whole number of 2-byte tokens (truncated?)");
    span.data = m.data();
    span.size = size / 2;
    span.width = 2;
    return "";
  }
  if (size < kLlmcHeaderBytes)
    return str_cat("shard '", f, "' has ", size, " bytes, fewer than llm.c's ", kLlmcHeaderBytes,
                   "-byte header (a headerless nanoGPT .bin? set data.format=nanogpt)");
  const std::int32_t magic = header_int(m, 0), version = header_int(m, 1);
  const std::int64_t count = header_int(m, 2);
  if (magic != kLlmcMagicU16 && magic != kLlmcMagicU32)
    return str_cat("shard '", f, "': bad magic ", magic, "; llm.c shards start with ",
                   kLlmcMagicU16, " (uint16 tokens) or ", kLlmcMagicU32,
                   " (uint32 tokens) (a headerless nanoGPT .bin? set data.format=nanogpt)");
  const int width = magic == kLlmcMagicU16 ? 2 : 4;
  const std::int32_t want_version = magic == kLlmcMagicU16 ? kLlmcVersionU16 : kLlmcVersionU32;
  if (version != want_version)
    return str_cat("shard '", f, "': bad version ", version, " for magic ", magic, "; it must be ",
                   want_version);
  if (count < 1) return str_cat("shard '", f, "': header token count ", count, " must be >= 1");
  const std::int64_t want = kLlmcHeaderBytes + count * width;
  if (size < want)
    return str_cat("shard '", f, "' is truncated: its header says ", count, " tokens (",
                   kLlmcHeaderBytes, " + ", count, "*", width, " = ", want,
                   " bytes) but the file has ", size, " bytes");
  if (size > want)
    return str_cat("shard '", f, "' has ", size, " bytes, ", size - want,
                   " more than the header's token count ", count, " needs (", kLlmcHeaderBytes,
                   " + ", count, "*", width, " = ", want, ")");
  span.data = m.data() + kLlmcHeaderBytes;
  span.size = count;
  span.width = width;
  return "";
}

}  // namespace

std::vector<std::string> list_shard_files(const std::string& path) {
  std::vector<std::string> files;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (fs::is_regular_file(st)) {
    files.push_back(path);
  } else if (fs::is_directory(st)) {
    fs::directory_iterator it(path, ec);
    STP_CHECK(!ec, "data folder '", path, "' cannot be listed: ", ec.message());
    for (; it != fs::directory_iterator(); it.increment(ec)) {
      STP_CHECK(!ec, "data folder '", path, "' cannot be listed: ", ec.message());
      const std::string name = it->path().filename().string();
      if (name.empty() || name[0] == '.' || !it->is_regular_file()) continue;
      if (name.size() > 4 && name.compare(name.size() - 4, 4, ".bin") == 0)
        files.push_back(it->path().string());
    }
    STP_CHECK(!files.empty(), "data folder '", path,
              "' contains no *.bin shard files (data.path takes a shard file, a folder of *.bin "
              "shards or a glob such as 'DIR/train_*.bin')");
  } else if (is_glob(path)) {
    glob_t g{};
    const int rc = ::glob(path.c_str(), GLOB_NOSORT, nullptr, &g);
    for (std::size_t i = 0; rc == 0 && i < g.gl_pathc; ++i) {
      if (fs::is_regular_file(g.gl_pathv[i], ec)) files.push_back(g.gl_pathv[i]);
    }
    ::globfree(&g);
    STP_CHECK(rc == 0 || rc == GLOB_NOMATCH, "data glob '", path, "' failed (glob error ", rc, ")");
    STP_CHECK(!files.empty(), "data glob '", path, "' matches no shard file");
  } else {
    STP_CHECK(false, "data path '", path, "' does not exist");
  }
  std::sort(files.begin(), files.end());
  return files;
}

TokenScan scan_tokens(const TokenSpan& span, std::int64_t vocab) {
  TokenScan out;
  StripeHasher hash;
  if (span.width == 2) {
    scan_typed<std::uint16_t>(span, vocab, out, hash);
  } else {
    STP_ASSERT(span.width == 4, "token width ", span.width, " must be 2 or 4");
    scan_typed<std::uint32_t>(span, vocab, out, hash);
  }
  out.hash = hash.digest();
  return out;
}

OpenedShards open_shards(const std::vector<std::string>& files, ShardFormat format,
                         std::int64_t vocab) {
  OpenedShards out;
  std::vector<std::string> problems;
  std::uint64_t fingerprint = kP3;
  for (const std::string& f : files) {
    std::optional<MappedFile> map;
    try {
      map.emplace(f);
    } catch (const std::invalid_argument& e) {
      problems.push_back(e.what());
      continue;
    }
    TokenSpan span;
    if (std::string bad = check_layout(*map, format, span); !bad.empty()) {
      problems.push_back(std::move(bad));
      continue;
    }
    map->advise_sequential();
    const TokenScan scan = scan_tokens(span, vocab);
    map->advise_random();
    if (scan.first_bad >= 0) {
      problems.push_back(str_cat("shard '", f, "': token id ", scan.bad_id, " at position ",
                                 scan.first_bad, " is >= the model's vocabulary of ", vocab,
                                 " (ids must be in [0, ", vocab - 1, "]; this shard's largest is ",
                                 scan.max_id, ": raise model.vocab to at least ", scan.max_id + 1,
                                 ")"));
      continue;
    }
    fingerprint =
        avalanche(mix_round(fingerprint, static_cast<std::uint64_t>(span.size)) ^ scan.hash);
    out.tokens += span.size;
    out.spans.push_back(std::move(span));
    out.maps.push_back(std::move(*map));
  }
  if (!problems.empty()) {
    std::string msg;
    for (std::size_t i = 0; i < problems.size() && i < kMaxProblemLines; ++i)
      msg += (i ? "\n" : "") + problems[i];
    if (problems.size() > kMaxProblemLines)
      msg += str_cat("\n... and ", problems.size() - kMaxProblemLines, " more problems");
    STP_CHECK(false, msg);
  }
  out.fingerprint = fingerprint;
  return out;
}

}  // namespace stp::data
