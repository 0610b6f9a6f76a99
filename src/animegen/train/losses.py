"""Adversarial losses and regularisers, as small plug-ins the training loop calls."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from animegen.parallel import all_mean, sharded


class BCELoss:
    """Binary cross-entropy on logits; with real targets 1 it is the non-saturating logistic loss.

    ``real_label=(lo, hi)`` draws each real target from U[lo, hi] (one-sided label smoothing).
    """

    def __init__(self, real_label=(1.0, 1.0)):
        self.lo, self.hi = float(real_label[0]), float(real_label[1])

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.lo == self.hi:
            targets = torch.full_like(real_logits, self.lo)
        else:
            x = real_logits
            targets = sharded(lambda m: torch.empty(m, *x.shape[1:], device=x.device, dtype=x.dtype).uniform_(
                self.lo, self.hi), len(x))
        return (F.binary_cross_entropy_with_logits(real_logits, targets)
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.softplus(-fake_logits).mean()


class HingeLoss:
    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return -fake_logits.mean()


def make_loss(name: str, real_label=(1.0, 1.0)):
    if name == "bce":
        return BCELoss(real_label)
    if name == "hinge":
        return HingeLoss()
    raise ValueError(f"unknown loss {name!r}; choose bce or hinge")


class Regularizer:
    """A penalty added to D's ('D') or G's ('G') loss every ``interval`` steps, scaled by the interval (lazy)."""

    name = "reg"
    target = "D"

    def __init__(self, weight: float, interval: int):
        self.weight, self.interval = float(weight), int(interval)

    def due(self, step: int) -> bool:
        return self.weight > 0 and self.interval > 0 and step % self.interval == 0

    def penalty(self, ctx: dict) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class R1(Regularizer):
    """R1 gradient penalty on real images (Mescheder et al. 2018): gamma/2 * E|grad D(x)|^2."""

    name, target = "r1", "D"

    def penalty(self, ctx: dict) -> torch.Tensor:
        (grad,) = torch.autograd.grad(ctx["real_logits"].sum(), ctx["real"], create_graph=True)
        return grad.float().square().sum(dim=[1, 2, 3]).mean() * (self.weight / 2) * self.interval


class PathLength(Regularizer):
    """Path-length regularisation (Karras et al. 2020): |J_w^T y| pulled towards its running mean."""

    name, target = "pl", "G"

    def __init__(self, weight: float, interval: int, decay: float = 0.01):
        super().__init__(weight, interval)
        self.decay = decay
        self.pl_mean = torch.zeros([])

    def penalty(self, ctx: dict) -> torch.Tensor:
        img, ws = ctx["fake"], ctx["ws"]
        noise = sharded(lambda m: torch.randn(m, *img.shape[1:], device=img.device, dtype=img.dtype), len(img))
        noise = noise / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(dim=2).mean(dim=1).sqrt()
        self.pl_mean = self.pl_mean.to(lengths.device)
        self.pl_mean = self.pl_mean.lerp(all_mean(lengths.mean().detach()), self.decay)  # the global batch's
        return (lengths - self.pl_mean).square().mean() * self.weight * self.interval

    def state_dict(self) -> dict:
        return {"pl_mean": self.pl_mean.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.pl_mean = state["pl_mean"].clone()


def ema_beta(batch: int, ema_kimg: float) -> float:
    """Per-step decay of G_ema for a half-life of ``ema_kimg`` thousand images: after ema_kimg * 1000 / batch steps
    the weight of the starting value is 1/2. 0 (no averaging: G_ema copies G) when ema_kimg <= 0."""
    return 0.5 ** (batch / (ema_kimg * 1000)) if ema_kimg > 0 else 0.0


def style_mix(G, z: torch.Tensor, c, ws: torch.Tensor, prob: float) -> torch.Tensor:
    """Style-mixing regularisation: with probability ``prob`` per sample, layers from a crossover point on take
    the w of a second latent."""
    if prob <= 0 or G.num_ws < 2:
        return ws
    n, dev = len(z), ws.device
    cutoff = sharded(lambda m: torch.randint(1, G.num_ws, (m,), device=dev), n)
    mixed = sharded(lambda m: torch.rand(m, device=dev), n) < prob
    cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, G.num_ws))
    ws2 = G.mapping(sharded(lambda m: torch.randn(m, *z.shape[1:], device=z.device, dtype=z.dtype), n), c)
    layer = torch.arange(G.num_ws, device=ws.device)[None, :, None]
    return torch.where(layer < cutoff[:, None, None], ws, ws2)
