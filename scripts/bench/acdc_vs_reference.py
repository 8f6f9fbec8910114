#!/usr/bin/env python3
"""mechlab ACDC vs the reference ACDC (Conmy et al., TLACDCExperiment), same model, prompts and tau.

Run it through the wrapper (sets up the reference venv, finds the build):

    bash scripts/bench/acdc_vs_reference.sh --acdc-repo DIR [--threshold T] [--threads N]
        [--model CKPT.h5 --dataset PAIRS.h5] [--ablation corrupted|zero] [--reference-only]

DIR: a checkout of ArthurConmy/Automatic-Circuit-Discovery at bc99ace8 (see
tests/data/discovery/acdc/README.md). Without --model/--dataset the default problem is made:
a random model (4 layers, d_model 256, 8 heads of 32, MLP 1024, d_vocab 1000, LayerNorm,
gelu_new; make_runtime_fixtures' seeded initialisation, seed 4242) written as a mechlab
checkpoint build/bench/acdc_random.h5, and 32 clean/corrupted prompt pairs x 16 tokens
(corrupted = clean with 1-3 tokens changed) written as a mechlab dataset build/bench/acdc_pairs.h5.

Reference: the TLACDCExperiment of make_acdc_fixtures.py (corrupted or zero ablation, indices and
names mode "normal", KL(clean || run) at the last position), timed from the experiment's
construction (it runs the corrupted and clean caches) to its last step, torch.set_num_threads(N).
mechlab: `mechlab discover JOBFILE --force` on a job file this script writes (method acdc,
metric kl_to_clean: the same KL at the last real position), OMP_NUM_THREADS=N; its seconds are
read from circuit.json (the ACDC result's "seconds"), else from the summary table, else the
wall-clock time of the command. Prints a table (seconds, ratio, edges kept, identical circuits)
and writes build/bench/acdc_vs_reference.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import math
import os
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "build", "bench")
MECHLAB = os.environ.get("MECHLAB_BIN") or os.path.join(ROOT, "build", "mechlab")
DEFAULT_CKPT = os.path.join(OUT_DIR, "acdc_random.h5")
DEFAULT_PAIRS = os.path.join(OUT_DIR, "acdc_pairs.h5")
MODEL_SEED, TOKEN_SEED = 4242, 4243
TL_CFG = dict(n_layers=4, d_model=256, n_heads=8, d_head=32, d_mlp=1024, d_vocab=1000, n_ctx=32,
              act_fn="gelu_new", normalization_type="LN", positional_embedding_type="standard",
              eps=1e-5)
BATCH, POS = 32, 16

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "scripts", "fixtures"))
import make_acdc_fixtures as fx  # noqa: E402  (reference import, instrumented run, loaders)
import make_runtime_fixtures as rt  # noqa: E402  (seeded init, checkpoint helpers)


def export_default_model() -> str:
    """Writes DEFAULT_CKPT unless it holds the same spec."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    spec = json.dumps(dict(TL_CFG, seed=MODEL_SEED, transformer_lens=md.version("transformer_lens")),
                      sort_keys=True)
    if os.path.exists(DEFAULT_CKPT):
        with h5py.File(DEFAULT_CKPT, "r") as f:
            if f.attrs.get("bench_spec") == spec:
                return DEFAULT_CKPT
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(**TL_CFG, device="cpu", dtype=torch.float32))
    rt.randomize_params(model, MODEL_SEED)
    tmp = DEFAULT_CKPT + ".tmp"
    with h5py.File(tmp, "w", libver=rt.LIBVER) as f:
        f.attrs["mechlab_format"] = "checkpoint"
        f.attrs.create("mechlab_version", 1, dtype=np.int64)
        f.attrs["config"] = json.dumps(rt.mechlab_config("acdc_random", model))
        f.attrs["bench_spec"] = spec
        params = f.create_group("params")
        for name, p in model.named_parameters():
            params.create_dataset(rt.param_out_name(name), data=rt.to_np(p))
    os.replace(tmp, DEFAULT_CKPT)
    return DEFAULT_CKPT


def export_default_pairs(d_vocab: int) -> str:
    """32 x 16 clean/corrupted pairs as a mechlab dataset (answer/wrong tokens are random: the
    KL metric does not read them, the dataset format wants them)."""
    clean, corrupted = fx.random_pairs(d_vocab, TOKEN_SEED, BATCH, POS)
    gen = torch.Generator().manual_seed(TOKEN_SEED + 1)
    answer = torch.randint(0, d_vocab, (BATCH, 1), generator=gen)
    wrong = (answer + torch.randint(1, d_vocab, (BATCH, 1), generator=gen)) % d_vocab
    os.makedirs(OUT_DIR, exist_ok=True)
    tmp = DEFAULT_PAIRS + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["mechlab_format"] = "dataset"
        f.attrs.create("mechlab_version", 1, dtype=np.int64)
        f.attrs["task"] = "custom"
        f.attrs["tokenizer"] = ""
        f.attrs.create("d_vocab", d_vocab, dtype=np.int64)
        f.attrs.create("seed", TOKEN_SEED, dtype=np.int64)
        f.attrs["config"] = json.dumps(dict(generator="scripts/bench/acdc_vs_reference.py",
                                            batch=BATCH, pos=POS))
        for k, v in dict(clean_tokens=clean, corrupted_tokens=corrupted, answer_tokens=answer,
                         wrong_tokens=wrong).items():
            f.create_dataset(k, data=v.numpy().astype(np.int32))
    os.replace(tmp, DEFAULT_PAIRS)
    return DEFAULT_PAIRS


def read_pairs(path: str):
    with h5py.File(path, "r") as f:
        clean = torch.from_numpy(np.asarray(f["clean_tokens"]).astype(np.int64))
        corrupted = torch.from_numpy(np.asarray(f["corrupted_tokens"]).astype(np.int64))
        if "attention_mask" in f:
            assert bool(np.asarray(f["attention_mask"]).all()), \
                f"{path}: padded prompts; the reference's metric reads the last position only"
    return clean, corrupted


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    return f"{names[0]} ({len(names)} logical CPUs)" if names else "unknown"


def run_reference(args, model_path, clean, corrupted) -> dict:
    Exp, kl_divergence, EdgeType = fx.import_reference(args.acdc_repo)
    model = fx.prepare(fx.load_checkpoint(model_path))
    t0 = time.perf_counter()
    rec, full, kept, exp = fx.run_acdc(Exp, kl_divergence, EdgeType, model, clean, corrupted,
                                       args.threshold, zero_ablation=args.ablation == "zero",
                                       abs_value=args.abs_value)
    seconds = time.perf_counter() - t0
    n_all = fx.count_all_edges(Exp, EdgeType, model)
    return dict(seconds=seconds, kept=sorted(kept), n_edges=n_all,
                tried=sum(s["tried"] for s in rec.steps), final_metric=rec.steps[-1]["metric"])


def find_seconds(obj):
    """The first numeric "seconds" in a JSON document, depth first."""
    if isinstance(obj, dict):
        v = obj.get("seconds")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        obj = list(obj.values())
    if isinstance(obj, list):
        for x in obj:
            s = find_seconds(x)
            if s is not None:
                return s
    return None


def run_mechlab(args, model_path, pairs_path) -> dict:
    if not os.access(args.mechlab, os.X_OK):
        return dict(error=f"{args.mechlab} not found (build first)")
    out_dir = os.path.join(OUT_DIR, "acdc_mechlab")
    job = dict(jobs=[dict(name="acdc_vs_reference", model=os.path.abspath(model_path),
                          dataset=os.path.abspath(pairs_path), method="acdc",
                          metric="kl_to_clean", ablation=args.ablation,
                          threshold=args.threshold, device="cpu", out=out_dir)])
    job_path = os.path.join(OUT_DIR, "acdc_vs_reference_job.json")
    with open(job_path, "w") as f:
        json.dump(job, f, indent=1)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [args.mechlab, "discover", job_path, "--force"]
    print("[bench] " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return dict(error=f"exit {out.returncode}: {(out.stderr or out.stdout).strip()[-500:]}")
    print(out.stdout, flush=True)
    circuit_json = os.path.join(out_dir, "circuit.json")
    if not os.path.exists(circuit_json):
        return dict(error=f"no {circuit_json}")
    with open(circuit_json) as f:
        cj = json.load(f)
    # circuit.json: {config, versions, results: {seconds, ...}, circuit: Circuit::to_json(), trace}
    circuit = cj["circuit"] if isinstance(cj.get("circuit"), dict) else cj
    edges = circuit["edges"]
    kept = sorted(e["edge"] for e in edges if e["kept"])
    seconds, source = find_seconds(cj.get("results", {})), "circuit.json results.seconds"
    if seconds is None:
        seconds, source = find_seconds(cj), "circuit.json"
    if seconds is None:  # the summary table: job, method, tau, edges kept, metric, seconds, status
        row = re.search(r"^acdc_vs_reference\s+acdc\s.*?\s([0-9]+\.[0-9]+)\s+done", out.stdout, re.M)
        seconds, source = (float(row.group(1)), "summary table") if row else (wall, "wall clock")
    return dict(seconds=seconds, seconds_from=source, wall_seconds=wall, kept=kept,
                n_edges=len(edges))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--acdc-repo", required=True, help="reference checkout (bc99ace8)")
    ap.add_argument("--model", help="mechlab checkpoint (default: the random 4-layer model)")
    ap.add_argument("--dataset", help="mechlab dataset with clean/corrupted tokens (default: "
                                      "32 x 16 random pairs)")
    ap.add_argument("--threshold", type=float, default=0.002, help="tau (default 0.002)")
    ap.add_argument("--ablation", default="corrupted", choices=["corrupted", "zero"])
    ap.add_argument("--abs-value", action="store_true", help="threshold on |metric increase|")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, both tools")
    ap.add_argument("--mechlab", default=MECHLAB, help="the mechlab binary (build/mechlab)")
    ap.add_argument("--reference-only", action="store_true", help="time the reference only")
    args = ap.parse_args()
    if (args.model is None) != (args.dataset is None):
        sys.exit("give --model and --dataset together, or neither (the default problem)")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    load_start = os.getloadavg()[0]
    model_path = args.model or export_default_model()
    if args.dataset:
        pairs_path = args.dataset
    else:
        with h5py.File(model_path, "r") as f:
            pairs_path = export_default_pairs(json.loads(f.attrs["config"])["d_vocab"])
    clean, corrupted = read_pairs(pairs_path)

    if args.abs_value and not args.reference_only:
        print("[bench] --abs-value: mechlab job files have no abs_value field; timing the "
              "reference only", flush=True)
        args.reference_only = True
    ml = None if args.reference_only else run_mechlab(args, model_path, pairs_path)
    ref = run_reference(args, model_path, clean, corrupted)

    rel = lambda p: os.path.relpath(p, ROOT)  # noqa: E731
    print(f"\nACDC, {rel(model_path)}, {clean.shape[0]} prompts x {clean.shape[1]} tokens, "
          f"tau {args.threshold:g}, {args.ablation} ablation{', abs value' if args.abs_value else ''}"
          f", {args.threads} threads, {cpu_model()}")
    print(f"{'tool':<28} {'seconds':>10} {'edges kept':>14}")
    print(f"{'reference TLACDCExperiment':<28} {ref['seconds']:>10.2f} "
          f"{len(ref['kept']):>6} / {ref['n_edges']:<6}  ({ref['tried']} edges tried)")
    info = dict(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                cpu=cpu_model(), threads=args.threads, torch=torch.__version__,
                transformer_lens=md.version("transformer_lens"), reference=fx.REF_COMMIT,
                model=rel(model_path), dataset=rel(pairs_path), batch=int(clean.shape[0]),
                pos=int(clean.shape[1]), threshold=args.threshold, ablation=args.ablation,
                abs_value=args.abs_value, reference_result=ref)
    status = 0
    if ml is not None and "error" in ml:
        print(f"{'mechlab discover':<28} {'-':>10}  ({ml['error']})")
        status = 1
    elif ml is not None:
        same = ml["kept"] == ref["kept"]
        ratio = ref["seconds"] / ml["seconds"] if ml["seconds"] > 0 else math.inf
        print(f"{'mechlab discover (acdc)':<28} {ml['seconds']:>10.2f} "
              f"{len(ml['kept']):>6} / {ml['n_edges']:<6}  (seconds from {ml['seconds_from']})")
        print(f"speed-up (reference / mechlab): {ratio:.1f}x   identical circuits: "
              f"{'yes' if same else 'NO'}")
        if not same:
            only_ref = sorted(set(ref["kept"]) - set(ml["kept"]))
            only_ml = sorted(set(ml["kept"]) - set(ref["kept"]))
            print(f"  kept only by the reference: {only_ref[:10]}{' ...' if len(only_ref) > 10 else ''}")
            print(f"  kept only by mechlab:       {only_ml[:10]}{' ...' if len(only_ml) > 10 else ''}")
            status = 1
        info.update(mechlab_result=ml, ratio=ratio, identical=same)
    load_end = os.getloadavg()[0]
    info["loadavg_1min"] = dict(start=load_start, end=load_end)
    print(f"load average: {load_start:.1f} at start, {load_end:.1f} at end")
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "acdc_vs_reference.json"), "w") as f:
        json.dump(info, f, indent=1)
    return status


if __name__ == "__main__":
    sys.exit(main())
