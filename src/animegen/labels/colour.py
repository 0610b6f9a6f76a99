"""The colour tagger: a small CNN that predicts hair colour and eye colour of a face.

It is trained on a labelled set (`animegen tagger train`), labels sets that have no tags through a probability
table (`animegen tagger predict`, read back by the label stage like any tagger's table), and scores whether
generated images show the requested colours (the evaluation stage calls :func:`predict_colours` on images in
[-1, 1]).

Targets come from an ImageSet's class names (:func:`hair_eye_targets`): pair classes "<hair> hair <eye> eyes",
multi-hot columns "<c> hair" / "<c> eyes", or hair-only / eye-only classes. Training holds the whole set as a
uint8 tensor at the tagger's resolution and augments in torch with horizontal flips and small shifts only: no
augmentation touches hue, since hue is the target. On the CPU a seed fixes initialisation, data order and
augmentation, so a run is reproducible bit for bit (same torch thread count).
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from animegen.config import Config, opt
import torch
import torch.nn.functional as F
from torch import nn

from animegen.data.splits import HELDOUT, TRAIN, assign_splits
from animegen.labels.tags import JOIN_KEYS, TagTable, row_key, write_prob_table
from animegen.utils import atomic_torch_save, atomic_write_bytes, resolve_device, write_json

FORMAT = "animegen-colour-tagger/1"

_PAIR = re.compile(r"^(?P<hair>.+?)[ _]hair[ _](?P<eye>.+?)[ _]eyes?$")
_HAIR = re.compile(r"^(?P<hair>.+?)[ _]hair$")
_EYE = re.compile(r"^(?P<eye>.+?)[ _]eyes?$")


# --------------------------------------------------------------------------------------------------- targets
def parse_colour_class(name: str) -> tuple[str | None, str | None]:
    """(hair colour, eye colour) named by one class: 'blonde hair red eyes', 'blonde hair', 'red_eyes', ..."""
    name = name.strip().lower()
    for pattern in (_PAIR, _HAIR, _EYE):
        m = pattern.match(name)
        if m:
            groups = m.groupdict()
            return groups.get("hair"), groups.get("eye")
    return None, None


def hair_eye_targets(imageset) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(hair_idx int64 [N], eye_idx int64 [N], hair_names, eye_names) from an ImageSet's class names.

    -1 marks an image whose colour is unknown: a class that names no hair (or eye) colour, a multi-hot row with
    none or several hair (or eye) columns set, or a negative class id. Names keep the order in which the class
    list first mentions them.
    """
    if imageset.labels is None:
        raise ValueError(
            f"{imageset.source!r} has no labels; the colour tagger needs hair/eye classes: label it first "
            "(`animegen label`) or use a labelled set such as synthetic:?labels=pair"
        )
    parsed = [parse_colour_class(c) for c in imageset.class_names]
    hair_names = list(dict.fromkeys(h for h, _ in parsed if h))
    eye_names = list(dict.fromkeys(e for _, e in parsed if e))
    if not hair_names and not eye_names:
        raise ValueError(
            f"none of the classes {imageset.class_names[:6]}... names a hair or eye colour; expected class names "
            "like 'blonde hair red eyes', 'blonde hair' or 'red eyes'"
        )
    hair_of = np.array([hair_names.index(h) if h else -1 for h, _ in parsed], np.int64)
    eye_of = np.array([eye_names.index(e) if e else -1 for _, e in parsed], np.int64)
    labels = np.asarray(imageset.labels)
    if labels.ndim == 1:
        ok = (labels >= 0) & (labels < len(parsed))
        safe = np.where(ok, labels, 0)
        return np.where(ok, hair_of[safe], -1), np.where(ok, eye_of[safe], -1), hair_names, eye_names
    on = labels >= 0.5

    def one_of(column_idx: np.ndarray, k: int) -> np.ndarray:
        hot = np.zeros((len(labels), max(k, 1)), bool)
        for col, idx in enumerate(column_idx):
            if idx >= 0:
                hot[:, idx] |= on[:, col]
        return np.where(hot.sum(1) == 1, hot.argmax(1), -1).astype(np.int64)

    return one_of(hair_of, len(hair_names)), one_of(eye_of, len(eye_names)), hair_names, eye_names


# ------------------------------------------------------------------------------------------------------ model
class ColourTagger(nn.Module):
    """Four conv+BN+ReLU blocks (strides 2, 2, 2, 1) on 64 px, avg ‖ max pooling, a hair head and an eye head.

    Width 32 gives about 250k parameters and ~20 M multiply-adds per image. Input: float NCHW in [-1, 1] at
    ``resolution`` (:func:`predict_colours` resizes other sizes). ``forward`` returns (hair_logits, eye_logits);
    ``features`` the pooled vector before the heads (the embedding the clustering stage can use).
    """

    def __init__(self, hair_names: list[str], eye_names: list[str], width: int = 32, resolution: int = 64):
        super().__init__()
        self.hair_names, self.eye_names = list(hair_names), list(eye_names)
        self.width, self.resolution = width, resolution
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        strides = [2, 2, 2, 1]
        self.body = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(cin, cout, 3, s, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
            for cin, cout, s in zip(chans[:-1], chans[1:], strides)
        ])
        self.feature_dim = 2 * chans[-1]
        self.dropout = nn.Dropout(0.2)
        self.hair_head = nn.Linear(self.feature_dim, len(self.hair_names)) if self.hair_names else None
        self.eye_head = nn.Linear(self.feature_dim, len(self.eye_names)) if self.eye_names else None

    def config(self) -> dict[str, Any]:
        return {"hair_names": self.hair_names, "eye_names": self.eye_names, "width": self.width,
                "resolution": self.resolution}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 4 and x.shape[1] == 3, x.shape
        h = self.body(x)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        f = self.dropout(self.features(x))
        return (self.hair_head(f) if self.hair_head is not None else None,
                self.eye_head(f) if self.eye_head is not None else None)


def load_colour_tagger(path: str | Path, device: str | torch.device = "cpu") -> ColourTagger:
    """A ColourTagger from ``colour_tagger.pt`` (or the directory holding it), in eval mode on ``device``."""
    path = Path(path)
    if path.is_dir():
        path = path / "colour_tagger.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no colour tagger here; train one with `animegen tagger train`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a colour tagger checkpoint (format {FORMAT})")
    model = ColourTagger(**ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.to(resolve_device(str(device))).eval()


def _to_model_input(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 NHWC, or float NCHW in [-1, 1] -> float NCHW in [-1, 1], 3 channels, ``resolution`` px."""
    if x.dtype == torch.uint8:
        assert x.ndim == 4 and x.shape[3] in (1, 3), f"uint8 images must be NHWC with 1 or 3 channels: {x.shape}"
        x = x.permute(0, 3, 1, 2).float().div(127.5).sub(1)
    else:
        assert x.ndim == 4 and x.shape[1] in (1, 3), f"float images must be NCHW with 1 or 3 channels: {x.shape}"
        x = x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[2] != resolution or x.shape[3] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=x.shape[2] > resolution)
    return x.contiguous()


@torch.no_grad()
def _batched(model: ColourTagger, images, batch: int, device: str | torch.device, fn) -> list[torch.Tensor]:
    dev = resolve_device(str(device))
    was_training = model.training
    model.eval().to(dev)
    outs = []
    try:
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            chunk = chunk if isinstance(chunk, torch.Tensor) else torch.from_numpy(np.array(chunk))
            outs.append(fn(_to_model_input(chunk.to(dev), model.resolution)))
    finally:
        model.train(was_training)
    return outs


def predict_colours(model: ColourTagger, images: np.ndarray | torch.Tensor, batch: int = 256,
                    device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(hair_probs float32 [N, H], eye_probs float32 [N, E]) for uint8 NHWC images or float NCHW in [-1, 1].

    Other resolutions are resized to the tagger's; grayscale is repeated to three channels. A head the tagger
    does not have (trained on hair-only or eye-only classes) gives an [N, 0] array.
    """
    def probs(x: torch.Tensor) -> torch.Tensor:
        hair, eye = model(x)
        parts = [F.softmax(h, 1) if h is not None else x.new_zeros(len(x), 0) for h in (hair, eye)]
        return torch.cat(parts, 1).float().cpu()

    out = _batched(model, images, batch, device, probs)
    allp = torch.cat(out).numpy() if out else np.zeros((0, len(model.hair_names) + len(model.eye_names)), np.float32)
    nh = len(model.hair_names)
    return allp[:, :nh], allp[:, nh:]


def colour_features(model: ColourTagger, images: np.ndarray | torch.Tensor, batch: int = 256,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """The tagger's penultimate features (avg ‖ max pooled body output), float32 [N, model.feature_dim]."""
    out = _batched(model, images, batch, device, lambda x: model.features(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, model.feature_dim), np.float32)


def colour_tag_names(model: ColourTagger) -> list[str]:
    """Danbooru-style tag names of the tagger's outputs: '<colour>_hair' ..., then '<colour>_eyes' ..."""
    return ([f"{c.replace(' ', '_')}_hair" for c in model.hair_names]
            + [f"{c.replace(' ', '_')}_eyes" for c in model.eye_names])


# ---------------------------------------------------------------------------------------------------- splits
def index_rows(imageset) -> list[dict] | None:
    """Per-image index rows: the ImageSet's meta, else the index.jsonl of the packed directory it came from."""
    if imageset.meta is not None:
        return imageset.meta
    path = Path(str(imageset.source).removeprefix("file://")) / "index.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(rows) == len(imageset):
            return rows
    return None


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
            x = _to_model_input(x, resolution).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
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


@dataclass
class TaggerPredictConfig(Config):
    """Options of `animegen tagger predict` (round-trips through JSON)."""

    batch: int = field(default=256, metadata=opt("batch size"))
    device: str = field(default="auto", metadata=opt("device", choices=("auto", "cpu", "cuda")))
    key: str = field(default="stem", metadata=opt("what names the table's rows (the label stage's join keys)",
                                                  choices=JOIN_KEYS))


def _row_keys(rows: list[dict], key: str) -> tuple[str, list[str]]:
    """(key used, one unique name per row): ``key`` when every row has it and the names are unique, else the
    index ``id``, else the row position (the table's header says which)."""
    for k in dict.fromkeys((key, "id", "row")):
        try:
            names = [row_key(r, i, k) for i, r in enumerate(rows)]
        except ValueError:
            continue
        if len(set(names)) == len(names):
            return k, names
    raise AssertionError("row positions are always unique")


def run_tagger_predict(config: TaggerPredictConfig, model: str | Path, dataset: str, out_dir: str | Path) -> Path:
    """Stage function of `animegen tagger predict`: write ``out_dir/colour_probs.csv`` for ``dataset``.

    The table's columns are the tags '<colour>_hair' / '<colour>_eyes'; its rows are named by ``config.key``
    (default the file stem, the label stage's default join key), falling back to the index id, then the row
    position, when rows lack that key or share it; the header's first cell names the key used. The label stage
    reads it as a tag source (``--tags table:OUT/colour_probs.csv --join <that key>``). manifest.json (model,
    dataset, count, tags, key) is written last.
    """
    from animegen.data.dataset import open_dataset

    if config.key not in JOIN_KEYS:
        raise ValueError(f"tagger predict key={config.key!r}; choose one of {', '.join(JOIN_KEYS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    tagger = load_colour_tagger(model, config.device)
    imageset = open_dataset(dataset)
    key, names_of_rows = _row_keys(index_rows(imageset) or [{} for _ in range(len(imageset))], config.key)
    hair, eye = predict_colours(tagger, imageset.images, config.batch, config.device)
    tags = colour_tag_names(tagger)
    table = TagTable(names_of_rows, tags, np.concatenate([hair, eye], 1), "colour tagger")
    path = write_prob_table(table, out / "colour_probs.csv", key_name=key)
    manifest = {"table": path.name, "key": key, "count": len(table), "tags": tags, "model": str(model),
                "dataset": dataset, "config": config.to_dict()}
    write_json(out / "manifest.json", manifest)
    return path
