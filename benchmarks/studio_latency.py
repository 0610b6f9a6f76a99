"""The studio's latency: one face, a 4x4 grid, and the first grid after the server starts.

The model is a conditional StyleGAN at 64 px at full width (the papers' configuration: TrainConfig's defaults,
z = w = 512, 8 mapping layers), trained one step on synthetic pair classes so that it is a real checkpoint (the
weights do not change the cost). Measured through the HTTP API of a running ``animegen studio`` (uvicorn, as a user
runs it): server time of one face (``POST /api/face``) and of a 16-face grid (``POST /api/grid``: its
``server_ms``, and the round trip), medians over repeats; and the time from starting the server process to the
page in a headless chromium showing its first grid (model loading included). Targets (issue 15): one face <= 100 ms,
a 4x4 grid <= 1 s, first grid <= 2 s after the server starts (2 CPU cores); a 16-face grid <= 50 ms on a GPU.

    python benchmarks/studio_latency.py                 # CPU, through the HTTP API and chromium
    python benchmarks/studio_latency.py --device cuda --engine-only   # the generation alone (gpu_check.py's stage)

Writes benchmarks/results/studio_latency-<device>-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import RESULTS, ROOT, environment, print_table, write_result

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


TINY = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=32)  # --tiny: checks the script


def make_model(out: Path, device: str, tiny: bool = False) -> Path:
    from animegen.train import TrainConfig, run_train

    if not (out / "checkpoint.pt").is_file():
        res = 16 if tiny else 64
        cfg = TrainConfig(arch="stylegan", conditional=True, resolution=res, batch=4, kimg=0.004, snapshot_kimg=0,
                          progress=False, device=device, **(TINY if tiny else {}))
        run_train(cfg, f"synthetic:?n=256&resolution={res}", out)
    return out


def engine_times(model_dir: Path, device: str, repeats: int) -> dict[str, float]:
    """The generation alone (animegen.studio.engine, as the server runs it): one face, and 16 faces."""
    import torch

    from animegen.studio.engine import Recipe, load_model, render

    model = load_model("m", model_dir, device)
    cls = (model.class_names[0],)

    def timed(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return 1000 * (time.perf_counter() - t0)

    render(model, Recipe("m", 0, cls))  # warm-up (kernels, allocator)
    face = [timed(lambda k=k: render(model, Recipe("m", k, cls, 0.7))) for k in range(repeats)]
    grid = [timed(lambda k=k: [render(model, Recipe("m", 16 * k + i, cls, 0.7)) for i in range(16)])
            for k in range(repeats)]
    return {"one face (engine)": statistics.median(face), "4x4 grid (engine)": statistics.median(grid)}


def post(url: str, body: dict) -> tuple[dict, float]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as res:
        doc = json.loads(res.read())
    return doc, 1000 * (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--engine-only", action="store_true", help="time the generation in-process, no server / browser")
    ap.add_argument("--tiny", action="store_true", help="a tiny 16 px model: checks the script, not the speed")
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / ".work" / "studio"))
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    model = make_model(Path(args.work) / ("stylegan16-tiny" if args.tiny else "stylegan64-full"), args.device,
                       args.tiny)
    if args.engine_only:
        rows = engine_times(model, args.device, args.repeats)
        return report(args, rows, {})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t_start = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "animegen.cli", "studio", str(model), "--port", str(port),
                               "--device", args.device], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        first_grid_ms = page_ms = ready_ms = None
        chromium = shutil.which("chromium")
        if chromium:
            from playwright.sync_api import sync_playwright

            with sync_playwright() as p:  # the browser starts while the server loads its model
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                page = browser.new_page()
                while True:
                    try:
                        urllib.request.urlopen(base + "/api/models", timeout=1).close()
                        break
                    except OSError:
                        if server.poll() is not None:
                            raise RuntimeError(server.stdout.read()) from None
                        time.sleep(0.02)
                ready_ms = 1000 * (time.perf_counter() - t_start)
                t_page = time.perf_counter()
                page.goto(base + "/")
                page.wait_for_function("document.querySelectorAll('#grid img').length === 16", timeout=120_000)
                page_ms = 1000 * (time.perf_counter() - t_page)
                first_grid_ms = 1000 * (time.perf_counter() - t_start)
                browser.close()
        models = json.loads(urllib.request.urlopen(base + "/api/models", timeout=10).read())
        cls = [models[0]["classes"][0]]
        face, grid, grid_rt = [], [], []
        for k in range(args.repeats):
            _, ms = post(base + "/api/face", {"model": models[0]["name"], "seed": 100 + k, "classes": cls})
            face.append(ms)
            doc, ms = post(base + "/api/grid", {"model": models[0]["name"], "seed": 1000 + 16 * k, "n": 16,
                                                "classes": cls, "psi": 0.7})
            grid.append(doc["server_ms"])
            grid_rt.append(ms)
    finally:
        server.terminate()
        server.wait(timeout=30)
    rows = {"one face (POST /api/face, round trip)": statistics.median(face),
            "4x4 grid (server time)": statistics.median(grid),
            "4x4 grid (round trip)": statistics.median(grid_rt)}
    if first_grid_ms is not None:
        rows |= {"server start -> API ready": ready_ms, "page load -> first grid": page_ms,
                 "server start -> first grid in the page": first_grid_ms}
    return report(args, rows, {"face_ms": [round(x, 1) for x in face], "grid_server_ms": grid,
                               "grid_round_trip_ms": [round(x, 1) for x in grid_rt]})


def report(args, rows: dict[str, float], extra: dict) -> int:
    print_table(["what", "ms (median)" if args.repeats > 1 else "ms"], [[k, f"{v:.0f}"] for k, v in rows.items()])
    doc = {"benchmark": "studio_latency", "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "device": args.device,
           "model": ("tiny 16 px conditional StyleGAN" if args.tiny else
                     "conditional StyleGAN, 64 px, full width (TrainConfig defaults), 120 synthetic pair classes"),
           "mode": "engine" if args.engine_only else "http + browser", "repeats": args.repeats,
           "figures_ms": {k: round(v, 1) for k, v in rows.items()}, **extra,
           "targets_ms": {"one face": 100, "4x4 grid": 1000, "first grid after start": 2000, "gpu 16 faces": 50},
           "environment": environment(args.device)}
    write_result(args.out, f"studio_latency-{args.device}-{dt.date.today():%Y-%m-%d}"
                           f"{'-engine' if args.engine_only else ''}{'-tiny' if args.tiny else ''}.json", doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
