// `stp run -n N [--] PROGRAM ARGS...`: the local launcher. Hosts the rendezvous store (a
// c10d::TCPStore server on 127.0.0.1) and starts N ranks with the torchrun environment; the
// process management is apps/launcher.h. docs/launch.md shows torchrun/mpirun/srun equivalents.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cerrno>
#include <chrono>
#include <climits>
#include <cstring>
#include <memory>

#include "cli.h"
#include "command.h"
#include "common/check.h"
#include "launcher.h"

namespace stp::apps {
namespace {

constexpr double kMaxGraceSeconds = 3600.0;
constexpr std::chrono::milliseconds kStoreTimeout{300'000};  // ms; the store's own client ops

std::string self_exe() {
  char buf[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  STP_ASSERT(n > 0, "readlink /proc/self/exe: ", std::strerror(errno));
  return std::string(buf, static_cast<std::size_t>(n));
}

std::string first_line(const std::exception& e) {
  std::string msg = e.what();
  if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
  return msg;
}

// A socket bound to 127.0.0.1:port (0: a free port the OS picks), so the store listens on the
// loopback interface only: a local job's rendezvous is not reachable from the network.
int bind_loopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  STP_ASSERT(fd >= 0, "socket: ", std::strerror(errno));
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // a port in TIME_WAIT is fine
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(fd, SOMAXCONN) != 0) {
    int err = errno;
    close(fd);
    STP_CHECK(port == 0, "--master-port=", port, " cannot be used: 127.0.0.1:", port, ": ",
              std::strerror(err), "; choose a free port in [1, 65535] or 0 (the default) for any");
    throw std::runtime_error(
        str_cat("no free port on 127.0.0.1 for the rendezvous store: ", std::strerror(err)));
  }
  return fd;
}

// The rendezvous store every rank connects to as a client (TORCHELASTIC_USE_AGENT_STORE=True).
std::unique_ptr<c10d::TCPStore> host_store(const LaunchOptions& options, int requested_port) {
  int fd = bind_loopback(requested_port);
  sockaddr_in addr{};
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  c10d::TCPStoreOptions so;
  so.port = ntohs(addr.sin_port);
  so.isServer = true;
  so.numWorkers = options.nproc;
  so.waitWorkers = false;
  so.timeout = kStoreTimeout;
  so.masterListenFd = fd;  // the store owns it from here
  try {
    return std::make_unique<c10d::TCPStore>(options.master_addr, so);
  } catch (const std::exception& e) {
    throw std::runtime_error(str_cat("could not start the rendezvous store on ",
                                     options.master_addr, ":", so.port, ": ", first_line(e)));
  }
}

int run_main(const std::vector<std::string>& args) {
  CLI::App app{
      "Start N local ranks of PROGRAM with the torchrun environment.\n"
      "usage: stp run -n N [options] [--] PROGRAM [ARGS...]\n"
      "Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1,\n"
      "MASTER_PORT (a store hosted by this launcher; TORCHELASTIC_USE_AGENT_STORE=True),\n"
      "STP_LAUNCHER=1 and OMP_NUM_THREADS=1 unless set. A bare `stp` as PROGRAM is this binary.\n"
      "When a rank fails, the others are stopped and stp run exits with its code; a last\n"
      "stderr line that several failed ranks share is printed once, as \"[r0-3] ...\".",
      "stp run"};
  LaunchOptions options;
  int nproc = 0;
  int master_port = 0;
  bool no_prefix = false;
  app.add_option("-n,--nproc-per-node", nproc,
                 "number of ranks to start, 1.." + std::to_string(kMaxLocalRanks))
      ->required();
  app.add_option("--master-port", master_port,
                 "port of the rendezvous store (listening on 127.0.0.1 only); 0 = any free port")
      ->capture_default_str();
  app.add_flag("--no-prefix", no_prefix,
               "do not prefix output lines with [rN]; ranks write to stdout/stderr directly");
  app.add_option("--grace-seconds", options.grace_seconds,
                 "seconds between SIGTERM and SIGKILL when stopping ranks")
      ->capture_default_str();
  app.prefix_command();  // everything from PROGRAM on belongs to PROGRAM
  app.footer("See docs/launch.md for torchrun, mpirun and srun.");
  if (int rc = parse(app, args); rc >= 0) return rc;

  std::vector<std::string> command = app.remaining();
  bool separated = !command.empty() && command.front() == "--";
  if (separated) command.erase(command.begin());
  STP_CHECK(nproc >= 1 && nproc <= kMaxLocalRanks, "-n=", nproc, " must be in [1, ", kMaxLocalRanks,
            "]");
  STP_CHECK(master_port >= 0 && master_port <= 65535, "--master-port=", master_port,
            " must be in [0, 65535] (0: any free port)");
  STP_CHECK(options.grace_seconds >= 0 && options.grace_seconds <= kMaxGraceSeconds,
            "--grace-seconds=", options.grace_seconds, " must be in [0, ", kMaxGraceSeconds, "]");
  STP_CHECK(!command.empty(),
            "missing PROGRAM; usage: stp run -n N [options] [--] PROGRAM [ARGS...]");
  STP_CHECK(separated || command.front().rfind('-', 0) != 0, "unknown option '", command.front(),
            "'; options are -n, --master-port, --no-prefix, --grace-seconds (put `--` before a "
            "PROGRAM that starts with '-')");
  command.front() = resolve_program(command.front(), self_exe());

  options.nproc = nproc;
  options.command = std::move(command);
  options.prefix_output = !no_prefix;
  auto store = host_store(options, master_port);
  options.master_port = store->getPort();
  return launch_ranks(options);
}

STP_REGISTER_COMMAND("run", "start N local ranks of a program (torchrun-compatible launcher)",
                     run_main);

}  // namespace
}  // namespace stp::apps
