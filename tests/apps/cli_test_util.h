// Runs the built `stp` binary for CLI tests: captures stdout+stderr and the exit code.
#pragma once

#include <string>
#include <vector>

namespace stp::testing {

struct CliResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr interleaved
};

// Runs `STP_CLI <args>` through /bin/sh (args are passed verbatim to the shell).
CliResult run_cli(const std::string& args);

// Each of `needles` occurs in `output` (a failure names the needle and shows the output).
void expect_contains(const std::string& output, const std::vector<std::string>& needles);

// The number of lines in `output` (its newline characters).
int lines(const std::string& output);

// `stp <args>` is refused as a bad argument: exit code 2 and one line that contains `needle`.
void expect_rejected(const std::string& args, const std::string& needle);

// A bad command line and what its one line of output must contain.
struct Rejection {
  std::string args;
  std::string needle;
};

// expect_rejected for each case.
void expect_rejected(const std::vector<Rejection>& cases);

}  // namespace stp::testing
