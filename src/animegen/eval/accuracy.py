"""Per-class accuracy of a conditional generator, scored by the colour tagger.

For every requested class, ``k`` images are generated (seeded latents, truncation ψ as a parameter, in batches) and
the colour tagger (:mod:`animegen.labels.colour`) says which hair and eye colour each shows. The result is the
second conditional-StyleGAN paper's Table II measured on k samples per class instead of 4 counted by hand:

- ``classes``: one row per requested class: requested hair / eye colour, n, hair correct, eye correct, both correct
  (fractions in [0, 1]; None where the class names no such colour or the tagger cannot tell that colour);
- ``hair_accuracy`` / ``eye_accuracy`` / ``both_accuracy`` over every scored image, ``per_hair`` / ``per_eye``
  (accuracy per requested colour), ``chance`` (1 / colours the tagger knows);
- ``confusion``: requested (rows) vs predicted (columns) colour counts, hair and eye, each as
  ``{"categories": [...], "matrix": [[...]]}``: the arguments of KFP's
  ``ClassificationMetrics.log_confusion_matrix(categories, matrix)``.

Which classes are requested follows the model's class names, as :func:`animegen.labels.colour.hair_eye_targets`
reads a dataset's: pair classes "<hair> hair <eye> eyes", hair-only "<c> hair", eye-only "<c> eyes" (one-hot rows),
or multi-hot columns "<c> hair" + "<c> eyes" (every hair x eye combination, both columns set).

A "generator" is a G module (anything with ``mapping``/``synthesis``, e.g. from ``load_generator``: ψ is applied
through ``G.mapping``, noise is constant) or any callable ``(z [N, z_dim], c [N, c_dim]) -> images [N, C, H, W]
in [-1, 1]``, whose latent size is its ``z_dim`` attribute (default 512) and which ψ does not touch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from animegen.labels.colour import ColourTagger, parse_colour_class, predict_colours
from animegen.latent.tools import map_z, render_ws
from animegen.models.batchnorm import ensure_recalibrated

GeneratorLike = nn.Module | Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
DEFAULT_Z_DIM = 512


@dataclass
class RequestedClass:
    """One class asked of the generator: its display name, condition row, and the colours it names."""

    name: str
    condition: torch.Tensor  # float [c_dim]
    hair: str | None
    eye: str | None


def requested_classes(class_names: list[str], multi_hot: bool | None = None) -> tuple[list[RequestedClass], list[str]]:
    """(classes to request, names that were skipped because they name no hair or eye colour).

    ``multi_hot``: whether the model was trained on multi-hot rows; None guesses it from the names (every name is
    a single "<c> hair" or "<c> eyes" column and both kinds occur). Multi-hot models are asked for every
    hair x eye combination; one-hot models for each class that names a colour.
    """
    parsed = [parse_colour_class(n) for n in class_names]
    single = all((h is None) != (e is None) for h, e in parsed)
    has_hair = any(h for h, _ in parsed)
    has_eye = any(e for _, e in parsed)
    if multi_hot is None:
        multi_hot = bool(class_names) and single and has_hair and has_eye
    c_dim = len(class_names)

    def row(*idx: int) -> torch.Tensor:
        c = torch.zeros(c_dim)
        c[list(idx)] = 1.0
        return c

    out: list[RequestedClass] = []
    skipped = [n for n, (h, e) in zip(class_names, parsed) if h is None and e is None]
    if multi_hot:
        hair_cols = [(i, h) for i, (h, e) in enumerate(parsed) if h and not e]
        eye_cols = [(j, e) for j, (h, e) in enumerate(parsed) if e and not h]
        skipped += [n for n, (h, e) in zip(class_names, parsed) if h and e]  # pair names have no multi-hot meaning
        if hair_cols and eye_cols:
            out = [RequestedClass(f"{h} hair {e} eyes", row(i, j), h, e) for i, h in hair_cols for j, e in eye_cols]
        else:
            out = [RequestedClass(class_names[i], row(i), h, None) for i, h in hair_cols]
            out += [RequestedClass(class_names[j], row(j), None, e) for j, e in eye_cols]
    else:
        out = [RequestedClass(n, row(i), h, e) for i, (n, (h, e)) in enumerate(zip(class_names, parsed)) if h or e]
    if not out:
        what = ", ".join(map(repr, class_names[:6])) or "(none: an unconditional model)"
        raise ValueError(f"per-class accuracy needs a conditional model whose classes name hair/eye colours "
                         f"('blonde hair red eyes', 'blonde hair', 'red eyes'); this model's classes: {what}")
    return out, skipped


def _renderer(generator: GeneratorLike, truncation_psi: float, device: torch.device, batch: int
              ) -> tuple[Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], int]:
    """(render(z, c) -> float images [N, C, H, W] in [-1, 1], z_dim) for a G module or a plain callable."""
    if hasattr(generator, "mapping") and hasattr(generator, "synthesis"):
        G: Any = generator

        def render_g(z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
            return render_ws(G, map_z(G, z, c, truncation_psi, device, batch), device, batch)

        return render_g, int(G.z_dim)
    if not callable(generator):
        raise TypeError(f"a generator must be a G module or a callable (z, c) -> images, not {type(generator)}")

    def render_fn(z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        return generator(z.to(device), None if c is None else c.to(device)).float()

    return render_fn, int(getattr(generator, "z_dim", DEFAULT_Z_DIM))


def _confusion(names: list[str], target: np.ndarray, pred: np.ndarray) -> np.ndarray:
    cm = np.zeros((len(names), len(names)), np.int64)
    np.add.at(cm, (target, pred), 1)
    return cm


def _rate(hits: int, n: int) -> float | None:
    return hits / n if n else None


def class_accuracy(generator: GeneratorLike, class_names: list[str], tagger: ColourTagger, k: int = 100,
                   truncation_psi: float = 1.0, seed: int = 0, batch: int = 64,
                   device: str | torch.device = "cpu", multi_hot: bool | None = None) -> dict[str, Any]:
    """Generate ``k`` images per requested class and score their hair and eye colours with ``tagger``.

    Latents come from a CPU ``torch.Generator`` seeded with ``seed``, drawn class by class (the same on every
    device and batch size). Returns the dict described in the module docstring (JSON-serialisable).
    """
    if k < 1:
        raise ValueError(f"k (images per class) must be >= 1 (got {k})")
    device = torch.device(device)
    classes, skipped = requested_classes(class_names, multi_hot)
    render, z_dim = _renderer(generator, truncation_psi, device, batch)
    hair_names, eye_names = list(tagger.hair_names), list(tagger.eye_names)
    gen = torch.Generator().manual_seed(seed)
    targets: dict[str, list[np.ndarray]] = {"hair": [], "eye": []}
    preds: dict[str, list[np.ndarray]] = {"hair": [], "eye": []}
    rows: list[dict[str, Any]] = []
    unscorable: set[str] = set()
    was_training = getattr(generator, "training", None)
    if isinstance(generator, nn.Module):
        ensure_recalibrated(generator)  # BatchNorm: recalibrated statistics (a no-op after load_generator)
        generator.eval()
    try:
        with torch.no_grad():
            for cls in classes:
                z = torch.randn(k, z_dim, generator=gen)
                hair_p, eye_p = [], []
                for i in range(0, k, batch):
                    zb = z[i:i + batch]
                    images = render(zb, cls.condition.expand(len(zb), -1))
                    if images.shape[0] != len(zb) or images.ndim != 4:
                        raise ValueError(f"the generator returned images of shape {tuple(images.shape)} for "
                                         f"{len(zb)} latents; expected [N, C, H, W]")
                    hp, ep = predict_colours(tagger, images, batch, device)
                    hair_p.append(hp.argmax(1) if hp.shape[1] else np.full(len(zb), -1))
                    eye_p.append(ep.argmax(1) if ep.shape[1] else np.full(len(zb), -1))
                correct = {}
                for key, want, names, pred in (("hair", cls.hair, hair_names, hair_p),
                                               ("eye", cls.eye, eye_names, eye_p)):
                    if want is None:
                        continue
                    if want not in names:
                        unscorable.add(f"{key} colour {want!r}")
                        continue
                    p = np.concatenate(pred)
                    targets[key].append(np.full(k, names.index(want)))
                    preds[key].append(p)
                    correct[key] = p == names.index(want)
                both = correct["hair"] & correct["eye"] if len(correct) == 2 else None
                rows.append({
                    "class": cls.name, "hair": cls.hair, "eye": cls.eye, "n": k,
                    "hair_correct": float(correct["hair"].mean()) if "hair" in correct else None,
                    "eye_correct": float(correct["eye"].mean()) if "eye" in correct else None,
                    "both_correct": float(both.mean()) if both is not None else None,
                })
    finally:
        if isinstance(generator, nn.Module) and was_training:
            generator.train()

    result: dict[str, Any] = {"k": k, "truncation_psi": float(truncation_psi), "seed": seed, "classes": rows,
                              "confusion": {}, "chance": {}}
    for key, names in (("hair", hair_names), ("eye", eye_names)):
        if not targets[key]:
            result[f"{key}_accuracy"] = None
            result[f"per_{key}"] = {}
            continue
        t, p = np.concatenate(targets[key]), np.concatenate(preds[key])
        cm = _confusion(names, t, p)
        result[f"{key}_accuracy"] = float((t == p).mean())
        result[f"per_{key}"] = {n: _rate(int(cm[i, i]), int(cm[i].sum())) for i, n in enumerate(names)
                                if cm[i].sum()}
        result["confusion"][key] = {"categories": names, "matrix": cm.tolist()}
        result["chance"][key] = 1.0 / len(names)
    both_rows = [r for r in rows if r["both_correct"] is not None]
    result["both_accuracy"] = (sum(r["both_correct"] * r["n"] for r in both_rows) / sum(r["n"] for r in both_rows)
                               if both_rows else None)
    result["images"] = k * len(classes)
    result["skipped_classes"] = skipped
    result["unscorable"] = sorted(unscorable)  # requested colours the tagger was not trained on
    return result
