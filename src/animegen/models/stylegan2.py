"""StyleGAN2 (Karras et al. 2020, configs E/F at 32-256 px) in pure PyTorch, and its conditional form from
StyleGAN2-ADA.

Generator: the mapping network, truncation and the tracked mean w (per class too) of :mod:`stylegan` (conditional:
a learned class embedding, normalised, concatenated to the normalised z: ``cond_mode='projection'``); synthesis from
a learned 4x4 constant through modulated / demodulated 3x3 convolutions (the style scales the weights per sample,
demodulation divides each output channel by the norm of its modulated weights, so no instance normalisation and no
droplet artifacts), per-pixel noise, bias + LeakyReLU; a skip generator: a modulated 1x1 toRGB (no demodulation)
at every resolution, the running image upsampled and summed. Upsampling is bilinear before the 3x3 convolution
(the reference's [1, 3, 3, 1] FIR upsampling, without its custom CUDA op). w indices: one per convolution, each
toRGB sharing the next convolution's (the reference's layout), so ``num_ws`` = convolutions + 1.
Discriminator: :class:`~animegen.models.stylegan.StyleGANDiscriminator`, the residual discriminator StyleGAN2 uses
(fromRGB, residual blocks, minibatch stddev), with the projection head for classes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animegen.models.layers import LRELU_GAIN, EqualLinear, NoiseInjection
from animegen.models.stylegan import StyleGANGenerator


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True,
                     eps: float = 1e-8) -> torch.Tensor:
    """Convolve each sample of x [N, I, H, W] with ``weight`` [O, I, k, k] scaled per sample by ``styles`` [N, I]
    along its input channels and, with ``demodulate``, divided per output channel by the L2 norm of that scaled
    weight. Computed without building per-sample weights: scale x, convolve with the shared weight, scale the output
    (the reference's non-fused path; the same numbers as a grouped convolution of per-sample weights)."""
    k = weight.shape[-1]
    s = styles.to(x.dtype)
    out = F.conv2d(x * s[:, :, None, None], weight.to(x.dtype), padding=k // 2)
    if demodulate:
        # sum over I, k, k of (w[o, i] * s[n, i])^2 = sum_i s[n, i]^2 * sum_kk w[o, i]^2, in float32 at least
        dt = torch.promote_types(styles.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            dcoefs = (styles.to(dt).square() @ weight.to(dt).square().sum(dim=(2, 3)).t() + eps).rsqrt()  # [N, O]
        out = out * dcoefs.to(out.dtype)[:, :, None, None]
    return out


class ModulatedConv(nn.Module):
    """A modulated convolution with its style affine (w -> one scale per input channel, bias 1: identity at init)
    and the equalised learning rate."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, w_dim: int, demodulate: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w)
        if not self.demodulate:  # toRGB: the reference scales the styles by the weight gain instead
            return modulated_conv2d(x, self.weight, styles * self.weight_gain, demodulate=False)
        return modulated_conv2d(x, self.weight, styles, demodulate=True)  # demodulation cancels the weight gain


class SynthesisLayer(nn.Module):
    """[upsample] -> modulated 3x3 conv -> noise -> bias + LeakyReLU (gain sqrt 2)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, up: bool = False):
        super().__init__()
        self.up = up
        self.conv = ModulatedConv(in_channels, out_channels, 3, w_dim)
        self.noise = NoiseInjection(out_channels)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.noise(self.conv(x, w), noise_mode)
        return F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], 0.2) * LRELU_GAIN


class ToRGB(nn.Module):
    def __init__(self, in_channels: int, img_channels: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(in_channels, img_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        y = self.conv(x, w)
        return y + self.bias.to(y.dtype)[None, :, None, None]


class StyleGAN2Generator(StyleGANGenerator):
    """Mapping and truncation as :class:`StyleGANGenerator`; StyleGAN2's skip synthesis network."""

    arch = "stylegan2"

    def __init__(self, z_dim: int = 512, c_dim: int = 0, w_dim: int = 512, resolution: int = 64,
                 img_channels: int = 3, mapping_layers: int = 8, channel_base: int = 16384, channel_max: int = 512,
                 cond_mode: str = "projection", w_avg_beta: float = 0.995, mapping_lr_mul: float = 0.01):
        nn.Module.__init__(self)  # not StyleGANGenerator's synthesis network: only its mapping part
        chans = self._init_mapping(z_dim, c_dim, w_dim, resolution, img_channels, mapping_layers, channel_base,
                                   channel_max, cond_mode, w_avg_beta, mapping_lr_mul)
        self.const = nn.Parameter(torch.randn(1, chans[0], 4, 4))
        layers = [SynthesisLayer(chans[0], chans[0], w_dim)]
        rgb_at = [0]  # per resolution: the index of its last convolution
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [SynthesisLayer(cin, cout, w_dim, up=True), SynthesisLayer(cout, cout, w_dim)]
            rgb_at.append(len(layers) - 1)
        self.layers = nn.ModuleList(layers)
        self.to_rgbs = nn.ModuleList(ToRGB(c, img_channels, w_dim) for c in chans)
        self.rgb_at = rgb_at
        self.num_ws = len(layers) + 1
        self._init_w_avg()

    def synthesis(self, ws: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [N, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        x = self.const.expand(len(ws), -1, -1, -1)
        img = None
        rgb = iter(zip(self.rgb_at, self.to_rgbs))
        at, to_rgb = next(rgb)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i], noise_mode)
            if i == at:  # the last convolution of a resolution: its toRGB (with the next w), the skip sum
                y = to_rgb(x, ws[:, i + 1]).float()  # the running image is summed in float32 (as the reference)
                img = y if img is None else F.interpolate(img, scale_factor=2, mode="bilinear",
                                                          align_corners=False) + y
                at, to_rgb = next(rgb, (None, None))
        return img
