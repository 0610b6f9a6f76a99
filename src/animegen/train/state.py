"""Everything a training run carries from step to step, and the one place it becomes a checkpoint and back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from animegen import __version__
from animegen.parallel import sharded
from animegen.train.checkpoint import OLDER, SNAPSHOT_KEYS, CheckpointError, load_weights
from animegen.train.losses import Regularizer


class BatchSampler:
    """Indices into the device-resident dataset: concatenated random permutations (works for any N, also
    N < batch), drawn from its own generator so that its state can be saved and restored exactly."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.buffer = torch.empty(0, dtype=torch.int64)

    def next(self, batch: int) -> torch.Tensor:
        while len(self.buffer) < batch:
            self.buffer = torch.cat([self.buffer, torch.randperm(self.n, generator=self.gen)])
        idx, self.buffer = self.buffer[:batch], self.buffer[batch:]
        return idx

    def peek(self, batch: int) -> torch.Tensor:
        """The indices the next ``next(batch)`` will return, without drawing them (the sampler is unchanged)."""
        gen, buffer = self.gen.get_state(), self.buffer
        try:
            return self.next(batch)
        finally:
            self.gen.set_state(gen)
            self.buffer = buffer

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.buffer = state["buffer"].clone()


def images_to_device(arr: np.ndarray, device: torch.device, channels_last: bool, chunk: int = 4096) -> torch.Tensor:
    """uint8 [N, H, W, C] (possibly a read-only memmap) -> uint8 [N, C, H, W] on the device, copied in chunks so
    the host never holds a second full copy."""
    n, h, w, c = arr.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((n, c, h, w), dtype=torch.uint8, device=device, memory_format=fmt)
    for i in range(0, n, chunk):
        out[i:i + chunk] = torch.from_numpy(np.array(arr[i:i + chunk])).permute(0, 3, 1, 2)
    return out


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class TrainState:
    """The networks, their optimisers, the regularisers' running state, the batch sampler and the counters:
    with the global RNG state, exactly what a resumed run needs to continue bit for bit."""

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    regs: list[Regularizer]
    sampler: BatchSampler
    step: int = 0
    images_seen: int = 0
    d_params: list[nn.Parameter] = field(default_factory=list)  # D's trainable parameters (freeze_d leaves out some)
    augment: Any = None  # the augmentation of D's inputs (train/augment.py); ADA's p and its history are state

    def checkpoint(self, config: dict, class_names: list[str], img_channels: int, device: torch.device) -> dict:
        """The checkpoint.pt of this state (see checkpoint.py for its keys); ``sampling_snapshot`` cuts it down."""
        return {
            "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
            "opt_G": self.opt_G.state_dict(), "opt_D": self.opt_D.state_dict(),
            "step": self.step, "images_seen": self.images_seen, "rng": rng_state(device),
            "sampler": self.sampler.state_dict(), "regularizers": {r.name: r.state_dict() for r in self.regs},
            "augment": self.augment.state_dict() if hasattr(self.augment, "state_dict") else None,
            "config": config, "class_names": class_names, "img_channels": img_channels, "version": __version__,
        }

    def restore(self, ckpt: dict, device: torch.device) -> None:
        """Continue from ``ckpt`` (a checkpoint of a run with the same options); the global RNG state included.
        A checkpoint whose tensors are named for an older model (loading migrates them: models/stylegan.py) has
        optimiser state for other parameters: it is refused, with what to do instead."""
        for module, key in ((self.G, "G"), (self.D, "D"), (self.G_ema, "G_ema")):
            names, mine = set(ckpt[key]), set(module.state_dict())
            if names != mine:
                raise CheckpointError(getattr(ckpt, "path", "checkpoint"), OLDER, (
                    f"its {key} has tensors {sorted(names - mine)[:3]} where this animegen's model has "
                    f"{sorted(mine - names)[:3]}: written by another version of animegen, it samples, evaluates "
                    "and transfers (--init-from) but cannot resume; start a new run from it with --init-from"))
            load_weights(module, ckpt, key)
        self.opt_G.load_state_dict(ckpt["opt_G"])
        self.opt_D.load_state_dict(ckpt["opt_D"])
        for r in self.regs:
            r.load_state_dict(ckpt["regularizers"].get(r.name, {}) or r.state_dict())
        self.sampler.load_state_dict(ckpt["sampler"])
        if hasattr(self.augment, "load_state_dict") and ckpt.get("augment"):
            self.augment.load_state_dict(ckpt["augment"])
        self.step, self.images_seen = int(ckpt["step"]), int(ckpt["images_seen"])
        set_rng_state(ckpt["rng"], device)


def sampling_snapshot(ckpt: dict) -> dict:
    """The small sampling-only part of a checkpoint (G_ema and its description), for snapshots/G_ema-*.pt."""
    return {k: ckpt[k] for k in SNAPSHOT_KEYS + ("version",)}


@dataclass
class TrainData:
    """The training images (uint8 on the device, or animegen.train.stream.StreamedImages) and, for a
    conditional run, their condition rows (on the device)."""

    images: Any
    conditions: torch.Tensor | None
    class_names: list[str]

    @property
    def n(self) -> int:
        return self.images.shape[0]

    @property
    def img_channels(self) -> int:
        return self.images.shape[1]

    def real_batch(self, idx: torch.Tensor, xflip: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images ``idx`` in [-1, 1] (each mirrored with probability 1/2 when ``xflip``) and their conditions."""
        device = self.images.device
        # pinned + non_blocking: a pageable host->device copy would synchronise the host every step (a streamed
        # set takes its indices on the host)
        if device.type == "cuda" and isinstance(self.images, torch.Tensor):
            idx = idx.pin_memory().to(device, non_blocking=True)
        x = self.images[idx].float().div_(127.5).sub_(1.0)
        if xflip:
            flip = sharded(lambda m: torch.rand(m, 1, 1, 1, device=device), len(x)) < 0.5
            x = torch.where(flip, x.flip(3), x)
        return x, (self.conditions[idx] if self.conditions is not None else None)

    def fake_conditions(self, n: int) -> torch.Tensor | None:
        """Conditions for ``n`` generated images, drawn as often as the data has them (None: unconditional)."""
        if self.conditions is None:
            return None
        return self.conditions[sharded(lambda m: torch.randint(self.n, (m,), device=self.images.device), n)]
