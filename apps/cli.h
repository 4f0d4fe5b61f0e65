// Helpers shared by the CLI commands: CLI11 parsing with stp's error convention, byte sizes.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

namespace stp::apps {

// Parses `args` into `app`. Returns -1 on success; otherwise the exit code to return at once
// (0 after --help, 2 after a parse error, which is printed as one line).
int parse(CLI::App& app, const std::vector<std::string>& args);

// "20GiB", "512MiB", "1.5GB", "4096" -> bytes. Throws std::invalid_argument naming the value.
std::int64_t parse_bytes(const std::string& text, const std::string& what);

// 1536 -> "1.50 KiB".
std::string format_bytes(double bytes);

}  // namespace stp::apps
