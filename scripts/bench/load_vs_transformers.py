#!/usr/bin/env python3
"""mechlab `load_model` vs transformers `from_pretrained` on a 124M GPT-2 folder.

    /opt/mechlab/ref-venv/bin/python scripts/bench/load_vs_transformers.py \
        [--mechlab build/mechlab] [--folder /tmp/mechlab-bench-gpt2-124m] [--repeats 5]

Makes (once) a randomly initialised GPT-2 small (GPT2Config() defaults: 12
layers, d_model 768, 124M parameters) with `save_pretrained` into --folder,
outside the checkout; times `GPT2LMHeadModel.from_pretrained(folder)` on the
CPU in float32 (median of --repeats after one warm-up, page cache warm), then
runs `mechlab bench load FOLDER --transformers-ms <median>`, which times
mechlab on the same folder in the same run and prints the ratio table.
Development tool only; needs the reference venv (scripts/fixtures/ref_env.sh).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stats import summarize  # noqa: E402


def make_model(folder: str) -> None:
    stamp = os.path.join(folder, ".mechlab-bench-ok")
    if os.path.exists(stamp):
        return
    print(f"[bench] writing a random GPT-2 124M to {folder}", flush=True)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config())
    model.save_pretrained(folder, safe_serialization=True)
    open(stamp, "w").close()


def time_transformers(folder: str, repeats: int) -> dict:
    def load():
        t0 = time.perf_counter()
        model = GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32)
        elapsed = (time.perf_counter() - t0) * 1e3
        del model
        return elapsed

    load()  # warm-up: page cache, imports, lazy initialisation
    return summarize([load() for _ in range(repeats)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    build = os.environ.get("MECHLAB_BUILD", "build")
    ap.add_argument("--mechlab", default=os.path.join(build, "mechlab"))
    ap.add_argument("--folder", default="/tmp/mechlab-bench-gpt2-124m")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not os.access(args.mechlab, os.X_OK):
        sys.exit(f"{args.mechlab} not found; build mechlab first (bash scripts/test.sh)")
    make_model(args.folder)
    hf = time_transformers(args.folder, args.repeats)
    n_threads = torch.get_num_threads()
    print(f"[bench] transformers from_pretrained: median {hf['ms']:.1f} ms over {hf['runs']} runs "
          f"({n_threads} threads)", flush=True)
    subprocess.run([args.mechlab, "bench", "load", args.folder, "--repeats", str(args.repeats),
                    "--transformers-ms", f"{hf['ms']:.3f}", "--transformers-iqr",
                    f"{hf['q1']:.3f},{hf['q3']:.3f}", "--transformers-runs", str(hf["runs"])], check=True)


if __name__ == "__main__":
    main()
