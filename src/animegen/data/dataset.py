"""In-memory image sets, opening them from a URI, and writing the packed Dataset artifact."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np
from PIL import Image

from animegen.data import synthetic
from animegen.utils import atomic_replace, atomic_write_text, sha256_file, write_json

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".gz", ".tgz", ".xz", ".bz2")
DEFAULT_RESOLUTION = 64
SYNTHETIC_PARAMS = ("n", "seed", "resolution", "hair", "eyes", "labels")
LABEL_MODES = ("pair", "multi_hot", "hair", "eyes", "none")
SUPPORTED = (
    "supported now: 'synthetic:[?n=&seed=&resolution=&hair=&eyes=&labels=]', "
    "a packed dataset directory (images.npy + manifest.json), or a folder of image files "
    "(optionally as file://PATH)"
)


@dataclass
class ImageSet:
    """Images plus optional labels: none, int64 class ids [N], or float32 multi-hot rows [N,K]."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]
    source: str
    meta: list[dict] | None = None  # per-image facts (e.g. synthetic colours, source file) for index.jsonl

    def __post_init__(self) -> None:
        n, h, w, c = self.images.shape
        assert self.images.dtype == np.uint8 and h == w and c in (1, 3), (self.images.dtype, (n, h, w, c))
        if self.labels is None:
            assert not self.class_names, "unlabelled sets have no class names"
        else:
            assert len(self.labels) == n and self.labels.ndim in (1, 2), self.labels.shape
            assert self.labels.ndim == 1 or self.labels.shape[1] == len(self.class_names)
        assert self.meta is None or len(self.meta) == n

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        return self.images.shape[1]

    @property
    def label_kind(self) -> str:
        """'none', 'class' (ids) or 'multi_hot'."""
        if self.labels is None:
            return "none"
        return "class" if self.labels.ndim == 1 else "multi_hot"

    def conditions(self) -> np.ndarray | None:
        """Float32 [N,K] condition rows: one-hot from class ids, or the multi-hot rows."""
        if self.labels is None:
            return None
        if self.labels.ndim == 2:
            return self.labels.astype(np.float32)
        return np.eye(self.num_classes, dtype=np.float32)[self.labels]

    def subset(self, idx: np.ndarray | list[int] | slice) -> ImageSet:
        keep = np.arange(len(self))[idx]
        return ImageSet(
            images=self.images[keep],
            labels=None if self.labels is None else self.labels[keep],
            class_names=list(self.class_names),
            source=self.source,
            meta=None if self.meta is None else [self.meta[i] for i in keep],
        )


def open_dataset(uri: str, resolution: int | None = None) -> ImageSet:
    """Open a dataset URI.

    - ``synthetic:[?n=&seed=&resolution=&hair=a,b&eyes=c,d&labels=pair|multi_hot|hair|eyes|none]``;
      the ``resolution`` argument overrides the query's and the faces are drawn at that size.
    - a packed Dataset directory: valid once manifest.json exists; ``resolution`` must match it.
    - a folder of images, searched recursively; each is centre-cropped and resized to ``resolution``
      (default 64). First-level subfolders become classes when every image sits under one.

    A ``file://`` prefix is stripped; URLs and archives are refused with a pointer to ``animegen ingest``.
    """
    if uri.startswith("synthetic:"):
        result = open_synthetic(uri, resolution)
    else:
        path = Path(uri.removeprefix("file://"))
        if (path / "images.npy").is_file():
            result = _open_packed(path, uri, resolution)
        elif path.is_dir():
            result = _open_folder(path, uri, resolution)
        elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", uri) or path.suffix.lower() in ARCHIVE_SUFFIXES:
            raise ValueError(
                f"cannot open {uri!r} directly: URLs (http/https, s3://), kaggle: and archives (zip/tar) "
                f"are read by the ingest stage: `animegen ingest {uri} --out DIR`, then open DIR; {SUPPORTED}"
            )
        else:
            raise ValueError(f"{uri!r}: no such directory; {SUPPORTED}")
    if len(result) == 0:
        raise ValueError(f"no images found in {uri!r}")
    return result


def open_synthetic(uri: str, resolution: int | None) -> ImageSet:
    params = dict(parse_qsl(uri.removeprefix("synthetic:").lstrip("?"), keep_blank_values=True))
    unknown = sorted(set(params) - set(SYNTHETIC_PARAMS))
    if unknown:
        raise ValueError(
            f"unknown synthetic parameter(s) {unknown} in {uri!r}; valid: {', '.join(SYNTHETIC_PARAMS)}"
        )
    mode = params.get("labels", "pair")
    if mode not in LABEL_MODES:
        raise ValueError(f"labels={mode!r} in {uri!r}; valid: {', '.join(LABEL_MODES)}")
    try:
        n, seed = int(params.get("n", 2048)), int(params.get("seed", 0))
        res = resolution if resolution is not None else int(params.get("resolution", DEFAULT_RESOLUTION))
    except ValueError as e:
        raise ValueError(f"bad integer parameter in {uri!r}: {e}") from None

    def names(key: str) -> list[str] | None:
        return params[key].split(",") if key in params else None

    images, h, e, hair, eyes = synthetic.generate(n, seed, res, names("hair"), names("eyes"))
    hair_cls, eye_cls = [f"{c} hair" for c in hair], [f"{c} eyes" for c in eyes]
    labels: np.ndarray | None
    if mode == "pair":
        labels, class_names = h * len(eyes) + e, [f"{a} {b}" for a in hair_cls for b in eye_cls]
    elif mode == "multi_hot":
        labels = np.zeros((n, len(hair) + len(eyes)), np.float32)
        labels[np.arange(n), h] = 1
        labels[np.arange(n), len(hair) + e] = 1
        class_names = hair_cls + eye_cls
    elif mode == "hair":
        labels, class_names = h, hair_cls
    elif mode == "eyes":
        labels, class_names = e, eye_cls
    else:
        labels, class_names = None, []
    meta = [{"hair": hair[a], "eye": eyes[b]} for a, b in zip(h, e)]
    return ImageSet(images, labels, class_names, uri, meta)


def _open_packed(path: Path, uri: str, resolution: int | None) -> ImageSet:
    packed = read_packed(path, uri)
    if resolution is not None and resolution != packed.images.shape[1]:
        raise ValueError(
            f"{uri!r} is packed at {packed.images.shape[1]}px, not {resolution}px; "
            f"re-ingest it at resolution {resolution}"
        )
    names = packed.classes["names"] if packed.classes is not None else []
    return ImageSet(packed.images, packed.labels, names, uri)


def _open_folder(root: Path, uri: str, resolution: int | None) -> ImageSet:
    res = resolution if resolution is not None else DEFAULT_RESOLUTION
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    rel = [p.relative_to(root) for p in files]
    # ImageFolder layout: every image under a first-level subfolder, at least two of them.
    classes = sorted({r.parts[0] for r in rel}) if all(len(r.parts) > 1 for r in rel) else []
    if len(classes) < 2:
        classes = []
    def load(path: Path) -> np.ndarray | Exception:
        try:
            return _load_image(path, res)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return e

    images, labels, meta = [], [], []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        loaded = list(pool.map(load, files))
    for path, r, image in zip(files, rel, loaded):
        if isinstance(image, Exception):
            warnings.warn(f"skipping {path}: {type(image).__name__}: {image}", stacklevel=3)
            continue
        images.append(image)
        meta.append({"source": r.as_posix()})
        if classes:
            labels.append(classes.index(r.parts[0]))
    stacked = np.stack(images) if images else np.empty((0, res, res, 3), np.uint8)
    return ImageSet(stacked, np.array(labels, np.int64) if classes else None, classes, uri, meta)


def _load_image(path: Path, resolution: int) -> np.ndarray:
    """RGB uint8 [res,res,3]: transparency composited on white, centre-cropped to square, resized."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        im = im.convert("RGB")
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != resolution:
        im = im.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(im)


# ---------------------------------------------------------------------------------- the Dataset artifact
# The one reader and writer of the packed Dataset directory (DESIGN.md): images.npy, index.jsonl, manifest.json
# (written last: its presence marks a complete dataset), and for labelled sets labels.npy and classes.json.
# ingest (PackWriter + finish_packed), label, cluster and write_packed all write through these functions.
MANIFEST, IMAGES, INDEX, LABELS, CLASSES = "manifest.json", "images.npy", "index.jsonl", "labels.npy", "classes.json"
COPY_CHUNK = 4096  # images copied per step by write_images


@dataclass
class PackedDataset:
    """A packed Dataset directory as read by :func:`read_packed` (images memory-mapped, never loaded whole)."""

    path: Path
    manifest: dict
    images: np.ndarray  # uint8 [N,H,W,C], memory-mapped
    labels: np.ndarray | None  # labels.npy: int64 class ids [N] or float32 multi-hot rows [N,K]
    classes: dict | None  # classes.json: names, counts and what the labelling stage adds
    rows: list[dict] | None  # index.jsonl, a row per image; None when the directory has no index


def read_packed(path: str | os.PathLike, name: str | None = None) -> PackedDataset:
    """Read the Dataset directory ``path`` (``name``: how errors call it). Refuses an incomplete one (no
    manifest.json) and one whose manifest or index disagree with images.npy."""
    path = Path(path)
    name = name if name is not None else str(path)
    if not (path / MANIFEST).is_file():
        raise ValueError(f"{name!r}: not a complete Dataset (no {MANIFEST}, which is written last: an incomplete "
                         f"dataset, or no dataset at all); run `animegen ingest` (again)")
    manifest = json.loads((path / MANIFEST).read_text())
    images = np.load(path / IMAGES, mmap_mode="r")
    if manifest.get("count", len(images)) != len(images):
        raise ValueError(f"{name!r}: manifest says {manifest['count']} images, {IMAGES} has {len(images)}")
    labels, classes = None, None
    if (path / LABELS).exists():
        labels, classes = np.load(path / LABELS), json.loads((path / CLASSES).read_text())
    rows = read_index(path)
    if rows is not None and len(rows) != len(images):
        raise ValueError(f"{name!r}: {INDEX} has {len(rows)} rows for {len(images)} images; re-run ingest")
    return PackedDataset(path, manifest, images, labels, classes, rows)


def read_index(path: str | os.PathLike) -> list[dict] | None:
    """The rows of ``path``/index.jsonl, or None when there is none."""
    index = Path(path) / INDEX
    if not index.is_file():
        return None
    return [json.loads(line) for line in index.read_text().splitlines() if line.strip()]


def index_rows(imageset: ImageSet) -> list[dict] | None:
    """Per-image index rows: the ImageSet's meta, else the index of the packed directory it was opened from."""
    if imageset.meta is not None:
        return imageset.meta
    path = Path(str(imageset.source).removeprefix("file://"))
    rows = read_index(path) if path.is_dir() else None
    return rows if rows is not None and len(rows) == len(imageset) else None


def begin_packed(out_dir: str | os.PathLike) -> Path:
    """Make ``out_dir`` and mark it incomplete (manifest.json removed first), dropping stale label files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in (MANIFEST, LABELS, CLASSES):
        (out / name).unlink(missing_ok=True)
    return out


def write_images(out_dir: str | os.PathLike, images: np.ndarray, pos: np.ndarray | None = None) -> Path:
    """``images[pos]`` (all when ``pos`` is None) -> ``out_dir``/images.npy, a chunk at a time, so a memory-mapped
    source is never read whole into RAM."""
    pos = np.arange(len(images)) if pos is None else np.asarray(pos)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
              "shape": (len(pos), *images.shape[1:])}

    def write(f) -> None:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, len(pos), COPY_CHUNK):
            f.write(np.ascontiguousarray(images[pos[start:start + COPY_CHUNK]], dtype=np.uint8).tobytes())

    path = Path(out_dir) / IMAGES
    atomic_replace(path, write)
    return path


def write_labels(out_dir: str | os.PathLike, labels: np.ndarray, class_names: list[str], **facts) -> None:
    """labels.npy, and classes.json: ``names``, ``counts`` (images per class) and ``facts`` (what the stage adds)."""
    counts = np.bincount(labels, minlength=len(class_names)) if labels.ndim == 1 else labels.sum(0)
    out = Path(out_dir)
    atomic_replace(out / LABELS, lambda f: np.save(f, labels))
    write_json(out / CLASSES, {"names": list(class_names), "counts": [int(c) for c in counts], **facts})


def write_packed(
    imageset: ImageSet,
    out_dir: str | os.PathLike,
    extra_index: list[dict] | None = None,
    manifest_extra: dict | None = None,
) -> Path:
    """Write ``imageset`` as the Dataset artifact of DESIGN.md to ``out_dir`` and return its path.

    Every file goes through a temporary name; manifest.json is written last, so its presence marks
    a complete dataset (a rewrite first removes the old one).
    """
    out = begin_packed(out_dir)
    n = len(imageset)
    assert extra_index is None or len(extra_index) == n
    write_images(out, imageset.images)
    labels = imageset.labels
    if labels is not None:
        write_labels(out, labels, imageset.class_names)

    def rows() -> Iterator[dict]:
        for i in range(n):
            row: dict = {"id": i, **(imageset.meta[i] if imageset.meta else {})}
            if imageset.label_kind == "class":
                row["label"] = imageset.class_names[labels[i]]
            elif imageset.label_kind == "multi_hot":
                row["labels"] = [c for c, v in zip(imageset.class_names, labels[i]) if v]
            row.update(extra_index[i] if extra_index else {})
            yield row

    manifest = {"num_classes": imageset.num_classes, "label_kind": imageset.label_kind, "source": imageset.source}
    return finish_packed(out, rows(), {**manifest, **(manifest_extra or {})})


def finish_packed(out_dir: str | os.PathLike, rows: Iterable[dict], manifest: dict) -> Path:
    """Complete a Dataset directory whose images.npy (and labels) are in place: write index.jsonl, then
    manifest.json LAST.

    The manifest gets the facts read from images.npy (resolution, channels, count, content_hash = sha256 of
    the file) over ``manifest``'s keys; num_classes and label_kind default to an unlabelled set.
    """
    out = Path(out_dir)
    images = np.load(out / IMAGES, mmap_mode="r")
    atomic_write_text(out / INDEX, "".join(json.dumps(row) + "\n" for row in rows))
    facts = {
        "resolution": images.shape[1],
        "channels": images.shape[3],
        "count": len(images),
        "content_hash": sha256_file(out / IMAGES),
    }
    doc = {**facts, "num_classes": 0, "label_kind": "none", **manifest, **facts}
    write_json(out / MANIFEST, doc)
    return out
