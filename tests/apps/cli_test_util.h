// Runs the built `stp` binary for CLI tests: captures stdout+stderr and the exit code.
#pragma once

#include <string>

namespace stp::testing {

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr interleaved
};

// Runs `STP_CLI <args>` through /bin/sh (args are passed verbatim to the shell).
CliResult run_cli(const std::string& args);

}  // namespace stp::testing
