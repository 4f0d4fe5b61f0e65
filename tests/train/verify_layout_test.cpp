// verify_placement (Note [Verify on one GPU]): which device and comm backend `stp verify
// --device/--comm` gives a rank, and the one-line refusals, for any number of visible GPUs; and
// that --device cuda refuses on a machine without one.
#include "train/verify_layout.h"

#include <gtest/gtest.h>

#include <functional>
#include <stdexcept>
#include <string>

#include "allocator/backend.h"
#include "file_test_util.h"

namespace stp::train {
namespace {

using engine::CommBackend;

VerifyOptions opts(const std::string& device, const std::string& comm, int tp = 2, int pp = 2) {
  return VerifyOptions{.tp = tp, .pp = pp, .device = device, .comm = comm};
}

// Local rank `local_rank` of `local_ranks` launched processes (stp run -n N on one host).
engine::LaunchEnv launched(int local_rank, int local_ranks) {
  return engine::LaunchEnv{.rank = local_rank,
                           .world_size = local_ranks,
                           .local_rank = local_rank,
                           .launched = true,
                           .local_world_size = local_ranks};
}

// The message of the std::invalid_argument `f` throws ("" when it throws none).
std::string refusal(const std::function<void()>& f) {
  const std::string msg = stp::testing::error_of(f);
  return msg == "<no error>" ? "" : msg;
}

TEST(VerifyPlacement, CpuRunsGlooWithoutADevice) {
  for (const char* comm : {"auto", "gloo"}) {
    VerifyPlacement p = verify_placement(opts("cpu", comm), engine::LaunchEnv{}, 0, false);
    EXPECT_EQ(p.device, -1);
    EXPECT_EQ(p.backend, CommBackend::kGloo);
  }
}

TEST(VerifyPlacement, SeveralRanksOnOneGpuTakeGloo) {
  for (int r = 0; r < 4; ++r) {
    VerifyPlacement p = verify_placement(opts("cuda", "auto"), launched(r, 4), 1, true);
    EXPECT_EQ(p.device, 0);
    EXPECT_EQ(p.ranks_per_device, 4);
    EXPECT_EQ(p.backend, CommBackend::kGloo);
  }
  // As threads of one process every rank is on GPU 0, however many there are.
  VerifyPlacement p = verify_placement(opts("cuda", "auto"), engine::LaunchEnv{}, 8, true);
  EXPECT_EQ(p.device, 0);
  EXPECT_EQ(p.backend, CommBackend::kGloo);
  EXPECT_EQ(verify_placement(opts("cuda", "gloo"), launched(1, 4), 1, true).backend,
            CommBackend::kGloo);
}

TEST(VerifyPlacement, OneRankPerGpuTakesNccl) {
  for (int r = 0; r < 4; ++r) {
    VerifyPlacement p = verify_placement(opts("cuda", "auto"), launched(r, 4), 4, true);
    EXPECT_EQ(p.device, r);
    EXPECT_EQ(p.ranks_per_device, 1);
    EXPECT_EQ(p.backend, CommBackend::kNccl);
  }
  // Two ranks on each of two GPUs: local rank r on GPU r % 2, Gloo.
  VerifyPlacement p = verify_placement(opts("cuda", "auto"), launched(3, 4), 2, true);
  EXPECT_EQ(p.device, 1);
  EXPECT_EQ(p.ranks_per_device, 2);
  EXPECT_EQ(p.backend, CommBackend::kGloo);
  // One rank, one GPU: auto is NCCL (no group is built at world size 1).
  EXPECT_EQ(verify_placement(opts("cuda", "auto", 1, 1), engine::LaunchEnv{}, 1, true).backend,
            CommBackend::kNccl);
}

TEST(VerifyPlacement, RefusalsAreOneLineNamingTheFlag) {
  auto one_line = [](const std::string& msg, const std::string& needle) {
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  };
  one_line(refusal([] { verify_placement(opts("cuda", "nccl"), launched(0, 4), 1, true); }),
           "--comm nccl: 4 ranks share GPU 0 (4 ranks on this host, 1 visible GPUs) and NCCL "
           "refuses two ranks on one device; use --comm gloo or auto");
  one_line(refusal([] { verify_placement(opts("cuda", "nccl"), engine::LaunchEnv{}, 1, true); }),
           "--comm nccl: 4 ranks share GPU 0");
  one_line(refusal([] { verify_placement(opts("cuda", "auto"), launched(0, 4), 0, true); }),
           "--device cuda: this process sees no CUDA device");
  one_line(refusal([] { verify_placement(opts("cuda", "auto"), launched(0, 4), 1, false); }),
           "--device cuda: this stp was built without CUDA");
  one_line(refusal([] { verify_placement(opts("cpu", "nccl"), engine::LaunchEnv{}, 1, true); }),
           "--comm nccl needs --device cuda");
  one_line(refusal([] { verify_placement(opts("tpu", "auto"), engine::LaunchEnv{}, 1, true); }),
           "--device='tpu' is unknown; use cpu or cuda");
  one_line(refusal([] { verify_placement(opts("cpu", "mpi"), engine::LaunchEnv{}, 1, true); }),
           "--comm='mpi' is unknown; use auto, gloo or nccl");
  // One rank per GPU may ask for NCCL.
  EXPECT_EQ(verify_placement(opts("cuda", "nccl"), launched(2, 4), 4, true).backend,
            CommBackend::kNccl);
}

TEST(VerifyLayout, CudaWithoutAGpuRefusesBeforeAnyWork) {
  if (allocator::cuda_device_available()) GTEST_SKIP() << "a CUDA device is visible";
  VerifyOptions o = opts("cuda", "auto");
  const std::string msg = refusal([&] { verify_layout(o, engine::LaunchEnv{}); });
  EXPECT_EQ(msg.rfind("--device cuda: ", 0), 0u) << msg;
}

}  // namespace
}  // namespace stp::train
