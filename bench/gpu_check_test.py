#!/usr/bin/env python3
"""Unit tests of bench/gpu_check.py's parsers (standard library; ctest gpu_check_parsers)."""

import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_check  # noqa: E402


class Parsers(unittest.TestCase):
    def test_ctest_4_all_passed(self):
        # CTest >= 3.27 prints no "N tests failed" when none did.
        t = gpu_check.parse_ctest("...\n100% tests passed out of 4\n\nTotal Test time (real) = 2 sec\n")
        self.assertEqual((t["total"], t["passed"], t["failed"], t["skipped"]), (4, 4, 0, 0))

    def test_ctest_failed_and_skipped(self):
        text = ("1/4 Test #1: Cuda.Pool ........................   Passed    0.10 sec\n"
                "2/4 Test #2: VerifyGpu.OneRankOneCard ........***Skipped   0.01 sec\n"
                "3/4 Test #3: Cuda.Copy ........................***Failed    0.20 sec\n"
                "75% tests passed, 1 tests failed out of 4\n"
                "The following tests FAILED:\n\t  3 - Cuda.Copy (Failed)\n")
        t = gpu_check.parse_ctest(text)
        self.assertEqual((t["total"], t["failed"], t["skipped"], t["passed"]), (4, 1, 1, 2))
        self.assertEqual(t["failed_names"], "Cuda.Copy")
        self.assertEqual(t["skipped_names"], "VerifyGpu.OneRankOneCard")

    def test_ctest_none_found(self):
        self.assertEqual(gpu_check.parse_ctest("No tests were found!!!\n")["total"], 0)
        self.assertIsNone(gpu_check.parse_ctest("ctest: command not found\n"))

    def test_gtest_binaries(self):
        text = ("[==========] 3 tests from 1 test suite ran. (5 ms total)\n[  PASSED  ] 2 tests.\n"
                "[  SKIPPED ] 1 test, listed below:\n"
                "[==========] 2 tests from 1 test suite ran. (5 ms total)\n[  PASSED  ] 1 test.\n"
                "[  FAILED  ] 1 test, listed below:\n")
        t = gpu_check.parse_gtest(text)
        self.assertEqual((t["total"], t["passed"], t["failed"], t["skipped"]), (5, 3, 1, 1))

    def test_floor_and_offload_line(self):
        err = ("stp train: error: budget 413.25 KiB (423170 bytes) is below the smallest feasible "
               "budget 599.50 KiB (613892 bytes) for stp p=1 m=4: no choice ...")
        self.assertEqual(gpu_check.parse_floor(err), 613892)
        self.assertIsNone(gpu_check.parse_floor("done: 3 steps"))
        o = gpu_check.parse_offload_line(
            "[r0] offload: budget 613892 bytes per rank; simulated peak 846340 -> 613892 bytes, "
            "+9.6% step time\n")
        self.assertEqual(o, {"planned_budget_bytes": 613892, "planned_peak_before": 846340,
                             "planned_peak_after": 613892, "planned_slowdown_pct": 9.6})

    def test_verify_report_under_stp_run(self):
        text = ("[r0] stp verify: schedule=stp tp=2 pp=2 microbatches=8 offload=60% (float64, 5 "
                "layers, cuda:0, gloo)\n"
                "[r0]   activation peak 189.63 KiB per rank (measured), 162.50 KiB offloaded and "
                "reloaded\n"
                "[r0]   loss 4.304176559799618   reference 4.304176559799618   |diff| 0.000e+00\n"
                "[r0]   max relative gradient error 2.319e-15 at layers.2.attn.qkv.w\n"
                "[r0] OK (tolerance 1.0e-09)\n")
        v = gpu_check.parse_verify(text)
        self.assertEqual(v["result"], "OK")
        self.assertAlmostEqual(v["max_rel"], 2.319e-15)
        self.assertEqual(v["worst"], "layers.2.attn.qkv.w")
        self.assertEqual(v["offloaded"], "162.50 KiB")
        self.assertIn("cuda:0, gloo", v["layout"])
        refused = gpu_check.parse_verify("[r1] stp verify: error: --device cuda: this process sees "
                                         "no CUDA device\n")
        self.assertNotIn("result", refused)
        self.assertTrue(refused["error"].startswith("--device cuda: "))

    def test_prebuilt_source_match(self):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "a.cpp"), "w") as f:
                f.write("int a;\n")
            h = gpu_check.source_hashes(d, ["a.cpp", "gone.h"])
            self.assertIsNone(h["gone.h"])
            man = os.path.join(d, "SOURCES.sha256")
            with open(man, "w") as f:
                f.write(f"{h['a.cpp']}  a.cpp\n")
            self.assertEqual(gpu_check.read_source_manifest(man), {"a.cpp": h["a.cpp"]})

    def test_bad_arguments_exit_2(self):
        self.assertEqual(gpu_check.run_main(["--only", "nope"], {}), 2)
        self.assertEqual(gpu_check.run_main(["--frobnicate"], {}), 2)
        self.assertEqual(gpu_check.run_main(["--dry-run"], {"STP_GPU_CHECK_STEPS": "x"}), 2)

    def test_dry_run_lists_every_gpu_command(self):
        env = dict(os.environ, STP_GPU_CHECK_MODE="gpu", STP_GPU_CHECK_PYTHON=sys.executable)
        r = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "gpu_check.py"),
                            "--dry-run"], capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        for needle in ("-DSTP_WITH_CUDA=ON", "stp_cli", "ctest --test-dir", "-L gpu",
                       "run -n 4 -- stp verify --tp 2 --pp 2 --schedule stp --offload-budget 60% "
                       "--device cuda",
                       "--device cuda --comm nccl",
                       "bench copy --backend cuda --bytes 256MiB",
                       "--set model.seq_len=2048", "--set model.dtype=bfloat16",
                       "--set offload.budget=off", "--set offload.budget=75%",
                       "--set offload.budget=50%",
                       "torch_baseline.py --device cuda", "--precision bf16-master,autocast"):
            self.assertIn(needle, r.stdout)
        # The headline pair first: off, the baseline, then the budgets.
        self.assertLess(r.stdout.index("offload.budget=off"), r.stdout.index("torch_baseline.py"))
        self.assertLess(r.stdout.index("torch_baseline.py"), r.stdout.index("offload.budget=75%"))

    def test_model_size(self):
        self.assertAlmostEqual(gpu_check.gpt_params(2048, 24, 2048) / 1e9, 1.21, places=2)


if __name__ == "__main__":
    unittest.main()
