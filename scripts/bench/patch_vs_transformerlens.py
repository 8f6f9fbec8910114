#!/usr/bin/env python3
"""mechlab vs TransformerLens 2.x: the full head-output-by-position patching sweep, one machine.

Run it through the wrapper (sets up the reference venv, checks the build):

    bash scripts/bench/patch_vs_transformerlens.sh [--sample 24] [--full] [--threads N] [--device cpu]

Model: the GPT-2-small-shaped random HookedTransformer of runtime_vs_transformerlens.py (seed 0,
float32), exported once to build/bench/gpt2_small_random.h5. Prompts: 32 pairs x 20 tokens (clean
ids uniform, each corrupted prompt differs at one position in [12, 16), like IOI's S2), written to
build/bench/patch_pairs.h5 as a mechlab dataset, so both tools see the same weights and tokens.
Metric: mean logit difference (answer - wrong) at the last position.

TransformerLens runs get_act_patch_attn_head_out_by_pos's own code path (generic_activation_patch
with layer_pos_head_vector_patch_setter on hook_z): with --full the whole sweep (12 x 20 x 12 =
2880 forwards: about an hour on 2 CPU cores), otherwise --sample configurations spread over the
sweep, each timed alone after a warm-up forward at the batch size timed, and the median
per-configuration time extrapolated, with its interquartile range as the error bar (every
configuration is one full forward of the same size). mechlab
runs `mechlab bench patch` on the same files (the full sweep). TL's values on the sampled
configurations are compared with mechlab's. Writes build/bench/patch_vs_transformerlens.json.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import json
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "build", "bench")
PAIRS = os.path.join(OUT_DIR, "patch_pairs.h5")
RESULT = os.path.join(OUT_DIR, "patch_mechlab_result.h5")
MECHLAB_JSON = os.path.join(OUT_DIR, "patch_mechlab.json")
BATCH, POS, SEED = 32, 20, 1

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import runtime_vs_transformerlens as rt  # noqa: E402  (model config, checkpoint export)
from bench_stats import summarize  # noqa: E402


def make_pairs(d_vocab: int) -> dict:
    gen = torch.Generator().manual_seed(SEED)
    clean = torch.randint(1, d_vocab, (BATCH, POS), generator=gen)
    corrupted = clean.clone()
    where = torch.randint(12, 16, (BATCH,), generator=gen)
    for b in range(BATCH):
        p = int(where[b])
        shift = int(torch.randint(1, d_vocab - 1, (1,), generator=gen))
        corrupted[b, p] = 1 + (clean[b, p] - 1 + shift) % (d_vocab - 1)
    answer = torch.randint(0, d_vocab, (BATCH, 1), generator=gen)
    wrong = (answer + torch.randint(1, d_vocab, (BATCH, 1), generator=gen)) % d_vocab
    return dict(clean_tokens=clean, corrupted_tokens=corrupted, answer_tokens=answer,
                wrong_tokens=wrong)


def write_dataset(pairs: dict, d_vocab: int) -> None:
    os.makedirs(OUT_DIR, exist_ok=True)
    tmp = PAIRS + ".tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["mechlab_format"] = "dataset"
        f.attrs.create("mechlab_version", 1, dtype=np.int64)
        f.attrs["task"] = "custom"
        f.attrs["tokenizer"] = ""
        f.attrs.create("d_vocab", d_vocab, dtype=np.int64)
        f.attrs.create("seed", SEED, dtype=np.int64)
        f.attrs["config"] = json.dumps(dict(generator="scripts/bench/patch_vs_transformerlens.py",
                                            batch=BATCH, pos=POS, corrupt_positions=[12, 16]))
        for k, v in pairs.items():
            f.create_dataset(k, data=v.numpy().astype(np.int32))
    os.replace(tmp, PAIRS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sample", type=int, default=24, help="TL configurations timed (extrapolated)")
    ap.add_argument("--full", action="store_true", help="run TL's whole sweep (slow on CPU)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads, both tools")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mechlab", default=os.environ.get("MECHLAB_BIN", rt.MECHLAB),
                    help="the mechlab binary (default build/mechlab, or $MECHLAB_BIN)")
    args = ap.parse_args()
    if not os.access(args.mechlab, os.X_OK):
        sys.exit(f"{args.mechlab} not found: build first: bash scripts/test.sh")
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    print(f"[bench] checkpoint {rt.CKPT}: {rt.export_checkpoint()}", flush=True)
    d_vocab = rt.TL_CFG["d_vocab"]
    pairs = make_pairs(d_vocab)
    write_dataset(pairs, d_vocab)

    # ---- mechlab (its own process, alone on the machine)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = [args.mechlab, "bench", "patch", "--model", rt.CKPT, "--dataset", PAIRS, "--device",
           args.device, "--json", MECHLAB_JSON, "--out", RESULT]
    print("[bench] " + " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd),
          flush=True)
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"mechlab failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    print(out.stdout, flush=True)
    ml = json.load(open(MECHLAB_JSON))
    with h5py.File(RESULT, "r") as f:
        ml_values = np.asarray(f["attn_head_out_by_pos/denoising/values"])  # [layer, pos, head]

    # ---- TransformerLens
    import transformer_lens.patching as tlp
    model = rt.build_model(args.device)
    dev = args.device
    clean = pairs["clean_tokens"].to(dev)
    corrupted = pairs["corrupted_tokens"].to(dev)
    answer, wrong = pairs["answer_tokens"].to(dev), pairs["wrong_tokens"].to(dev)

    def metric(logits):  # [batch, pos, d_vocab] -> scalar, at the last position
        last = logits[:, -1]
        return (last.gather(-1, answer) - last.gather(-1, wrong)).mean()

    n_layers, n_heads = rt.TL_CFG["n_layers"], rt.TL_CFG["n_heads"]
    n = n_layers * POS * n_heads
    with torch.inference_mode():
        _, clean_cache = model.run_with_cache(clean)
        os.environ["TQDM_DISABLE"] = "1"
        if args.full:
            t0 = time.perf_counter()
            tl_values = tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, metric)
            tl_s = time.perf_counter() - t0
            sample_idx = np.arange(n)
            tl_sample = tl_values.flatten().cpu().numpy()
        else:
            k = min(args.sample, n)
            sample_idx = np.array([(s * n) // k + (s * 7919) % max(1, n // k) for s in range(k)])
            rows = [(i // (POS * n_heads), (i // n_heads) % POS, i % n_heads) for i in sample_idx]
            sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

            def patch(rows_):
                df = pd.DataFrame(rows_, columns=["layer", "pos", "head"])
                return tlp.generic_activation_patch(
                    model, corrupted, clean_cache, metric,
                    patch_setter=tlp.layer_pos_head_vector_patch_setter, activation_name="z",
                    index_df=df)

            patch(rows[:1])  # warm-up: the same call at the batch size timed
            # Each configuration timed alone: the spread of the per-config time
            # is the error bar of the extrapolation.
            per_config_ms, tl_sample = [], []
            for r in rows:
                sync()
                t0 = time.perf_counter()
                v = patch([r])
                sync()
                per_config_ms.append((time.perf_counter() - t0) * 1e3)
                tl_sample.append(float(v.flatten()[0]))
            tl_per_config = summarize(per_config_ms)
            tl_s = tl_per_config["ms"] / 1e3 * n
            tl_sample = np.array(tl_sample)
    ml_sample = ml_values.reshape(-1)[sample_idx]
    max_abs = float(np.abs(ml_sample - tl_sample).max())
    rel = max_abs / max(float(np.abs(tl_sample).max()), 1e-6)

    speedup = tl_s / ml["bulk_skip_s"]
    info = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=rt.cpu_model(), device=args.device, threads=args.threads,
        loadavg_1min=dict(start=load_start, end=os.getloadavg()[0]),
        torch=torch.__version__, transformer_lens=md.version("transformer_lens"),
        model=dict(rt.TL_CFG, checkpoint=os.path.relpath(rt.CKPT, ROOT)), batch=BATCH, pos=POS,
        configurations=n, tl_full=args.full, tl_sample=None if args.full else int(len(sample_idx)),
        tl_per_config_ms=None if args.full else tl_per_config,
        tl_seconds=tl_s, mechlab_seconds=ml["bulk_skip_s"], mechlab=ml, speedup=speedup,
        values_max_abs_diff=max_abs, values_rel_diff=rel)
    with open(os.path.join(OUT_DIR, "patch_vs_transformerlens.json"), "w") as f:
        json.dump(info, f, indent=2)
    how = "full sweep, 1 run" if args.full else (
        f"median per-config time of {tl_per_config['runs']} sampled configs x {n}; IQR "
        f"{tl_per_config['q1'] / 1e3 * n:.1f} - {tl_per_config['q3'] / 1e3 * n:.1f} s")
    print(f"\nhead-out-by-position sweep, GPT-2-small shape (random), {BATCH} x {POS} tokens, "
          f"{n} configurations, {args.device} float32, {args.threads} threads")
    print(f"{'tool':<44} {'seconds':>10}")
    print(f"{'TransformerLens get_act_patch_attn_head_out_by_pos':<44} {tl_s:>10.1f}  ({how})")
    iqr = ml["bulk_skip_iqr_s"]
    print(f"{'mechlab BulkPatcher (default)':<44} {ml['bulk_skip_s']:>10.1f}  "
          f"(median of {ml['repeats']} runs, IQR {iqr[0]:.1f} - {iqr[1]:.1f} s; "
          f"{ml['bulk_skip_stats']['forwards']} forwards, "
          f"{ml['bulk_skip_stats']['skipped_noop']} no-op configs skipped)")
    print(f"speed-up: {speedup:.1f}x   values: max |mechlab - TL| = {max_abs:.3g} "
          f"(relative {rel:.2g}) on {len(sample_idx)} configurations")
    print(f"load average: {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end")
    return 0 if rel <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
