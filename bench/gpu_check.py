#!/usr/bin/env python3
"""bench/gpu_check.py: the GPU check, in stages that fit one `device` call (about 8 minutes on one
H100/H200 from a bare machine; a global budget stops it at STP_GPU_CHECK_BUDGET_S, default 470 s).
bench/gpu_check.sh is its entry point. Standard library only (torch only in the baseline stage).

Stages, in order (each has its own timeout; none stops the others):
  env       nvidia-smi, driver, CUDA, torch, compilers
  deps      unpack the carried .gpu-debs/*.deb (bench/gpu_deps.sh) into /tmp/stp-deps (not /)
  build     a prebuilt stp carried in .gpu-debs/prebuilt/ when its sources match this tree (no
            build), else cmake (against the preinstalled PyTorch, CUDA, sm_90) and ninja of the
            stp CLI and every gpu-labelled test executable into build-gpu/
  tests     ctest -L gpu (or the carried gpu test binaries, run directly)
  verify    stp run -n 4 -- stp verify --tp 2 --pp 2 --schedule stp --offload-budget 60%
            --device cuda: four ranks on the one GPU (Gloo staging CUDA tensors), against the
            float64 reference; and that --comm nccl with two ranks on the GPU refuses in one line
  copy      stp bench pool / stp bench copy --backend cuda: the pinned pool against
            cudaHostAlloc, the copy engine's D2H, H2D and both at once against a bare
            cudaMemcpyAsync loop, measured in the same run
  train     stp train on one GPU, STP schedule (pp=1: the V's two chunks on the one GPU), GPT of
            1.21 B parameters, bf16, seq 2048: offload off, then 75 % and 50 % of the planned
            peak (a budget below the smallest feasible one is rerun at the floor the planner
            names; an out-of-memory "off" halves the micro-batch size)
  baseline  bench/torch_baseline.py on the same model and batch: bf16 master weights with SDPA
            attention (stp's recipe and kernels: the headline), then the labelled extra lines
            (autocast); runs right after "off" so the headline pair comes first
Results land in $OUT (the device tool's output folder; ./gpu-results when OUT is unset), rewritten
after every stage so a run cut short still brings back what it measured: summary.txt (also
printed last), results.json, <date>-<card>.md (for bench/results/), console.log, logs.tar.gz.

usage: bench/gpu_check.sh [--dry-run] [--only STAGES] [--skip STAGES] [--help]
  --dry-run     print every command it would run (the GPU ones unless no GPU and ALLOW_CPU=1)
  --only a,b    run only these stages; --skip a,b: all but these ("configure" means build,
                "bench" means copy, as in the older script)
  --strict      exit 1 when a stage that ran did not end ok (the CI smoke test); without it the
                exit status is 0 whatever the stages measured (2: no GPU, bad settings)
Environment (all optional):
  OUT                         output folder (default ./gpu-results)
  STP_GPU_CHECK_ALLOW_CPU=1   no GPU: run the CPU-feasible stages with tiny sizes (smoke test)
  STP_GPU_CHECK_MODE          gpu or cpu: force the mode (e.g. a GPU --dry-run on a CPU machine)
  STP_GPU_CHECK_STP           an stp binary to use as it is (no build stage; tests from its
                              build folder)
  STP_GPU_CHECK_PREBUILT      auto (default: the carried binary when its sources match), always
                              (even when they do not) or never (always build)
  STP_GPU_CHECK_BUILD_DIR     build folder (default build-gpu); STP_GPU_CHECK_CONFIGURE=0 skips
                              cmake and reuses the folder as configured
  STP_GPU_CHECK_BUDGET_S      whole-run budget in seconds (default 470)
  STP_GPU_CHECK_JOBS          ninja jobs (default nproc)
  STP_GPU_CHECK_PYTHON        python with torch (default: the first of python3,
                              /opt/torch/.venv/bin/python3, /opt/stp-venv/bin/python that has it)
  STP_GPU_CHECK_DEBS          carried .deb folder (default .gpu-debs); STP_GPU_CHECK_PREFIX
                              where they are unpacked (default /tmp/stp-deps)
  STP_GPU_CHECK_WORK          scratch folder (default /tmp/stp-gpu-check)
  STP_GPU_CHECK_CMAKE_EXTRA   more cmake arguments (split on spaces)
  STP_GPU_CHECK_HOST_GBPS     the planner's host link (default: what `bench copy` measured)
  STP_GPU_CHECK_TRAIN_TIMEOUT seconds per training run (default 200; after "off": 3x its time)
  STP_GPU_CHECK_VERIFY_RANKS  the verify stage's layout: "tp pp" (default "2 2")
  Model and run (GPU defaults; CPU mode uses tiny ones): STP_GPU_CHECK_D_MODEL (2048),
  _LAYERS (24: 1.21 B parameters), _HEADS (16), _SEQ (2048), _MBS (2, micro_batch_size),
  _MICRO (4, microbatches), _STEPS (8), _SKIP_STEPS (2, not timed), _BUDGETS ("75% 50%"),
  _BASELINE_ATTENTION ("sdpa"; add explicit for the unfused attention), _BASELINE_PRECISION
  ("bf16-master,autocast": the like-for-like recipe first, then the usual autocast one; CPU
  mode: bf16-master)
"""

import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ["env", "deps", "build", "tests", "verify", "copy", "train", "baseline"]
ALIASES = {"configure": "build", "bench": "copy"}
VOCAB = 258


def usage():
    return __doc__.strip() + "\n"


def quote(cmd):
    return " ".join(shlex.quote(str(c)) for c in cmd)


def fmt_bytes(b):
    if b is None:
        return "-"
    b = float(b)
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or u == "TiB":
            return f"{b:.0f} {u}" if u == "B" else f"{b:.2f} {u}"
        b /= 1024
    return "-"


def fmt_ns(ns):
    if ns is None:
        return "-"
    return f"{ns:.0f} ns" if ns < 1e3 else f"{ns / 1e3:.1f} us" if ns < 1e6 else f"{ns / 1e6:.2f} ms"


def fmt_params(n):
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def md_table(header, rows):
    """A Markdown table's lines."""
    line = lambda cells: "| " + " | ".join(str(c) for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]


def gpt_params(d, layers, seq):
    """stp's GPT (models/gpt_params.cpp): blocks, token and position embeddings, ln_f, head."""
    return layers * (12 * d * d + 13 * d) + (VOCAB + seq) * d + 2 * d + VOCAB * d


def parse_ctest(text):
    """CTest's summary: "100% tests passed out of 4" (CTest 4, none failed) or "75% tests
    passed, 1 tests failed out of 4"; skipped tests and failed names. None if no summary."""
    if "No tests were found" in text:
        return {"total": 0, "passed": 0, "failed": 0, "skipped": 0}
    totals = re.findall(r"% tests passed.*? out of (\d+)", text)
    if not totals:
        return None
    total = int(totals[-1])
    failed = re.findall(r" (\d+) tests? failed out of", text)
    failed = int(failed[-1]) if failed else 0
    skipped_names = re.findall(r"Test +#\d+: (\S+) .*\*+Skipped", text)
    failed_names = []
    if "The following tests FAILED" in text:
        tail = text.split("The following tests FAILED", 1)[1]
        failed_names = re.findall(r"\d+ - (\S+)", tail)
    return {"total": total, "failed": failed, "skipped": len(skipped_names),
            "passed": total - failed - len(skipped_names),
            "failed_names": " ".join(failed_names), "skipped_names": " ".join(skipped_names)}


def parse_gtest(text):
    """Totals of gtest binaries run directly (their "[  PASSED  ] N tests" lines)."""
    s = lambda pat: sum(int(x) for x in re.findall(pat, text))
    return {"passed": s(r"\[  PASSED  \] (\d+)"), "failed": s(r"\[  FAILED  \] (\d+) tests?,"),
            "skipped": s(r"\[  SKIPPED \] (\d+) tests?,"),
            "total": s(r"\[==========\] (\d+) tests? from \d+ test suites? ran")}


def parse_floor(text):
    """The smallest feasible budget the planner names when a budget is below it (bytes)."""
    m = re.search(r"smallest feasible budget [^(]*\((\d+) bytes\)", text)
    return int(m.group(1)) if m else None


def parse_offload_line(text):
    """stp train's "offload: budget B bytes per rank; simulated peak X -> Y bytes, +S% step time"."""
    m = re.search(r"offload: budget (\d+) bytes per rank; simulated peak (\d+) -> (\d+) bytes, "
                  r"([-+0-9.]+)% step time", text)
    if not m:
        return {}
    return {"planned_budget_bytes": int(m.group(1)), "planned_peak_before": int(m.group(2)),
            "planned_peak_after": int(m.group(3)), "planned_slowdown_pct": float(m.group(4))}


def parse_verify(text):
    """stp verify's report (rank 0's lines under stp run carry an [r0] prefix)."""
    text = re.sub(r"(?m)^\[r\d+\] ", "", text)
    v = {}
    m = re.search(r"^stp verify: (.*)$", text, re.M)
    if m:
        v["layout"] = m.group(1)
    m = re.search(r"\|diff\| (\S+)", text)
    if m:
        v["loss_diff"] = float(m.group(1))
    m = re.search(r"max relative gradient error (\S+)(?: at (\S+))?", text)
    if m:
        v["max_rel"] = float(m.group(1))
        v["worst"] = m.group(2) or ""
    m = re.search(r"^(OK|FAILED) \(tolerance (\S+)\)", text, re.M)
    if m:
        v["result"], v["tolerance"] = m.group(1), float(m.group(2))
    m = re.search(r"activation peak (.*) per rank \(measured\), (.*) offloaded", text)
    if m:
        v["peak"], v["offloaded"] = m.group(1), m.group(2)
    m = re.search(r"error: (.*)", text)
    if m and "result" not in v:
        v["error"] = m.group(1).strip()
    return v


def source_hashes(root, paths):
    """sha256 of each file (None when missing), for matching a carried prebuilt binary."""
    out = {}
    for p in paths:
        try:
            with open(os.path.join(root, p), "rb") as f:
                out[p] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            out[p] = None
    return out


def read_source_manifest(path):
    """.gpu-debs/prebuilt/SOURCES.sha256: "<sha256>  <path>" per line (sha256sum's format)."""
    want = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("  ", 1)
            if len(parts) == 2:
                want[parts[1]] = parts[0]
    return want


def status_of(rc):
    return {0: "ok", 125: "skipped", 124: "timeout", 137: "timeout"}.get(rc, "FAIL")


class Check:
    def __init__(self, argv, environ):
        self.env = dict(environ)
        self.dry = self.strict = False
        only, skip = "", ""
        args = list(argv)
        while args:
            a = args.pop(0)
            if a in ("-n", "--dry-run"):
                self.dry = True
            elif a == "--strict":
                self.strict = True
            elif a in ("--only", "--skip"):
                if not args:
                    raise SystemExit(f"gpu_check: {a} needs a comma list of stages")
                only, skip = (args.pop(0), skip) if a == "--only" else (only, args.pop(0))
            elif a.startswith("--only="):
                only = a.split("=", 1)[1]
            elif a.startswith("--skip="):
                skip = a.split("=", 1)[1]
            elif a in ("-h", "--help"):
                sys.stdout.write(usage())
                raise SystemExit(0)
            else:
                raise SystemExit(f"gpu_check: unknown argument '{a}' (see --help)")

        def stages(text):
            out = []
            for s in filter(None, text.split(",")):
                s = ALIASES.get(s, s)
                if s not in STAGES:
                    raise SystemExit(f"gpu_check: unknown stage '{s}' (stages: {' '.join(STAGES)})")
                out.append(s)
            return out

        self.only, self.skip = stages(only), stages(skip)
        e = self.env.get
        self.out = e("OUT") or os.path.join(ROOT, "gpu-results")
        self.work = e("STP_GPU_CHECK_WORK") or "/tmp/stp-gpu-check"
        build = e("STP_GPU_CHECK_BUILD_DIR") or "build-gpu"
        self.build = build if os.path.isabs(build) else os.path.join(ROOT, build)
        self.configure = e("STP_GPU_CHECK_CONFIGURE", "1") != "0"
        self.debs = e("STP_GPU_CHECK_DEBS") or os.path.join(ROOT, ".gpu-debs")
        self.prefix = e("STP_GPU_CHECK_PREFIX") or "/tmp/stp-deps"
        self.prebuilt_mode = e("STP_GPU_CHECK_PREBUILT") or "auto"
        if self.prebuilt_mode not in ("auto", "always", "never"):
            raise SystemExit(f"gpu_check: STP_GPU_CHECK_PREBUILT={self.prebuilt_mode} must be "
                             "auto, always or never")
        self.stp_given = os.path.abspath(e("STP_GPU_CHECK_STP")) if e("STP_GPU_CHECK_STP") else ""
        self.py = self.find_python()
        self.gpu_seen = self.quiet(["nvidia-smi", "-L"]) is not None
        mode = e("STP_GPU_CHECK_MODE") or ""
        if not mode:
            if self.gpu_seen:
                mode = "gpu"
            elif e("STP_GPU_CHECK_ALLOW_CPU") == "1":
                mode = "cpu"
            else:
                mode = "gpu" if self.dry else "none"
        if mode not in ("gpu", "cpu", "none"):
            raise SystemExit(f"gpu_check: STP_GPU_CHECK_MODE={mode} must be gpu or cpu")
        self.mode = mode
        cpu = mode == "cpu"
        tiny = {"D_MODEL": 64, "LAYERS": 2, "HEADS": 2, "SEQ": 64, "MBS": 2, "MICRO": 4,
                "STEPS": 4, "SKIP_STEPS": 1}
        big = {"D_MODEL": 2048, "LAYERS": 24, "HEADS": 16, "SEQ": 2048, "MBS": 2, "MICRO": 4,
               "STEPS": 8, "SKIP_STEPS": 2}

        def number(name, default):
            v = e("STP_GPU_CHECK_" + name, str(default))
            if not re.fullmatch(r"[0-9]+", v):
                raise SystemExit(f"gpu_check: STP_GPU_CHECK_{name}={v} must be a whole number")
            return int(v)

        for k, v in (tiny if cpu else big).items():
            setattr(self, k.lower(), number(k, v))
        self.budget_s = number("BUDGET_S", 470)
        self.jobs = number("JOBS", os.cpu_count() or 4)
        if self.skip_steps >= self.steps:
            raise SystemExit(f"gpu_check: SKIP_STEPS={self.skip_steps} must be < STEPS={self.steps}")
        self.budgets = (e("STP_GPU_CHECK_BUDGETS") or "75% 50%").split()
        self.bl_attn = e("STP_GPU_CHECK_BASELINE_ATTENTION") or "sdpa"
        self.bl_prec = (e("STP_GPU_CHECK_BASELINE_PRECISION")
                        or ("bf16-master" if cpu else "bf16-master,autocast"))
        self.host_gbps_env = e("STP_GPU_CHECK_HOST_GBPS") or ""
        self.train_timeout_max = number("TRAIN_TIMEOUT", 200)
        ranks = (e("STP_GPU_CHECK_VERIFY_RANKS") or "2 2").split()
        if len(ranks) != 2 or not all(r.isdigit() and int(r) >= 1 for r in ranks):
            raise SystemExit(f"gpu_check: STP_GPU_CHECK_VERIFY_RANKS='{' '.join(ranks)}' must be "
                             "two whole numbers >= 1: tp pp")
        self.verify_tp, self.verify_pp = int(ranks[0]), int(ranks[1])
        self.device = "cpu" if cpu else "cuda"
        self.backend = "host" if cpu else "cuda"

        self.t0 = time.monotonic()
        self.facts, self.steps_done, self.commands = {}, [], []
        self.bench, self.runs, self.baseline, self.verify = [], [], [], {}
        self.stp = []  # the command that runs stp (a binary, maybe under env LD_LIBRARY_PATH=...)
        self.built_here = False
        self.prebuilt_env = []  # env LD_LIBRARY_PATH=... when the carried binaries run
        self.console = None
        self.child = None
        self.last_secs = 0

    # ---- plumbing ---------------------------------------------------------------------------
    def want(self, stage):
        return stage not in self.skip and (not self.only or stage in self.only)

    def say(self, text=""):
        print(text, flush=True)
        if self.console:
            self.console.write(text + "\n")
            self.console.flush()

    def remaining(self):
        return int(self.budget_s - (time.monotonic() - self.t0))

    def quiet(self, cmd, timeout=30, env=None):
        """A helper's output (stripped), or None when it cannot run or fails."""
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    def find_python(self):
        """The first candidate that imports torch (a dry run takes the first that exists: importing
        torch takes many seconds on a loaded machine)."""
        given = self.env.get("STP_GPU_CHECK_PYTHON", "")
        if given and shutil.which(given):
            return shutil.which(given)  # trusted as it is (the env stage says if torch is missing)
        cands = ["python3", "/opt/torch/.venv/bin/python3", "/opt/stp-venv/bin/python"]
        for c in cands:
            path = shutil.which(c)
            if path and (self.dry or self.quiet([path, "-c", "import torch"], timeout=120) is not None):
                return path
        return ""

    def note_cmd(self, cmd):
        if not self.dry:
            self.commands.append(quote(cmd))

    def log(self, name):
        return os.path.join(self.work, "logs", name + ".log")

    def run(self, logname, timeout, cmd, env=None):
        """Print the command, run it with a timeout clipped to the remaining budget, append its
        output to logs/<logname>.log. Returns its status: 124 on a timeout, 125 when the budget
        is spent, 127 when it cannot start."""
        t = min(timeout, self.remaining())
        self.say("+ " + quote(cmd))
        self.last_secs = 0
        if self.dry:
            return 0
        path = self.log(logname)
        with open(path, "a") as f:
            if t < 5:
                self.say(f"   skipped: the {self.budget_s}s budget is spent")
                f.write(f"skipped: the {self.budget_s}s budget is spent: {quote(cmd)}\n")
                return 125
            f.write(f"+ [timeout {t}s] {quote(cmd)}\n")
            f.flush()
            s = time.monotonic()
            try:
                self.child = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env=env, cwd=ROOT,
                                              start_new_session=True)
            except OSError as err:
                f.write(f"+ cannot start: {err}\n")
                self.say(f"   cannot start: {err}")
                return 127
            try:
                rc = self.child.wait(timeout=t)
            except subprocess.TimeoutExpired:
                self.stop_child()
                rc = 124
                self.say(f"   TIMEOUT after {t}s")
            self.child = None
            self.last_secs = int(time.monotonic() - s)
            f.write(f"+ exit {rc} after {self.last_secs}s\n")
        return rc

    def stop_child(self):
        """Ends the command in flight and everything it started (its own process group)."""
        p = self.child
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                pass

    def tail(self, logname, n=15):
        try:
            with open(self.log(logname), errors="replace") as f:
                lines = f.read().splitlines()[-n:]
        except OSError:
            return
        for line in lines:
            self.say("   | " + line)

    def read_log(self, logname):
        try:
            with open(self.log(logname), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def fact(self, key, value):
        if not self.dry and value not in (None, ""):
            self.facts[key] = str(value)

    def record(self, stage, rc, secs, note=""):
        secs = 0 if self.dry else secs
        status = rc if isinstance(rc, str) else status_of(rc)
        code = 0 if isinstance(rc, str) else rc
        self.steps_done.append({"step": stage, "status": status, "rc": code,
                                "seconds": int(secs), "note": note})
        self.say(f"   -> {stage}: {status} (rc {code}, {int(secs)}s)" + (f" - {note}" if note else ""))
        self.report()

    def torch_lib_path(self):
        """torch's lib folder and the nvidia wheels' (a carried prebuilt binary links them)."""
        if not self.py:
            return ""
        code = ("import glob, os, torch\nd = os.path.dirname(torch.__file__)\n"
                "site = os.path.dirname(d)\n"
                "dirs = [os.path.join(d, 'lib')] + sorted(glob.glob(os.path.join(site, 'nvidia', '*', 'lib')))\n"
                "print(':'.join(p for p in dirs if os.path.isdir(p)))")
        return self.quiet([self.py, "-c", code], timeout=120) or ""

    # ---- memory sampler: the whole device's memory in use, every 200 ms --------------------
    def mem_start(self, path):
        if self.mode != "gpu":
            return None
        cmd = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "200"]
        self.say(f"+ {quote(cmd)} > {path} &")
        if self.dry:
            return None
        try:
            return subprocess.Popen(cmd, stdout=open(path, "w"), stderr=subprocess.DEVNULL)
        except OSError:
            return None

    @staticmethod
    def mem_stop(p):
        if p is not None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()

    @staticmethod
    def mem_peak(path):
        try:
            vals = [int(x) for x in re.findall(r"\d+", open(path).read())]
        except OSError:
            return None
        return max(vals) if vals else None

    # ---- stages --------------------------------------------------------------------------------
    def stage_env(self):
        s = time.monotonic()
        for cmd in (["uname", "-a"], ["nproc"], ["free", "-g"]):
            self.run("env", 20, cmd)
        if self.mode == "gpu":
            self.run("env", 20, ["nvidia-smi", "-L"])
            self.run("env", 20, ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                                 "pcie.link.gen.max,pcie.link.width.max,clocks.max.sm", "--format=csv"])
            self.run("env", 20, ["nvidia-smi"])
            self.run("env", 20, ["nvidia-smi", "topo", "-m"])
        self.run("env", 120, [self.py or "python3", "-c",
                              "import torch; print('torch', torch.__version__); "
                              "print('torch_cuda', torch.version.cuda); "
                              "print('cuda_available', torch.cuda.is_available())"])
        if not self.dry:
            self.fact("cpus", os.cpu_count())
            if self.mode == "gpu":
                q = self.quiet(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                "--format=csv,noheader"])
                if q:
                    parts = [x.strip() for x in q.splitlines()[0].split(",")]
                    for k, v in zip(("gpu_name", "gpu_memory", "driver"), parts):
                        self.fact(k, v)
            for key in ("torch", "torch_cuda", "cuda_available"):  # one torch import: seconds
                m = re.search(rf"(?m)^{key} (\S+)$", self.read_log("env"))
                self.fact(key, m.group(1) if m else "")
            nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
            m = re.search(r"release ([0-9.]+)", self.quiet([nvcc, "--version"]) or "")
            self.fact("nvcc", m.group(1) if m else "")
            self.fact("cxx", (self.quiet(["c++", "--version"]) or "").split("\n")[0])
            self.fact("cmake", (self.quiet(["cmake", "--version"]) or "").split("\n")[0])
            for tool in ("cmake", "ninja", "c++", "dpkg"):
                if not shutil.which(tool):
                    self.say(f"   {tool}: MISSING")
            if self.facts.get("gpu_name"):
                self.say(f"   {self.facts['gpu_name']}, {self.facts.get('gpu_memory', '?')}")
            if self.mode == "gpu" and self.facts.get("cuda_available") != "True":
                self.say(f"   WARNING: torch ({self.py or 'not found'}) cannot use the GPU; going on")
        if not self.py:
            self.say("   no python with torch found: configure and the baseline will fail")
        self.record("env", 0, time.monotonic() - s)

    def stage_deps(self):
        s = time.monotonic()
        debs = sorted(glob.glob(os.path.join(self.debs, "*.deb")))
        status, note = 0, ""
        if debs or self.dry:
            self.run("deps", 30, ["rm", "-rf", self.prefix])
            self.run("deps", 10, ["mkdir", "-p", self.prefix])
            for deb in debs or [os.path.join(self.debs, "<each>.deb")]:
                if shutil.which("dpkg") or self.dry:
                    rc = self.run("deps", 30, ["dpkg", "-x", deb, self.prefix])
                else:  # a .deb is an ar archive holding data.tar.*
                    rc = self.run("deps", 30, ["bash", "-c", 'd=$(mktemp -d) && cd "$d" && ar x "$2" '
                                               '&& tar -xf data.tar.* -C "$1"; rc=$?; rm -rf "$d"; exit $rc',
                                               "_", self.prefix, deb])
                if rc:
                    status, note = 1, f"unpacking {os.path.basename(deb)} failed"
            lib = os.path.join(self.prefix, "usr/lib/x86_64-linux-gnu")
            hw = os.path.join(lib, "libhwloc.so.15")
            if not self.dry and os.path.exists(hw):
                ldd = subprocess.run(["ldd", hw], capture_output=True, text=True).stdout
                missing = [l.split()[0] for l in ldd.splitlines() if "not found" in l]
                if missing:  # from another distribution: keep it only if it loads here
                    self.say(f"   libhwloc.so.15 misses {' '.join(missing)} here: building without it")
                    for p in (["usr/include/hwloc.h", "usr/include/hwloc",
                               "usr/include/x86_64-linux-gnu/hwloc"]):
                        shutil.rmtree(os.path.join(self.prefix, p), ignore_errors=True)
                        if os.path.isfile(os.path.join(self.prefix, p)):
                            os.remove(os.path.join(self.prefix, p))
                    for p in glob.glob(os.path.join(lib, "libhwloc*")):
                        os.remove(p)
                    note = "hwloc dropped (missing shared libraries)"
        else:
            note = f"no {self.debs}/*.deb: relying on system packages (bench/gpu_deps.sh makes them)"
            self.say("   " + note)
        if not self.dry:
            for h in ("CLI/CLI.hpp", "nlohmann/json.hpp", "gloo/algorithm.h", "gtest/gtest.h",
                      "gmock/gmock.h", "hwloc.h", "numa.h"):
                where = [w for w, d in (("system", "/usr/include"), ("system(/usr/local)", "/usr/local/include"),
                                        ("prefix", os.path.join(self.prefix, "usr/include")))
                         if os.path.exists(os.path.join(d, h))]
                self.say(f"   {h:<20} {' + '.join(where) or 'missing'}")
        self.use_prefix()
        self.record("deps", status, time.monotonic() - s, note)

    def use_prefix(self):
        if os.path.isdir(os.path.join(self.prefix, "usr")) or self.dry:
            inc = f"{self.prefix}/usr/include:{self.prefix}/usr/include/x86_64-linux-gnu"
            old = os.environ.get("CPATH")
            os.environ["CPATH"] = inc + (":" + old if old else "")
            os.environ["CMAKE_POLICY_VERSION_MINIMUM"] = "3.5"
            return True
        return False

    def gpu_test_targets(self):
        """The gpu-labelled test executables: stp_add_tests(NAME ... LABELS gpu) and each room with
        *_gpu_test.cpp files (stp_add_room_tests(NAME ...) -> NAME_gpu); once configured, only
        those ninja knows."""
        names = set()
        for cm in glob.glob(os.path.join(ROOT, "tests", "**", "CMakeLists.txt"), recursive=True):
            text = open(cm).read()
            names.update(re.findall(r"stp_add_tests\((\w+)[^)]*LABELS[^)]*\bgpu\b", text))
            if glob.glob(os.path.join(os.path.dirname(cm), "*_gpu_test.cpp")):
                names.update(n + "_gpu" for n in re.findall(r"stp_add_room_tests\((\w+)", text))
        known = self.quiet(["ninja", "-C", self.build, "-t", "targets", "all"], timeout=60)
        if known and not self.dry:
            have = set(re.findall(r"(?m)^(\w+): phony", known))
            names = {n for n in names if n in have}
        return sorted(names)

    def prebuilt_dir(self):
        return os.path.join(self.debs, "prebuilt")

    def prebuilt_matches(self):
        """(matches, why): whether the carried binary was built from these sources."""
        man = os.path.join(self.prebuilt_dir(), "SOURCES.sha256")
        if not os.path.exists(os.path.join(self.prebuilt_dir(), "stp")):
            return False, "no prebuilt binary carried"
        if not os.path.exists(man):
            return False, "the prebuilt binary has no SOURCES.sha256"
        want = read_source_manifest(man)
        have = source_hashes(ROOT, want)
        changed = [p for p, h in want.items() if have.get(p) != h]
        if changed:
            return False, f"{len(changed)} source files differ from the prebuilt's ({' '.join(changed[:5])})"
        return True, f"sources match ({len(want)} files)"

    def prebuilt_command(self):
        """The carried binary under env LD_LIBRARY_PATH=<torch's and the wheels' libraries, the
        unpacked .debs'>, and the libraries it still cannot find here (ldd)."""
        libs = self.torch_lib_path()
        path = ":".join(filter(None, [libs, f"{self.prefix}/usr/lib/x86_64-linux-gnu",
                                      "/usr/local/cuda/lib64", os.environ.get("LD_LIBRARY_PATH", "")]))
        exe = os.path.join(self.prebuilt_dir(), "stp")
        ldd = self.quiet(["env", f"LD_LIBRARY_PATH={path}", "ldd", exe]) or ""
        missing = [l.split()[0] for l in ldd.splitlines() if "not found" in l]
        return ["env", f"LD_LIBRARY_PATH={path}", exe], missing

    def use_prebuilt(self, why, cmd=None):
        self.stp = cmd or self.prebuilt_command()[0]
        self.prebuilt_env = self.stp[:-1]
        info = ""
        try:
            info = next((l.split(" ", 1)[1].strip() for l in open(os.path.join(self.prebuilt_dir(), "BUILD_INFO.txt"))
                         if l.startswith("source ")), "")
        except OSError:
            pass
        self.fact("binary", f"prebuilt, carried (source {info[:12] or '?'}; {why})")
        self.say(f"   using the carried prebuilt binary: {why}")

    def stage_build(self):
        s = time.monotonic()
        if self.stp_given:
            self.stp = [self.stp_given]
            self.fact("binary", f"given ({self.stp_given})")
            self.record("build", "skipped", 0, f"STP_GPU_CHECK_STP={self.stp_given}")
            return
        matches, why = self.prebuilt_matches()
        if not self.dry and ((matches and self.prebuilt_mode != "never") or
                             (self.prebuilt_mode == "always" and "no prebuilt" not in why)):
            cmd, missing = self.prebuilt_command()
            if not missing:
                self.use_prebuilt(why, cmd)
                self.record("build", "skipped", 0, "prebuilt carried: " + why)
                return
            why = f"the carried binary misses {' '.join(missing)} here"
        if self.prebuilt_mode != "never" and not self.dry:
            self.say(f"   building here: {why}")
        configured = os.path.exists(os.path.join(self.build, "CMakeCache.txt"))
        if not self.configure:
            if not configured:
                self.record("build", 1, 0, f"STP_GPU_CHECK_CONFIGURE=0 but {self.build} has no CMakeCache.txt")
                return self.fallback_prebuilt()
            self.say(f"   STP_GPU_CHECK_CONFIGURE=0: reusing {self.build} as configured")
        else:
            prefix = ""
            if self.py and not self.dry:
                prefix = self.quiet([self.py, "-c", "import torch.utils; print(torch.utils.cmake_prefix_path)"],
                                    timeout=120) or ""
            if self.dry and not prefix:
                prefix = '$(python3 -c "import torch.utils;print(torch.utils.cmake_prefix_path)")'
            args = ["cmake", "-S", ROOT, "-B", self.build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    f"-DSTP_TORCH_PREFIX={prefix}", f"-DSTP_PYTHON={self.py or 'python3'}",
                    f"-DSTP_WITH_CUDA={'ON' if self.mode == 'gpu' else 'AUTO'}", "-DTORCH_CUDA_ARCH_LIST=9.0",
                    "-DSTP_BUILD_BENCH=OFF", "-DSTP_BUILD_TESTS=ON", "-DSTP_CCACHE=OFF"]
            if os.path.isdir(os.path.join(self.prefix, "usr")) or self.dry:
                args.append(f"-DCMAKE_PREFIX_PATH={self.prefix}/usr")
            args += (self.env.get("STP_GPU_CHECK_CMAKE_EXTRA") or "").split()
            self.note_cmd(args)
            rc = self.run("build", 180, args)
            summ = re.search(r"stp: CUDA=.*", self.read_log("build"))
            self.fact("cmake_summary", summ.group(0) if summ else "")
            if rc:
                self.tail("build", 25)
                self.record("build", rc, time.monotonic() - s, "configure failed")
                return self.fallback_prebuilt()
        targets = ["stp_cli"] + self.gpu_test_targets()
        cmd = ["ninja", "-C", self.build, "-k", "0", "-j", str(self.jobs)] + targets
        self.note_cmd(cmd)
        rc = self.run("build", 420, cmd)
        if rc:
            text = self.read_log("build")
            for line in [l for l in text.splitlines() if "error" in l or "FAILED" in l][:20]:
                self.say("   | " + line)
            self.tail("build", 10)
        exe = os.path.join(self.build, "apps", "stp")
        if os.access(exe, os.X_OK) or self.dry:
            self.stp = [exe]
            self.built_here = True
            self.fact("binary", f"built here ({exe})")
        self.record("build", rc, time.monotonic() - s, "targets: " + " ".join(targets))
        if not self.stp:
            self.fallback_prebuilt()

    def fallback_prebuilt(self):
        if os.access(os.path.join(self.prebuilt_dir(), "stp"), os.X_OK):
            _, why = self.prebuilt_matches()
            self.use_prebuilt("the build here gave none; " + why)
        else:
            self.say("   no stp binary: the verify, copy and train stages will be skipped")

    def stage_tests(self):
        s = time.monotonic()
        if self.built_here or (self.stp_given and os.path.isfile(os.path.join(self.build, "CTestTestfile.cmake"))):
            rc = self.run("tests", 180, ["ctest", "--test-dir", self.build, "-L", "gpu",
                                         "--output-on-failure", "--timeout", "120", "--no-tests=error"])
            t = parse_ctest(self.read_log("tests"))
        elif self.prebuilt_env:  # the carried prebuilt gpu test binaries, run directly
            rc = 0
            bins = sorted(glob.glob(os.path.join(self.prebuilt_dir(), "stp_*tests*")))
            for b in bins:
                rc = self.run("tests", 150, self.prebuilt_env + [b]) or rc
            t = parse_gtest(self.read_log("tests")) if bins else None
            if not bins:
                rc = 125
        else:
            rc, t = 125, None
        if t is not None and not self.dry:
            self.facts.update({f"tests_{k}": str(v) for k, v in t.items()})
            if t["total"] == 0:
                self.say("   no gpu-labelled tests found (was GoogleTest found? see logs/tests.log)")
        if rc and rc != 125:
            self.tail("tests", 30)
        m = re.search(r"\d+% tests passed.*", self.read_log("tests"))
        self.record("tests", rc, time.monotonic() - s, m.group(0) if m else "")

    def stage_verify(self):
        s = time.monotonic()
        if not self.stp:
            return self.record("verify", 125, 0, "no stp binary")
        n = self.verify_tp * self.verify_pp
        args = ["verify", "--tp", str(self.verify_tp), "--pp", str(self.verify_pp), "--schedule", "stp",
                "--offload-budget", "60%", "--device", self.device]
        cmd = self.stp + ["run", "-n", str(n), "--", "stp"] + args
        self.note_cmd(["stp", "run", "-n", str(n), "--", "stp"] + args)
        rc = self.run("verify", 240, cmd)  # (stp run picks a free port for its store)
        if not self.dry:
            self.verify = parse_verify(self.read_log("verify"))
            self.verify["command"] = quote(["stp", "run", "-n", str(n), "--", "stp"] + args)
            self.verify["status"] = status_of(rc)
            for line in re.sub(r"(?m)^\[r0\] ", "", self.read_log("verify")).splitlines():
                if line.startswith(("stp verify:", "  ", "OK", "FAILED")):
                    self.say("   " + line)
            if rc:
                self.tail("verify", 12)
        if self.mode == "gpu":  # NCCL with two ranks on the one card: one line, exit 2
            refuse = ["verify", "--tp", "2", "--pp", "1", "--device", "cuda", "--comm", "nccl"]
            rrc = self.run("verify-nccl", 60, self.stp + ["run", "-n", "2", "--", "stp"] + refuse)
            if not self.dry:
                text = self.read_log("verify-nccl")
                ok = rrc != 0 and "--comm nccl: 2 ranks share GPU 0" in text
                self.verify["nccl_refusal"] = "ok" if ok else f"unexpected (rc {rrc}; logs/verify-nccl.log)"
                self.say(f"   --comm nccl with 2 ranks on one GPU: {self.verify['nccl_refusal']}")
        self.record("verify", rc, time.monotonic() - s, self.verify.get("result", ""))

    def bench_one(self, label, timeout, args):
        self.note_cmd(["stp"] + args)
        rc = self.run("bench-" + label, timeout, self.stp + args)
        if not self.dry:
            line = next((l for l in self.read_log("bench-" + label).splitlines() if l.startswith('{"bench"')), None)
            if line:
                j = json.loads(line)
                j["label"] = label
                self.bench.append(j)
                self.say("   " + line[:300])
            else:
                self.tail("bench-" + label, 8)
        return rc

    def stage_copy(self):
        s = time.monotonic()
        if not self.stp:
            return self.record("copy", 125, 0, "no stp binary")
        rc = 0
        if self.mode == "gpu":
            rc = self.bench_one("pool-1MiB", 60, ["bench", "pool", "--backend", "cuda", "--bytes", "1MiB"]) or rc
            rc = self.bench_one("pool-64MiB", 60, ["bench", "pool", "--backend", "cuda", "--bytes", "64MiB",
                                                   "--batches", "50"]) or rc
            for b in ("4MiB", "32MiB", "256MiB"):
                rc = self.bench_one("copy-" + b, 90, ["bench", "copy", "--backend", "cuda", "--bytes", b,
                                                      "--copies", "8", "--repeats", "7"]) or rc
        else:
            rc = self.bench_one("pool-64KiB", 60, ["bench", "pool", "--backend", "host", "--bytes", "64KiB"]) or rc
            rc = self.bench_one("copy-4MiB", 60, ["bench", "copy", "--backend", "host", "--bytes", "4MiB",
                                                  "--copies", "4", "--repeats", "3", "--threads", "2"]) or rc
        self.record("copy", rc, time.monotonic() - s)

    # ---- train and baseline ----------------------------------------------------------------
    def host_gbps(self):
        """The planner's host link: STP_GPU_CHECK_HOST_GBPS, else what `stp bench copy` measured
        (the largest size: the least of d2h, h2d and half of both at once)."""
        if self.host_gbps_env:
            return self.host_gbps_env
        copies = [b for b in self.bench if b.get("bench") == "copy" and b.get("backend") == "cuda"]
        if self.mode != "gpu" or not copies:
            return ""
        best = max(copies, key=lambda b: b.get("bytes", 0))
        try:
            v = min(best["d2h"]["copy_engine_gbps"], best["h2d"]["copy_engine_gbps"],
                    best["both"]["copy_engine_gbps"] / 2)
        except (KeyError, TypeError):
            return ""
        return f"{v:.1f}" if v > 0 else ""

    def model_desc(self):
        tokens = self.micro * self.mbs * self.seq
        p = gpt_params(self.d_model, self.layers, self.seq)
        return (f"GPT d_model {self.d_model}, {self.layers} layers, {self.heads} heads, seq {self.seq}, "
                f"vocab {VOCAB}, bfloat16 ({fmt_params(p)} params); m={self.micro} microbatches x {self.mbs} "
                f"seqs = {tokens} tokens/step; {self.steps} steps")

    def train_args(self, budget, log_dir):
        a = ["train"]
        for kv in (f"run.device={self.device}", "parallel.tp=1", "parallel.pp=1", "schedule.kind=stp",
                   f"schedule.microbatches={self.micro}", f"schedule.micro_batch_size={self.mbs}",
                   f"model.d_model={self.d_model}", f"model.n_layers={self.layers}",
                   f"model.n_heads={self.heads}", f"model.seq_len={self.seq}", "model.dtype=bfloat16",
                   f"run.steps={self.steps}", "run.checkpoint_interval=0", "run.progress=false",
                   f"run.log_dir={log_dir}", f"offload.budget={budget}"):
            a += ["--set", kv]
        if self.gbps:
            a += ["--set", f"offload.host_gbps={self.gbps}"]
        return a

    def run_train(self, label, budget, requested=None):
        """One stp train run into train/<label>/; returns (rc, floor bytes when infeasible)."""
        d = os.path.join(self.work, "train", label)
        shutil.rmtree(d, ignore_errors=True)
        args = self.launch + self.train_args(budget, d)
        self.note_cmd(["stp"] + args)
        memf = os.path.join(self.work, "train", label + ".mem")
        sampler = self.mem_start(memf)
        logname = "train-" + label
        if os.path.exists(self.log(logname)) and not self.dry:
            os.remove(self.log(logname))
        rc = self.run(logname, self.train_timeout, self.stp + args)
        self.mem_stop(sampler)
        self.train_secs += self.last_secs
        if self.dry:
            return rc, None
        text = self.read_log(logname)
        status, note, floor = status_of(rc), "", None
        if rc:
            floor = parse_floor(text)
            if floor:
                status, note = "infeasible", f"smallest feasible budget {floor} bytes ({fmt_bytes(floor)})"
            elif "out of memory" in text.lower():
                status, note = "OOM", f"out of memory at micro_batch_size {self.mbs}"
            for line in [l for l in text.splitlines() if re.search(r"error|what\(\)|terminate", l, re.I)][:3]:
                self.say("   | " + line)
            if not floor:
                self.tail(logname, 12)
        r = {"label": label, "budget": budget, "requested": requested or budget, "status": status,
             "rc": rc, "note": note, "micro_batch_size": self.mbs, "gpu_mem_peak_mib": self.mem_peak(memf)}
        r.update(parse_offload_line(text))
        rows = []
        try:
            rows = [json.loads(l) for l in open(os.path.join(d, "metrics.jsonl")) if l.strip()]
        except (OSError, ValueError):
            pass
        timed = [x for x in rows if x.get("step", 0) > self.skip_steps] or rows[-1:]
        r["steps_logged"], r["steps_timed"] = len(rows), len(timed)
        if timed:
            secs = [x["step_seconds"] for x in timed]
            r["step_seconds_median"] = statistics.median(secs)
            r["step_seconds_min"], r["step_seconds_max"] = min(secs), max(secs)
            r["tokens_per_step"] = self.micro * self.mbs * self.seq
            r["tokens_per_s"] = r["tokens_per_step"] / r["step_seconds_median"]
            r["peak_activation_bytes"] = max(x.get("peak_activation_bytes", 0) for x in rows)
            r["offloaded_bytes_per_step"] = statistics.median(x.get("offloaded_bytes", 0) for x in timed)
            r["reload_wait_pct"] = 100 * statistics.median(x.get("reload_wait", 0) for x in timed)
            r["loss_first"], r["loss_last"] = rows[0].get("loss"), rows[-1].get("loss")
        self.runs = [x for x in self.runs if x["label"] != label] + [r]
        for line in text.splitlines():
            if re.match(r"^(\[r0\] )?(done:|offload:)", line):
                self.say("   " + line)
        return rc, floor

    def train_budget(self, b):
        label = b.rstrip("%") + "pct"
        rc, floor = self.run_train(label, b)
        if floor:
            self.say(f"   {b} is below the smallest feasible budget ({floor} bytes): rerunning at it")
            rc, _ = self.run_train(label + "-min", str(floor), b)
        if self.dry:
            self.say(f"   (if {b} is infeasible: the same command with offload.budget=<the floor "
                     "the planner names, in bytes>)")
        return rc

    def stage_train_off(self):
        """The "off" run; the budgets run after the baseline (stage_train_budgets)."""
        self.train_secs, self.oom_retried = 0, False
        self.train_timeout = self.train_timeout_max
        self.launch = []  # empty: stp train directly (world size 1); else stp run -n 1 --
        self.train_start = time.monotonic()
        self.say(f"== train (stp train on {self.device}: STP pp=1 tp=1, bf16; offload off, "
                 f"{', '.join(self.budgets)})")
        if not self.stp:
            self.train_rc = 125
            return
        self.gbps = self.host_gbps()
        self.fact("model_desc", self.model_desc())
        self.fact("tokens_per_step", self.micro * self.mbs * self.seq)
        if self.gbps:
            self.fact("host_gbps", self.gbps)
            self.say(f"   planner host link: offload.host_gbps={self.gbps}")
        rc, _ = self.run_train("off", "off")
        if self.dry:
            self.say("   (if off runs out of memory: micro_batch_size halved, rerun, and used by the "
                     "baseline too; if it fails otherwise: rerun as stp run -n 1 --no-prefix -- stp train ...)")
        elif rc and rc not in (124, 125, 137):
            if "out of memory" in self.read_log("train-off").lower() and self.mbs > 1:
                self.mbs //= 2
                self.oom_retried = True
                self.say(f"   out of memory: retrying with micro_batch_size {self.mbs} (the baseline uses it too)")
                self.fact("model_desc", self.model_desc())
                self.fact("tokens_per_step", self.micro * self.mbs * self.seq)
            else:
                self.say("   stp train failed directly; retrying under the launcher (stp run -n 1 --)")
                self.launch = ["run", "-n", "1", "--no-prefix", "--", "stp"]
            rc, _ = self.run_train("off", "off")
        self.train_rc = rc
        # A budget run takes about as long as "off"; a hang (or an "off" that failed) must not eat
        # the whole budget: later runs get 3x off's time + 30 s (at least 90 s), or 90 s.
        if not self.dry:
            self.train_timeout = (min(max(3 * self.last_secs + 30, 90), self.train_timeout_max)
                                  if rc == 0 else 90)
        self.report()

    def stage_train_budgets(self):
        if not self.stp:
            return self.record("train", 125, 0, "no stp binary")
        for b in self.budgets:
            rc = self.train_budget(b)
            if rc and not self.train_rc:
                self.train_rc = rc
            self.report()
        self.record("train", self.train_rc, self.train_secs,
                    f"micro_batch_size lowered to {self.mbs} after OOM" if self.oom_retried else "")

    def stage_baseline(self):
        self.say(f"== baseline (plain PyTorch loop: {self.bl_prec}, attention {self.bl_attn})")
        s = time.monotonic()
        out = os.path.join(self.work, "baseline.jsonl")
        args = [os.path.join("bench", "torch_baseline.py"), "--device", self.device,
                "--d-model", self.d_model, "--n-layers", self.layers, "--n-heads", self.heads,
                "--seq-len", self.seq, "--micro-batch-size", self.mbs, "--microbatches", self.micro,
                "--steps", self.steps, "--warmup", self.skip_steps, "--precision", self.bl_prec,
                "--attention", self.bl_attn, "--json-out", out]
        if self.mode == "cpu":
            args += ["--threads", "2"]
        args = [str(a) for a in args]
        self.note_cmd(["python3"] + args)
        if not self.py and not self.dry:
            return self.record("baseline", 1, 0, "no python with torch")
        memf = os.path.join(self.work, "baseline.mem")
        sampler = self.mem_start(memf)
        rc = self.run("baseline", 240, [self.py or "python3"] + args,
                      env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.mem_stop(sampler)
        if not self.dry:
            try:
                self.baseline = [json.loads(l) for l in open(out) if l.strip()]
            except (OSError, ValueError):
                self.baseline = []
            for line in self.read_log("baseline").splitlines():
                if line.startswith("{"):
                    self.say("   " + line[:400])
            if rc:
                self.tail("baseline", 12)
            self.facts["baseline_mem_peak_mib"] = str(self.mem_peak(memf) or "")
        self.record("baseline", rc, time.monotonic() - s, "out of memory" if rc == 3 else "")

    # ---- the report: summary.txt, results.json, <date>-<card>.md, logs.tar.gz ---------------
    def report(self):
        if self.dry:
            return
        try:
            self.write_report()
        except Exception as err:  # a report bug must not stop the measurements
            self.say(f"gpu_check: report failed: {err!r}")

    def write_report(self):
        facts, runs, bench, baseline = self.facts, self.runs, self.bench, self.baseline
        elapsed = int(time.monotonic() - self.t0)
        off = next((r for r in runs if r["label"] == "off" and "step_seconds_median" in r), None)
        for r in runs:
            if off and "step_seconds_median" in r and r is not off:
                r["overhead_vs_off_pct"] = 100 * (r["step_seconds_median"] / off["step_seconds_median"] - 1)
                if r.get("peak_activation_bytes") and off.get("peak_activation_bytes"):
                    r["act_peak_vs_off"] = r["peak_activation_bytes"] / off["peak_activation_bytes"]
        for b in baseline:
            if off and b.get("tokens_per_s") and off.get("tokens_per_s"):
                b["ours_off_over_theirs"] = off["tokens_per_s"] / b["tokens_per_s"]
        tests = {k[6:]: v for k, v in facts.items() if k.startswith("tests_")}
        card = facts.get("gpu_name", "no GPU" if self.mode != "gpu" else "?")
        date = time.strftime("%Y-%m-%d", time.gmtime())
        disp = lambda label: (label[:-7] + "%->floor" if label.endswith("pct-min")
                              else label[:-3] + "%" if label.endswith("pct") else label)
        L = [f"stp GPU check {date} | {card} | driver {facts.get('driver', '-')} | torch "
             f"{facts.get('torch', '-')} (CUDA {facts.get('torch_cuda', '-')}) | source "
             f"{facts.get('source', '-')[:12]} | mode {self.mode}",
             "steps: " + "  ".join(f"{s['step']} {s['status']} {s['seconds']}s" for s in self.steps_done)
             + f"   (elapsed {elapsed}s of {self.budget_s}s)"]
        if facts.get("binary"):
            L.append(f"binary: {facts['binary']}; configure: {facts.get('cmake_summary', '-')}")
        if tests:
            L.append(f"gpu tests: {tests.get('passed', '?')} passed, {tests.get('failed', '?')} failed, "
                     f"{tests.get('skipped', '?')} skipped of {tests.get('total', '?')}"
                     + (f"; failed: {tests['failed_names']}" if tests.get("failed_names") else "")
                     + (f"; skipped: {tests['skipped_names']}" if tests.get("skipped_names") else ""))
        v = self.verify
        if v:
            if "result" in v:
                L.append(f"verify ({v['command']}): {v['result']}, loss |diff| {v.get('loss_diff', 0):.1e}, "
                         f"max relative gradient error {v.get('max_rel', 0):.1e} (tolerance "
                         f"{v.get('tolerance', 0):.0e}); {v.get('offloaded', '?')} offloaded"
                         + (f"; --comm nccl refusal {v['nccl_refusal']}" if v.get("nccl_refusal") else ""))
            else:
                L.append(f"verify ({v['command']}): {v.get('status', '?')}"
                         + (f" - {v['error']}" if v.get("error") else "")
                         + (f"; --comm nccl refusal {v['nccl_refusal']}" if v.get("nccl_refusal") else ""))
        pools = [b for b in bench if b.get("bench") == "pool"]
        if pools:
            L.append("pinned pool allocate+free vs " + pools[0].get("baseline", "baseline")
                     + " (median; ratio = baseline/pool):")
            for b in pools:
                L.append(f"  {fmt_bytes(b.get('bytes')):>10}  pool {fmt_ns(b.get('pool_median_ns')):>9} "
                         f"(p90 {fmt_ns(b.get('pool_p90_ns'))})  baseline {fmt_ns(b.get('baseline_median_ns')):>9}"
                         f"  ratio {b.get('ratio', 0):.1f}x")
        copies = [b for b in bench if b.get("bench") == "copy"]
        if copies:
            if copies[0].get("backend") == "cuda":
                L.append("copy engine vs bare cudaMemcpyAsync, GB/s engine/baseline (ratio; goal >= 0.9):")
                for b in copies:
                    cells = []
                    for d in ("d2h", "h2d", "both"):
                        c = b.get(d) or {}
                        cells.append(f"{d} {c.get('copy_engine_gbps', 0):6.1f}/"
                                     f"{c.get('cuda_memcpy_async_gbps', 0):6.1f} ({c.get('ratio', 0):.3f})")
                    L.append(f"  {fmt_bytes(b.get('bytes')):>10} x{b.get('copies')}  " + "  ".join(cells))
            else:
                L.append("copy engine (host workers) vs memcpy, GB/s:")
                for b in copies:
                    L.append(f"  {fmt_bytes(b.get('bytes')):>10} x{b.get('copies')}  engine "
                             f"{b.get('copy_engine_gbps', 0):.2f}  memcpy {b.get('memcpy_gbps', 0):.2f}  "
                             f"ratio {b.get('ratio', 0):.3f}")
        if runs or facts.get("model_desc"):
            L.append(f"training (stp train, STP pp=1 tp=1): {facts.get('model_desc', '?')}; median over "
                     f"steps > {self.skip_steps}"
                     + (f"; planner host link {facts['host_gbps']} GB/s (measured)" if facts.get("host_gbps") else ""))
            L.append(f"  {'budget':<12}{'planned':>11}{'act peak':>11}{'gpu mem':>10}{'step s':>9}{'tok/s':>10}"
                     f"{'vs off':>9}{'offload/step':>14}{'reload%':>8}  status")
            for r in runs:
                tail = f"{r['status']}{' - ' + r['note'] if r['note'] else ''}"
                if "step_seconds_median" not in r:
                    L.append(f"  {disp(r['label']):<12}  {tail}")
                    continue
                vs = f"{r['overhead_vs_off_pct']:+.1f}%" if "overhead_vs_off_pct" in r else "-"
                mem = f"{r['gpu_mem_peak_mib'] / 1024:.1f}G" if r.get("gpu_mem_peak_mib") else "-"
                planned = fmt_bytes(r["planned_budget_bytes"]) if r.get("planned_budget_bytes") else "-"
                L.append(f"  {disp(r['label']):<12}{planned:>11}{fmt_bytes(r['peak_activation_bytes']):>11}"
                         f"{mem:>10}{r['step_seconds_median']:9.3f}{r.get('tokens_per_s', 0):10.0f}{vs:>9}"
                         f"{fmt_bytes(r['offloaded_bytes_per_step']):>14}{r['reload_wait_pct']:8.1f}  {tail}")
            worst = [r for r in runs if r["label"].startswith("50") and "overhead_vs_off_pct" in r]
            if worst:
                w = worst[-1]
                L.append(f"  {disp(w['label'])} budget: {w['overhead_vs_off_pct']:+.1f}% step time vs off "
                         f"(goal <= +3% at 50%), activation peak {100 * w.get('act_peak_vs_off', 0):.0f}% of off")
        if baseline:
            L.append("plain PyTorch loop, same model and batch (bench/torch_baseline.py; the first line "
                     "is like-for-like, the others labelled):")
            for i, b in enumerate(baseline):
                name = f"{b.get('precision', '?')}/{b.get('attention', '?')}"
                label = "like-for-like" if i == 0 else "extra"
                if "error" in b or "tokens_per_s" not in b:
                    L.append(f"  {name:<21} [{label}] {b.get('error', 'no result')} {b.get('detail', '')}")
                    continue
                ratio = (f"ours(off)/theirs {b['ours_off_over_theirs']:.2f}" if "ours_off_over_theirs" in b
                         else "ours: no result")
                mem = f", peak alloc {fmt_bytes(b.get('peak_allocated_bytes'))}" if b.get("peak_allocated_bytes") else ""
                L.append(f"  {name:<21} [{label}] {b['tokens_per_s']:10.0f} tok/s  "
                         f"{b['step_seconds_median']:.3f} s/step{mem}  -> {ratio}")
        summary = "\n".join(L) + "\n"

        results = {"date": date, "mode": self.mode, "facts": facts, "steps": self.steps_done,
                   "tests": tests, "verify": self.verify, "bench": bench, "train": runs,
                   "baseline": baseline, "elapsed_s": elapsed, "budget_s": self.budget_s,
                   "commands": self.commands}
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "summary.txt"), "w") as f:
            f.write(summary)
        with open(os.path.join(self.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1, sort_keys=True)

        slug = re.sub(r"[^a-z0-9]+", "-", card.lower().replace("nvidia", "")).strip("-") or "unknown"
        if self.mode != "gpu":
            slug = "cpu-smoke"
        for old in os.listdir(self.out):
            if old.endswith(".md"):
                os.remove(os.path.join(self.out, old))
        md = [f"# GPU check {date}: {card}\n",
              "Produced by `bench/gpu_check.sh` (bench/gpu_check.py) in one `device` call "
              "(bench/results/README.md says how to rerun it and read this). Raw numbers: "
              "`results.json` of the same run.\n", "| | |\n|---|---|"]
        for k, label in (("gpu_name", "GPU"), ("gpu_memory", "GPU memory"), ("driver", "driver"),
                         ("torch", "PyTorch"), ("torch_cuda", "CUDA (torch)"), ("nvcc", "nvcc"),
                         ("cxx", "C++ compiler"), ("cmake", "CMake"), ("cpus", "CPU cores"),
                         ("source", "source commit"), ("binary", "stp binary"),
                         ("cmake_summary", "configure")):
            if facts.get(k):
                md.append(f"| {label} | {facts[k]} |")
        md.append(f"| mode | {self.mode} |")
        md.append("| steps | " + ", ".join(f"{s['step']} {s['status']} ({s['seconds']} s)"
                                           for s in self.steps_done) + " |")
        md.append("\n## Summary\n\n```\n" + summary + "```\n")
        if runs:
            rows = []
            for r in runs:
                if "step_seconds_median" not in r:
                    rows.append([disp(r["label"])] + [""] * 10 + [f"{r['status']} {r['note']}"])
                    continue
                rows.append([
                    disp(r["label"]),
                    fmt_bytes(r["planned_budget_bytes"]) if r.get("planned_budget_bytes") else "-",
                    (f"{fmt_bytes(r['planned_peak_before'])} -> {fmt_bytes(r['planned_peak_after'])}"
                     if r.get("planned_peak_before") else "-"),
                    fmt_bytes(r["peak_activation_bytes"]),
                    f"{r['gpu_mem_peak_mib'] / 1024:.1f} GiB" if r.get("gpu_mem_peak_mib") else "-",
                    f"{r['step_seconds_median']:.4f}", f"{r.get('tokens_per_s', 0):.0f}",
                    f"{r['overhead_vs_off_pct']:+.1f}%" if "overhead_vs_off_pct" in r else "-",
                    fmt_bytes(r["offloaded_bytes_per_step"]), f"{r['reload_wait_pct']:.1f}%",
                    f"{r.get('loss_first') or 0:.3f} -> {r.get('loss_last') or 0:.3f}",
                    f"{r['status']} {r['note']}"])
            md += ["## Training runs\n"] + md_table(
                ["budget", "planned budget", "planner's peak before -> after", "measured act peak",
                 "GPU mem (nvidia-smi)", "step s (median)", "tok/s", "vs off", "offloaded/step",
                 "reload wait", "loss first -> last", "status"], rows) + [""]
        if baseline:
            rows = []
            for b in baseline:
                if "tokens_per_s" not in b:
                    rows.append([b.get("precision"), b.get("attention"), "", b.get("error", ""), "", "", ""])
                    continue
                rows.append([b["precision"], b["attention"], fmt_params(b["params"]),
                             f"{b['tokens_per_s']:.0f}", f"{b['step_seconds_median']:.4f}",
                             fmt_bytes(b.get("peak_allocated_bytes")),
                             f"{b['ours_off_over_theirs']:.2f}" if "ours_off_over_theirs" in b else "-"])
            md += ["## Plain PyTorch baseline\n"] + md_table(
                ["precision", "attention", "params", "tok/s", "step s (median)", "peak allocated",
                 "ours (off) / theirs"], rows) + [""]
        md.append("## Commands\n\nRun from the repository root on the device (paths as there):\n\n```\n"
                  + "".join(c + "\n" for c in self.commands) + "```\n")
        with open(os.path.join(self.out, f"{date}-{slug}.md"), "w") as f:
            f.write("\n".join(md))
        with tarfile.open(os.path.join(self.out, "logs.tar.gz"), "w:gz") as tar:
            tar.add(self.work, arcname=".", filter=lambda ti: None if ti.name.endswith(".mem") else ti)

    # ---- the whole run -------------------------------------------------------------------------
    def prepare(self):
        if self.dry:
            self.work = os.path.join("/tmp", f"stp-gpu-check-dry.{os.getpid()}")
            os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
            return
        marker = os.path.join(self.work, ".stp-gpu-check")
        if os.path.exists(self.work) and not os.path.exists(marker):
            raise SystemExit(f"gpu_check: {self.work} exists and is not ours (no .stp-gpu-check); "
                             "set STP_GPU_CHECK_WORK")
        shutil.rmtree(self.work, ignore_errors=True)
        try:
            os.makedirs(os.path.join(self.work, "logs"))
            os.makedirs(os.path.join(self.work, "train"))
            os.makedirs(self.out, exist_ok=True)
        except OSError as err:
            raise SystemExit(f"gpu_check: cannot create {self.work} or {self.out}: {err}")
        open(marker, "w").close()
        for name in ("summary.txt", "results.json", "console.log", "logs.tar.gz"):
            try:
                os.remove(os.path.join(self.out, name))
            except OSError:
                pass
        for old in glob.glob(os.path.join(self.out, "*-*.md")):
            os.remove(old)
        if os.path.abspath(self.out) == os.path.join(ROOT, "gpu-results") and os.path.isdir(os.path.join(ROOT, ".git")):
            ex = os.path.join(ROOT, ".git", "info", "exclude")
            lines = open(ex).read().splitlines() if os.path.exists(ex) else []
            if "/gpu-results/" not in lines:
                os.makedirs(os.path.dirname(ex), exist_ok=True)
                with open(ex, "a") as f:
                    f.write("/gpu-results/\n")
        self.console = open(os.path.join(self.out, "console.log"), "a")

    def on_signal(self, signum, _frame):
        """The device tool's timeout (or ^C): end the command in flight, keep what was measured."""
        self.say(f"gpu_check: signal {signum}: stopping; the report holds what finished")
        self.stop_child()
        self.report()
        raise SystemExit(128 + signum)

    def main(self):
        self.prepare()
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        self.say(f"== stp gpu_check: mode {self.mode}, budget {self.budget_s}s, out {self.out}"
                 + (", DRY RUN: nothing is run" if self.dry else ""))
        head = self.quiet(["git", "-C", ROOT, "rev-parse", "HEAD"])
        if head is None:
            try:
                head = open(os.path.join(self.debs, "SOURCE.txt")).readline().strip()
            except OSError:
                head = "unknown"
        dirty = self.quiet(["git", "-C", ROOT, "status", "--porcelain"])
        n = len(dirty.splitlines()) if dirty else 0
        self.fact("source", head + (f" ({n} files changed)" if n else ""))
        self.fact("skip_steps", self.skip_steps)
        if self.mode == "none":
            self.say(f"gpu_check: no usable GPU (nvidia-smi: {'yes' if self.gpu_seen else 'no'}, "
                     f"torch: {self.py or 'not found'}).")
            self.say("  Set STP_GPU_CHECK_ALLOW_CPU=1 for the CPU smoke run, or --dry-run to see the GPU commands.")
            self.record("env", 2, 0, "no usable GPU")
            return 2
        if not shutil.which("nvcc") and os.access("/usr/local/cuda/bin/nvcc", os.X_OK):
            os.environ["PATH"] += ":/usr/local/cuda/bin"  # CUDAToolkit and torch's CMake config
        for stage in ("env", "deps", "build", "tests", "verify", "copy"):
            if self.want(stage):
                self.say(f"== {stage}")
                getattr(self, "stage_" + stage)()
            elif stage == "deps":
                self.use_prefix()
            elif stage == "build":
                self.pick_binary_without_building()
        # The headline pair first: "off", then the baseline, then the offload budgets.
        if self.want("train"):
            self.stage_train_off()
        if self.want("baseline"):
            self.stage_baseline()
        if self.want("train"):
            self.stage_train_budgets()
        self.report()
        self.say("")
        self.say(f"== done in {int(time.monotonic() - self.t0)}s; results in {self.out}")
        if self.dry:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            self.say("")
            try:
                self.say(open(os.path.join(self.out, "summary.txt")).read().rstrip("\n"))
            except OSError:
                pass
        bad = [s["step"] for s in self.steps_done if s["status"] not in ("ok", "skipped")]
        if self.strict and bad:
            self.say(f"gpu_check: --strict: {' '.join(bad)} did not end ok")
            return 1
        return 0

    def pick_binary_without_building(self):
        """--skip build: STP_GPU_CHECK_STP, this build folder's binary, else the carried one."""
        exe = os.path.join(self.build, "apps", "stp")
        if self.stp_given:
            self.stp = [self.stp_given]
            self.fact("binary", f"given ({self.stp_given})")
        elif os.access(exe, os.X_OK) or self.dry:
            self.stp = [exe]
            self.built_here = True
            self.fact("binary", f"built earlier ({exe})")
        else:
            self.fallback_prebuilt()


def run_main(argv, environ):
    """Bad arguments and settings say so in one line and exit 2 (SystemExit with a message)."""
    try:
        return Check(argv, environ).main()
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(run_main(sys.argv[1:], os.environ))
