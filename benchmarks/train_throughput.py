"""Training throughput and peak memory of the real training loop (``animegen.train.run_train``).

Configs: DCGAN (batch 128) and StyleGAN (batch 64) at 64 px with their default widths (TrainConfig /
ARCH_DEFAULTS), unconditional and conditional (synthetic hair x eye pair classes, 120 of them), on the CPU and,
when there is one, on CUDA (where the loop itself uses bf16 autocast, channels_last and fused Adam).

The figures are the loop's own: the ``img_s`` of its train_log.jsonl lines (measured between log lines,
snapshot time excluded), over every log interval after the first (the first holds the warm-up). Peak memory is
``TrainResult.peak_memory_bytes`` (CUDA max allocated, or the peak RSS of the process on the CPU); each config
runs in a fresh subprocess (``--one CONFIG``) so that the peak belongs to that config alone.

    python benchmarks/train_throughput.py                      # every config, CUDA if present, else CPU
    python benchmarks/train_throughput.py --device cpu --configs dcgan,stylegan
    python benchmarks/train_throughput.py --quick              # a smoke check: fewest steps that give a figure
    python benchmarks/train_throughput.py --quick --tiny       # tiny widths at 16 px: checks the script, not speed
    python benchmarks/train_throughput.py --nproc 1,2 --configs stylegan   # data-parallel scaling (torchrun)

``--nproc 1,2,...`` trains each config with that many data-parallel processes (``animegen.train.launch``: one per
GPU on CUDA, gloo processes with one torch thread each on the CPU) at a fixed batch per process (weak scaling:
the config's default batch, or ``--per-process-batch``), and reports the scaling efficiency img/s(N) / (N x
img/s(1)). img/s is the global batch's, from rank 0's log; peak memory is rank 0's.

Writes benchmarks/results/train_throughput-<device>-<date>.json (``-quick`` / ``-tiny`` added in those modes).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, environment, print_table, write_result

from animegen.utils import human_bytes

DATA = "synthetic:?n=2048"  # labels=pair (the default): 12 hair x 10 eye colours = 120 classes
RESOLUTION = 64
CONFIGS = {
    "dcgan": dict(arch="dcgan", conditional=False),
    "dcgan-cond": dict(arch="dcgan", conditional=True),
    "stylegan": dict(arch="stylegan", conditional=False),
    "stylegan-cond": dict(arch="stylegan", conditional=True),
    "stylegan2": dict(arch="stylegan2", conditional=False),
    "stylegan2-cond": dict(arch="stylegan2", conditional=True),
}
# (steps, log_every) per device type. The first log interval is warm-up and is not counted, so every run has
# at least two intervals. On CUDA log_every is a multiple of the lazy-regulariser interval (16), so each timed
# interval holds its share of R1 / path-length steps. On the CPU (2 idle cores: DCGAN 2-3.5 s a step, StyleGAN
# 16-20 s; 30-100 s a config) the runs log every step and time a few; their timed steps hold no R1/PL step
# (those fall on steps 0, 16, ...), so the CPU StyleGAN img/s leaves out the amortised regulariser cost and
# img_s_amortised_lower_bound brackets it.
STEPS = {
    "cpu": {"dcgan": (24, 1), "dcgan-cond": (14, 1), "stylegan": (4, 1), "stylegan-cond": (4, 1), "stylegan2": (4, 1),
            "stylegan2-cond": (4, 1)},
    "cuda": {name: (384, 64) for name in CONFIGS},
}
QUICK_STEPS = {"cpu": {name: (2, 1) for name in CONFIGS}, "cuda": {name: (48, 16) for name in CONFIGS}}
# --tiny: the widths of the test suite's tiny models at 16 px on a small synthetic set (a check that the script and
# the loop run, e.g. gpu_check.py --dry-run; the figures say nothing about the real configs)
TINY_DATA = "synthetic:?n=256&resolution=16"
TINY_RESOLUTION = 16
TINY = {
    "dcgan": dict(z_dim=16, channel_base=128, channel_max=64, batch=8),
    "stylegan": dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=32, batch=8),
    "stylegan2": dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=32, batch=8),
}
MARK = "TRAIN_THROUGHPUT_RESULT "


# ----------------------------------------------------------------------------------------------- child side
def schedule(name: str, device: str, quick: bool, steps: int | None = None, log_every: int | None = None
             ) -> tuple[int, int]:
    """(steps, log_every) of a config: the table's (quick or not), or the given overrides."""
    default_steps, default_every = (QUICK_STEPS if quick else STEPS)[device][name]
    return steps or default_steps, log_every or default_every


def run_one(name: str, device: str, quick: bool, tiny: bool = False, steps: int | None = None,
            log_every: int | None = None, nproc: int = 1, per_process_batch: int | None = None) -> dict:
    """Train one config with the real loop, in this process or (``nproc`` > 1) in that many data-parallel
    processes at ``per_process_batch`` each (default: the config's batch); return its figures and exact settings."""
    import torch

    from animegen.train import TrainConfig
    from animegen.train.checkpoint import load_checkpoint, models_from_checkpoint
    from animegen.train.launch import train_processes

    steps, log_every = schedule(name, device, quick, steps, log_every)
    model = {**CONFIGS[name], **(TINY[CONFIGS[name]["arch"]] if tiny else {})}
    probe = TrainConfig(**model).with_arch_defaults()
    batch = (per_process_batch or probe.batch) * nproc
    model["batch"] = batch
    data, resolution = (TINY_DATA, TINY_RESOLUTION) if tiny else (DATA, RESOLUTION)
    with tempfile.TemporaryDirectory(prefix=f"animegen-bench-{name}-") as tmp:
        out = Path(tmp) / "run"
        cfg = TrainConfig(resolution=resolution, **model, kimg=steps * batch / 1000, log_every=log_every,
                          snapshot_kimg=1e6, grid_size=4, progress=False, device=device, seed=0)
        load_before = os.getloadavg()
        who = (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)  # the ranks are children of this process
        ru0, t0 = [resource.getrusage(w) for w in who], time.perf_counter()
        result = train_processes(cfg, data, out, nproc=nproc)
        ru1, run_s = [resource.getrusage(w) for w in who], time.perf_counter() - t0
        cpu_s = sum((b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime) for a, b in zip(ru0, ru1))
        load_after = os.getloadavg()
        rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        saved_cfg = json.loads((out / "config.json").read_text())
        G, D, _, _ = models_from_checkpoint(load_checkpoint(out / "checkpoint.pt"))
        reserved = torch.cuda.max_memory_reserved() if device == "cuda" else None

    rows = [r for r in rows if "img_s" in r]
    if len(rows) < 2:
        raise RuntimeError(f"{name}: {len(rows)} log line(s); need at least 2 (the first is warm-up)")
    prev_kimg = rows[0]["kimg"]
    images, seconds, rates = 0, 0.0, []
    for r in rows[1:]:
        n = round((r["kimg"] - prev_kimg) * 1000)
        prev_kimg = r["kimg"]
        images += n
        seconds += n / r["img_s"]
        rates.append(r["img_s"])
    img_s = images / seconds
    first_step, last_step = rows[0]["step"], rows[-1]["step"]  # timed steps: indices first_step .. last_step-1
    resolved = TrainConfig.from_dict(saved_cfg).with_arch_defaults()
    intervals = [resolved.r1_interval] if resolved.r1_gamma > 0 else []  # the loop's lazy regularisers
    if resolved.pl_weight > 0 and resolved.arch != "dcgan":
        intervals.append(resolved.pl_interval)
    intervals = [k for k in intervals if k > 0]
    reg_interval = min(intervals, default=0)
    reg_steps = sum(1 for i in range(first_step, last_step) if any(i % k == 0 for k in intervals))
    amortised = None
    if reg_interval and reg_steps == 0:
        # the timed steps hold no R1/PL step: bound the amortised rate by charging the warm-up interval's excess
        # over plain steps (first-call overheads + the step-0 regularisers) to one regularised step per period
        step_s = batch / img_s
        reg_step_s = first_step * batch / rows[0]["img_s"] - (first_step - 1) * step_s
        amortised = batch * reg_interval / ((reg_interval - 1) * step_s + reg_step_s)
    settings = resolved.to_dict() | {"data": data}  # the run's input, beside its options
    return {
        "config": name,
        "device": result.device,
        "processes": nproc,
        "batch": batch,
        "batch_per_process": batch // nproc,
        "img_s": round(img_s, 3),
        "ms_per_step": round(1000 * batch / img_s, 1),
        "peak_memory_bytes": result.peak_memory_bytes,
        "peak_memory_kind": "cuda max_memory_allocated" if device == "cuda" else "process peak RSS (ru_maxrss)",
        "cuda_max_memory_reserved_bytes": reserved,
        "timed_steps": last_step - first_step,
        "timed_images": images,
        "timed_s": round(seconds, 3),
        "interval_img_s": rates,
        "interval_img_s_min": min(rates),
        "interval_img_s_max": max(rates),
        "warmup_interval": {"steps": first_step, "img_s": rows[0]["img_s"]},
        "lazy_reg_steps_in_timed": reg_steps,
        "lazy_reg_interval": reg_interval or None,
        "img_s_amortised_lower_bound": None if amortised is None else round(amortised, 3),
        "loop_img_per_s_incl_warmup": round(result.img_per_s, 3),
        "run_wall_s": round(run_s, 1),
        "steps": result.steps,
        "params_G": sum(p.numel() for p in G.parameters()),
        "params_D": sum(p.numel() for p in D.parameters()),
        "classes": getattr(G, "c_dim", 0),
        "process_cpu_s": round(cpu_s, 1),
        "cpu_utilisation": round(cpu_s / run_s, 2),  # busy cores of this process over the run; ~threads if idle
        "torch_threads": torch.get_num_threads() if nproc == 1 or device == "cuda" else 1,  # per process
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "settings": settings,
    }


# ---------------------------------------------------------------------------------------------- parent side
def scaling_table(results: list[dict]) -> list[dict]:
    """Per config and process count with a 1-process run beside it: efficiency = img/s(N) / (N x img/s(1))."""
    one = {r["config"]: r for r in results if r["processes"] == 1}
    return [{"config": r["config"], "processes": r["processes"], "batch_per_process": r["batch_per_process"],
             "img_s": r["img_s"], "efficiency": round(r["img_s"] / (r["processes"] * one[r["config"]]["img_s"]), 3)}
            for r in results if r["config"] in one and len({x["processes"] for x in results
                                                            if x["config"] == r["config"]}) > 1]


def print_results(results: list[dict]) -> None:
    def with_reg(r: dict) -> str:
        if r["img_s_amortised_lower_bound"] is not None:
            return f">={r['img_s_amortised_lower_bound']:.1f}"
        return f"{r['img_s']:.1f}" if r["lazy_reg_steps_in_timed"] else "-"

    head = ["config", "device", "procs", "batch", "img/s", "ms/step", "img/s incl. R1/PL", "peak memory", "timed steps",
            "img/s min..max"]
    rows = [[r["config"], r["device"], str(r["processes"]), str(r["batch"]), f"{r['img_s']:.1f}",
             f"{r['ms_per_step']:.0f}", with_reg(r),
             human_bytes(r["peak_memory_bytes"]), str(r["timed_steps"]),
             f"{r['interval_img_s_min']:.1f}..{r['interval_img_s_max']:.1f}"] for r in results]
    print_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated subset of {', '.join(CONFIGS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="fewest steps that still give a figure (smoke check)")
    ap.add_argument("--tiny", action="store_true",
                    help="tiny model widths at 16 px on a small synthetic set: checks the script, not the speed")
    ap.add_argument("--steps", type=int, default=None, help="steps per config (default: the table's for the device)")
    ap.add_argument("--log-every", type=int, default=None,
                    help="steps per log interval, i.e. per timed interval (default: the table's); the first is "
                         "warm-up, so --steps must be at least twice this")
    ap.add_argument("--timeout", type=float, default=None, metavar="S",
                    help="stop a config's subprocess after S seconds (it is then reported as failed)")
    ap.add_argument("--nproc", default="1", metavar="N[,N...]",
                    help="data-parallel processes per run, e.g. 1,2 (scaling efficiency against 1; default 1)")
    ap.add_argument("--per-process-batch", type=int, default=None, metavar="B",
                    help="batch per process with --nproc (default: the config's batch); the global batch is B x N")
    ap.add_argument("--out", default=str(RESULTS), help="folder for the result JSON")
    ap.add_argument("--one", metavar="CONFIG", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = ap.parse_args(argv)

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")

    if args.one:
        if args.one not in CONFIGS:
            ap.error(f"unknown config {args.one!r}")
        print(MARK + json.dumps(run_one(args.one, device, args.quick, args.tiny, args.steps, args.log_every,
                                        int(args.nproc), args.per_process_batch)), flush=True)
        return 0
    nprocs = [int(n) for n in args.nproc.split(",") if n.strip()]
    if not nprocs or min(nprocs) < 1:
        ap.error(f"--nproc {args.nproc!r}: whole numbers >= 1, e.g. 1,2")
    if device == "cuda" and max(nprocs) > torch.cuda.device_count():
        ap.error(f"--nproc {max(nprocs)}: this machine has {torch.cuda.device_count()} GPU(s)")

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        ap.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")

    env = environment(device)
    print(f"train throughput on {device} ({env['device_name']}, {env['torch_threads']} torch threads), "
          f"torch {env['torch']}, animegen {env['animegen']} @ {env['git_commit']}"
          f"{' [quick]' if args.quick else ''}{' [tiny]' if args.tiny else ''}", flush=True)
    started = dt.datetime.now().astimezone()
    results, failed = [], []
    for name, nproc in [(n, k) for n in names for k in nprocs]:
        steps, log_every = schedule(name, device, args.quick, args.steps, args.log_every)
        print(f"  {name}: {steps} steps, log every {log_every}"
              f"{f', {nproc} processes' if len(nprocs) > 1 or nproc > 1 else ''} ...", flush=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--device", device, "--nproc", str(nproc)]
        if args.per_process_batch:
            cmd += ["--per-process-batch", str(args.per_process_batch)]
        cmd += ["--quick"] * args.quick + ["--tiny"] * args.tiny
        if args.steps:
            cmd += ["--steps", str(args.steps)]
        if args.log_every:
            cmd += ["--log-every", str(args.log_every)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired as e:
            failed.append(name)
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
            print(f"  {name} FAILED (stopped after --timeout {args.timeout:g} s):\n{out[-2000:]}{err[-2000:]}",
                  file=sys.stderr, flush=True)
            continue
        lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
        if proc.returncode != 0 or not lines:
            failed.append(name)
            print(f"  {name} FAILED (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}",
                  file=sys.stderr, flush=True)
            continue
        r = json.loads(lines[-1][len(MARK):])
        results.append(r)
        print(f"    {r['img_s']:.1f} img/s, {r['ms_per_step']:.0f} ms/step, peak "
              f"{human_bytes(r['peak_memory_bytes'])} (run {r['run_wall_s']:.0f} s, "
              f"load {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f})", flush=True)
        busy = r["torch_threads"] * r["processes"]
        if device == "cpu" and r["cpu_utilisation"] < 0.8 * min(busy, os.cpu_count() or 1):
            print(f"    note: this process kept only {r['cpu_utilisation']:.2f} cores busy with "
                  f"{busy} torch threads (load average {r['loadavg_after'][0]:.1f}): other processes "
                  "probably shared the cores, so this figure is low", flush=True)

    if results:
        print()
        print_results(results)
        scaling = scaling_table(results)
        if scaling:
            print()
            print_table(["config", "processes", "batch / process", "img/s", "efficiency"],
                        [[r["config"], str(r["processes"]), str(r["batch_per_process"]), f"{r['img_s']:.1f}",
                          f"{r['efficiency']:.2f}"] for r in scaling])
        doc = {
            "benchmark": "train_throughput",
            "started": started.isoformat(timespec="seconds"),
            "mode": "quick" if args.quick else "full",
            "tiny": args.tiny,
            "schedule": {n: schedule(n, device, args.quick, args.steps, args.log_every) for n in names},  # steps, log
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "data": TINY_DATA if args.tiny else DATA,
            "resolution": TINY_RESOLUTION if args.tiny else RESOLUTION,
            "method": "img/s = images / seconds over the loop's own train_log.jsonl intervals after the first "
                      "(warm-up); each config in a fresh subprocess; peak memory from TrainResult",
            "environment": env,
            "results": results,
            "scaling": scaling,
            "failed": failed,
        }
        print()
        suffix = ("-quick" if args.quick else "") + ("-tiny" if args.tiny else "") + \
            (f"-nproc{'-'.join(map(str, nprocs))}" if nprocs != [1] else "")
        write_result(args.out, f"train_throughput-{device}-{started:%Y-%m-%d}{suffix}.json", doc)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
