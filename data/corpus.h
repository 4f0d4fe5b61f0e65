// Generated corpus: the embedded default dataset. No download, no third-party text: lines of a
// few small "languages", each with structure a small GPT learns visibly within a few hundred
// steps on a CPU (the format within tens of steps, the easy rules — closing brackets, sorting,
// multiplication tables — after that, two-digit addition last). Deterministic: the same seed
// and size give the same bytes on every platform (own PRNG, no std:: distributions).
//
// Line kinds (one per line, '\n'-terminated, mixed at random with fixed weights):
//   add     "37+48=85"                 a, b in [0, 99], the exact sum
//   mul     "7*8=56"                   a, b in [1, 12], the exact product
//   sort    "sort 5 2 9 -> 2 5 9"      3..6 digits, then the same digits in ascending order
//   rev     "rev cadb -> bdac"         3..6 letters from a..h, then reversed
//   bal     "bal ([]{()})"             a balanced string of ()[]{} with 1..6 pairs
//   grammar "the red fox sees a cat ." sentences of a small context-free grammar
//
// Thread-safety: pure functions; any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace stp::data {

// No generated line (with its newline) is longer than this many bytes.
constexpr std::int64_t kCorpusMaxLine = 80;

// Whole lines, at most `bytes` bytes and more than bytes - kCorpusMaxLine.
// REQUIRES: bytes in [kCorpusMaxLine, 2^36]; throws std::invalid_argument naming the value
// otherwise.
std::string generate_corpus(std::uint64_t seed, std::int64_t bytes);

// True when `line` (without its '\n') is a correct line of one of the kinds above: the sum,
// product, sorted order or reversal is right, the brackets balance, the sentence parses.
// Useful to score samples from a trained model.
bool corpus_line_is_valid(std::string_view line);

// A few sentences for docs and `stp train --help`: what the default corpus is.
const char* corpus_description();

}  // namespace stp::data
