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
