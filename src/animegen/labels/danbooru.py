"""The Danbooru2018 ResNet50 tagger used by the conditional StyleGAN anime paper.

Architecture, tag names and input statistics are those of M Baas's danbooru-pretrained models
(https://github.com/RF5/danbooru-pretrained, MIT; credit M Baas): a torchvision ResNet50 without its
last two children (avgpool, fc), then the fastai head [AdaptiveConcatPool2d, Flatten, BatchNorm1d(4096),
Dropout(0.25), Linear(4096, 512), ReLU, BatchNorm1d(512), Dropout(0.5), Linear(512, 6000)], sigmoid
outputs over the 6,000 tags of ``resources/class_names_6000.json``.

The module is a ``Sequential(body, head)`` like upstream's, so the published ``resnet50-1d.pth`` state
dict (keys ``0.0.weight`` ... ``1.8.bias``) loads as is. Upstream's concat pool puts the max pool
before the average pool (fastai's order); so does this one, or the real weights would read swapped
features. Upstream feeds images resized to 360 px (``transforms.Resize(360)``) normalised with the
Danbooru mean/std; ``input_size`` changes the size (smaller is faster, less accurate).
"""

from __future__ import annotations

import functools
import json
import pickle
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import resnet50

from animegen.labels.tags import TagTable
from animegen.utils import resolve_device

NUM_TAGS = 6000
HEAD_FEATURES = 4096  # 2 x 2048: the concat pool of ResNet50's last feature maps
DEFAULT_INPUT_SIZE = 360


def _resource(name: str) -> str:
    return (resources.files("animegen.labels") / "resources" / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def tag_names() -> tuple[str, ...]:
    """The tagger's 6,000 tag names, in output order."""
    return tuple(json.loads(_resource("class_names_6000.json")))


@functools.lru_cache(maxsize=1)
def danbooru_stats() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel RGB mean and std of Danbooru2018 images in [0, 1]."""
    stats = json.loads(_resource("danbooru_stats.json"))
    return tuple(stats["mean"]), tuple(stats["std"])


class AdaptiveConcatPool2d(nn.Module):
    """[max pool, average pool] over the whole feature map, concatenated on channels (fastai's layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.mp = nn.AdaptiveMaxPool2d(1)
        self.ap = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mp(x), self.ap(x)], 1)


class DanbooruResNet50(nn.Sequential):
    """ResNet50 body + fastai head; ``forward`` takes normalised [N, 3, S, S] floats and returns logits."""

    def __init__(self, num_tags: int = NUM_TAGS, input_size: int = DEFAULT_INPUT_SIZE) -> None:
        body = nn.Sequential(*list(resnet50(weights=None).children())[:-2])
        head = nn.Sequential(
            AdaptiveConcatPool2d(), nn.Flatten(),
            nn.BatchNorm1d(HEAD_FEATURES), nn.Dropout(0.25), nn.Linear(HEAD_FEATURES, 512), nn.ReLU(inplace=True),
            nn.BatchNorm1d(512), nn.Dropout(0.5), nn.Linear(512, num_tags),
        )
        super().__init__(body, head)
        self.input_size = input_size
        mean, std = danbooru_stats()
        # Not persistent: the state dict keeps exactly upstream's keys.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, C] (C = 3, or 1 for grayscale) -> normalised float [N, 3, S, S], S = input_size."""
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[3] in (1, 3), images.shape
        x = images.permute(0, 3, 1, 2).float().div_(255)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        return (x - self.mean) / self.std


def load_tagger(uri: str, sha256: str | None = None, device: str | torch.device = "cpu",
                input_size: int = DEFAULT_INPUT_SIZE) -> DanbooruResNet50:
    """The tagger with the weights at ``uri`` (a path, https:// or s3://; see ``fetch_file``), in eval mode.

    The file is a state dict as upstream publishes it (``torch.save(model.state_dict())``); a fastai
    ``learn.save`` file ({'model': state, 'opt': ...}) is accepted too. A ``sha256`` that does not match
    the file's content is an error.
    """
    from animegen.data.sources import fetch_file

    path = fetch_file(uri, sha256=sha256)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError) as e:  # a pickled model; junk
        raise ValueError(f"{uri}: not a loadable state dict ({type(e).__name__}: {e}); save the weights with "
                         f"torch.save(model.state_dict(), path)") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or "1.8.weight" not in state:
        raise ValueError(f"{uri}: no Danbooru ResNet50 state dict (expected keys like '0.0.weight' and "
                         f"'1.8.weight', the layout of RF5/danbooru-pretrained's resnet50)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    num_tags = state["1.8.weight"].shape[0]
    if num_tags != len(tag_names()):
        raise ValueError(f"{uri}: the checkpoint predicts {num_tags} tags; the shipped tag names are the "
                         f"{len(tag_names())} of class_names_6000.json (use the resnet50 top-6000 weights)")
    model = DanbooruResNet50(num_tags, input_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # absent from old checkpoints
    if missing or unexpected:
        raise ValueError(f"{uri}: state dict does not match the Danbooru ResNet50 layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval().to(resolve_device(str(device)) if isinstance(device, str) else device)


@torch.inference_mode()
def predict_tags(model: DanbooruResNet50, images: np.ndarray, batch: int = 64,
                 device: str | torch.device | None = None, keep: Sequence[str] | None = None,
                 keys: Sequence[str] | None = None, indices: Sequence[int] | None = None) -> TagTable:
    """Tag probabilities for uint8 images [N, H, W, C] (a memmap is read one batch at a time).

    ``indices`` tags only those images (default all); ``keep`` limits the table to those tags (tags
    the tagger does not know are left out); ``keys`` names the rows (default: their image positions).
    """
    dev = next(model.parameters()).device if device is None else (
        resolve_device(device) if isinstance(device, str) else device)
    model = model.eval().to(dev)
    names = tag_names()
    if keep is None:
        cols = list(range(len(names)))
    else:
        pos = {t: j for j, t in enumerate(names)}
        cols = [pos[t] for t in dict.fromkeys(keep) if t in pos]
    order = np.arange(len(images)) if indices is None else np.asarray(indices, dtype=np.int64)
    keys = [str(i) for i in order] if keys is None else [str(k) for k in keys]
    if len(keys) != len(order):
        raise ValueError(f"{len(keys)} keys for {len(order)} images")
    idx = torch.tensor(cols, dtype=torch.long, device=dev)
    out = np.zeros((len(order), len(cols)), np.float32)
    memory_format = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    for start in range(0, len(order), batch):
        part = order[start:start + batch]
        if indices is None:  # contiguous: a slice of a memmap
            part = slice(int(part[0]), int(part[-1]) + 1)
        chunk = torch.from_numpy(np.ascontiguousarray(images[part])).to(dev, non_blocking=True)
        x = model.preprocess(chunk).contiguous(memory_format=memory_format)
        out[start:start + len(chunk)] = torch.sigmoid(model(x)).index_select(1, idx).cpu().numpy()
    return TagTable(keys, [names[j] for j in cols], out, "danbooru-resnet50")
