#!/usr/bin/env bash
# mechlab vs scikit-learn: a probe sweep (binary logistic, 10-class logistic,
# ridge on every layer) on the same synthetic activations, same machine, same
# run. Options (passed on; see probe_vs_sklearn.py):
#   --tokens N (100000)  --d-model N (768)  --layers N (12)  --threads N (all cores)
#   --device cpu|cuda (cpu)  --no-standardize  --data PATH (keep the data file)
# The issue's figure: bash scripts/bench/probe_vs_sklearn.sh --threads 2 on a quiet machine.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
if [ ! -x "${MECHLAB_BIN:-build/mechlab}" ]; then
  echo "probe_vs_sklearn: ${MECHLAB_BIN:-build/mechlab} not found; build first: bash scripts/test.sh" >&2
  exit 1
fi
bash scripts/fixtures/ref_env.sh
exec "${MECHLAB_REF_VENV:-/opt/mechlab/ref-venv}/bin/python" scripts/bench/probe_vs_sklearn.py "$@"
