#include "engine/comm.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "comm_test_util.h"

namespace stp::engine {
namespace {

using stp::testing::run_ranks;

// A c10d Work that records how it was waited for, from a backend that claims a name.
class RecordingWork : public c10d::Work {
 public:
  bool wait(std::chrono::milliseconds timeout) override {
    waited_with = timeout;
    ++waits;
    return true;
  }
  std::chrono::milliseconds waited_with{-1};
  int waits = 0;
};

class NamedBackend : public c10d::Backend {
 public:
  explicit NamedBackend(std::string name) : c10d::Backend(0, 2), name_(std::move(name)) {}
  const std::string getBackendName() const override { return name_; }
  c10::intrusive_ptr<c10d::Work> allreduce(std::vector<at::Tensor>&,
                                           const c10d::AllreduceOptions&) override {
    return last = c10::make_intrusive<RecordingWork>();
  }
  c10::intrusive_ptr<c10d::Work> recv(std::vector<at::Tensor>&, int, int) override {
    return last = c10::make_intrusive<RecordingWork>();
  }
  c10::intrusive_ptr<c10d::Work> barrier(const c10d::BarrierOptions&) override {
    return last = c10::make_intrusive<RecordingWork>();
  }
  c10::intrusive_ptr<RecordingWork> last;

 private:
  std::string name_;
};

// gpu-review item 7: on NCCL a wait only orders the stream (Work::wait() without a timeout;
// with one c10d polls on the host); Gloo and the barrier keep the host wait with the timeout.
TEST(CommHandle, NcclWaitsOrderTheStreamAndGlooWaitsBlockWithTheTimeout) {
  const std::chrono::milliseconds timeout(1234);
  for (const char* name : {"nccl", "gloo"}) {
    const bool nccl = std::string(name) == "nccl";
    auto backend = c10::make_intrusive<NamedBackend>(name);
    Group g("tp0", {0, 1}, 0, backend, timeout);
    // NCCL groups refuse CPU tensors (Note [Host and device groups]): a meta one stands in.
    at::Tensor t = nccl ? at::empty({4}, at::TensorOptions().device(at::kMeta)) : at::zeros({4});
    g.all_reduce_async(t).wait();
    EXPECT_EQ(backend->last->waited_with, nccl ? ::kNoTimeout : timeout) << name;
    g.recv_async(t, 1, 0).wait();
    EXPECT_EQ(backend->last->waited_with, nccl ? ::kNoTimeout : timeout) << name;
    g.barrier();
    EXPECT_EQ(backend->last->waited_with, timeout) << name << ": the barrier is a host wait";
    EXPECT_EQ(backend->last->waits, 1);
  }
}

// gpu-review item 6: one GPU per rank (srun / mpirun binding) or one per local rank.
// Note [Host and device groups]: a host group (Gloo: world, model) refuses a tensor that is
// not on the CPU, and an NCCL group refuses one that is not on CUDA, each naming the group,
// before the backend sees it (NCCL's own error names neither the group nor the fix).
TEST(CommGroup, TensorsOnTheWrongSideOfAGroupAreRefusedByName) {
  const std::chrono::milliseconds timeout(1000);
  auto gloo = c10::make_intrusive<NamedBackend>("gloo");
  Group host("world", {0, 1}, 0, gloo, timeout, Carries::kHost);
  at::Tensor off_cpu = at::empty({1}, at::TensorOptions().device(at::kMeta));
  try {
    host.all_reduce_async(off_cpu);
    ADD_FAILURE() << "a meta tensor went over a host group";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("group world, which carries host tensors"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(gloo->last, nullptr) << "the backend saw the misrouted tensor";
  at::Tensor cpu = at::zeros({1});
  host.all_reduce_async(cpu).wait();
  EXPECT_NE(gloo->last, nullptr);

  auto nccl = c10::make_intrusive<NamedBackend>("nccl");
  Group device("tp0.0", {0, 1}, 0, nccl, timeout, Carries::kDevice);
  try {
    device.all_reduce_async(cpu);
    ADD_FAILURE() << "a CPU tensor went to an NCCL group";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("group tp0.0, which runs on NCCL"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(nccl->last, nullptr);
}

TEST(CommDevice, PickCudaDeviceWorksWithOneVisibleGpuPerRank) {
  EXPECT_EQ(pick_cuda_device(0, 1), 0);
  EXPECT_EQ(pick_cuda_device(5, 1), 0);  // the launcher bound one GPU to local rank 5
  EXPECT_EQ(pick_cuda_device(3, 8), 3);
  EXPECT_THROW(pick_cuda_device(0, 0), std::invalid_argument);
  try {
    pick_cuda_device(2, 2);
    ADD_FAILURE() << "local rank 2 of 2 visible GPUs must be refused";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("local rank 2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("sees 2 GPUs"), std::string::npos) << e.what();
  }
}

// gpu-review item 4: the backend follows the model's device; the pairs that cannot work are
// refused by name (Gloo cannot carry device pointers, NCCL needs them).
TEST(CommDevice, TheBackendFollowsTheModelsDevice) {
  EXPECT_EQ(resolve_backend(CommBackend::kAuto, false), CommBackend::kGloo);
  EXPECT_EQ(resolve_backend(CommBackend::kAuto, true), CommBackend::kNccl);
  EXPECT_EQ(resolve_backend(CommBackend::kGloo, false), CommBackend::kGloo);
  EXPECT_EQ(resolve_backend(CommBackend::kNccl, true), CommBackend::kNccl);
  // Gloo with a CUDA model stages through host memory (Note [Gloo with CUDA tensors]).
  EXPECT_EQ(resolve_backend(CommBackend::kGloo, true), CommBackend::kGloo);
  EXPECT_THROW(resolve_backend(CommBackend::kNccl, false), std::invalid_argument);
  EXPECT_STREQ(to_string(CommBackend::kAuto), "auto");
}

CommOptions layout(int tp, int pp, int timeout_ms = 20000) {
  CommOptions o;
  o.tp = tp;
  o.pp = pp;
  o.timeout = std::chrono::milliseconds(timeout_ms);
  return o;
}

TEST(Comm, GroupsFollowMegatronOrderTpFastest) {
  // world 8 = dp 2 x pp 2 x tp 2: rank = (pp*dp + dp_idx)*tp + tp_idx.
  run_ranks(8, layout(2, 2), [](World& w) {
    int r = w.rank();
    EXPECT_EQ(w.dp(), 2);
    EXPECT_EQ(w.tp_rank(), r % 2);
    EXPECT_EQ(w.dp_rank(), (r / 2) % 2);
    EXPECT_EQ(w.pp_rank(), r / 4);
    EXPECT_EQ(w.tp_group().ranks(), (std::vector<int>{r - r % 2, r - r % 2 + 1}));
    EXPECT_EQ(w.pipe().up().ranks(), (std::vector<int>{r % 4, r % 4 + 4}));
    EXPECT_EQ(w.model_group().size(), 4);
  });
}

TEST(Comm, AllReduceSumsOverEachGroup) {
  run_ranks(4, layout(2, 2), [](World& w) {
    at::Tensor t = at::full({5}, static_cast<double>(w.rank() + 1), at::kDouble);
    w.tp_group().all_reduce_async(t).wait();
    int base = w.rank() - w.tp_rank();
    EXPECT_DOUBLE_EQ(t[0].item<double>(), (base + 1) + (base + 2));
    EXPECT_DOUBLE_EQ(w.world_group().all_reduce_sum(1.5), 6.0);
  });
}

TEST(Comm, AsyncAllReduceOverlapsWithLocalWork) {
  run_ranks(2, layout(2, 1), [](World& w) {
    at::Tensor a = at::ones({1 << 16}, at::kFloat);
    at::Tensor b = at::full({1 << 16}, 2.0f);
    CommHandle ha = w.tp_group().all_reduce_async(a);
    CommHandle hb = w.tp_group().all_reduce_async(b);  // two in flight at once
    at::Tensor local = at::mm(at::ones({64, 64}), at::ones({64, 64}));
    hb.wait();
    ha.wait();
    EXPECT_FLOAT_EQ(a[17].item<float>(), 2.0f);
    EXPECT_FLOAT_EQ(b[17].item<float>(), 4.0f);
    EXPECT_FLOAT_EQ(local[0][0].item<float>(), 64.0f);
  });
}

TEST(Comm, SendRecvMatchByTagInAnyOrder) {
  run_ranks(2, layout(1, 2), [](World& w) {
    Group& pp = w.pipe().up();
    if (pp.rank() == 0) {
      at::Tensor x = at::arange(6, at::kFloat), y = at::arange(3, at::kFloat) * 10;
      CommHandle h1 = pp.send_async(x, 1, 7);
      CommHandle h2 = pp.send_async(y, 1, 9);
      h1.wait();
      h2.wait();
    } else {
      at::Tensor x = at::zeros({6}, at::kFloat), y = at::zeros({3}, at::kFloat);
      CommHandle hy = pp.recv_async(y, 0, 9);  // posted in the other order
      CommHandle hx = pp.recv_async(x, 0, 7);
      hx.wait();
      hy.wait();
      EXPECT_FLOAT_EQ(x[5].item<float>(), 5.0f);
      EXPECT_FLOAT_EQ(y[2].item<float>(), 20.0f);
    }
    pp.barrier();
  });
}

// Note [Gloo with CUDA tensors]: a staged send copies into host memory before Gloo sees it, and
// a staged receive lands in host memory and reaches its tensor inside wait(), not before.
TEST(Comm, StagedSendAndRecvDeliverIntoTheTensorAtTheWait) {
  run_ranks(2, layout(1, 2), [](World& w) {
    Group& up = w.pipe().up();
    up.stage_all_p2p_for_testing();
    if (up.rank() == 0) {
      at::Tensor x = at::arange(12, at::kDouble).view({3, 4});
      CommHandle h = up.send_async(x, 1, 0);
      x.zero_();  // the message was copied out at the send: this does not reach the peer
      h.wait();
      w.world_group().barrier();
    } else {
      at::Tensor y = at::full({3, 4}, -1.0, at::kDouble);
      CommHandle h = up.recv_async(y, 0, 0);
      EXPECT_FALSE(h.droppable()) << "a staged receive must be waited for its copy to run";
      w.world_group().barrier();  // the peer's send went out (Gloo's recv completes only in wait)
      EXPECT_EQ(y[0][0].item<double>(), -1.0) << "written before wait()";
      h.wait();
      EXPECT_TRUE(at::equal(y, at::arange(12, at::kDouble).view({3, 4})));
    }
  });
}

TEST(Comm, RepeatedUnderLoadStaysCorrect) {
  // Many small collectives and P2P with compute threads competing for the 2 cores.
  run_ranks(4, layout(2, 2), [](World& w) {
    for (int i = 0; i < 50; ++i) {
      at::Tensor t = at::full({128}, static_cast<float>(i));
      CommHandle h = w.tp_group().all_reduce_async(t);
      at::Tensor busy = at::mm(at::rand({32, 32}), at::rand({32, 32}));
      h.wait();
      ASSERT_FLOAT_EQ(t[0].item<float>(), 2.0f * i);
      at::Tensor msg = at::full({16}, static_cast<float>(i * 10 + w.pp_rank()));
      PipeChannels& pp = w.pipe();
      int peer = 1 - pp.rank();
      at::Tensor in = at::zeros({16});
      CommHandle r = pp.recv_async(in, peer);
      CommHandle s = pp.send_async(msg, peer);
      s.wait();
      r.wait();
      ASSERT_FLOAT_EQ(in[3].item<float>(), static_cast<float>(i * 10 + peer));
    }
    w.world_group().barrier();
  });
}

// An all-reduce over the TP group that must fail (a peer is absent or gone): its message, and
// the seconds it took in *waited.
std::string failed_tp_all_reduce(World& w, double* waited) {
  at::Tensor t = at::ones({4});
  const auto start = std::chrono::steady_clock::now();
  std::string message;
  try {
    w.tp_group().all_reduce_async(t).wait();
    ADD_FAILURE() << "all_reduce with a missing peer completed";
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  *waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return message;
}

// A rank that is alive but never joins the collective: the others fail within the timeout.
TEST(Comm, AbsentRankTimesOutWithMessageNamingGroupAndPeers) {
  std::string message;
  double waited = 0;
  run_ranks(2, layout(2, 1, 1000), [&](World& w) {
    if (w.rank() == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // holds its group open
      return;
    }
    message = failed_tp_all_reduce(w, &waited);
  });
  EXPECT_GE(waited, 0.9);
  EXPECT_LT(waited, 2.4) << "did not fail within the 1 s timeout (plus slack)";
  EXPECT_NE(message.find("all_reduce on group tp"), std::string::npos) << message;
  EXPECT_NE(message.find("global ranks 0,1"), std::string::npos) << message;
  EXPECT_NE(message.find("timed out after 1000 ms"), std::string::npos) << message;
}

// A rank that exits: the others fail at once instead of waiting out the timeout.
TEST(Comm, ExitedRankFailsPeersFast) {
  std::string message;
  run_ranks(2, layout(2, 1, 30000), [&](World& w) {
    if (w.rank() == 1) return;  // its backend is destroyed, closing the connections
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    double waited = 0;
    message = failed_tp_all_reduce(w, &waited);
    EXPECT_LT(waited, 10.0);
  });
  EXPECT_NE(message.find("all_reduce on group tp"), std::string::npos) << message;
}

TEST(Comm, BadLayoutsNameTheValues) {
  try {
    check_layout(6, 4, 1);
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "world size 6 is not a multiple of tp*pp=4*1=4; world = dp * pp * tp");
  }
  EXPECT_THROW(check_layout(4, 0, 1), std::invalid_argument);
  EXPECT_NO_THROW(check_layout(8, 2, 2));
}

TEST(Comm, EnvironmentParsingRejectsGarbage) {
  setenv("WORLD_SIZE", "4", 1);
  setenv("RANK", "7", 1);
  EXPECT_THROW(launch_env_from_environment(), std::invalid_argument);
  setenv("RANK", "2", 1);
  setenv("MASTER_PORT", "http", 1);
  try {
    launch_env_from_environment();
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(),
                 "environment variable MASTER_PORT='http' must be an integer in [1, 65535]");
  }
  setenv("MASTER_PORT", "29511", 1);
  LaunchEnv env = launch_env_from_environment();
  EXPECT_EQ(env.rank, 2);
  EXPECT_EQ(env.world_size, 4);
  EXPECT_EQ(env.master_port, 29511);
  for (const char* v : {"WORLD_SIZE", "RANK", "MASTER_PORT"}) unsetenv(v);
}

// Real processes through TCPStore: the parent spawns 3 copies of this binary.
TEST(CommMultiProcess, Child) {
  if (!stp::testing::is_spawned_child()) GTEST_SKIP() << "runs only inside CommMultiProcess.Spawn";
  LaunchEnv env = launch_env_from_environment();
  CommOptions o = layout(1, 1, 20000);
  auto w = World::connect(env, o);
  for (int i = 0; i < 20; ++i) {
    at::Tensor t = at::full({1000}, static_cast<double>(w->rank()), at::kDouble);
    w->world_group().all_reduce_async(t).wait();
    ASSERT_DOUBLE_EQ(t[999].item<double>(), 0.0 + 1.0 + 2.0);
  }
  // Ring of sends.
  int n = w->size(), next = (w->rank() + 1) % n, prev = (w->rank() + n - 1) % n;
  at::Tensor out = at::full({8}, static_cast<float>(w->rank())), in = at::zeros({8});
  CommHandle r = w->world_group().recv_async(in, prev, 3);
  CommHandle s = w->world_group().send_async(out, next, 3);
  s.wait();
  r.wait();
  ASSERT_FLOAT_EQ(in[0].item<float>(), static_cast<float>(prev));
  w->world_group().barrier();
}

TEST(CommMultiProcess, Spawn) {
  if (stp::testing::is_spawned_child()) GTEST_SKIP() << "parent only";
  auto codes = stp::testing::spawn_ranks(3, "CommMultiProcess.Child");
  for (std::size_t r = 0; r < codes.size(); ++r) EXPECT_EQ(codes[r], 0) << "rank " << r;
}

}  // namespace
}  // namespace stp::engine
