#!/usr/bin/env bash
# bench/gpu_deps.sh — run HERE (a machine with network and apt), before a `device` call:
# downloads the Debian packages that the GPU machine may lack into .gpu-debs/ (git-ignored
# through .git/info/exclude), so the call can carry them and bench/gpu_check.sh can unpack them
# with `dpkg -x` into a prefix (/tmp/stp-deps, never /). Optionally stages a stripped copy of
# the stp binary and the gpu test binaries built here: bench/gpu_check.py then skips the build on
# the device when the sources it was built from match the device's copy file for file (it saves
# the configure and cold build, a minute or more of the eight; the torch here and there is the
# same 2.11+cu130 and stp compiles no CUDA kernels of its own), and falls back to it when a build
# there fails.
#
#   bench/gpu_deps.sh                      download the .debs (replacing older ones), list sizes
#   bench/gpu_deps.sh --prebuilt DIR       also copy DIR/apps/stp and DIR's gpu test binaries
#                                          (a CUDA build made here, brought up to date
#                                          first) into .gpu-debs/prebuilt/, with the sha256 of
#                                          every source file (SOURCES.sha256)
#   bench/gpu_deps.sh --list               only list what .gpu-debs/ holds and its size
#   bench/gpu_deps.sh --clean              remove .gpu-debs/
#
# What the packages are for (cmake/StpDeps.cmake, engine/, apps/, tests/ CMakeLists.txt):
#   libcli11-dev        apps/: find_package(CLI11 CONFIG REQUIRED)
#   nlohmann-json3-dev  every room: nlohmann/json.hpp (find_package(nlohmann_json 3 REQUIRED))
#   libgloo-dev         engine/comm.cpp: c10d's ProcessGroupGloo.hpp needs gloo headers
#                       (find_path(gloo/algorithm.h)); the torch wheel ships none
#   libgtest-dev, libgmock-dev   tests/: find_package(GTest) (the gpu-labelled tests)
#   libhwloc-dev, libhwloc15, libnuma-dev, libnuma1   optional NUMA placement of pinned slabs
# Google Benchmark is not needed: gpu_check.sh configures with STP_BUILD_BENCH=OFF.
# The packages are this machine's (Debian 12); the GPU image is another distribution, so
# gpu_check.sh uses headers, static test libraries and the two small shared libraries only,
# and drops hwloc if its shared library cannot load there.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${STP_GPU_DEBS:-$ROOT/.gpu-debs}
PKGS=(libcli11-dev nlohmann-json3-dev libgloo-dev libgtest-dev libgmock-dev
      libhwloc-dev libhwloc15 libnuma-dev libnuma1)
CARRY_LIMIT=$((64 * 1024 * 1024))

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

mode=download
prebuilt=""
while (($#)); do
  case "$1" in
    --prebuilt) prebuilt=${2:?--prebuilt needs a build directory}; shift 2 ;;
    --prebuilt=*) prebuilt=${1#*=}; shift ;;
    --list) mode=list; shift ;;
    --clean) mode=clean; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_deps.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

human() { numfmt --to=iec-i --suffix=B "$1" 2>/dev/null || echo "$1 B"; }

# The working tree the device call sends (tracked + untracked-not-ignored files), in bytes.
tree_bytes() {
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard 2>/dev/null |
     du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1) || echo 0
}

list() {
  if [[ ! -d $DEST ]]; then echo "gpu_deps.sh: $DEST does not exist (run bench/gpu_deps.sh)"; return 1; fi
  echo "gpu_deps.sh: $DEST"
  (cd "$DEST" && find . -type f ! -name '*.txt' -printf '%s\t%P\n' | sort -k2 |
     while IFS=$'\t' read -r s p; do printf '  %10s  %s\n' "$(human "$s")" "$p"; done)
  local carried tree
  carried=$(du -sb "$DEST" | cut -f1)
  tree=$(tree_bytes)
  echo "  total carried: $(human "$carried") ($carried bytes); working tree: $(human "$tree");" \
       "together $(human $((carried + tree))) of the 64 MiB a call may send"
  if ((carried + tree > CARRY_LIMIT)); then
    echo "gpu_deps.sh: over the 64 MiB limit: drop --prebuilt or clean untracked files" >&2
    return 1
  fi
}

exclude_dir() {  # .gpu-debs must be ignored by git, else it travels twice and gets committed
  local ex
  ex=$(cd "$ROOT" && git rev-parse --git-path info/exclude 2>/dev/null) || return 0
  [[ $ex = /* ]] || ex=$ROOT/$ex
  mkdir -p "$(dirname "$ex")"
  grep -qxF '/.gpu-debs/' "$ex" 2>/dev/null || echo '/.gpu-debs/' >>"$ex"
  grep -qxF '/gpu-results/' "$ex" 2>/dev/null || echo '/gpu-results/' >>"$ex"
}

download() {
  command -v apt-get >/dev/null || { echo "gpu_deps.sh: apt-get not found (run on the Debian dev machine)" >&2; exit 1; }
  mkdir -p "$DEST"
  exclude_dir
  local tmp apt_opts=()
  tmp=$(mktemp -d "$DEST/.dl.XXXXXX")
  chmod 755 "$tmp"
  if [[ $(uname -m) != x86_64 ]]; then
    # The device is x86-64: fetch amd64 packages with their own lists (device README).
    mkdir -p /tmp/amd64/partial
    apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
    apt-get "${apt_opts[@]}" update -qq
  fi
  if ! (cd "$tmp" && apt-get "${apt_opts[@]}" download "${PKGS[@]}" 2>"$tmp/err.txt" >/dev/null); then
    echo "gpu_deps.sh: apt-get download failed; running apt-get update and trying once more" >&2
    apt-get "${apt_opts[@]}" update -qq
    (cd "$tmp" && apt-get "${apt_opts[@]}" download "${PKGS[@]}" >/dev/null) || {
      cat "$tmp/err.txt" >&2; rm -rf "$tmp"; exit 1; }
  fi
  local n
  n=$(find "$tmp" -maxdepth 1 -name '*.deb' | wc -l)
  if ((n != ${#PKGS[@]})); then
    echo "gpu_deps.sh: expected ${#PKGS[@]} .deb files, got $n" >&2; rm -rf "$tmp"; exit 1
  fi
  rm -f "$DEST"/*.deb
  mv "$tmp"/*.deb "$DEST"/
  rm -rf "$tmp"
  {
    echo "# .deb files for bench/gpu_check.sh, fetched $(date -u +%FT%TZ) on $(. /etc/os-release; echo "$PRETTY_NAME")"
    (cd "$DEST" && for f in *.deb; do
       printf '%s\t%s\t%s\n' "$(dpkg-deb -f "$f" Package)" "$(dpkg-deb -f "$f" Version)" "$(sha256sum "$f" | cut -c1-16)"
     done)
  } >"$DEST/MANIFEST.txt"
  # The source this bundle goes with (the device copy may have no .git).
  (cd "$ROOT" && { git rev-parse HEAD 2>/dev/null || echo unknown;
                   echo "dirty_files $(git status --porcelain 2>/dev/null | wc -l)"; }) >"$DEST/SOURCE.txt"
}

stage_prebuilt() {
  local b=$1
  [[ -d $b ]] || { echo "gpu_deps.sh: --prebuilt $b: no such directory" >&2; exit 2; }
  [[ -x $b/apps/stp ]] || { echo "gpu_deps.sh: --prebuilt $b: no apps/stp (ninja -C $b stp_cli)" >&2; exit 2; }
  if ! grep -q -- '-DSTP_WITH_CUDA=1' "$b/build.ninja" 2>/dev/null &&
     ! grep -q -- 'STP_WITH_CUDA=1' "$b/build.ninja" 2>/dev/null; then
    echo "gpu_deps.sh: --prebuilt $b is not a CUDA build (STP_WITH_CUDA); refusing" >&2; exit 2
  fi
  # The gpu-labelled test executables: stp_add_tests(... LABELS gpu) and rooms' NAME_gpu.
  local targets=(stp_cli) t
  for t in $(ninja -C "$b" -t targets all 2>/dev/null | sed -n 's/^\(stp_[A-Za-z0-9_]*\(_gpu\|_cuda_tests\)\): phony$/\1/p'); do
    targets+=("$t")
  done
  # Stale binaries would be matched against sources they were not built from: bring them up to
  # date first (`ninja -n` cannot tell: CMake's glob check always reruns first).
  echo "gpu_deps.sh: ninja -C $b ${targets[*]}"
  ninja -C "$b" "${targets[@]}" >/dev/null ||
    { echo "gpu_deps.sh: --prebuilt $b: the build failed (ninja -C $b ${targets[*]})" >&2; exit 2; }
  local dst=$DEST/prebuilt
  rm -rf "$dst"
  mkdir -p "$dst"
  cp "$b/apps/stp" "$dst/stp"
  local t
  for t in "${targets[@]:1}"; do
    t=$(find "$b/tests" -type f -name "$t" -perm -u+x | head -n 1)
    [[ -n $t ]] && cp "$t" "$dst/"
  done
  strip --strip-debug "$dst"/* 2>/dev/null || true
  # Every file a build reads from the tree, as sha256sum prints it ("<hash>  <path>").
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
     grep -zE '(\.(cpp|h|hpp|cu|cuh|cmake|in)|CMakeLists\.txt)$' | xargs -0 sha256sum) >"$dst/SOURCES.sha256"
  {
    echo "built_in $b"
    (cd "$ROOT" && echo "source $(git rev-parse HEAD 2>/dev/null || echo unknown)" &&
       echo "dirty_files $(git status --porcelain 2>/dev/null | wc -l)")
    echo "binary_mtime $(date -u -r "$b/apps/stp" +%FT%TZ)"
    grep -E '^(STP_TORCH_PREFIX|CMAKE_BUILD_TYPE):' "$b/CMakeCache.txt" 2>/dev/null || true
    echo "needs $(readelf -d "$dst/stp" 2>/dev/null | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
  } >"$dst/BUILD_INFO.txt"
  echo "gpu_deps.sh: staged $(cd "$dst" && find . -type f ! -name '*.txt' -printf '%P ')in $dst"
}

case $mode in
  clean) rm -rf "$DEST"; echo "gpu_deps.sh: removed $DEST"; exit 0 ;;
  list) list; exit $? ;;
esac
download
[[ -n $prebuilt ]] && stage_prebuilt "$prebuilt"
list
echo "gpu_deps.sh: carry \".gpu-debs\" in the device call (bench/results/README.md has the call)"
