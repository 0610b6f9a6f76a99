"""Checkpoints: atomic save, load (weights_only), rebuilding models from a checkpoint's own description."""
from __future__ import annotations

import copy
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from animegen import __version__
from animegen.models import build_models
from animegen.train.config import TrainConfig
from animegen.utils import atomic_torch_save

# What a checkpoint holds (see ``TrainState.checkpoint`` in state.py). A sampling snapshot (snapshots/G_ema-*.pt)
# has the SNAPSHOT_KEYS; a Model's checkpoint.pt adds G and D, and, when written by training, the state to resume.
SNAPSHOT_KEYS = ("G_ema", "config", "class_names", "img_channels", "images_seen")
MODEL_KEYS = ("G", "D")
TRAINING_KEYS = ("opt_G", "opt_D", "step", "rng", "sampler", "regularizers")
KNOWN_KEYS = frozenset(SNAPSHOT_KEYS + MODEL_KEYS + TRAINING_KEYS + ("version",))
DAMAGED = "damaged checkpoint"
FOREIGN = "not an animegen checkpoint"
NEWER = "checkpoint of a newer animegen"
PARTIAL = "not a full checkpoint"
OLDER = "checkpoint of an older model layout"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: ``path``, the ``problem`` (damaged checkpoint, not an animegen
    checkpoint, ...) and the ``reason``. A ValueError, so the CLI reports it as a user error (exit status 2)."""

    def __init__(self, path: str | Path, problem: str, reason: str):
        self.path, self.problem, self.reason = Path(path), problem, reason
        super().__init__(f"{path}: {problem}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.reason)


class Checkpoint(dict):
    """The dict ``load_checkpoint`` returns: a key it lacks is a CheckpointError naming the file (e.g. resuming
    from a file without training state, or init-from a sampling snapshot), not a bare KeyError."""

    path: Path = Path("checkpoint.pt")

    def __missing__(self, key):
        if key in TRAINING_KEYS:
            reason = (f"it holds no training state ({key!r}): it can be sampled, evaluated or used for --init-from, "
                      "but not resumed")
        elif key in MODEL_KEYS:
            reason = (f"a sampling snapshot holds G_ema only, not {key!r}: use the run's checkpoint.pt (its Model "
                      "directory) here")
        else:
            reason = f"it has no {key!r}"
        raise CheckpointError(self.path, PARTIAL, reason)


def checkpoint_path(path: str | Path) -> Path:
    """A Model directory or a checkpoint file -> the checkpoint file."""
    p = Path(path)
    return p / "checkpoint.pt" if p.is_dir() else p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> Checkpoint:
    """The checkpoint of a Model directory, its checkpoint.pt or a snapshots/G_ema-*.pt file, read with
    ``torch.load(weights_only=True)`` (no code runs) and checked: a file that is empty, truncated, not a PyTorch
    file, refused by the safe unpickler, not an animegen checkpoint (a plain state dict, missing keys, values of
    the wrong kind, a config this animegen does not read) or written by a newer animegen raises CheckpointError
    with the file and the reason. ``mmap``: map the tensors instead of reading them (a cheap check)."""
    p = checkpoint_path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p} (expected a Model directory holding checkpoint.pt)")
    state = Checkpoint(_validated(_read(p, map_location, mmap), p))
    state.path = p
    return state


def _read(p: Path, map_location, mmap: bool) -> Any:
    """torch.load(weights_only=True) of ``p``, every failure turned into a CheckpointError with its reason."""
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise CheckpointError(p, DAMAGED, f"cannot be read: {e.strerror or e}") from e
    if size == 0:
        raise CheckpointError(p, DAMAGED, "empty file (0 bytes)")
    is_zip = head.startswith(b"PK\x03\x04")
    if len(head) < 4 and b"PK\x03\x04".startswith(head):
        raise CheckpointError(p, DAMAGED, f"truncated: {size} bytes, the start of a zip archive")
    if is_zip:  # torch.save's format: a zip archive holding <name>/data.pkl and the tensors' records
        if not zipfile.is_zipfile(p):
            raise CheckpointError(p, DAMAGED, f"truncated: the end of its zip archive (the central directory) is "
                                              f"missing ({size} bytes)")
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise CheckpointError(p, DAMAGED, f"unreadable zip archive ({size} bytes): {e}") from e
        if not any(n.endswith("/data.pkl") and n.count("/") == 1 for n in names):
            raise CheckpointError(p, FOREIGN, f"a zip archive but not a PyTorch file (no data.pkl among its "
                                              f"{len(names)} entries)")
    elif not head.startswith(b"\x80"):  # nor a pickle (torch's legacy format)
        raise CheckpointError(p, FOREIGN, f"not a PyTorch file (it begins with {head!r})")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the reason below says what matters
            warnings.simplefilter("ignore")
            return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as e:
        code = _code_globals(p, is_zip)
        if code:
            reason = f"it carries code ({', '.join('GLOBAL ' + g for g in code)})"
        else:
            reason = _torch_reason(e)
        raise CheckpointError(p, FOREIGN, f"refused by torch.load(weights_only=True): {reason}") from e
    except Exception as e:  # noqa: BLE001  (torch reports damage as OSError, RuntimeError, EOFError, KeyError...)
        raise CheckpointError(p, DAMAGED, f"unreadable ({size} bytes): {type(e).__name__}: {_torch_reason(e)}") from e


def _torch_reason(e: BaseException) -> str:
    """The informative lines of a torch.load error, without its boilerplate."""
    noise = ("weights only load failed", "please file an issue", "check the documentation", "this is an internal "
             "miniz error", "if you are seeing this error")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    keep = [ln for ln in lines if not ln.lower().startswith(noise)]
    text = " ".join(keep or lines[:1]) or type(e).__name__
    text = text.split(" This is an internal miniz error")[0]
    return text if len(text) <= 300 else text[:297] + "..."


_SAFE_MODULES = ("torch", "collections", "builtins", "_codecs", "numpy")


def _code_globals(p: Path, is_zip: bool) -> list[str]:
    """The globals (functions, classes) a pickle names outside torch's own, read with pickletools (nothing runs)."""
    try:
        if is_zip:
            with zipfile.ZipFile(p) as zf:
                name = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
                data = zf.read(name)
        else:
            data = p.read_bytes()
        found, strings, memo = [], [], {}
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                           "BINSTRING", "STRING"):
                strings.append(str(arg))
            elif op.name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = strings[-1] if strings else None
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(int(arg)) or "?")
            elif op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL":
                found.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
        out = []
        for g in found:
            if g.split(".")[0] not in _SAFE_MODULES and g not in out:
                out.append(g)
        return out
    except Exception:  # noqa: BLE001  (a broken pickle: torch's own reason is reported instead)
        return []


def _version(text: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", text)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _is_state_dict(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _validated(obj: Any, p: Path) -> dict[str, Any]:
    """``obj`` if it has the structure of an animegen checkpoint or sampling snapshot, else a CheckpointError."""
    wanted = ", ".join(SNAPSHOT_KEYS)
    if not isinstance(obj, dict):
        raise CheckpointError(p, FOREIGN, f"it holds a {type(obj).__name__}, not the dict of an animegen checkpoint "
                                          f"({wanted}, ...)")
    keys = [str(k) for k in obj]
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} keys)" if len(keys) > 5 else "")
    if not set(keys) & KNOWN_KEYS:
        if _is_state_dict(obj):
            raise CheckpointError(p, FOREIGN, f"a plain state dict of {len(obj)} tensors ({shown}), without the "
                                              f"{wanted}, ... of an animegen checkpoint")
        raise CheckpointError(p, FOREIGN, f"its keys are {shown or '(none)'}; an animegen checkpoint holds "
                                          f"{wanted}, ...")
    version = obj.get("version")
    if version is not None:
        if not isinstance(version, str):
            raise CheckpointError(p, FOREIGN, f"its version is {version!r}, not a version string")
        mine, theirs = _version(__version__), _version(version)
        if mine and theirs and theirs > mine:
            raise CheckpointError(p, NEWER, f"format version {version}; this animegen ({__version__}) reads "
                                            f"checkpoints of animegen <= {mine[0]}.{mine[1]}.x: upgrade animegen")
    missing = [k for k in SNAPSHOT_KEYS if k not in obj]
    if any(k in obj for k in MODEL_KEYS):
        missing += [k for k in MODEL_KEYS if k not in obj]
    if any(k in obj for k in TRAINING_KEYS):
        missing += [k for k in TRAINING_KEYS if k not in obj]
    if missing:
        raise CheckpointError(p, FOREIGN, f"missing keys {', '.join(missing)} (it has {shown})")
    bad = [k for k in ("G_ema",) + MODEL_KEYS if k in obj and not _is_state_dict(obj[k])]
    if bad:
        raise CheckpointError(p, DAMAGED, f"{', '.join(bad)} is not a state dict of named tensors")
    names, channels, seen = obj["class_names"], obj["img_channels"], obj["images_seen"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(p, DAMAGED, f"class_names is {type(names).__name__}, not a list of names")
    for key, value, least in (("img_channels", channels, 1), ("images_seen", seen, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise CheckpointError(p, DAMAGED, f"{key} is {value!r}, not an integer >= {least}")
    if not isinstance(obj["config"], dict):
        raise CheckpointError(p, DAMAGED, f"config is {type(obj['config']).__name__}, not a mapping of options")
    try:
        TrainConfig.from_dict(obj["config"]).with_arch_defaults()
    except (ValueError, TypeError) as e:
        raise CheckpointError(p, FOREIGN, f"its config is not one this animegen reads: {e}") from e
    if "G" in obj:
        g, ema = obj["G"], obj["G_ema"]
        differ = [k for k in set(g) | set(ema) if k not in g or k not in ema or g[k].shape != ema[k].shape]
        if differ:
            raise CheckpointError(p, DAMAGED, f"G and G_ema differ in tensors {', '.join(sorted(differ)[:5])}")
    return obj


def load_weights(module: nn.Module, state: dict[str, Any], key: str) -> None:
    """``module.load_state_dict(state[key])``; tensors that do not fit the model the checkpoint's config describes
    are a CheckpointError naming the file."""
    try:
        module.load_state_dict(state[key])
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        detail = "; ".join(lines)
        detail = detail if len(detail) <= 400 else detail[:397] + "..."
        raise CheckpointError(getattr(state, "path", "checkpoint"), DAMAGED,
                              f"its {key} does not fit the model its config describes (edited, or written by "
                              f"another version of animegen): {detail}") from e


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    atomic_torch_save(state, path)


def model_kwargs(cfg: TrainConfig, c_dim: int, img_channels: int) -> dict[str, Any]:
    return dict(c_dim=c_dim, resolution=cfg.resolution, img_channels=img_channels, z_dim=cfg.z_dim,
                channel_base=cfg.channel_base, channel_max=cfg.channel_max, cond_mode=cfg.cond_mode,
                w_dim=cfg.w_dim, mapping_layers=cfg.mapping_layers)


def models_from_checkpoint(state: dict[str, Any]) -> tuple[nn.Module, nn.Module, nn.Module, TrainConfig]:
    """(G, D, G_ema, config) rebuilt from a checkpoint's own description, weights loaded."""
    cfg = TrainConfig.from_dict(state["config"]).with_arch_defaults()
    G, D = build_models(cfg.arch, **model_kwargs(cfg, len(state["class_names"]), state["img_channels"]))
    load_weights(G, state, "G")
    load_weights(D, state, "D")
    G_ema = copy.deepcopy(G)
    load_weights(G_ema, state, "G_ema")
    return G, D, G_ema.eval().requires_grad_(False), cfg


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The sampling generator (G_ema) of a Model directory, its checkpoint.pt, or a snapshots/G_ema-*.pt file,
    in eval mode, and the metadata (config, class_names, images_seen)."""
    state = load_checkpoint(path)
    cfg = TrainConfig.from_dict(state["config"]).with_arch_defaults()
    G_ema, _ = build_models(cfg.arch, **model_kwargs(cfg, len(state["class_names"]), state["img_channels"]))
    load_weights(G_ema, state, "G_ema")
    G_ema.eval().requires_grad_(False).to(device)
    # BatchNorm (DCGAN) samples with statistics recalibrated from generated batches of the training batch size
    # (models/batchnorm.py); this module is our own copy: the checkpoint file is not changed
    recalibrate_for_sampling(G_ema, list(state["class_names"]), cfg.batch)
    meta = {"config": cfg, "class_names": list(state["class_names"]), "images_seen": state["images_seen"]}
    return G_ema, meta


def sampling_conditions(class_names: list[str]) -> torch.Tensor | None:
    """The condition rows a BatchNorm recalibration draws from: every hair x eye combination for a model whose
    classes are single hair and eye columns (multi-hot, as the evaluation's pictures and accuracy guess it),
    else None (the one-hot row of each class)."""
    if not class_names:
        return None
    from animegen.eval.accuracy import requested_classes

    try:
        requested, _ = requested_classes(class_names, None)
    except ValueError:
        return None
    if requested and all(r.condition.sum() > 1 for r in requested):
        return torch.stack([r.condition for r in requested])
    return None


def recalibrate_for_sampling(G: nn.Module, class_names: list[str], batch: int) -> bool:
    """:func:`animegen.models.batchnorm.recalibrate_batchnorm` with ``batch`` (the training batch size) and the
    model's :func:`sampling_conditions`; in place, a no-op without BatchNorm (StyleGAN)."""
    from animegen.models.batchnorm import RECAL_BATCHES, RECAL_SEED, recalibrate_batchnorm

    return recalibrate_batchnorm(G, RECAL_BATCHES, max(2, int(batch)), RECAL_SEED, sampling_conditions(class_names))
