#!/usr/bin/env bash
# bench/gpu_check.sh — the GPU check of issue 8, made to fit one `device` call (about 5-7 minutes
# on an H100 with 16 cores; a global budget stops it at STP_GPU_CHECK_BUDGET_S, default 470 s).
#
#   env        nvidia-smi, driver, CUDA, torch, compilers
#   deps       unpack the carried .gpu-debs/*.deb (bench/gpu_deps.sh) into /tmp/stp-deps (not /)
#   configure  cmake against the preinstalled PyTorch, STP_WITH_CUDA=ON, sm_90, Ninja, no ccache
#   build      ninja: the stp CLI and the gpu-labelled test executables, into build-gpu/
#   tests      ctest -L gpu
#   bench      stp bench pool / stp bench copy --backend cuda (ratios vs cudaHostAlloc and a bare
#              cudaMemcpyAsync loop, measured in the same run)
#   train      stp train on one GPU, STP schedule (pp=1: the V's two chunks on the one GPU), bf16,
#              offload off and at 50 % and 75 % of the planned peak (an infeasible budget is
#              rerun at the smallest feasible one the planner names)
#   baseline   bench/torch_baseline.py: the same model and batch as a plain PyTorch loop
# Every step has its own timeout and none stops the others. Results land in $OUT (the device
# tool's output folder; ./gpu-results when OUT is unset): summary.txt (the one-screen summary,
# also printed last), results.json, <date>-<card>.md (for bench/results/), console.log and
# logs.tar.gz (every step's log, metrics.jsonl, timelines). They are rewritten after each step,
# so a run cut short still brings back what it measured.
#
# usage: bench/gpu_check.sh [--dry-run] [--only STEPS] [--skip STEPS] [--help]
#   --dry-run     print every command it would run (GPU path unless no GPU and ALLOW_CPU=1), run none
#   --only a,b    run only these steps (names above); --skip a,b: all but these
# Environment (all optional):
#   OUT                         output folder (default ./gpu-results)
#   STP_GPU_CHECK_ALLOW_CPU=1   no GPU: run the CPU-feasible parts with tiny sizes (smoke test)
#   STP_GPU_CHECK_MODE          gpu or cpu: force the mode (e.g. a GPU --dry-run on a CPU machine)
#   STP_GPU_CHECK_BUILD_DIR     build folder (default build-gpu); STP_GPU_CHECK_CONFIGURE=0 skips
#                               cmake and reuses the folder as configured
#   STP_GPU_CHECK_BUDGET_S      whole-run budget in seconds (default 470)
#   STP_GPU_CHECK_JOBS          ninja jobs (default nproc)
#   STP_GPU_CHECK_PYTHON        python with torch (default: the first of python3,
#                               /opt/torch/.venv/bin/python3, /opt/stp-venv/bin/python that has it)
#   STP_GPU_CHECK_DEBS          carried .deb folder (default .gpu-debs); STP_GPU_CHECK_PREFIX
#                               where they are unpacked (default /tmp/stp-deps)
#   STP_GPU_CHECK_WORK          scratch folder (default /tmp/stp-gpu-check)
#   STP_GPU_CHECK_CMAKE_EXTRA   more cmake arguments (split on spaces)
#   STP_GPU_CHECK_HOST_GBPS     the planner's host link (default: what `bench copy` measured)
#   STP_GPU_CHECK_TRAIN_TIMEOUT seconds per training run (default 200; after "off": 3x its time)
#   Model and run (GPU defaults; CPU mode uses tiny ones): STP_GPU_CHECK_D_MODEL (2048),
#   _LAYERS (24: 1.21 B parameters), _HEADS (16), _SEQ (2048), _MBS (2, micro_batch_size),
#   _MICRO (4, microbatches), _STEPS (8), _SKIP_STEPS (2, not timed), _BUDGETS ("50% 75%"),
#   _BASELINE_ATTENTION ("explicit,sdpa"), _BASELINE_PRECISION ("bf16-master,autocast": the
#   like-for-like recipe first, then the standard autocast one; each with every attention)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2

usage() { sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

ALL_STEPS="env deps configure build tests bench train baseline"
DRY_RUN=0
ONLY=""
SKIP=""
while (($#)); do
  case "$1" in
    -n|--dry-run) DRY_RUN=1; shift ;;
    --only) ONLY=${2:-}; shift 2 || { echo "gpu_check.sh: --only needs a list" >&2; exit 2; } ;;
    --only=*) ONLY=${1#*=}; shift ;;
    --skip) SKIP=${2:-}; shift 2 || { echo "gpu_check.sh: --skip needs a list" >&2; exit 2; } ;;
    --skip=*) SKIP=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for s in ${ONLY//,/ } ${SKIP//,/ }; do
  [[ " $ALL_STEPS " == *" $s "* ]] || { echo "gpu_check.sh: unknown step '$s' (steps: $ALL_STEPS)" >&2; exit 2; }
done
want() {
  [[ ",$SKIP," == *",$1,"* ]] && return 1
  [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]
}

# ---- settings ------------------------------------------------------------------------------------
OUT=${OUT:-$ROOT/gpu-results}
WORK=${STP_GPU_CHECK_WORK:-/tmp/stp-gpu-check}
BUILD=${STP_GPU_CHECK_BUILD_DIR:-build-gpu}
[[ $BUILD = /* ]] || BUILD=$ROOT/$BUILD
CONFIGURE=${STP_GPU_CHECK_CONFIGURE:-1}
BUDGET_S=${STP_GPU_CHECK_BUDGET_S:-470}
JOBS=${STP_GPU_CHECK_JOBS:-$(nproc 2>/dev/null || echo 4)}
DEBS=${STP_GPU_CHECK_DEBS:-$ROOT/.gpu-debs}
PREFIX=${STP_GPU_CHECK_PREFIX:-/tmp/stp-deps}
ALLOW_CPU=${STP_GPU_CHECK_ALLOW_CPU:-0}
T0=$SECONDS

log() { printf '%s\n' "$*"; }
quote() {  # shell-quote for display: plain words as they are, others in single quotes
  local a out="" q="'"
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then out+="$a "; else out+="'${a//$q/$q\\$q$q}' "; fi
  done
  printf '%s' "${out% }"
}
remaining() { echo $((BUDGET_S - (SECONDS - T0))); }

# Python with torch (stdlib-only helpers use it too).
PY=""
for c in ${STP_GPU_CHECK_PYTHON:-} python3 /opt/torch/.venv/bin/python3 /opt/stp-venv/bin/python; do
  [[ -n $c ]] || continue
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' >/dev/null 2>&1; then PY=$(command -v "$c"); break; fi
done
SYSPY=${PY:-$(command -v python3 || echo python3)}

# Mode: gpu when nvidia-smi sees a GPU and torch can use it; cpu only when allowed.
MODE=${STP_GPU_CHECK_MODE:-}
GPU_SEEN=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then GPU_SEEN=1; fi
if [[ -z $MODE ]]; then
  if ((GPU_SEEN)); then
    MODE=gpu
    if [[ -z $PY ]] || ! "$PY" -c 'import sys,torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
      echo "gpu_check.sh: WARNING: nvidia-smi sees a GPU but torch (${PY:-not found}) cannot use it; going on" >&2
    fi
  elif [[ $ALLOW_CPU == 1 ]]; then
    MODE=cpu
  elif ((DRY_RUN)); then
    MODE=gpu
  else
    MODE=none
  fi
fi
[[ $MODE == gpu || $MODE == cpu || $MODE == none ]] || { echo "gpu_check.sh: STP_GPU_CHECK_MODE=$MODE must be gpu or cpu" >&2; exit 2; }

if [[ $MODE == cpu ]]; then
  DEV=cpu BACKEND=host
  : "${STP_GPU_CHECK_D_MODEL:=64}" "${STP_GPU_CHECK_LAYERS:=2}" "${STP_GPU_CHECK_HEADS:=2}"
  : "${STP_GPU_CHECK_SEQ:=64}" "${STP_GPU_CHECK_MBS:=2}" "${STP_GPU_CHECK_MICRO:=4}"
  : "${STP_GPU_CHECK_STEPS:=5}" "${STP_GPU_CHECK_SKIP_STEPS:=1}"
else
  DEV=cuda BACKEND=cuda
fi
D_MODEL=${STP_GPU_CHECK_D_MODEL:-2048}
LAYERS=${STP_GPU_CHECK_LAYERS:-24}
HEADS=${STP_GPU_CHECK_HEADS:-16}
SEQ=${STP_GPU_CHECK_SEQ:-2048}
MBS=${STP_GPU_CHECK_MBS:-2}
MICRO=${STP_GPU_CHECK_MICRO:-4}
STEPS=${STP_GPU_CHECK_STEPS:-8}
SKIP_STEPS=${STP_GPU_CHECK_SKIP_STEPS:-2}
BUDGETS=${STP_GPU_CHECK_BUDGETS:-50% 75%}
BL_ATTN=${STP_GPU_CHECK_BASELINE_ATTENTION:-explicit,sdpa}
BL_PREC=${STP_GPU_CHECK_BASELINE_PRECISION:-bf16-master,autocast}
for v in D_MODEL LAYERS HEADS SEQ MBS MICRO STEPS SKIP_STEPS JOBS BUDGET_S; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: $v=${!v} must be a whole number" >&2; exit 2; }
done
((SKIP_STEPS < STEPS)) || { echo "gpu_check.sh: SKIP_STEPS=$SKIP_STEPS must be < STEPS=$STEPS" >&2; exit 2; }

# ---- output and bookkeeping ----------------------------------------------------------------------
if ((DRY_RUN)); then
  WORK=$(mktemp -d /tmp/stp-gpu-check-dry.XXXXXX)
else
  if [[ -e $WORK && ! -e $WORK/.stp-gpu-check ]]; then
    echo "gpu_check.sh: $WORK exists and is not ours (no .stp-gpu-check); set STP_GPU_CHECK_WORK" >&2; exit 2
  fi
  rm -rf "$WORK"
  mkdir -p "$WORK/logs" "$WORK/train" "$OUT" || { echo "gpu_check.sh: cannot create $WORK or $OUT" >&2; exit 2; }
  touch "$WORK/.stp-gpu-check"
  rm -f "$OUT"/summary.txt "$OUT"/results.json "$OUT"/console.log "$OUT"/logs.tar.gz "$OUT"/*-*.md
  if [[ $OUT == "$ROOT/gpu-results" && -d $ROOT/.git ]]; then
    grep -qxF '/gpu-results/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/gpu-results/' >>"$ROOT/.git/info/exclude"
  fi
  exec > >(tee -a "$OUT/console.log") 2>&1
fi
mkdir -p "$WORK/logs" "$WORK/train"
L=$WORK/logs

fact() { ((DRY_RUN)) || printf '%s\t%s\n' "$1" "$2" >>"$WORK/facts.tsv"; }
record() {  # record STEP STATUS RC SECONDS NOTE
  ((DRY_RUN)) || printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$WORK/steps.tsv"
  log "   -> $1: $2 (rc $3, ${4}s)${5:+ — $5}"
}
tail_of() { [[ -f $1 ]] && tail -n "${2:-15}" "$1" | sed 's/^/   | /'; }

# x LOGFILE TIMEOUT CMD...: print the command, run it with a timeout (clipped to the remaining
# budget), append its output to LOGFILE. Returns its status; 125 when the budget is spent.
LAST_SECS=0
x() {
  local logf=$1 t=$2 rem rc s
  shift 2
  rem=$(remaining)
  ((t > rem)) && t=$rem
  log "+ $(quote "$@")"
  LAST_SECS=0
  ((DRY_RUN)) && return 0
  if ((t < 5)); then
    log "   skipped: the ${BUDGET_S}s budget is spent"
    echo "skipped: the ${BUDGET_S}s budget is spent: $(quote "$@")" >>"$logf"
    return 125
  fi
  echo "+ [timeout ${t}s] $(quote "$@")" >>"$logf"
  s=$SECONDS
  timeout -k 15 "$t" "$@" >>"$logf" 2>&1 </dev/null
  rc=$?
  LAST_SECS=$((SECONDS - s))
  ((rc == 124 || rc == 137)) && log "   TIMEOUT after ${t}s"
  echo "+ exit $rc after ${LAST_SECS}s" >>"$logf"
  return $rc
}
status_of() { case $1 in 0) echo ok ;; 125) echo skipped ;; 124|137) echo timeout ;; *) echo FAIL ;; esac; }

# GPU memory sampler (whole device, MiB) around a run; the maximum is the peak.
SAMPLER=""
mem_start() {
  [[ $MODE == gpu ]] || return 0
  log "+ nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > $1 &"
  ((DRY_RUN)) && return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$1" 2>/dev/null &
  SAMPLER=$!
}
mem_stop() {
  [[ -n $SAMPLER ]] || return 0
  kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null
  SAMPLER=""
}
mem_peak() { [[ -s $1 ]] && sort -n "$1" | tail -n 1 | tr -dc '0-9' || true; }

# ---- the report: summary.txt, results.json, <date>-<card>.md, logs.tar.gz ---------------------
report() {
  ((DRY_RUN)) && return 0
  "$SYSPY" - "$WORK" "$OUT" "$BUDGET_S" "$((SECONDS - T0))" <<'PY' || echo "gpu_check.sh: report failed (see above)"
import json, os, re, statistics, sys, time
work, out, budget_s, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def read_tsv(name, ncols):
    rows = []
    p = os.path.join(work, name)
    if os.path.exists(p):
        for line in open(p, errors="replace"):
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= ncols:
                rows.append(parts)
    return rows

facts = {k: v for k, v in read_tsv("facts.tsv", 2)}
steps = [dict(zip(("step", "status", "rc", "seconds", "note"), r)) for r in read_tsv("steps.tsv", 5)]

def jl(text):
    try:
        return json.loads(text)
    except Exception:
        return None

bench = []
for label, line in read_tsv("bench.tsv", 2):
    j = jl(line)
    if j is not None:
        j["label"] = label
        bench.append(j)

def fmt_bytes(b):
    if b is None:
        return "-"
    b = float(b)
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or u == "TiB":
            return f"{b:.0f} {u}" if u == "B" else f"{b:.2f} {u}"
        b /= 1024

def disp(label):
    if label.endswith("pct-min"):
        return label[:-7] + "%->floor"
    if label.endswith("pct"):
        return label[:-3] + "%"
    return label

def fmt_params(n):
    return f"{n/1e9:.2f} B" if n >= 1e8 else f"{n/1e6:.2f} M"

def fmt_ns(ns):
    if ns is None:
        return "-"
    return f"{ns:.0f} ns" if ns < 1e3 else f"{ns/1e3:.1f} us" if ns < 1e6 else f"{ns/1e6:.2f} ms"

def meta(path):
    d = {}
    if os.path.exists(path):
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                d[k] = v
    return d

skip = int(facts.get("skip_steps", "1"))
runs = []
tdir = os.path.join(work, "train")
for name in sorted(os.listdir(tdir)) if os.path.isdir(tdir) else []:
    if not name.endswith(".meta"):
        continue
    m = meta(os.path.join(tdir, name))
    label = name[:-5]
    rows = []
    mp = os.path.join(tdir, label, "metrics.jsonl")
    if os.path.exists(mp):
        rows = [r for r in (jl(l) for l in open(mp)) if r]
    timed = [r for r in rows if r.get("step", 0) > skip] or rows[-1:]
    r = {"label": label, "order": int(m.get("order", "99")), "budget": m.get("budget", ""),
         "requested": m.get("requested", m.get("budget", "")), "status": m.get("status", "?"),
         "rc": m.get("rc"), "note": m.get("note", ""), "steps_logged": len(rows),
         "steps_timed": len(timed), "gpu_mem_peak_mib": int(m["mem_peak_mib"]) if m.get("mem_peak_mib") else None,
         "planned_budget_bytes": int(m["planned_budget"]) if m.get("planned_budget") else None,
         "planned_peak_before": int(m["planned_before"]) if m.get("planned_before") else None,
         "planned_peak_after": int(m["planned_after"]) if m.get("planned_after") else None,
         "planned_slowdown_pct": float(m["planned_slowdown"]) if m.get("planned_slowdown") else None,
         "micro_batch_size": int(m.get("mbs", "0") or 0)}
    if timed:
        secs = [x["step_seconds"] for x in timed]
        r["step_seconds_median"] = statistics.median(secs)
        r["step_seconds_min"] = min(secs)
        r["step_seconds_max"] = max(secs)
        r["tokens_per_step"] = int(facts.get("tokens_per_step_mbs%d" % r["micro_batch_size"], facts.get("tokens_per_step", "0")))
        if r["tokens_per_step"]:
            r["tokens_per_s"] = r["tokens_per_step"] / r["step_seconds_median"]
        r["peak_activation_bytes"] = max(x.get("peak_activation_bytes", 0) for x in rows)
        r["offloaded_bytes_per_step"] = statistics.median(x.get("offloaded_bytes", 0) for x in timed)
        r["reload_wait_pct"] = 100 * statistics.median(x.get("reload_wait", 0) for x in timed)
        r["loss_first"] = rows[0].get("loss")
        r["loss_last"] = rows[-1].get("loss")
    runs.append(r)
runs.sort(key=lambda r: r["order"])
off = next((r for r in runs if r["label"] == "off" and "step_seconds_median" in r), None)
for r in runs:
    if off and "step_seconds_median" in r and r is not off:
        r["overhead_vs_off_pct"] = 100 * (r["step_seconds_median"] / off["step_seconds_median"] - 1)
        if r.get("peak_activation_bytes") and off.get("peak_activation_bytes"):
            r["act_peak_vs_off"] = r["peak_activation_bytes"] / off["peak_activation_bytes"]

baseline = []
bp = os.path.join(work, "baseline.jsonl")
if os.path.exists(bp):
    baseline = [j for j in (jl(l) for l in open(bp)) if j]
bmeta = meta(os.path.join(work, "baseline.meta"))
for b in baseline:
    if off and b.get("tokens_per_s") and off.get("tokens_per_s"):
        b["ours_off_over_theirs"] = off["tokens_per_s"] / b["tokens_per_s"]

tests = {k[6:]: v for k, v in facts.items() if k.startswith("tests_")}

# ---- text ----
card = facts.get("gpu_name", "no GPU" if facts.get("mode") != "gpu" else "?")
date = time.strftime("%Y-%m-%d", time.gmtime())
L = []
L.append(f"stp GPU check {date} | {card} | driver {facts.get('driver', '-')} | torch {facts.get('torch', '-')} "
         f"(CUDA {facts.get('torch_cuda', '-')}) | source {facts.get('source', '-')[:12]} | mode {facts.get('mode', '?')}")
L.append("steps: " + "  ".join(f"{s['step']} {s['status']} {s['seconds']}s" for s in steps)
         + f"   (elapsed {elapsed}s of {budget_s}s)")
if facts.get("binary"):
    L.append(f"binary: {facts['binary']}; configure: {facts.get('cmake_summary', '-')}")
if tests:
    L.append(f"gpu tests: {tests.get('passed', '?')} passed, {tests.get('failed', '?')} failed, "
             f"{tests.get('skipped', '?')} skipped of {tests.get('total', '?')}"
             + (f"; failed: {tests['failed_names']}" if tests.get("failed_names") else "")
             + (f"; skipped: {tests['skipped_names']}" if tests.get("skipped_names") else ""))
pools = [b for b in bench if b.get("bench") == "pool"]
if pools:
    L.append("pinned pool allocate+free vs " + pools[0].get("baseline", "baseline") + " (median; ratio = baseline/pool):")
    for b in pools:
        L.append(f"  {fmt_bytes(b.get('bytes')):>10}  pool {fmt_ns(b.get('pool_median_ns')):>9} (p90 {fmt_ns(b.get('pool_p90_ns'))})"
                 f"  baseline {fmt_ns(b.get('baseline_median_ns')):>9}  ratio {b.get('ratio', 0):.1f}x")
copies = [b for b in bench if b.get("bench") == "copy"]
if copies:
    if copies[0].get("backend") == "cuda":
        L.append("copy engine vs bare cudaMemcpyAsync, GB/s engine/baseline (ratio; goal >= 0.9):")
        for b in copies:
            cells = []
            for d in ("d2h", "h2d", "both"):
                c = b.get(d) or {}
                cells.append(f"{d} {c.get('copy_engine_gbps', 0):6.1f}/{c.get('cuda_memcpy_async_gbps', 0):6.1f} ({c.get('ratio', 0):.3f})")
            L.append(f"  {fmt_bytes(b.get('bytes')):>10} x{b.get('copies')}  " + "  ".join(cells))
    else:
        L.append("copy engine (host workers) vs memcpy, GB/s:")
        for b in copies:
            L.append(f"  {fmt_bytes(b.get('bytes')):>10} x{b.get('copies')}  engine {b.get('copy_engine_gbps', 0):.2f}"
                     f"  memcpy {b.get('memcpy_gbps', 0):.2f}  ratio {b.get('ratio', 0):.3f}")
model = facts.get("model_desc")
if runs or model:
    L.append(f"training (stp train, STP pp=1 tp=1): {model or '?'}; median over steps > {skip}"
             + (f"; planner host link {facts['host_gbps']} GB/s (measured)" if facts.get("host_gbps") else ""))
    L.append(f"  {'budget':<12}{'planned':>11}{'act peak':>11}{'gpu mem':>10}{'step s':>9}{'tok/s':>10}{'vs off':>9}"
             f"{'offload/step':>14}{'reload%':>8}  status")
    for r in runs:
        if "step_seconds_median" in r:
            vs = f"{r['overhead_vs_off_pct']:+.1f}%" if "overhead_vs_off_pct" in r else "-"
            mem = f"{r['gpu_mem_peak_mib']/1024:.1f}G" if r.get("gpu_mem_peak_mib") else "-"
            L.append(f"  {disp(r['label']):<12}{fmt_bytes(r.get('planned_budget_bytes')) if r.get('planned_budget_bytes') else '-':>11}"
                     f"{fmt_bytes(r['peak_activation_bytes']):>11}{mem:>10}{r['step_seconds_median']:9.3f}"
                     f"{r.get('tokens_per_s', 0):10.0f}{vs:>9}{fmt_bytes(r['offloaded_bytes_per_step']):>14}"
                     f"{r['reload_wait_pct']:8.1f}  {r['status']}{' — ' + r['note'] if r['note'] else ''}")
        else:
            L.append(f"  {disp(r['label']):<12}  {r['status']}{' — ' + r['note'] if r['note'] else ''}")
    worst = [r for r in runs if r["label"].startswith("50") and "overhead_vs_off_pct" in r]
    if worst:
        w = worst[-1]
        L.append(f"  {disp(w['label'])} budget: {w['overhead_vs_off_pct']:+.1f}% step time vs off (goal <= +3% at 50%), "
                 f"activation peak {100*w.get('act_peak_vs_off', 0):.0f}% of off")
if baseline:
    L.append("plain PyTorch loop, same model and batch (bench/torch_baseline.py):")
    for b in baseline:
        if "error" in b or "tokens_per_s" not in b:
            L.append(f"  {b.get('precision', '?')}/{b.get('attention', '?')}: {b.get('error', 'no result')} {b.get('detail', '')}")
            continue
        ratio = f"ours(off)/theirs {b['ours_off_over_theirs']:.2f}" if "ours_off_over_theirs" in b else "ours: no result"
        mem = f", peak alloc {fmt_bytes(b.get('peak_allocated_bytes'))}" if b.get("peak_allocated_bytes") else ""
        L.append(f"  {b['precision'] + '/' + b['attention']:<21} {b['tokens_per_s']:10.0f} tok/s  {b['step_seconds_median']:.3f} s/step"
                 f"{mem}  -> {ratio}")
elif bmeta:
    L.append(f"plain PyTorch loop: {bmeta.get('status', '?')} {bmeta.get('note', '')}")
summary = "\n".join(L) + "\n"

results = {"date": date, "facts": facts, "steps": steps, "tests": tests, "bench": bench,
           "train": runs, "baseline": baseline, "elapsed_s": elapsed, "budget_s": budget_s}
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "summary.txt"), "w") as f:
    f.write(summary)
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)

# ---- bench/results/<date>-<card>.md ----
slug = re.sub(r"[^a-z0-9]+", "-", card.lower().replace("nvidia", "")).strip("-") or "unknown"
if facts.get("mode") != "gpu":
    slug = "cpu-smoke"
for old in os.listdir(out):
    if old.endswith(".md"):
        os.remove(os.path.join(out, old))
md = []
md.append(f"# GPU check {date}: {card}\n")
md.append("Produced by `bench/gpu_check.sh` in one `device` call (bench/results/README.md says how to "
          "rerun it and read this). Raw numbers: `results.json` of the same run.\n")
md.append("| | |\n|---|---|")
for k, label in (("gpu_name", "GPU"), ("gpu_memory", "GPU memory"), ("driver", "driver"), ("torch", "PyTorch"),
                 ("torch_cuda", "CUDA (torch)"), ("nvcc", "nvcc"), ("cxx", "C++ compiler"), ("cmake", "CMake"),
                 ("cpus", "CPU cores"), ("source", "source commit"), ("binary", "stp binary"),
                 ("cmake_summary", "configure"), ("mode", "mode")):
    if facts.get(k):
        md.append(f"| {label} | {facts[k]} |")
md.append(f"| steps | " + ", ".join(f"{s['step']} {s['status']} ({s['seconds']} s)" for s in steps) + " |")
md.append("\n## Summary\n\n```\n" + summary + "```\n")
if runs:
    md.append("## Training runs\n")
    md.append("| budget | planned budget | planner's peak before -> after | measured act peak | GPU mem (nvidia-smi) | step s (median) | tok/s | vs off | offloaded/step | reload wait | loss first -> last | status |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        if "step_seconds_median" not in r:
            md.append(f"| {disp(r['label'])} | | | | | | | | | | | {r['status']} {r['note']} |")
            continue
        pp = (f"{fmt_bytes(r['planned_peak_before'])} -> {fmt_bytes(r['planned_peak_after'])}"
              if r.get("planned_peak_before") else "-")
        md.append(f"| {disp(r['label'])} | {fmt_bytes(r.get('planned_budget_bytes')) if r.get('planned_budget_bytes') else '-'} | {pp} | "
                  f"{fmt_bytes(r['peak_activation_bytes'])} | "
                  f"{(str(round(r['gpu_mem_peak_mib']/1024, 1)) + ' GiB') if r.get('gpu_mem_peak_mib') else '-'} | "
                  f"{r['step_seconds_median']:.4f} | {r.get('tokens_per_s', 0):.0f} | "
                  f"{('%+.1f%%' % r['overhead_vs_off_pct']) if 'overhead_vs_off_pct' in r else '-'} | "
                  f"{fmt_bytes(r['offloaded_bytes_per_step'])} | {r['reload_wait_pct']:.1f}% | "
                  f"{r.get('loss_first', 0):.3f} -> {r.get('loss_last', 0):.3f} | {r['status']} {r['note']} |")
    md.append("")
if baseline:
    md.append("## Plain PyTorch baseline\n")
    md.append("| precision | attention | params | tok/s | step s (median) | peak allocated | ours (off) / theirs |")
    md.append("|---|---|---|---|---|---|---|")
    for b in baseline:
        if "tokens_per_s" not in b:
            md.append(f"| {b.get('precision')} | {b.get('attention')} | | {b.get('error', '')} | | | |")
            continue
        md.append(f"| {b['precision']} | {b['attention']} | {fmt_params(b['params'])} | {b['tokens_per_s']:.0f} | "
                  f"{b['step_seconds_median']:.4f} | {fmt_bytes(b.get('peak_allocated_bytes'))} | "
                  f"{('%.2f' % b['ours_off_over_theirs']) if 'ours_off_over_theirs' in b else '-'} |")
    md.append("")
cp = os.path.join(work, "commands.txt")
cmds = open(cp).read() if os.path.exists(cp) else ""
md.append("## Commands\n\nRun from the repository root on the device (paths as there):\n\n```\n" + cmds + "```\n")
with open(os.path.join(out, f"{date}-{slug}.md"), "w") as f:
    f.write("\n".join(md))
PY
  tar czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.mem' . 2>/dev/null || true
}

# ---- steps ---------------------------------------------------------------------------------------
note_cmd() { ((DRY_RUN)) || printf '%s\n' "$(quote "$@")" >>"$WORK/commands.txt"; }
STP_CMD=()
log "== stp gpu_check: mode $MODE, budget ${BUDGET_S}s, out $OUT$( ((DRY_RUN)) && echo ', DRY RUN: nothing is run')"
fact mode "$MODE"
fact skip_steps "$SKIP_STEPS"
SOURCE=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || head -n 1 "$DEBS/SOURCE.txt" 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)
fact source "$SOURCE${DIRTY:+ ($DIRTY files changed)}"
if [[ $MODE == none ]]; then
  log "gpu_check.sh: no usable GPU (nvidia-smi: $( ((GPU_SEEN)) && echo yes || echo no), torch: ${PY:-not found})."
  log "  Set STP_GPU_CHECK_ALLOW_CPU=1 for the CPU smoke run, or --dry-run to see the GPU commands."
  record env FAIL 2 0 "no usable GPU"
  report
  exit 2
fi


# env ------------------------------------------------------------------------------------------------
if want env; then
  log "== env"
  s=$SECONDS
  f=$L/env.log
  x "$f" 20 uname -a
  x "$f" 10 nproc
  x "$f" 10 free -g
  if [[ $MODE == gpu ]]; then
    x "$f" 20 nvidia-smi -L
    x "$f" 20 nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.max,pcie.link.width.max,clocks.max.sm --format=csv
    x "$f" 20 nvidia-smi
    x "$f" 20 nvidia-smi topo -m
  fi
  x "$f" 60 "${PY:-python3}" -c 'import torch; print(torch.__version__, torch.version.cuda); print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
  x "$f" 10 bash -c 'command -v nvcc >/dev/null && nvcc --version || ls /usr/local/cuda*/bin/nvcc'
  x "$f" 10 bash -c 'for t in cmake ninja c++ g++ gcc dpkg timeout; do printf "%s: " $t; command -v $t || echo MISSING; done; cmake --version | head -n 1; ninja --version; c++ --version | head -n 1'
  if ((!DRY_RUN)); then
    fact cpus "$(nproc)"
    if [[ $MODE == gpu ]]; then
      IFS=, read -r gname gmem gdrv < <(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n 1)
      fact gpu_name "$(echo "$gname" | xargs)"
      fact gpu_memory "$(echo "$gmem" | xargs)"
      fact driver "$(echo "$gdrv" | xargs)"
    fi
    [[ -n $PY ]] && fact torch "$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
    [[ -n $PY ]] && fact torch_cuda "$("$PY" -c 'import torch; print(torch.version.cuda)' 2>/dev/null)"
    fact nvcc "$( (command -v nvcc >/dev/null && nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    fact cxx "$(c++ --version 2>/dev/null | head -n 1)"
    fact cmake "$(cmake --version 2>/dev/null | head -n 1)"
    grep -m1 -A3 'nvidia-smi -L' "$f" | sed -n 2p | sed 's/^/   /'
  fi
  [[ -z $PY ]] && log "   no python with torch found: configure and the baseline will fail"
  record env ok 0 $((SECONDS - s))
  report
fi

# PATH for nvcc (CUDAToolkit and torch's CMake config look for it).
if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=$PATH:/usr/local/cuda/bin; fi

# deps -----------------------------------------------------------------------------------------------
HAVE_PREFIX=0
if want deps; then
  log "== deps"
  s=$SECONDS
  f=$L/deps.log
  st=ok note=""
  if compgen -G "$DEBS/*.deb" >/dev/null || ((DRY_RUN)); then
    x "$f" 30 rm -rf "$PREFIX"
    x "$f" 10 mkdir -p "$PREFIX"
    if command -v dpkg >/dev/null 2>&1 || ((DRY_RUN)); then
      for deb in "$DEBS"/*.deb; do
        x "$f" 30 dpkg -x "$deb" "$PREFIX" || { st=FAIL; note="dpkg -x $(basename "$deb") failed"; }
      done
    else  # no dpkg: a .deb is an ar archive holding data.tar.*
      for deb in "$DEBS"/*.deb; do
        x "$f" 30 bash -c 'd=$(mktemp -d) && cd "$d" && ar x "$2" && tar -xf data.tar.* -C "$1"; rc=$?; rm -rf "$d"; exit $rc' _ "$PREFIX" "$deb" ||
          { st=FAIL; note="unpacking $(basename "$deb") failed"; }
      done
    fi
    HAVE_PREFIX=1
    lib=$PREFIX/usr/lib/x86_64-linux-gnu
    # hwloc's shared library comes from another distribution: keep it only if it loads here.
    missing=""
    ((!DRY_RUN)) && [[ -e $lib/libhwloc.so.15 ]] && missing=$(ldd "$lib/libhwloc.so.15" 2>&1 | grep 'not found')
    if [[ -n $missing ]]; then
      log "   libhwloc.so.15 from the .deb misses libraries here: $(xargs <<<"$missing"); building without it"
      rm -rf "$PREFIX/usr/include/hwloc.h" "$PREFIX/usr/include/hwloc" "$PREFIX/usr/include/x86_64-linux-gnu/hwloc" "$lib"/libhwloc*
      note="hwloc dropped (missing shared libraries)"
    fi
  else
    note="no $DEBS/*.deb: relying on system packages (bench/gpu_deps.sh makes them)"
    log "   $note"
  fi
  if ((!DRY_RUN)); then
    for h in CLI/CLI.hpp nlohmann/json.hpp gloo/algorithm.h gtest/gtest.h gmock/gmock.h hwloc.h numa.h; do
      where="missing"
      [[ -e /usr/include/$h ]] && where="system"
      [[ -e /usr/local/include/$h ]] && where="system(/usr/local)"
      [[ -e $PREFIX/usr/include/$h ]] && where="${where/missing/}${where:+ + }prefix"
      printf '   %-20s %s\n' "$h" "$where" | tee -a "$f"
    done
  fi
  record deps "$st" 0 $((SECONDS - s)) "$note"
  report
elif [[ -d $PREFIX/usr ]]; then
  HAVE_PREFIX=1
fi
if ((HAVE_PREFIX)); then
  export CPATH=$PREFIX/usr/include:$PREFIX/usr/include/x86_64-linux-gnu${CPATH:+:$CPATH}
  export CMAKE_POLICY_VERSION_MINIMUM=3.5
fi

# configure ------------------------------------------------------------------------------------------
CONFIGURED=0
if want configure; then
  log "== configure"
  s=$SECONDS
  f=$L/configure.log
  if [[ $CONFIGURE == 0 ]]; then
    if [[ -f $BUILD/CMakeCache.txt ]]; then
      log "   STP_GPU_CHECK_CONFIGURE=0: reusing $BUILD as configured"
      CONFIGURED=1
      record configure ok 0 0 "reused $BUILD"
    else
      record configure FAIL 1 0 "STP_GPU_CHECK_CONFIGURE=0 but $BUILD has no CMakeCache.txt"
    fi
  else
    TORCH_PREFIX=""
    [[ -n $PY ]] && TORCH_PREFIX=$("$PY" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)' 2>/dev/null)
    ((DRY_RUN)) && [[ -z $TORCH_PREFIX ]] && TORCH_PREFIX='$(python3 -c "import torch.utils;print(torch.utils.cmake_prefix_path)")'
    args=(-S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
          "-DSTP_TORCH_PREFIX=$TORCH_PREFIX" "-DSTP_PYTHON=${PY:-python3}"
          "-DSTP_WITH_CUDA=$([[ $MODE == gpu ]] && echo ON || echo AUTO)" -DTORCH_CUDA_ARCH_LIST=9.0
          -DSTP_BUILD_BENCH=OFF -DSTP_BUILD_TESTS=ON -DSTP_CCACHE=OFF)
    ((HAVE_PREFIX)) && args+=("-DCMAKE_PREFIX_PATH=$PREFIX/usr")
    # shellcheck disable=SC2206
    args+=(${STP_GPU_CHECK_CMAKE_EXTRA:-})
    note_cmd cmake "${args[@]}"
    x "$f" 180 cmake "${args[@]}"
    rc=$?
    [[ $rc == 0 ]] && CONFIGURED=1
    summ=$(grep -m1 -o 'stp: CUDA=.*' "$f" 2>/dev/null)
    fact cmake_summary "$summ"
    ((rc)) && tail_of "$f" 25
    record configure "$(status_of $rc)" $rc $((SECONDS - s)) "$summ"
  fi
  report
elif [[ -f $BUILD/CMakeCache.txt ]]; then
  CONFIGURED=1
fi

# build ----------------------------------------------------------------------------------------------
gpu_test_targets() {  # tests/**/CMakeLists.txt: stp_add_tests(<name> ... LABELS gpu)
  grep -rhoE 'stp_add_tests\([A-Za-z0-9_]+[^)]*LABELS[^)]*\bgpu\b' "$ROOT/tests" --include=CMakeLists.txt |
    sed -E 's/stp_add_tests\(([A-Za-z0-9_]+).*/\1/' | sort -u
}
if want build; then
  log "== build"
  s=$SECONDS
  f=$L/build.log
  if ((CONFIGURED || DRY_RUN)); then
    targets=(stp_cli)
    known=$(ninja -C "$BUILD" -t targets all 2>/dev/null)  # (no `| grep -q`: SIGPIPE under pipefail)
    for t in $(gpu_test_targets); do
      if ((DRY_RUN)) || grep -q "^$t:" <<<"$known"; then targets+=("$t"); fi
    done
    note_cmd ninja -C "$BUILD" -k 0 -j "$JOBS" "${targets[@]}"
    x "$f" 420 ninja -C "$BUILD" -k 0 -j "$JOBS" "${targets[@]}"
    rc=$?
    ((rc)) && { grep -E 'error|FAILED' "$f" | head -n 20 | sed 's/^/   | /'; tail_of "$f" 10; }
    record build "$(status_of $rc)" $rc $((SECONDS - s)) "targets: ${targets[*]}"
  else
    record build skipped 125 0 "not configured"
  fi
  report
fi

# Which binary: this build's, else the prebuilt one carried in .gpu-debs/prebuilt/.
TORCH_LIBS=""
if [[ -n $PY ]]; then
  TORCH_LIBS=$("$PY" - <<'PY' 2>/dev/null
import glob, os, torch
d = os.path.dirname(torch.__file__)
site = os.path.dirname(d)
dirs = [os.path.join(d, "lib")] + sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))
print(":".join(p for p in dirs if os.path.isdir(p)))
PY
)
fi
if [[ -x $BUILD/apps/stp ]] || ((DRY_RUN)); then
  STP_CMD=("$BUILD/apps/stp")
  fact binary "built here ($BUILD/apps/stp)"
elif [[ -x $DEBS/prebuilt/stp ]]; then
  STP_CMD=(env "LD_LIBRARY_PATH=$TORCH_LIBS:$PREFIX/usr/lib/x86_64-linux-gnu:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$DEBS/prebuilt/stp")
  fact binary "prebuilt, carried ($(grep -m1 '^source' "$DEBS/prebuilt/BUILD_INFO.txt" 2>/dev/null))"
  log "   using the carried prebuilt binary $DEBS/prebuilt/stp (the build here gave none)"
else
  log "   no stp binary: the bench and train steps will be skipped"
fi

# tests ----------------------------------------------------------------------------------------------
if want tests; then
  log "== tests (ctest -L gpu)"
  s=$SECONDS
  f=$L/tests.log
  if [[ -x $BUILD/apps/stp ]] || ((DRY_RUN)); then
    x "$f" 180 ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout 90 --no-tests=error
    rc=$?
  elif compgen -G "$DEBS/prebuilt/stp_*tests" >/dev/null; then
    rc=0
    for t in "$DEBS"/prebuilt/stp_*tests; do
      x "$f" 120 env "LD_LIBRARY_PATH=$TORCH_LIBS:$PREFIX/usr/lib/x86_64-linux-gnu" "$t" || rc=$?
    done
  else
    rc=125
  fi
  if ((!DRY_RUN)) && [[ -f $f ]]; then
    if grep -q 'No tests were found' "$f"; then
      fact tests_total 0
      log "   ctest found no gpu-labelled tests (was GoogleTest found? see $f)"
    elif grep -q 'tests passed' "$f"; then  # ctest
      # "100% tests passed out of 4" (CTest >= 3.27 when none failed) or
      # "75% tests passed, 1 tests failed out of 4"
      total=$(sed -n 's/.*% tests passed.* out of \([0-9]*\).*/\1/p' "$f" | tail -n 1)
      failed=$(sed -n 's/.* \([0-9]*\) tests\{0,1\} failed out of.*/\1/p' "$f" | tail -n 1)
      skipped=$(grep -c 'Skipped ' "$f")
      fact tests_total "${total:-0}"
      fact tests_failed "${failed:-0}"
      fact tests_skipped "$skipped"
      fact tests_passed "$(( ${total:-0} - ${failed:-0} - skipped ))"
      fact tests_failed_names "$(sed -n '/The following tests FAILED/,$p' "$f" | grep -oE '[0-9]+ - [^ ]+' | cut -d' ' -f3 | xargs)"
      fact tests_skipped_names "$(grep -E 'Skipped ' "$f" | grep -oE 'Test +#[0-9]+: [^ ]+' | awk '{print $NF}' | xargs)"
    else  # gtest binaries run directly
      fact tests_passed "$(grep -oE '\[  PASSED  \] [0-9]+' "$f" | awk '{s+=$NF} END {print s+0}')"
      fact tests_failed "$(grep -oE '\[  FAILED  \] [0-9]+ test' "$f" | awk '{s+=$(NF-1)} END {print s+0}')"
      fact tests_skipped "$(grep -oE '\[  SKIPPED \] [0-9]+ test' "$f" | awk '{s+=$(NF-1)} END {print s+0}')"
      fact tests_total "$(grep -oE '\[==========\] [0-9]+ tests? from [0-9]+ test suites? ran' "$f" | awk '{s+=$2} END {print s+0}')"
    fi
    ((rc && rc != 125)) && tail_of "$f" 30
  fi
  record tests "$(status_of $rc)" $rc $((SECONDS - s)) "$(grep -m1 -o '[0-9]*% tests passed.*' "$f" 2>/dev/null)"
  report
fi

# bench ----------------------------------------------------------------------------------------------
bench_one() {  # bench_one LABEL TIMEOUT ARGS...
  local label=$1 t=$2 f=$L/bench-$1.log rc
  shift 2
  note_cmd stp "$@"
  x "$f" "$t" "${STP_CMD[@]}" "$@"
  rc=$?
  if ((!DRY_RUN)); then
    local j
    j=$(grep -m1 '^{"bench"' "$f" 2>/dev/null)
    if [[ -n $j ]]; then printf '%s\t%s\n' "$label" "$j" >>"$WORK/bench.tsv"; log "   $j"; else tail_of "$f" 8; fi
  fi
  return $rc
}
if want bench; then
  log "== bench (pinned pool, copy engine; backend $BACKEND)"
  s=$SECONDS
  brc=0
  if ((${#STP_CMD[@]})); then
    if [[ $MODE == gpu ]]; then
      bench_one pool-1MiB 60 bench pool --backend cuda --bytes 1MiB || brc=$?
      bench_one pool-64MiB 60 bench pool --backend cuda --bytes 64MiB --batches 50 || brc=$?
      for b in 4MiB 32MiB 256MiB; do bench_one "copy-$b" 90 bench copy --backend cuda --bytes "$b" --copies 8 --repeats 7 || brc=$?; done
    else
      bench_one pool-64KiB 60 bench pool --backend host --bytes 64KiB || brc=$?
      bench_one copy-4MiB 60 bench copy --backend host --bytes 4MiB --copies 4 --repeats 3 --threads 2 || brc=$?
    fi
  else
    brc=125
  fi
  record bench "$(status_of $brc)" $brc $((SECONDS - s))
  report
fi

# train ----------------------------------------------------------------------------------------------
TRAIN_ORDER=0
TRAIN_SECS=0
TRAIN_TIMEOUT=${STP_GPU_CHECK_TRAIN_TIMEOUT:-200}  # per run; tightened once "off" has run
LAUNCH=()          # empty: stp train directly (world size 1); else stp run -n 1 --
OOM_RETRIED=0
tokens_facts() { fact tokens_per_step_mbs"$MBS" $((MICRO * MBS * SEQ)); fact tokens_per_step $((MICRO * MBS * SEQ)); }
model_fact() {
  local params=$((LAYERS * (12 * D_MODEL * D_MODEL + 13 * D_MODEL) + (258 + SEQ) * D_MODEL + 2 * D_MODEL + 258 * D_MODEL))
  fact model_desc "GPT d_model $D_MODEL, $LAYERS layers, $HEADS heads, seq $SEQ, vocab 258, bfloat16 ($(awk "BEGIN{p=$params; if (p >= 1e8) printf \"%.2f B\", p/1e9; else printf \"%.2f M\", p/1e6}") params); m=$MICRO microbatches x $MBS seqs = $((MICRO * MBS * SEQ)) tokens/step; $STEPS steps"
}
# The planner's host link: STP_GPU_CHECK_HOST_GBPS, else what `stp bench copy` measured here
# (the largest size: min of d2h, h2d and half of both-at-once), else stp's default.
host_gbps() {
  HOST_GBPS=${STP_GPU_CHECK_HOST_GBPS:-}
  if [[ -z $HOST_GBPS && $MODE == gpu && -s $WORK/bench.tsv ]]; then
    HOST_GBPS=$("$SYSPY" - "$WORK/bench.tsv" <<'PY' 2>/dev/null
import json, sys
best = None
for line in open(sys.argv[1]):
    label, _, js = line.partition("\t")
    j = json.loads(js)
    if j.get("bench") == "copy" and j.get("backend") == "cuda" and (best is None or j["bytes"] > best["bytes"]):
        best = j
if best:
    v = min(best["d2h"]["copy_engine_gbps"], best["h2d"]["copy_engine_gbps"], best["both"]["copy_engine_gbps"] / 2)
    if v > 0:
        print(f"{v:.1f}")
PY
)
  fi
  if [[ -n $HOST_GBPS ]]; then
    fact host_gbps "$HOST_GBPS"
    log "   planner host link: offload.host_gbps=$HOST_GBPS"
  fi
}
train_args() {  # train_args BUDGET LOGDIR
  TARGS=(train --set "run.device=$DEV" --set parallel.tp=1 --set parallel.pp=1 --set schedule.kind=stp
         --set "schedule.microbatches=$MICRO" --set "schedule.micro_batch_size=$MBS"
         --set "model.d_model=$D_MODEL" --set "model.n_layers=$LAYERS" --set "model.n_heads=$HEADS"
         --set "model.seq_len=$SEQ" --set model.dtype=bfloat16 --set "run.steps=$STEPS"
         --set run.checkpoint_interval=0 --set run.progress=false --set "run.log_dir=$2"
         --set "offload.budget=$1")
  [[ -n ${HOST_GBPS:-} ]] && TARGS+=(--set "offload.host_gbps=$HOST_GBPS")
}
# run_train LABEL BUDGET [REQUESTED]: one stp train run; writes train/LABEL/ and train/LABEL.meta.
# Sets TRAIN_RC and TRAIN_FLOOR (the smallest feasible budget in bytes when the planner refused).
run_train() {
  local label=$1 budget=$2 requested=${3:-$2} dir=$WORK/train/$1 f=$L/train-$1.log rc status note="" memf=$WORK/train/$1.mem
  TRAIN_FLOOR=""
  TRAIN_ORDER=$((TRAIN_ORDER + 1))
  rm -rf "$dir"
  train_args "$budget" "$dir"
  note_cmd stp "${LAUNCH[@]}" "${TARGS[@]}"
  mem_start "$memf"
  x "$f" "$TRAIN_TIMEOUT" env "MASTER_PORT=$((29400 + TRAIN_ORDER))" "${STP_CMD[@]}" "${LAUNCH[@]}" "${TARGS[@]}"
  rc=$?
  mem_stop
  TRAIN_SECS=$((TRAIN_SECS + LAST_SECS))
  TRAIN_RC=$rc
  status=$(status_of $rc)
  if ((!DRY_RUN)); then
    if ((rc)); then
      TRAIN_FLOOR=$(sed -n 's/.*smallest feasible budget [^(]*(\([0-9]*\) bytes).*/\1/p' "$f" | head -n 1)
      if [[ -n $TRAIN_FLOOR ]]; then
        status=infeasible note="smallest feasible budget $TRAIN_FLOOR bytes ($(numfmt --to=iec-i --suffix=B --format=%.2f "$TRAIN_FLOOR" 2>/dev/null))"
      elif grep -qi 'out of memory' "$f"; then
        status=OOM note="out of memory at micro_batch_size $MBS"
      fi
      grep -m3 -iE 'error|what\(\)|terminate' "$f" | sed 's/^/   | /'
      [[ -z $TRAIN_FLOOR ]] && tail_of "$f" 12
    fi
    local off_line
    off_line=$(grep -m1 '^offload: budget' "$f" 2>/dev/null | sed 's/^\[r0\] //')
    {
      echo "order=$TRAIN_ORDER"; echo "budget=$budget"; echo "requested=$requested"; echo "status=$status"
      echo "rc=$rc"; echo "note=$note"; echo "mbs=$MBS"; echo "mem_peak_mib=$(mem_peak "$memf")"
      if [[ -n $off_line ]]; then
        echo "planned_budget=$(sed -n 's/offload: budget \([0-9]*\) bytes.*/\1/p' <<<"$off_line")"
        echo "planned_before=$(sed -n 's/.*simulated peak \([0-9]*\) -> .*/\1/p' <<<"$off_line")"
        echo "planned_after=$(sed -n 's/.*simulated peak [0-9]* -> \([0-9]*\) bytes.*/\1/p' <<<"$off_line")"
        echo "planned_slowdown=$(sed -n 's/.*bytes, \([-+0-9.]*\)% step time.*/\1/p' <<<"$off_line")"
      fi
    } >"$WORK/train/$label.meta"
    grep -E '^(\[r0\] )?(done:|offload:)' "$f" | sed 's/^/   /'
  fi
  return $rc
}
train_budget() {  # train_budget PERCENT: a budget run, rerun at the planner's floor if infeasible
  local b=$1 label=${1%\%}pct
  run_train "$label" "$b"
  if [[ -n $TRAIN_FLOOR ]]; then
    log "   $b is below the smallest feasible budget ($TRAIN_FLOOR bytes): rerunning at it"
    run_train "$label-min" "$TRAIN_FLOOR" "$b"
  fi
  if ((DRY_RUN)); then log "   (if $b is infeasible: the same command with offload.budget=<the floor the planner names, in bytes>)"; fi
}
if want train; then
  log "== train (stp train on $DEV: STP pp=1 tp=1, bf16; offload off, ${BUDGETS})"
  s=$SECONDS
  trc=0
  if ((${#STP_CMD[@]})); then
    tokens_facts
    model_fact
    host_gbps
    run_train off off
    rc=$TRAIN_RC
    ((DRY_RUN)) && log "   (if off runs out of memory: micro_batch_size halved, rerun, and used by the baseline too;" \
                       "if it fails otherwise: rerun as stp run -n 1 --no-prefix -- stp train ...)"
    if ((!DRY_RUN)) && ((rc)) && [[ $rc != 125 && $rc != 124 && $rc != 137 ]]; then
      if grep -qi 'out of memory' "$L/train-off.log" && ((MBS > 1)); then
        MBS=$((MBS / 2))
        OOM_RETRIED=1
        log "   out of memory: retrying with micro_batch_size $MBS (the baseline uses it too)"
        tokens_facts
        model_fact
        run_train off off
      else
        log "   stp train failed directly; retrying under the launcher (stp run -n 1 --)"
        LAUNCH=(run -n 1 --no-prefix -- stp)
        run_train off off
      fi
      rc=$TRAIN_RC
    fi
    trc=$rc
    # A budget run takes about as long as "off"; a hang (or an "off" that failed) must not eat
    # the whole budget: later runs get 3x off's time + 30 s (at least 90 s), or 90 s.
    if ((!DRY_RUN)); then
      if ((rc == 0)); then
        TRAIN_TIMEOUT=$((3 * LAST_SECS + 30))
        ((TRAIN_TIMEOUT < 90)) && TRAIN_TIMEOUT=90
        ((TRAIN_TIMEOUT > ${STP_GPU_CHECK_TRAIN_TIMEOUT:-200})) && TRAIN_TIMEOUT=${STP_GPU_CHECK_TRAIN_TIMEOUT:-200}
      else
        TRAIN_TIMEOUT=90
      fi
    fi
    # The baseline runs next (between off and the budgets) when selected, so the two headline
    # numbers come first; the budgets follow.
    if want baseline; then RUN_BASELINE_NOW=1; fi
  else
    trc=125
  fi
fi

# baseline -------------------------------------------------------------------------------------------
run_baseline() {
  log "== baseline (plain PyTorch loop: $BL_PREC, attention $BL_ATTN)"
  local s=$SECONDS f=$L/baseline.log rc memf=$WORK/baseline.mem
  local args=(bench/torch_baseline.py --device "$DEV" --d-model "$D_MODEL" --n-layers "$LAYERS" --n-heads "$HEADS"
              --seq-len "$SEQ" --micro-batch-size "$MBS" --microbatches "$MICRO" --steps "$STEPS"
              --warmup "$SKIP_STEPS" --precision "$BL_PREC" --attention "$BL_ATTN" --json-out "$WORK/baseline.jsonl")
  note_cmd python3 "${args[@]}"
  if [[ -z $PY ]] && ((!DRY_RUN)); then
    record baseline FAIL 1 0 "no python with torch"
    return
  fi
  mem_start "$memf"
  x "$f" 240 env PYTHONUNBUFFERED=1 "${PY:-python3}" "${args[@]}"
  rc=$?
  mem_stop
  if ((!DRY_RUN)); then
    grep '^{' "$f" | cut -c1-400 | sed 's/^/   /'
    ((rc)) && tail_of "$f" 12
    printf 'status=%s\nrc=%s\nmem_peak_mib=%s\nnote=%s\n' "$(status_of $rc)" "$rc" "$(mem_peak "$memf")" \
      "$( ((rc == 3)) && echo 'out of memory')" >"$WORK/baseline.meta"
  fi
  record baseline "$(status_of $rc)" $rc $((SECONDS - s))
  report
}
if [[ ${RUN_BASELINE_NOW:-0} == 1 ]]; then
  report
  run_baseline
  BASELINE_DONE=1
fi

if want train && ((${#STP_CMD[@]})); then
  for b in $BUDGETS; do
    train_budget "$b"
    rc=$TRAIN_RC
    ((rc && !trc)) && trc=$rc
    report
  done
  record train "$(status_of $trc)" $trc "$TRAIN_SECS" "$( ((OOM_RETRIED)) && echo "micro_batch_size lowered to $MBS after OOM")"
  report
elif want train; then
  record train skipped 125 0 "no stp binary"
fi
if want baseline && [[ ${BASELINE_DONE:-0} != 1 ]]; then
  run_baseline
fi

report
log ""
log "== done in $((SECONDS - T0))s; results in $OUT"
if ((DRY_RUN)); then
  rm -rf "$WORK"
else
  log ""
  cat "$OUT/summary.txt" 2>/dev/null
  sleep 0.3  # let tee write console.log's last lines
fi
exit 0
