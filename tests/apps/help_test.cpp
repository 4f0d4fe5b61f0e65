#include <gtest/gtest.h>

#include "cli_test_util.h"

namespace stp::testing {
namespace {

TEST(Cli, HelpListsCommandsAndExitsZero) {
  CliResult r = run_cli("--help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output, {"usage: stp <command>"});
}

TEST(Cli, UnknownCommandIsOneLineErrorWithExitTwo) {
  CliResult r = run_cli("frobnicate");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.output, "stp: error: unknown command 'frobnicate'; run `stp --help` for the list\n");
}

}  // namespace
}  // namespace stp::testing
