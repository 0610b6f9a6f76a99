"""Layers shared by the model files: equalised-learning-rate linear/conv, pixel norm, noise, AdaIN."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from animegen.parallel import sharded, world

LRELU_GAIN = math.sqrt(2.0)


@dataclass(frozen=True)
class ClassInput:
    """A layer whose input ends with ``width`` class-dependent columns (dim 1 of ``weight``): the class vector
    itself (``embed`` None), or its embedding by the [width, c_dim] matrix ``embed`` (pixel-normalised when
    ``normalise``). A spatial kernel sees the class as a constant map over its whole window."""
    weight: str
    bias: str
    width: int
    embed: str | None = None
    normalise: bool = False


@dataclass(frozen=True)
class ClassProjection:
    """A logit term ``scale * <embed @ c, h>`` beside ``out``, the [1, len(h)] layer that reads the same h."""
    embed: str
    out: str
    scale: float


@dataclass(frozen=True)
class ClassLayout:
    """Where a conditional model reads its class vector; transfer (``animegen.train.transfer``) remaps, zeroes or
    folds exactly these tensors. ``per_class`` pairs a [c_dim, ...] buffer with its class-independent form."""
    inputs: tuple[ClassInput, ...] = ()
    projections: tuple[ClassProjection, ...] = ()
    per_class: tuple[tuple[str, str], ...] = ()

    def embeddings(self) -> set[str]:
        return {i.embed for i in self.inputs if i.embed} | {p.embed for p in self.projections}


def pixel_norm(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=dim, keepdim=True) + eps)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights ~ N(0, 1/lr_mul), scaled at run time (Karras et al.)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bias_init: float = 0.0,
                 lr_mul: float = 1.0, gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = gain * lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.bias * self.bias_gain if self.bias is not None else None
        return F.linear(x, self.weight * self.weight_gain, b)


class ClassWeight(nn.Module):
    """What a one- or multi-hot class vector adds to a layer: ``c @ weight.T`` with weight [out, c_dim] ~ N(0, 1)
    applied at gain 1 and trained at the optimiser's full learning rate.

    Equalised learning rate scales a dense input's weights by 1/sqrt(fan-in). A one-hot vector has one active
    entry, so its fan-in is 1: counted as c_dim more inputs of a layer (or of an embedding), each class's weights
    start and learn sqrt(fan-in) times smaller, and inside the mapping network (lr multiplier 0.01) a hundred
    times slower again. Measured on 117 MLDS classes: G's w moved 8x less with the class than with z, and the
    conditional StyleGAN sampled every class alike (accuracy at chance).
    """

    def __init__(self, c_dim: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, c_dim))
        self.weight_gain = 1.0

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return c @ self.weight.to(c.dtype).t()


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate and 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True, gain: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.padding)


class NoiseInjection(nn.Module):
    """Adds per-pixel N(0,1) noise (one map shared by all channels) scaled by a learned per-channel factor."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, noise_mode: str = "random", noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise_mode == "none":
            return x
        if noise is None:
            n, _, h, w = x.shape
            if noise_mode == "const":
                g = torch.Generator(device="cpu").manual_seed(h)  # fixed maps per resolution
                noise = torch.randn(1, 1, h, w, generator=g).to(x.device, x.dtype)
            elif noise_mode == "host":  # from the CPU's generator whatever the device: the same maps everywhere
                noise = torch.randn(n, 1, h, w).to(x.device, x.dtype)
            else:
                noise = sharded(lambda m: torch.randn(m, 1, h, w, device=x.device, dtype=x.dtype), n)
        return x + self.weight.to(x.dtype) * noise


class AdaIN(nn.Module):
    """Adaptive instance normalisation: per-channel scale and bias from an affine map of w."""

    def __init__(self, channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, 2 * channels, bias=True)
        with torch.no_grad():  # start as identity: scale 1, bias 0
            self.affine.bias[:channels].fill_(1.0)
        self.channels = channels

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.affine(w).to(x.dtype)
        scale, bias = style[:, : self.channels, None, None], style[:, self.channels:, None, None]
        return F.instance_norm(x) * scale + bias


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Appends one feature map: the stddev of each feature over groups of the minibatch, averaged."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    y = x.float().reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # [n/g, c, h, w]
    y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # [n, 1, h, w]
    return torch.cat([x, y.to(x.dtype)], dim=1)


def channels_for(res: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: channel_base / res, capped (the StyleGAN rule)."""
    return max(1, min(channel_max, channel_base // res))


def check_resolution(resolution: int) -> int:
    log2 = int(math.log2(resolution)) if resolution > 0 else 0
    if resolution < 8 or 2 ** log2 != resolution:
        raise ValueError(f"resolution must be a power of two >= 8 (got {resolution}); 64, 128 and 256 are the usual")
    return log2


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training statistics are the global batch's when ``sync`` is set and the process is one
    rank of a data-parallel job: each rank's per-channel sums and sums of squares are all-reduced (differentiably:
    the gradient through the statistics reaches every rank's samples). PyTorch's SyncBatchNorm refuses CPU
    tensors; this one runs on gloo and NCCL alike. Otherwise (one process, eval mode, ``sync`` unset: sampling on
    one rank) it is nn.BatchNorm2d itself, bit for bit. Same parameters and buffers, so checkpoints load either way."""

    sync = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = world()
        if not (self.sync and self.training and w.size > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        sums = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), xf.square().sum(dim=(0, 2, 3))]))
        count = x.shape[0] * x.shape[2] * x.shape[3] * w.size
        mean, sq = sums[:self.num_features] / count, sums[self.num_features:] / count
        var = (sq - mean.square()).clamp(min=0)
        with torch.no_grad():
            m = self.momentum if self.momentum is not None else 1.0 / (float(self.num_batches_tracked) + 1)
            self.running_mean.lerp_(mean.detach(), m)
            self.running_var.lerp_(var.detach() * count / max(count - 1, 1), m)
            self.num_batches_tracked += 1
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)
