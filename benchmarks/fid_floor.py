"""Real-vs-real FID and KID of the shared MLDS face set: two disjoint halves at 2k and 10k images each.

No generator can come closer to the data than a second sample of the data itself, so these are the floors the
evaluation's FIDs should be read against (FID is biased upwards at small N: the floor falls as N grows).

The halves: images in id order, byte-identical duplicates dropped (the zip holds 1,248), split by
``animegen.data.splits.assign_splits`` (blocks of 32 consecutive ids, one block of every pair to each side, drawn
at random), so runs of near-identical crops of one character never straddle the two sides and both keep the
tag-sorted ids' colour mix; each side is then a seeded random sample of N. The sizes are nested (the 2k sample
is the first 2k of the 10k one), so features are computed once, for the largest N.

    python benchmarks/fid_floor.py                         # 2k and 10k from ../shared/datasets/mlds-anime-faces-64.zip
    python benchmarks/fid_floor.py --sizes 2000            # 2k only (~4 min on 2 idle cores)
    python benchmarks/fid_floor.py --data out/mlds         # an ingested Dataset directory instead of the zip

Writes benchmarks/results/fid_floor-<device>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
from common import MLDS, RESULTS, environment, mlds_jpegs, write_result

SPLIT_BLOCK = 32


def mlds_images(source: Path) -> tuple[np.ndarray, dict]:
    """All images of the MLDS zip (uint8 [N, 64, 64, 3], id order, byte duplicates dropped) or of an ingested
    Dataset directory (its images.npy, already deduplicated), and facts about them."""
    if source.is_dir():
        images = np.load(source / "images.npy", mmap_mode="r")
        manifest = json.loads((source / "manifest.json").read_text())
        return images, {"source": str(source), "content_hash": manifest.get("content_hash"), "images": len(images)}
    from PIL import Image

    with zipfile.ZipFile(source) as zf:
        files = sum(1 for n in zf.namelist() if n.lower().endswith(".jpg") and "/images/" in n)
        out = []
        for _, data in mlds_jpegs(zf):
            with Image.open(io.BytesIO(data)) as im:
                out.append(np.asarray(im.convert("RGB")))
    return np.stack(out), {"source": source.name, "files": files, "duplicates_dropped": files - len(out),
                           "images": len(out)}


def disjoint_halves(count: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint index sets of ``n`` images each: the block split of ``assign_splits`` (holdout 0.5), then a
    seeded random sample of ``n`` from each side, in drawing order (so smaller samples are prefixes)."""
    from animegen.data.splits import HELDOUT, TRAIN, assign_splits

    rows = [{"id": i} for i in range(count)]
    assign_splits(rows, 0.5, block=SPLIT_BLOCK, seed=seed)
    rng = np.random.default_rng(seed)
    sides = []
    for side in (TRAIN, HELDOUT):
        idx = np.array([r["id"] for r in rows if r["split"] == side])
        if len(idx) < n:
            raise ValueError(f"{n} images per side asked for, but the {side} side has {len(idx)}")
        sides.append(rng.permutation(idx)[:n])
    return sides[0], sides[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(MLDS), help="the MLDS zip, or an ingested Dataset directory")
    ap.add_argument("--sizes", default="2000,10000", help="images per side, comma-separated (default 2000,10000)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--backend", choices=("auto", "pytorch-fid", "torchscript"), default="auto")
    ap.add_argument("--inception-weights", default=None, help="PATH|URI of the Inception weights (default: resolved)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS), help="folder for the result JSON")
    args = ap.parse_args(argv)

    import torch

    from animegen.eval.fid import Stats, fid_from_stats, kid
    from animegen.eval.inception import resolve_extractor

    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    source = Path(args.data)
    if not source.exists():
        ap.error(f"{source} not found (the shared MLDS zip, or an ingested Dataset directory)")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    images, facts = mlds_images(source)
    decode_s = time.perf_counter() - t0
    a_idx, b_idx = disjoint_halves(len(images), sizes[-1], args.seed)
    extractor = resolve_extractor(args.inception_weights, args.backend, device)
    print(f"{facts['images']:,} images from {facts['source']} ({decode_s:.0f} s to read); extractor {extractor.id} "
          f"on {device}; {sizes[-1]:,} per side", flush=True)

    load_before = os.getloadavg()
    feats = {}
    t0 = time.perf_counter()
    for side, idx in (("a", a_idx), ("b", b_idx)):
        order = np.argsort(idx)  # read in id order (a memory map reads forward), keep the drawing order
        f = extractor.features(np.ascontiguousarray(images[idx[order]]), progress=True)
        feats[side] = np.empty_like(f)
        feats[side][order] = f
    inception_s = time.perf_counter() - t0
    load_after = os.getloadavg()

    results = []
    for n in sizes:
        sa = Stats.from_features(feats["a"][:n], extractor.id)
        sb = Stats.from_features(feats["b"][:n], extractor.id)
        t = time.perf_counter()
        fid = fid_from_stats(sa, sb)
        kid_mean, kid_std = kid(sa.features, sb.features)
        results.append({"n_per_side": n, "fid": round(fid, 4), "kid": kid_mean, "kid_std": kid_std,
                        "kid_x1000": round(1000 * kid_mean, 4), "metric_s": round(time.perf_counter() - t, 2)})

    env = environment(device)
    print()
    print(f"{'images per side':>16}  {'FID':>9}  {'KID x 1e3':>16}")
    for r in results:
        print(f"{r['n_per_side']:>16,}  {r['fid']:>9.3f}  {r['kid_x1000']:>8.3f} ± {1000 * r['kid_std']:.3f}")
    print(f"\nInception on {2 * sizes[-1]:,} images: {inception_s:.0f} s "
          f"({1000 * inception_s / (2 * sizes[-1]):.1f} ms/image; load {load_before[0]:.1f} -> {load_after[0]:.1f})")

    doc = {
        "benchmark": "fid_floor",
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": facts,
        "method": f"two disjoint halves by assign_splits (holdout 0.5, blocks of {SPLIT_BLOCK} ids, seed "
                  f"{args.seed}), each a seeded random sample (nested: smaller sizes are prefixes); FID with the "
                  "eigenvalue square root; KID: 100 subsets of up to 1000",
        "extractor": {"id": extractor.id, "backend": extractor.backend, "source": extractor.weights.source},
        "environment": env,
        "results": results,
        "timing": {"read_s": round(decode_s, 1), "inception_s": round(inception_s, 1),
                   "ms_per_image": round(1000 * inception_s / (2 * sizes[-1]), 2),
                   "loadavg_before": [round(x, 2) for x in load_before],
                   "loadavg_after": [round(x, 2) for x in load_after]},
    }
    write_result(args.out, f"fid_floor-{device}-{started:%Y-%m-%d}.json", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
