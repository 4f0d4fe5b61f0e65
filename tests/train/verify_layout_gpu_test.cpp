// `stp verify --device cuda` on one card (Note [Verify on one GPU]): four ranks as threads on
// GPU 0, Gloo staging CUDA tensors through pinned host memory, the STP schedule with activation
// offload through the copy engine, against the float64 CPU reference. Skips without a device.
#include <gtest/gtest.h>

#include "allocator/backend.h"
#include "train/verify_layout.h"

namespace stp::train {
namespace {

#define REQUIRE_CUDA_DEVICE() \
  if (!allocator::cuda_device_available()) GTEST_SKIP() << "needs a CUDA device"

VerifyReport verify_on_gpu(const std::string& schedule, int tp, int pp, const std::string& budget,
                           const std::string& model = "gpt") {
  VerifyOptions o;
  o.device = "cuda";
  o.schedule = schedule;
  o.tp = tp;
  o.pp = pp;
  o.budget = budget;
  o.model = model;
  return verify_layout(o, engine::LaunchEnv{});
}

TEST(VerifyGpu, StpTp2Pp2WithOffloadOnOneCard) {
  REQUIRE_CUDA_DEVICE();
  VerifyReport r = verify_on_gpu("stp", 2, 2, "60%");
  EXPECT_EQ(r.where, "cuda:0, gloo");
  EXPECT_TRUE(r.ok) << "loss diff " << r.loss_diff << ", max rel " << r.max_rel << " at "
                    << r.worst;
  EXPECT_GT(r.offloaded_bytes, 0) << "the 60% plan offloaded nothing";
}

TEST(VerifyGpu, ZbvAndLlamaOnOneCard) {
  REQUIRE_CUDA_DEVICE();
  VerifyReport r = verify_on_gpu("zb-v", 2, 2, "off");
  EXPECT_TRUE(r.ok) << "max rel " << r.max_rel << " at " << r.worst;
  r = verify_on_gpu("1f1b-i", 2, 2, "85%", "llama");
  EXPECT_TRUE(r.ok) << "max rel " << r.max_rel << " at " << r.worst;
}

TEST(VerifyGpu, OneRankOneCard) {
  REQUIRE_CUDA_DEVICE();
  VerifyReport r = verify_on_gpu("1f1b", 1, 1, "off");
  EXPECT_EQ(r.where, "cuda:0, nccl");  // no group at world size 1
  EXPECT_TRUE(r.ok) << "max rel " << r.max_rel << " at " << r.worst;
}

}  // namespace
}  // namespace stp::train
