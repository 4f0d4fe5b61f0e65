// JSON text in the schedule library's layout: nlohmann/json values (the project's one way to
// read and write JSON) written with a space after each ',' and ':', as in
// {"op": "F", "parts": [{"pass": "F", "chunk": 0, "stage": 0, "mb": 0}]} — the layout of the
// Program contract (docs/schedule.md) and of Chrome traces. Arrays of objects or arrays in the
// first `wrap_depth` levels put one element on a line, so that a Program has one instruction
// and a trace one event per line.
//
// Thread-safety: a pure function.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace stp::schedule {

// nlohmann's object type that keeps members in insertion order, as written.
using OrderedJson = nlohmann::ordered_json;

// REQUIRES: wrap_depth >= 0. Strings that are not valid UTF-8 are written with U+FFFD.
std::string json_text(const OrderedJson& value, int wrap_depth = 0);

}  // namespace stp::schedule
