#include "common/check.h"

#include <cstdarg>
#include <cstdio>

namespace stp {

std::string str_printf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(nullptr, 0, format, args);
  va_end(args);
  std::string out(n > 0 ? static_cast<std::size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, format, again);
  va_end(again);
  return out;
}

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
