#include "data/tokenizer.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>

namespace stp::data {
namespace {

TEST(Tokenizer, RoundTripsEveryByteIncludingInvalidUtf8) {
  ByteTokenizer tok;
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  all += "h\xC3\xA9llo \xFF\xFE\x80 w\xE2\x82\xAC rld";  // valid and invalid UTF-8
  const std::vector<Token> ids = tok.encode(all);
  ASSERT_EQ(ids.size(), all.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(ids[i], static_cast<unsigned char>(all[i])) << "byte " << i;
  }
  EXPECT_EQ(tok.decode(ids), all);
}

TEST(Tokenizer, VocabAndSpecials) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 258);
  EXPECT_EQ(ByteTokenizer::kEos, 256);
  std::vector<Token> ids = tok.encode("ab");
  ids.push_back(ByteTokenizer::kEos);
  ids.push_back('c');
  ids.push_back(ByteTokenizer::kPad);
  EXPECT_EQ(tok.decode(ids), "ab<eos>c<pad>");
  EXPECT_EQ(tok.decode(ids, /*render_specials=*/false), "abc");
  EXPECT_EQ(tok.token_text(256), "<eos>");
  EXPECT_EQ(tok.token_text('x'), "x");
}

TEST(Tokenizer, EncodeAppendAppends) {
  ByteTokenizer tok;
  std::vector<Token> ids = {ByteTokenizer::kEos};
  tok.encode_append("hi", ids);
  EXPECT_EQ(ids, (std::vector<Token>{256, 'h', 'i'}));
}

TEST(Tokenizer, DecodeRejectsOutOfRangeIdNamingItAndTheRange) {
  ByteTokenizer tok;
  try {
    tok.decode(std::vector<Token>{'a', 300});
    FAIL() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "token id 300 at position 1 out of range [0, 258)");
  }
  EXPECT_THROW(tok.decode(at::tensor({-1}, at::kLong)), std::invalid_argument);
  EXPECT_THROW(tok.decode(at::ones({2}, at::kFloat)), std::invalid_argument);
}

TEST(Tokenizer, DecodesTensorsRowMajor) {
  ByteTokenizer tok;
  at::Tensor t = at::tensor({'a', 'b', 'c', 'd', 256, 'e'}, at::kLong).view({2, 3});
  EXPECT_EQ(tok.decode(t), "abcd<eos>e");
  EXPECT_EQ(tok.decode(t.to(at::kInt)), "abcd<eos>e");
}

}  // namespace
}  // namespace stp::data
