// `stp`: one binary, many subcommands (see `stp --help`). Commands register themselves in
// apps/cmd_*.cpp; this file only dispatches and turns exceptions into one-line errors.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <sstream>
#include <stdexcept>

#include "command.h"

namespace stp::apps {
std::vector<Command>& command_registry() {
  static std::vector<Command> registry;
  return registry;
}
}  // namespace stp::apps

namespace {

int word_count(const std::string& name) {
  return 1 + static_cast<int>(std::count(name.begin(), name.end(), ' '));
}

void print_help() {
  std::printf(
      "stp — Synergistic Tensor and Pipeline parallel training engine\n\n"
      "usage: stp <command> [options]   (stp <command> --help for its options)\n\n"
      "commands:\n");
  auto commands = stp::apps::command_registry();
  std::sort(commands.begin(), commands.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (const auto& c : commands) std::printf("  %-16s %s\n", c.name.c_str(), c.summary.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  // Under `stp run` stdout is a pipe: keep it line-buffered so rank output shows as it happens.
  if (std::getenv("STP_LAUNCHER")) std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::vector<std::string> words(argv + 1, argv + argc);
  if (words.empty() || words[0] == "--help" || words[0] == "-h" || words[0] == "help") {
    print_help();
    return words.empty() ? 2 : 0;
  }
  const stp::apps::Command* best = nullptr;
  for (const auto& c : stp::apps::command_registry()) {
    int n = word_count(c.name);
    if (n > static_cast<int>(words.size())) continue;
    std::string joined;
    for (int i = 0; i < n; ++i) joined += (i ? " " : "") + words[i];
    if (joined == c.name && (!best || n > word_count(best->name))) best = &c;
  }
  if (!best) {
    std::fprintf(stderr, "stp: error: unknown command '%s'; run `stp --help` for the list\n",
                 words[0].c_str());
    return 2;
  }
  std::vector<std::string> rest(words.begin() + word_count(best->name), words.end());
  try {
    return best->run(rest);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "stp %s: error: %s\n", best->name.c_str(), e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stp %s: error: %s\n", best->name.c_str(), e.what());
    return 1;
  }
}
