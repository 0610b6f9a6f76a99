"""The project's generators and discriminators, built by name."""
from __future__ import annotations

from torch import nn

from animegen.models.dcgan import DCGANDiscriminator, DCGANGenerator
from animegen.models.stylegan import StyleGANDiscriminator, StyleGANGenerator
from animegen.models.stylegan2 import StyleGAN2Generator

ARCHS = ("dcgan", "stylegan", "stylegan2")


def build_models(arch: str, *, c_dim: int = 0, resolution: int = 64, img_channels: int = 3, z_dim: int,
                 channel_base: int, channel_max: int = 512, cond_mode: str = "projection", w_dim: int = 512,
                 mapping_layers: int = 8) -> tuple[nn.Module, nn.Module]:
    """(G, D) for an architecture; conditional when ``c_dim`` > 0 (``cond_mode``: TrainConfig's default)."""
    common = dict(c_dim=c_dim, resolution=resolution, img_channels=img_channels, channel_base=channel_base,
                  channel_max=channel_max)
    if arch == "dcgan":
        return DCGANGenerator(z_dim=z_dim, **common), DCGANDiscriminator(cond_mode=cond_mode, **common)
    if arch in ("stylegan", "stylegan2"):
        cls = StyleGANGenerator if arch == "stylegan" else StyleGAN2Generator
        g = cls(z_dim=z_dim, w_dim=w_dim, mapping_layers=mapping_layers, cond_mode=cond_mode, **common)
        return g, StyleGANDiscriminator(cond_mode=cond_mode, **common)  # StyleGAN2 keeps the residual D
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")


__all__ = ["ARCHS", "build_models", "DCGANGenerator", "DCGANDiscriminator", "StyleGANGenerator",
           "StyleGANDiscriminator", "StyleGAN2Generator"]
