"""Tag sources, all read into one table type, and joining a table to a Dataset's rows.

Sources (every one becomes a :class:`TagTable`):

- the MLDS CSV: ``<id>,<hair> hair <eye> eyes`` with no header (``0,aqua hair aqua eyes``), giving the
  tags ``<hair>_hair`` and ``<eye>_eyes``;
- a general tag CSV: ``<id>,<tag1> <tag2> ...`` with Danbooru underscore tags;
- a probability table written by a tagger: a header ``<key>,<tag1>,<tag2>,...`` and float cells;
- the tags already in a Dataset's ``index.jsonl`` rows (``"tags": [...]``; synthetic sources).

Hard tags are 1.0 in the table, absent ones 0.0. The table's columns are the tags its source can
express: the tags that occur at least once in a CSV or index, the columns of a probability table.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from animegen.utils import atomic_replace

FORMATS = ("auto", "mlds", "tags", "table")
JOIN_KEYS = ("stem", "id", "source", "row")
HEADER_KEYS = {"id", "key", "stem", "image", "image_id", "file", "filename", "name", "source", "path"}
MLDS_RE = re.compile(r"^\s*(\S+) hair (\S+) eyes\s*$")


@dataclass
class TagTable:
    """Per-image tag probabilities: ``probs[i, j]`` is P(tag ``tags[j]``) for the image keyed ``keys[i]``."""

    keys: list[str]
    tags: list[str]
    probs: np.ndarray  # float32 [N, T]
    source: str = ""
    merged_duplicates: int = 0  # repeated keys whose tags were merged (union) while reading
    key_name: str | None = None  # what the keys are, when the file says (a probability table's first header cell)

    def __post_init__(self) -> None:
        self.probs = np.asarray(self.probs, dtype=np.float32)
        if self.probs.ndim != 2 or self.probs.shape != (len(self.keys), len(self.tags)):
            raise ValueError(f"{self.source}: probs {self.probs.shape} != ({len(self.keys)}, {len(self.tags)})")
        if len(set(self.tags)) != len(self.tags):
            raise ValueError(f"{self.source}: repeated tag columns")
        self._index = {t: j for j, t in enumerate(self.tags)}

    def __len__(self) -> int:
        return len(self.keys)

    def has(self, tag: str) -> bool:
        return tag in self._index

    def column(self, tag: str) -> np.ndarray:
        """Probabilities of ``tag`` [N]; zeros when the source cannot express the tag."""
        j = self._index.get(tag)
        return np.zeros(len(self), np.float32) if j is None else self.probs[:, j]

    def take(self, rows: np.ndarray | Sequence[int]) -> TagTable:
        rows = np.asarray(rows, dtype=np.int64)
        return TagTable([self.keys[i] for i in rows], list(self.tags), self.probs[rows], self.source)

    def renamed(self, aliases: dict[str, str]) -> TagTable:
        """Columns renamed by ``aliases`` (e.g. grey_hair -> gray_hair); columns meeting merge by max."""
        names = [aliases.get(t, t) for t in self.tags]
        if names == self.tags:
            return self
        out_tags = list(dict.fromkeys(names))
        probs = np.zeros((len(self), len(out_tags)), np.float32)
        pos = {t: j for j, t in enumerate(out_tags)}
        for j, name in enumerate(names):
            np.maximum(probs[:, pos[name]], self.probs[:, j], out=probs[:, pos[name]])
        return TagTable(list(self.keys), out_tags, probs, self.source, self.merged_duplicates)


def from_tag_lists(keys: Sequence[str], tag_lists: Sequence[Iterable[str]], source: str = "",
                   keep: Iterable[str] | None = None) -> TagTable:
    """A binary table from per-image tag lists; repeated keys are merged (union of their tags).

    ``keep`` limits the columns to those tags (only the ones that occur become columns).
    """
    wanted = None if keep is None else set(keep)
    rows: dict[str, set[str]] = {}
    merged = 0
    for key, tags in zip(keys, tag_lists, strict=True):
        tags = {normalise_tag(t) for t in tags if t.strip()}
        if wanted is not None:
            tags &= wanted
        if key in rows:
            merged += 1
            rows[key] |= tags
        else:
            rows[key] = tags
    vocab = sorted(set().union(*rows.values())) if rows else []
    col = {t: j for j, t in enumerate(vocab)}
    probs = np.zeros((len(rows), len(vocab)), np.float32)
    for i, tags in enumerate(rows.values()):
        probs[i, [col[t] for t in tags]] = 1.0
    return TagTable(list(rows), vocab, probs, source, merged)


def normalise_tag(tag: str) -> str:
    """Danbooru form: lower case, words joined by underscores ('Blonde hair' -> 'blonde_hair')."""
    return "_".join(tag.strip().lower().split())


def read_tag_csv(path: str | os.PathLike, fmt: str = "auto", keep: Iterable[str] | None = None) -> TagTable:
    """Read a tag CSV or a probability table (see the module docstring).

    ``fmt='auto'`` picks: more than two columns -> probability table (header required); otherwise
    MLDS when the first data row reads ``<hair> hair <eye> eyes``, else the general tag format. A first
    row whose key cell is a column name (id, stem, file, ...) is a header and skipped. ``keep`` limits
    the columns to those tags.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown tag file format {fmt!r}; choose one of {', '.join(FORMATS)}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: empty tag file")
    if fmt == "table" or (fmt == "auto" and len(rows[0][1]) > 2):
        return _parse_table(rows, path, keep)
    if len(rows[0][1]) > 2:
        raise ValueError(f"{path}:{rows[0][0]}: a tag CSV has two columns, '<id>,<tag1> <tag2> ...'; "
                         f"a file with a column per tag is a probability table (format 'table')")
    if rows[0][1][0].strip().lower() in HEADER_KEYS:
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: a header but no rows")
    first_tags = rows[0][1][1] if len(rows[0][1]) > 1 else ""
    if fmt == "mlds" or (fmt == "auto" and MLDS_RE.match(first_tags)):
        return _parse_mlds(rows, path, keep)
    return _parse_tags(rows, path, keep)


def _parse_mlds(rows: list[tuple[int, list[str]]], path: Path, keep: Iterable[str] | None) -> TagTable:
    keys, lists = [], []
    for line, r in rows:
        m = MLDS_RE.match(r[1]) if len(r) == 2 else None
        if not m:
            raise ValueError(f"{path}:{line}: expected '<id>,<hair> hair <eye> eyes' (MLDS format), got "
                             f"{','.join(r)!r}")
        keys.append(r[0].strip())
        lists.append([f"{m.group(1)}_hair", f"{m.group(2)}_eyes"])
    return from_tag_lists(keys, lists, f"mlds:{path}", keep)


def _parse_tags(rows: list[tuple[int, list[str]]], path: Path, keep: Iterable[str] | None) -> TagTable:
    for line, r in rows:
        if len(r) > 2:
            raise ValueError(f"{path}:{line}: expected '<id>,<tag1> <tag2> ...' (tags separated by spaces)")
    keys = [r[0].strip() for _, r in rows]
    lists = [r[1].split() if len(r) > 1 else [] for _, r in rows]
    return from_tag_lists(keys, lists, f"csv:{path}", keep)


def _parse_table(rows: list[tuple[int, list[str]]], path: Path, keep: Iterable[str] | None) -> TagTable:
    header = [c.strip() for c in rows[0][1]]
    tags = header[1:]
    if not tags or any(not t for t in tags):
        raise ValueError(f"{path}: a probability table needs a header '<key>,<tag1>,<tag2>,...'")
    wanted = None if keep is None else set(keep)
    cols = [j for j, t in enumerate(tags) if wanted is None or t in wanted]
    keys, probs = [], np.zeros((len(rows) - 1, len(cols)), np.float32)
    for i, (line, r) in enumerate(rows[1:]):
        if len(r) != len(header):
            raise ValueError(f"{path}:{line}: {len(r)} cells, the header has {len(header)}")
        try:
            values = [float(r[1 + j]) for j in cols]
        except ValueError as e:
            raise ValueError(f"{path}:{line}: {e} (cells of a probability table are numbers in [0, 1])") from None
        if any(not 0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"{path}:{line}: a probability outside [0, 1]")
        keys.append(r[0].strip())
        probs[i] = values
    if len(set(keys)) != len(keys):
        dup = Counter(keys).most_common(1)[0][0]
        raise ValueError(f"{path}: key {dup!r} appears more than once in a probability table")
    return TagTable(keys, [tags[j] for j in cols], probs, f"table:{path}", key_name=header[0].lower())


def write_prob_table(table: TagTable, path: str | os.PathLike, key_name: str = "id") -> Path:
    """Write ``table`` as a probability-table CSV (``<key_name>,<tag1>,...``), atomically."""
    path = Path(path)

    def write(f) -> None:
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        w = csv.writer(text, lineterminator="\n")
        w.writerow([key_name, *table.tags])
        for key, row in zip(table.keys, table.probs):
            w.writerow([key, *(f"{v:.6g}" for v in row)])
        text.flush()
        text.detach()

    atomic_replace(path, write)
    return path


def tags_from_index(rows: Sequence[dict], keep: Iterable[str] | None = None) -> TagTable:
    """Tags held in index rows, keyed by row position (``join(..., key='row')``).

    A row's ``tags`` list is used; a row without one but with synthetic colour facts (``hair``/``eye``,
    as ``write_packed`` stores them) gets ``<hair>_hair`` and ``<eye>_eyes``; other rows have no tags.
    """
    keys, lists = [], []
    for i, row in enumerate(rows):
        if isinstance(row.get("tags"), list):
            tags = row["tags"]
        elif "hair" in row or "eye" in row:
            tags = [f"{row['hair']}_hair"] * ("hair" in row) + [f"{row['eye']}_eyes"] * ("eye" in row)
        else:
            continue
        keys.append(str(i))
        lists.append(tags)
    return from_tag_lists(keys, lists, "index", keep)


def row_key(row: dict, position: int, key: str) -> str:
    """The join key of one index row: its ``stem`` (else the stem of its ``source``), ``id``, ``source``,
    or its position (``row``)."""
    if key == "row":
        return str(position)
    if key == "stem" and "stem" not in row and "source" in row:
        return Path(str(row["source"])).stem
    if key not in row:
        raise ValueError(f"index row {position} has no {key!r} field (it has {sorted(row)}); "
                         f"join on one of {', '.join(k for k in JOIN_KEYS if k in row or k == 'row')}")
    return str(row[key])


@dataclass
class Join:
    """Which table row labels each dataset row (-1: none), and what did not match."""

    key: str
    table_row: np.ndarray  # int64 [N_dataset]
    unlabelled: list[int] = field(default_factory=list)  # dataset positions without a tag row
    orphans: int = 0  # tag rows whose key matches no image
    orphan_examples: list[str] = field(default_factory=list)

    def report(self, rows: Sequence[dict]) -> dict:
        return {
            "key": self.key,
            "unlabelled_count": len(self.unlabelled),
            "unlabelled": [{"row": i, "id": rows[i].get("id"), "key": row_key(rows[i], i, self.key)}
                           for i in self.unlabelled],
            "orphan_tag_rows": self.orphans,
            "orphan_examples": self.orphan_examples,
        }


def join(table: TagTable, rows: Sequence[dict], key: str = "stem") -> Join:
    """Match each dataset row to the table row with the same key (see :func:`row_key`).

    A row grown from another by augmentation (``augmented_from``: that row's id) takes its source's tags;
    two other rows sharing a key are refused, since one tag row cannot tell them apart.
    """
    if key not in JOIN_KEYS:
        raise ValueError(f"unknown join key {key!r}; choose one of {', '.join(JOIN_KEYS)}")
    position = {r.get("id", i): i for i, r in enumerate(rows)}
    dataset_keys = []
    for i, r in enumerate(rows):
        origin = position.get(r.get("augmented_from"), i)
        dataset_keys.append(row_key(rows[origin], origin, key))
    seen: dict[str, int] = {}
    for i, k in enumerate(dataset_keys):
        if k in seen and "augmented_from" not in rows[i]:
            raise ValueError(f"dataset rows {seen[k]} and {i} share the {key} {k!r}, so tags cannot be joined "
                             f"on it; join on another key ({', '.join(x for x in JOIN_KEYS if x != key)})")
        seen.setdefault(k, i)
    table_pos = {k: j for j, k in enumerate(table.keys)}
    table_row = np.array([table_pos.get(k, -1) for k in dataset_keys], dtype=np.int64)
    orphan_keys = [k for k in table.keys if k not in seen]
    return Join(key, table_row, [int(i) for i in np.flatnonzero(table_row < 0)], len(orphan_keys),
                orphan_keys[:20])
