// An enum's names in one table: what to_string() prints and a config's text parses back to, so
// each enum with names says them once (allocator backends, host memory kinds, comm backends,
// data formats).
//   constexpr EnumName<Backend> kNames[] = {{Backend::kHost, "host"}, {Backend::kCuda, "cuda"}};
//   name_of(kNames, Backend::kCuda) -> "cuda";  value_named(kNames, "host") -> Backend::kHost
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>

namespace stp {

template <class E>
struct EnumName {
  E value;
  const char* name;
};

// The name of `value`, or "?" when the table lacks it.
template <class E, std::size_t N>
constexpr const char* name_of(const EnumName<E> (&names)[N], E value) {
  for (const EnumName<E>& n : names) {
    if (n.value == value) return n.name;
  }
  return "?";
}

// The value named `text`; nullopt when no entry has that name.
template <class E, std::size_t N>
std::optional<E> value_named(const EnumName<E> (&names)[N], std::string_view text) {
  for (const EnumName<E>& n : names) {
    if (text == n.name) return n.value;
  }
  return std::nullopt;
}

}  // namespace stp
