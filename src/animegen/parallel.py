"""Data-parallel training: this process's place in a ``torchrun`` job and the batch-level operations that make a
run of N processes compute what one process computes with the same global batch.

``--batch`` is the global batch; each of the ``size`` ranks holds the strided share ``rank::size`` of it. Every
per-sample random draw (latents, classes, the real indices, flips, noise maps, mixing cut-offs, augmentation
parameters, path-length noise) is drawn for the whole global batch from the same seeded generators on every rank
and sliced (:func:`sharded`), so the samples are the single-process run's whatever the world size. Strided shares
keep the minibatch-stddev groups (``reshape(group, -1)``: samples i, i + n/g, ...) the same groups of the same
samples. Means over the batch that feed state (BatchNorm statistics, the tracked mean w, path length's mean, ADA's
r_t) are taken over the global batch (:func:`all_mean`, :func:`all_sum`); gradients are averaged
(:func:`average_gradients`). A single process is a world of one: every function here is then the identity.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that writes files (checkpoints, logs, snapshots) and shows progress."""
        return self.rank == 0


_world = World()


def world() -> World:
    return _world


def init(device_type: str) -> World:
    """Join the torchrun job this process was started in (WORLD_SIZE > 1 in its environment): NCCL on CUDA,
    gloo on the CPU (one torch thread per rank there: the ranks share the cores). A plain process stays a world
    of one."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return _world
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not tdist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local)
        tdist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type != "cuda":
        torch.set_num_threads(1)
    _world = World(tdist.get_rank(), tdist.get_world_size(), local)
    return _world


def shutdown() -> None:
    global _world
    if tdist.is_initialized():
        tdist.destroy_process_group()
    _world = World()


def sharded(draw: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """``draw(n * size)`` (a per-sample random draw for the global batch, made alike on every rank) cut to this
    rank's ``n`` samples, strided."""
    w = _world
    return draw(n) if w.size == 1 else draw(n * w.size)[w.rank::w.size]


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over the ranks (a new tensor; ``x`` itself on a single process)."""
    if _world.size == 1:
        return x
    y = x.detach().clone()
    tdist.all_reduce(y)
    return y


def all_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over the ranks of a per-rank mean (equal shares: the global batch's mean)."""
    return x if _world.size == 1 else all_sum(x) / _world.size


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Every rank's ``p.grad`` replaced by the mean over the ranks (one flat all-reduce). A parameter without a
    gradient stays without one (every rank takes the same branches, so its optimiser skips it on every rank, as a
    single process does)."""
    if _world.size == 1:
        return
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in with_grad])
    tdist.all_reduce(flat)
    flat /= _world.size
    offset = 0
    for p in with_grad:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any (a NaN on one rank stops them all)."""
    if _world.size == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t)
    return bool(t.item() > 0)


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (a picklable value)."""
    if _world.size == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _world.size > 1:
        tdist.barrier()
