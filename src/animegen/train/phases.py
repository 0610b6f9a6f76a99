"""One training step in the phases of StyleGAN2-ADA's loss: Dmain and Dreg update D, Gmain and Greg update G.

Each phase is a plain function of what it reads. A lazy regulariser that is due adds its penalty to its network's
main loss and the sum takes one backward pass and one optimiser step (so Dreg reuses Dmain's real logits, and Greg
Gmain's images); StyleGAN2 runs each regulariser as a pass of its own, with its own step (``d_reg_pass`` /
``g_reg_pass``), as its reference does, with the optimiser's lr and betas adjusted for the extra steps. Every image
D sees passes through ``aug`` (ADA, DiffAugment or none: :mod:`animegen.train.augment`), and every optimiser step
is preceded by ``all_reduce_gradients`` (where data-parallel training would average the ranks' gradients).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from animegen.parallel import average_gradients
from animegen.train.losses import Regularizer, style_mix


@dataclass(frozen=True)
class Autocast:
    """bf16 autocast when amp is in use; ``amp(enabled=False)`` keeps a pass in float32 (the regularisers')."""

    device_type: str
    bf16: bool

    def __call__(self, enabled: bool = True):
        return torch.autocast(self.device_type, dtype=torch.bfloat16) if self.bf16 and enabled else nullcontext()


def augment(images: torch.Tensor, aug=None) -> torch.Tensor:
    """Every batch D sees, real or generated, passes here: ``aug`` (an augmentation callable) or unchanged."""
    return images if aug is None else aug(images)


def all_reduce_gradients(params: list[nn.Parameter]) -> None:
    """The gradient all-reduce point, between backward and the optimiser step: with data parallelism each rank's
    ``p.grad`` is averaged over the ranks (animegen.parallel; an explicit all-reduce rather than DDP's hooks, since
    one step runs several backward passes through G and D, frozen and lazy); one process: nothing to reduce."""
    average_gradients(params)


def due(regs: list[Regularizer], target: str, step: int) -> list[Regularizer]:
    """The lazy regularisers of network ``target`` ('D' or 'G') that run at ``step``."""
    return [r for r in regs if r.target == target and r.due(step)]


def generate(G: nn.Module, z: torch.Tensor, c: torch.Tensor | None, mixing: float, update_w_avg: bool):
    """Images and their per-layer ws for latents ``z`` (style mixing with probability ``mixing``)."""
    ws = G.mapping(z, c, update_w_avg=update_w_avg)
    ws = style_mix(G, z, c, ws, mixing)
    return G.synthesis(ws), ws


def d_fakes(G: nn.Module, z, c, mixing: float, amp: Autocast, keep_graph: bool, g_regularised: bool = False):
    """The generated batch of D's step -> (images, ws). ``keep_graph``: with their graph to G's parameters, for
    G's step on the same batch (G is not updated in between, so its images are the same as a new pass on these
    latents would give); this is then the step's one pass through G (w_avg moves, in float32 when G's
    regulariser is due, as in ``g_main``). Else without a graph, w_avg untouched."""
    with torch.set_grad_enabled(keep_graph), amp(enabled=not (keep_graph and g_regularised)):
        return generate(G, z, c, mixing, update_w_avg=keep_graph)


def d_main(D: nn.Module, loss, real, c_real, fake, c_fake, amp: Autocast, regularised: bool, aug=None):
    """Dmain: D's loss on a real and a generated batch -> (loss, real logits, fake logits). When a D regulariser
    is due (``regularised``), the real pass runs in float32 with gradients w.r.t. the reals, for Dreg."""
    if regularised:
        real.requires_grad_(True)
    with amp(enabled=not regularised):  # R1's gradient w.r.t. the reals is taken through a float32 graph
        real_logits = D(augment(real, aug), c_real).float()
    with amp():
        fake_logits = D(augment(fake.detach(), aug), c_fake).float()
    return loss.d_loss(real_logits, fake_logits), real_logits, fake_logits


def d_reg_pass(D: nn.Module, regs: list[Regularizer], real, c_real, aug=None) -> dict[str, torch.Tensor]:
    """Dreg as a pass of its own: the reals through D again in float32 (new augmentation draws), the penalties."""
    real = real.detach().requires_grad_(True)
    return d_reg(regs, real, D(augment(real, aug), c_real).float())


def d_reg(regs: list[Regularizer], real: torch.Tensor, real_logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dreg: the due D regularisers' penalties (R1), already scaled by their interval."""
    return {r.name: r.penalty({"real": real, "real_logits": real_logits}) for r in regs}


def g_main(G: nn.Module, D: nn.Module, loss, z, c, mixing: float, amp: Autocast, regularised: bool, aug=None,
           generated: tuple[torch.Tensor, torch.Tensor] | None = None):
    """Gmain: G's loss on a generated batch -> (loss, images, ws). When a G regulariser is due, the generator
    runs in float32 (path length's Jacobian, mapping -> ws -> image). ``generated``: the (images, ws) D's step
    generated from ``z`` with their graph (``d_fakes`` with ``keep_graph``), taken instead of a new pass."""
    if generated is not None:
        fake, ws = generated
    else:
        with amp(enabled=not regularised):
            fake, ws = generate(G, z, c, mixing, update_w_avg=True)
    with amp():
        gen_logits = D(augment(fake, aug), c).float()
    return loss.g_loss(gen_logits), fake, ws


def g_reg_pass(G: nn.Module, regs: list[Regularizer], z, c, mixing: float) -> dict[str, torch.Tensor]:
    """Greg as a pass of its own: new images in float32, the penalties."""
    fake, ws = generate(G, z, c, mixing, update_w_avg=False)
    return g_reg(regs, fake, ws)


def g_reg(regs: list[Regularizer], fake: torch.Tensor, ws: torch.Tensor) -> dict[str, torch.Tensor]:
    """Greg: the due G regularisers' penalties (path length), already scaled by their interval."""
    return {r.name: r.penalty({"fake": fake, "ws": ws}) for r in regs}


def optimise(opt: torch.optim.Optimizer, params: list[nn.Parameter], main: torch.Tensor,
             penalties: dict[str, torch.Tensor]) -> None:
    """One backward pass of the main loss plus the penalties, the all-reduce point, one optimiser step."""
    total = main
    for value in penalties.values():
        total = total + value
    opt.zero_grad(set_to_none=True)
    total.backward()
    all_reduce_gradients(params)
    opt.step()


@contextmanager
def frozen(params: list[nn.Parameter]):
    """``params`` take no gradient inside the block (D's, while G's loss is back-propagated through D)."""
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@torch.no_grad()
def update_ema(G: nn.Module, G_ema: nn.Module, decay: float) -> None:
    """G_ema <- lerp towards G by 1 - decay (a copy when decay is 0); buffers are copied."""
    g_params, e_params = list(G.parameters()), list(G_ema.parameters())
    if decay > 0:
        torch._foreach_lerp_(e_params, g_params, 1.0 - decay)
    else:
        torch._foreach_copy_(e_params, g_params)
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)
