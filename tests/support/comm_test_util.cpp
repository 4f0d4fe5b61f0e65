#include "comm_test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace stp::testing {

void run_ranks(int world_size, const engine::CommOptions& options,
               const std::function<void(engine::World&)>& fn) {
  engine::run_in_process(world_size, options,
                         [&](std::unique_ptr<engine::World> world) { fn(*world); });
}

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    throw std::runtime_error("bind failed while looking for a free port");
  }
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

bool is_spawned_child() { return std::getenv("STP_TEST_CHILD") != nullptr; }

std::vector<int> spawn_ranks(int world_size, const std::string& test_filter,
                             const std::vector<std::string>& extra_env) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) throw std::runtime_error("cannot read /proc/self/exe");
  exe[n] = '\0';
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int r = 0; r < world_size; ++r) {
    std::vector<std::string> envs;
    for (char** e = environ; *e; ++e) envs.emplace_back(*e);
    envs.push_back("RANK=" + std::to_string(r));
    envs.push_back("LOCAL_RANK=" + std::to_string(r));
    envs.push_back("WORLD_SIZE=" + std::to_string(world_size));
    envs.push_back("MASTER_ADDR=127.0.0.1");
    envs.push_back("MASTER_PORT=" + std::to_string(port));
    envs.push_back("STP_TEST_CHILD=1");
    envs.push_back("OMP_NUM_THREADS=1");
    for (const auto& e : extra_env) envs.push_back(e);
    std::vector<char*> envp;
    for (auto& e : envs) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string filter = "--gtest_filter=" + test_filter;
    std::vector<char*> argv{exe, filter.data(), nullptr};
    pid_t pid;
    if (posix_spawn(&pid, exe, nullptr, nullptr, argv.data(), envp.data()) != 0)
      throw std::runtime_error("posix_spawn failed");
    pids.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  return codes;
}

}  // namespace stp::testing
