// write_file: the project's one whole-file writer (reports, plots, traces, configs).
#pragma once

#include <string>

namespace stp {

// Writes `text` to `path`, replacing it; throws std::runtime_error naming the path when it
// cannot be opened or written.
void write_file(const std::string& path, const std::string& text);

}  // namespace stp
