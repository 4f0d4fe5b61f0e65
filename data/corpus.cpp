#include "data/corpus.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <vector>

#include "common/check.h"

namespace stp::data {
namespace {

// SplitMix64: tiny, well mixed, and bit-identical everywhere (std::uniform_int_distribution is
// implementation-defined, so it would make the corpus differ between standard libraries).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n); the modulo bias (< 2^-50 for our n) does not matter here.
  int below(int n) { return static_cast<int>(next() % static_cast<std::uint64_t>(n)); }
  int between(int lo, int hi) { return lo + below(hi - lo + 1); }  // inclusive

 private:
  std::uint64_t state_;
};

// The small grammar (see corpus.h):
//   S  -> NP VP "." | NP VP "and" VP "."
//   NP -> Det N | Det Adj N
//   VP -> V NP | Vi
const std::array<const char*, 2> kDet = {"the", "a"};
const std::array<const char*, 4> kAdj = {"small", "red", "old", "happy"};
const std::array<const char*, 5> kNoun = {"cat", "dog", "fox", "bird", "robot"};
const std::array<const char*, 4> kVerb = {"sees", "likes", "chases", "finds"};
const std::array<const char*, 2> kVerbIntransitive = {"sleeps", "runs"};

template <std::size_t N>
const char* pick(Rng& rng, const std::array<const char*, N>& words) {
  return words[static_cast<std::size_t>(rng.below(static_cast<int>(N)))];
}

void noun_phrase(Rng& rng, std::string& out) {
  out += pick(rng, kDet);
  out += ' ';
  if (rng.below(2) == 0) {
    out += pick(rng, kAdj);
    out += ' ';
  }
  out += pick(rng, kNoun);
}

void verb_phrase(Rng& rng, std::string& out) {
  if (rng.below(4) == 0) {
    out += pick(rng, kVerbIntransitive);
    return;
  }
  out += pick(rng, kVerb);
  out += ' ';
  noun_phrase(rng, out);
}

std::string sentence(Rng& rng) {
  std::string s;
  noun_phrase(rng, s);
  s += ' ';
  verb_phrase(rng, s);
  if (rng.below(4) == 0) {
    s += " and ";
    verb_phrase(rng, s);
  }
  s += " .";
  return s;
}

std::string brackets(Rng& rng) {
  static const char kOpen[] = "([{";
  static const char kClose[] = ")]}";
  int to_open = rng.between(1, 6);
  std::string s = "bal ";
  std::vector<int> stack;
  while (to_open > 0 || !stack.empty()) {
    if (to_open > 0 && (stack.empty() || rng.below(2) == 0)) {
      int kind = rng.below(3);
      s += kOpen[kind];
      stack.push_back(kind);
      --to_open;
    } else {
      s += kClose[stack.back()];
      stack.pop_back();
    }
  }
  return s;
}

std::string digit_list(const std::vector<int>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) s += ' ';
    s += static_cast<char>('0' + v[i]);
  }
  return s;
}

std::string line(Rng& rng) {
  // Weights out of 100: add 20, mul 15, sort 15, rev 10, bal 15, grammar 25.
  const int kind = rng.below(100);
  if (kind < 20) {
    int a = rng.between(0, 99), b = rng.between(0, 99);
    return std::to_string(a) + "+" + std::to_string(b) + "=" + std::to_string(a + b);
  }
  if (kind < 35) {
    int a = rng.between(1, 12), b = rng.between(1, 12);
    return std::to_string(a) + "*" + std::to_string(b) + "=" + std::to_string(a * b);
  }
  if (kind < 50) {
    std::vector<int> v(static_cast<std::size_t>(rng.between(3, 6)));
    for (int& d : v) d = rng.below(10);
    std::string s = "sort " + digit_list(v) + " -> ";
    std::sort(v.begin(), v.end());
    return s + digit_list(v);
  }
  if (kind < 60) {
    std::string w(static_cast<std::size_t>(rng.between(3, 6)), 'a');
    for (char& c : w) c = static_cast<char>('a' + rng.below(8));
    return "rev " + w + " -> " + std::string(w.rbegin(), w.rend());
  }
  if (kind < 75) return brackets(rng);
  return sentence(rng);
}

// ---- validation ------------------------------------------------------------------------------

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  for (std::size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      parts.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return parts;
}

// A decimal number without sign or leading zeros, at most 4 digits; -1 if not one.
int number(std::string_view s) {
  if (s.empty() || s.size() > 4 || (s.size() > 1 && s[0] == '0')) return -1;
  int v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

bool arithmetic_valid(std::string_view line, char op) {
  const std::size_t o = line.find(op), eq = line.find('=');
  if (o == std::string_view::npos || eq == std::string_view::npos || eq < o) return false;
  const int a = number(line.substr(0, o)), b = number(line.substr(o + 1, eq - o - 1));
  const int c = number(line.substr(eq + 1));
  if (a < 0 || b < 0 || c < 0) return false;
  if (op == '+') return a <= 99 && b <= 99 && c == a + b;
  return a >= 1 && a <= 12 && b >= 1 && b <= 12 && c == a * b;
}

// "<prefix> X -> Y" split into X and Y.
bool arrow_parts(std::string_view line, std::string_view prefix, std::string_view& x,
                 std::string_view& y) {
  if (line.substr(0, prefix.size()) != prefix) return false;
  const std::size_t arrow = line.find(" -> ");
  if (arrow == std::string_view::npos || arrow < prefix.size()) return false;
  x = line.substr(prefix.size(), arrow - prefix.size());
  y = line.substr(arrow + 4);
  return true;
}

bool sort_valid(std::string_view line) {
  std::string_view x, y;
  if (!arrow_parts(line, "sort ", x, y)) return false;
  auto digits = [](std::string_view s, std::vector<int>& out) {
    for (std::string_view d : split(s, ' ')) {
      if (d.size() != 1 || d[0] < '0' || d[0] > '9') return false;
      out.push_back(d[0] - '0');
    }
    return out.size() >= 3 && out.size() <= 6;
  };
  std::vector<int> in, out;
  if (!digits(x, in) || !digits(y, out)) return false;
  std::sort(in.begin(), in.end());
  return in == out;
}

bool rev_valid(std::string_view line) {
  std::string_view x, y;
  if (!arrow_parts(line, "rev ", x, y) || x.size() < 3 || x.size() > 6) return false;
  for (char c : x)
    if (c < 'a' || c > 'h') return false;
  return std::string(x.rbegin(), x.rend()) == y;
}

bool bal_valid(std::string_view line) {
  if (line.substr(0, 4) != "bal ") return false;
  std::string stack;
  int pairs = 0;
  for (char c : line.substr(4)) {
    if (c == '(' || c == '[' || c == '{') {
      stack.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
      ++pairs;
    } else {
      if (stack.empty() || stack.back() != c) return false;
      stack.pop_back();
    }
  }
  return stack.empty() && pairs >= 1 && pairs <= 6;
}

template <std::size_t N>
bool one_of(std::string_view w, const std::array<const char*, N>& words) {
  return std::any_of(words.begin(), words.end(), [&](const char* x) { return w == x; });
}

// Recursive descent over the word list; `i` advances past what was parsed.
bool parse_np(const std::vector<std::string_view>& w, std::size_t& i) {
  if (i >= w.size() || !one_of(w[i], kDet)) return false;
  ++i;
  if (i < w.size() && one_of(w[i], kAdj)) ++i;
  if (i >= w.size() || !one_of(w[i], kNoun)) return false;
  ++i;
  return true;
}

bool parse_vp(const std::vector<std::string_view>& w, std::size_t& i) {
  if (i < w.size() && one_of(w[i], kVerbIntransitive)) {
    ++i;
    return true;
  }
  if (i >= w.size() || !one_of(w[i], kVerb)) return false;
  ++i;
  return parse_np(w, i);
}

bool grammar_valid(std::string_view line) {
  const std::vector<std::string_view> w = split(line, ' ');
  std::size_t i = 0;
  if (!parse_np(w, i) || !parse_vp(w, i)) return false;
  if (i < w.size() && w[i] == "and") {
    ++i;
    if (!parse_vp(w, i)) return false;
  }
  return i + 1 == w.size() && w[i] == ".";
}

}  // namespace

std::string generate_corpus(std::uint64_t seed, std::int64_t bytes) {
  constexpr std::int64_t kMaxBytes = std::int64_t{1} << 36;
  STP_CHECK(bytes >= kCorpusMaxLine && bytes <= kMaxBytes, "corpus bytes=", bytes, " must be in [",
            kCorpusMaxLine, ", ", kMaxBytes, "]");
  Rng rng(seed);
  std::string out;
  out.reserve(static_cast<std::size_t>(bytes));
  for (;;) {
    std::string l = line(rng);
    l += '\n';
    STP_ASSERT(static_cast<std::int64_t>(l.size()) <= kCorpusMaxLine, "line too long: ", l);
    if (static_cast<std::int64_t>(out.size() + l.size()) > bytes) break;
    out += l;
  }
  return out;
}

bool corpus_line_is_valid(std::string_view line) {
  if (line.empty()) return false;
  if (line.substr(0, 5) == "sort ") return sort_valid(line);
  if (line.substr(0, 4) == "rev ") return rev_valid(line);
  if (line.substr(0, 4) == "bal ") return bal_valid(line);
  if (line[0] >= '0' && line[0] <= '9') {
    return line.find('+') != std::string_view::npos ? arithmetic_valid(line, '+')
                                                    : arithmetic_valid(line, '*');
  }
  return grammar_valid(line);
}

const char* corpus_description() {
  return "Generated corpus (no download, no third-party text): a deterministic mix of lines of "
         "two-digit addition (\"37+48=85\"), multiplication tables (\"7*8=56\"), sorting "
         "(\"sort 5 2 9 -> 2 5 9\"), reversal (\"rev cadb -> bdac\"), balanced brackets "
         "(\"bal ([]{()})\") and sentences of a small grammar (\"the red fox sees a cat .\"). "
         "Every line is checkably correct, so falling loss means the model learns the rules.";
}

}  // namespace stp::data
