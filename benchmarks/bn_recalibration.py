"""FID of one DCGAN checkpoint sampled three ways (issue 12): BatchNorm running statistics (what sampling did
before), recalibrated statistics (what ``load_generator`` does now: models/batchnorm.py) and batch statistics
(BatchNorm in train mode, batches of the training batch size, as the DCGAN tutorial samples; an image then depends
on its batch). Same latents (seed), same sample count, same reference statistics for all three.

    animegen ingest ../shared/datasets/mlds-anime-faces-64.zip --out /tmp/mlds32 --resolution 32 --limit 4000
    animegen train --arch dcgan --data /tmp/mlds32 --out /tmp/dcgan32 --resolution 32 --kimg 12 ...
    python benchmarks/bn_recalibration.py --model /tmp/dcgan32 --data /tmp/mlds32 --n 1024

Writes benchmarks/results/bn_recalibration-<device>-<date>.json (``--out`` for another folder).
"""
from __future__ import annotations

import argparse
import datetime as dt
import time

import torch
from common import RESULTS, batchnorm_sampler, environment, print_table, write_result

from animegen.eval import fid as fidlib
from animegen.eval.inception import resolve_extractor
from animegen.models import build_models
from animegen.train.checkpoint import load_checkpoint, load_generator, model_kwargs
from animegen.train.config import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a DCGAN Model directory (or checkpoint.pt)")
    ap.add_argument("--data", required=True, help="the reference Dataset (its held-out split when it has one)")
    ap.add_argument("--split", default="heldout", help="reference split: heldout, train or all")
    ap.add_argument("--n", type=int, default=1024, help="generated samples per FID")
    ap.add_argument("--max-reference", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    state = load_checkpoint(args.model)
    cfg = TrainConfig.from_dict(state["config"]).with_arch_defaults()
    running, _ = build_models(cfg.arch, **model_kwargs(cfg, len(state["class_names"]), state["img_channels"]))
    running.load_state_dict(state["G_ema"])
    running.eval().requires_grad_(False)
    t0 = time.perf_counter()
    recal, _ = load_generator(args.model)
    recal_s = time.perf_counter() - t0
    batch = int(cfg.batch)
    extractor = resolve_extractor(None, "auto", "cpu")
    ref = fidlib.dataset_stats(args.data, extractor, max_images=args.max_reference,
                               split=None if args.split == "all" else args.split, batch=64, progress=False)
    variants = {
        "running statistics (before)": batchnorm_sampler(running, False),
        "recalibrated statistics (now)": batchnorm_sampler(recal, False),
        "batch statistics (train-mode BN)": batchnorm_sampler(running, True),
    }
    rows, out = [], {}
    for name, G in variants.items():
        t = time.perf_counter()
        feats = fidlib.generator_features(G, extractor, args.n, batch=batch, device="cpu", seed=args.seed)
        fid = fidlib.fid_from_stats(fidlib.Stats.from_features(feats, extractor.id), ref)
        kid, kid_std = fidlib.kid(feats, ref.features, seed=args.seed)
        out[name] = {"fid": float(fid), "kid": float(kid), "kid_std": float(kid_std),
                     "seconds": round(time.perf_counter() - t, 1)}
        rows.append([name, f"{fid:.1f}", f"{kid:.4f} ± {kid_std:.4f}"])
        print(name, out[name], flush=True)
    print_table(["sampling", f"FID ({args.n} samples)", "KID"], rows)
    doc = {"benchmark": "bn_recalibration", "model": str(args.model), "data": str(args.data), "split": args.split,
           "n": args.n, "reference_n": int(ref.n) if hasattr(ref, "n") else None, "sample_batch": batch,
           "images_seen": state["images_seen"], "config": {k: state["config"].get(k) for k in
                                                          ("arch", "resolution", "batch", "channel_base",
                                                           "channel_max", "z_dim", "conditional", "kimg")},
           "recalibration_seconds": round(recal_s, 2), "results": out, "environment": environment("cpu")}
    date = dt.date.today().isoformat()
    print("wrote", write_result(args.out, f"bn_recalibration-cpu-{date}.json", doc))


if __name__ == "__main__":
    main()
