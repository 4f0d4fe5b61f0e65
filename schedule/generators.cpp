#include "schedule/generators.h"

#include <algorithm>

#include "common/check.h"

namespace stp::schedule {

const char* to_string(Kind kind) {
  switch (kind) {
    case Kind::k1F1B: return "1f1b";
    case Kind::k1F1BInterleaved: return "1f1b-i";
    case Kind::kZBH1: return "zb-h1";
    case Kind::kZBV: return "zb-v";
    case Kind::kSTP: return "stp";
  }
  return "?";
}

const std::vector<Kind>& all_kinds() {
  static const std::vector<Kind> kinds = {Kind::k1F1B, Kind::k1F1BInterleaved, Kind::kZBH1,
                                          Kind::kZBV, Kind::kSTP};
  return kinds;
}

Kind kind_from_string(const std::string& text) {
  for (Kind k : all_kinds())
    if (text == to_string(k)) return k;
  STP_CHECK(false, "kind '", text, "' is not one of 1f1b, 1f1b-i, zb-h1, zb-v, stp");
  return Kind::kSTP;
}

int default_chunks(Kind kind) {
  switch (kind) {
    case Kind::k1F1B:
    case Kind::kZBH1: return 1;
    case Kind::k1F1BInterleaved:
    case Kind::kZBV:
    case Kind::kSTP: return 2;
  }
  return 1;
}

int min_microbatches(Kind kind, int p, int /*v*/, int at_least) {
  STP_CHECK(p >= 1, "pp=", p, " must be >= 1");
  STP_CHECK(at_least >= 1, "at_least=", at_least, " must be >= 1");
  switch (kind) {
    case Kind::k1F1BInterleaved: return (at_least + p - 1) / p * p;  // a positive multiple of p
    case Kind::kSTP: return std::max(at_least, 2 * p);
    case Kind::k1F1B:
    case Kind::kZBH1:
    case Kind::kZBV: return at_least;
  }
  STP_ASSERT(false, "unknown kind");
  return at_least;
}

bool accepts_microbatches(Kind kind, int p, int m) {
  if (m < min_microbatches(kind, p)) return false;
  return kind != Kind::k1F1BInterleaved || m % p == 0;
}

Program make(Kind kind, int p, int m, int v) {
  if (v == 0) v = default_chunks(kind);
  STP_CHECK(kind == Kind::k1F1BInterleaved || v == default_chunks(kind), "chunks=", v,
            " is not supported by the ", to_string(kind), " schedule (it uses ",
            default_chunks(kind), ")");
  switch (kind) {
    case Kind::k1F1B: return make_1f1b(p, m);
    case Kind::k1F1BInterleaved: return make_1f1b_interleaved(p, m, v);
    case Kind::kZBH1: return make_zb_h1(p, m);
    case Kind::kZBV: return make_zb_v(p, m);
    case Kind::kSTP: return make_stp(p, m);
  }
  STP_ASSERT(false, "unknown kind");
  return {};
}

Program make(const std::string& kind, int p, int m, int v) {
  return make(kind_from_string(kind), p, m, v);
}

}  // namespace stp::schedule
