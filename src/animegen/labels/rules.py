"""The class rules of the conditional StyleGAN anime paper, every one configurable.

From tag probabilities to classes, in this order (an image is dropped at the first rule it fails,
and that rule is its recorded reason):

1. a tag is present when its probability is >= ``threshold`` (0.7);
2. every ``require`` tag must be present (solo, 1girl, age_rating_s);
3. no ``exclude`` tag may be present (eyes_visible_through_hair, third_eye);
4. only the chosen hair-colour and eye-colour tags are kept; ``pair`` needs exactly one of each
   (class "blonde hair red eyes"), ``hair`` / ``eye`` exactly one of that kind, ``multi_hot`` at least one
   kept tag (a multi-hot row over the kept tags);
5. classes (multi-hot: tags) with fewer than ``min_per_class`` images are dropped and reported.

``require=None`` resolves per source: the paper's three tags, each only when the source's vocabulary (the
table's columns) has it. The Danbooru tagger's table has all three, so all three are required; the MLDS
CSV, the synthetic index and the colour tagger speak only of colours, so nothing is required for them
(requiring tags a source never mentions would drop every image). An explicit list must be in the
vocabulary: a required tag the source cannot express is refused with an error.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from animegen.config import Config, opt
from animegen.labels.tags import TagTable

MODES = ("pair", "hair", "eye", "multi_hot")
PAPER_REQUIRE = ("solo", "1girl", "age_rating_s")
PAPER_EXCLUDE = ("eyes_visible_through_hair", "third_eye")
# The colours of the MLDS set (12 hair, 10 eye), as Danbooru tags.
MLDS_HAIR = ("aqua", "black", "blonde", "blue", "brown", "gray", "green", "orange", "pink", "purple", "red",
             "white")
MLDS_EYES = ("aqua", "black", "blue", "brown", "green", "orange", "pink", "purple", "red", "yellow")
HAIR_TAGS = tuple(f"{c}_hair" for c in MLDS_HAIR)
EYE_TAGS = tuple(f"{c}_eyes" for c in MLDS_EYES)
# Danbooru spells gray "grey"; MLDS and the synthetic faces spell it "gray".
DEFAULT_ALIASES = {"grey_hair": "gray_hair", "grey_eyes": "gray_eyes"}

NO_TAGS = "no tags in the source"
BELOW_MIN = "class below min_per_class"


@dataclass
class ClassRules(Config):
    mode: str = field(default="pair", metadata=opt("classes: pair ((hair, eye) pairs), hair, eye or multi_hot",
                                                   choices=MODES, noun="label mode"))
    threshold: float = field(default=0.7, metadata=opt("a tag counts when its probability is at least this"))
    require: list[str] | None = field(default=None, metadata=opt(
        "tags every kept image must have", default_text="solo 1girl age_rating_s where the source has them"))
    exclude: list[str] = field(default_factory=lambda: list(PAPER_EXCLUDE), metadata=opt("tags that drop an image"))
    hair: list[str] = field(default_factory=lambda: list(HAIR_TAGS), metadata=opt(
        "hair-colour tags to keep", default_text="the 12 MLDS colours"))
    eyes: list[str] = field(default_factory=lambda: list(EYE_TAGS), metadata=opt(
        "eye-colour tags to keep", default_text="the 10 MLDS colours"))
    aliases: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ALIASES), metadata=opt(
        "TAG=KEPT: a tag read as another (grey_hair=gray_hair)"))
    min_per_class: int = field(default=1, metadata=opt("drop classes with fewer images (1: only empty ones)"))

    def validate(self) -> None:
        if self.mode == "eyes":
            self.mode = "eye"
        if self.mode not in MODES:
            return  # the choices check names the valid modes
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.min_per_class < 0:
            raise ValueError(f"min_per_class must be >= 0, got {self.min_per_class}")
        if self.mode in ("pair", "hair") and not self.hair:
            raise ValueError(f"mode {self.mode!r} needs hair-colour tags (rules.hair is empty)")
        if self.mode in ("pair", "eye") and not self.eyes:
            raise ValueError(f"mode {self.mode!r} needs eye-colour tags (rules.eyes is empty)")
        if self.mode == "multi_hot" and not self.kept_tags():
            raise ValueError("multi_hot needs at least one hair or eye tag to keep")
        both = set(self.hair) & set(self.eyes)
        if both:
            raise ValueError(f"tags {sorted(both)} are listed as both hair and eye colours")

    def kept_tags(self) -> list[str]:
        """The tags that classes are made of, in class order."""
        return {"pair": self.hair + self.eyes, "hair": list(self.hair), "eye": list(self.eyes),
                "multi_hot": self.hair + self.eyes}[self.mode]

    def needed_tags(self) -> list[str]:
        """Every tag the rules read (with the aliases that feed them): what a tagger's table must keep."""
        base = [*(PAPER_REQUIRE if self.require is None else self.require), *self.exclude, *self.kept_tags()]
        return list(dict.fromkeys(base + [a for a, t in self.aliases.items() if t in base]))

    def resolve_require(self, vocabulary: set[str]) -> list[str]:
        if self.require is None:
            return [t for t in PAPER_REQUIRE if t in vocabulary]
        missing = [t for t in self.require if t not in vocabulary]
        if missing:
            raise ValueError(f"required tag(s) {missing} never occur in the tag source, so every image would be "
                             f"dropped; give require=[] (or None for the paper's tags where the source has them)")
        return list(self.require)


@dataclass
class LabelResult:
    """Labels for the rows of one TagTable."""

    mode: str
    keys: list[str]
    class_names: list[str]
    labels: np.ndarray                 # int64 [N], -1 where dropped; or float32 multi-hot [N, K] (zeros where dropped)
    reasons: list[str | None]          # why each row was dropped; None for kept rows
    counts: list[int]                  # images per class (multi-hot: per tag)
    dropped_classes: dict[str, int]    # classes below min_per_class, with their counts
    empty_classes: list[str]           # classes made of colours that occur, that no kept image has
    rules: dict[str, Any]              # the rules as applied (require resolved)

    @property
    def kept(self) -> np.ndarray:
        return np.array([r is None for r in self.reasons], dtype=bool)

    @property
    def label_kind(self) -> str:
        return "multi_hot" if self.labels.ndim == 2 else "class"

    def reason_counts(self) -> dict[str, int]:
        return dict(Counter(r for r in self.reasons if r is not None).most_common())

    def names_of(self, i: int) -> str | list[str] | None:
        """Row i's class name (multi-hot: its tag names); None when dropped."""
        if self.reasons[i] is not None:
            return None
        if self.labels.ndim == 1:
            return self.class_names[int(self.labels[i])]
        return [n for n, v in zip(self.class_names, self.labels[i]) if v]


def class_name(tag: str) -> str:
    """'blonde_hair' -> 'blonde hair' (the spelling of the synthetic set's class names)."""
    return tag.replace("_", " ")


def apply_rules(table: TagTable, rules: ClassRules) -> LabelResult:
    """Classes for every row of ``table`` under ``rules`` (see the module docstring)."""
    rules.validate()
    t = table.renamed(rules.aliases)
    vocab = set(t.tags)
    require = rules.resolve_require(vocab)
    for kind, tags in (("hair", rules.hair), ("eye", rules.eyes)):
        if rules.mode in ("pair", kind) and not vocab & set(tags):
            raise ValueError(f"none of the {kind}-colour tags {tags} occur in the tag source (its tags: "
                             f"{sorted(vocab)[:30]}); set rules.{'eyes' if kind == 'eye' else kind} to its tags")
    n = len(t)
    present = {tag: t.column(tag) >= rules.threshold for tag in dict.fromkeys([*require, *rules.exclude,
                                                                                 *rules.kept_tags()])}
    reasons: list[str | None] = [None] * n

    def drop(mask: np.ndarray, reason: str) -> None:
        for i in np.flatnonzero(mask):
            if reasons[i] is None:
                reasons[i] = reason

    for tag in require:
        drop(~present[tag], f"missing required tag {tag}")
    for tag in rules.exclude:
        drop(present[tag], f"excluded tag {tag}")

    kept_tags = rules.kept_tags()
    if rules.mode == "multi_hot":
        hot = np.stack([present[tag] for tag in kept_tags], 1)
        drop(hot.sum(1) == 0, "no hair or eye colour")
        alive = np.array([r is None for r in reasons])
        counts = hot[alive].sum(0)
        cols = [j for j, c in enumerate(counts) if c >= max(rules.min_per_class, 1)]
        dropped = {class_name(kept_tags[j]): int(c) for j, c in enumerate(counts) if 0 < c < rules.min_per_class}
        empty = [class_name(tag) for tag, c in zip(kept_tags, counts) if c == 0 and t.has(tag)]
        labels = hot[:, cols].astype(np.float32)
        drop(labels.sum(1) == 0, BELOW_MIN)
        labels[[r is not None for r in reasons]] = 0
        names = [class_name(kept_tags[j]) for j in cols]
        return LabelResult(rules.mode, list(t.keys), names, labels, reasons,
                           [int(c) for c in labels.sum(0)], dropped, empty, {**rules.to_dict(), "require": require})

    # One class per image: the product of the hair and eye choices the mode asks for.
    axes = []
    if rules.mode in ("pair", "hair"):
        axes.append(("hair colour", rules.hair))
    if rules.mode in ("pair", "eye"):
        axes.append(("eye colour", rules.eyes))
    full = np.zeros(n, np.int64)
    choice = []
    for what, tags in axes:
        hits = np.stack([present[tag] for tag in tags], 1)
        k = hits.sum(1)
        drop(k == 0, f"no {what}")
        drop(k > 1, f"more than one {what}")
        choice.append(hits.argmax(1))
        full = full * len(tags) + choice[-1]
    grid, seen = [""], [True]
    alive = np.array([r is None for r in reasons])
    for (_, tags), picked in zip(axes, choice):
        used = np.bincount(picked[alive], minlength=len(tags)) > 0
        grid = [f"{g} {class_name(tag)}".strip() for g in grid for tag in tags]
        seen = [a and b for a in seen for b in used]
    counts = np.bincount(full[alive], minlength=len(grid))
    keep_cls = [c for c in range(len(grid)) if counts[c] >= max(rules.min_per_class, 1)]
    dropped = {grid[c]: int(counts[c]) for c in range(len(grid)) if 0 < counts[c] < rules.min_per_class}
    # combinations of colours that each occur, but never together (MLDS: 1 of its 12 x 10 pairs)
    empty = [grid[c] for c in range(len(grid)) if counts[c] == 0 and seen[c]]
    remap = np.full(len(grid), -1, np.int64)
    remap[keep_cls] = np.arange(len(keep_cls))
    labels = np.where(alive, remap[full], -1)
    drop(alive & (labels < 0), BELOW_MIN)
    return LabelResult(rules.mode, list(t.keys), [grid[c] for c in keep_cls], labels, reasons,
                       [int(counts[c]) for c in keep_cls], dropped, empty, {**rules.to_dict(), "require": require})
