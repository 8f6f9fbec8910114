#!/usr/bin/env bash
# Installs what mechlab needs to build and test, idempotently.
#  - Debian packages: HDF5, spdlog/fmt, GoogleTest, CLI11, nlohmann-json,
#    Graphviz, ccache, CMake, Ninja, Doxygen, Slurm and munge (a local
#    cluster for the job-array tests; nothing is started).
#  - LibTorch 2.11 with CUDA 13.0, from the PyPI `torch` wheel, into a venv
#    outside the checkout (MECHLAB_PREFIX, default /opt/mechlab) so that later
#    clones reuse it. A user-given Torch_DIR (environment) is used instead.
# A second run on a set-up machine takes seconds.
set -euo pipefail

MECHLAB_PREFIX=${MECHLAB_PREFIX:-/opt/mechlab}
TORCH_VERSION=2.11.0
TORCH_VENV="$MECHLAB_PREFIX/torch-$TORCH_VERSION"

say() { printf '[setup] %s\n' "$*"; }

# ---------------------------------------------------------------- apt
APT_PACKAGES=(build-essential cmake ninja-build ccache pkg-config git
  libhdf5-dev hdf5-tools libspdlog-dev libfmt-dev libgtest-dev libgmock-dev
  libcli11-dev nlohmann-json3-dev graphviz python3 python3-venv
  libyaml-cpp-dev            # YAML job files: mechlab discover
  libgloo-dev               # Gloo headers for c10d's ProcessGroupGloo: data-parallel SAE training (core/dist/)
  clang libclang-rt-14-dev  # clang + its libFuzzer/sanitizer runtimes: scripts/fuzz.sh
  doxygen                   # API reference from /// comments: scripts/docs.sh
  chromium                  # headless check of SAE dashboards: scripts/check_dashboard.sh
  slurm-wlm munge)          # job arrays on a local Slurm: scripts/slurm/local_cluster.sh, ctest -L slurm
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages present"
fi

# ---------------------------------------------------------------- LibTorch
if [ -n "${Torch_DIR:-}" ]; then
  [ -f "$Torch_DIR/TorchConfig.cmake" ] || { echo "Torch_DIR=$Torch_DIR has no TorchConfig.cmake" >&2; exit 1; }
  say "using the user's Torch_DIR=$Torch_DIR"
  exit 0
fi
stamp="$TORCH_VENV/.mechlab-ok"
if [ ! -f "$stamp" ]; then
  say "installing torch==$TORCH_VERSION (LibTorch with CUDA 13.0) into $TORCH_VENV"
  mkdir -p "$MECHLAB_PREFIX"
  # Python here only carries the LibTorch files; the product never runs Python.
  PY=$(command -v python3.11 || command -v python3)
  "$PY" -m venv "$TORCH_VENV"
  "$TORCH_VENV/bin/python" -m pip install -q --upgrade pip
  "$TORCH_VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
  "$TORCH_VENV/bin/python" -c "import torch; assert torch.version.cuda.startswith('13'), torch.version.cuda"
  touch "$stamp"
fi
say "LibTorch: $("$TORCH_VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)')/Torch"
