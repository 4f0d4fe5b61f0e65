// Subcommand registry of the `stp` CLI. Each apps/cmd_*.cpp registers its commands with
// STP_REGISTER_COMMAND; main() picks the longest registered name that prefixes argv
// ("bench copy" before "bench"). A command gets the arguments after its name and returns the
// process exit code. Bad arguments: throw std::invalid_argument (via STP_CHECK) or CLI11's
// errors; main prints one line "stp <cmd>: error: ..." and exits 2.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace stp::apps {

using CommandFn = std::function<int(const std::vector<std::string>& args)>;

struct Command {
  std::string name;     // one or more words: "schedule", "bench copy"
  std::string summary;  // one line for `stp --help`
  CommandFn run;
};

std::vector<Command>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string summary, CommandFn fn) {
    command_registry().push_back({std::move(name), std::move(summary), std::move(fn)});
  }
};

// Parses args with CLI11 the same way for every command (program name "stp <cmd>").
// Returns a process exit code >= 0 when the command should stop now (help printed or a parse
// error reported), or -1 when parsing succeeded.
}  // namespace stp::apps

#define STP_CONCAT_INNER(a, b) a##b
#define STP_CONCAT(a, b) STP_CONCAT_INNER(a, b)
#define STP_REGISTER_COMMAND(name, summary, fn) \
  static ::stp::apps::CommandRegistrar STP_CONCAT(stp_command_, __LINE__)(name, summary, fn)
