// `stp run`: the local launcher (apps/launcher.h, apps/cmd_run.cpp), driven through the built
// binary with small shell programs as ranks.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>

#include "cli_test_util.h"

namespace stp::testing {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// The numbers after "pid " in `output`: what the rank programs printed as `echo pid $$`.
std::vector<pid_t> printed_pids(const std::string& output) {
  std::vector<pid_t> pids;
  std::regex re("pid ([0-9]+)");
  for (std::sregex_iterator it(output.begin(), output.end(), re), end; it != end; ++it) {
    pids.push_back(static_cast<pid_t>(std::stol((*it)[1])));
  }
  return pids;
}

// True while `pid` is a live process (a zombie counts as gone).
bool alive(pid_t pid) {
  if (kill(pid, 0) != 0) return false;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  auto paren = all.rfind(')');
  return paren == std::string::npos || all.size() < paren + 3 || all[paren + 2] != 'Z';
}

void expect_all_gone(const std::vector<pid_t>& pids, const std::string& output) {
  for (pid_t pid : pids)
    EXPECT_FALSE(alive(pid)) << "pid " << pid << " outlived stp run\n" << output;
}

// `stp <args>` started in the background, stdout+stderr into a pipe we read as it comes.
class Background {
 public:
  explicit Background(const std::string& args) {
    int fds[2];
    EXPECT_EQ(pipe2(fds, O_CLOEXEC), 0);
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], 1);
      dup2(fds[1], 2);
      std::string cmd = "exec " + std::string(STP_CLI) + " " + args;
      execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    close(fds[1]);
    fd_ = fds[0];
  }
  ~Background() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) close(fd_);
  }

  pid_t pid() const { return pid_; }
  const std::string& output() const { return output_; }

  // Reads until `needle` occurs `count` times in the output or `seconds` pass.
  bool read_until(const std::string& needle, int count, double seconds) {
    auto t0 = Clock::now();
    for (;;) {
      int found = 0;
      for (auto p = output_.find(needle); p != std::string::npos; p = output_.find(needle, p + 1)) {
        ++found;
      }
      if (found >= count) return true;
      double left = seconds - seconds_since(t0);
      if (left <= 0 || !read_some(static_cast<int>(left * 1000) + 1)) return false;
    }
  }

  // Waits for exit (reading all output); the exit code, or -1 after `seconds` (then SIGKILL).
  int wait(double seconds) {
    auto t0 = Clock::now();
    while (read_some(std::max(1, static_cast<int>((seconds - seconds_since(t0)) * 1000)))) {
      if (seconds_since(t0) > seconds) break;
    }
    for (;;) {
      int status = 0;
      pid_t got = waitpid(pid_, &status, WNOHANG);
      if (got == pid_) {
        reaped_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (seconds_since(t0) > seconds) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

 private:
  // One read with a poll timeout; false at EOF or timeout.
  bool read_some(int timeout_ms) {
    struct pollfd p {
      fd_, POLLIN, 0
    };
    if (poll(&p, 1, timeout_ms) <= 0) return false;
    char buf[4096];
    ssize_t n = read(fd_, buf, sizeof buf);
    if (n <= 0) return false;
    output_.append(buf, static_cast<std::size_t>(n));
    return true;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  bool reaped_ = false;
  std::string output_;
};

// Sets an environment variable for one test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_)
      setenv(name_.c_str(), old_->c_str(), 1);
    else
      unsetenv(name_.c_str());
  }

 private:
  std::string name_;
  std::optional<std::string> old_;
};

TEST(Run, RanksGetTheTorchrunEnvironmentAndPrefixedOutput) {
  ScopedEnv omp("OMP_NUM_THREADS", nullptr);
  CliResult r = run_cli(
      "run -n 3 -- sh -c 'echo env $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR "
      "$MASTER_PORT $TORCHELASTIC_USE_AGENT_STORE $STP_LAUNCHER $OMP_NUM_THREADS'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<std::string> lines = lines_of(r.output);
  ASSERT_EQ(lines.size(), 3u) << r.output;
  std::string port;
  for (int rank = 0; rank < 3; ++rank) {
    std::regex re("\\[r" + std::to_string(rank) + "\\] env " + std::to_string(rank) + " 3 " +
                  std::to_string(rank) + " 3 127\\.0\\.0\\.1 ([0-9]+) True 1 1");
    std::smatch m;
    bool found = false;
    for (const auto& line : lines) {
      if (std::regex_match(line, m, re)) {
        found = true;
        if (port.empty()) port = m[1];
        EXPECT_EQ(m[1], port) << "ranks saw different MASTER_PORTs\n" << r.output;
      }
    }
    EXPECT_TRUE(found) << "no correct line for rank " << rank << "\n" << r.output;
  }
  EXPECT_GT(std::stoi(port), 0);
}

// A port that was free a moment ago (the OS's pick for port 0).
int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    close(fd);
    return -1;
  }
  close(fd);
  return ntohs(addr.sin_port);
}

TEST(Run, KeepsTheUsersOmpNumThreadsAndMasterPort) {
  ScopedEnv omp("OMP_NUM_THREADS", "7");
  int port = free_port();
  ASSERT_GT(port, 0);
  CliResult r = run_cli("run -n 1 --master-port " + std::to_string(port) +
                        " -- sh -c 'echo $OMP_NUM_THREADS $MASTER_PORT'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "[r0] 7 " + std::to_string(port) + "\n");
}

TEST(Run, StderrAndAPartialLastLineArePrefixed) {
  CliResult r = run_cli("run -n 2 -- sh -c 'echo out$RANK; echo err$RANK >&2; printf tail$RANK'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* want : {"[r0] out0\n", "[r0] err0\n", "[r0] tail0\n", "[r1] out1\n",
                           "[r1] err1\n", "[r1] tail1\n"}) {
    EXPECT_NE(r.output.find(want), std::string::npos) << want << " missing in\n" << r.output;
  }
  EXPECT_EQ(lines_of(r.output).size(), 6u) << r.output;
}

TEST(Run, LinesOfConcurrentRanksNeverInterleave) {
  // 2 ranks x 3000 lines of ~120 bytes, written by awk in stdio blocks that end mid-line, and
  // far more than a pipe buffer: the launcher's reads end mid-line too.
  CliResult r = run_cli(R"(run -n 2 -- sh -c 'awk -v r=$RANK "BEGIN { for (i = 0; i < 3000; i++) )"
                        R"(printf \"rank %d line %d %0100d\n\", r, i, 0 }"')");
  ASSERT_EQ(r.exit_code, 0) << r.output.substr(0, 2000);
  std::vector<std::string> lines = lines_of(r.output);
  ASSERT_EQ(lines.size(), 6000u) << r.output.substr(0, 2000);
  std::regex re("\\[r([01])\\] rank \\1 line [0-9]+ 0{100}");
  int bad = 0;
  for (const auto& line : lines) {
    if (!std::regex_match(line, re) && bad++ < 3) ADD_FAILURE() << "mangled line: " << line;
  }
  EXPECT_EQ(bad, 0);
}

TEST(Run, AVeryLongLineKeepsOnePrefix) {
  CliResult r =
      run_cli("run -n 1 -- sh -c 'head -c 200000 /dev/zero | tr \"\\\\0\" x; echo; echo next'");
  ASSERT_EQ(r.exit_code, 0) << r.output.substr(0, 200);
  EXPECT_EQ(r.output, "[r0] " + std::string(200000, 'x') + "\n[r0] next\n");
}

TEST(Run, NoPrefixPassesOutputThrough) {
  CliResult r = run_cli("run -n 2 --no-prefix -- sh -c 'echo plain$RANK'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("plain0\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("plain1\n"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("[r"), std::string::npos) << r.output;
}

TEST(Run, OutputAppearsWhileTheRankRuns) {
  Background launcher("run -n 1 -- sh -c 'echo early; sleep 1; echo late'");
  EXPECT_TRUE(launcher.read_until("[r0] early\n", 1, 5.0)) << launcher.output();
  EXPECT_EQ(launcher.output().find("late"), std::string::npos) << "output came only at exit";
  EXPECT_EQ(launcher.wait(10), 0) << launcher.output();
}

TEST(Run, TheStoreIsListeningOnMasterPortWhileRanksRun) {
  if (access("/bin/bash", X_OK) != 0) GTEST_SKIP() << "needs /bin/bash for /dev/tcp";
  CliResult r = run_cli(
      "run -n 2 -- /bin/bash -c 'exec 3<>/dev/tcp/$MASTER_ADDR/$MASTER_PORT && echo connected'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[r0] connected\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[r1] connected\n"), std::string::npos) << r.output;
}

// The real protocol: torch.distributed ranks rendezvous through the launcher's TCPStore as
// clients (TORCHELASTIC_USE_AGENT_STORE=True) and all-reduce over gloo.
TEST(Run, PythonTorchRanksRendezvousThroughTheLauncherStore) {
  const char* env_python = std::getenv("STP_TEST_PYTHON");
  std::string python = env_python ? env_python : "/opt/stp-venv/bin/python";
  if (access(python.c_str(), X_OK) != 0) {
    GTEST_SKIP() << "needs a Python with torch (set STP_TEST_PYTHON; tried " << python << ")";
  }
  char dir[] = "/tmp/stp_run_testXXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  std::string script = std::string(dir) + "/pg.py";
  std::ofstream(script) << "import torch, torch.distributed as dist\n"
                           "dist.init_process_group('gloo')\n"
                           "t = torch.tensor([dist.get_rank() + 1.0])\n"
                           "dist.all_reduce(t)\n"
                           "print('rank', dist.get_rank(), 'sum', int(t.item()), flush=True)\n"
                           "dist.destroy_process_group()\n";
  CliResult r = run_cli("run -n 2 -- " + python + " " + script);
  std::remove(script.c_str());
  rmdir(dir);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[r0] rank 0 sum 3\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[r1] rank 1 sum 3\n"), std::string::npos) << r.output;
}

TEST(Run, AFailingRankStopsTheOthersAndIsNamed) {
  auto t0 = Clock::now();
  // Ranks 0, 1, 3 sleep (with a child in the background, to check the whole group goes);
  // rank 2 exits with code 3 once the others have had time to print their pids. The long grace
  // period makes sure the others stopped on SIGTERM, not on the SIGKILL after it.
  CliResult r = run_cli(
      "run -n 4 --grace-seconds 30 -- sh -c 'if [ $RANK = 2 ]; then echo pid $$; sleep 1; exit 3; "
      "fi; "
      "sleep 60 & echo pid $!; echo pid $$; wait'");
  double took = seconds_since(t0);
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_LT(took, 5.0) << r.output;
  EXPECT_EQ(lines_of(r.output).back(),
            "stp run: rank 2 exited with code 3; stopped the other 3 ranks")
      << r.output;
  std::vector<pid_t> pids = printed_pids(r.output);
  EXPECT_EQ(pids.size(), 7u) << r.output;
  expect_all_gone(pids, r.output);
}

TEST(Run, WhatASuccessfulRankLeftRunningIsStopped) {
  CliResult r = run_cli("run -n 2 -- sh -c 'sleep 60 & echo pid $!'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::vector<pid_t> pids = printed_pids(r.output);
  EXPECT_EQ(pids.size(), 2u) << r.output;
  expect_all_gone(pids, r.output);
}

TEST(Run, ARankKilledBySignalIsReportedWithTheSignal) {
  CliResult r = run_cli(
      "run -n 3 -- sh -c 'echo pid $$; if [ $RANK = 1 ]; then sleep 0.5; kill -9 $$; fi; "
      "exec sleep 60'");
  EXPECT_EQ(r.exit_code, 128 + 9) << r.output;
  EXPECT_NE(
      r.output.find("stp run: rank 1 killed by signal 9 (SIGKILL); stopped the other 2 ranks"),
      std::string::npos)
      << r.output;
  expect_all_gone(printed_pids(r.output), r.output);
}

TEST(Run, ARankIgnoringSigtermIsKilledAfterTheGracePeriod) {
  auto t0 = Clock::now();
  CliResult r = run_cli(
      "run -n 2 --grace-seconds 0.5 -- sh -c 'if [ $RANK = 1 ]; then sleep 0.5; exit 1; fi; "
      "trap \"\" TERM; echo pid $$; sleep 60 & echo pid $!; wait'");
  double took = seconds_since(t0);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_GE(took, 1.0) << r.output;  // 0.5 s until the failure + 0.5 s grace
  EXPECT_LT(took, 4.0) << r.output;
  EXPECT_NE(r.output.find("stp run: rank 1 exited with code 1; stopped the other 1 rank"),
            std::string::npos)
      << r.output;
  std::vector<pid_t> pids = printed_pids(r.output);
  EXPECT_EQ(pids.size(), 2u) << r.output;
  expect_all_gone(pids, r.output);
}

TEST(Run, SigtermToTheLauncherStopsAllRanks) {
  Background launcher(
      "run -n 3 --grace-seconds 30 -- sh -c 'sleep 60 & echo pid $!; echo pid $$; wait'");
  ASSERT_TRUE(launcher.read_until("pid ", 6, 5.0)) << launcher.output();
  auto t0 = Clock::now();
  ASSERT_EQ(kill(launcher.pid(), SIGTERM), 0);
  int code = launcher.wait(10.0);
  EXPECT_LT(seconds_since(t0), 5.0);
  EXPECT_EQ(code, 128 + SIGTERM) << launcher.output();
  EXPECT_NE(launcher.output().find("stp run: received SIGTERM; stopped 3 ranks"), std::string::npos)
      << launcher.output();
  expect_all_gone(printed_pids(launcher.output()), launcher.output());
}

TEST(Run, SigintToTheLauncherIsForwarded) {
  // The rank turns SIGINT into exit 0 and says so: proof it got the signal from the launcher.
  Background launcher(
      "run -n 2 -- sh -c 'trap \"echo got INT; exit 0\" INT; echo ready; "
      "while :; do sleep 0.1; done'");
  ASSERT_TRUE(launcher.read_until("ready", 2, 5.0)) << launcher.output();
  ASSERT_EQ(kill(launcher.pid(), SIGINT), 0);
  EXPECT_EQ(launcher.wait(5.0), 128 + SIGINT) << launcher.output();
  EXPECT_NE(launcher.output().find("[r0] got INT"), std::string::npos) << launcher.output();
  EXPECT_NE(launcher.output().find("[r1] got INT"), std::string::npos) << launcher.output();
}

TEST(Run, AllRanksSucceedingExitsZero) {
  CliResult r = run_cli("run -n 4 -- true");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "");
}

TEST(Run, BareStpIsThisBinaryEvenOffPath) {
  ScopedEnv path("PATH", "/usr/bin:/bin");
  CliResult r = run_cli("run -n 2 -- stp --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[r0] usage: stp <command>"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[r1] usage: stp <command>"), std::string::npos) << r.output;
}

TEST(Run, BadOptionsAreOneLineWithExitTwo) {
  expect_rejected({
      {"run -n 0 -- true", "-n=0 must be in [1, 1024]"},
      {"run -n 5000 -- true", "-n=5000 must be in [1, 1024]"},
      {"run -- true", "--nproc-per-node is required"},
      {"run -n 2 --bogus true", "unknown option '--bogus'"},
      {"run -n 2 --master-port 70000 -- true", "--master-port=70000 must be in [0, 65535]"},
      {"run -n 2 --grace-seconds -1 -- true", "--grace-seconds=-1 must be in [0, 3600]"},
  });
}

TEST(Run, AMissingOrBadProgramIsOneLineWithExitTwo) {
  char file[] = "/tmp/stp_run_not_executableXXXXXX";
  int fd = mkstemp(file);
  ASSERT_GE(fd, 0);
  close(fd);
  expect_rejected({
      {"run -n 2", "missing PROGRAM"},
      {"run -n 2 -- no_such_program_stp_test",
       "'no_such_program_stp_test' is not an executable on PATH"},
      {"run -n 2 -- " + std::string(file), "' is not an executable file"},
      {"run -n 2 -- /no/such/dir/prog", "'/no/such/dir/prog' does not exist"},
  });
  std::remove(file);
}

TEST(Run, ABusyMasterPortIsABadArgument) {
  Background holder("run -n 1 -- sh -c 'echo port $MASTER_PORT; exec sleep 30'");
  ASSERT_TRUE(holder.read_until("\n", 1, 5.0)) << holder.output();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(holder.output(), m, std::regex("port ([0-9]+)")))
      << holder.output();
  CliResult r = run_cli("run -n 1 --master-port " + m[1].str() + " -- true");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(lines_of(r.output).size(), 1u) << r.output;
  EXPECT_NE(r.output.find("--master-port=" + m[1].str() + " cannot be used"), std::string::npos)
      << r.output;
}

TEST(Run, RanksDieWithAKilledLauncher) {
  Background launcher("run -n 2 -- sh -c 'echo pid $$; exec sleep 30'");
  ASSERT_TRUE(launcher.read_until("pid ", 2, 5.0)) << launcher.output();
  ASSERT_EQ(kill(launcher.pid(), SIGKILL), 0);  // no chance to clean up: PR_SET_PDEATHSIG does
  EXPECT_EQ(launcher.wait(5.0), 128 + SIGKILL);
  std::vector<pid_t> pids = printed_pids(launcher.output());
  ASSERT_EQ(pids.size(), 2u) << launcher.output();
  auto t0 = Clock::now();
  while ((alive(pids[0]) || alive(pids[1])) && seconds_since(t0) < 2.0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  expect_all_gone(pids, launcher.output());
}

// A shell snippet for rank programs: wait (at most 5 s) until every one of `n` ranks has
// touched its file in `dir`, so that all have written their lines before any exits.
std::string barrier(const std::string& dir, int n) {
  return "touch " + dir + "/$RANK; i=0; while [ $(ls " + dir + " | wc -l) -lt " +
         std::to_string(n) + " ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done";
}

std::string temp_barrier_dir() {
  char dir[] = "/tmp/stp_run_barrierXXXXXX";
  EXPECT_NE(mkdtemp(dir), nullptr);
  return dir;
}

int count_of(const std::string& text, const std::string& needle) {
  int n = 0;
  for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

// Issue 11: an error every rank hits is one line, prefixed with all the ranks that printed it.
TEST(Run, TheSameFinalErrorOfEveryRankIsPrintedOnce) {
  std::string dir = temp_barrier_dir();
  CliResult r =
      run_cli("run -n 4 -- sh -c 'echo \"progress $RANK\" >&2; echo \"stp x: error: bad\" >&2; " +
              barrier(dir, 4) + "; exit 2'");
  std::filesystem::remove_all(dir);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(count_of(r.output, "stp x: error: bad"), 1) << r.output;
  EXPECT_NE(r.output.find("[r0-3] stp x: error: bad\n"), std::string::npos) << r.output;
  for (int rank = 0; rank < 4; ++rank) {  // earlier lines are untouched
    std::string want = "[r" + std::to_string(rank) + "] progress " + std::to_string(rank) + "\n";
    EXPECT_NE(r.output.find(want), std::string::npos) << want << " missing in\n" << r.output;
  }
  EXPECT_EQ(lines_of(r.output).back().rfind("stp run: rank ", 0), 0u) << r.output;
}

TEST(Run, DifferentFinalErrorsKeepTheirOwnLines) {
  std::string dir = temp_barrier_dir();
  CliResult r = run_cli(
      "run -n 4 -- sh -c 'if [ $RANK = 2 ]; then echo \"error: two\" >&2; else echo \"error: "
      "other\" >&2; fi; " +
      barrier(dir, 4) + "; exit 1'");
  std::filesystem::remove_all(dir);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("[r0-1,3] error: other\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[r2] error: two\n"), std::string::npos) << r.output;
  EXPECT_EQ(count_of(r.output, "error: "), 2) << r.output;
}

// Holding the last stderr line back costs a healthy rank at most about a second, and ranks
// that succeed keep their own lines.
TEST(Run, ARunningRanksLastStderrLineStillAppearsAndSuccessIsNotMerged) {
  Background launcher("run -n 1 -- sh -c 'echo warning >&2; sleep 4; echo done'");
  EXPECT_TRUE(launcher.read_until("[r0] warning\n", 1, 3.0)) << launcher.output();
  EXPECT_EQ(launcher.output().find("done"), std::string::npos) << "held until the rank ended";
  EXPECT_EQ(launcher.wait(10), 0) << launcher.output();

  CliResult r = run_cli("run -n 2 -- sh -c 'echo same >&2'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[r0] same\n"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[r1] same\n"), std::string::npos) << r.output;
}

// stp's own ranks tell the launcher's OMP_NUM_THREADS=1 from the user's.
TEST(Run, MarksTheOmpNumThreadsItSets) {
  {
    ScopedEnv omp("OMP_NUM_THREADS", nullptr);
    CliResult r =
        run_cli("run -n 1 -- sh -c 'echo $OMP_NUM_THREADS ${STP_OMP_FROM_LAUNCHER:-unset}'");
    EXPECT_EQ(r.output, "[r0] 1 1\n");
  }
  ScopedEnv omp("OMP_NUM_THREADS", "3");
  CliResult r =
      run_cli("run -n 1 -- sh -c 'echo $OMP_NUM_THREADS ${STP_OMP_FROM_LAUNCHER:-unset}'");
  EXPECT_EQ(r.output, "[r0] 3 unset\n");
}

}  // namespace
}  // namespace stp::testing
