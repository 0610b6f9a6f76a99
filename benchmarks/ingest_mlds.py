"""Wall time and peak memory of the real ingest stage (``animegen.data.ingest.run_ingest``) on the shared MLDS set.

Ingests ../shared/datasets/mlds-anime-faces-64.zip in full (safe extraction, validation, dedupe, 64 px
preprocessing, packing, block split) in a fresh subprocess, so the peak RSS (``ru_maxrss``) is the stage's
alone, and reads the figures back from the Dataset's manifest. Also reports how well the block split keeps
the tags.csv class mix (total-variation distance between the train and held-out sides; 0 = the same mix)
next to a split into two id ranges.

    python benchmarks/ingest_mlds.py                       # defaults: 64 px, rgb, block 32
    python benchmarks/ingest_mlds.py --mode lineart --resolution 128 --keep out/mlds-lineart

Writes benchmarks/results/ingest_mlds-<date>.json with the machine, versions and git commit.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import MLDS, RESULTS, environment, print_table, write_result

from animegen.utils import human_bytes, peak_rss_bytes

MARK = "INGEST_MLDS_RESULT "


def run_one(cfg_dict: dict, out: str) -> dict:
    """Child side: run the stage, return its timing and memory figures."""
    from animegen.data.ingest import IngestConfig, run_ingest

    source = cfg_dict.pop("source")  # the stage's input, sent beside the config
    cfg = IngestConfig.from_dict(cfg_dict)
    ru0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run_ingest(cfg, source, out)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {"wall_s": round(wall, 2), "process_cpu_s": round(cpu, 2), "peak_rss_bytes": peak_rss_bytes()}


def class_mix(out: Path) -> dict | None:
    """TV distance of the (hair, eye) pair and hair mixes: this split vs a split into two id ranges."""
    from animegen.data.splits import HELDOUT, TRAIN, class_mix_distance

    tags_path = out / "tags" / "tags.csv"
    if not tags_path.is_file():
        return None
    with open(tags_path) as f:
        tags = {row[0]: row[1] for row in csv.reader(f) if len(row) >= 2}
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["stem"] in tags]
    pair = [tags[r["stem"]] for r in rows]
    hair = [p.split(" hair")[0] for p in pair]
    split = [r["split"] for r in rows]
    n_held = split.count(HELDOUT)
    by_range = [TRAIN] * (len(rows) - n_held) + [HELDOUT] * n_held
    return {
        "labelled_rows": len(rows),
        "pair_tv_block_split": round(class_mix_distance(pair, split), 4),
        "pair_tv_id_range_split": round(class_mix_distance(pair, by_range), 4),
        "hair_tv_block_split": round(class_mix_distance(hair, split), 4),
        "hair_tv_id_range_split": round(class_mix_distance(hair, by_range), 4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default=str(MLDS), help="the MLDS zip (default: ../shared/datasets/...)")
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--mode", default="rgb", choices=("rgb", "grayscale", "lineart"))
    ap.add_argument("--split-block", type=int, default=32)
    ap.add_argument("--keep", metavar="DIR", help="write the Dataset here and keep it (default: a temp dir)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for the result JSON")
    ap.add_argument("--one", nargs=2, metavar=("CONFIG_JSON", "OUT"), help=argparse.SUPPRESS)  # child side
    args = ap.parse_args(argv)

    if args.one:
        print(MARK + json.dumps(run_one(json.loads(args.one[0]), args.one[1])), flush=True)
        return 0
    if not Path(args.source).is_file():
        ap.error(f"{args.source} not found")

    from animegen.data.ingest import IngestConfig

    cfg = IngestConfig(resolution=args.resolution, mode=args.mode, split_block=args.split_block)
    source = str(Path(args.source).resolve())
    started = dt.datetime.now().astimezone()
    tmp = None if args.keep else tempfile.mkdtemp(prefix="animegen-ingest-bench-")
    out = Path(args.keep) if args.keep else Path(tmp) / "mlds"
    print(f"ingest {Path(args.source).name} -> {out} ({args.resolution} px {args.mode}) ...", flush=True)
    try:
        load_before = os.getloadavg()
        one = json.dumps({**cfg.to_dict(), "source": source})
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--one", one, str(out)],
                              capture_output=True, text=True, check=False)
        load_after = os.getloadavg()
        lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
        if proc.returncode != 0 or not lines:
            print(f"FAILED (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}", file=sys.stderr)
            return 1
        print("\n".join(line for line in proc.stdout.splitlines() if line.startswith("ingest:")))
        r = json.loads(lines[-1][len(MARK):])
        m = json.loads((out / "manifest.json").read_text())
        mix = class_mix(out)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    env = environment("cpu")  # after the run: it imports torch, whose memory a forked child would inherit
    print(f"animegen {env['animegen']} @ {env['git_commit']} on {env['cpu']['model']} "
          f"({env['cpu']['logical_cpus']} logical CPUs)")
    files = m["candidates"]
    result = {
        "files": files,
        "kept": m["kept"],
        "duplicates": m["duplicates_count"],
        "skipped": m["skipped_count"],
        "skipped_by_reason": m["skipped_by_reason"],
        "refused": m["refused_count"],
        "ignored": m["ignored_count"],
        "splits": m["splits"],
        "images_npy_bytes": m["count"] * m["resolution"] ** 2 * m["channels"],
        "content_hash": m["content_hash"],
        **r,
        "files_per_s": round(files / r["wall_s"], 1),
        "cpu_utilisation": round(r["process_cpu_s"] / r["wall_s"], 2),
        "phase_s": m["timings"],  # source_s: extraction + scan; pack_s: validate..pack; cleanup_s: remove extraction
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "class_mix": mix,
    }
    head = ["files", "kept", "duplicates", "skipped", "wall s", "peak RSS", "files/s", "extract+scan s", "pack s",
            "cleanup s"]
    row = [f"{files:,}", f"{m['kept']:,}", f"{m['duplicates_count']:,}", f"{m['skipped_count']:,}",
           f"{r['wall_s']:.1f}", human_bytes(r["peak_rss_bytes"]), f"{result['files_per_s']:.0f}",
           f"{m['timings']['source_s']:.1f}", f"{m['timings']['pack_s']:.1f}", f"{m['timings']['cleanup_s']:.1f}"]
    print()
    print_table(head, [row])
    if mix:
        print(f"\nclass mix, train vs held-out (TV distance, 0 = same): "
              f"(hair, eye) pairs {mix['pair_tv_block_split']:.3f} with blocks of {args.split_block} "
              f"vs {mix['pair_tv_id_range_split']:.3f} for two id ranges; "
              f"hair {mix['hair_tv_block_split']:.3f} vs {mix['hair_tv_id_range_split']:.3f}")

    doc = {
        "benchmark": "ingest_mlds",
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "source": Path(args.source).name,
        "method": "run_ingest in a fresh subprocess; wall = its perf_counter time around run_ingest; peak RSS = the "
                  "child's VmHWM (its own peak resident set); counts and phase times from the Dataset's manifest.json",
        "config": {**cfg.to_dict(), "source": Path(args.source).name},
        "environment": env,
        "result": result,
    }
    print()
    write_result(args.out, f"ingest_mlds-{started:%Y-%m-%d}.json", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
