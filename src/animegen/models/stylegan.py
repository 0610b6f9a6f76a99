"""StyleGAN (Karras et al. 2019) and its conditional form, 64 px by default, 128/256 px by adding blocks.

Generator: 8-layer mapping network z -> w (z pixel-normalised; the class vector concatenated to z), a learned
4x4 constant, per resolution [upsample] + 3x3 conv + noise + AdaIN, twice, and a 1x1 toRGB at the end.
Discriminator: residual blocks, minibatch stddev, one logit. Every weight uses the equalised learning rate.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animegen.models.layers import (
    LRELU_GAIN,
    AdaIN,
    ClassInput,
    ClassLayout,
    ClassProjection,
    ClassWeight,
    EqualConv2d,
    EqualLinear,
    NoiseInjection,
    channels_for,
    check_resolution,
    minibatch_stddev,
    pixel_norm,
)
from animegen.parallel import all_mean, all_sum


def lrelu(x: torch.Tensor, gain: float = LRELU_GAIN) -> torch.Tensor:
    return F.leaky_relu(x, 0.2) * gain


class MappingNetwork(nn.Module):
    """z (+ class) -> w through ``num_layers`` fully connected layers with LeakyReLU.

    cond_mode 'concat' concatenates the raw (one- or multi-hot) class vector to the normalised z, as in the
    conditional StyleGAN papers; 'projection' concatenates a learned, normalised class embedding instead.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_layers: int = 8, lr_mul: float = 0.01,
                 cond_mode: str = "concat"):
        super().__init__()
        self.z_dim, self.c_dim, self.cond_mode, self.lr_mul = z_dim, c_dim, cond_mode, lr_mul
        self.embed = EqualLinear(c_dim, z_dim, bias=False) if c_dim and cond_mode == "projection" else None
        # concat: the class's columns of the first layer, at gain 1 and full learning rate (ClassWeight)
        self.class_in = ClassWeight(c_dim, w_dim) if c_dim and cond_mode == "concat" else None
        dims = [z_dim * (2 if self.embed is not None else 1)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(EqualLinear(a, b, lr_mul=lr_mul) for a, b in zip(dims[:-1], dims[1:]))
        self.register_load_state_dict_pre_hook(_split_mapping_class_columns)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        x = pixel_norm(z.float())
        if self.c_dim and c is None:
            raise ValueError(f"conditional generator needs a class vector of width {self.c_dim}")
        if self.embed is not None:
            x = torch.cat([x, pixel_norm(self.embed(c.float()))], dim=1)
        x = self.layers[0](x)
        if self.class_in is not None:
            x = x + self.class_in(c.float())
        x = lrelu(x)
        for layer in self.layers[1:]:
            x = lrelu(layer(x))
        return x


def _split_mapping_class_columns(module: MappingNetwork, state: dict, prefix: str, *args) -> None:
    """An older checkpoint (before ClassWeight) whose concat mapping read the class as extra columns of its first
    layer (gain lr_mul / sqrt(z_dim + c_dim)): split them into ``class_in`` (gain 1), the same function."""
    key = prefix + "layers.0.weight"
    w = state.get(key)
    if module.class_in is None or prefix + "class_in.weight" in state or w is None \
            or w.shape[1] != module.z_dim + module.c_dim:
        return
    old = module.lr_mul / math.sqrt(w.shape[1])
    state[key] = w[:, :module.z_dim] * (old / module.layers[0].weight_gain)
    state[prefix + "class_in.weight"] = w[:, module.z_dim:] * old


class StyleLayer(nn.Module):
    """[upsample] [3x3 conv] -> noise -> bias + LeakyReLU -> AdaIN(w)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, conv: bool = True, up: bool = False):
        super().__init__()
        self.up = up
        self.conv = EqualConv2d(in_channels, out_channels, 3, bias=False) if conv else None
        self.noise = NoiseInjection(out_channels)
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.adain = AdaIN(out_channels, w_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if self.conv is not None:
            x = self.conv(x)
        x = self.noise(x, noise_mode)
        x = F.leaky_relu(x + self.bias.to(x.dtype), 0.2)
        return self.adain(x, w)


class StyleGANGenerator(nn.Module):
    arch = "stylegan"

    def __init__(self, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, resolution: int = 64,
                 img_channels: int = 3, mapping_layers: int = 8, channel_base: int = 4096, channel_max: int = 512,
                 cond_mode: str = "concat", w_avg_beta: float = 0.995, mapping_lr_mul: float = 0.01):
        super().__init__()
        chans = self._init_mapping(z_dim, c_dim, w_dim, resolution, img_channels, mapping_layers, channel_base,
                                   channel_max, cond_mode, w_avg_beta, mapping_lr_mul)
        self.const = nn.Parameter(torch.ones(1, chans[0], 4, 4))
        layers = [StyleLayer(chans[0], chans[0], w_dim, conv=False), StyleLayer(chans[0], chans[0], w_dim)]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [StyleLayer(cin, cout, w_dim, up=True), StyleLayer(cout, cout, w_dim)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb = EqualConv2d(chans[-1], img_channels, 1)
        self.num_ws = len(layers)
        self._init_w_avg()

    def _init_mapping(self, z_dim: int, c_dim: int, w_dim: int, resolution: int, img_channels: int,
                      mapping_layers: int, channel_base: int, channel_max: int, cond_mode: str, w_avg_beta: float,
                      mapping_lr_mul: float) -> list[int]:
        """The sizes, the mapping network; returns the feature maps per resolution, 4 px .. ``resolution``
        (shared with StyleGAN2, whose synthesis network differs)."""
        log2 = check_resolution(resolution)
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.resolution, self.img_channels, self.w_avg_beta = resolution, img_channels, w_avg_beta
        self.mapping_net = MappingNetwork(z_dim, c_dim, w_dim, mapping_layers, mapping_lr_mul, cond_mode)
        return [channels_for(2 ** i, channel_base, channel_max) for i in range(2, log2 + 1)]

    def _init_w_avg(self) -> None:
        """The tracked mean w and its per-class rows (truncation centres)."""
        self.register_buffer("w_avg", torch.zeros(self.w_dim))
        self.register_buffer("w_avg_class", torch.zeros(max(self.c_dim, 1), self.w_dim))

    def class_layout(self) -> ClassLayout:
        if not self.c_dim:
            return ClassLayout()
        if self.mapping_net.embed is not None:
            first = ClassInput("mapping_net.layers.0.weight", "mapping_net.layers.0.bias", self.z_dim,
                               embed="mapping_net.embed.weight", normalise=True)
        else:
            first = ClassInput("mapping_net.class_in.weight", "mapping_net.layers.0.bias", self.c_dim)
        return ClassLayout(inputs=(first,), per_class=(("w_avg_class", "w_avg"),))

    def truncation_center(self, c: torch.Tensor | None, n: int) -> torch.Tensor:
        """The w that truncation pulls towards: the tracked mean w, per class (mean of the classes set) if given."""
        center = self.w_avg.expand(n, -1)
        if self.c_dim and c is not None:
            c = c.float()
            k = c.sum(dim=1, keepdim=True)
            per_class = (c @ self.w_avg_class) / k.clamp(min=1e-8)
            center = torch.where(k > 0, per_class, center)
        return center

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        """z [N, z_dim] (+ c [N, c_dim]) -> ws [N, num_ws, w_dim], truncated towards the tracked mean w."""
        w = self.mapping_net(z, c)
        if update_w_avg:
            # the tracked means stay float32 whatever precision w was computed in (autocast would run the
            # per-class matmul below in bf16)
            with torch.no_grad(), torch.autocast(w.device.type, enabled=False):
                wd = w.detach().float()
                self.w_avg.lerp_(all_mean(wd.mean(dim=0)), 1.0 - self.w_avg_beta)  # the global batch's mean
                if self.c_dim:
                    cf = c.detach().float()
                    count = all_sum(cf.sum(dim=0))
                    seen = count > 0
                    mean_c = all_sum(cf.t() @ wd) / count.clamp(min=1e-8)[:, None]
                    self.w_avg_class[seen] = self.w_avg_class[seen].lerp(mean_c[seen], 1.0 - self.w_avg_beta)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if truncation_psi != 1:
            center = self.truncation_center(c, len(z)).unsqueeze(1)
            cutoff = self.num_ws if truncation_cutoff is None else truncation_cutoff
            ws[:, :cutoff] = center + truncation_psi * (ws[:, :cutoff] - center)
        return ws

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        x = self.const.expand(len(ws), -1, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode)
        return self.to_rgb(x)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                noise_mode: str = "random") -> torch.Tensor:
        return self.synthesis(self.mapping(z, c, truncation_psi), noise_mode)


class FromRGB(nn.Module):
    """1x1 conv of the image; with ``c_dim`` (a 'concat' D) the class's input channels too: constant class maps
    through a 1x1 conv are a per-class bias of its output, computed as one (ClassWeight)."""

    def __init__(self, in_channels: int, out_channels: int, c_dim: int = 0):
        super().__init__()
        self.conv = EqualConv2d(in_channels, out_channels, 1)
        self.class_in = ClassWeight(c_dim, out_channels) if c_dim else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv(x)
        if self.class_in is not None:
            y = y + self.class_in(c.to(y.dtype))[:, :, None, None]
        return lrelu(y)


class ResidualDBlock(nn.Module):
    """conv3x3 -> conv3x3 -> downsample, plus a downsampled 1x1 skip; the sum scaled by 1/sqrt(2)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3)
        self.conv1 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(lrelu(self.conv1(lrelu(self.conv0(x)))), 2)
        return (x + y) * (1 / math.sqrt(2))


class DEpilogue(nn.Module):
    """At 4x4: minibatch stddev -> conv3x3 -> FC -> features (the logit layer lives in the discriminator)."""

    def __init__(self, channels: int, mbstd_group: int = 4):
        super().__init__()
        self.mbstd_group = mbstd_group
        self.conv = EqualConv2d(channels + 1, channels, 3)
        self.fc = EqualLinear(channels * 16, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = lrelu(self.conv(minibatch_stddev(x, self.mbstd_group)))
        return lrelu(self.fc(x.flatten(1)))


class StyleGANDiscriminator(nn.Module):
    """fromRGB -> residual blocks down to 4x4 -> minibatch stddev epilogue -> one logit.

    Conditional: the class as input channels ('concat': constant class maps through a 1x1 fromRGB are a per-class
    bias of its output, computed as one), or a projection term from a learned class embedding ('projection',
    Miyato & Koyama 2018); both accept multi-hot class vectors, both with ClassWeight's gain.
    """

    def __init__(self, c_dim: int = 0, resolution: int = 64, img_channels: int = 3, channel_base: int = 4096,
                 channel_max: int = 512, cond_mode: str = "concat", mbstd_group: int = 4):
        super().__init__()
        log2 = check_resolution(resolution)
        if cond_mode not in ("concat", "projection"):
            raise ValueError(f"cond_mode must be 'concat' or 'projection', got {cond_mode!r}")
        self.c_dim, self.resolution, self.cond_mode = c_dim, resolution, cond_mode
        chans = [channels_for(2 ** i, channel_base, channel_max) for i in range(log2, 1, -1)]  # res .. 4
        self.img_channels = img_channels
        blocks = [FromRGB(img_channels, chans[0], c_dim if cond_mode == "concat" else 0)]
        blocks += [ResidualDBlock(cin, cout) for cin, cout in zip(chans[:-1], chans[1:])]
        blocks.append(DEpilogue(chans[-1], mbstd_group))
        self.blocks = nn.ModuleList(blocks)
        self.out = EqualLinear(chans[-1], 1)
        # the class (ClassWeight: gain 1, full learning rate): fromRGB's class input ('concat', part of the first
        # block, so FreezeD freezes it with that block), or a per-class embedding ('projection')
        self.cmap = ClassWeight(c_dim, chans[-1]) if c_dim and cond_mode == "projection" else None
        self.register_load_state_dict_pre_hook(_old_discriminator_class_weights)

    def class_layout(self) -> ClassLayout:
        if not self.c_dim:
            return ClassLayout()
        if self.cmap is not None:
            return ClassLayout(projections=(ClassProjection("cmap.weight", "out.weight",
                                                            1 / math.sqrt(self.out.weight.shape[1])),))
        return ClassLayout(inputs=(ClassInput("blocks.0.class_in.weight", "blocks.0.conv.bias", self.c_dim),))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.c_dim and c is None:
            raise ValueError(f"conditional discriminator needs a class vector of width {self.c_dim}")
        x = self.blocks[0](img, c)
        for block in self.blocks[1:]:
            x = block(x)
        out = self.out(x).squeeze(1)
        if self.cmap is not None:
            out = out + (self.cmap(c.to(x.dtype)) * x).sum(dim=1) / math.sqrt(x.shape[1])
        return out


def _old_discriminator_class_weights(module: StyleGANDiscriminator, state: dict, prefix: str, *args) -> None:
    """An older checkpoint (before ClassWeight) whose class weights took the equalised gain of a dense input:
    'concat' read the class as input channels of fromRGB (gain 1 / sqrt(img_channels + c_dim)), 'projection'
    embedded it at gain 1 / sqrt(c_dim). Rewritten for ClassWeight (gain 1): the same function."""
    if not module.c_dim:
        return
    key = prefix + "blocks.0.conv.weight"
    w = state.get(key)
    rgb = module.blocks[0]
    if rgb.class_in is not None and prefix + "blocks.0.class_in.weight" not in state and w is not None \
            and w.shape[1] == module.img_channels + module.c_dim:
        old = 1 / math.sqrt(w.shape[1])
        state[key] = w[:, :module.img_channels] * (old / rgb.conv.weight_gain)
        state[prefix + "blocks.0.class_in.weight"] = w[:, module.img_channels:, 0, 0] * old
    if module.cmap is not None and prefix + "cmap.weight" not in state and prefix + "embed.weight" in state:
        e = state.pop(prefix + "embed.weight")
        state[prefix + "cmap.weight"] = e / math.sqrt(e.shape[1])
