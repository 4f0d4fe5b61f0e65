// Error checking for stp: two tiers (STYLE.md item 8).
//
//   STP_CHECK(cond, msg...)   bad configuration or input: throws std::invalid_argument whose
//                             message is the streamed msg parts (name the value and legal range).
//   STP_ASSERT(cond, msg...)  a broken internal invariant: throws std::logic_error with file,
//                             line and the failed expression.
//   STP_CUDA_CHECK(expr)      a CUDA runtime call that must return cudaSuccess.
//   STP_NCCL_CHECK(expr)      an NCCL call that must return ncclSuccess.
//
// Destructors and callbacks never throw: they call stp::log_error and carry on.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace stp {

namespace detail {
inline void stream_all(std::ostringstream&) {}
template <typename T, typename... Rest>
void stream_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  stream_all(os, rest...);
}
}  // namespace detail

// Concatenates all arguments with operator<<.
template <typename... Args>
std::string str_cat(const Args&... args) {
  std::ostringstream os;
  detail::stream_all(os, args...);
  return os.str();
}

// printf-style formatting into a string of any length: for table rows and fixed-width figures.
std::string str_printf(const char* format, ...) __attribute__((format(printf, 1, 2)));

// Writes "stp: error: <msg>" to stderr. Never throws; for destructors and callbacks.
void log_error(const std::string& msg) noexcept;

[[noreturn]] void throw_assert(const char* file, int line, const char* expr,
                               const std::string& msg);

}  // namespace stp

#define STP_CHECK(cond, ...)                                               \
  do {                                                                     \
    if (!(cond)) throw std::invalid_argument(::stp::str_cat(__VA_ARGS__)); \
  } while (0)

#define STP_ASSERT(cond, ...)                                                                 \
  do {                                                                                        \
    if (!(cond)) ::stp::throw_assert(__FILE__, __LINE__, #cond, ::stp::str_cat(__VA_ARGS__)); \
  } while (0)
