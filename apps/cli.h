// Helpers shared by the CLI commands: CLI11 parsing with stp's error convention, byte sizes.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>
#include <vector>
#include "common/bytes.h"  // parse_bytes, format_bytes for every command

namespace stp::apps {

// Parses `args` into `app`. Returns -1 on success; otherwise the exit code to return at once
// (0 after --help, 2 after a parse error, which is printed as one line).
int parse(CLI::App& app, const std::vector<std::string>& args);

}  // namespace stp::apps
