"""Which images FID scores, and their identity for the statistics cache: a packed Dataset (identified by its
manifest's content hash), an ImageSet, or an image folder read as a set of same-sized images (its most common size,
see :func:`folder_image_size`), each other source identified by a hash of its pixels."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animegen.data.dataset import ImageSet, open_dataset


@dataclass
class FidImages:
    """Images to measure and the facts that identify them for the cache."""

    images: np.ndarray  # uint8 [N, H, W, C], possibly memory-mapped
    content: str  # "sha256:<manifest content hash>" or "array:<sha256 of the pixels>"
    name: str
    split_of: list[str] | None  # per-image split names, when known


def open_fid_images(data: str | os.PathLike | ImageSet | FidImages) -> FidImages:
    """The images of ``data`` with their cache identity: a packed Dataset is identified by its manifest's content
    hash (also when handed over as the ImageSet that ``open_dataset`` made of it), anything else by a hash of
    its pixels. A FidImages is returned as it is (open once, then measure and record it)."""
    if isinstance(data, FidImages):
        return data
    if isinstance(data, ImageSet):
        packed = _packed_dir(data.images)
        if packed is not None:
            return _packed_source(packed, data.images, data.source)
        splits = [m.get("split") for m in data.meta] if data.meta and all("split" in m for m in data.meta) else None
        return FidImages(data.images, "array:" + _array_hash(data.images), data.source, splits)
    uri = str(data)
    path = Path(uri.removeprefix("file://"))
    if (path / "images.npy").is_file() and (path / "manifest.json").is_file():
        return _packed_source(path, open_dataset(uri).images, uri)
    if not path.is_dir():
        return open_fid_images(open_dataset(uri))
    size, keep = folder_image_size(path)
    imageset = open_dataset(uri, min(size))
    rows = [i for i, m in enumerate(imageset.meta or []) if m.get("source") in keep]
    if len(rows) < len(imageset):
        imageset = ImageSet(imageset.images[rows], None if imageset.labels is None else imageset.labels[rows],
                            imageset.class_names, imageset.source, [imageset.meta[i] for i in rows])
    return open_fid_images(imageset)


def folder_image_size(root: Path) -> tuple[tuple[int, int], set[str]]:
    """The image size a folder is scored at, and the files (relative POSIX paths) of that size.

    FID compares sets of same-sized images, so a folder is scored at its most common image size (width x height)
    and files of any other size are left out with a warning naming them: the output folder of ``animegen sample``
    scores its samples, not ``grid.png``. When no size holds more than half of the images the folder has no
    clear size and it is refused (ValueError) rather than guessed at."""
    from collections import Counter

    from PIL import Image

    from animegen.data.dataset import IMAGE_SUFFIXES

    sizes: dict[str, tuple[int, int]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            try:
                with Image.open(p) as im:
                    sizes[p.relative_to(root).as_posix()] = im.size
            except OSError:
                continue  # open_dataset warns about unreadable files itself
    if not sizes:
        raise ValueError(f"no images found in {str(root)!r}")
    counts = sorted(Counter(sizes.values()).items(), key=lambda kv: (-kv[1], kv[0]))  # ties: the smaller size
    size, n = counts[0]
    if 2 * n <= len(sizes):
        listed = ", ".join(f"{c} of {w}x{h} px" for (w, h), c in counts[:5])
        raise ValueError(f"{root}: images of mixed sizes ({listed}{', ...' if len(counts) > 5 else ''}) and none "
                         "holds more than half of them; FID scores a set of same-sized images: keep one size per "
                         "folder (or resize them) and score each folder on its own")
    keep = {f for f, s in sizes.items() if s == size}
    if len(keep) < len(sizes):
        odd = sorted(f"{f} ({s[0]}x{s[1]})" for f, s in sizes.items() if s != size)
        warnings.warn(f"{root}: scoring the {n} images of {size[0]}x{size[1]} px, its most common size; skipping "
                      f"{len(odd)} of another size: {', '.join(odd[:5])}{', ...' if len(odd) > 5 else ''}",
                      stacklevel=3)
    return size, keep


def _packed_dir(images: np.ndarray) -> Path | None:
    """The Dataset directory whose whole images.npy ``images`` is (a memory map of it), else None."""
    name = getattr(images, "filename", None)
    if not isinstance(images, np.memmap) or not name or Path(name).name != "images.npy":
        return None
    folder = Path(name).parent
    try:
        count = json.loads((folder / "manifest.json").read_text()).get("count")
    except (OSError, ValueError):
        return None
    return folder if count == len(images) else None


def _packed_source(folder: Path, images: np.ndarray, name: str) -> FidImages:
    manifest = json.loads((folder / "manifest.json").read_text())
    splits = None
    if (folder / "index.jsonl").is_file():
        rows = [json.loads(line) for line in (folder / "index.jsonl").read_text().splitlines() if line.strip()]
        if len(rows) == len(images) and all("split" in r for r in rows):
            splits = [r["split"] for r in rows]
    content = manifest.get("content_hash")
    return FidImages(images, f"sha256:{content}" if content else "array:" + _array_hash(images), name, splits)


def _array_hash(images: np.ndarray) -> str:
    digest = hashlib.sha256(repr((images.shape, str(images.dtype))).encode())
    for i in range(0, len(images), 1024):
        digest.update(np.ascontiguousarray(images[i:i + 1024]).data)
    return digest.hexdigest()
