#!/usr/bin/env python3
"""Time to MMCS 0.99 on the toy-superposition problem: mechlab `sae train` vs SAELens's SAETrainer.

Run it through the wrapper (sets up the reference venv):

    bash scripts/bench/sae_toy_vs_saelens.sh [--threads N] [--target T] [--max-steps N]

The problem (the same on both sides, each drawing from its own seeded generator): F = 512 unit
directions (Gaussian rows normalised) in d = 256 dimensions; a sample is sum_i a_i f_i with
a_i = m_i [u_i < 5/512], m_i, u_i ~ U[0, 1). The SAE: TopK, d_sae 1024, k 8, batch 1024, Adam
lr 1e-3 (betas 0.9, 0.999), gradient norm clipped at 1, b_dec 0, decoder rows initialised at
norm 0.1 (SAELens's defaults).

SAELens: TopKTrainingSAE + SAETrainer (its _train_step: training_forward_pass with the dead mask,
clip_grad_norm_(1.0), Adam, schedulers), fed batches by a generator; MMCS of W_dec checked every
--check-every steps, the check included in the time. torch.set_num_threads(N).
mechlab: `mechlab sae train CONFIG --threads N --no-progress` with stop_at_mmcs = target and
eval_every = --check-every (evaluation rows 256: the check, included in the time); its time is
the `seconds` of the last row of train_log.csv (from the trainer's construction to the stop).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

F, D, P = 512, 256, 5.0 / 512.0
D_SAE, K, BATCH, LR = 1024, 8, 1024, 1e-3


def mmcs(truth: torch.Tensor, learned: torch.Tensor) -> float:
    t = truth / truth.norm(dim=1, keepdim=True)
    lrn = learned / learned.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (t @ lrn.T).max(dim=1).values.mean().item()


def run_saelens(args) -> dict:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    feats = torch.randn(F, D, generator=g)
    feats = feats / feats.norm(dim=1, keepdim=True)

    def batches():
        while True:
            active = torch.rand(BATCH, F, generator=g) < P
            mags = torch.rand(BATCH, F, generator=g)
            yield (mags * active) @ feats

    torch.manual_seed(args.seed)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=D_SAE, k=K))
    cfg = SAETrainerConfig(total_training_samples=args.max_steps * BATCH, train_batch_size_samples=BATCH,
                           lr=LR, lr_end=LR, device="cpu")
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches())
    data = batches()
    t0 = time.perf_counter()
    steps, score = 0, 0.0
    while steps < args.max_steps:
        trainer._train_step(sae=sae, sae_in=next(data))
        trainer.n_training_steps += 1
        steps += 1
        if steps % args.check_every == 0:
            with torch.no_grad():
                score = mmcs(feats, sae.W_dec.detach())
            if score >= args.target:
                break
    seconds = time.perf_counter() - t0
    return {"steps": steps, "samples": steps * BATCH, "seconds": seconds, "mmcs": score,
            "reached": score >= args.target}


def run_mechlab(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {"name": "toy-topk",
               "sae": {"architecture": "topk", "d_in": D, "d_sae": D_SAE, "k": K},
               "data": {"toy": {"n_features": F, "d": D, "p_active": P, "seed": args.seed}},
               "steps": args.max_steps, "batch_size": BATCH, "lr": LR, "eval_every": args.check_every,
               "eval_rows": 256, "checkpoint_every": 10 ** 9, "stop_at_mmcs": args.target, "seed": args.seed}
        path = os.path.join(tmp, "cfg.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        out = os.path.join(tmp, "run")
        cmd = [args.mechlab, "sae", "train", path, "--out", out, "--threads", str(args.threads), "--no-progress"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"mechlab failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        with open(os.path.join(out, "train_log.csv")) as f:
            rows = list(csv.DictReader(f))
        with open(os.path.join(out, "sae_log.csv")) as f:
            sae_rows = list(csv.DictReader(f))
        last, last_sae = rows[-1], sae_rows[-1]
        score = float(last_sae["mmcs"])
        steps = int(last["step"])
        return {"steps": steps, "samples": steps * BATCH, "seconds": float(last["seconds"]), "wall_seconds": wall,
                "mmcs": score, "reached": score >= args.target}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.99)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--check-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mechlab", default=os.environ.get("MECHLAB_BIN", "build/mechlab"))
    args = ap.parse_args()
    if not os.path.exists(args.mechlab):
        sys.exit(f"sae_toy_vs_saelens: no mechlab binary at {args.mechlab}; build first (scripts/env.sh; mechlab_build)")
    load = os.getloadavg()[0]
    ref = run_saelens(args)
    ours = run_mechlab(args)
    print(f"toy superposition, TopK d_sae {D_SAE} k {K} batch {BATCH} lr {LR}, {args.threads} threads, "
          f"target MMCS {args.target}, load average {load:.2f}")
    for name, r in (("SAELens 6", ref), ("mechlab", ours)):
        state = "reached" if r["reached"] else "NOT reached"
        print(f"  {name:10s} {state} MMCS {r['mmcs']:.4f} after {r['steps']} steps ({r['samples']} samples) "
              f"in {r['seconds']:.2f} s")
    if ref["reached"] and ours["reached"]:
        print(f"  ratio mechlab / SAELens: {ours['seconds'] / ref['seconds']:.3f} (the issue asks <= 0.5)")


if __name__ == "__main__":
    main()
