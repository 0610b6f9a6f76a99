"""Training the colour tagger (:mod:`animegen.labels.colour` holds the model and its inference).

``run_tagger_train(cfg, data, out_dir)`` (`animegen tagger train`) trains on a labelled set. Training holds the
whole set as a uint8 tensor at the tagger's resolution and augments in torch with horizontal flips and small shifts
only: no augmentation touches hue, since hue is the target. On the CPU a seed fixes initialisation, data order and
augmentation, so a run is reproducible bit for bit (same torch thread count). The held-out split follows the
index's ``split`` field when it has one (:func:`holdout_mask`).
"""
from __future__ import annotations

import dataclasses
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from animegen.config import Config, opt
from animegen.data.dataset import index_rows
from animegen.data.splits import HELDOUT, TRAIN, assign_splits
from animegen.labels.colour import FORMAT, ColourTagger, hair_eye_targets, predict_colours, to_model_input
from animegen.utils import atomic_torch_save, atomic_write_bytes, resolve_device, write_json


def holdout_mask(imageset, holdout: float, block: int, seed: int) -> tuple[np.ndarray, dict]:
    """(held-out mask, how it was made): the index's ``split`` field when every row has one and both sides are
    non-empty (any value but "train" is held out), else a block split (``data.splits.assign_splits`` over the
    index ids, or the row numbers)."""
    rows = index_rows(imageset)
    if rows is not None and all("split" in r for r in rows):
        mask = np.array([r["split"] != TRAIN for r in rows])
        if 0 < mask.sum() < len(mask):
            return mask, {"method": "index split field"}
        note = f"the index's split field holds out {'every' if mask.all() else 'no'} image; block split used"
    else:
        note = "no split field in the index; block split used"
    units = [{"id": int(r.get("id", i))} for i, r in enumerate(rows)] if rows else \
        [{"id": i} for i in range(len(imageset))]
    assign_splits(units, holdout, block=block, seed=seed)
    mask = np.array([u["split"] == HELDOUT for u in units])
    if not 0 < mask.sum() < len(mask):
        raise ValueError(f"a block split of {len(units)} images (holdout {holdout}, blocks of {block}) leaves a "
                         "side empty; use a larger set, a larger --holdout or a smaller --block")
    return mask, {"method": "block", "block": block, "holdout": holdout, "seed": seed, "note": note}


# -------------------------------------------------------------------------------------------------- training
@dataclass
class TaggerTrainConfig(Config):
    """Options of `animegen tagger train` (round-trips through JSON)."""

    epochs: int = field(default=10, metadata=opt("passes over the train split"))
    batch: int = field(default=128, metadata=opt("batch size"))
    lr: float = field(default=3e-3, metadata=opt("AdamW learning rate"))
    weight_decay: float = field(default=5e-4, metadata=opt("AdamW weight decay"))
    width: int = field(default=32, metadata=opt("feature maps of the first layer (32: about 250k parameters)"))
    resolution: int = field(default=64, metadata=opt("input size in pixels (images are resized to it)"))
    max_shift: int = field(default=4, metadata=opt(
        "random shifts of up to this many pixels (edges repeated), plus horizontal flips"))
    label_smoothing: float = field(default=0.05, metadata=opt("label smoothing of the cross-entropy"))
    holdout: float = field(default=0.1, metadata=opt("held-out share of blocks when the index has no split"))
    block: int = field(default=32, metadata=opt("consecutive ids per held-out block"))
    seed: int = field(default=0, metadata=opt("seed of initialisation, data order and augmentation"))
    device: str = field(default="auto", metadata=opt("device", choices=("auto", "cpu", "cuda")))
    progress: bool = field(default=False, metadata=opt("one line per epoch on stderr"))



def _resize_uint8(images: np.ndarray, resolution: int, chunk: int = 1024) -> torch.Tensor:
    """uint8 NHWC (any size, 1 or 3 channels) -> uint8 NHWC tensor, 3 channels, ``resolution`` px."""
    parts = []
    for i in range(0, len(images), chunk):
        x = torch.from_numpy(np.array(images[i:i + chunk]))  # a copy: memmaps are read-only
        if x.shape[1] != resolution or x.shape[3] != 3:
            x = to_model_input(x, resolution).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
            x = x.permute(0, 2, 3, 1).contiguous()
        parts.append(x)
    return torch.cat(parts)


def _augment(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and integer shifts of a uint8 NHWC batch, in one gather; hue untouched.

    A shift of (dy, dx) in [-max_shift, max_shift] repeats the edge pixels into the uncovered border.
    """
    n, h, w, _ = x.shape
    dev = x.device
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2, n), generator=gen, device=dev)
    rows = (torch.arange(h, device=dev) + dy[:, None]).clamp_(0, h - 1)
    cols = (torch.arange(w, device=dev) + dx[:, None]).clamp_(0, w - 1)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)
    return x[torch.arange(n, device=dev)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _masked_ce(logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean cross-entropy over the rows whose target is known (>= 0); 0 when none is (no host sync)."""
    known = target >= 0
    per = F.cross_entropy(logits, target.clamp(min=0), reduction="none", label_smoothing=smoothing)
    return (per * known).sum() / known.sum().clamp(min=1)


def _evaluate(model: ColourTagger, images: torch.Tensor, hair: np.ndarray, eye: np.ndarray, batch: int,
              device: torch.device) -> dict:
    hp, ep = predict_colours(model, images, batch, device)
    out: dict[str, Any] = {"count": len(images)}
    both = np.ones(len(images), bool)
    known_both = np.ones(len(images), bool)
    for key, probs, target, names in (("hair", hp, hair, model.hair_names), ("eye", ep, eye, model.eye_names)):
        known = target >= 0
        known_both &= known
        if not names or not known.any():
            out[key] = None
            continue
        pred = probs.argmax(1)
        correct = pred == target
        both &= correct
        cm = np.zeros((len(names), len(names)), np.int64)
        np.add.at(cm, (target[known], pred[known]), 1)
        per = {n: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, n in enumerate(names)}
        out[key] = {
            "accuracy": float(correct[known].mean()),
            "count": int(known.sum()),
            "per_colour": per,
            "per_colour_count": {n: int(cm[i].sum()) for i, n in enumerate(names)},
            "confusion": {"names": names, "rows_true_cols_pred": cm.tolist()},
        }
    if out["hair"] and out["eye"] and known_both.any():
        out["pair_accuracy"] = float(both[known_both].mean())
    return out


def _plot_confusion(conf: dict, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, cm = conf["names"], np.array(conf["rows_true_cols_pred"], float)
    frac = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = 1.2 + 0.5 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(names)):
        for j in range(len(names)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true colour's images")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _fit(model: ColourTagger, x_train: torch.Tensor, y_hair: torch.Tensor, y_eye: torch.Tensor,
         cfg: TaggerTrainConfig, device: torch.device) -> list[dict]:
    """AdamW with a one-cycle schedule over ``cfg.epochs`` passes (seeded order and augmentation); the history."""
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    steps_per_epoch = len(x_train) // cfg.batch
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch,
                                                pct_start=0.15)
    history = []
    t0 = time.perf_counter()
    model.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(x_train), generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch:(step + 1) * cfg.batch]
            x = _augment(x_train[idx], cfg.max_shift, gen).permute(0, 3, 1, 2).float().div_(127.5).sub_(1)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            hl, el = model(x)
            loss = sum(_masked_ce(logits, y[idx], cfg.label_smoothing)
                       for logits, y in ((hl, y_hair), (el, y_eye)) if logits is not None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
        row = {"epoch": epoch + 1, "loss": round(float(loss_sum) / steps_per_epoch, 5),
               "elapsed_s": round(time.perf_counter() - t0, 2)}
        history.append(row)
        if cfg.progress:
            print(f"tagger epoch {row['epoch']}/{cfg.epochs}: loss {row['loss']:.4f} ({row['elapsed_s']:.0f} s)",
                  file=sys.stderr, flush=True)
    model.eval()
    return history


def train_colour_tagger(imageset, out_dir: str | Path, config: TaggerTrainConfig | None = None,
                        **overrides: Any) -> dict:
    """Train a ColourTagger on ``imageset``'s hair/eye classes; write the model and its held-out figures.

    Options come from ``config`` with keyword ``overrides`` (epochs, batch, lr, seed, device, holdout, block,
    width, ...; see TaggerTrainConfig). Held-out images: the index's ``split`` field when every row has one
    (anything but "train" is held out), else a block split. Writes to ``out_dir``: ``colour_tagger.pt``
    (state dict + names + config; ``torch.load(weights_only=True)`` reads it), ``confusion_hair.png``,
    ``confusion_eye.png``, and ``metrics.json`` last. Returns the metrics.
    """
    cfg = dataclasses.replace(config or TaggerTrainConfig(), **overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)
    device = resolve_device(cfg.device)
    hair, eye, hair_names, eye_names = hair_eye_targets(imageset)
    held, split_info = holdout_mask(imageset, cfg.holdout, cfg.block, cfg.seed)
    usable = (hair >= 0) | (eye >= 0)
    train_idx = np.flatnonzero(~held & usable)
    test_idx = np.flatnonzero(held & usable)
    if len(train_idx) < cfg.batch or not len(test_idx):
        raise ValueError(f"{len(train_idx)} training and {len(test_idx)} held-out images with known colours: "
                         f"too few for batch {cfg.batch}; use a larger set or a smaller --batch")

    images = _resize_uint8(imageset.images, cfg.resolution)
    x_train = images[torch.from_numpy(train_idx)].to(device)
    x_test = images[torch.from_numpy(test_idx)]
    del images  # the two sides are copies: do not hold the set three times
    y_hair = torch.from_numpy(hair[train_idx]).to(device)
    y_eye = torch.from_numpy(eye[train_idx]).to(device)

    # Initialisation and dropout draw from torch's global RNG: seed it inside a fork, so the caller's is untouched.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model = ColourTagger(hair_names, eye_names, cfg.width, cfg.resolution).to(device)
        t0 = time.perf_counter()
        history = _fit(model, x_train, y_hair, y_eye, cfg, device)
    train_s = time.perf_counter() - t0
    seen = cfg.epochs * (len(train_idx) // cfg.batch) * cfg.batch

    t1 = time.perf_counter()
    held_out = _evaluate(model, x_test, hair[test_idx], eye[test_idx], 512, device)
    eval_s = time.perf_counter() - t1

    atomic_torch_save({"format": FORMAT, "config": model.config(),
                       "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                       "train_config": cfg.to_dict()}, out / "colour_tagger.pt")
    for key in ("hair", "eye"):
        if held_out[key]:
            _plot_confusion(held_out[key]["confusion"],
                            f"{key} colour, held-out (accuracy {held_out[key]['accuracy']:.1%})",
                            out / f"confusion_{key}.png")
    metrics = {
        "held_out": held_out,
        "hair_accuracy": held_out["hair"]["accuracy"] if held_out["hair"] else None,
        "eye_accuracy": held_out["eye"]["accuracy"] if held_out["eye"] else None,
        "pair_accuracy": held_out.get("pair_accuracy"),
        "split": {**split_info, "train": len(train_idx), "held_out": len(test_idx),
                  "unknown_colour_skipped": int((~usable).sum())},
        "train_time_s": round(train_s, 2),
        "train_img_per_s": round(seen / train_s, 1),
        "eval_time_s": round(eval_s, 2),
        "images_seen": seen,
        "params": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "history": history,
        "dataset": str(imageset.source),
        "config": cfg.to_dict(),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def run_tagger_train(config: TaggerTrainConfig, dataset: str, out_dir: str | Path) -> dict:
    """Stage function of `animegen tagger train`: open ``dataset`` (any open_dataset URI) and train."""
    from animegen.data.dataset import open_dataset

    return train_colour_tagger(open_dataset(dataset), out_dir, config)
