"""What the studio draws: faces from recipes, with the project's own models and latent operations.

A :class:`Recipe` says everything that makes one face: the model, its classes (a conditional model's own class
names; several for a multi-hot model), the latent seed, the noise seed, psi (truncation toward the class's mean
w) and, for StyleGAN models, the coarse / middle / fine styles taken from another face (style mixing). The same
recipe gives the same image bit for bit on the same device and dtype: each face is drawn on its own (batch of
one), its z from its seed's generator and its per-pixel noise from its noise seed, so a face never depends on
the grid it was shown in.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animegen.latent.ops import conditions_for, lerp, slerp
from animegen.latent.tools import style_ranges

RECIPE_VERSION = 1
RECIPE_CHUNK = "animegen-recipe"  # the PNG text chunk that holds a face's recipe
METRICS = ("fid", "kid", "hair_accuracy", "eye_accuracy", "both_accuracy", "n_fid")  # shown beside a model
BANDS = ("coarse", "middle", "fine")


@dataclass(frozen=True)
class Mix:
    """Styles ``band`` taken from the face of ``seed`` (its classes: ``classes``, else the recipe's)."""

    seed: int
    band: str
    classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Recipe:
    model: str
    seed: int
    classes: tuple[str, ...] = ()
    psi: float = 1.0
    noise_seed: int = 0
    mix: Mix | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        if self.mix is not None:
            d["mix"]["classes"] = None if self.mix.classes is None else list(self.mix.classes)
        return {"version": RECIPE_VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)} - {"version"}
        if unknown:
            raise ValueError(f"recipe: unknown field(s) {sorted(unknown)}")
        if int(d.get("version", RECIPE_VERSION)) > RECIPE_VERSION:
            raise ValueError(f"recipe version {d['version']} is newer than this animegen reads ({RECIPE_VERSION})")
        mix = d.get("mix")
        if mix is not None:
            mix = Mix(int(mix["seed"]), str(mix["band"]),
                      None if mix.get("classes") is None else tuple(map(str, mix["classes"])))
        return cls(model=str(d["model"]), seed=int(d["seed"]), classes=tuple(map(str, d.get("classes") or ())),
                   psi=float(d.get("psi", 1.0)), noise_seed=int(d.get("noise_seed", 0)), mix=mix)

    @classmethod
    def read(cls, path: str | Path) -> Recipe:
        """A recipe JSON file, or a PNG the studio wrote (its ``animegen-recipe`` text chunk)."""
        path = Path(path)
        if path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
            from PIL import Image

            with Image.open(path) as img:
                text = img.text.get(RECIPE_CHUNK)
            if text is None:
                raise ValueError(f"{path}: a PNG without an animegen recipe (its {RECIPE_CHUNK!r} text chunk)")
            return cls.from_dict(json.loads(text))
        return cls.from_dict(json.loads(path.read_text()))


@dataclass
class StudioModel:
    """A loaded generator (G_ema, eval mode) and what the studio shows about it."""

    name: str
    path: str
    G: torch.nn.Module
    class_names: list[str]
    arch: str
    resolution: int
    kimg: float
    metrics: dict[str, Any] = field(default_factory=dict)  # FID, accuracy from the model's evaluation, if found

    @property
    def styles(self) -> bool:
        return hasattr(self.G, "num_ws") and self.G.num_ws > 1  # a mapping network with per-layer styles

    def describe(self) -> dict[str, Any]:
        bands = {k: v is not None for k, v in style_ranges(self.G.num_ws).items()} if self.styles else {}
        return {"name": self.name, "arch": self.arch, "resolution": self.resolution, "kimg": self.kimg,
                "conditional": bool(self.class_names), "classes": list(self.class_names),
                "multi_hot": self.multi_hot, "mixing_bands": [b for b in BANDS if bands.get(b)],
                "metrics": self.metrics}

    @property
    def multi_hot(self) -> bool:
        """Trained on multi-hot tags (single hair and eye columns, as evaluation and sampling read them): a face
        takes several of them at once, e.g. blonde hair + red eyes."""
        from animegen.train.checkpoint import sampling_conditions

        return bool(self.class_names) and sampling_conditions(self.class_names) is not None


def load_model(name: str, path: str | Path, device: str | torch.device = "cpu") -> StudioModel:
    from animegen.train.checkpoint import load_generator

    G, meta = load_generator(path, device=device)
    return StudioModel(name=name, path=str(path), G=G, class_names=list(meta.get("class_names") or []),
                       arch=str(meta["config"].arch), resolution=int(G.resolution),
                       kimg=float(meta.get("images_seen", 0)) / 1000, metrics=evaluation_metrics(Path(path)))


def evaluation_metrics(model_dir: Path) -> dict[str, Any]:
    """FID / KID / accuracy of the model from an evaluation beside it (``eval/metrics.json`` in the Model
    folder or its siblings named after it), else {}."""
    if not model_dir.is_dir():
        return {}
    for candidate in (model_dir / "eval" / "metrics.json", model_dir / "metrics.json"):
        if candidate.is_file():
            m = json.loads(candidate.read_text())
            return {k: m[k] for k in METRICS if m.get(k) is not None}
    return {}


def _condition(model: StudioModel, classes: tuple[str, ...]) -> torch.Tensor | None:
    if not model.class_names:
        if classes:
            raise ValueError(f"model {model.name!r} is unconditional: it takes no class")
        return None
    if not classes:
        raise ValueError(f"model {model.name!r} is conditional: choose one of its classes")
    if len(classes) > 1 and not model.multi_hot:
        raise ValueError(f"model {model.name!r} takes one class (it was trained on one-hot labels)")
    return conditions_for(model.class_names, "+".join(classes))


def latent(seed: int, z_dim: int) -> torch.Tensor:
    return torch.randn(1, z_dim, generator=torch.Generator().manual_seed(int(seed)))


@torch.no_grad()
def ws_of(model: StudioModel, recipe: Recipe) -> torch.Tensor:
    """The per-layer styles [1, num_ws, w_dim] of ``recipe`` (mixing applied)."""
    G, device = model.G, next(model.G.parameters()).device
    c = _condition(model, recipe.classes)
    ws = G.mapping(latent(recipe.seed, G.z_dim).to(device), None if c is None else c.to(device),
                   truncation_psi=recipe.psi)
    if recipe.mix is not None:
        if not model.styles:
            raise ValueError(f"model {model.name!r} ({model.arch}) has no per-layer styles to mix")
        band = style_ranges(G.num_ws).get(recipe.mix.band)
        if recipe.mix.band not in BANDS or band is None:
            raise ValueError(f"mix band {recipe.mix.band!r}: one of {', '.join(model.describe()['mixing_bands'])}")
        c2 = _condition(model, recipe.mix.classes if recipe.mix.classes is not None else recipe.classes)
        other = G.mapping(latent(recipe.mix.seed, G.z_dim).to(device), None if c2 is None else c2.to(device),
                          truncation_psi=recipe.psi)
        ws = ws.clone()
        ws[:, band[0]:band[1]] = other[:, band[0]:band[1]]
    return ws


@torch.no_grad()
def render_ws(model: StudioModel, ws: torch.Tensor, noise_seed: int) -> np.ndarray:
    """uint8 [H, W, C] of styles ws [1, num_ws, w_dim] with per-pixel noise from ``noise_seed``."""
    from animegen.image_files import to_uint8

    with torch.random.fork_rng(devices=[]):  # noise from the CPU's generator: the same maps on any device
        torch.manual_seed(int(noise_seed))
        img = model.G.synthesis(ws, noise_mode="host")
    return to_uint8(img.float().cpu())[0]


def render(model: StudioModel, recipe: Recipe) -> np.ndarray:
    """The face of ``recipe`` as uint8 [H, W, C]."""
    if not 0.0 <= recipe.psi <= 1.0:
        raise ValueError(f"psi {recipe.psi}: between 0 (the class's mean face) and 1 (no truncation)")
    return render_ws(model, ws_of(model, recipe), recipe.noise_seed)


@torch.no_grad()
def interpolation(model: StudioModel, a: Recipe, b: Recipe, steps: int, method: str = "slerp",
                  space: str = "w") -> list[np.ndarray]:
    """A loop a -> b -> a of ``2 * steps`` frames, in z (lerp / slerp of the latents, each frame mapped with
    a's classes blended toward b's) or in w (of the two recipes' styles); noise from a's seed throughout."""
    if method not in ("lerp", "slerp") or space not in ("z", "w"):
        raise ValueError(f"interpolation {method!r} in {space!r}: method lerp|slerp, space z|w")
    if space == "z" and a.classes != b.classes:
        raise ValueError("a z-space interpolation keeps one class: use space 'w' between faces of two classes")
    fn = slerp if method == "slerp" else lerp
    t = torch.cat([torch.linspace(0, 1, steps + 1)[:-1], torch.linspace(1, 0, steps + 1)[:-1]])
    frames = []
    if space == "w":
        wa, wb = ws_of(model, a), ws_of(model, b)
        for x in t:
            frames.append(render_ws(model, fn(wa, wb, float(x)), a.noise_seed))
        return frames
    G, device = model.G, next(model.G.parameters()).device
    za, zb = latent(a.seed, G.z_dim), latent(b.seed, G.z_dim)
    c = _condition(model, a.classes)
    for x in t:
        z = fn(za, zb, float(x)).to(device)
        ws = G.mapping(z, None if c is None else c.to(device), truncation_psi=a.psi)
        frames.append(render_ws(model, ws, a.noise_seed))
    return frames
