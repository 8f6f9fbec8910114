# Sourced by scripts/*.sh: where LibTorch and the build folder are.
# Honours a user-given Torch_DIR; otherwise uses scripts/setup.sh's install.
MECHLAB_PREFIX=${MECHLAB_PREFIX:-/opt/mechlab}
MECHLAB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MECHLAB_BUILD=${MECHLAB_BUILD:-$MECHLAB_ROOT/build}
if [ -z "${Torch_DIR:-}" ]; then
  _site=$(ls -d "$MECHLAB_PREFIX"/torch-2.11.0/lib/python3*/site-packages 2>/dev/null | head -n 1)
  export Torch_DIR="$_site/torch/share/cmake/Torch"
fi
export CCACHE_DIR=${CCACHE_DIR:-$MECHLAB_PREFIX/ccache}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
# The precompiled header makes every compile "uncacheable" unless ccache may
# trust its defines and timestamps. Paths are made relative to the checkout so
# that a fresh clone elsewhere (CI, a worktree) hits the same cache entries.
export CCACHE_SLOPPINESS=${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$MECHLAB_ROOT}
# Configure (once) and build mechlab into $MECHLAB_BUILD.
mechlab_build() {
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  if [ ! -f "$MECHLAB_BUILD/CMakeCache.txt" ]; then
    cmake -S "$MECHLAB_ROOT" -B "$MECHLAB_BUILD" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
      -DTorch_DIR="$Torch_DIR" "$@"
  fi
  cmake --build "$MECHLAB_BUILD" -j "$(nproc)"
}
