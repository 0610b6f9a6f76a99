"""The studio's screenshots in docs/studio/: `animegen studio` on a pipeline run's folder (or any Model folders),
driven in headless chromium through the page's actions: a grid of a class, a kept face with its coarse styles
mixed in from other faces and a loop to a second face, and the comparison of the run's models.

    python docs/studio/make_screenshots.py runs/pipeline/animegen-<timestamp>      # a local run's output
    python docs/studio/make_screenshots.py MODEL_DIR... --prefix real-             # e.g. models trained on MLDS
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--prefix", default="", help="file name prefix of the screenshots")
    ap.add_argument("--class-index", type=int, default=0, help="the class picked in the grid")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "animegen.cli", "studio", *args.sources, "--port", str(port),
                               "--device", "cpu"], env=env)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "api/models", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(base)
            page.wait_for_function("document.querySelectorAll('#grid img').length === 16", timeout=120_000)
            if args.class_index and page.query_selector("#class"):
                n = page.eval_on_selector("#class", "e => e.options.length")
                page.select_option("#class", index=min(args.class_index, n - 1))
                page.wait_for_timeout(300)
                page.wait_for_function("document.querySelectorAll('#grid img').length === 16")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(HERE / f"{args.prefix}generate.png"), clip={"x": 0, "y": 0, "width": 1100,
                                                                                   "height": 420})
            page.click("#grid img:nth-child(2)")
            page.click("#mark-a")
            if not page.is_disabled("#mix-coarse"):
                page.click("#mix-coarse")
                page.wait_for_function("document.querySelectorAll('#variations img').length === 8")
            page.click("#grid img:nth-child(5)")
            page.click("#mark-b")
            page.click("#interpolate")
            page.wait_for_function("document.querySelector('#anim-image')?.naturalWidth > 0", timeout=120_000)
            page.click("#grid img:nth-child(2)")
            page.wait_for_timeout(500)
            page.screenshot(path=str(HERE / f"{args.prefix}vary.png"), full_page=True)
            page.click("#compare")
            page.wait_for_function("document.querySelectorAll('#compare-table tr').length > 0", timeout=120_000)
            page.wait_for_timeout(1000)
            page.query_selector("#compare-table").screenshot(path=str(HERE / f"{args.prefix}compare.png"))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("wrote", ", ".join(f"{args.prefix}{n}.png" for n in ("generate", "vary", "compare")), "in", HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
