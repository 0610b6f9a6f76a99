"""Streaming a training set that is not held on the device (``data_placement stream``) vs holding it there.

Makes (once, kept in benchmarks/.work/stream-<R>px-<N>) a packed synthetic set of N faces at R px with the project's
ingest (default 100,000 at 128 px: 4.9 GB of uint8), then measures on this machine's device:

1. the data path alone: images per second served as training batches (random indices, the sampler's order) from
   the device-resident copy, and streamed from the memory map with the page cache dropped for the file first
   (``posix_fadvise(DONTNEED)``: read from disk) and warm (served from the page cache); the share of the file in
   the page cache (``mincore``) is recorded before each;
2. training: DCGAN steps at R px with the set resident vs streamed (prefetch on), img/s from the loop's own log.

    python benchmarks/stream_throughput.py                  # 100k x 128 px
    python benchmarks/stream_throughput.py --n 20000 --resolution 64 --steps 20

Writes benchmarks/results/stream_throughput-<device>-<date>.json.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import mmap
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, ROOT, environment, print_table, write_result


def page_cache_share(path: Path) -> float:
    """The share of ``path``'s pages resident in the page cache (mincore on a private, untouched mapping)."""
    size = path.stat().st_size
    libc = ctypes.CDLL(None, use_errno=True)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        first = ctypes.c_char.from_buffer(m)
        try:
            if libc.mincore(ctypes.c_void_p(ctypes.addressof(first)), ctypes.c_size_t(size), vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del first
            m.close()
    return sum(v & 1 for v in vec) / pages


def drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def make_set(n: int, resolution: int, work: Path) -> Path:
    from animegen.data.ingest import IngestConfig, run_ingest

    out = work / f"stream-{resolution}px-{n}"
    if not (out / "manifest.json").is_file():
        print(f"making {n:,} synthetic faces at {resolution} px in {out} (once) ...", flush=True)
        run_ingest(IngestConfig(resolution=resolution, holdout=0.0),
                   f"synthetic:?n={n}&resolution={resolution}&labels=none", out, overwrite=True)
    return out


def loader_rate(serve, n: int, batch: int, batches: int, seed: int = 0) -> float:
    """Images per second of ``serve(idx)`` over ``batches`` batches of the sampler's random indices."""
    import torch

    from animegen.train.state import BatchSampler

    sampler = BatchSampler(n, seed)
    t0 = time.perf_counter()
    for _ in range(batches):
        out = serve(sampler.next(batch))
        if isinstance(out, torch.Tensor) and out.is_cuda:
            torch.cuda.synchronize()
    return batch * batches / (time.perf_counter() - t0)


def train_rate(data: str, resolution: int, placement: str, steps: int, device: str, batch: int) -> dict:
    from animegen.train import TrainConfig, run_train

    with tempfile.TemporaryDirectory(prefix="animegen-stream-") as tmp:
        cfg = TrainConfig(arch="dcgan", resolution=resolution, batch=batch, kimg=steps * batch / 1000,
                          log_every=max(1, steps // 4), snapshot_kimg=1e6, grid_size=2, progress=False,
                          device=device, data_placement=placement)
        t0 = time.perf_counter()
        result = run_train(cfg, data, Path(tmp) / "run")
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "train_log.jsonl").read_text().splitlines()]
    timed = [r["img_s"] for r in rows[1:] if "img_s" in r]  # after the first interval (warm-up)
    mean = round(len(timed) / sum(1 / x for x in timed), 2) if timed else None  # harmonic: equal images
    return {"placement": placement, "steps": result.steps, "img_s_timed": mean,
            "img_s_incl_setup": round(result.images_seen / wall, 2), "wall_s": round(wall, 1),
            "peak_memory_bytes": result.peak_memory_bytes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=200, help="batches per data-path measurement")
    ap.add_argument("--steps", type=int, default=40, help="training steps per placement (0: skip training)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work"))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    import torch

    from animegen.train.state import images_to_device
    from animegen.train.stream import StreamedImages, device_memory_bytes

    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    folder = make_set(args.n, args.resolution, Path(args.work))
    npy = folder / "images.npy"
    arr = np.load(npy, mmap_mode="r")
    env = environment(device.type)
    print(f"stream throughput on {device} ({env['device_name']}), {len(arr):,} images of {args.resolution} px: "
          f"{arr.nbytes / 1e9:.2f} GB; device memory {device_memory_bytes(device) / 1e9:.1f} GB", flush=True)
    rows, loader = [], []

    def measure(name: str, serve, cache_before: float) -> None:
        rate = loader_rate(serve, len(arr), args.batch, args.batches)
        loader.append({"path": name, "img_s": round(rate, 1), "page_cache_share_before": round(cache_before, 3)})
        print(f"  {name}: {rate:,.0f} img/s (file in page cache before: {cache_before:.0%})", flush=True)

    streamed = StreamedImages(arr, device, channels_last=device.type == "cuda")
    drop_from_page_cache(npy)
    measure("streamed, cold (page cache dropped)", lambda idx: streamed[idx], page_cache_share(npy))
    measure("streamed, warm", lambda idx: streamed[idx], page_cache_share(npy))
    t0 = time.perf_counter()
    held = [images_to_device(arr, device, channels_last=device.type == "cuda")]
    load_s = time.perf_counter() - t0
    measure("device-resident", lambda idx: held[0][idx.to(device)], page_cache_share(npy))
    held.clear()
    streamed.close()
    training = []
    if args.steps:
        for placement in ("device", "stream"):
            r = train_rate(str(folder), args.resolution, placement, args.steps, device.type, args.batch)
            training.append(r)
            print(f"  training ({placement}): {r['img_s_timed']} img/s timed, {r['img_s_incl_setup']} img/s with "
                  f"setup ({r['wall_s']} s), peak memory {r['peak_memory_bytes'] / 2**30:.2f} GiB", flush=True)
    print()
    print_table(["data path", "img/s", "in page cache before"],
                [[r["path"], f"{r['img_s']:,.0f}", f"{r['page_cache_share_before']:.0%}"] for r in loader])
    if training:
        print()
        print_table(["training", "img/s (timed)", "img/s incl. setup", "wall s", "peak memory"],
                    [[r["placement"], str(r["img_s_timed"]), str(r["img_s_incl_setup"]), str(r["wall_s"]),
                      f"{r['peak_memory_bytes'] / 2**30:.2f} GiB"] for r in training])
    rows = {"benchmark": "stream_throughput", "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "n": len(arr),
            "resolution": args.resolution, "bytes": int(arr.nbytes), "batch": args.batch, "batches": args.batches,
            "device_memory_bytes": device_memory_bytes(device), "resident_load_s": round(load_s, 1),
            "data_path": loader, "training": training, "environment": env}
    print()
    write_result(args.out, f"stream_throughput-{device.type}-{dt.date.today():%Y-%m-%d}.json", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
