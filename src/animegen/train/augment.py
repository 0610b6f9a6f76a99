"""Discriminator augmentation: ADA (Karras et al. 2020, "Training GANs with limited data") and DiffAugment
(Zhao et al. 2020), pure PyTorch, differentiable, applied to every batch D sees (reals and fakes alike, G's step
too) so that D never learns the augmentations as a feature of the data.

ADA (``AdaptiveAugment``): each transform of the reference's 'bgc' pipeline is applied to each image with
probability p: geometric (x-flip, 90-degree rotations, integer translation, isotropic scaling, arbitrary rotation,
anisotropic scaling, fractional translation) as one 3x3 matrix per image applied by one ``grid_sample`` with
reflection padding (the reference also low-pass filters around the resampling to avoid aliasing; not done here),
and colour (brightness, contrast, luma flip, hue rotation, saturation) as one 4x4 matrix per image. p is tuned
from the overfitting heuristic r_t = E[sign(D(real))]: every ``interval`` steps
``p <- max(0, p + sign(r_t - target) * batch * interval / (ada_kimg * 1000))`` (the reference's rule: p can cross
0 -> 1 in ada_kimg thousand images). At p = 0 it is the identity.

DiffAugment (``DiffAugment``): colour (brightness, saturation, contrast), translation by up to 1/8 of the image
(zero fill) and cutout of a half-size square, on every image every step.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from animegen.parallel import all_sum, sharded, world

AUGMENTS = ("ada", "diffaugment", "none")
HISTORY_MAX = 10_000  # ADA updates kept in the checkpoint and the log (the latest)
SMALL_DATASET = 30_000  # --augment auto: ADA below this many training images (the ADA paper's gains are large up
#                         to ~30k images and vanish towards 100k+; MLDS's 36k sits at the edge)


def _rand(n: int, device, *shape) -> torch.Tensor:
    """U[0, 1) [n, *shape]: a per-sample draw, this rank's share of the global batch's (animegen.parallel)."""
    return sharded(lambda m: torch.rand(m, *shape, device=device), n)


def _randn(n: int, device, *shape) -> torch.Tensor:
    return sharded(lambda m: torch.randn(m, *shape, device=device), n)


def _randint(lo: int, hi: int, n: int, device, *shape) -> torch.Tensor:
    return sharded(lambda m: torch.randint(lo, hi, (m, *shape), device=device), n)


def _gate(p: float, n: int, device) -> torch.Tensor:
    """[n] booleans, each True with probability p."""
    return _rand(n, device) < p


def _pick(p: float, value: torch.Tensor, identity: float) -> torch.Tensor:
    """Each entry of ``value`` with probability p, else ``identity`` (the transform's no-op parameter)."""
    return torch.where(_gate(p, len(value), value.device), value, torch.full_like(value, identity))


def _translate2(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, device=tx.device).repeat(len(tx), 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _scale2(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, device=sx.device).repeat(len(sx), 1, 1)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate2(theta: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, device=theta.device).repeat(len(theta), 1, 1)
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def geometric_matrix(n: int, p: float, device, size: int) -> torch.Tensor:
    """[n, 3, 3]: the composed geometric transforms of the 'bg' part of ADA, in normalised coordinates [-1, 1]
    (the sampling grid's), each transform present with probability p (rotation: 1 - sqrt(1 - p), twice), applied to
    the image in the reference's order: x-flip first, fractional translation last (M = T_last ... T_first)."""
    m = torch.eye(3, device=device).repeat(n, 1, 1)
    # x-flip: scale x by 1 - 2 * {0, 1}
    flip = _pick(p, _randint(0, 2, n, device).float(), 0.0)
    m = _scale2(1 - 2 * flip, torch.ones(n, device=device)) @ m
    # 90-degree rotations
    k = _pick(p, _randint(0, 4, n, device).float(), 0.0)
    m = _rotate2(k * math.pi / 2) @ m
    # integer translation up to 1/8 of the image (normalised: 2 * 0.125)
    t = (_rand(n, device, 2) * 2 - 1) * 0.125 * 2
    t = torch.round(t * size / 2) / (size / 2)  # whole pixels (a pixel is 2 / size in normalised coordinates)
    t = torch.where(_gate(p, n, device)[:, None], t, torch.zeros_like(t))
    m = _translate2(t[:, 0], t[:, 1]) @ m
    # isotropic scaling, lognormal(0, 0.2 ln 2)
    s = torch.exp2(_randn(n, device) * 0.2)
    s = torch.where(_gate(p, n, device), s, torch.ones_like(s))
    m = _scale2(s, s) @ m
    p_rot = 1 - math.sqrt(max(0.0, 1 - min(p, 1.0)))
    # arbitrary rotation (before anisotropic scaling)
    r = (_rand(n, device) * 2 - 1) * math.pi
    m = _rotate2(torch.where(_gate(p_rot, n, device), r, torch.zeros_like(r))) @ m
    # anisotropic scaling
    a = torch.exp2(_randn(n, device) * 0.2)
    a = torch.where(_gate(p, n, device), a, torch.ones_like(a))
    m = _scale2(a, 1 / a) @ m
    # arbitrary rotation (after)
    r = (_rand(n, device) * 2 - 1) * math.pi
    m = _rotate2(torch.where(_gate(p_rot, n, device), r, torch.zeros_like(r))) @ m
    # fractional translation, normal(0, 0.125) of the image
    t = _randn(n, device, 2) * 0.125 * 2
    t = torch.where(_gate(p, n, device)[:, None], t, torch.zeros_like(t))
    return _translate2(t[:, 0], t[:, 1]) @ m


def colour_matrix(n: int, p: float, device) -> torch.Tensor:
    """[n, 4, 4]: the composed colour transforms of the 'c' part of ADA on homogeneous RGB in [-1, 1]."""
    eye = torch.eye(4, device=device).repeat(n, 1, 1)
    luma = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)
    c = eye.clone()
    # brightness: add normal(0, 0.2)
    b = torch.where(_gate(p, n, device), _randn(n, device) * 0.2, torch.zeros(n, device=device))
    t = eye.clone()
    t[:, :3, 3] = b[:, None]
    c = t @ c
    # contrast: scale by lognormal(0, 0.5 ln 2)
    k = torch.where(_gate(p, n, device), torch.exp2(_randn(n, device) * 0.5), torch.ones(n, device=device))
    t = eye.clone()
    t[:, 0, 0] = t[:, 1, 1] = t[:, 2, 2] = k
    c = t @ c
    # luma flip: Householder reflection through the luma axis
    f = _pick(p, _randint(0, 2, n, device).float(), 0.0)
    c = (eye - 2 * torch.outer(luma, luma)[None] * f[:, None, None]) @ c
    # hue rotation around the luma axis
    theta = torch.where(_gate(p, n, device), (_rand(n, device) * 2 - 1) * math.pi,
                        torch.zeros(n, device=device))
    c = _rotate_about(luma[:3], theta) @ c
    # saturation: scale the part orthogonal to luma by lognormal(0, ln 2)
    s = torch.where(_gate(p, n, device), torch.exp2(_randn(n, device)), torch.ones(n, device=device))
    ll = torch.outer(luma, luma)[None]
    c = (ll + (eye - ll) * s[:, None, None]) @ c
    return c


def _rotate_about(axis: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """[n, 4, 4] homogeneous rotations by ``theta`` around the unit 3-vector ``axis`` (Rodrigues)."""
    n = len(theta)
    x, y, z = axis.tolist()
    k = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], device=theta.device)
    r = (torch.eye(3, device=theta.device)[None] + torch.sin(theta)[:, None, None] * k[None]
         + (1 - torch.cos(theta))[:, None, None] * (k @ k)[None])
    m = torch.eye(4, device=theta.device).repeat(n, 1, 1)
    m[:, :3, :3] = r
    return m


class AdaptiveAugment:
    """ADA: the augmentation and its probability p, tuned from r_t (module docstring)."""

    def __init__(self, target: float = 0.6, ada_kimg: float = 500.0, interval: int = 4, p: float = 0.0):
        self.target, self.ada_kimg, self.interval = float(target), float(ada_kimg), int(interval)
        self.p = float(p)
        self.sign_sum, self.count = 0.0, 0
        self.history: list[dict[str, float]] = []

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return augment_images(images, self.p)

    def observe(self, real_logits: torch.Tensor) -> None:
        """Accumulate sign(D(real)) of a step's (augmented) reals (on the device: read at the next update)."""
        self.sign_sum = self.sign_sum + torch.sign(real_logits.detach().float()).sum()
        self.count += real_logits.numel()

    def update(self, step: int, batch: int, images_seen: int) -> float | None:
        """Every ``interval`` steps: adjust p from the r_t accumulated since the last update; returns r_t."""
        if self.interval <= 0 or step % self.interval != 0 or self.count == 0:
            return None
        # r_t over the global batch: every rank's signs (each rank has seen count of them)
        rt = float(all_sum(torch.as_tensor(self.sign_sum, dtype=torch.float64))) / (self.count * world().size)
        adjust = math.copysign(1.0, rt - self.target) if rt != self.target else 0.0
        self.p = max(0.0, self.p + adjust * batch * self.interval / (self.ada_kimg * 1000))
        self.sign_sum, self.count = 0.0, 0
        self.history.append({"kimg": images_seen / 1000, "p": self.p, "rt": rt})
        del self.history[:-HISTORY_MAX]
        return rt

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "sign_sum": float(self.sign_sum), "count": self.count, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p, self.sign_sum, self.count = float(state["p"]), float(state["sign_sum"]), int(state["count"])
        self.history = list(state["history"])


def augment_images(images: torch.Tensor, p: float) -> torch.Tensor:
    """ADA's geometric + colour augmentation of a batch [N, C, H, W] in [-1, 1] with probability p per transform;
    the identity (the same tensor) at p = 0."""
    if p <= 0:
        return images
    n, ch, h, w = images.shape
    if h != w:
        raise ValueError(f"ADA expects square images, got {h}x{w}")
    device, dtype = images.device, images.dtype
    with torch.autocast(device.type, enabled=False):  # the matrices and the resampling in float32 under amp too
        m = geometric_matrix(n, p, device, w)
        grid = F.affine_grid(torch.linalg.inv(m)[:, :2, :], [n, ch, h, w], align_corners=False)
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if ch == 3:
            c = colour_matrix(n, p, device)
            x = torch.einsum("nij,njhw->nihw", c[:, :3, :3], x) + c[:, :3, 3, None, None]
    return x.to(dtype)


class DiffAugment:
    """DiffAugment's 'color,translation,cutout' on every image (no p: always on)."""

    p = 1.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images)


def diff_augment(x: torch.Tensor, translation: float = 0.125, cutout: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    dev, dt = x.device, x.dtype
    # colour: brightness, saturation, contrast
    x = x + (_rand(n, dev, 1, 1, 1).to(dt) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(n, dev, 1, 1, 1).to(dt) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (_rand(n, dev, 1, 1, 1).to(dt) + 0.5) + mean
    # translation by up to 1/8, zero fill
    sh, sw = int(h * translation + 0.5), int(w * translation + 0.5)
    tx = _randint(-sh, sh + 1, n, dev, 1, 1)
    ty = _randint(-sw, sw + 1, n, dev, 1, 1)
    gy, gx = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    gy = torch.clamp(gy[None] + tx + 1, 0, h + 1)
    gx = torch.clamp(gx[None] + ty + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    x = padded.permute(0, 2, 3, 1)[torch.arange(n, device=dev)[:, None, None], gy, gx].permute(0, 3, 1, 2)
    # cutout: a zeroed square of half the size
    ch_, cw = int(h * cutout + 0.5), int(w * cutout + 0.5)
    oy = _randint(0, h + (1 - ch_ % 2), n, dev, 1, 1)
    ox = _randint(0, w + (1 - cw % 2), n, dev, 1, 1)
    gy, gx = torch.meshgrid(torch.arange(ch_, device=dev), torch.arange(cw, device=dev), indexing="ij")
    gy = torch.clamp(gy[None] + oy - ch_ // 2, 0, h - 1)
    gx = torch.clamp(gx[None] + ox - cw // 2, 0, w - 1)
    mask = torch.ones(n, h, w, device=dev, dtype=dt)
    mask[torch.arange(n, device=dev)[:, None, None], gy, gx] = 0
    return x * mask[:, None]


def make_augment(kind: str, target: float = 0.6, ada_kimg: float = 500.0, interval: int = 4):
    """The augmentation for ``--augment``: AdaptiveAugment, DiffAugment or None (no augmentation)."""
    if kind == "ada":
        return AdaptiveAugment(target, ada_kimg, interval)
    if kind == "diffaugment":
        return DiffAugment()
    if kind == "none":
        return None
    raise ValueError(f"unknown augment {kind!r}; choose one of {', '.join(AUGMENTS)}")
