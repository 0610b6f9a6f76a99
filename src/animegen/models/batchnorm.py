"""BatchNorm statistics for sampling: recalibrate a generator's running mean/var from generated batches.

DCGAN's generator trains with BatchNorm batch statistics, but samples (eval mode) with running statistics that
are a momentum average over the training steps of a generator that changed every step: they do not describe the
current generator's batches and cost image quality (issue 12: FID 335.9 with running statistics vs 305.3 with
batch statistics, same checkpoint). Sampling in train mode would make an image depend on the batch it is drawn
in, which the latent tools promise it does not. So before sampling, every BatchNorm layer's running mean/var is
replaced by the cumulative average (``momentum=None``) of its batch statistics over ``n_batches`` generated
batches of ``batch`` samples (the training batch size), drawn from the recalibration's OWN CPU
``torch.Generator(seed)``: the global RNG (training's, and exact resume) is never touched, and the same weights
always give the same statistics on every device. Sampling then runs in eval mode as before, so a latent gives the
same image at any batch size.

Where it runs (one function, :func:`ensure_recalibrated`, cached per module so it runs once per loaded model):
``load_generator`` (so ``animegen sample/interpolate/mix/truncate``, ``animegen evaluate`` incl. the snapshot FID
curve, and the pipeline's components, which call these), the latent tools, ``fid.generator_features`` and
``class_accuracy`` (no-ops there after ``load_generator``), and the training loop's snapshot grids. The
checkpoint's weights never change: ``load_generator`` recalibrates its own freshly built module (the file is not
rewritten) and training recalibrates a deep copy of ``G_ema`` for the grid, so ``checkpoint.pt`` and the
``snapshots/G_ema-*.pt`` files hold exactly the trained buffers. A generator without BatchNorm (StyleGAN) is
left alone (the function returns False).
"""
from __future__ import annotations

import torch
from torch import nn

RECAL_BATCHES = 32   # generated batches per recalibration (32 x the training batch: 2,048 images at batch 64)
RECAL_BATCH = 64     # batch size when the training batch size is not known (a module built outside a run)
RECAL_SEED = 12      # the recalibration's own torch.Generator seed
_CACHE_ATTR = "_animegen_bn_recalibration"

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``module`` that track running statistics."""
    return [m for m in module.modules() if isinstance(m, _BN) and m.track_running_stats]


def recalibration_inputs(G: nn.Module, n_batches: int, batch: int, seed: int,
                         conditions: torch.Tensor | None = None
                         ) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The (z, c) batches (CPU) a recalibration feeds G: z ~ N(0, I) and, for a conditional G, each row drawn
    uniformly from ``conditions`` ([M, c_dim]; default: the one-hot rows of every class), all from
    ``torch.Generator().manual_seed(seed)``."""
    gen = torch.Generator().manual_seed(seed)
    c_dim = int(getattr(G, "c_dim", 0))
    rows = None
    if c_dim:
        rows = torch.eye(c_dim) if conditions is None else torch.as_tensor(conditions, dtype=torch.float32)
        if rows.ndim != 2 or rows.shape[1] != c_dim or len(rows) == 0:
            raise ValueError(f"conditions must be a condition matrix [M, {c_dim}], got shape {list(rows.shape)}")
    out = []
    for _ in range(n_batches):
        z = torch.randn(batch, G.z_dim, generator=gen)
        c = None if rows is None else rows[torch.randint(len(rows), (batch,), generator=gen)]
        out.append((z, c))
    return out


def _state_key(G: nn.Module, settings: tuple) -> tuple:
    """What the cached recalibration depends on: the settings and every parameter/buffer's in-place version
    counter (an optimiser step, ``load_state_dict`` or ``copy_`` into G invalidates it)."""
    return settings + tuple(t._version for t in G.parameters()) + tuple(t._version for t in G.buffers())


@torch.no_grad()
def recalibrate_batchnorm(G: nn.Module, n_batches: int = RECAL_BATCHES, batch: int = RECAL_BATCH,
                          seed: int = RECAL_SEED, conditions: torch.Tensor | None = None) -> bool:
    """Set G's BatchNorm running mean/var (in place) to the cumulative average of their batch statistics over
    ``n_batches`` generated batches of ``batch`` (see :func:`recalibration_inputs`); G's training flag, the
    layers' momentum and the global RNG are left as they were. Returns False (and does nothing) when G has no
    BatchNorm layer. Recalibrate a copy (``copy.deepcopy``) when G's buffers must not change."""
    layers = batchnorm_layers(G)
    if not layers:
        return False
    if n_batches < 1 or batch < 2:
        raise ValueError(f"recalibration needs n_batches >= 1 and batch >= 2 (got {n_batches}, {batch})")
    device = next(G.parameters()).device
    was_training = G.training
    momenta = [m.momentum for m in layers]
    try:
        G.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: the plain mean over the batches
            m.train()
        for z, c in recalibration_inputs(G, n_batches, batch, seed, conditions):
            G(z.to(device), None if c is None else c.to(device))
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        G.train(was_training)
    key = _state_key(G, (n_batches, batch, seed))
    for m in layers:  # kept on the layers: a wrapper around G (or G inside one) sees the same record
        setattr(m, _CACHE_ATTR, key)
    return True


def _recorded_key(G: nn.Module) -> tuple | None:
    keys = {getattr(m, _CACHE_ATTR, None) for m in batchnorm_layers(G)}
    return keys.pop() if len(keys) == 1 else None


def is_recalibrated(G: nn.Module) -> bool:
    """Whether G's BatchNorm statistics are a recalibration of its current weights (always True without BN)."""
    if not batchnorm_layers(G):
        return True
    key = _recorded_key(G)
    return key is not None and key == _state_key(G, key[:3])


def ensure_recalibrated(G: nn.Module, batch: int = RECAL_BATCH, n_batches: int = RECAL_BATCHES,
                        seed: int = RECAL_SEED, conditions: torch.Tensor | None = None) -> bool:
    """:func:`recalibrate_batchnorm` unless G already holds a recalibration of its current weights (by any
    settings: e.g. ``load_generator``'s, with the training batch size): runs once per loaded model. Returns
    whether it recalibrated now."""
    if is_recalibrated(G):
        return False
    return recalibrate_batchnorm(G, n_batches, batch, seed, conditions)


def recalibration_info(G: nn.Module) -> dict | None:
    """How G's BatchNorm statistics were set, for a record (metrics.json): None without BatchNorm; else
    ``{"recalibrated": bool, "n_batches", "batch", "seed"}`` (the settings of its current recalibration)."""
    if not batchnorm_layers(G):
        return None
    key = _recorded_key(G)
    if not is_recalibrated(G) or key is None:
        return {"recalibrated": False}
    return {"recalibrated": True, "n_batches": key[0], "batch": key[1], "seed": key[2]}
