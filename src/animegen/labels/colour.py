"""The colour tagger: a small CNN that predicts hair colour and eye colour of a face; the model and its inference.

It is trained on a labelled set (`animegen tagger train`, :mod:`animegen.labels.colour_train`), labels sets that
have no tags through a probability table (`animegen tagger predict`, :func:`run_tagger_predict`, read back by the
label stage like any tagger's table), and scores whether generated images show the requested colours (the
evaluation stage calls :func:`predict_colours` on images in [-1, 1]).

Targets come from an ImageSet's class names (:func:`hair_eye_targets`): pair classes "<hair> hair <eye> eyes",
multi-hot columns "<c> hair" / "<c> eyes", or hair-only / eye-only classes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from animegen.config import Config, opt
from animegen.data.dataset import index_rows
from animegen.labels.tags import JOIN_KEYS, TagTable, row_key, write_prob_table
from animegen.utils import resolve_device, write_json

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


def to_model_input(x: torch.Tensor, resolution: int) -> torch.Tensor:
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
            outs.append(fn(to_model_input(chunk.to(dev), model.resolution)))
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


# ------------------------------------------------------------------------------------------------ prediction
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
