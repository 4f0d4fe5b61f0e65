// TokenSpan: a contiguous run of token ids somewhere in memory — the whole tokenized text of a
// text source, or the tokens of one memory-mapped shard — read through its element width.
// A span does not own its bytes: the Dataset that holds it does (data.h).
//
// Thread-safety: a plain value; reading through it is safe from any thread while the owner
// lives.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace stp::data {

static_assert(std::endian::native == std::endian::little,
              "token shards are little-endian; stp reads them in place");

struct TokenSpan {
  const std::byte* data = nullptr;  // the first token
  std::int64_t size = 0;            // tokens
  int width = 2;                    // bytes per token: 2 (uint16) or 4 (uint32), little-endian
  std::string path;                 // the shard file it was mapped from; "" for text sources

  // Token i. REQUIRES: 0 <= i < size.
  std::int64_t at(std::int64_t i) const {
    const std::byte* p = data + i * width;
    if (width == 2) {
      std::uint16_t v;
      std::memcpy(&v, p, 2);
      return v;
    }
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }

  // Copies tokens [begin, begin + n) as int64 into out. REQUIRES: the range is inside the span.
  void copy(std::int64_t begin, std::int64_t n, std::int64_t* out) const {
    for (std::int64_t i = 0; i < n; ++i) out[i] = at(begin + i);
  }
};

}  // namespace stp::data
