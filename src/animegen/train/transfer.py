"""Transfer (``--init-from``): start a model from another Model's weights so that it computes the same function.

Everything is done on *effective* weights (a parameter times the equalised-learning-rate gain its layer applies
at run time, which depends on the layer's fan-in and so on the class count) and written back with the new
layer's gains. Class-dependent tensors are the ones a model's ``class_layout()`` names:

- conditional -> conditional: new class k starts as the source evaluated at the soft class vector ``soft[k]``
  (one old class, or the normalised mean of several: a partial name, ``--init-class``, or all of them);
- unconditional -> conditional: the class inputs start at zero, so every new class equals the source;
- conditional -> unconditional: the folded class's contribution moves into the biases (and D's projection into
  its output layer), so the new model equals the source at that class.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from animegen.models.layers import ClassLayout, pixel_norm
from animegen.train.checkpoint import load_checkpoint, models_from_checkpoint
from animegen.train.config import TrainConfig
from animegen.utils import write_json


def class_index(old: list[str], name: str) -> list[int]:
    """The source classes a name refers to: an exact class name or index -> that class; otherwise every class
    whose name contains it as whole words (e.g. 'black hair' -> all 'black hair <eye> eyes' pair classes),
    whose weights are then averaged."""
    name = str(name).strip()
    if name in old:
        return [old.index(name)]
    if name.isdigit() and int(name) < len(old):
        return [int(name)]
    words = name.replace("_", " ").split()
    matches = [i for i, c in enumerate(old) if _contains_words(c.replace("_", " ").split(), words)]
    if not matches:
        raise ValueError(f"class {name!r} is not in the source model's classes (nor part of any): "
                         f"{', '.join(old) or '(none)'}")
    return matches


def _contains_words(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def class_index_map(old: list[str], new: list[str], class_map: dict[str, str] | None = None,
                    init_class: str | None = None) -> list[list[int]]:
    """For each new class, the old classes it starts from (their mean; [] = the mean of all old classes).

    Order of precedence: an explicit ``class_map`` entry (new -> old name, index or partial name), a class of the
    same name, ``init_class``, else the mean of all old classes.
    """
    class_map = dict(class_map or {})
    unknown = sorted(set(class_map) - set(new))
    if unknown:
        raise ValueError(f"class map names classes the new dataset lacks: {', '.join(unknown)}")
    fallback = class_index(old, init_class) if init_class is not None else []
    out: list[list[int]] = []
    for name in new:
        if name in class_map:
            out.append(class_index(old, str(class_map[name])))
        elif name in old:
            out.append([old.index(name)])
        else:
            out.append(fallback)
    return out


def describe_classes(old: list[str], idx: list[int]) -> str:
    if not idx:
        return "mean of source classes"
    return old[idx[0]] if len(idx) == 1 else f"mean of {len(idx)} classes: {', '.join(old[i] for i in idx)}"


def soft_class(c_dim: int, idx: list[int]) -> torch.Tensor:
    """The normalised soft class vector of the old classes ``idx`` (all of them when empty)."""
    v = torch.zeros(c_dim)
    v[idx if idx else slice(None)] = 1.0
    return v / v.sum()


def _gain(model: nn.Module, name: str) -> float:
    """The factor a layer applies to a stored tensor at run time (equalised learning rate), 1 for others."""
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    leaf = name.rsplit(".", 1)[-1]
    return float(getattr(owner, f"{leaf}_gain", 1.0)) if leaf in ("weight", "bias") else 1.0


def effective_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors as they act at run time (float32 copies, gains applied)."""
    return {k: (v.detach().float() * _gain(model, k)) if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()}


def _over_classes(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Columns (dim 1) over old classes -> columns over new classes: new[:, k] = sum_j m[k, j] old[:, j]."""
    return torch.einsum("oj...,kj->ok...", t, m.to(t))


def transfer_weights(src: nn.Module, dst: nn.Module, soft: torch.Tensor | None,
                     fold: torch.Tensor | None = None) -> dict[str, list]:
    """Load ``src``'s weights into ``dst`` so that ``dst`` computes ``src``'s function (see the module doc).

    ``soft`` [dst classes, src classes]: each row the soft class vector a new class starts from (when both are
    conditional). ``fold`` [src classes]: the class an unconditional ``dst`` takes from a conditional ``src``.
    Returns what was loaded (as is), remapped (class-dependent or rescaled) and skipped (with the reason).
    """
    s, d = effective_state(src), effective_state(dst)
    s_c, d_c = src.c_dim, dst.c_dim
    s_lay, d_lay = src.class_layout(), dst.class_layout()
    if s_c and d_c and _shape_of(s_lay) != _shape_of(d_lay):
        raise ValueError("the source and the new model read their classes differently (cond_mode "
                         f"{getattr(src, 'cond_mode', '?')} -> {getattr(dst, 'cond_mode', '?')}); "
                         "transfer needs the same cond_mode, or an unconditional source")
    new = _class_inputs(s, d, s_lay, d_lay, bool(s_c), bool(d_c), soft, fold)
    remapped = set(new)

    # class embeddings: remapped like one-hot columns; a new one starts at zero (in G, kept at its random init,
    # since the columns that read it start at zero and pixel-normalising a zero vector would blow up gradients)
    for name in (d_lay if d_c else s_lay).embeddings():
        if s_c and d_c:
            new[name] = _over_classes(s[name], soft)
        elif d_c and any(p.embed == name for p in d_lay.projections):
            new[name] = torch.zeros_like(d[name])
        if name in new:
            remapped.add(name)
    if s_c and not d_c:  # D's projection term at the folded class becomes part of its output layer
        for proj in s_lay.projections:
            new[proj.out] = s[proj.out] + proj.scale * (s[proj.embed] @ fold.to(s[proj.embed]))[None]
            remapped.add(proj.out)

    # per-class buffers (the per-class mean w): rows remapped; from / to the class-independent buffer
    for rows, mean in (d_lay if d_c else s_lay).per_class:
        if s_c and d_c:
            new[rows] = soft.to(s[rows]) @ s[rows]
        elif d_c:
            new[rows] = s[mean].expand_as(d[rows]).clone()
        else:
            new[mean] = fold.to(s[rows]) @ s[rows]
        remapped.add(rows if d_c else mean)

    report: dict[str, list] = {"loaded": [], "remapped": sorted(remapped), "skipped": []}
    for name, d_val in d.items():
        if name in new:
            continue
        if name not in s:
            report["skipped"].append([name, "not in source"])
        elif s[name].shape != d_val.shape:
            report["skipped"].append([name, f"shape {list(s[name].shape)} -> {list(d_val.shape)}"])
        else:
            new[name] = s[name]
            report["loaded"].append(name)
    s_raw, d_raw = src.state_dict(), dst.state_dict()
    out = {k: (new[k] / _gain(dst, k)).to(v.dtype) if v.is_floating_point() else new[k]
           for k, v in d_raw.items() if k in new}
    for name in report["loaded"]:  # same layer, same gain: the stored tensor itself, bit for bit
        if _gain(src, name) == _gain(dst, name):
            out[name] = s_raw[name].detach().clone()
    dst.load_state_dict({**d_raw, **out})
    return report


def _class_inputs(s: dict[str, torch.Tensor], d: dict[str, torch.Tensor], s_lay: ClassLayout,
                  d_lay: ClassLayout, s_c: bool, d_c: bool, soft: torch.Tensor | None,
                  fold: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The layers that read the class (effective weights and biases): the leading (non-class) columns carry over;
    the class columns are remapped (both conditional), zeroed (a conditional target) or folded into the bias (an
    unconditional target). A layer whose other dimensions differ is left out (``transfer_weights`` skips it)."""
    new: dict[str, torch.Tensor] = {}
    for inp in (d_lay if d_c else s_lay).inputs:
        # a layer that reads only the class (ClassWeight) exists in the conditional model only: zero columns
        s_w = s.get(inp.weight, s[inp.bias][:, None][:, :0])
        d_w = d.get(inp.weight, d[inp.bias][:, None][:, :0])
        s_base, d_base = s_w.shape[1] - _width(s_lay, inp.weight), d_w.shape[1] - _width(d_lay, inp.weight)
        if s_base != d_base or s_w.shape[0] != d_w.shape[0] or s_w.shape[2:] != d_w.shape[2:]:
            continue  # an incompatible layer: skipped below
        w = d_w.clone()
        w[:, :d_base] = s_w[:, :s_base]
        bias = s[inp.bias].clone()
        s_cls = s_w[:, s_base:]
        if s_c and d_c:
            w[:, d_base:] = s_cls if inp.embed else _over_classes(s_cls, soft)  # embedded: the embedding remaps
        elif d_c:
            w[:, d_base:] = 0  # a class input that starts with no effect: every new class is the source
        else:  # fold the class into the bias (a kernel sees a constant map: its spatial taps sum)
            y = fold.to(s_cls)
            if inp.embed:
                y = s[inp.embed] @ y
                y = pixel_norm(y[None], dim=1)[0] if inp.normalise else y
            taps = s_cls.sum(dim=tuple(range(2, s_cls.ndim))) if s_cls.ndim > 2 else s_cls
            bias = bias + taps @ y
        if inp.weight in d:
            new[inp.weight] = w
        new[inp.bias] = bias
    return new


def _shape_of(layout: ClassLayout) -> tuple:
    return (tuple((i.weight, i.embed) for i in layout.inputs), tuple(p.embed for p in layout.projections))


def _width(layout: ClassLayout, weight: str) -> int:
    return next((i.width for i in layout.inputs if i.weight == weight), 0)


# The options that describe a model's architecture: run_transfer takes them from the source model.
ARCH_FIELDS = ("arch", "cond_mode", "resolution", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max",
               "loss")


def inherit_architecture(cfg: TrainConfig, init_model: str | Path, keep: Iterable[str] = ()) -> TrainConfig:
    """``cfg`` with each architecture option (ARCH_FIELDS) taken from the source model's config (the one its
    checkpoint holds), except the options named in ``keep`` (those the user gave: they stay as set, even at their
    default value, e.g. another resolution, whose incompatible layers ``init_from`` then skips) and those ``cfg``
    sets to a non-default value."""
    source = TrainConfig.from_dict(load_checkpoint(init_model, mmap=True)["config"])
    defaults, keep = TrainConfig(), set(keep)
    inherited = {k: getattr(source, k) for k in ARCH_FIELDS
                 if k not in keep and getattr(cfg, k) == getattr(defaults, k)}
    return dataclasses.replace(cfg, **inherited)


def init_from(G: nn.Module, D: nn.Module, G_ema: nn.Module, cfg: TrainConfig, init_model: str | Path,
              class_names: list[str], out: Path | None = None) -> dict:
    """Start G, D and G_ema from the Model ``init_model`` (see ``transfer_weights``; ``cfg``'s class_map and
    init_class say where each new class starts); returns a report of what was loaded, remapped and skipped,
    also written to ``out/init_report.json`` when ``out`` is given."""
    state = load_checkpoint(init_model)
    src_G, src_D, src_G_ema, src_cfg = models_from_checkpoint(state)
    if src_cfg.arch != cfg.arch:
        raise ValueError(f"--init-from {init_model}: a {src_cfg.arch} model cannot initialise a {cfg.arch}")
    old = list(state["class_names"])
    index_map = class_index_map(old, class_names, cfg.class_map, cfg.init_class)
    fold = (class_index(old, cfg.init_class) if cfg.init_class else []) if old and not class_names else None
    soft = torch.stack([soft_class(len(old), js) for js in index_map]) if old and class_names else None
    fold_vec = soft_class(len(old), fold) if fold is not None else None
    reports = {name: transfer_weights(src, dst, soft, fold_vec)
               for name, src, dst in (("G", src_G, G), ("D", src_D, D), ("G_ema", src_G_ema, G_ema))}
    if not any(r["loaded"] or r["remapped"] for r in reports.values()):
        raise ValueError(f"--init-from {init_model}: no tensor is compatible with this model "
                         f"(source {src_cfg.arch} at {src_cfg.resolution} px, target at {cfg.resolution} px)")
    classes = {new: describe_classes(old, js) for new, js in zip(class_names, index_map)}
    summary = {"source": str(init_model), "source_classes": old, "class_init": classes,
               "folded_class": describe_classes(old, fold) if fold is not None else None,
               **{f"{k}_{part}": len(v[part]) for k, v in reports.items() for part in ("loaded", "remapped")},
               "skipped": {k: v["skipped"] for k, v in reports.items()}}
    print(f"init-from {init_model}: " + ", ".join(
        f"{k} {len(v['loaded'])} loaded / {len(v['remapped'])} remapped / {len(v['skipped'])} skipped"
        for k, v in reports.items()), flush=True)
    if out is not None:
        write_json(Path(out) / "init_report.json", summary)
    return summary
