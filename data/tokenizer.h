// Tokenizer: byte-level, exact and reversible. Token t < 256 is the byte t; the ids from 256 up
// are special tokens that never come out of encode(): <eos> (256) separates documents (the
// loader puts one between the files of a folder) and <pad> (257) is reserved for padding.
// decode(encode(s)) == s for every byte string s, UTF-8 or not.
//
// Thread-safety: stateless; any thread may call any function.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace stp::data {

// A token id stored compactly (the loader keeps a whole dataset in this type).
using Token = std::uint16_t;

class ByteTokenizer {
 public:
  static constexpr int kEos = 256;        // end of document
  static constexpr int kPad = 257;        // padding, never produced by encode()
  static constexpr int kVocabSize = 258;  // 256 bytes + the specials above

  int vocab_size() const { return kVocabSize; }

  // One token per byte of `text`.
  std::vector<Token> encode(std::string_view text) const;
  // Appends the tokens of `text` to `out` (no intermediate copy; the loader's path).
  void encode_append(std::string_view text, std::vector<Token>& out) const;

  // Bytes back; special tokens render as "<eos>" / "<pad>" when `render_specials`, else are
  // dropped. REQUIRES: every id in [0, vocab_size()); throws std::invalid_argument naming the
  // offending id and its position otherwise.
  std::string decode(const std::vector<Token>& tokens, bool render_specials = true) const;
  // The same for a tensor of integer ids of any shape (read in row-major order, any device).
  std::string decode(const at::Tensor& tokens, bool render_specials = true) const;

  // "<eos>", "<pad>", or the byte as a one-character string.
  std::string token_text(int id) const;
};

}  // namespace stp::data
