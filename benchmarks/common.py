"""What every benchmark shares: the paths, the environment record, the table print and the result file.

Each script starts with ``from common import ...``: the script's own folder is on sys.path when it runs as
``python benchmarks/NAME.py``, and importing this module puts the checkout's src/ there too when animegen is not
installed.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLDS = ROOT.parent / "shared" / "datasets" / "mlds-anime-faces-64.zip"
RESULTS = ROOT / "benchmarks" / "results"

try:
    import animegen  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))


def _git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _cpu_info() -> dict:
    info = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["model"] = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            info["flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
            break
    return info


def environment(device: str) -> dict:
    import torch

    import animegen

    env = {
        "device_type": device,
        "cpu": _cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "animegen": animegen.__version__,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    else:
        env["device_name"] = env["cpu"]["model"]
    return env


def print_table(head: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns under a header and a rule."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)), flush=True)


def write_result(out_dir: str | os.PathLike, name: str, doc: dict) -> Path:
    """``doc`` as ``out_dir/name`` (pretty JSON); prints and returns the path."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return path
