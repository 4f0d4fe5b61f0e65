#include "common/check.h"

#include <cstdio>

namespace stp {

void log_error(const std::string& msg) noexcept {
  std::fprintf(stderr, "stp: error: %s\n", msg.c_str());
  std::fflush(stderr);
}

void throw_assert(const char* file, int line, const char* expr, const std::string& msg) {
  std::string what = str_cat(file, ":", line, ": internal invariant failed: ", expr);
  if (!msg.empty()) what += str_cat(" (", msg, ")");
  throw std::logic_error(what);
}

}  // namespace stp
