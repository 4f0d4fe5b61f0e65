#include "data/tokenizer.h"

#include <ATen/ATen.h>

#include "common/check.h"

namespace stp::data {

static_assert(ByteTokenizer::kVocabSize <= 65536, "Token is 16 bits");

std::vector<Token> ByteTokenizer::encode(std::string_view text) const {
  std::vector<Token> out;
  encode_append(text, out);
  return out;
}

void ByteTokenizer::encode_append(std::string_view text, std::vector<Token>& out) const {
  out.reserve(out.size() + text.size());
  for (char c : text) out.push_back(static_cast<Token>(static_cast<unsigned char>(c)));
}

std::string ByteTokenizer::token_text(int id) const {
  STP_CHECK(id >= 0 && id < kVocabSize, "token id ", id, " out of range [0, ", kVocabSize, ")");
  if (id == kEos) return "<eos>";
  if (id == kPad) return "<pad>";
  return std::string(1, static_cast<char>(id));
}

namespace {

template <typename Int>
std::string decode_ids(const Int* ids, std::int64_t n, bool render_specials) {
  std::string out;
  out.reserve(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t id = static_cast<std::int64_t>(ids[i]);
    STP_CHECK(id >= 0 && id < ByteTokenizer::kVocabSize, "token id ", id, " at position ", i,
              " out of range [0, ", ByteTokenizer::kVocabSize, ")");
    if (id < 256) {
      out.push_back(static_cast<char>(id));
    } else if (render_specials) {
      out += id == ByteTokenizer::kEos ? "<eos>" : "<pad>";
    }
  }
  return out;
}

}  // namespace

std::string ByteTokenizer::decode(const std::vector<Token>& tokens, bool render_specials) const {
  return decode_ids(tokens.data(), static_cast<std::int64_t>(tokens.size()), render_specials);
}

std::string ByteTokenizer::decode(const at::Tensor& tokens, bool render_specials) const {
  STP_CHECK(tokens.defined(), "decode: tokens tensor is undefined");
  STP_CHECK(!at::isFloatingType(tokens.scalar_type()) && !at::isComplexType(tokens.scalar_type()),
            "decode: tokens dtype ", tokens.scalar_type(), " must be an integer type");
  at::Tensor t = tokens.to(at::kCPU, at::kLong).contiguous();
  return decode_ids(t.data_ptr<std::int64_t>(), t.numel(), render_specials);
}

}  // namespace stp::data
