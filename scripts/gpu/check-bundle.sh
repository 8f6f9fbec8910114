#!/usr/bin/env bash
# Checks .gpu-bundle (made by scripts/gpu/bundle.sh): configures, builds and
# runs scripts/gpu/bundle-check, a tiny CMake project that finds HDF5, spdlog,
# fmt, nlohmann_json, CLI11 and GTest the way mechlab does, using the bundle
# only, and links and runs a program and a GoogleTest test against them.
#
#   bash scripts/gpu/check-bundle.sh            # here (development machine)
#   bash scripts/gpu/check-bundle.sh --torch    # on the GPU machine: also Torch + CUDA
#
# On a machine that has the same libraries installed system-wide (the Debian
# development machine), the system copies are hidden for the check: it runs in
# a private mount namespace (unshare -m, root) where their headers, CMake
# configs and libraries are covered by empty mounts. Without unshare it falls
# back to -DCMAKE_IGNORE_PREFIX_PATH=/usr;/usr/local, which hides the CMake
# configs but not the compiler's default include and library folders.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUNDLE=${MECHLAB_GPU_BUNDLE:-$ROOT/.gpu-bundle}
WORK=${MECHLAB_BUNDLE_CHECK_DIR:-/tmp/mechlab-bundle-check}
TORCH=0
ISOLATE=auto
for a in "$@"; do
  case "$a" in
    --torch) TORCH=1 ;;
    --no-isolate) ISOLATE=0 ;;
    --inner) ISOLATE=inner ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "check-bundle.sh: unknown argument '$a'" >&2; exit 2 ;;
  esac
done
say() { printf '[bundle-check] %s\n' "$*"; }
[ -f "$BUNDLE/env.sh" ] || { echo "no bundle at $BUNDLE: run scripts/gpu/bundle.sh" >&2; exit 1; }

M=/usr/lib/x86_64-linux-gnu
hide_system_copies() {
  local p n=0
  shopt -s nullglob
  for p in /usr/include/{spdlog,fmt,hdf5,gtest,gmock,nlohmann,CLI} \
           $M/cmake/{spdlog,fmt,GTest,hdf5} $M/hdf5 /usr/share/cmake/{CLI11,nlohmann_json} \
           /usr/lib/cmake/{CLI11,nlohmann_json,GTest,spdlog,fmt} /usr/local/include/{spdlog,fmt,nlohmann,CLI,gtest}; do
    [ -d "$p" ] && mount -t tmpfs -o ro,size=4k none "$p" && n=$((n + 1))
  done
  for p in /usr/include/{szlib.h,libaec.h} $M/libspdlog.* $M/libfmt.* $M/libhdf5* $M/libgtest* \
           $M/libgmock* $M/libsz.* $M/libaec.* /usr/bin/h5cc /usr/bin/h5c++ /usr/bin/h5pcc; do
    [ -e "$p" ] && mount --bind /dev/null "$p" && n=$((n + 1))
  done
  shopt -u nullglob
  say "hid $n system paths (private mount namespace)"
}

if [ "$ISOLATE" = auto ]; then
  if [ -d /usr/include/spdlog ] || [ -d /usr/include/hdf5 ] || [ -d /usr/include/nlohmann ]; then
    if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare -m --propagation private true 2>/dev/null; then
      exec unshare -m --propagation private bash "$0" --inner "$@"
    fi
    say "warning: system copies present and unshare unavailable; using CMAKE_IGNORE_PREFIX_PATH only"
  fi
elif [ "$ISOLATE" = inner ]; then
  hide_system_copies
fi

# shellcheck disable=SC1091
source "$BUNDLE/env.sh"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
prefix="$MECHLAB_GPU_BUNDLE_PREFIX"
extra=()
if [ "$TORCH" = 1 ]; then
  PY=python3
  [ -x /opt/torch/.venv/bin/python3 ] && PY=/opt/torch/.venv/bin/python3
  tp=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
  prefix="$tp;$prefix"
  extra=(-DCHECK_TORCH=ON)
fi
rm -rf "$WORK"
say "configure"
cmake -S "$ROOT/scripts/gpu/bundle-check" -B "$WORK" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -C "$MECHLAB_GPU_BUNDLE_CACHE" "-DCMAKE_PREFIX_PATH=$prefix" \
  "-DCMAKE_IGNORE_PREFIX_PATH=/usr;/usr/local" "${extra[@]}"
say "build"
cmake --build "$WORK" -j "$(nproc)"
say "test"
ctest --test-dir "$WORK" --output-on-failure
say "libraries the program loads:"
ldd "$WORK/bundle_check" | grep -E 'spdlog|fmt|hdf5|sz|aec|libz' || true
if ldd "$WORK/bundle_check" | grep -E 'libspdlog|libfmt' | grep -vqF "$MECHLAB_GPU_BUNDLE"; then
  echo "spdlog/fmt resolved outside the bundle" >&2; exit 1
fi
if ldd "$WORK/bundle_check" | grep -qE 'libhdf5|libcurl|libcrypto'; then
  echo "HDF5 was linked as a shared library (expected the bundle's static one)" >&2; exit 1
fi
say "ok"
