#include "cli_test_util.h"

#include <sys/wait.h>

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

}  // namespace stp::testing
