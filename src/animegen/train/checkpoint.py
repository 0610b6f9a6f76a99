"""Checkpoints: atomic save, load (weights_only), rebuilding models, and init-from with class remapping."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import build_models
from ..utils import atomic_torch_save
from .config import TrainConfig


def checkpoint_path(path: str | Path) -> Path:
    """A Model directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    return p / "checkpoint.pt" if p.is_dir() else p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    p = checkpoint_path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p} (expected a Model directory holding checkpoint.pt)")
    return torch.load(p, map_location=map_location, weights_only=True)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_torch_save(state, path)


def model_kwargs(cfg: TrainConfig, c_dim: int, img_channels: int) -> dict[str, Any]:
    return dict(c_dim=c_dim, resolution=cfg.resolution, img_channels=img_channels, z_dim=cfg.z_dim,
                channel_base=cfg.channel_base, channel_max=cfg.channel_max, cond_mode=cfg.cond_mode,
                w_dim=cfg.w_dim, mapping_layers=cfg.mapping_layers)


def models_from_checkpoint(state: dict[str, Any]) -> tuple[nn.Module, nn.Module, nn.Module, TrainConfig]:
    """(G, D, G_ema, config) rebuilt from a checkpoint's own description, weights loaded."""
    cfg = TrainConfig.from_dict(state["config"]).resolved()
    G, D = build_models(cfg.arch, **model_kwargs(cfg, len(state["class_names"]), state["img_channels"]))
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    G_ema = copy.deepcopy(G)
    G_ema.load_state_dict(state["G_ema"])
    return G, D, G_ema.eval().requires_grad_(False), cfg


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The sampling generator (G_ema) of a Model directory, its checkpoint.pt, or a snapshots/G_ema-*.pt file,
    in eval mode, and the metadata (config, class_names, images_seen)."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"]).resolved()
    G_ema, _ = build_models(cfg.arch, **model_kwargs(cfg, len(state["class_names"]), state["img_channels"]))
    G_ema.load_state_dict(state["G_ema"])
    G_ema.eval().requires_grad_(False)
    meta = {"config": cfg, "class_names": list(state["class_names"]), "images_seen": state["images_seen"]}
    return G_ema.to(device), meta


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
    """For each new class, the old classes its weights start from (their mean; [] = the mean of all old classes).

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


def _class_mean(slots: torch.Tensor, dim: int, idx: list[int]) -> torch.Tensor:
    """The mean of the class slots ``idx`` along ``dim`` (all of them when ``idx`` is empty)."""
    if idx:
        slots = slots.index_select(dim, torch.tensor(idx, dtype=torch.long, device=slots.device))
    return slots.mean(dim=dim)


def _gains(module: nn.Module, name: str) -> tuple[float, float]:
    owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
    return float(getattr(owner, "weight_gain", 1.0)), float(getattr(owner, "bias_gain", 1.0))


def transfer_weights(src: nn.Module, dst: nn.Module, index_map: list[list[int]],
                     fold_class: list[int] | None = None) -> dict[str, list]:
    """Copy every compatible tensor of ``src`` into ``dst``; remap the class slots of class-dependent tensors.

    Class-dependent tensors (``class_params()``: the class columns of the first layer, class embeddings, per-class
    w averages) keep their non-class part and take, for new class k, the mean of the old classes ``index_map[k]``
    (all old classes when empty). From a conditional source to an unconditional target, the old classes
    ``fold_class`` (their mean) are folded into the layer's bias, so the new model starts as that class.
    """
    s_state, d_state = src.state_dict(), dst.state_dict()
    s_cls, d_cls = src.class_params(), dst.class_params()
    s_c, d_c = getattr(src, "c_dim", 0), getattr(dst, "c_dim", 0)
    report: dict[str, list] = {"loaded": [], "remapped": [], "skipped": []}
    new_state = {}
    for name, d_val in d_state.items():
        if name not in s_state:
            report["skipped"].append([name, "not in source"])
            continue
        s_val = s_state[name]
        if name in d_cls or name in s_cls:
            dim = d_cls.get(name, s_cls.get(name))
            d_base = d_val.shape[dim] - (d_c if name in d_cls else 0)
            s_base = s_val.shape[dim] - (s_c if name in s_cls else 0)
            if name == "w_avg_class":
                d_base = s_base = 0
            other = [i for i in range(d_val.ndim) if i != dim]
            if d_base != s_base or any(d_val.shape[i] != s_val.shape[i] for i in other):
                report["skipped"].append([name, f"shape {list(s_val.shape)} -> {list(d_val.shape)}"])
                continue
            out = d_val.clone()
            out.narrow(dim, 0, d_base).copy_(s_val.narrow(dim, 0, s_base))
            if name in d_cls:
                if name == "w_avg_class" and not s_c:
                    out.copy_(s_state["w_avg"].expand_as(out))
                elif s_c:
                    old = s_val.narrow(dim, s_base, s_c)
                    for k, js in enumerate(index_map):
                        out.select(dim, d_base + k).copy_(_class_mean(old, dim, js))
                else:
                    out.narrow(dim, d_base, d_c).zero_()  # new class input starts with no effect
            elif fold_class is not None and s_c:
                if name == "w_avg_class":
                    continue
                bias_name = name[: -len("weight")] + "bias"
                col = _class_mean(s_val.narrow(dim, s_base, s_c), dim, fold_class)
                if name.endswith("weight") and bias_name in d_state:
                    s_wg, _ = _gains(src, name)
                    _, d_bg = _gains(dst, bias_name)
                    contrib = col.sum(dim=tuple(range(1, col.ndim))) if col.ndim > 1 else col
                    new_state[bias_name] = s_state[bias_name] + contrib * s_wg / d_bg
            new_state[name] = out
            report["remapped"].append(name)
        elif s_val.shape == d_val.shape:
            new_state.setdefault(name, s_val.clone())
            report["loaded"].append(name)
        else:
            report["skipped"].append([name, f"shape {list(s_val.shape)} -> {list(d_val.shape)}"])
    if fold_class is not None and s_c and not d_c and "w_avg" in d_state:
        new_state["w_avg"] = _class_mean(s_state["w_avg_class"], 0, fold_class).clone()
    dst.load_state_dict({**d_state, **new_state})
    return report
