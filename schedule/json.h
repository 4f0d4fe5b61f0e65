// A small JSON reader and string escaper for the schedule library (which uses the C++ standard
// library only). Enough for the Program contract and for tests that read back what we write
// (Chrome traces): objects, arrays, strings with escapes, numbers, true/false/null.
//
// Thread-safety: values; no shared state.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace stp::schedule::json {

struct Value {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  Type type = Type::kNull;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  // in document order

  // The member named `key`, or nullptr (also when this is not an object).
  const Value* find(std::string_view key) const;
  bool is_int() const;  // a number with an integral value that fits an int
};

// Parses a whole document. Throws std::invalid_argument naming the byte offset of the error.
Value parse(std::string_view text);

// `text` as a JSON string literal, quotes included.
std::string quote(std::string_view text);

const char* type_name(Value::Type type);

}  // namespace stp::schedule::json
