#!/usr/bin/env python3
"""mechlab vs scikit-learn: a probe sweep over every layer, same data, same machine, same run.

Run it through the wrapper (sets up the reference venv, checks the build):

    bash scripts/bench/probe_vs_sklearn.sh [--tokens 100000] [--d-model 768] [--layers 12]
        [--threads N] [--device cpu]

`mechlab bench probe --write-data` generates the synthetic activations [layers, tokens, d_model]
(float32) with binary, 10-class and continuous labels planted along known directions, fits the
three sweeps (binary logistic, multinomial logistic, ridge; every layer in one batched solve) and
writes the data to an HDF5 file. This script then fits the same probes with scikit-learn 1.9.1
on the same file, one layer after another, as one would: make_pipeline(StandardScaler(), model)
with LogisticRegression(C=1) (lbfgs, L2, tol=1e-4, max_iter=100: the defaults) and Ridge(alpha=1);
the scaler is left out with --no-standardize (both sides). Both sides train on the first n_train
rows and score the rest. It prints each side's seconds, the test accuracy (R^2 for ridge) per
layer, the largest accuracy difference (the goal: <= 0.005) and the speed-up, with each mechlab
probe's iterations and stopping reason and scikit-learn's lbfgs iterations per layer.

Threads: --threads N sets mechlab's --threads and scikit-learn's BLAS/OpenMP pools
(threadpoolctl); by default both use every core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MECHLAB = os.environ.get("MECHLAB_BIN", os.path.join(ROOT, "build", "mechlab"))


def sweep(x, y, n_train, make, metric, standardize, iterations=None):
    scores, t0 = [], time.perf_counter()
    for layer in range(x.shape[0]):
        est = make_pipeline(StandardScaler(), make()) if standardize else make()
        est.fit(x[layer, :n_train], y[:n_train])
        scores.append(metric(y[n_train:], est.predict(x[layer, n_train:])))
        if iterations is not None:
            iterations.append(int(np.max(est[-1].n_iter_ if standardize else est.n_iter_)))
    return time.perf_counter() - t0, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=100000)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--train-fraction", type=float, default=0.8)
    ap.add_argument("--threads", type=int, default=0, help="0: every core")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-standardize", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", help="where to write the data (default: a temporary file, removed after)")
    args = ap.parse_args()

    tmpdir = tempfile.mkdtemp(prefix="probe_bench_")
    path = args.data or os.path.join(tmpdir, "probe_bench.h5")
    cmd = [MECHLAB, "bench", "probe", "--tokens", str(args.tokens), "--d-model", str(args.d_model),
           "--layers", str(args.layers), "--classes", str(args.classes),
           "--train-fraction", str(args.train_fraction), "--seed", str(args.seed), "--device", args.device,
           "--write-data", path, "--overwrite"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.no_standardize:
        cmd.append("--no-standardize")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    sys.stdout.write(out)
    ours = json.loads(next(l for l in out.splitlines() if l.startswith("probe_json "))[len("probe_json "):])
    try:
        with h5py.File(path, "r") as f:
            x = f["x"][...]
            n_train = int(f.attrs["n_train"])
            y_bin, y_cls, y_reg = f["binary"][...], f["classes"][...], f["target"][...]
    finally:
        if not args.data:
            os.remove(path)
            os.rmdir(tmpdir)
    std = not args.no_standardize
    limits = threadpool_limits(limits=args.threads) if args.threads else threadpool_limits(limits=None)
    with limits:
        it_bin, it_cls = [], []
        t_bin, acc_bin = sweep(x, y_bin, n_train, lambda: LogisticRegression(C=1.0), accuracy_score, std, it_bin)
        t_cls, acc_cls = sweep(x, y_cls, n_train, lambda: LogisticRegression(C=1.0), accuracy_score, std, it_cls)
        t_reg, r2_reg = sweep(x, y_reg, n_train, lambda: Ridge(alpha=1.0), r2_score, std)

    print(f"\nscikit-learn (same data, {x.shape[0]} layers one after another); lbfgs iterations per layer:"
          f" binary {it_bin}, multinomial {it_cls}")
    rows = [("binary logistic", "binary", "test_accuracy", t_bin, acc_bin),
            (f"{args.classes}-class logistic", "multinomial", "test_accuracy", t_cls, acc_cls),
            ("ridge", "ridge", "test_r2", t_reg, r2_reg)]
    print("\nmechlab:")
    total_ours = total_theirs = 0.0
    worst = 0.0
    for name, key, metric, t, theirs in rows:
        mine = ours[key][metric]
        diff = max(abs(a - b) for a, b in zip(mine, theirs))
        if metric == "test_accuracy":
            worst = max(worst, diff)
        total_ours += ours[key]["seconds"]
        total_theirs += t
        print(f"  {name:18s} sklearn {t:9.3f} s  mechlab {ours[key]['seconds']:8.3f} s  "
              f"speed-up {t / ours[key]['seconds']:7.1f}x  max |{metric} diff| {diff:.4f}")
        print(f"    {metric} per layer: sklearn {np.round(theirs, 4).tolist()}")
        print(f"    {metric} per layer: mechlab {np.round(mine, 4).tolist()}")
        if "iterations" in ours[key]:
            print(f"    iterations per layer: {ours[key]['iterations']}  stop: {ours[key]['stop_reason']}")
    print(f"  total              sklearn {total_theirs:9.3f} s  mechlab {total_ours:8.3f} s  "
          f"speed-up {total_theirs / total_ours:7.1f}x")
    print(f"  largest test-accuracy difference: {worst:.4f} (goal <= 0.005)")
    print(f"probe_vs_sklearn speedup={total_theirs / total_ours:.2f} max_accuracy_diff={worst:.4f}")


if __name__ == "__main__":
    main()
