"""Image files: generator output in [-1, 1] or uint8 arrays as PNG files, grids and looping GIFs (written
atomically)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from animegen.utils import atomic_replace


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (C = 3, or 1 for grayscale)."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def grid_array(images: torch.Tensor | np.ndarray, ncol: int | None = None, pad: int = 2,
               pad_value: int = 255) -> np.ndarray:
    """Tile images ([N,C,H,W] in [-1,1] or uint8 [N,H,W,C]) row by row into one uint8 array."""
    arr = to_uint8(images) if isinstance(images, torch.Tensor) else np.asarray(images)
    n, h, w, c = arr.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    out = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y:y + h, x:x + w] = arr[i]
    return out


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def save_grid(images, path: str | Path, ncol: int | None = None, pad: int = 2) -> Path:
    """Save a grid PNG; written to a temp name first so a reader never sees half a file."""
    path = Path(path)
    picture = _pil(grid_array(images, ncol, pad))
    atomic_replace(path, lambda f: picture.save(f, format="PNG"))
    return path


def save_gif(frames: Sequence[np.ndarray], path: str | Path, fps: float = 12.0) -> Path:
    """A looping GIF from uint8 frames [H, W, C]."""
    path = Path(path)
    pil = [_pil(np.asarray(f)) for f in frames]
    atomic_replace(path, lambda f: pil[0].save(f, format="GIF", save_all=True, append_images=pil[1:],
                                               duration=int(round(1000 / fps)), loop=0, optimize=False))
    return path


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "img", start: int = 0) -> list[Path]:
    """One PNG per image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images), start=start):
        p = folder / f"{prefix}{i:06d}.png"
        _pil(arr).save(p)
        paths.append(p)
    return paths
