#include "schedule/json_text.h"

namespace stp::schedule {

namespace {

void append(std::string& out, const OrderedJson& v, int depth, int wrap_depth) {
  if (v.is_object()) {
    out += '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) out += ", ";
      first = false;
      append(out, OrderedJson(it.key()), depth + 1, wrap_depth);
      out += ": ";
      append(out, it.value(), depth + 1, wrap_depth);
    }
    out += '}';
  } else if (v.is_array()) {
    const bool wrap = depth < wrap_depth && !v.empty() && v.front().is_structured();
    const std::string indent(static_cast<std::size_t>(depth), ' ');
    out += '[';
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (wrap) out += (i ? ",\n " : "\n ") + indent;
      if (!wrap && i) out += ", ";
      append(out, v[i], depth + 1, wrap_depth);
    }
    if (wrap) out += "\n" + indent;
    out += ']';
  } else {
    out += v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}

}  // namespace

std::string json_text(const OrderedJson& value, int wrap_depth) {
  std::string out;
  append(out, value, 0, wrap_depth);
  return out;
}

}  // namespace stp::schedule
