#include "cli_test_util.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>

#include <array>
#include <cstdio>
#include <stdexcept>

namespace stp::testing {

CliResult run_cli(const std::string& args) {
  std::string cmd = std::string(STP_CLI) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) throw std::runtime_error("popen failed for: " + cmd);
  CliResult result;
  std::array<char, 4096> buf;
  std::size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) result.output.append(buf.data(), n);
  int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

void expect_contains(const std::string& output, const std::vector<std::string>& needles) {
  for (const std::string& needle : needles)
    EXPECT_NE(output.find(needle), std::string::npos) << "missing '" << needle << "' in\n"
                                                      << output;
}

int lines(const std::string& output) {
  return static_cast<int>(std::count(output.begin(), output.end(), '\n'));
}

void expect_rejected(const std::string& args, const std::string& needle) {
  CliResult r = run_cli(args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
  EXPECT_EQ(lines(r.output), 1) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << args << "\n" << r.output;
}

void expect_rejected(const std::vector<Rejection>& cases) {
  for (const Rejection& c : cases) expect_rejected(c.args, c.needle);
}

}  // namespace stp::testing
