#include "launcher.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "common/check.h"

extern char** environ;

namespace stp::apps {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kForwardedSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
constexpr int kBackstopPollMs = 500;   // ms; poll wake-up even without events (belt and braces)
constexpr int kLeftoverWaitMs = 1000;  // ms; how long the end waits for killed leftovers to go
// ms; how long a running rank's newest stderr line waits for the rank to fail (and so to be
// merged with the same line from other ranks) before it is printed anyway.
constexpr int kHoldFinalLineMs = 1000;

std::string signal_name(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? str_cat("SIG", abbrev) : str_cat("signal ", sig);
}

// ---- signal handling: a self-pipe (see Note [Launcher design]) -----------------------------

int g_signal_pipe_write = -1;  // written only by on_signal; set while a SignalGuard lives

void on_signal(int sig) {
  int saved = errno;
  unsigned char byte = static_cast<unsigned char>(sig);
  // A full pipe drops the byte: SIGCHLD is re-checked by every loop turn anyway, and a
  // terminating signal already waiting in the pipe has the same effect.
  [[maybe_unused]] ssize_t n = write(g_signal_pipe_write, &byte, 1);
  errno = saved;
}

// Installs the handlers (and ignores SIGPIPE, so a closed stdout cannot kill the launcher) for
// its lifetime; restores the previous dispositions afterwards.
class SignalGuard {
 public:
  SignalGuard() {
    int fds[2];
    STP_ASSERT(pipe2(fds, O_CLOEXEC | O_NONBLOCK) == 0, "pipe2: ", std::strerror(errno));
    read_fd_ = fds[0];
    g_signal_pipe_write = fds[1];
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    for (int sig : kForwardedSignals) install(sig, sa);
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    install(SIGCHLD, sa);
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    install(SIGPIPE, ignore);
  }
  ~SignalGuard() {
    for (auto& [sig, old] : saved_) sigaction(sig, &old, nullptr);
    close(g_signal_pipe_write);
    g_signal_pipe_write = -1;
    close(read_fd_);
  }
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

  int read_fd() const { return read_fd_; }

 private:
  void install(int sig, const struct sigaction& sa) {
    struct sigaction old {};
    sigaction(sig, &sa, &old);
    saved_.emplace_back(sig, old);
  }

  int read_fd_ = -1;
  std::vector<std::pair<int, struct sigaction>> saved_;
};

// Makes this process the reaper of its orphaned descendants for its lifetime, so what a rank
// started is reparented here (and reaped here) rather than to init.
class SubreaperGuard {
 public:
  SubreaperGuard() {
    prctl(PR_GET_CHILD_SUBREAPER, &was_);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
  }
  ~SubreaperGuard() { prctl(PR_SET_CHILD_SUBREAPER, was_); }
  SubreaperGuard(const SubreaperGuard&) = delete;
  SubreaperGuard& operator=(const SubreaperGuard&) = delete;

 private:
  int was_ = 0;
};

// ---- output ---------------------------------------------------------------------------------

// Writes all of `data` to `fd`; false when the fd is gone (EPIPE, closed), so the caller stops
// writing there. Waits when the fd is non-blocking and full.
bool write_all(int fd, const std::string& data) {
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd, data.data() + done, data.size() - done);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && errno == EAGAIN) {
      struct pollfd p {
        fd, POLLOUT, 0
      };
      poll(&p, 1, -1);
    } else {
      return false;
    }
  }
  return true;
}

// ---- the child side of fork(): async-signal-safe calls only --------------------------------

struct ChildSetup {
  const char* path;
  char* const* argv;
  char* const* envp;
  pid_t parent;
  int stdin_fd;  // /dev/null
  int out_fd;    // pipe write ends, or -1 to inherit
  int err_fd;
  const char* exec_error;  // written to stderr when execve fails
  std::size_t exec_error_len;
};

[[noreturn]] void exec_child(const ChildSetup& s) {
  setpgid(0, 0);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != s.parent) _exit(127);  // the launcher died before prctl took effect
  // Signal state is inherited through exec: start the program with the defaults.
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) sigaction(sig, &dfl, nullptr);
  dup2(s.stdin_fd, 0);
  if (s.out_fd >= 0) dup2(s.out_fd, 1);
  if (s.err_fd >= 0) dup2(s.err_fd, 2);
  // Nothing else of the launcher's (the store's listening socket, other ranks' pipes).
  if (close_range(3, ~0U, 0) != 0) {
    struct rlimit rl {};
    rlim_t hi = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? std::min<rlim_t>(rl.rlim_cur, 1 << 16) : 1024;
    for (rlim_t fd = 3; fd < hi; ++fd) close(static_cast<int>(fd));
  }
  execve(s.path, s.argv, s.envp);
  [[maybe_unused]] ssize_t n = write(2, s.exec_error, s.exec_error_len);
  _exit(127);
}

// ---- the launcher proper --------------------------------------------------------------------

// "r0-3", "r0,2", "r0-2,5": `ranks` (ascending) as a list with runs shortened to ranges.
std::string rank_label(const std::vector<int>& ranks) {
  std::string label = "r";
  for (std::size_t i = 0; i < ranks.size();) {
    std::size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    label += str_cat(i ? "," : "", ranks[i]);
    if (j > i) label += str_cat("-", ranks[j]);
    i = j + 1;
  }
  return label;
}

struct RankProcess {
  explicit RankProcess(int r)
      : rank(r), out(str_cat("[r", r, "] ")), err(str_cat("[r", r, "] "), /*hold_last=*/true) {}
  int rank;
  pid_t pid = -1;
  bool running = false;
  bool failed = false;  // ended other than by exit 0 (stopped ranks included)
  int out_fd = -1;      // read ends of the rank's stdout/stderr pipes; -1 once closed
  int err_fd = -1;
  LinePrefixer out;
  LinePrefixer err;                  // holds the newest line (Note [Launcher design])
  std::size_t err_lines_seen = 0;    // err.lines_held() when err_held_since was taken
  Clock::time_point err_held_since;  // when err's held line came
};

class Launcher {
 public:
  explicit Launcher(const LaunchOptions& options) : options_(options) {}
  ~Launcher() {
    for (auto& r : ranks_) {
      if (r.out_fd >= 0) close(r.out_fd);
      if (r.err_fd >= 0) close(r.err_fd);
    }
  }

  int run();

 private:
  bool spawn(RankProcess& r, int devnull);
  void pump(int& fd, LinePrefixer& prefixer, int to_fd, bool final);
  void reap();
  void release_held();
  void print_final_lines();
  int poll_timeout_ms() const;
  void begin_stop(int sig);
  void on_launcher_signal(int sig);
  int running_count() const {
    return static_cast<int>(std::count_if(ranks_.begin(), ranks_.end(),
                                          [](const RankProcess& r) { return r.running; }));
  }

  const LaunchOptions& options_;
  std::vector<RankProcess> ranks_;
  bool stdout_ok_ = true;  // false after a write to our stdout/stderr failed (reader gone)
  bool stderr_ok_ = true;
  bool stopping_ = false;  // SIGTERM (or the forwarded signal) sent to every rank
  bool killed_ = false;    // SIGKILL sent to every rank
  Clock::time_point kill_at_;
  int exit_code_ = 0;
  std::string message_;  // the one line printed at the end when something went wrong
};

bool Launcher::spawn(RankProcess& r, int devnull) {
  std::vector<std::string> base;
  for (char** e = environ; e && *e; ++e) base.emplace_back(*e);
  std::vector<std::string> env = rank_environment(options_, r.rank, base);
  std::vector<char*> envp, argv;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = options_.command;
  for (auto& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);
  std::string exec_error = str_cat("stp run: rank ", r.rank, ": cannot execute ", args[0], "\n");

  int out[2] = {-1, -1}, err[2] = {-1, -1};
  if (options_.prefix_output) {
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
      message_ =
          str_cat("stp run: could not start rank ", r.rank, ": pipe: ", std::strerror(errno));
      for (int fd : {out[0], out[1], err[0], err[1]}) {
        if (fd >= 0) close(fd);
      }
      return false;
    }
  }
  ChildSetup setup{args[0].c_str(), argv.data(), envp.data(),        getpid(),         devnull,
                   out[1],          err[1],      exec_error.c_str(), exec_error.size()};
  pid_t pid = fork();
  if (pid == 0) exec_child(setup);
  int fork_errno = errno;
  if (out[1] >= 0) close(out[1]);
  if (err[1] >= 0) close(err[1]);
  if (pid < 0) {
    for (int fd : {out[0], err[0]}) {
      if (fd >= 0) close(fd);
    }
    message_ =
        str_cat("stp run: could not start rank ", r.rank, ": fork: ", std::strerror(fork_errno));
    return false;
  }
  setpgid(pid, pid);  // also here, so the group exists before we might signal it
  r.pid = pid;
  r.running = true;
  r.out_fd = out[0];
  r.err_fd = err[0];
  for (int fd : {r.out_fd, r.err_fd}) {
    if (fd >= 0) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  }
  return true;
}

// Reads what `fd` has now and writes its complete lines to `to_fd`; at EOF (or when `final`)
// also writes the unfinished last line and closes `fd`.
void Launcher::pump(int& fd, LinePrefixer& prefixer, int to_fd, bool final) {
  if (fd < 0) return;
  bool& ok = to_fd == 1 ? stdout_ok_ : stderr_ok_;
  char buf[64 * 1024];
  std::string text;
  bool eof = false;
  // Bounded, so one chatty rank cannot starve the others (or, at the end, a process that
  // escaped its group cannot keep us reading).
  const int rounds = final ? 256 : 16;
  for (int round = 0; round < rounds; ++round) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) {
      prefixer.feed(buf, static_cast<std::size_t>(n), text);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    eof = n == 0 || errno != EAGAIN;
    break;
  }
  if (eof || final) {
    prefixer.finish(text);
    close(fd);
    fd = -1;
  }
  if (ok && !text.empty()) ok = write_all(to_fd, text);
}

void Launcher::reap() {
  std::vector<std::pair<int, int>> ended;  // (rank, wait status)
  for (;;) {
    siginfo_t info{};
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) break;
    pid_t pid = info.si_pid;
    auto it = std::find_if(ranks_.begin(), ranks_.end(),
                           [pid](const RankProcess& r) { return r.pid == pid && r.running; });
    // Kill what the rank left behind while its zombie still holds the group id.
    if (it != ranks_.end()) kill(-pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (it == ranks_.end()) continue;
    it->running = false;
    it->failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    ended.emplace_back(it->rank, status);
  }
  std::sort(ended.begin(), ended.end());
  for (auto [rank, status] : ended) {
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (ok || stopping_) continue;
    int others = running_count();
    message_ = str_cat("stp run: rank ", rank, " ", describe_wait_status(status));
    if (others > 0) {
      message_ += str_cat("; stopped the other ", others, others == 1 ? " rank" : " ranks");
    }
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    begin_stop(SIGTERM);
  }
}

// Prints the held stderr lines that are not waiting to be merged: those of ranks that ended
// well, and, while nothing is stopping, those of running ranks held for kHoldFinalLineMs.
void Launcher::release_held() {
  const auto now = Clock::now();
  std::string text;
  for (auto& r : ranks_) {
    if (!r.err.has_held()) continue;
    const bool ended_well = !r.running && !r.failed;
    const bool stale = r.running && !stopping_ &&
                       now - r.err_held_since >= std::chrono::milliseconds(kHoldFinalLineMs);
    if (ended_well || stale) r.err.release(text);
  }
  if (stderr_ok_ && !text.empty()) stderr_ok_ = write_all(2, text);
}

// The end: what is still held, in rank order, each distinct final line of the failed (or
// stopped) ranks once, under all the ranks that wrote it.
void Launcher::print_final_lines() {
  struct Line {
    std::string text;
    std::vector<int> ranks;
    bool merge;  // a failed rank's: other failed ranks with the same text join it
  };
  std::vector<Line> lines;
  for (auto& r : ranks_) {
    if (!r.err.has_held()) continue;
    std::string text = r.err.take_held();
    auto same = std::find_if(lines.begin(), lines.end(),
                             [&](const Line& l) { return r.failed && l.merge && l.text == text; });
    if (same != lines.end()) {
      same->ranks.push_back(r.rank);
    } else {
      lines.push_back({std::move(text), {r.rank}, r.failed});
    }
  }
  std::string out;
  for (const auto& l : lines) out += str_cat("[", rank_label(l.ranks), "] ", l.text);
  if (stderr_ok_ && !out.empty()) stderr_ok_ = write_all(2, out);
}

// Until the next backstop wake-up, the SIGKILL after the grace period, or the next held line
// to release, whichever comes first.
int Launcher::poll_timeout_ms() const {
  auto until = Clock::now() + std::chrono::milliseconds(kBackstopPollMs);
  if (stopping_ && !killed_) until = std::min(until, kill_at_);
  if (!stopping_) {
    for (const auto& r : ranks_) {
      if (r.running && r.err.has_held())
        until = std::min(until, r.err_held_since + std::chrono::milliseconds(kHoldFinalLineMs));
    }
  }
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now());
  return static_cast<int>(std::clamp<long long>(left.count() + 1, 0, kBackstopPollMs));
}

void Launcher::begin_stop(int sig) {
  stopping_ = true;
  if (options_.grace_seconds <= 0) sig = SIGKILL;
  for (auto& r : ranks_) {
    if (r.running) kill(-r.pid, sig);
  }
  killed_ = sig == SIGKILL;
  kill_at_ = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                std::chrono::duration<double>(options_.grace_seconds));
}

void Launcher::on_launcher_signal(int sig) {
  if (stopping_) {  // a second signal, or one during a stop: no more grace
    if (!killed_) begin_stop(SIGKILL);
    return;
  }
  int running = running_count();
  message_ = str_cat("stp run: received ", signal_name(sig), "; stopped ", running,
                     running == 1 ? " rank" : " ranks");
  exit_code_ = 128 + sig;
  begin_stop(sig);
}

// Waits (at most kLeftoverWaitMs) until this process has no children left: the processes that
// ranks started were reparented to us (PR_SET_CHILD_SUBREAPER) and killed with their group.
void reap_leftovers() {
  auto until = Clock::now() + std::chrono::milliseconds(kLeftoverWaitMs);
  for (;;) {
    siginfo_t info{};
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG) != 0) return;  // ECHILD: none left
    if (info.si_pid != 0) continue;
    if (Clock::now() >= until) return;
    usleep(5000);
  }
}

int Launcher::run() {
  SignalGuard signals;
  SubreaperGuard subreaper;
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  STP_ASSERT(devnull >= 0, "open /dev/null: ", std::strerror(errno));
  ranks_.reserve(options_.nproc);
  for (int i = 0; i < options_.nproc; ++i) {
    ranks_.emplace_back(i);
    if (!spawn(ranks_.back(), devnull)) {
      ranks_.pop_back();
      exit_code_ = 1;
      begin_stop(SIGTERM);
      break;
    }
  }
  close(devnull);

  std::vector<struct pollfd> fds;
  while (running_count() > 0) {
    fds.assign(1, {signals.read_fd(), POLLIN, 0});
    for (auto& r : ranks_) {
      for (int fd : {r.out_fd, r.err_fd}) {
        if (fd >= 0) fds.push_back({fd, POLLIN, 0});
      }
    }
    int n = poll(fds.data(), fds.size(), poll_timeout_ms());
    if (n < 0 && errno != EINTR) {  // cannot happen with valid fds; never leave ranks behind
      if (message_.empty()) message_ = str_cat("stp run: poll failed: ", std::strerror(errno));
      if (exit_code_ == 0) exit_code_ = 1;
      if (!killed_) begin_stop(SIGKILL);
      usleep(10000);
    }
    if (n > 0 && (fds[0].revents & POLLIN)) {
      unsigned char sigs[64];
      ssize_t got;
      while ((got = read(signals.read_fd(), sigs, sizeof sigs)) > 0) {
        for (ssize_t i = 0; i < got; ++i) {
          if (sigs[i] != SIGCHLD) on_launcher_signal(sigs[i]);
        }
      }
    }
    // Output before exits, so a rank's last words come before the launcher's verdict.
    for (auto& r : ranks_) {
      pump(r.out_fd, r.out, 1, false);
      pump(r.err_fd, r.err, 2, false);
      if (r.err.lines_held() != r.err_lines_seen) {
        r.err_lines_seen = r.err.lines_held();
        r.err_held_since = Clock::now();
      }
    }
    reap();
    release_held();
    if (stopping_ && !killed_ && Clock::now() >= kill_at_) begin_stop(SIGKILL);
  }
  // Every main process has ended: pass on what is left in the pipes (a process the rank started
  // may have held the write end open; it was killed with the group) and end partial lines.
  for (auto& r : ranks_) {
    pump(r.out_fd, r.out, 1, true);
    pump(r.err_fd, r.err, 2, true);
  }
  print_final_lines();
  reap_leftovers();
  if (!message_.empty()) write_all(2, message_ + "\n");
  return exit_code_;
}

bool is_executable_file(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

}  // namespace

std::string resolve_program(const std::string& program, const std::string& self_exe) {
  STP_CHECK(!program.empty(), "PROGRAM is empty; usage: stp run -n N [--] PROGRAM [ARGS...]");
  if (program == "stp") return self_exe;
  if (program.find('/') != std::string::npos) {
    struct stat st {};
    STP_CHECK(stat(program.c_str(), &st) == 0, "PROGRAM '", program, "' does not exist");
    STP_CHECK(S_ISREG(st.st_mode) && access(program.c_str(), X_OK) == 0, "PROGRAM '", program,
              "' is not an executable file");
    return program;
  }
  const char* path_env = std::getenv("PATH");
  std::string path = path_env ? path_env : "/usr/local/bin:/usr/bin:/bin";
  std::size_t start = 0;
  for (;;) {
    std::size_t end = path.find(':', start);
    std::string dir =
        path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + program;
    if (is_executable_file(candidate)) return candidate;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  throw std::invalid_argument(str_cat("PROGRAM '", program, "' is not an executable on PATH=", path,
                                      "; give its path or a command on PATH"));
}

std::vector<std::string> rank_environment(const LaunchOptions& options, int rank,
                                          const std::vector<std::string>& base) {
  std::vector<std::pair<std::string, std::string>> set = {
      {"RANK", std::to_string(rank)},
      {"LOCAL_RANK", std::to_string(rank)},
      {"WORLD_SIZE", std::to_string(options.nproc)},
      {"LOCAL_WORLD_SIZE", std::to_string(options.nproc)},
      {"GROUP_RANK", "0"},
      {"GROUP_WORLD_SIZE", "1"},
      {"ROLE_NAME", "default"},
      {"ROLE_RANK", std::to_string(rank)},
      {"ROLE_WORLD_SIZE", std::to_string(options.nproc)},
      {"MASTER_ADDR", options.master_addr},
      {"MASTER_PORT", std::to_string(options.master_port)},
      {"TORCHELASTIC_USE_AGENT_STORE", "True"},  // the launcher hosts the store
      {"TORCHELASTIC_RUN_ID", "none"},
      {"TORCHELASTIC_RESTART_COUNT", "0"},
      {"TORCHELASTIC_MAX_RESTARTS", "0"},
      {"STP_LAUNCHER", "1"},
  };
  auto name_of = [](const std::string& entry) { return entry.substr(0, entry.find('=')); };
  bool user_omp = std::any_of(base.begin(), base.end(), [&](const std::string& e) {
    return name_of(e) == "OMP_NUM_THREADS";
  });
  if (!user_omp) {
    set.emplace_back("OMP_NUM_THREADS", "1");
    set.emplace_back("STP_OMP_FROM_LAUNCHER", "1");  // stp's ranks divide the cores instead
  }
  std::vector<std::string> env;
  for (const auto& e : base) {
    std::string name = name_of(e);
    bool overridden =
        std::any_of(set.begin(), set.end(), [&](const auto& kv) { return kv.first == name; });
    if (!overridden) env.push_back(e);
  }
  for (const auto& [name, value] : set) env.push_back(name + "=" + value);
  return env;
}

std::string describe_wait_status(int status) {
  if (WIFEXITED(status)) return str_cat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    return str_cat("killed by signal ", sig, " (", signal_name(sig), ")",
                   WCOREDUMP(status) ? ", core dumped" : "");
  }
  return str_cat("ended with wait status ", status);
}

void LinePrefixer::feed(const char* data, std::size_t size, std::string& out) {
  std::size_t pos = 0;
  while (pos < size) {
    const void* nl = std::memchr(data + pos, '\n', size - pos);
    if (!nl) {
      held_.append(data + pos, size - pos);
      break;
    }
    std::size_t end = static_cast<std::size_t>(static_cast<const char*>(nl) - data) + 1;
    if (hold_last_ && !mid_line_) {
      held_.append(data + pos, end - pos);
      hold(std::move(held_), out);
    } else {
      if (!mid_line_) out += prefix_;
      out += held_;
      out.append(data + pos, end - pos);
    }
    held_.clear();
    mid_line_ = false;
    pos = end;
  }
  if (held_.size() > kMaxHeld) {
    if (!mid_line_) {
      release(out);
      out += prefix_;
    }
    out += held_;
    held_.clear();
    mid_line_ = true;
  }
}

void LinePrefixer::finish(std::string& out) {
  if (held_.empty() && !mid_line_) return;
  if (hold_last_ && !mid_line_) {
    hold(held_ + '\n', out);
  } else {
    if (!mid_line_) out += prefix_;
    out += held_;
    out += '\n';
  }
  held_.clear();
  mid_line_ = false;
}

void LinePrefixer::hold(std::string line, std::string& out) {
  release(out);
  last_ = std::move(line);
  ++lines_held_;
}

void LinePrefixer::release(std::string& out) {
  if (last_.empty()) return;
  out += prefix_;
  out += last_;
  last_.clear();
}

std::string LinePrefixer::take_held() { return std::exchange(last_, std::string()); }

int launch_ranks(const LaunchOptions& options) { return Launcher(options).run(); }

}  // namespace stp::apps
