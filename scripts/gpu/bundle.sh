#!/usr/bin/env bash
# Builds .gpu-bundle/: the C/C++ libraries mechlab needs that the lent GPU
# machine lacks (HDF5, spdlog+fmt, GoogleTest/GoogleMock, CLI11,
# nlohmann-json), taken from Debian's .deb files and unpacked (never installed)
# so that the folder can travel with the working tree (`carry: [".gpu-bundle"]`).
# Runs on the development machine (Debian, apt); the GPU machine has no network.
#
#   bash scripts/gpu/bundle.sh            # build or refresh the bundle
#   bash scripts/gpu/bundle.sh --check    # ... then build and run scripts/gpu/bundle-check
#                                         #     against the bundle alone
#   bash scripts/gpu/bundle.sh --force    # rebuild even if it is up to date
#
# Layout (all paths inside are relative to the bundle, so it can be moved):
#   .gpu-bundle/root/usr/...   the unpacked Debian files (headers, CMake configs, libs)
#   .gpu-bundle/env.sh         `source` it: CMAKE_PREFIX_PATH, include/library paths
#   .gpu-bundle/cache.cmake    `cmake -C` it: points FindHDF5 at the bundle
#   .gpu-bundle/MANIFEST       package=version list; the bundle is rebuilt when it changes
#
# HDF5 is linked statically (libhdf5_serial.a + libsz.a + libaec.a + libz.a):
# Debian's shared libhdf5 needs libcurl and libcrypto at run time (its read-only
# S3 driver), which a bare GPU image may not have; the static archive pulls in
# neither as long as H5Pset_fapl_ros3 is not called. spdlog and fmt are shared
# libraries (LD_LIBRARY_PATH from env.sh); GoogleTest/GoogleMock are static.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUNDLE=${MECHLAB_GPU_BUNDLE:-$ROOT/.gpu-bundle}
DEB_CACHE=${MECHLAB_GPU_DEB_CACHE:-/var/cache/mechlab-gpu-debs}
if ! mkdir -p "$DEB_CACHE" 2>/dev/null || [ ! -w "$DEB_CACHE" ]; then
  DEB_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/mechlab-gpu-debs"
fi
MAX_MB=60
MULTIARCH=x86_64-linux-gnu

CHECK=0 FORCE=0
for a in "$@"; do
  case "$a" in
    --check) CHECK=1 ;;
    --force) FORCE=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "bundle.sh: unknown argument '$a'" >&2; exit 2 ;;
  esac
done

say() { printf '[gpu-bundle] %s\n' "$*"; }
die() { printf '[gpu-bundle] error: %s\n' "$*" >&2; exit 1; }

command -v apt-get >/dev/null || die "needs apt-get (Debian/Ubuntu development machine)"
command -v dpkg-deb >/dev/null || die "needs dpkg-deb"

# The GPU machine is x86-64. On another processor, ask apt for amd64 packages
# with a private package list so that the system's apt state is left alone.
APT_OPTS=()
if [ "$(dpkg --print-architecture)" != amd64 ]; then
  mkdir -p /tmp/mechlab-apt-amd64/lists/partial
  APT_OPTS=(-o APT::Architecture=amd64 -o APT::Architectures=amd64
            -o Dir::State::Lists=/tmp/mechlab-apt-amd64/lists)
fi

# ---------------------------------------------------------------- .gitignore
gi="$ROOT/.gitignore"
if ! grep -qxF '/.gpu-bundle/' "$gi" 2>/dev/null; then
  [ -s "$gi" ] && [ -n "$(tail -c1 "$gi")" ] && echo >>"$gi"
  echo '/.gpu-bundle/' >>"$gi"
  say "added /.gpu-bundle/ to .gitignore"
fi

# ---------------------------------------------------------------- packages
# Development packages; the runtime packages are resolved from their Depends
# so that the script does not hard-code Debian release sonames.
DEV_PKGS=(libhdf5-dev libaec-dev zlib1g-dev libspdlog-dev libfmt-dev
          libgtest-dev libgmock-dev libcli11-dev nlohmann-json3-dev)

candidate() { apt-cache "${APT_OPTS[@]}" policy "$1" 2>/dev/null | awk '/Candidate:/{print $2; exit}'; }
dep_matching() {  # dep_matching PKG REGEX: the first Depends of PKG whose name matches
  apt-cache "${APT_OPTS[@]}" depends "$1" 2>/dev/null |
    awk -v re="$2" '$1 ~ /Depends:/ && $2 ~ re {print $2; exit}'
}

c=$(candidate libhdf5-dev)
if [ -z "$c" ] || [ "$c" = "(none)" ]; then
  say "apt-get update (package lists missing)"
  apt-get "${APT_OPTS[@]}" update -qq
fi

RUNTIME_PKGS=()
r=$(dep_matching libspdlog-dev '^libspdlog[0-9]') || true
[ -n "$r" ] || die "cannot resolve the spdlog runtime package from libspdlog-dev"
RUNTIME_PKGS+=("$r")
r=$(dep_matching libfmt-dev '^libfmt[0-9]') || true
[ -n "$r" ] || die "cannot resolve the fmt runtime package from libfmt-dev"
RUNTIME_PKGS+=("$r")
PKGS=("${DEV_PKGS[@]}" "${RUNTIME_PKGS[@]}")

# One apt-cache call for all candidate versions (it is slow per call).
declare -A VER=()
while read -r p v; do VER[$p]=$v; done < <(
  apt-cache "${APT_OPTS[@]}" policy "${PKGS[@]}" 2>/dev/null |
    awk '/^[^ ].*:$/{sub(/:$/,""); p=$0} /Candidate:/{print p, $2}')
manifest=""
for p in "${PKGS[@]}"; do
  v=${VER[$p]:-}
  { [ -n "$v" ] && [ "$v" != "(none)" ]; } || die "no candidate version for $p (apt-get update?)"
  manifest+="$p=$v"$'\n'
done
manifest+="layout=4"$'\n'   # bump when this script changes what it writes

if [ "$FORCE" = 0 ] && [ -f "$BUNDLE/MANIFEST" ] && [ -d "$BUNDLE/root/usr" ] &&
   [ "$(cat "$BUNDLE/MANIFEST")" = "${manifest%$'\n'}" ]; then
  say "up to date: $BUNDLE ($(du -sh "$BUNDLE" | cut -f1))"
else
  # -------------------------------------------------------------- download
  mkdir -p "$DEB_CACHE"
  debs=()
  for p in "${PKGS[@]}"; do
    v=${VER[$p]}
    f=$(ls "$DEB_CACHE/${p}_"*"${v#*:}"_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$f" ]; then
      say "downloading $p=$v"
      ( cd "$DEB_CACHE" && apt-get "${APT_OPTS[@]}" download -q "$p=$v" 2>&1 |
          grep -v 'couldn.t be accessed by user' || true )
      f=$(ls "$DEB_CACHE/${p}_"*"${v#*:}"_*.deb 2>/dev/null | head -n1 || true)
      [ -n "$f" ] || die "download of $p=$v failed"
    fi
    debs+=("$f")
  done

  # -------------------------------------------------------------- unpack
  tmp="$BUNDLE.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp/root"
  for f in "${debs[@]}"; do dpkg-deb -x "$f" "$tmp/root"; done

  # -------------------------------------------------------------- prune
  u="${tmp:?}/root/usr"
  L="$u/lib/$MULTIARCH"
  rm -rf "$u/share/doc" "$u/share/man" "$u/share/lintian" "$u/share/info" "$u/src" \
         "$u/share/pkgconfig" "$L/pkgconfig" "${u:?}/bin"
  # HDF5: keep the C library's static archive and headers only. The shared
  # library symlinks dangle (the runtime .so is not bundled) and the C++,
  # high-level and Fortran archives are not used by mechlab.
  rm -f "$L"/libhdf5_serial*.so "$L"/libhdf5_serial_*.a "$L"/libhdf5_serialhl_*.a \
        "$L"/libhdf5_serial.settings
  find "$L/hdf5/serial" -maxdepth 1 \( -name '*.so' -o -name 'libhdf5_*.a' \
        -o -name 'libhdf5hl_*' -o -name '*.settings' \) -exec rm -f {} +
  rm -f "$L/hdf5/serial/lib"   # a link to '.': a loop for anything that follows links
  rm -f "$u/include/hdf5/serial/"*.mod
  # szip/aec/zlib: static archives only (their .so symlinks would dangle).
  rm -f "$L/libsz.so" "$L/libaec.so" "$L/libz.so"
  # Remove dangling symlinks, then empty folders.
  find "$tmp/root" -xtype l -exec rm -f {} +
  find "$tmp/root" -depth -type d -empty -delete

  # Sanity: what the build and env.sh below rely on.
  for f in "$L/libhdf5_serial.a" "$L/libsz.a" "$L/libaec.a" "$L/libz.a" \
           "$u/include/hdf5/serial/hdf5.h" "$u/include/hdf5/serial/H5pubconf.h" \
           "$L/cmake/spdlog/spdlogConfig.cmake" "$L/cmake/fmt/fmt-config.cmake" \
           "$L/cmake/GTest/GTestConfig.cmake" "$L/libgtest.a" "$L/libgmock.a" \
           "$u/share/cmake/nlohmann_json/nlohmann_jsonConfig.cmake" \
           "$u/include/CLI/CLI.hpp" "$u/include/nlohmann/json.hpp"; do
    [ -e "$f" ] || die "expected file missing after unpacking: ${f#$tmp/}"
  done
  ls "$L"/libspdlog.so.* >/dev/null 2>&1 || die "libspdlog.so.* missing"
  ls "$L"/libfmt.so.* >/dev/null 2>&1 || die "libfmt.so.* missing"

  # -------------------------------------------------------------- env.sh
  cat >"$tmp/env.sh" <<'EOF'
# Source this (bash): makes the mechlab GPU bundle visible to CMake, the
# compiler, the linker and the loader. Paths are computed from this file's
# location, so the bundle can live anywhere.
#   source .gpu-bundle/env.sh
#   cmake -C "$MECHLAB_GPU_BUNDLE_CACHE" -S . -B build ...
MECHLAB_GPU_BUNDLE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MECHLAB_GPU_BUNDLE_PREFIX="$MECHLAB_GPU_BUNDLE/root/usr"
MECHLAB_GPU_BUNDLE_CACHE="$MECHLAB_GPU_BUNDLE/cache.cmake"
export MECHLAB_GPU_BUNDLE MECHLAB_GPU_BUNDLE_PREFIX MECHLAB_GPU_BUNDLE_CACHE
_mb_lib="$MECHLAB_GPU_BUNDLE_PREFIX/lib/x86_64-linux-gnu"
_mb_inc="$MECHLAB_GPU_BUNDLE_PREFIX/include"
_mb_prepend() {  # _mb_prepend VAR DIR SEP: DIR first in VAR, once
  local cur="${!1:-}"
  case "$3$cur$3" in *"$3$2$3"*) return 0 ;; esac
  export "$1=$2${cur:+$3$cur}"
}
# find_package(spdlog|fmt|GTest|nlohmann_json|CLI11) and find_path(CLI/CLI.hpp).
_mb_prepend CMAKE_PREFIX_PATH "$MECHLAB_GPU_BUNDLE_PREFIX" ":"
# Headers: C_INCLUDE_PATH/CPLUS_INCLUDE_PATH act like -isystem dirs searched
# after the command line's, as /usr/include is on the development machine
# (CPATH would act like -I and win over Torch's -isystem dirs, which ship
# their own, newer fmt). The HDF5 folder (include/hdf5/serial) is not added:
# FindHDF5 gets it from cache.cmake.
_mb_prepend C_INCLUDE_PATH "$_mb_inc" ":"
_mb_prepend CPLUS_INCLUDE_PATH "$_mb_inc" ":"
# Link (-L) and run-time search paths: libspdlog.so, libfmt.so.
_mb_prepend LIBRARY_PATH "$_mb_lib" ":"
_mb_prepend LD_LIBRARY_PATH "$_mb_lib" ":"
unset _mb_lib _mb_inc
unset -f _mb_prepend
EOF

  # -------------------------------------------------------------- cache.cmake
  cat >"$tmp/cache.cmake" <<'EOF'
# Initial CMake cache for the mechlab GPU bundle:  cmake -C .gpu-bundle/cache.cmake ...
# Debian's HDF5 is normally found through its h5cc wrapper, which is neither
# bundled nor relocatable. This presets what FindHDF5's library search would
# find: the bundle's static C library plus its static dependencies.
get_filename_component(_mb "${CMAKE_CURRENT_LIST_DIR}" ABSOLUTE)
set(_mbu "${_mb}/root/usr")
set(_mbl "${_mbu}/lib/x86_64-linux-gnu")
set(_mb_hdf5 "${_mbl}/libhdf5_serial.a;${_mbl}/libsz.a;${_mbl}/libaec.a;${_mbl}/libz.a;dl;m")

# HDF5_ROOT makes FindHDF5 search only the bundle (NO_DEFAULT_PATH), so that
# an h5cc or hdf5-config.cmake elsewhere on the machine is not picked up.
set(HDF5_ROOT "${_mbl}/hdf5/serial" CACHE PATH "mechlab GPU bundle: HDF5")
set(HDF5_NO_FIND_PACKAGE_CONFIG_FILE ON CACHE BOOL "mechlab GPU bundle: HDF5")
set(HDF5_PREFER_PARALLEL OFF CACHE BOOL "mechlab GPU bundle: HDF5")
set(HDF5_C_INCLUDE_DIR "${_mbu}/include/hdf5/serial" CACHE PATH "mechlab GPU bundle: HDF5")
set(HDF5_hdf5_LIBRARY_RELEASE "${_mb_hdf5}" CACHE STRING "mechlab GPU bundle: HDF5")
set(HDF5_hdf5_LIBRARY_DEBUG "${_mb_hdf5}" CACHE STRING "mechlab GPU bundle: HDF5")

unset(_mb)
unset(_mbu)
unset(_mbl)
unset(_mb_hdf5)
EOF

  cat >"$tmp/README.txt" <<'EOF'
mechlab GPU bundle: made by scripts/gpu/bundle.sh from Debian packages (see
MANIFEST); used by scripts/gpu/run.sh on the lent GPU machine. Do not commit.
See docs/GPU.md.
EOF
  printf '%s' "${manifest%$'\n'}" >"$tmp/MANIFEST"

  rm -rf "$BUNDLE"
  mv "$tmp" "$BUNDLE"
  say "built $BUNDLE"
fi

# ---------------------------------------------------------------- size
bytes=$(du -sb "$BUNDLE" | cut -f1)
say "size: $(du -sh "$BUNDLE" | cut -f1) ($bytes bytes, $(find "$BUNDLE" -type f | wc -l) files)"
[ "$bytes" -lt $((MAX_MB * 1024 * 1024)) ] || die "bundle is larger than ${MAX_MB} MiB"

if [ "$CHECK" = 1 ]; then
  bash "$ROOT/scripts/gpu/check-bundle.sh"
fi
