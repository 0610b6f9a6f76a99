"""The latent tools: sample, interpolate, style-mix and truncation sweep.

Each takes a generator ``G`` (DCGAN or StyleGAN, e.g. from ``load_generator``), its ``class_names`` ([] when
unconditional) and an ``out_dir``; draws latents from a CPU ``torch.Generator`` seeded with ``seed`` (so the output
is the same on every device and batch size, up to float rounding); renders in batches with constant noise; writes
images plus ``<tool>.json`` (options and files, paths relative to ``out_dir``); returns the written paths.

Truncation is always ``G.mapping(..., truncation_psi=ψ)``: around the tracked w_avg (per class when conditional)
for StyleGAN, around z = 0 for DCGAN.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch import nn

from animegen.image_files import grid_array, save_gif, save_grid, save_images, to_uint8
from animegen.latent.ops import PATH_METHODS, ClassSpec, condition_labels, conditions_for, path
from animegen.models.batchnorm import ensure_recalibrated
from animegen.utils import write_json

NOISE_MODE = "const"
GRID_MAX_COLS = 16       # widest grid a tool writes
GRID_MAX_IMAGES = 256    # most images in one sample grid (the PNG files hold them all)
INTERP_GRID_FRAMES = 10  # frames shown per sequence in interp.png
# Style bands of the style-mixing figure, by the resolution (px) a ws entry drives: 2 entries per resolution.
STYLE_BANDS: dict[str, tuple[int, int | None]] = {"coarse": (4, 8), "middle": (16, 32), "fine": (64, None)}

_Tool = TypeVar("_Tool", bound=Callable[..., Any])


# ---------------------------------------------------------------------------------------------- helpers

def _inference(fn: _Tool) -> _Tool:
    """Run a tool with G in eval mode under no_grad, restoring G's training flag afterwards. A G with BatchNorm
    (DCGAN) samples with recalibrated statistics (models/batchnorm.py): ``load_generator`` already recalibrated
    it; any other G is recalibrated in place once (default settings) before its first tool."""
    @functools.wraps(fn)
    def wrapper(G: nn.Module, *args: Any, **kwargs: Any) -> Any:
        ensure_recalibrated(G)
        was_training = G.training
        G.eval()
        try:
            with torch.no_grad():
                return fn(G, *args, **kwargs)
        finally:
            G.train(was_training)
    return wrapper  # type: ignore[return-value]


def _prepare(G: nn.Module, class_names: list[str], device: str | torch.device, out_dir: str | Path
             ) -> tuple[torch.device, Path]:
    """Check that G, its class names and ``device`` agree; create ``out_dir``."""
    device = torch.device(device)
    if len(class_names) != G.c_dim:
        raise ValueError(f"the generator takes {G.c_dim} classes but {len(class_names)} class names were given "
                         "(pass meta['class_names'] from load_generator)")
    on = next(G.parameters()).device
    if on.type != device.type or (device.index is not None and on.index != device.index):
        raise ValueError(f"G is on {on} but device={str(device)!r}; load it with load_generator(path, device) "
                         f"or pass device={str(on)!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return device, out


def _conditions(G: nn.Module, class_names: list[str], spec: ClassSpec | None) -> tuple[torch.Tensor | None, list[str]]:
    """Condition rows and their labels for a class spec (every class when None); (None, []) if unconditional."""
    if not G.c_dim and spec is None:
        return None, []
    spec = "all" if spec is None else spec
    return conditions_for(class_names, spec), condition_labels(class_names, spec)


def _cycle(G: nn.Module, class_names: list[str], spec: ClassSpec | None, n: int
           ) -> tuple[torch.Tensor | None, list[str]]:
    """Conditions for ``n`` latents: the spec's rows taken in turn (so every class shows when spec is None)."""
    rows, labels = _conditions(G, class_names, spec)
    if rows is None:
        return None, []
    idx = torch.arange(n) % len(rows)
    return rows[idx], [labels[i] for i in idx]


def _latents(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def map_z(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None, truncation_psi: float = 1.0,
          device: str | torch.device = "cpu", batch: int = 64) -> torch.Tensor:
    """ws [N, num_ws, w_dim] (float32, CPU) for z [N, z_dim] and conditions [N, c_dim] (or None), in batches."""
    out = []
    for i in range(0, len(z), batch):
        cb = None if c is None else c[i:i + batch].to(device)
        out.append(G.mapping(z[i:i + batch].to(device), cb, truncation_psi=truncation_psi).float().cpu())
    return torch.cat(out)


def render_ws(G: nn.Module, ws: torch.Tensor, device: str | torch.device = "cpu", batch: int = 64) -> torch.Tensor:
    """Images [N, C, H, W] in [-1, 1] (float32, CPU) for ws [N, num_ws, w_dim], in batches, constant noise."""
    return torch.cat([G.synthesis(ws[i:i + batch].to(device), noise_mode=NOISE_MODE).float().cpu()
                      for i in range(0, len(ws), batch)])


def safe_name(name: str) -> str:
    """A class name as a file/folder name: letters, digits and ._+- kept, anything else '_'."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "class"


def _unique_names(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        base = safe_name(label)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return out


def _grid_cols(n: int) -> int:
    return max(1, min(GRID_MAX_COLS, math.ceil(math.sqrt(n))))


def _write_json(G: nn.Module, out: Path, tool: str, options: dict[str, Any], files: dict[str, Any]) -> Path:
    """``<tool>.json``: what was asked for and what was written (paths relative to ``out``)."""
    def rel(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v.relative_to(out))
        if isinstance(v, dict):
            return {k: rel(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [rel(x) for x in v]
        return v
    doc = {"tool": tool, "arch": G.arch, "resolution": G.resolution, "noise_mode": NOISE_MODE,
           "options": options, "files": rel(files)}
    target = out / f"{tool}.json"
    write_json(target, doc)
    return target


def style_ranges(num_ws: int) -> dict[str, tuple[int, int] | None]:
    """ws index ranges [lo, hi) of the coarse (4-8 px), middle (16-32 px) and fine (64 px+) styles; None when a
    band has no layers at this resolution. ws entry i drives resolution 4 * 2 ** (i // 2)."""
    res = [4 * 2 ** (i // 2) for i in range(num_ws)]
    out: dict[str, tuple[int, int] | None] = {}
    for name, (lo, hi) in STYLE_BANDS.items():
        idx = [i for i, r in enumerate(res) if r >= lo and (hi is None or r <= hi)]
        out[name] = (idx[0], idx[-1] + 1) if idx else None
    return out


# ---------------------------------------------------------------------------------------------- tools

@_inference
def sample(G: nn.Module, class_names: list[str], out_dir: str | Path, n: int = 64, truncation_psi: float = 1.0,
           classes: ClassSpec | None = None, seed: int = 0, device: str | torch.device = "cpu",
           batch: int = 64) -> dict[str, Any]:
    """``n`` images (per class when conditional) as PNGs under images/ and a grid.png.

    Conditional: ``classes`` is a class spec (see ``conditions_for``; None = every class); images go to
    images/<class>/, grid.png has one row per class (its first 16 images) and grid_<class>.png shows up to
    256 of each class.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    device, out = _prepare(G, class_names, device, out_dir)
    rows, labels = _conditions(G, class_names, classes)
    groups = [(None, None, out / "images")] if rows is None else [
        (label, row, out / "images" / folder) for label, row, folder in zip(labels, rows, _unique_names(labels))]
    gen = torch.Generator().manual_seed(seed)
    files: dict[str, Any] = {"grid": out / "grid.png", "images": [], "class_grids": {}}
    shown = []
    for label, row, folder in groups:
        z = torch.randn(n, G.z_dim, generator=gen)
        kept = []
        for i in range(0, n, batch):  # streamed: only the grid images stay in memory
            zb = z[i:i + batch]
            cb = None if row is None else row.expand(len(zb), -1)
            imgs = render_ws(G, map_z(G, zb, cb, truncation_psi, device, batch), device, batch)
            files["images"] += save_images(imgs, folder, start=i)
            kept.append(to_uint8(imgs[:max(0, GRID_MAX_IMAGES - i)]))
        kept_all = np.concatenate(kept)
        if label is None:
            save_grid(kept_all, files["grid"], ncol=_grid_cols(len(kept_all)))
        else:
            grid = save_grid(kept_all, out / f"grid_{folder.name}.png", ncol=_grid_cols(len(kept_all)))
            files["class_grids"][label] = grid
            shown.append(kept_all[:GRID_MAX_COLS])
    if shown:
        save_grid(np.concatenate(shown), files["grid"], ncol=min(n, GRID_MAX_COLS))
    options = dict(n=n, truncation_psi=truncation_psi, classes=labels, seed=seed)
    files["json"] = _write_json(G, out, "sample", options, files)
    return files


@_inference
def interpolate(G: nn.Module, class_names: list[str], out_dir: str | Path, method: str = "slerp", space: str = "z",
                n_keys: int = 4, steps: int = 16, truncation_psi: float = 1.0, class_name: ClassSpec | None = None,
                seed: int = 0, fps: float = 12, rows: int = 4, device: str | torch.device = "cpu",
                batch: int = 64) -> dict[str, Any]:
    """``rows`` closed interpolation loops: interp.png (one row per loop, up to 10 evenly spaced frames) and
    interp.gif (each frame the loops side by side; it loops seamlessly).

    ``method``: 'linear' or 'slerp' through ``n_keys`` random latents, ``steps`` frames per segment; 'circular'
    = a cos θ + b sin θ for two latents, ``steps`` frames per quarter turn (``n_keys`` unused).
    ``space``: 'z', or 'w' (StyleGAN only) where the mapped w is interpolated and broadcast to every layer.
    In w, paths are taken relative to the truncation centre (w_avg, per class): the same as plain lerp for
    'linear' (what the StyleGAN papers use in w), and for 'slerp'/'circular' a rotation around w_avg.
    Conditional models keep one class per loop: ``class_name`` (a class spec), else the classes in turn.
    """
    if method not in PATH_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(PATH_METHODS)}")
    if space not in ("z", "w"):
        raise ValueError(f"unknown space {space!r}; choose 'z' or 'w'")
    if space == "w" and G.arch == "dcgan":
        raise ValueError("DCGAN has no w space; use space='z'")
    n_points = 2 if method == "circular" else n_keys
    if n_points < 2 or steps < 1 or rows < 1:
        raise ValueError(f"need n_keys >= 2, steps >= 1, rows >= 1 (got {n_keys}, {steps}, {rows})")
    device, out = _prepare(G, class_names, device, out_dir)
    z_keys = _latents(seed, rows, n_points, G.z_dim)
    c, labels = _cycle(G, class_names, class_name, rows)
    sequences = []
    for r in range(rows):
        c_row = None if c is None else c[r:r + 1]
        if space == "z":
            zs = path(z_keys[r], steps, method, closed=True)
            sequences.append(map_z(G, zs, None if c_row is None else c_row.expand(len(zs), -1),
                                   truncation_psi, device, batch))
        else:
            keys = map_z(G, z_keys[r], None if c_row is None else c_row.expand(n_points, -1), truncation_psi,
                         device, batch)[:, 0]
            center = G.truncation_center(None if c_row is None else c_row.to(device), 1).float().cpu()
            w = path(keys - center, steps, method, closed=True) + center
            sequences.append(w[:, None].expand(-1, G.num_ws, -1))
    ws = torch.stack(sequences)  # [rows, T, num_ws, w_dim]
    n_frames = ws.shape[1]
    frames = to_uint8(render_ws(G, ws.flatten(0, 1), device, batch))
    frames = frames.reshape(rows, n_frames, *frames.shape[1:])  # [rows, T, H, W, C]
    cols = torch.linspace(0, n_frames - 1, min(INTERP_GRID_FRAMES, n_frames)).round().long().unique().tolist()
    files: dict[str, Any] = {
        "grid": save_grid(frames[:, cols].reshape(-1, *frames.shape[2:]), out / "interp.png", ncol=len(cols)),
        "gif": save_gif([grid_array(frames[:, t], ncol=rows) for t in range(n_frames)], out / "interp.gif", fps),
    }
    options = dict(method=method, space=space, n_keys=n_points, steps=steps, truncation_psi=truncation_psi,
                   classes=labels, seed=seed, fps=fps, rows=rows, frames=n_frames, grid_frames=cols)
    files["json"] = _write_json(G, out, "interpolate", options, files)
    return files


@_inference
def mix(G: nn.Module, class_names: list[str], out_dir: str | Path, n_rows: int = 4, n_cols: int = 4,
        truncation_psi: float = 1.0, class_name: ClassSpec | None = None, seed: int = 0,
        device: str | torch.device = "cpu", batch: int = 64) -> dict[str, Any]:
    """Style-mixing figures (Karras et al. 2019, fig. 3), StyleGAN only: mix_coarse.png, mix_middle.png,
    mix_fine.png. Header row: the column sources; left column: the row sources; cell (r, c): row source r's
    ws with the band's layers taken from column source c. Bands this resolution lacks are skipped (noted in
    mix.json). Conditional: each source takes ``class_name`` (a class spec), else the classes in turn.
    """
    if G.arch == "dcgan":
        raise ValueError("style mixing needs a StyleGAN generator: DCGAN has one latent input, no per-layer styles")
    if n_rows < 1 or n_cols < 1:
        raise ValueError(f"need n_rows, n_cols >= 1 (got {n_rows}, {n_cols})")
    device, out = _prepare(G, class_names, device, out_dir)
    z = _latents(seed, n_rows + n_cols, G.z_dim)
    c_rows, row_labels = _cycle(G, class_names, class_name, n_rows)
    c_cols, col_labels = _cycle(G, class_names, class_name, n_cols)
    c = None if c_rows is None else torch.cat([c_rows, c_cols])
    ws = map_z(G, z, c, truncation_psi, device, batch)
    row_ws, col_ws = ws[:n_rows], ws[n_rows:]
    sources = to_uint8(render_ws(G, ws, device, batch))
    header = np.concatenate([np.full_like(sources[:1], 255), sources[n_rows:]])  # blank top-left cell
    files: dict[str, Any] = {}
    bands: dict[str, Any] = {}
    for band, span in style_ranges(G.num_ws).items():
        if span is None:
            bands[band] = f"skipped: a {G.resolution} px generator has no {band} layers"
            continue
        lo, hi = span
        mixed = row_ws[:, None].repeat(1, n_cols, 1, 1)  # [n_rows, n_cols, num_ws, w_dim]
        mixed[:, :, lo:hi] = col_ws[None, :, lo:hi]
        cells = to_uint8(render_ws(G, mixed.flatten(0, 1), device, batch)).reshape(n_rows, n_cols, *sources.shape[1:])
        body = np.concatenate([np.concatenate([sources[r:r + 1], cells[r]]) for r in range(n_rows)])
        files[band] = save_grid(np.concatenate([header, body]), out / f"mix_{band}.png", ncol=n_cols + 1)
        bands[band] = [lo, hi]
    options = dict(n_rows=n_rows, n_cols=n_cols, truncation_psi=truncation_psi, seed=seed, row_classes=row_labels,
                   col_classes=col_labels, num_ws=G.num_ws, bands=bands)
    files["json"] = _write_json(G, out, "mix", options, files)
    return files


@_inference
def truncate(G: nn.Module, class_names: list[str], out_dir: str | Path,
             psis: tuple[float, ...] | list[float] = (2, 1, 0.6, 0, -0.6, -1, -2), n: int = 8,
             class_name: ClassSpec | None = None, seed: int = 0, device: str | torch.device = "cpu",
             batch: int = 64) -> dict[str, Any]:
    """truncation.png: one column per ψ, one row per latent (the same z across a row). ψ pulls towards w_avg
    (per class when conditional) for StyleGAN, towards z = 0 for DCGAN. Conditional rows take ``class_name``
    (a class spec), else the classes in turn."""
    if n < 1 or not psis:
        raise ValueError(f"need n >= 1 and at least one ψ (got n={n}, psis={list(psis)})")
    device, out = _prepare(G, class_names, device, out_dir)
    z = _latents(seed, n, G.z_dim)
    c, labels = _cycle(G, class_names, class_name, n)
    ws = torch.stack([map_z(G, z, c, float(psi), device, batch) for psi in psis], dim=1)  # [n, P, num_ws, w_dim]
    images = render_ws(G, ws.flatten(0, 1), device, batch)
    files: dict[str, Any] = {"grid": save_grid(images, out / "truncation.png", ncol=len(psis))}
    options = dict(psis=[float(p) for p in psis], n=n, classes=labels, seed=seed)
    files["json"] = _write_json(G, out, "truncate", options, files)
    return files
