#!/usr/bin/env bash
# One-time, idempotent set-up of everything stp needs on a Debian 12 machine.
#   - Debian packages (compilers are assumed present: g++, cmake)
#   - LibTorch 2.11 from the torch==2.11.0 wheel, in a machine-level virtual env
#     (STP_VENV, default /opt/stp-venv) that every clone reuses
#   - a machine-level ccache directory (/var/cache/stp-ccache)
# Each step says what it does and skips itself when already done.
set -euo pipefail

STP_VENV=${STP_VENV:-/opt/stp-venv}
TORCH_VERSION=${STP_TORCH_VERSION:-2.11.0}
CCACHE_DIR=${CCACHE_DIR:-/var/cache/stp-ccache}

say() { printf '[setup] %s\n' "$*"; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# --- Debian packages -------------------------------------------------------
PKGS=(cmake ninja-build ccache pkg-config g++
      libhwloc-dev libnuma-dev
      libgtest-dev libgmock-dev libbenchmark-dev
      libcli11-dev nlohmann-json3-dev libgloo-dev
      python3-venv clang-format)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all present"
fi

# --- LibTorch from the torch wheel -----------------------------------------
PY=${STP_PYTHON:-python3}
if [ -x "$STP_VENV/bin/python" ] && \
   "$STP_VENV/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  say "torch $TORCH_VERSION: present in $STP_VENV"
else
  say "creating $STP_VENV and installing torch==$TORCH_VERSION (several GB, once per machine)"
  $SUDO "$PY" -m venv "$STP_VENV"
  $SUDO "$STP_VENV/bin/pip" install --quiet --upgrade pip
  $SUDO "$STP_VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" numpy safetensors
fi

# --- Python packages the scripts and tests use, in the same env ---------------
# (checked on their own: a machine that already had torch gets them too)
#   tokenizers: scripts/prepare_data.py's BPE tokenizer (tests/data runs the script)
#   transformers: the outside client of the Hugging Face import/export tests (tests/checkpoint)
PY_PKGS=(numpy safetensors tokenizers transformers)
if "$STP_VENV/bin/python" -c "import numpy, safetensors, tokenizers, transformers" 2>/dev/null; then
  say "python packages: all present (${PY_PKGS[*]})"
else
  say "installing python packages into $STP_VENV: ${PY_PKGS[*]}"
  $SUDO "$STP_VENV/bin/pip" install --quiet "${PY_PKGS[@]}"
fi

# --- ccache at machine level -----------------------------------------------
if [ ! -d "$CCACHE_DIR" ]; then
  say "creating ccache directory $CCACHE_DIR"
  $SUDO mkdir -p "$CCACHE_DIR"
  $SUDO chmod 1777 "$CCACHE_DIR"
fi
CCACHE_DIR="$CCACHE_DIR" ccache --max-size=10G >/dev/null

say "done: torch prefix $("$STP_VENV/bin/python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
