// Launcher: the process management behind `stp run -n N PROGRAM ARGS...`. It starts N local rank
// processes with the torchrun environment, relays their output line by line with a "[rN] "
// prefix, forwards signals, and stops every rank when one fails. It knows nothing about the
// rendezvous store: `stp run` (apps/cmd_run.cpp) hosts a c10d::TCPStore and passes its port in.
//
// Note [Launcher design]
//   * Each rank is its own process group (setpgid), so a signal reaches the rank and everything
//     it started (kill(-pgid)), and a Ctrl-C at the terminal reaches only the launcher, which
//     forwards it once. Children also set PR_SET_PDEATHSIG=SIGKILL, so a launcher that dies
//     without cleaning up (SIGKILL, crash) still takes its ranks with it.
//   * One thread, one poll() loop: the ranks' stdout/stderr pipes plus a self-pipe that the
//     signal handlers (SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT) write the signal number to.
//     A self-pipe rather than signalfd, because other threads of this process (the TCPStore
//     server's) do not block those signals and could swallow them.
//   * A rank "fails" when it exits non-zero or by a signal while the launcher is not already
//     stopping. The first failure (lowest rank among those reaped together) starts the stop:
//     SIGTERM to every rank's group, SIGKILL after `grace_seconds`. A signal to the launcher
//     does the same with the signal it received; a second one escalates to SIGKILL at once.
//   * When a rank's main process ends, whatever it left running in its process group is
//     killed before the main process is reaped (while the zombie still holds the group id, so
//     the kill cannot reach an unrelated process). The launcher is a child subreaper
//     (PR_SET_CHILD_SUBREAPER), so those processes are reparented to it and reaped before it
//     returns: nothing the ranks started in their groups outlives `stp run`. (A process that
//     leaves its group with setsid() is out of reach, as it is for torchrun.)
//   * Ranks read stdin from /dev/null (they run in background process groups, where reading
//     the terminal would stop them).
//   * One error, one line: an error every rank hits would otherwise print once per rank. So
//     each rank's newest stderr line is held back until its next line, until the rank ends
//     well, or, while nothing is stopping, for kHoldFinalLineMs. What is still held at the end
//     (the final lines of the ranks that failed or were stopped) is printed in rank order, one
//     line per distinct text, prefixed with every rank that wrote it: "[r0-3] stp verify:
//     error: ..." (ranks as lists and ranges: "[r0,2]", "[r0-2,5]"). Different errors keep
//     their own lines. stdout is never held.
//
// Thread-safety: launch_ranks() installs process-wide signal handlers for its duration (and
// restores the previous ones); call it from the main thread, one at a time.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace stp::apps {

constexpr int kMaxLocalRanks = 1024;  // upper bound of -n

struct LaunchOptions {
  int nproc = 1;                          // ranks to start; [1, kMaxLocalRanks]
  std::vector<std::string> command;       // [0]: program path (resolve_program's result), then args
  std::string master_addr = "127.0.0.1";  // MASTER_ADDR given to every rank
  int master_port = 0;         // MASTER_PORT: the store's port, already listening; [1, 65535]
  bool prefix_output = true;   // pipe rank output through "[rN] " line prefixes; false:
                               // ranks inherit the launcher's stdout/stderr untouched
  double grace_seconds = 3.0;  // SIGTERM -> SIGKILL delay when stopping ranks; [0, 3600]
};

// PROGRAM resolved like a shell would: a name containing '/' is used as given, any other name
// is searched in $PATH; the bare name "stp" means `self_exe` (this very binary), so
// `stp run -n 2 stp train` runs the same build even when stp is not on PATH.
// Throws std::invalid_argument naming the program when it is missing or not executable.
std::string resolve_program(const std::string& program, const std::string& self_exe);

// The environment of `rank`: `base` (NAME=VALUE strings) with the torchrun variables set
// (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, ROLE_*, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_USE_AGENT_STORE=True, ...), STP_LAUNCHER=1, and OMP_NUM_THREADS=1 unless `base`
// already sets it; when the launcher sets it, also STP_OMP_FROM_LAUNCHER=1, so that stp's own
// ranks tell it from the user's and divide the cores among the ranks instead
// (engine::launch_env_from_environment, train::cpu_threads).
std::vector<std::string> rank_environment(const LaunchOptions& options, int rank,
                                          const std::vector<std::string>& base);

// A waitpid() status in words: "exited with code 3", "killed by signal 9 (SIGKILL)".
std::string describe_wait_status(int status);

// Splits one output stream into lines and puts `prefix` in front of each. Partial lines are
// held back until their newline (so ranks' lines never interleave mid-line), except that a line
// longer than kMaxHeld bytes is passed on in pieces with the prefix only on its first piece.
// With `hold_last`, the newest complete line (or the unfinished last one, at finish) is also
// kept back, until the next line comes or the caller releases or takes it.
class LinePrefixer {
 public:
  static constexpr std::size_t kMaxHeld = 64 * 1024;  // bytes of one unfinished line kept back

  explicit LinePrefixer(std::string prefix, bool hold_last = false)
      : prefix_(std::move(prefix)), hold_last_(hold_last) {}

  // Appends to `out` everything that can be written now.
  void feed(const char* data, std::size_t size, std::string& out);
  // End of stream: appends the unfinished last line, if any, ended with '\n' (with hold_last it
  // becomes the held line instead).
  void finish(std::string& out);

  bool has_held() const { return !last_.empty(); }
  std::size_t lines_held() const { return lines_held_; }  // lines held so far, a change counter
  // Appends the held line, with its prefix, to `out`.
  void release(std::string& out);
  // The held line without its prefix (ending in '\n'); none is held afterwards.
  std::string take_held();

 private:
  void hold(std::string line, std::string& out);

  std::string prefix_;
  bool hold_last_;
  std::string held_;       // the current line's bytes not yet written
  bool mid_line_ = false;  // part of the current line (and its prefix) was already written
  std::string last_;       // hold_last: the newest complete line, '\n' included, not written
  std::size_t lines_held_ = 0;
};

// Starts the ranks and runs until every rank's main process has ended. Returns the exit code
// for `stp run`: 0 when all ranks exited 0; the first failed rank's code (128 + signal when it
// was killed by a signal) after stopping the others; 128 + signal when the launcher itself was
// interrupted. On failure prints one line to stderr, e.g.
//   stp run: rank 2 exited with code 1; stopped the other 3 ranks
// REQUIRES: options as documented on LaunchOptions (cmd_run.cpp validates them).
int launch_ranks(const LaunchOptions& options);

}  // namespace stp::apps
