#!/usr/bin/env bash
# bench/gpu_check.sh — the entry point of the GPU check; the logic is bench/gpu_check.py (standard
# library Python: stages, timeouts, the report). `bash bench/gpu_check.sh --help` lists the stages
# and settings; bench/results/README.md says how to run it in one `device` call and read it.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for py in ${STP_GPU_CHECK_PYTHON:-} python3 /opt/torch/.venv/bin/python3 /opt/stp-venv/bin/python; do
  command -v "$py" >/dev/null 2>&1 && exec "$py" "$here/gpu_check.py" "$@"
done
echo "gpu_check.sh: no python3 found (set STP_GPU_CHECK_PYTHON)" >&2
exit 2
