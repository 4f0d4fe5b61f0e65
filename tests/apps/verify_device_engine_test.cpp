// `stp verify --device/--comm` from the command line: both in --help, and the one-line refusals
// that need no GPU (the placement rules themselves: tests/train/verify_layout_test.cpp; the run
// on a card: tests/train/verify_layout_gpu_test.cpp and bench/gpu_check.py's verify stage).
#include <gtest/gtest.h>
#include <unistd.h>

#include "cli_test_util.h"

namespace stp::testing {
namespace {

TEST(VerifyDeviceCli, HelpListsDeviceAndComm) {
  CliResult r = run_cli("verify --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  expect_contains(r.output,
                  {"--device", "cpu (default) or cuda", "--comm", "auto (default), gloo or nccl"});
}

TEST(VerifyDeviceCli, BadValuesAreOneLine) {
  expect_rejected({
      {"verify --tp 1 --pp 1 --device tpu", "--device='tpu' is unknown; use cpu or cuda"},
      {"verify --tp 1 --pp 1 --comm mpi", "--comm='mpi' is unknown; use auto, gloo or nccl"},
      {"verify --tp 1 --pp 1 --comm nccl", "--comm nccl needs --device cuda"},
  });
}

TEST(VerifyDeviceCli, CudaWithoutAGpuIsOneLine) {
  if (access("/dev/nvidia0", F_OK) == 0) GTEST_SKIP() << "a GPU is present";
  expect_rejected("verify --tp 1 --pp 1 --device cuda", "stp verify: error: --device cuda: ");
  // Under the launcher every rank refuses the same way, before any rendezvous.
  CliResult r = run_cli("run -n 2 -- stp verify --tp 2 --pp 1 --device cuda --comm nccl");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("--device cuda: "), std::string::npos) << r.output;
}

}  // namespace
}  // namespace stp::testing
