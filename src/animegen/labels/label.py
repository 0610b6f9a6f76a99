"""The ``label`` stage: a Dataset plus tags -> the Labelled Dataset of DESIGN.md.

``run_label(cfg, dataset_dir, out_dir)`` reads tags from one source, joins them to the dataset's rows,
applies the class rules and writes (manifest.json last):

- ``images.npy``: only the kept images, copied through a memmap a chunk at a time;
- ``labels.npy``: int64 class ids, or float32 multi-hot rows; ``classes.json``: names, counts, dropped classes;
- ``index.jsonl``: the kept rows, each with its label name(s) and ``dataset_id`` (the row's id in the dataset);
- ``label_report.json``: drop reasons (histogram and per image), unlabelled images, orphan tag rows,
  dropped and empty classes, the rules as applied;
- ``class_histogram.png`` and ``verification_grid.png`` (k images per class, a row per class: the paper's
  Table I check); ``tag_table.csv`` when a tagger ran (re-apply other rules with ``tags='table:...'``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from animegen.config import Config, opt
from animegen.data.dataset import begin_packed, finish_packed, read_packed, write_images, write_labels
from animegen.data.sources import fetch_file
from animegen.image_files import grid_array
from animegen.labels.rules import NO_TAGS, ClassRules, LabelResult, apply_rules
from animegen.labels.tags import JOIN_KEYS, TagTable, join, read_tag_csv, row_key, tags_from_index, write_prob_table
from animegen.utils import atomic_replace, write_json

TAG_SOURCES = "auto | csv:PATH | tagfile:[NAME] | table:PATH | index | danbooru:WEIGHTS_URI"


@dataclass
class LabelConfig(Config):
    tags: str = field(default="auto", metadata=opt(
        f"tag source: {TAG_SOURCES} (auto: the one file in <dataset>/tags/, else the index's tags)"))
    join: str = field(default="stem", metadata=opt("what a tag file's ids match in the index", choices=JOIN_KEYS))
    sha256: str | None = field(default=None, metadata=opt("expected sha256 of the danbooru: weights", unset=""))
    device: str = field(default="auto", metadata=opt("tagger device", choices=("auto", "cpu", "cuda")))
    batch: int = field(default=64, metadata=opt("tagger batch size"))
    input_size: int = field(default=360, metadata=opt("tagger input size (upstream: 360)"))
    rules: ClassRules = field(default_factory=ClassRules)
    grid_k: int = field(default=8, metadata=opt("images per class in verification_grid.png"))
    seed: int = field(default=0, metadata=opt("which images the verification grid shows"))


def run_label(cfg: LabelConfig, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Label the Dataset at ``dataset_dir`` and write the Labelled Dataset to ``out_dir`` (see module doc)."""
    src, out = Path(dataset_dir), Path(out_dir)
    if cfg.join not in JOIN_KEYS:
        raise ValueError(f"join must be one of {', '.join(JOIN_KEYS)}, got {cfg.join!r}")
    cfg.rules.validate()
    dataset = read_packed(src)
    manifest, images, rows = dataset.manifest, dataset.images, dataset.rows
    if rows is None:
        raise ValueError(f"{src}: no index.jsonl (a row per image, written by ingest); re-run `animegen ingest`")
    if out.resolve() == src.resolve():
        raise ValueError(f"out_dir {out} is the input dataset; write the Labelled Dataset to another directory")
    begin_packed(out)  # the directory is incomplete until finish_packed writes its manifest

    source, table, key = _tag_table(cfg, src, images, rows)
    if source.startswith("danbooru:"):
        write_prob_table(table, out / "tag_table.csv", key_name=key)
    matched = join(table, rows, key)
    has_tags = matched.table_row >= 0
    if not has_tags.any():
        ours = [row_key(r, i, key) for i, r in enumerate(rows[:3])]
        raise ValueError(f"no tag row of {source} matches an image of {src} by {key}: its keys look like "
                         f"{table.keys[:3]}, the dataset's {key}s like {ours}; choose another join key "
                         f"(join: {', '.join(JOIN_KEYS)})")
    result = apply_rules(table.take(matched.table_row[has_tags]), cfg.rules)

    n = len(rows)
    reasons: list[str | None] = [NO_TAGS] * n
    for p, reason in zip(np.flatnonzero(has_tags), result.reasons):
        reasons[p] = reason
    kept = np.flatnonzero(result.kept)  # rows of the result that are kept
    pos = np.flatnonzero(has_tags)[kept]  # their dataset positions
    labels = result.labels[kept]
    histogram = dict(Counter(r for r in reasons if r is not None).most_common())
    report = {
        "dataset": str(src), "dataset_count": n, "kept": len(pos), "dropped": n - len(pos),
        "tags_source": source, "tag_rows": len(table), "tags_in_source": table.tags,
        "join": matched.report(rows), "rules": result.rules, "mode": result.mode,
        "classes": dict(zip(result.class_names, result.counts)),
        "dropped_classes": result.dropped_classes, "empty_classes": result.empty_classes,
        "reasons": histogram,
        "dropped_images": [{"row": i, "id": rows[i].get("id"), "reason": r} for i, r in enumerate(reasons) if r],
    }
    write_json(out / "label_report.json", report)
    if len(pos) == 0:
        raise ValueError(f"no image of {src} survives the class rules (reasons: {histogram}); see "
                         f"{out / 'label_report.json'} and loosen the rules (threshold, require, exclude, "
                         f"min_per_class, hair/eyes) or give another tag source")

    write_images(out, images, pos)
    write_labels(out, labels, result.class_names, label_kind=result.label_kind, mode=result.mode,
                 dropped_classes=result.dropped_classes, empty_classes=result.empty_classes)
    kept_rows = []
    for new_id, (j, p) in enumerate(zip(kept, pos)):
        row = {**rows[p], "id": new_id, "dataset_id": rows[p].get("id", int(p))}
        row["label" if result.label_kind == "class" else "labels"] = result.names_of(int(j))
        kept_rows.append(row)
    kept_images = np.load(out / "images.npy", mmap_mode="r")
    plot_class_histogram(result, out / "class_histogram.png")
    save_verification_grid(kept_images, labels, result.class_names, out / "verification_grid.png", cfg.grid_k,
                           cfg.seed)
    return finish_packed(out, kept_rows, {
        "num_classes": len(result.class_names), "label_kind": result.label_kind,
        "source": manifest.get("source", str(src)),
        "stage": "label",
        "parent": {"path": str(src), "content_hash": manifest.get("content_hash"), "count": n},
        "labels": {"tags_source": source, "join": key, "mode": result.mode, "classes": len(result.class_names),
                   "dropped": n - len(pos), "unlabelled": len(matched.unlabelled), "reasons": histogram},
        "label_config": cfg.to_dict(),
    })


def _tag_table(cfg: LabelConfig, src: Path, images: np.ndarray, rows: list[dict]) -> tuple[str, TagTable, str]:
    """(resolved source, table, join key) for ``cfg.tags``."""
    spec = cfg.tags
    keep = cfg.rules.needed_tags()
    tag_dir = src / "tags"
    found = sorted(p.relative_to(tag_dir).as_posix() for p in tag_dir.rglob("*") if p.is_file()) \
        if tag_dir.is_dir() else []
    if spec == "auto":
        if len(found) > 1:
            raise ValueError(f"{tag_dir} holds several tag files {found}; choose one with tags='tagfile:NAME'")
        if found:
            spec = "tagfile:" + found[0]
        elif any(isinstance(r.get("tags"), list) or "hair" in r or "eye" in r for r in rows):
            spec = "index"
        else:
            raise ValueError(f"{src} has no tag file (tags/) and no tags in its index; give a tag source: "
                             f"{TAG_SOURCES}")
    kind, _, arg = spec.partition(":")
    if kind == "index":
        return spec, tags_from_index(rows, keep), "row"
    if kind == "tagfile":
        name = arg or (found[0] if len(found) == 1 else "")
        if not name or name not in found:
            raise ValueError(f"tagfile:{arg} - the tag files of {src} are {found or 'none'}; name one of them")
        return spec, read_tag_csv(tag_dir / name, "auto", keep), cfg.join
    if kind in ("csv", "table") and arg:
        # a path, file://, https:// or s3:// (downloads are cached)
        table = read_tag_csv(fetch_file(arg), "auto" if kind == "csv" else "table", keep)
        if table.key_name in JOIN_KEYS and table.key_name != cfg.join:
            # ids and stems are both numbers on MLDS-like sets: joining on the wrong one mislabels silently
            raise ValueError(f"{arg} names its rows by {table.key_name!r} but join={cfg.join!r}; "
                             f"pass --join {table.key_name}")
        return spec, table, cfg.join
    if kind == "danbooru" and arg:
        from animegen.labels.danbooru import load_tagger, predict_tags

        model = load_tagger(arg, cfg.sha256, cfg.device, cfg.input_size)
        # Rows grown by augmentation take their source's tags (see join); the others are tagged.
        todo = [i for i, r in enumerate(rows) if "augmented_from" not in r]
        # The table's rows are named by the join key (so tag_table.csv also labels a re-ingest of the same
        # files), or by position when rows lack that key or share it.
        key, keys = "row", [str(i) for i in todo]
        if all(cfg.join in rows[i] or (cfg.join == "stem" and "source" in rows[i]) for i in todo):
            named = [row_key(rows[i], i, cfg.join) for i in todo]
            if len(set(named)) == len(named):
                key, keys = cfg.join, named
        return spec, predict_tags(model, images, cfg.batch, keep=keep, keys=keys, indices=todo), key
    raise ValueError(f"unknown tag source {cfg.tags!r}; use {TAG_SOURCES}")


def plot_class_histogram(result: LabelResult, path: Path) -> Path:
    """Horizontal bars: images per kept class, and the dropped classes (grey) against min_per_class."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.class_names) + list(result.dropped_classes)
    counts = list(result.counts) + list(result.dropped_classes.values())
    colours = ["tab:blue"] * len(result.class_names) + ["tab:gray"] * len(result.dropped_classes)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(names) + 1.2)))
    ax.barh(range(len(names)), counts, color=colours)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first class on top, no blank margins
    min_per_class = result.rules.get("min_per_class", 0)
    if min_per_class > 1:
        ax.axvline(min_per_class, color="tab:red", lw=1, ls="--", label=f"min_per_class {min_per_class}")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_xlabel("images")
    ax.set_title(f"{len(result.class_names)} classes, {int(np.sum(result.kept))} images"
                 + (f" ({len(result.dropped_classes)} classes dropped, grey)" if result.dropped_classes else ""),
                 fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    atomic_replace(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path


def save_verification_grid(images: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
                           k: int = 8, seed: int = 0, thumb: int = 64) -> Path:
    """A row per class: its name, then k of its images chosen at random (seeded); thumbnails <= ``thumb`` px."""
    rng = np.random.default_rng(seed)
    font = ImageFont.load_default()
    label_w = 8 + int(max(font.getlength(n) for n in class_names))
    strips = []
    for c, name in enumerate(class_names):
        members = np.flatnonzero(labels == c if labels.ndim == 1 else labels[:, c] > 0)
        chosen = np.sort(rng.choice(members, size=min(k, len(members)), replace=False))
        tiles = np.stack([_thumbnail(images[i], thumb) for i in chosen])
        strip = grid_array(tiles, ncol=k)
        canvas = Image.new("RGB", (label_w + strip.shape[1], strip.shape[0]), "white")
        canvas.paste(Image.fromarray(strip[..., 0] if strip.shape[2] == 1 else strip).convert("RGB"), (label_w, 0))
        top, bottom = font.getbbox(name)[1::2]
        ImageDraw.Draw(canvas).text((4, (strip.shape[0] - bottom - top) // 2), name, fill="black", font=font)
        strips.append(canvas)
    grid = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips)), "white")
    y = 0
    for s in strips:
        grid.paste(s, (0, y))
        y += s.height
    atomic_replace(path, lambda f: grid.save(f, format="PNG"))
    return path


def _thumbnail(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] <= size:
        return np.asarray(image)
    im = Image.fromarray(image[..., 0] if image.shape[2] == 1 else np.asarray(image))
    out = np.asarray(im.resize((size, size), Image.BILINEAR))
    return out[..., None] if out.ndim == 2 else out
