"""The ``ingest`` stage: a source URI -> the packed Dataset artifact of DESIGN.md.

``run_ingest(cfg, source, out_dir)`` materialises the source (``animegen.data.sources.materialize``: a folder, an
archive, https, s3, kaggle; ``synthetic:`` is drawn directly), validates every file, drops exact duplicates,
preprocesses (square fit, resize, rgb/grayscale/lineart), packs ``images.npy`` incrementally, assigns the
train / held-out split, optionally grows the train split, copies tag files, and writes ``index.jsonl`` and
finally ``manifest.json``. Every skipped, refused, ignored and duplicate file is listed with its reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import stat
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from animegen.config import Config, opt
from animegen.data.augment import FILLS, Growth, apply_transform, plan_growth
from animegen.data.dataset import finish_packed
from animegen.data.pack import PackWriter
from animegen.data.preprocess import FILTERS, FITS, MODES, PADS, XDoG, channels_for, finish, fit_square
from animegen.data.sources import materialize, redact_uri
from animegen.data.splits import TRAIN, assign_splits
from animegen.data.validate import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, load_image, reason_code
from animegen.utils import atomic_replace, sha256_file

TAG_SUFFIXES = (".csv",)
# Files that are listed as ignored rather than validated as images.
NON_IMAGE_SUFFIXES = (".txt", ".md", ".rst", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".xml", ".html", ".htm",
                      ".pdf", ".py", ".ipynb", ".sh", ".tsv", ".npy", ".npz", ".pt", ".pth", ".pkl")
SYSTEM_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")
# What a previous ingest run leaves in its output directory (removed when overwriting).
OUTPUT_NAMES = ("images.npy", "index.jsonl", "manifest.json", "labels.npy", "classes.json", "tags", ".work")
WORK_DIR = ".work"


@dataclass
class IngestConfig(Config):
    """Settings of one ingest run; round-trips through JSON (``to_dict`` / ``from_dict``). The source is not a
    setting: it is run_ingest's input, like every stage's (``animegen ingest SOURCE``)."""

    sha256: str | None = field(default=None, metadata=opt(
        "expected sha256 of a downloaded or archive source", default_text="not checked", unset=""))
    resolution: int = field(default=64, metadata=opt("output size in pixels"))
    mode: str = field(default="rgb", metadata=opt(
        "rgb, grayscale, or lineart (XDoG manga-like black and white)", choices=MODES))
    channels: int | None = field(default=None, metadata=opt(
        "packed channels, 3 or 1; 3 with grayscale/lineart repeats the grey channel, so every layer of an RGB "
        "model transfers to the set", unset=0,
        default_text="the mode's own: 3 for rgb, 1 for grayscale/lineart"))
    fit: str = field(default="center_crop", metadata=opt("how an image becomes square", choices=FITS))
    pad: str = field(default="white", metadata=opt("pad colour for fit=pad", choices=PADS))
    filter: str = field(default="bilinear", metadata=opt("resize filter (bilinear: the DCGAN paper's)",
                                                         choices=FILTERS))
    min_side: int = field(default=DEFAULT_MIN_SIDE, metadata=opt("skip images whose shorter side is below this"))
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata=opt(
        "skip images with more pixels (decompression-bomb guard)"))
    dedupe: bool = field(default=True, metadata=opt(
        "drop exact duplicates (sha256 of the file bytes); counted either way"))
    holdout: float = field(default=0.1, metadata=opt("fraction of images in the held-out split"))
    split_block: int = field(default=32, metadata=opt("split by blocks of this many consecutive ids"))
    split_group: str | None = field(default=None, metadata=opt(
        "split by this index field instead (whole groups on one side)", unset=""))
    seed: int = field(default=0, metadata=opt("seed of the split and of the growth"))
    grow_to: int | None = field(default=None, metadata=opt(
        "grow a small set's train split to this many images (rotation, zoom, crops)", default_text="no growth",
        unset=0))
    grow_max_angle: float = field(default=10.0, metadata=opt("growth: largest rotation in degrees"))
    grow_max_zoom: float = field(default=1.2, metadata=opt("growth: largest zoom factor"))
    grow_fill: str = field(default="reflect", metadata=opt("growth: how uncovered corners are filled",
                                                           choices=FILLS))
    lineart_sigma: float = field(default=XDoG.sigma, metadata=opt("XDoG: Gaussian sigma"))
    lineart_k: float = field(default=XDoG.k, metadata=opt("XDoG: ratio of the two Gaussians' sigmas"))
    lineart_p: float = field(default=XDoG.p, metadata=opt("XDoG: edge sharpening strength"))
    lineart_epsilon: float = field(default=XDoG.epsilon, metadata=opt("XDoG: threshold"))
    lineart_phi: float = field(default=XDoG.phi, metadata=opt("XDoG: steepness of the soft threshold"))
    limit: int | None = field(default=None, metadata=opt(
        "stop after this many candidate files (in sorted path order)", default_text="all", unset=0))
    cache_dir: str | None = field(default=None, metadata=opt(
        "download cache for remote sources", default_text="$ANIMEGEN_CACHE or ~/.cache/animegen", unset=""))
    max_total_bytes: int | None = field(default=None, metadata=opt(
        "archive extraction limit on total bytes", default_text="the extractor's", unset=0))
    max_entries: int | None = field(default=None, metadata=opt(
        "archive extraction limit on entries", default_text="the extractor's", unset=0))

    @classmethod
    def from_dict(cls, values: dict) -> IngestConfig:
        if "source" in values:
            raise ValueError(f"ingest: 'source' ({values['source']!r}) is no longer an ingest option but the stage's "
                             "input: remove it from the config and give it as the argument (`animegen ingest SOURCE "
                             "--out DIR`, run_ingest(cfg, source, out_dir), the component's source parameter)")
        return super().from_dict(values)

    def validate(self) -> None:
        if self.channels is not None and self.channels not in (1, 3):
            raise ValueError(f"ingest channels={self.channels}: must be 1 or 3 (or unset: the mode's own)")
        if self.channels == 1 and self.mode == "rgb":
            raise ValueError("ingest channels=1 with mode rgb: use mode grayscale (or lineart) for one channel")
        if self.resolution < 4:
            raise ValueError(f"ingest resolution={self.resolution}: must be >= 4 (e.g. 64, 128, 256)")
        if self.min_side < 1 or self.max_pixels < 1:
            raise ValueError(f"ingest min_side={self.min_side}, max_pixels={self.max_pixels}: must be >= 1")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"ingest holdout={self.holdout}: the held-out fraction must be in [0, 1)")
        if self.split_block < 1:
            raise ValueError(f"ingest split_block={self.split_block}: must be >= 1")
        for name in ("grow_to", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"ingest {name}={value}: must be >= 1 (or unset)")
        if self.grow_fill in FILLS:
            self.growth()  # validates the growth ranges

    def xdog(self) -> XDoG:
        return XDoG(self.lineart_sigma, self.lineart_k, self.lineart_p, self.lineart_epsilon, self.lineart_phi)

    def growth(self) -> Growth:
        return Growth(self.grow_max_angle, self.grow_max_zoom, self.grow_fill)


IN_MEMORY_BYTES = 64 << 20  # files up to this size are read once for both hashing and decoding


@dataclass
class _Item:
    """One candidate image: its name, and how to hash and decode it (``prepare`` returns the digest and a
    token that ``decode`` takes, so a file is read once)."""

    rel: str  # path relative to the source root, or synthetic/<i>
    prepare: Callable[[], tuple[str, object]]
    decode: Callable[[object], tuple[Image.Image, None] | tuple[None, str]]
    extra: dict  # index fields carried along (synthetic tags)


def run_ingest(cfg: IngestConfig, source: str, out_dir: str | os.PathLike, *, overwrite: bool = False,
               progress: bool = False) -> Path:
    """Ingest ``source`` (a folder, archive, https://, s3://, kaggle:OWNER/DATASET or synthetic:?...) into the
    Dataset directory ``out_dir`` and return its path.

    An ``out_dir`` holding a complete dataset (manifest.json) is refused unless ``overwrite``; the old
    manifest is removed first, so a run killed at any point leaves no manifest behind.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    _prepare_out(out, overwrite)
    work = out / WORK_DIR
    timings: dict[str, float] = {}
    try:
        facts: dict = {}
        if source.startswith("synthetic:"):
            items, skipped, ignored, tag_sources = _synthetic_items(cfg, source), [], [], []
        else:
            limits = {k: getattr(cfg, k) for k in ("max_total_bytes", "max_entries") if getattr(cfg, k) is not None}
            src = materialize(source, work, sha256=cfg.sha256, cache_dir=cfg.cache_dir, **limits)
            facts = {"refused": list(src.refused), "source_sha256": src.content_sha256, "source_cached": src.cached}
            items, skipped, ignored, tag_sources = _scan(Path(src.root), cfg, exclude=out)
        files_seen = len(items)
        if cfg.limit is not None:
            items = items[: cfg.limit]
        timings["source_s"] = time.perf_counter() - t0
        rows, counts = _pack(items, skipped, cfg, out, progress, redact_uri(source))
        tag_files = _copy_tags(tag_sources, out)
        timings["pack_s"] = time.perf_counter() - t0 - timings["source_s"]
    finally:
        t1 = time.perf_counter()
        shutil.rmtree(work, ignore_errors=True)  # extracted files: slow where unlink discards blocks
        timings["cleanup_s"] = time.perf_counter() - t1

    refused = facts.pop("refused", [])
    manifest = {
        "source": redact_uri(source),
        "mode": cfg.mode,
        "fit": cfg.fit,
        "filter": cfg.filter,
        **facts,
        "candidates": files_seen,
        "limit": cfg.limit,
        "kept": counts["kept"],
        "grown": counts["grown"],
        "duplicates_count": len(counts["duplicates"]),
        "duplicates_dropped": cfg.dedupe,
        "skipped_count": len(skipped),
        "skipped_by_reason": dict(sorted(Counter(reason_code(s["reason"]) for s in skipped).items())),
        "refused_count": len(refused),
        "refused_by_reason": dict(sorted(Counter(_short(r["reason"]) for r in refused).items())),
        "ignored_count": len(ignored),
        "splits": counts["splits"],
        "split": {"holdout": cfg.holdout, "block": cfg.split_block, "group": cfg.split_group, "seed": cfg.seed},
        "tag_files": tag_files,
        "skipped": skipped,
        "refused": refused,
        "ignored": ignored,
        "duplicates": counts["duplicates"],
        "config": cfg.to_dict(),
        "animegen_version": _version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - t0, 2),  # up to here: the index and manifest writes follow
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    finish_packed(out, rows, manifest)
    print(_summary(manifest, cfg, out))
    return out


def _prepare_out(out: Path, overwrite: bool) -> None:
    if (out / "manifest.json").exists() and not overwrite:
        raise FileExistsError(f"{out} already holds a complete dataset (manifest.json); pass overwrite=True "
                              "(--overwrite) to replace it, or choose another output directory")
    if out.exists():
        if not out.is_dir():
            raise NotADirectoryError(f"output {out} exists and is not a directory")
        foreign = sorted(p.name for p in out.iterdir()
                         if p.name not in OUTPUT_NAMES and not p.name.endswith(".tmp"))
        if foreign and not overwrite:
            raise FileExistsError(f"output {out} is not empty and not an ingest output ({', '.join(foreign[:5])}); "
                                  "choose an empty or new directory, or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # first: from here on the directory is incomplete
    for p in out.iterdir():
        if p.name not in OUTPUT_NAMES and not p.name.endswith(".tmp"):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _natural_key(rel: str) -> tuple:
    """Sort key: digit runs compare as numbers (images/2.jpg before images/10.jpg), then the raw string."""
    return tuple(int(t) if i % 2 else t for i, t in enumerate(re.split(r"(\d+)", rel))), rel


def _scan(root: Path, cfg: IngestConfig, exclude: Path | None = None
          ) -> tuple[list[_Item], list[dict], list[dict], list[tuple[str, Path]]]:
    """Walk ``root`` (symlinked directories are not entered; symlinked files only when they stay inside it;
    ``exclude``, the output directory, is skipped if it lies inside); return (image candidates in natural
    path order, skipped non-files, ignored files, tag files)."""
    root_real = os.path.realpath(root)
    excluded = os.path.realpath(exclude) if exclude is not None else None
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(dirpath, d)) != excluded]
        rel_dir = os.path.relpath(dirpath, root)
        for name in files:
            found.append((name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"), dirpath, name))
    items, skipped, ignored, tags = [], [], [], []
    for rel, dirpath, name in sorted(found, key=lambda f: _natural_key(f[0])):
        path = os.path.join(dirpath, name)
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if os.path.commonpath([root_real, os.path.realpath(path)]) != root_real:
                    skipped.append({"path": rel, "reason": "unsafe_link: symlink points outside the source"})
                    continue
                st = os.stat(path)
        except OSError as e:
            skipped.append({"path": rel, "reason": f"unreadable: {e.strerror or e}"})
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append({"path": rel, "reason": "not_a_regular_file: a device, fifo or socket"})
            continue
        suffix = os.path.splitext(name)[1].lower()
        if "__MACOSX" in rel.split("/") or name in SYSTEM_FILES or name.startswith("._"):
            ignored.append({"path": rel, "reason": "system metadata file"})
        elif suffix in TAG_SUFFIXES:
            tags.append((rel, Path(path)))
        elif suffix in NON_IMAGE_SUFFIXES:
            ignored.append({"path": rel, "reason": f"not an image file type ({suffix})"})
        else:
            items.append(_file_item(rel, Path(path), st.st_size, cfg))
    return items, skipped, ignored, tags


def _file_item(rel: str, path: Path, size: int, cfg: IngestConfig) -> _Item:
    def prepare() -> tuple[str, object]:
        if size > IN_MEMORY_BYTES:
            return sha256_file(path), None
        data = path.read_bytes()
        return hashlib.sha256(data).hexdigest(), data

    def decode(data: object) -> tuple[Image.Image, None] | tuple[None, str]:
        return load_image(path, max_pixels=cfg.max_pixels, min_side=cfg.min_side, data=data)

    return _Item(rel, prepare, decode, {})


def _synthetic_items(cfg: IngestConfig, source: str) -> list[_Item]:
    """The faces of a ``synthetic:`` URI (parsed as open_dataset parses it), drawn at ``cfg.resolution``,
    with their exact colours as Danbooru-style tags."""
    from animegen.data.dataset import open_synthetic

    faces = open_synthetic(source, cfg.resolution)
    n = len(faces) if cfg.limit is None else min(len(faces), cfg.limit)
    items = []
    for i in range(n):
        image = faces.images[i]
        meta = faces.meta[i]
        items.append(_Item(
            rel=f"synthetic/{i}",
            prepare=lambda a=image: (hashlib.sha256(a.tobytes()).hexdigest(), a),
            decode=lambda a: (Image.fromarray(a), None),
            extra={"tags": [f"{meta['hair']}_hair", f"{meta['eye']}_eyes"]},
        ))
    return items


def _pack(items: list[_Item], skipped: list[dict], cfg: IngestConfig, out: Path,
          progress: bool, source: str) -> tuple[list[dict], dict]:
    """Validate, dedupe, preprocess and pack ``items``; split; grow. Returns (index rows, counts)."""
    from animegen.progress import track

    xdog, channels = cfg.xdog(), cfg.channels or channels_for(cfg.mode)
    repeat = channels // channels_for(cfg.mode)  # 3 for grey modes packed as RGB, else 1

    def render(img: Image.Image) -> np.ndarray:
        a = finish(img, cfg.resolution, mode=cfg.mode, filter=cfg.filter, xdog=xdog)
        return np.ascontiguousarray(np.repeat(a, repeat, axis=2)) if repeat > 1 else a

    rows: list[dict] = []
    kept_items: list[_Item] = []
    duplicates: list[dict] = []
    first_seen: dict[str, str] = {}
    with PackWriter(out, len(items) + (cfg.grow_to or 0), cfg.resolution, channels) as writer:
        for item in track(items, f"ingest {source}: decode, check, preprocess", len(items), "files",
                          progress, size=lambda _: 1):
            digest, token = item.prepare()
            if digest in first_seen:
                duplicates.append({"path": item.rel, "duplicate_of": first_seen[digest]})
                if cfg.dedupe:
                    continue
            img, reason = item.decode(token)
            if img is None:
                skipped.append({"path": item.rel, "reason": reason})
                continue
            writer.append(render(fit_square(img, cfg.fit, cfg.pad)))
            first_seen.setdefault(digest, item.rel)
            rows.append({"id": len(rows), "source": item.rel, "stem": Path(item.rel).stem, "sha256": digest,
                         **item.extra})
            kept_items.append(item)
        if not rows:
            reasons = Counter(reason_code(s["reason"]) for s in skipped)
            raise ValueError(f"no images kept from {source!r} ({len(items)} candidate files, "
                             f"{len(duplicates)} duplicates, skipped: {dict(reasons) or 'none'}); check the source")
        kept = len(rows)
        assign_splits(rows, cfg.holdout, block=cfg.split_block, group=cfg.split_group, seed=cfg.seed)
        plan = []
        if cfg.grow_to:
            plan = plan_growth([r["id"] for r in rows if r["split"] == TRAIN], cfg.grow_to, cfg.seed, cfg.growth())
        for src_id, params in track(plan, "ingest: grow the training split", len(plan), "img",
                                    progress and bool(plan), size=lambda _: 1):
            item = kept_items[src_id]
            img, reason = item.decode(item.prepare()[1])
            assert img is not None, reason  # it decoded a moment ago
            writer.append(render(apply_transform(fit_square(img, cfg.fit, cfg.pad), params)))
            src = rows[src_id]
            rows.append({**src, "id": len(rows), "split": TRAIN, "augmented_from": src_id, "augment": params})
        writer.close()
    splits = dict(sorted(Counter(r["split"] for r in rows).items()))
    return rows, {"kept": kept, "grown": len(plan), "duplicates": duplicates, "splits": splits}


def _copy_tags(tag_sources: list[tuple[str, Path]], out: Path) -> list[dict]:
    """Copy tag files to out/tags/ (by file name, or by relative path when names collide)."""
    names = Counter(Path(rel).name for rel, _ in tag_sources)
    listed = []
    for rel, path in tag_sources:
        dest_rel = Path("tags") / (Path(rel).name if names[Path(rel).name] == 1 else rel)
        dest = out / dest_rel
        with open(path, "rb") as src:
            atomic_replace(dest, lambda f: shutil.copyfileobj(src, f))
        listed.append({"file": dest_rel.as_posix(), "source": rel, "bytes": dest.stat().st_size,
                       "sha256": sha256_file(dest)})
    return listed


def _short(reason: str) -> str:
    """A refusal reason without its specifics ("symbolic link (to x)" -> "symbolic link")."""
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


def _version() -> str:
    import animegen

    return animegen.__version__


def _summary(m: dict, cfg: IngestConfig, out: Path) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in m["skipped_by_reason"].items())
    splits = ", ".join(f"{k} {v:,}" for k, v in m["splits"].items())
    grown = f" + {m['grown']:,} grown" if m["grown"] else ""
    limit = f" (limit {cfg.limit:,})" if cfg.limit is not None else ""
    return (f"ingest: kept {m['kept']:,} of {m['candidates']:,} candidate files{limit}{grown}; "
            f"duplicates {m['duplicates_count']:,}{' dropped' if m['duplicates_dropped'] else ' kept'}; "
            f"skipped {m['skipped_count']:,}{f' ({reasons})' if reasons else ''}; refused {m['refused_count']:,}; "
            f"ignored {m['ignored_count']:,}; {splits}; {cfg.resolution}px {cfg.mode} -> {out} "
            f"in {m['wall_s']:.1f} s")
