#include "engine/comm.h"

#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef STP_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
// The class layout above depends on nccl.h's version: it must be the one torch was built with
// (gpu-review item 5; cmake/StpDeps.cmake takes the header from the torch wheel).
static_assert(NCCL_VERSION_CODE == STP_TORCH_NCCL_VERSION_CODE,
              "nccl.h is not the torch wheel's: reconfigure (cmake/StpDeps.cmake)");
#endif

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>

#include "common/check.h"
#include "common/enum_names.h"

namespace stp::engine {
namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

int env_int(const char* name, int fallback, int lo, int hi) {
  auto v = env(name);
  if (!v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v->c_str(), &end, 10);
  STP_CHECK(end && *end == '\0' && x >= lo && x <= hi, "environment variable ", name, "='", *v,
            "' must be an integer in [", lo, ", ", hi, "]");
  return static_cast<int>(x);
}

std::string join(const std::vector<int>& xs) {
  std::ostringstream os;
  for (std::size_t i = 0; i < xs.size(); ++i) os << (i ? "," : "") << xs[i];
  return os.str();
}

bool is_loopback(const std::string& host) {
  return host == "localhost" || host.rfind("127.", 0) == 0 || host == "::1";
}

}  // namespace

LaunchEnv launch_env_from_environment() {
  LaunchEnv e;
  bool ompi = !env("RANK") && env("OMPI_COMM_WORLD_RANK");
  const int kMaxRanks = 1 << 20;
  e.world_size = env_int(ompi ? "OMPI_COMM_WORLD_SIZE" : "WORLD_SIZE", 1, 1, kMaxRanks);
  e.rank = env_int(ompi ? "OMPI_COMM_WORLD_RANK" : "RANK", 0, 0, e.world_size - 1);
  e.local_rank = env_int(ompi ? "OMPI_COMM_WORLD_LOCAL_RANK" : "LOCAL_RANK", 0, 0, kMaxRanks);
  e.master_addr = env("MASTER_ADDR").value_or("127.0.0.1");
  e.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  auto agent = env("TORCHELASTIC_USE_AGENT_STORE");
  e.agent_store = agent && (*agent == "True" || *agent == "true" || *agent == "1");
  e.launched = env("WORLD_SIZE").has_value() || env("OMPI_COMM_WORLD_SIZE").has_value();
  // Positive integers, or 0 for unset or malformed (OpenMP ignores those too). OMP_NUM_THREADS
  // may be a list ("4,2" for nested levels): its first entry is the outer level's.
  auto positive = [](const char* name) {
    auto text = env(name);
    if (!text) return 0;
    char* end = nullptr;
    long v = std::strtol(text->c_str(), &end, 10);
    bool whole = end != text->c_str() && (*end == '\0' || *end == ',');
    return whole && v > 0 && v <= kMaxRanks ? static_cast<int>(v) : 0;
  };
  e.local_world_size = positive("LOCAL_WORLD_SIZE");
  if (e.local_world_size == 0) e.local_world_size = positive("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (env("STP_OMP_FROM_LAUNCHER").value_or("") != "1")
    e.omp_num_threads = positive("OMP_NUM_THREADS");
  return e;
}

const char* to_string(CommBackend backend) {
  static constexpr EnumName<CommBackend> kNames[] = {
      {CommBackend::kAuto, "auto"}, {CommBackend::kGloo, "gloo"}, {CommBackend::kNccl, "nccl"}};
  return name_of(kNames, backend);
}

CommBackend resolve_backend(CommBackend requested, bool cuda) {
  if (requested == CommBackend::kAuto) return cuda ? CommBackend::kNccl : CommBackend::kGloo;
  // Gloo with CUDA stages through host memory (Note [Gloo with CUDA tensors]).
  STP_CHECK(!(requested == CommBackend::kNccl && !cuda),
            "comm backend nccl with a model on the CPU: NCCL needs CUDA tensors; use gloo or auto");
  return requested;
}

int pick_cuda_device(int local_rank, int visible_devices) {
  STP_CHECK(visible_devices >= 1, "run.device=cuda but this process sees no GPU");
  if (visible_devices == 1) return 0;  // one GPU bound to this rank (srun, mpirun)
  STP_CHECK(local_rank >= 0 && local_rank < visible_devices, "local rank ", local_rank,
            " has no GPU of its own: this process sees ", visible_devices, " GPUs (ranks 0..",
            visible_devices - 1,
            " on this host); start at most that many ranks per host, or one GPU per rank");
  return local_rank;
}

void check_layout(int world_size, int tp, int pp) {
  STP_CHECK(tp >= 1 && pp >= 1, "tp=", tp, " and pp=", pp, " must be >= 1");
  STP_CHECK(world_size % (tp * pp) == 0, "world size ", world_size,
            " is not a multiple of tp*pp=", tp, "*", pp, "=", tp * pp, "; world = dp * pp * tp");
}

// ---- CommHandle ---------------------------------------------------------------------------

CommHandle::CommHandle(c10::intrusive_ptr<c10d::Work> work, std::string what,
                       std::chrono::milliseconds timeout, WaitKind wait_kind)
    : work_(std::move(work)), what_(std::move(what)), timeout_(timeout), wait_kind_(wait_kind) {}
CommHandle::~CommHandle() = default;
CommHandle::CommHandle(CommHandle&&) noexcept = default;
CommHandle& CommHandle::operator=(CommHandle&&) noexcept = default;

bool CommHandle::pending() const { return static_cast<bool>(work_); }

bool CommHandle::done() const { return !work_ || work_->isCompleted(); }

void CommHandle::wait() {
  if (!work_) return;
  auto work = std::move(work_);
  work_.reset();
  try {
    if (wait_kind_ == WaitKind::kStream)
      work->wait();  // kNoTimeout: the current stream waits on the work's end event
    else
      work->wait(timeout_);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    throw std::runtime_error(
        str_cat(what_, " failed or timed out after ", timeout_.count(), " ms: ", msg));
  }
  if (then_) std::exchange(then_, nullptr)();
}

// ---- Group ----------------------------------------------------------------------------------

Group::Group(std::string name, std::vector<int> ranks, int my_index,
             c10::intrusive_ptr<c10d::Backend> backend, std::chrono::milliseconds timeout,
             Carries carries, c10::Device device)
    : name_(std::move(name)),
      ranks_(std::move(ranks)),
      my_index_(my_index),
      backend_(std::move(backend)),
      timeout_(timeout),
      carries_(carries),
      device_(device),
      nccl_(backend_ && backend_->getBackendName() == "nccl") {
  wait_kind_ = nccl_ ? CommHandle::WaitKind::kStream : CommHandle::WaitKind::kHost;
  STP_ASSERT(!(nccl_ && carries_ == Carries::kHost), "host group ", name_, " on NCCL");
  STP_ASSERT(carries_ == Carries::kDevice || device_.is_cpu(), "host group ", name_, " on ",
             device_.str());
}

Group::~Group() = default;

std::string Group::describe(const char* op, int peer) const {
  std::string s = str_cat(op, " on group ", name_, " (global ranks ", join(ranks_), ", this is ",
                          ranks_[my_index_], ")");
  if (peer >= 0) s += str_cat(" with peer global rank ", ranks_[peer]);
  return s;
}

void Group::check_tensor(const at::Tensor& t, const char* op) const {
  if (carries_ == Carries::kHost)
    STP_CHECK(t.is_cpu(), op, " of a ", t.device().str(), " tensor on group ", name_,
              ", which carries host tensors over Gloo (Note [Host and device groups]): move it "
              "to the CPU or use a device group (tp, dp, pipe)");
  if (nccl_)
    STP_CHECK(!t.is_cpu(), op, " of a ", t.device().str(), " tensor on group ", name_,
              ", which runs on NCCL and carries CUDA tensors only; host scalars go over the "
              "world or model group");
}

CommHandle Group::all_reduce_async(at::Tensor& t, c10d::ReduceOp op) {
  check_tensor(t, "all_reduce");
  if (size() == 1) return {};
  std::vector<at::Tensor> ts{t};
  c10d::AllreduceOptions opts;
  opts.reduceOp = op;
  return {backend_->allreduce(ts, opts), describe("all_reduce"), timeout_, wait_kind_};
}

bool Group::stages(const at::Tensor& t) const { return !nccl_ && (t.is_cuda() || stage_all_); }

// Host memory for a staged message: pinned for a CUDA tensor, so the copies use the DMA engine.
at::Tensor Group::host_buffer(const at::Tensor& t) const {
  return at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(t.is_cuda()));
}

CommHandle Group::send_async(at::Tensor& t, int peer, int tag) {
  check_tensor(t, "send");
  STP_ASSERT(peer >= 0 && peer < size() && peer != my_index_, "peer ", peer);
  std::vector<at::Tensor> ts{t};
  if (stages(t)) ts[0] = host_buffer(t).copy_(t);  // the backend's work keeps it alive
  return {backend_->send(ts, peer, tag), describe("send", peer), timeout_, wait_kind_};
}

CommHandle Group::recv_async(at::Tensor& t, int peer, int tag) {
  check_tensor(t, "recv");
  STP_ASSERT(peer >= 0 && peer < size() && peer != my_index_, "peer ", peer);
  std::vector<at::Tensor> ts{t};
  const bool staged = stages(t);
  if (staged) ts[0] = host_buffer(t);
  CommHandle h{backend_->recv(ts, peer, tag), describe("recv", peer), timeout_, wait_kind_};
  if (staged) h.then([dst = t, src = ts[0]]() mutable { dst.copy_(src); });
  return h;
}

CommHandle Group::broadcast_async(at::Tensor& t, int root) {
  check_tensor(t, "broadcast");
  if (size() == 1) return {};
  std::vector<at::Tensor> ts{t};
  c10d::BroadcastOptions opts;
  opts.rootRank = root;
  return {backend_->broadcast(ts, opts), describe("broadcast", root == my_index_ ? -1 : root),
          timeout_, wait_kind_};
}

void Group::barrier() {
  if (size() == 1) return;
  CommHandle h{backend_->barrier(), describe("barrier"), timeout_};  // the host waits
  h.wait();
}

double Group::all_reduce_scalar(double x, c10d::ReduceOp op) {
  if (size() == 1) return x;
  // On the group's device: NCCL takes CUDA tensors only; item() waits for the reduction.
  at::Tensor t = at::full({1}, x, at::TensorOptions().dtype(at::kDouble).device(device_));
  all_reduce_async(t, op).wait();
  return t.item<double>();
}

// ---- PipeChannels -------------------------------------------------------------------------

PipeChannels::PipeChannels(Group& up, Group& down) : up_(up), down_(down) {
  STP_ASSERT(up.ranks() == down.ranks() && up.rank() == down.rank(), "pipeline channels ",
             up.name(), " and ", down.name(), " over different ranks");
}

CommHandle PipeChannels::send_async(at::Tensor& t, int peer) {
  return (peer > rank() ? up_ : down_).send_async(t, peer, /*tag=*/0);
}

CommHandle PipeChannels::recv_async(at::Tensor& t, int peer) {
  return (peer < rank() ? up_ : down_).recv_async(t, peer, /*tag=*/0);
}

void PipeChannels::warm_up(const at::TensorOptions& like) {
  const int p = size(), me = rank();
  if (p == 1) return;
  // Every rank walks the same sorted pair list, skipping pairs without it: the smallest
  // unfinished pair is at the head of both its ranks' walks, so the walk cannot deadlock even
  // when each step blocks until the peer arrives.
  std::vector<std::pair<int, int>> pairs;
  for (int i = 0; i + 1 < p; ++i) pairs.emplace_back(i, i + 1);
  if (p > 2) pairs.emplace_back(0, p - 1);
  std::sort(pairs.begin(), pairs.end());
  for (auto [lo, hi] : pairs) {
    if (me != lo && me != hi) continue;
    const int peer = me == lo ? hi : lo;
    at::Tensor out = at::full({1}, static_cast<double>(me), like);
    at::Tensor in = at::empty({1}, like);
    // lo -> hi on up, then hi -> lo on down.
    CommHandle first = me == lo ? send_async(out, peer) : recv_async(in, peer);
    first.wait();
    CommHandle second = me == lo ? recv_async(in, peer) : send_async(out, peer);
    second.wait();
    STP_CHECK(in.item<double>() == peer, "pipeline warm-up between ranks ", lo, " and ", hi, " of ",
              up_.name(), " received ", in.item<double>(), " instead of ", peer);
  }
}

double Group::all_reduce_sum(double x) { return all_reduce_scalar(x, c10d::ReduceOp::SUM); }
double Group::all_reduce_max(double x) { return all_reduce_scalar(x, c10d::ReduceOp::MAX); }

// ---- World ------------------------------------------------------------------------------------

World::World(c10::intrusive_ptr<c10d::Store> store, int rank, int world_size, CommOptions options,
             BackendFactory factory)
    : store_(std::move(store)),
      rank_(rank),
      world_size_(world_size),
      options_(options),
      factory_(std::move(factory)) {
  check_layout(world_size, options.tp, options.pp);
  STP_CHECK(options.timeout.count() >= 1, "comm timeout=", options.timeout.count(),
            " ms must be >= 1 ms");
  STP_ASSERT(options.backend != CommBackend::kAuto,
             "a World needs a resolved backend (engine::resolve_backend)");
  const int tp = options.tp, pp = options.pp, dp = world_size / (tp * pp);
  const int tp_idx = rank % tp, dp_idx = (rank / tp) % dp, pp_idx = rank / (tp * dp);
  auto global = [&](int t, int d, int p) { return (p * dp + d) * tp + t; };

  std::vector<int> all(world_size), tp_ranks, pp_ranks, dp_ranks, model_ranks;
  for (int r = 0; r < world_size; ++r) all[r] = r;
  for (int t = 0; t < tp; ++t) tp_ranks.push_back(global(t, dp_idx, pp_idx));
  for (int p = 0; p < pp; ++p) pp_ranks.push_back(global(tp_idx, dp_idx, p));
  for (int d = 0; d < dp; ++d) dp_ranks.push_back(global(tp_idx, d, pp_idx));
  for (int p = 0; p < pp; ++p)
    for (int t = 0; t < tp; ++t) model_ranks.push_back(global(t, dp_idx, p));

  world_group_ = make_group("world", all, Carries::kHost);
  tp_group_ = make_group(str_cat("tp", pp_idx, ".", dp_idx), tp_ranks, Carries::kDevice);
  pp_up_ = make_group(str_cat("pp_up", dp_idx, ".", tp_idx), pp_ranks, Carries::kDevice);
  pp_down_ = make_group(str_cat("pp_down", dp_idx, ".", tp_idx), pp_ranks, Carries::kDevice);
  dp_group_ = make_group(str_cat("dp", pp_idx, ".", tp_idx), dp_ranks, Carries::kDevice);
  model_group_ = make_group(str_cat("model", dp_idx), model_ranks, Carries::kHost);
  pipe_ = std::make_unique<PipeChannels>(*pp_up_, *pp_down_);
  at::TensorOptions like = at::TensorOptions().dtype(at::kFloat);
  if (options_.device >= 0)
    like = like.device(at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(options_.device)));
  pipe_->warm_up(like);
  // Gloo connects a group's full mesh in its constructor, and one side of a pair can finish
  // before the other has read the handshake: a rank that raced ahead and tore its World down
  // would close connections a peer is still setting up ("Connection closed by peer"). No rank
  // leaves construction before every rank has built every group.
  world_group_->barrier();
}

World::~World() = default;

std::unique_ptr<Group> World::make_group(const std::string& name, const std::vector<int>& ranks,
                                         Carries carries) {
  int my_index = -1;
  for (std::size_t i = 0; i < ranks.size(); ++i)
    if (ranks[i] == rank_) my_index = static_cast<int>(i);
  STP_ASSERT(my_index >= 0, "rank ", rank_, " not in group ", name);
  c10::intrusive_ptr<c10d::Backend> backend;
  if (ranks.size() > 1) {
    GroupSpec spec{name, ranks, my_index, carries,
                   c10::make_intrusive<c10d::PrefixStore>("stp/" + name, store_)};
    backend = factory_ ? factory_(spec) : make_backend(spec);
  }
  c10::Device device(c10::kCPU);
  if (carries == Carries::kDevice && options_.device >= 0)
    device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(options_.device));
  return std::make_unique<Group>(name, ranks, my_index, std::move(backend), options_.timeout,
                                 carries, device);
}

c10::intrusive_ptr<c10d::Backend> World::make_backend(const GroupSpec& spec) const {
  const int n = static_cast<int>(spec.ranks.size());
  if (spec.carries == Carries::kHost || options_.backend == CommBackend::kGloo) {
    auto opts = c10d::ProcessGroupGloo::Options::create(options_.timeout);
    // Loopback unless the job spans hosts (then GLOO_SOCKET_IFNAME or the hostname).
    auto ifname = env("GLOO_SOCKET_IFNAME");
    auto addr = env("MASTER_ADDR").value_or("127.0.0.1");
    if (ifname) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(*ifname));
    } else if (is_loopback(addr)) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    opts->threads = 2;
    return c10::make_intrusive<c10d::ProcessGroupGloo>(spec.store, spec.my_index, n, opts);
  }
#ifdef STP_WITH_NCCL
  auto opts = c10d::ProcessGroupNCCL::Options::create();
  opts->timeout = options_.timeout;
  auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(spec.store, spec.my_index, n, opts);
  // Bound to this rank's device (gpu-review item 6); communicators are still made lazily.
  if (options_.device >= 0)
    backend->setBoundDeviceId(
        at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(options_.device)));
  return backend;
#else
  STP_CHECK(false,
            "comm backend nccl requested but stp was built without NCCL "
            "(configure with the CUDA toolkit and a CUDA LibTorch)");
  return {};
#endif
}

std::unique_ptr<World> World::in_process(c10::intrusive_ptr<c10d::Store> store, int rank,
                                         int world_size, const CommOptions& options,
                                         BackendFactory factory) {
  // c10d's FlightRecorder (a process-wide singleton, on by default) inserts each new process
  // group into a std::map before taking its mutex (torch 2.11, FlightRecorderDetail.hpp), so
  // threads as ranks creating groups at once corrupt it (SIGSEGV in _Rb_tree_insert_and_
  // rebalance). Off unless the user set it; read when the process makes its first group.
  setenv("TORCH_FR_BUFFER_SIZE", "0", /*overwrite=*/0);
  STP_CHECK(world_size >= 1 && rank >= 0 && rank < world_size, "rank=", rank,
            " must be in [0, world_size=", world_size, ")");
  return std::unique_ptr<World>(
      new World(std::move(store), rank, world_size, options, std::move(factory)));
}

c10::intrusive_ptr<c10d::Store> World::make_in_memory_store() {
  return c10::make_intrusive<c10d::HashStore>();
}

std::unique_ptr<World> World::connect(const LaunchEnv& env, const CommOptions& options) {
  check_layout(env.world_size, options.tp, options.pp);
  if (env.world_size == 1) return in_process(make_in_memory_store(), 0, 1, options);
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = env.rank == 0 && !env.agent_store;
  so.numWorkers = env.world_size;
  so.waitWorkers = false;
  so.timeout = options.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    if (auto nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
    throw std::runtime_error(str_cat("rank ", env.rank, " could not reach the rendezvous store at ",
                                     env.master_addr, ":", env.master_port,
                                     " (MASTER_ADDR/MASTER_PORT): ", msg));
  }
  return std::unique_ptr<World>(
      new World(std::move(store), env.rank, env.world_size, options, /*factory=*/{}));
}

void run_in_process(int world_size, const CommOptions& options,
                    const std::function<void(std::unique_ptr<World>)>& fn,
                    c10::intrusive_ptr<c10d::Store> store, BackendFactory factory) {
  if (!store) store = World::make_in_memory_store();
  std::mutex mu;
  std::exception_ptr first;  // guarded by mu
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(World::in_process(store, r, world_size, options, factory));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!first) first = std::current_exception();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace stp::engine
