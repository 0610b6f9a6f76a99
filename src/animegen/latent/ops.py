"""Latent-space arithmetic: lerp, slerp, paths through key latents, and class specs -> condition rows.

Pure tensor functions: no model, no I/O. Vectors live on the last dimension; leading dimensions are batch.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PATH_METHODS = ("linear", "slerp", "circular")
ClassSpec = str | int | Sequence[str | int]


def _weight(t: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(t, dtype=like.dtype, device=like.device)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """a + t (b - a), exact at t = 0 and t = 1 (``t`` broadcasts against ``a`` and ``b``)."""
    return torch.lerp(a, b, _weight(t, a))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Spherical interpolation per row (last dim): the direction moves along the great circle from a to b at
    constant angular speed while the norm goes linearly from |a| to |b|.

    ``t`` broadcasts against ``a[..., :1]``. Endpoints are returned exactly; (anti)parallel rows, where the
    great circle is undefined, fall back to a normalised lerp of the directions (never NaN).
    """
    t = _weight(t, a)
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / norm_a.clamp_min(eps), b / norm_b.clamp_min(eps)
    omega = (ua * ub).sum(dim=-1, keepdim=True).clamp(-1.0, 1.0).acos()
    sin_omega = omega.sin()
    curved = sin_omega > eps
    safe = torch.where(curved, sin_omega, torch.ones_like(sin_omega))
    wa = torch.where(curved, ((1 - t) * omega).sin() / safe, 1 - t)
    wb = torch.where(curved, (t * omega).sin() / safe, t)
    direction = wa * ua + wb * ub
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(eps)
    out = direction * torch.lerp(norm_a, norm_b, t)
    out = torch.where(t == 0, a, out)
    return torch.where(t == 1, b, out)


def circle(a: torch.Tensor, b: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """z(θ) = a cos θ + b sin θ for each θ in ``theta`` [T] -> [T, *a.shape].

    For independent a, b ~ N(0, I) every z(θ) is again N(0, I); for orthogonal a, b of equal norm it is a
    great circle traversed at constant speed.
    """
    theta = theta.double().reshape((-1,) + (1,) * a.ndim)  # cos/sin in float64: exact closure at 2π
    return a * theta.cos().to(a) + b * theta.sin().to(a)


def path(points: torch.Tensor, steps_per_segment: int, method: str = "linear",
         closed: bool = False) -> torch.Tensor:
    """Frames [T, ...] through key points [K, ...].

    'linear' / 'slerp': ``steps_per_segment`` frames from each key to the next; open paths end on the last key
    (T = (K-1)·steps + 1); closed paths return towards the first key and leave that end frame out
    (T = K·steps), so a looping GIF has no repeated frame.
    'circular': K = 2 latents a, b; z(θ) = a cos θ + b sin θ over θ in [0, 2π), ``steps_per_segment`` frames
    per quarter turn (a -> b -> -a -> -b), T = 4·steps; always closed (θ = 2π would be the first frame again).
    """
    if method not in PATH_METHODS:
        raise ValueError(f"unknown path method {method!r}; choose one of {', '.join(PATH_METHODS)}")
    if steps_per_segment < 1:
        raise ValueError(f"steps_per_segment must be >= 1 (got {steps_per_segment})")
    if method == "circular":
        if len(points) != 2:
            raise ValueError(f"a circular path takes exactly 2 latents (got {len(points)})")
        n = 4 * steps_per_segment
        theta = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        return circle(points[0], points[1], theta)
    if len(points) < 2:
        raise ValueError(f"a path needs at least 2 key points (got {len(points)})")
    interp = lerp if method == "linear" else slerp
    starts = points if closed else points[:-1]
    ends = torch.roll(points, -1, dims=0)[: len(starts)]
    t = (torch.arange(steps_per_segment, dtype=points.dtype, device=points.device) / steps_per_segment)
    t = t.reshape((1, -1) + (1,) * (points.ndim - 1))  # [1, steps, 1.., 1]
    frames = interp(starts[:, None], ends[:, None], t).flatten(0, 1)  # [segments * steps, ...]
    return frames if closed else torch.cat([frames, points[-1:]])


def _class_index(class_names: list[str], token: str | int) -> int:
    """One class by name (exact, then case-insensitive) or by index."""
    if isinstance(token, str):
        name = token.strip()
        if name in class_names:
            return class_names.index(name)
        lowered = [c.lower() for c in class_names]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        if name.isdigit():
            token = int(name)
    if isinstance(token, int) and 0 <= token < len(class_names):
        return token
    raise ValueError(f"unknown class {token!r}; valid classes: {', '.join(map(repr, class_names))} "
                     f"(or an index 0..{len(class_names) - 1}, 'all', or names joined with '+')")


def _spec_rows(class_names: list[str], spec: ClassSpec) -> list[list[int]]:
    """A class spec -> one list of class indices per condition row."""
    if not class_names:
        raise ValueError("the model is unconditional: it takes no class; leave the class option out")
    if isinstance(spec, (list, tuple)):
        return [row for item in spec for row in _spec_rows(class_names, item)]
    if isinstance(spec, str) and spec.strip().lower() == "all" and "all" not in class_names:
        return [[i] for i in range(len(class_names))]
    if isinstance(spec, str) and "+" in spec and spec not in class_names:
        return [sorted({_class_index(class_names, part) for part in spec.split("+")})]
    return [[_class_index(class_names, spec)]]


def conditions_for(class_names: list[str], spec: ClassSpec) -> torch.Tensor:
    """Condition rows float [R, len(class_names)] for a class spec.

    ``spec``: a class name, an index, 'all' (one one-hot row per class), names joined with '+' (one multi-hot
    row, for models trained on multi-hot labels, e.g. 'blonde hair+red eyes'), or a list of these.
    """
    rows = _spec_rows(class_names, spec)
    c = torch.zeros(len(rows), len(class_names))
    for r, idx in enumerate(rows):
        c[r, idx] = 1.0
    return c


def condition_labels(class_names: list[str], spec: ClassSpec) -> list[str]:
    """The display name of each row of ``conditions_for(class_names, spec)``."""
    return ["+".join(class_names[i] for i in idx) for idx in _spec_rows(class_names, spec)]
