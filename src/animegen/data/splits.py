"""Deterministic train / held-out splits by blocks of consecutive ids or by a group key.

Whole blocks (or groups) go to one side, so runs of near-identical images (one character, several crops)
never straddle the split; the blocks are drawn at random (seeded) from every stretch of ids, so a set whose
ids are sorted by class keeps about the same class mix on both sides, which a split into two id ranges
does not.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

TRAIN, HELDOUT = "train", "heldout"
SPLITS = (TRAIN, HELDOUT)


def assign_splits(rows: list[dict], holdout: float, *, block: int = 32, group: str | None = None,
                  seed: int = 0) -> dict[str, int]:
    """Set ``row["split"]`` to "train" or "heldout" in every row; return the count per side.

    Blocks (default): units of ``block`` consecutive ``row["id"]`` values. ``T = round(holdout * N / block)``
    blocks are held out: the blocks, in id order, are cut into T consecutive runs of nearly equal length and
    one block of each run, drawn with ``seed``, goes to the held-out side. The draw is random, yet every
    stretch of ids gives its share, so a set sorted by class keeps its class mix on both sides.

    Groups (``group``: an index field): rows sharing that field's value form a unit. The units are shuffled
    with ``seed`` and taken while they fit ``round(holdout * N)``; then the one unit that brings the count
    closest is added if it does, so the fraction is honoured as closely as the unit sizes allow.
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout={holdout}: the held-out fraction must be in [0, 1)")
    if group is None and block < 1:
        raise ValueError(f"split block={block}: must be >= 1")
    units: dict[Hashable, list[int]] = {}
    for i, row in enumerate(rows):
        units.setdefault(_unit_key(row, block, group), []).append(i)
    members = list(units.values())
    target = round(holdout * len(rows))
    rng = np.random.default_rng([seed, 0x5B11])
    if group is None:
        ordered = sorted(units, key=lambda k: k)  # block numbers in id order
        n_runs = min(len(ordered), round(target / block))
        runs = np.array_split(np.arange(len(ordered)), n_runs) if n_runs else []
        taken = [units[ordered[int(rng.choice(run))]] for run in runs]
    else:
        taken = _fill(members, target, rng)
    for row in rows:
        row["split"] = TRAIN
    for unit in taken:
        for i in unit:
            rows[i]["split"] = HELDOUT
    held = sum(len(unit) for unit in taken)
    return {TRAIN: len(rows) - held, HELDOUT: held}


def _fill(members: list[list[int]], target: int, rng: np.random.Generator) -> list[list[int]]:
    """Units taken in a random order while they fit ``target``, plus the one that then lands closest."""
    taken, count, rest = [], 0, []
    for u in rng.permutation(len(members)):
        size = len(members[u])
        if count + size <= target:
            taken.append(members[u])
            count += size
        else:
            rest.append(members[u])
    if rest and count < target:
        best = min(rest, key=lambda unit: abs(count + len(unit) - target))
        if abs(count + len(best) - target) < target - count:
            taken.append(best)
    return taken


def _unit_key(row: dict, block: int, group: str | None) -> Hashable:
    if group is None:
        return int(row["id"]) // block
    if group not in row:
        raise ValueError(f"split group key {group!r} is not a field of index row {row.get('id')} "
                         f"(fields: {', '.join(sorted(row))})")
    value = row[group]
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def class_mix_distance(classes: Sequence[Hashable], splits: Sequence[str]) -> float:
    """Total-variation distance between the class distributions of the train and held-out sides
    (0: the same mix, 1: no class in common); ``nan`` if a side is empty."""
    train = Counter(c for c, s in zip(classes, splits) if s == TRAIN)
    held = Counter(c for c, s in zip(classes, splits) if s == HELDOUT)
    nt, nh = sum(train.values()), sum(held.values())
    if not nt or not nh:
        return float("nan")
    return 0.5 * sum(abs(train[c] / nt - held[c] / nh) for c in set(train) | set(held))
