"""DCGAN (Radford et al. 2016) and its conditional form, 64 px by default, 128/256 px by adding blocks."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from animegen.models.layers import (
    BatchNorm2d,
    ClassInput,
    ClassLayout,
    ClassProjection,
    channels_for,
    check_resolution,
)


def dcgan_init_(module: nn.Module) -> None:
    """Conv/linear weights ~ N(0, 0.02); BatchNorm scale ~ N(1, 0.02), shift 0 (the DCGAN reference init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class DCGANGenerator(nn.Module):
    """z (+ class vector) -> FC to C0x4x4 -> [ConvT k4 s2 + BN + ReLU]* -> ConvT to RGB + Tanh.

    Shares the two-stage interface of the StyleGAN generator: ``mapping`` gives the latent code that
    ``synthesis`` renders (here simply [z * psi, c], since DCGAN has no mapping network).
    """

    arch = "dcgan"

    def __init__(self, z_dim: int = 100, c_dim: int = 0, resolution: int = 64, img_channels: int = 3,
                 channel_base: int = 2048, channel_max: int = 512):
        super().__init__()
        log2 = check_resolution(resolution)
        self.z_dim, self.c_dim, self.resolution, self.img_channels = z_dim, c_dim, resolution, img_channels
        self.num_ws, self.w_dim = 1, z_dim + c_dim
        chans = [channels_for(2 ** i, channel_base, channel_max) for i in range(2, log2)]  # 4 .. res/2
        self.project = nn.Linear(z_dim + c_dim, chans[0] * 16)
        self.project_bn = BatchNorm2d(chans[0])
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), BatchNorm2d(cout), nn.ReLU(True))
            for cin, cout in zip(chans[:-1], chans[1:]))
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(chans[-1], img_channels, 4, 2, 1), nn.Tanh())
        self.c0 = chans[0]
        dcgan_init_(self)

    def class_layout(self) -> ClassLayout:
        return ClassLayout(inputs=(ClassInput("project.weight", "project.bias", self.c_dim),)) if self.c_dim \
            else ClassLayout()

    def mapping(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, update_w_avg: bool = False) -> torch.Tensor:
        z = z * truncation_psi  # truncation around the mean of N(0, I)
        if self.c_dim:
            if c is None:
                raise ValueError(f"conditional generator needs a class vector of width {self.c_dim}")
            z = torch.cat([z, c.to(z.dtype)], dim=1)
        return z.unsqueeze(1)

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        x = self.project(ws[:, 0]).view(-1, self.c0, 4, 4)
        x = torch.relu(self.project_bn(x))
        for block in self.blocks:
            x = block(x)
        return self.to_rgb(x)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                noise_mode: str = "random") -> torch.Tensor:
        return self.synthesis(self.mapping(z, c, truncation_psi), noise_mode)


class DCGANDiscriminator(nn.Module):
    """[Conv k4 s2 (+BN) + LeakyReLU(0.2)]* down to C x 4 x 4 -> FC to one logit.

    Conditional: the class vector is broadcast as extra input channels (``cond_mode='concat'``), or a
    learned class embedding adds a projection term to the logit (``cond_mode='projection'``).
    """

    def __init__(self, c_dim: int = 0, resolution: int = 64, img_channels: int = 3, channel_base: int = 2048,
                 channel_max: int = 512, cond_mode: str = "concat"):
        super().__init__()
        log2 = check_resolution(resolution)
        if cond_mode not in ("concat", "projection"):
            raise ValueError(f"cond_mode must be 'concat' or 'projection', got {cond_mode!r}")
        self.c_dim, self.resolution, self.cond_mode = c_dim, resolution, cond_mode
        extra = c_dim if cond_mode == "concat" else 0
        chans = [channels_for(2 ** i, channel_base, channel_max) for i in range(log2 - 1, 1, -1)]  # res/2 .. 4
        blocks = [nn.Sequential(nn.Conv2d(img_channels + extra, chans[0], 4, 2, 1), nn.LeakyReLU(0.2, True))]
        blocks += [nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), BatchNorm2d(cout),
                                 nn.LeakyReLU(0.2, True)) for cin, cout in zip(chans[:-1], chans[1:])]
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(chans[-1] * 16, 1)
        self.embed = nn.Linear(c_dim, chans[-1] * 16, bias=False) if c_dim and cond_mode == "projection" else None
        dcgan_init_(self)

    def class_layout(self) -> ClassLayout:
        if not self.c_dim:
            return ClassLayout()
        if self.embed is not None:
            return ClassLayout(projections=(ClassProjection("embed.weight", "fc.weight", 1.0),))
        return ClassLayout(inputs=(ClassInput("blocks.0.0.weight", "blocks.0.0.bias", self.c_dim),))

    def forward(self, img: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.c_dim and c is None:
            raise ValueError(f"conditional discriminator needs a class vector of width {self.c_dim}")
        if self.c_dim and self.embed is None:
            # the class channels as constant maps padded with their own value (not zeros): their contribution is
            # the same at every output pixel, a per-class bias, so a class folds exactly into the bias on transfer
            conv = self.blocks[0][0]
            k = img.shape[1]
            class_bias = c.to(img.dtype) @ conv.weight[:, k:].sum(dim=(2, 3)).to(img.dtype).t()
            x = F.conv2d(img, conv.weight[:, :k], conv.bias, conv.stride, conv.padding)
            x = self.blocks[0][1](x + class_bias[:, :, None, None])
            blocks = self.blocks[1:]
        else:
            x, blocks = img, self.blocks
        for block in blocks:
            x = block(x)
        h = x.flatten(1)
        out = self.fc(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(c.to(h.dtype)) * h).sum(dim=1)
        return out
