"""Procedural anime-style faces with exact hair/eye colour labels.

Each face is drawn with Pillow at ``SUPERSAMPLE`` times the target resolution and
box-downsampled. Image ``i`` depends only on ``(seed, i)`` and the chosen colours,
never on ``n``, so a longer run starts with the images of a shorter one. The two
colour draws come first and use a fixed amount of randomness, so the geometry of
image ``i`` is the same whichever colour subsets are chosen.
"""

from __future__ import annotations

import colorsys
import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

HAIR_RGB: dict[str, RGB] = {
    "aqua": (70, 205, 210),
    "black": (38, 34, 46),
    "blonde": (250, 222, 110),
    "blue": (55, 95, 215),
    "brown": (125, 75, 40),
    "gray": (128, 128, 138),
    "green": (65, 160, 75),
    "orange": (245, 135, 40),
    "pink": (250, 150, 190),
    "purple": (135, 75, 190),
    "red": (210, 35, 45),
    "white": (242, 242, 248),
}
EYE_RGB: dict[str, RGB] = {
    "aqua": (50, 200, 205),
    "black": (32, 28, 38),
    "blue": (45, 85, 225),
    "brown": (130, 80, 40),
    "green": (45, 170, 65),
    "orange": (245, 135, 30),
    "pink": (245, 115, 175),
    "purple": (130, 65, 200),
    "red": (220, 30, 40),
    "yellow": (240, 210, 35),
}
HAIR_COLOURS: list[str] = list(HAIR_RGB)
EYE_COLOURS: list[str] = list(EYE_RGB)

SUPERSAMPLE = 4
_WHITE: RGB = (255, 255, 255)
_LINE: RGB = (60, 38, 40)
_SKIN: RGB = (255, 226, 208)


def generate(
    n: int,
    seed: int = 0,
    resolution: int = 64,
    hair: Sequence[str] | None = None,
    eyes: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Draw ``n`` faces; return (images uint8 [n,H,W,3], hair_idx, eye_idx, hair_names, eye_names).

    ``hair``/``eyes`` restrict the colours (kept in vocabulary order); the indices
    point into the returned name lists.
    """
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, got n={n}, seed={seed}")
    if resolution < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    hair_names = _select(hair, HAIR_COLOURS, "hair")
    eye_names = _select(eyes, EYE_COLOURS, "eye")
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    hair_idx = np.empty(n, np.int64)
    eye_idx = np.empty(n, np.int64)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        u_hair, u_eye = rng.random(2)
        hair_idx[i] = int(u_hair * len(hair_names))
        eye_idx[i] = int(u_eye * len(eye_names))
        images[i] = _render(
            rng, resolution, HAIR_RGB[hair_names[hair_idx[i]]], EYE_RGB[eye_names[eye_idx[i]]]
        )
    return images, hair_idx, eye_idx, hair_names, eye_names


def _select(names: Sequence[str] | None, vocab: list[str], kind: str) -> list[str]:
    if names is None:
        return list(vocab)
    unknown = sorted(set(names) - set(vocab))
    if unknown or not names:
        raise ValueError(
            f"unknown or empty {kind} colour list {list(names)!r}; valid: {', '.join(vocab)}"
        )
    return [c for c in vocab if c in set(names)]


def _shade(rgb: RGB, f: float) -> RGB:
    return tuple(min(255, max(0, round(c * f))) for c in rgb)  # type: ignore[return-value]


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> RGB:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return tuple(round(255 * c) for c in rgb)  # type: ignore[return-value]


@functools.cache
def _unit_arc(a0: float, a1: float, k: int) -> np.ndarray:
    t = np.radians(np.linspace(a0, a1, k))
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _arc(
    cx: float, cy: float, rx: float, ry: float, a0: float = 0, a1: float = 360, k: int = 24
) -> np.ndarray:
    """Points on an ellipse from angle a0 to a1 (degrees; y points down, so 180..360 is the top)."""
    return _unit_arc(a0, a1, k) * (rx, ry) + (cx, cy)


class _Pen:
    """Draws shapes given in face-local units (face radius 1, origin at the face centre).

    Head shapes are rotated by the tilt about the neck; ``still=True`` shapes (the body) are not.
    """

    def __init__(self, draw: ImageDraw.ImageDraw, size: int, cx: float, cy: float, r: float, tilt: float):
        self.draw, self.px = draw, size * r
        self.origin = np.array([cx, cy]) * size
        self.pivot = np.array([0.0, 1.3])
        c, s = math.cos(tilt), math.sin(tilt)
        self.rot = np.array([[c, -s], [s, c]])

    def _xy(self, pts: np.ndarray | list, still: bool) -> list[float]:
        p = np.asarray(pts, float)
        if not still:
            p = (p - self.pivot) @ self.rot.T + self.pivot
        return (self.origin + self.px * p).ravel().tolist()

    def poly(
        self, pts: np.ndarray | list, fill: RGB, outline: RGB | None = None, still: bool = False
    ) -> None:
        width = max(1, round(0.025 * self.px)) if outline else 0
        self.draw.polygon(self._xy(pts, still), fill=fill, outline=outline, width=width)

    def line(self, pts: np.ndarray | list, fill: RGB, width: float, still: bool = False) -> None:
        self.draw.line(self._xy(pts, still), fill=fill, width=max(1, round(width * self.px)), joint="curve")


def _render(rng: np.random.Generator, resolution: int, hair_rgb: RGB, eye_rgb: RGB) -> np.ndarray:
    size = resolution * SUPERSAMPLE
    img = Image.new("RGB", (size, size), _random_colour(rng, (0.08, 0.3), (0.86, 1.0)))
    r = rng.uniform(0.25, 0.3)
    pen = _Pen(
        ImageDraw.Draw(img), size,
        cx=0.5 + rng.uniform(-0.04, 0.04), cy=0.47 + rng.uniform(-0.03, 0.03), r=r,
        tilt=math.radians(rng.uniform(-7, 7)),
    )
    hair = _shade(hair_rgb, rng.uniform(0.93, 1.06))
    skin = _shade(_SKIN, rng.uniform(0.95, 1.01))
    bangs, back, long_locks = rng.integers(4), rng.integers(3), rng.random() < 0.4

    _back_hair(pen, _shade(hair, 0.85), back)
    pen.poly([(-0.3, 0.5), (0.3, 0.5), (0.33, 1.6), (-0.33, 1.6)], _shade(skin, 0.9))
    _body(pen, rng, _shade(skin, 0.9))
    if back == 2:
        _twintails(pen, rng, _shade(hair, 0.92))
    _face(pen, rng, skin)
    sp, ey = rng.uniform(0.42, 0.52), rng.uniform(0.12, 0.22)  # eye spacing and height
    ew, eh = rng.uniform(0.2, 0.25), rng.uniform(0.27, 0.32)  # eye half-width and half-height
    for side in (-1, 1):
        _eye(pen, rng, side * sp, ey, ew, eh, eye_rgb, side)
        if rng.random() < 0.6:
            pen.poly(_arc(side * (sp + 0.05), ey + eh + 0.14, 0.2, 0.06), _mix(skin, (255, 120, 130), 0.35))
    _front_hair(pen, rng, hair, bangs, long_locks, skin, eye_top=ey - eh, eye_outer=sp + ew)
    return np.asarray(img.reduce(SUPERSAMPLE))


def _back_hair(pen: _Pen, colour: RGB, style: int) -> None:
    top = _arc(0, -0.15, 1.22, 1.15, 180, 360)
    if style == 1:  # long: falls behind the shoulders
        ends = [(1.5, 2.8), (-1.5, 2.8)]
    else:  # bob to about chin level
        ends = [(1.18, 0.95), (0.7, 1.05), (-0.7, 1.05), (-1.18, 0.95)]
    pen.poly(np.concatenate([top, ends]), colour, outline=_shade(colour, 0.7))


def _body(pen: _Pen, rng: np.random.Generator, neck: RGB) -> None:
    shoulders = [(0.4, 1.4), (1.5, 1.65), (2.0, 2.0), (2.3, 4)]
    outline = shoulders + [(-x, y) for x, y in reversed(shoulders)]
    pen.poly(outline, _random_colour(rng, (0.3, 0.7), (0.35, 0.85)), still=True)
    pen.poly([(-0.36, 1.38), (0.36, 1.38), (0, 1.85)], neck, still=True)
    pen.line([(-0.45, 1.38), (0, 1.9), (0.45, 1.38)], _WHITE, 0.08, still=True)


def _twintails(pen: _Pen, rng: np.random.Generator, colour: RGB) -> None:
    ribbon = _random_colour(rng, (0.5, 0.7), (0.9, 1.0))
    tail = np.array([(1.0, -0.75), (1.65, -0.2), (1.75, 0.9), (1.45, 2.2), (1.3, 1.0), (1.05, -0.1)])
    for s in (-1, 1):
        pen.poly(tail * (s, 1), colour, outline=_shade(colour, 0.7))
        pen.poly(_arc(s * 1.1, -0.6, 0.16, 0.16, k=12), ribbon)


def _face(pen: _Pen, rng: np.random.Generator, skin: RGB) -> None:
    jaw, chin = rng.uniform(0.9, 1.0), rng.uniform(1.06, 1.14)
    lower = [(1.0, 0.0), (0.98 * jaw, 0.35), (0.82 * jaw, 0.7), (0.48 * jaw, 0.97), (0, chin)]
    lower += [(-x, y) for x, y in reversed(lower[:-1])]
    shape = np.concatenate([_arc(0, 0, 1, 1, 180, 360), np.array(lower)])
    pen.poly((shape - (0, 0.1)) * 1.04 + (0, 0.1), _LINE)
    pen.poly(shape, skin)
    pen.line([(0.03, 0.52), (0.0, 0.58)], _shade(skin, 0.75), 0.04)
    y = rng.uniform(0.78, 0.86)
    if rng.random() < 0.5:  # smile
        pen.line(_arc(0, y - 0.05, 0.14, 0.07, 20, 160, k=8), (150, 60, 60), 0.04)
    else:  # small open mouth
        pen.poly(_arc(0, y - 0.03, 0.12, 0.1, 0, 180, k=10), (170, 55, 65))


def _eye(
    pen: _Pen, rng: np.random.Generator, ex: float, ey: float, ew: float, eh: float, colour: RGB, side: int
) -> None:
    """Sclera, a large iris (dark rim, pupil, two highlights) and an upper lash line with an outer flick."""
    pen.poly(_arc(ex, ey, ew, eh), _WHITE)
    ix, iy, iw, ih = ex - side * rng.uniform(0, 0.15) * ew, ey + 0.08 * eh, 0.8 * ew, 0.86 * eh
    pen.poly(_arc(ix, iy, iw, ih), _shade(colour, 0.55))
    pen.poly(_arc(ix, iy + 0.04 * ih, 0.82 * iw, 0.84 * ih), colour)
    pen.poly(_arc(ix, iy + 0.1 * ih, 0.38 * iw, 0.42 * ih, k=16), _shade(colour, 0.3))
    pen.poly(_arc(ix - 0.35 * iw, iy - 0.35 * ih, 0.3 * iw, 0.3 * iw, k=12), _WHITE)
    pen.poly(_arc(ix + 0.3 * iw, iy + 0.4 * ih, 0.14 * iw, 0.14 * iw, k=8), _WHITE)
    lash = _arc(ex, ey + 0.05 * eh, 1.12 * ew, 1.08 * eh, 195, 345, k=12)
    outer = lash[-1] if side > 0 else lash[0]
    pen.line(lash, _LINE, 0.09)
    pen.line([outer, outer + (side * 0.12, -0.06)], _LINE, 0.06)


def _front_hair(
    pen: _Pen, rng: np.random.Generator, hair: RGB, style: int, long_locks: bool, skin: RGB,
    eye_top: float, eye_outer: float,
) -> None:
    """Side locks, the crown, bangs (0 straight, 1/2 swept left/right, 3 parted) and a highlight band."""
    def lock_colour() -> RGB:
        return _shade(hair, rng.uniform(0.95, 1.04))

    dark = _shade(hair, 0.7)
    length = rng.uniform(2.0, 2.5) if long_locks else rng.uniform(0.8, 1.05)
    for s in (-1, 1):
        side_lock = np.array([(0.92, -0.6), (1.2, -0.3), (1.15, 0.6 * length), (1.02, length), (0.8, 0.1)])
        pen.poly(side_lock * (s, 1), lock_colour(), outline=dark)
    pen.poly(_arc(0, -0.35, 1.1, 0.98, 180, 360), hair)
    if style == 3:
        pen.poly([(0, -0.9), (-0.2, -0.35), (0.2, -0.35)], skin)
    count = int(rng.integers(5, 8))
    edges = np.linspace(-1.12, 1.12, count + 1)
    width = edges[1] - edges[0]
    for left, right in zip(edges[:-1], edges[1:]):
        mid = (left + right) / 2
        sweep = {0: 0.0, 1: -0.45, 2: 0.45, 3: 0.45 * np.sign(mid)}[style] * width
        tx = mid + sweep + rng.uniform(-0.1, 0.1) * width
        if abs(tx) < 0.22:
            ty = eye_top + rng.uniform(0.05, 0.2)
        elif abs(tx) < eye_outer + 0.1:
            ty = eye_top - rng.uniform(0.04, 0.14)
        else:
            ty = rng.uniform(0.2, 0.45)
        yb, bow = -0.6, sweep * 0.25
        lock = [
            (left - 0.12 * width, yb),
            (left + (tx - left) * 0.55 + bow, yb + (ty - yb) * 0.55),
            (tx, ty),
            (right + (tx - right) * 0.55 + bow, yb + (ty - yb) * 0.55),
            (right + 0.12 * width, yb),
        ]
        pen.poly(lock, lock_colour())
        pen.line(lock[1:4], dark, 0.025)
    pen.line(_arc(0, -0.2, 0.8, 0.72, 212, 328, k=12), _mix(hair, _WHITE, 0.45), 0.08)
