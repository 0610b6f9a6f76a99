"""Small helpers used across stages: file digests, atomic writes, JSON files, device choice, memory figures."""
from __future__ import annotations

import hashlib
import json
import math
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_replace(path: str | Path, write) -> None:
    """Call ``write(binary_file)`` on a temp file beside ``path``, fsync, then rename it over ``path``: readers
    see the old content or the new, never half of it. The file gets the usual 0666 & ~umask mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never half of it."""
    atomic_replace(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    import torch

    atomic_replace(path, lambda f: torch.save(obj, f))


def write_json(path: str | Path, doc: Any) -> None:
    """``doc`` as indented JSON (non-JSON values written with ``str``), atomically, parent folders created."""
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON document in ``path``; ``default`` when the file is missing or is not valid JSON (a half-written or
    foreign file reads as absent, never as a crash)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (missing, NaN, inf, not a number)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def resolve_device(name: str = "auto"):
    """'auto' | 'cpu' | 'cuda' (or 'cuda:N') -> torch.device; cuda without a GPU is a clear error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def peak_memory_bytes(device) -> int:
    """Peak CUDA memory allocated on a CUDA device, else the process's peak resident set size (VmHWM, which,
    unlike ru_maxrss, is not inherited from a parent process across fork/exec), since :func:`reset_peak_memory`."""
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def reset_peak_memory(device) -> None:
    """Start :func:`peak_memory_bytes` afresh, so it measures what follows (one training run of several in a
    process): CUDA's peak statistics, or on Linux the resident set's high-water mark (``/proc/self/clear_refs``,
    value 5). Where neither can be reset the figure stays the process's peak."""
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM on Linux (ru_maxrss can carry a parent's peak over
    fork + exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '-'."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
