"""Small-set growth: rotated, zoomed and randomly cropped copies of train images up to a target count.

The conditional StyleGAN paper grew 55 images of one character to 400 this way. A plan (which source, which
parameters) is drawn from a seed; the parameters are rounded before use and recorded in each grown
image's index row, so the transform can be re-applied exactly. Only train images are ever sources.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

FILLS = ("reflect", "edge")


@dataclass(frozen=True)
class Growth:
    """Ranges of the random transforms: rotation in [-max_angle, max_angle] degrees (the uncovered corners
    filled by reflecting or repeating the image's border), zoom in [1, max_zoom], then a crop of side
    ``1/zoom`` placed at random within the zoomed-out margin."""

    max_angle: float = 10.0
    max_zoom: float = 1.2
    fill: str = "reflect"

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_angle <= 45.0:
            raise ValueError(f"grow max_angle={self.max_angle}: must be in [0, 45] degrees")
        if not 1.0 <= self.max_zoom <= 4.0:
            raise ValueError(f"grow max_zoom={self.max_zoom}: must be in [1, 4]")
        if self.fill not in FILLS:
            raise ValueError(f"grow fill={self.fill!r}; valid: {', '.join(FILLS)}")


def plan_growth(train_ids: Sequence[int], target: int, seed: int = 0,
                growth: Growth = Growth()) -> list[tuple[int, dict]]:
    """``target - len(train_ids)`` (source id, transform parameters) pairs; empty if already at target.

    Sources go round in a fresh seeded permutation per round, so every train image is used about equally.
    """
    need = target - len(train_ids)
    if need <= 0:
        return []
    if not train_ids:
        raise ValueError("cannot grow an empty train split")
    rng = np.random.default_rng([seed, 0x6A0])
    ids = np.asarray(train_ids)
    plan = []
    while len(plan) < need:
        for src in rng.permutation(ids)[: need - len(plan)]:
            params = {
                "angle": round(float(rng.uniform(-growth.max_angle, growth.max_angle)), 3),
                "zoom": round(float(rng.uniform(1.0, growth.max_zoom)), 4),
                "shift_x": round(float(rng.uniform(-1.0, 1.0)), 4),
                "shift_y": round(float(rng.uniform(-1.0, 1.0)), 4),
                "fill": growth.fill,
            }
            plan.append((int(src), params))
    return plan


def apply_transform(img: Image.Image, params: dict) -> Image.Image:
    """Apply one planned transform to a square RGB/L image; the result has the same size.

    Rotation about the centre on a border-extended copy (so no corner is left empty), then a crop of side
    ``side / zoom`` whose position within the spare margin is given by ``shift_x``/``shift_y`` in [-1, 1],
    resampled back to ``side``.
    """
    side = img.size[0]
    assert img.size == (side, side), img.size
    angle, zoom = float(params["angle"]), float(params["zoom"])
    if angle:
        t = math.radians(abs(angle))
        margin = math.ceil(side * (math.cos(t) + math.sin(t) - 1) / 2) + 2
        a = np.asarray(img)
        widths = [(margin, margin), (margin, margin)] + [(0, 0)] * (a.ndim - 2)
        mode = "symmetric" if params.get("fill", "reflect") == "reflect" else "edge"
        big = Image.fromarray(np.pad(a, widths, mode=mode), img.mode)
        big = big.rotate(angle, resample=Image.Resampling.BICUBIC)
        img = big.crop((margin, margin, margin + side, margin + side))
    window = side / zoom
    spare = side - window
    left = spare / 2 * (1 + float(params["shift_x"]))
    top = spare / 2 * (1 + float(params["shift_y"]))
    if zoom != 1.0:
        img = img.resize((side, side), Image.Resampling.BICUBIC, box=(left, top, left + window, top + window))
    return img
