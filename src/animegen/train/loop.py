"""The training loop shared by every architecture: data on the device, D and G steps (phases.py), lazy
regularisers, EMA, snapshots, atomic checkpoints, exact resume (state.py), init-from (transfer.py), NaN guard,
checkpoint upload to the object store and restore from it (remote.py: what makes a retried task resume)."""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from animegen import parallel
from animegen.data import open_dataset
from animegen.image_files import save_grid
from animegen.latent.tools import map_z, render_ws
from animegen.models import build_models
from animegen.models.batchnorm import batchnorm_layers
from animegen.models.layers import BatchNorm2d
from animegen.train.augment import SMALL_DATASET, AdaptiveAugment, make_augment
from animegen.train.checkpoint import load_checkpoint, model_kwargs, recalibrate_for_sampling, save_checkpoint
from animegen.train.config import STYLE_ARCHS, TrainConfig, saved_config
from animegen.train.log import LossMeter, TrainingDiverged, TrainLog, plot_losses, truncate_log
from animegen.train.losses import R1, PathLength, ema_beta, make_loss
from animegen.train.phases import (
    Autocast,
    d_fakes,
    d_main,
    d_reg,
    d_reg_pass,
    due,
    frozen,
    g_main,
    g_reg,
    g_reg_pass,
    optimise,
    update_ema,
)
from animegen.train.remote import CheckpointUploader, restore
from animegen.train.state import BatchSampler, TrainData, TrainState, images_to_device, sampling_snapshot
from animegen.train.stream import StreamedImages, device_memory_bytes, should_stream
from animegen.train.transfer import inherit_architecture, init_from
from animegen.utils import human_bytes, peak_memory_bytes, read_json, reset_peak_memory, resolve_device, write_json

__all__ = ["TrainResult", "TrainingDiverged", "run_train", "run_transfer"]

# Options a resumed run may change; everything else must match the checkpoint.
RESUMABLE_OVERRIDES = ("kimg", "epochs", "snapshot_kimg", "log_every", "progress", "device", "amp", "checkpoint_uri",
                       "checkpoint_interval_s")
INPUTS = "inputs.json"  # the run's data and init model, in its Model directory


@dataclass
class TrainResult:
    out: Path
    images_seen: int
    steps: int
    wall_s: float
    img_per_s: float
    peak_memory_bytes: int
    device: str


@dataclass(frozen=True)
class FixedLatents:
    """The latents (and condition rows) of the snapshot grids, the same for the whole run."""

    z: torch.Tensor
    c: torch.Tensor | None
    cols: int


def run_train(cfg: TrainConfig, data: str | Path, out_dir: str | Path, resume: bool = False) -> TrainResult:
    """Train a GAN as ``cfg`` says (see TrainConfig) on ``data`` (a Dataset directory, an image folder or a
    ``synthetic:`` URI); write the Model directory ``out_dir``. ``resume``: continue the run in ``out_dir``
    exactly (a new run refuses an ``out_dir`` that holds one)."""
    return _run(cfg, str(data), Path(out_dir), resume, init_model=None)


def run_transfer(cfg: TrainConfig, init_model: str | Path, data: str | Path, out_dir: str | Path,
                 resume: bool = False, *, keep: Iterable[str] = ()) -> TrainResult:
    """Fine-tune the Model ``init_model`` (a Model directory or a checkpoint file) on ``data`` into ``out_dir``:
    the architecture options ``cfg`` leaves at their defaults are the source's (``inherit_architecture``; ``keep``
    names options the user gave explicitly, which stay as given even at their default value), and
    the weights start as the source's, classes remapped (``init_from``; the report in ``out_dir/init_report.json``).
    The same call from the CLI (``animegen train --init-from``) and from the pipeline's transfer task."""
    cfg = inherit_architecture(cfg, init_model, keep)
    return _run(cfg, str(data), Path(out_dir), resume, init_model=str(init_model))


def _run(cfg: TrainConfig, data_uri: str, out: Path, resume: bool, init_model: str | None) -> TrainResult:
    """run_train / run_transfer: set up (or restore) the run, train it, write summary.json. In a torchrun job
    (animegen.parallel) every rank runs this; rank 0 alone writes files."""
    given, cfg = cfg, cfg.with_arch_defaults()
    device = resolve_device(cfg.device)
    reset_peak_memory(device)  # this run's peak, not that of what the process ran before
    w = parallel.init(device.type)
    if cfg.batch % w.size:
        raise ValueError(f"--batch {cfg.batch} is the global batch: it must divide among {w.size} processes")
    restored = None
    if cfg.checkpoint_uri and not resume:  # a retried task with a fresh --out continues its last upload
        restored = restore(cfg.checkpoint_uri, out) if w.main else None
        restored = parallel.broadcast_object(restored)
        resume = restored is not None
    ckpt = _previous_run(out / "checkpoint.pt", resume)
    parallel.barrier()  # every rank has looked for a previous run before rank 0 writes anything
    if ckpt is not None:
        cfg = _resume_config(given, ckpt["config"]).with_arch_defaults()
    for folder in (out, out / "samples", out / "snapshots"):
        folder.mkdir(parents=True, exist_ok=True)
    if w.main:
        _record_inputs(out, data_uri, init_model, ckpt)
    amp = Autocast(device.type, cfg.uses_amp(device.type))
    channels_last = amp.bf16 or device.type == "cuda"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    data = _load_data(cfg, data_uri, device, channels_last, ckpt)
    if cfg.augment is None:  # the default: ADA for StyleGAN2 on a small set, else none (recorded in config.json)
        small = cfg.arch == "stylegan2" and data.n < SMALL_DATASET
        cfg = dataclasses.replace(cfg, augment="ada" if small else "none")
    state = _build_state(cfg, data, device, channels_last, out, init_model if ckpt is None else None)
    if ckpt is not None:
        state.restore(ckpt, device)
        if w.main:
            truncate_log(out / "train_log.jsonl", state.step)
    if w.main:
        cfg.save(out / "config.json")
    fixed = _fixed_latents(state.G, cfg, _class_rows(data.conditions))
    if ckpt is None and w.main:
        reals = (data.images[: cfg.grid_size ** 2].float().cpu() / 127.5 - 1)
        save_grid(reals, out / "samples" / "reals.png", ncol=cfg.grid_size)
        # the initialised model (after init-from: the transferred one) as the 0 kimg point of FID-over-kimg curves
        init = state.checkpoint(cfg.to_dict(), data.class_names, data.img_channels, device)
        save_checkpoint(sampling_snapshot(init), out / "snapshots" / f"G_ema-{0:07.1f}kimg.pt")

    start_seen, t_start = state.images_seen, time.perf_counter()
    uploader = CheckpointUploader(cfg.checkpoint_uri, cfg.checkpoint_interval_s, restored) \
        if cfg.checkpoint_uri and w.main else None
    try:
        _train_loop(cfg, state, data, amp, out, fixed, uploader)
    finally:
        if uploader is not None:
            uploader.wait()
        if isinstance(data.images, StreamedImages):
            data.images.close()
    wall = time.perf_counter() - t_start
    result = TrainResult(out=out, images_seen=state.images_seen, steps=state.step, wall_s=wall,
                         img_per_s=(state.images_seen - start_seen) / max(wall, 1e-9),
                         peak_memory_bytes=peak_memory_bytes(device), device=str(device))
    if not w.main:
        return result
    summary = dataclasses.asdict(result) | {"out": str(out), "kimg": result.images_seen / 1000,
                                            "torch": torch.__version__, "processes": w.size}
    write_json(out / "summary.json", summary)
    print(f"done: {result.images_seen / 1000:.1f} kimg, {result.steps} steps in {wall:.1f} s, "
          f"{result.img_per_s:.1f} img/s, peak memory {human_bytes(result.peak_memory_bytes)} ({device}); "
          f"model in {out}", flush=True)
    if uploader is not None:  # the finished Model: a retry after a later failure restores it and trains no more
        uploader.upload(out, state.step, wait=True)
    return result


def _train_loop(cfg: TrainConfig, state: TrainState, data: TrainData, amp: Autocast, out: Path,
                fixed: FixedLatents, uploader: CheckpointUploader | None = None) -> None:
    """Steps until ``cfg``'s duration: D step, G step, EMA, a log line every ``log_every`` steps, a snapshot
    (sample grid, checkpoint, sampling snapshot) every ``snapshot_kimg`` and at the end; with an ``uploader``,
    at a log line once its interval has passed, the checkpoint of that step uploaded (in the background).
    Data parallel: each rank steps on its share ``n`` of the global batch (animegen.parallel)."""
    G, D, device = state.G, state.D, data.images.device
    w = parallel.world()
    n = cfg.batch // w.size
    total_images = int(round(cfg.kimg * 1000)) if cfg.kimg is not None else int(round(cfg.epochs * data.n))
    loss = make_loss(cfg.loss, cfg.real_label)
    ema_decay = ema_beta(cfg.batch, cfg.ema_kimg)
    ada = state.augment if isinstance(state.augment, AdaptiveAugment) else None
    separate = cfg.arch == "stylegan2"  # its regularisers take passes and optimiser steps of their own
    reuse = cfg.g_batch == "reuse"  # G's step on D's fakes: one pass through G per step
    meter = LossMeter(["loss_d", "loss_g", "d_real", "d_fake", "rt"] + [r.name for r in state.regs]
                      + (["ada_p"] if ada is not None else []), device)
    log = TrainLog(out / "train_log.jsonl", meter, state.images_seen,
                   _progress_bar(cfg, total_images, state.images_seen, data.conditions is not None))
    tick = int(round(cfg.snapshot_kimg * 1000))  # 0: no snapshot before the end
    next_snapshot = (state.images_seen // tick + 1) * tick if tick > 0 else total_images
    G.train()
    D.train()
    while state.images_seen < total_images:
        d_regs, g_regs = due(state.regs, "D", state.step), due(state.regs, "G", state.step)

        # ---- D: Dmain (+ Dreg when due) on a generated and a real batch
        z = _latents(n, G.z_dim, device)
        c_fake = data.fake_conditions(n)
        fake, ws = d_fakes(G, z, c_fake, cfg.style_mixing, amp, reuse, bool(g_regs) and not separate)
        real, c_real = data.real_batch(state.sampler.next(cfg.batch)[w.rank::w.size], cfg.xflip)
        if isinstance(data.images, StreamedImages):  # the next step's rows, gathered while this step runs
            data.images.prefetch(state.sampler.peek(cfg.batch)[w.rank::w.size])
        aug = state.augment
        loss_d, real_logits, fake_logits = d_main(D, loss, real, c_real, fake, c_fake, amp,
                                                  bool(d_regs) and not separate, aug)
        d_penalties = {} if separate else d_reg(d_regs, real, real_logits)
        optimise(state.opt_D, state.d_params, loss_d, d_penalties)
        if separate and d_regs:
            d_penalties = d_reg_pass(D, d_regs, real, c_real, aug)
            optimise(state.opt_D, state.d_params, torch.zeros((), device=device), d_penalties)

        # ---- G: Gmain (+ Greg when due) through D, whose parameters take no gradient
        with frozen(state.d_params):
            if reuse:  # the batch D has just seen (and its graph through G)
                z, c_gen, generated = z, c_fake, (fake, ws)
            else:
                z, c_gen, generated = _latents(n, G.z_dim, device), data.fake_conditions(n), None
            loss_g, fake, ws = g_main(G, D, loss, z, c_gen, cfg.style_mixing, amp, bool(g_regs) and not separate,
                                      aug, generated)
            g_penalties = {} if separate else g_reg(g_regs, fake, ws)
            optimise(state.opt_G, list(G.parameters()), loss_g, g_penalties)
            if separate and g_regs:
                z = _latents(n, G.z_dim, device)
                g_penalties = g_reg_pass(G, g_regs, z, data.fake_conditions(n), cfg.style_mixing)
                optimise(state.opt_G, list(G.parameters()), torch.zeros((), device=device), g_penalties)

        update_ema(G, state.G_ema, ema_decay)
        state.step += 1
        state.images_seen += cfg.batch
        if ada is not None:  # p follows r_t = E[sign(D(real))] of the augmented reals
            ada.observe(real_logits)
            ada.update(state.step, cfg.batch, state.images_seen)
        penalties = d_penalties | g_penalties  # logged without their weight and lazy interval
        meter.add({"loss_d": loss_d, "loss_g": loss_g, "d_real": real_logits.detach().mean(),
                   "d_fake": fake_logits.detach().mean(), "rt": torch.sign(real_logits.detach()).mean(),
                   **({"ada_p": torch.tensor(ada.p, device=device)} if ada is not None else {}),
                   **{r.name: penalties[r.name].detach() / (r.weight * r.interval) for r in d_regs + g_regs}})
        log.advance(cfg.batch)
        snap = state.images_seen >= total_images or state.images_seen >= next_snapshot
        if snap or state.step % cfg.log_every == 0:
            log.write(state.step, state.images_seen)
        if snap:
            _snapshot(state, cfg, data, out, fixed)
            next_snapshot += tick
            log.restart_clock()  # snapshot time is not training throughput
        # an upload starts where a log line was just written (the meter is empty, as it is on resume)
        if uploader is not None and (snap or state.step % cfg.log_every == 0) and uploader.due() \
                and state.images_seen < total_images:  # the end is uploaded once summary.json is written
            if not snap:
                _save_checkpoint(state, cfg, data, out)
            uploader.upload(out, state.step)
            log.restart_clock()
    log.close()


def _latents(n: int, z_dim: int, device: torch.device) -> torch.Tensor:
    """This rank's ``n`` latents of the global batch's draw."""
    return parallel.sharded(lambda m: torch.randn(m, z_dim, device=device), n)


def _snapshot(state: TrainState, cfg: TrainConfig, data: TrainData, out: Path, fixed: FixedLatents) -> None:
    """A sample grid of G_ema, the checkpoint (after a finiteness check of G), a sampling snapshot, loss.png
    (rank 0; the other ranks check G too, so a diverged G stops every rank at the same step)."""
    if not parallel.world().main:
        _check_finite(state.G, state.images_seen / 1000, out)
        return
    device = data.images.device
    kimg = state.images_seen / 1000
    # the grid samples a copy of G_ema with recalibrated BatchNorm statistics (as load_generator does for the
    # snapshot file), drawn with its own torch.Generator: G_ema, the checkpoint and the global RNG are untouched
    G_s = state.G_ema
    if batchnorm_layers(G_s):
        G_s = copy.deepcopy(G_s)
        recalibrate_for_sampling(G_s, data.class_names, cfg.batch)
    img = render_ws(G_s, map_z(G_s, fixed.z, fixed.c, 1.0, device), device)
    save_grid(img, out / "samples" / f"fakes-{kimg:07.1f}kimg.png", ncol=fixed.cols)
    ckpt = _save_checkpoint(state, cfg, data, out)
    # a small sampling-only snapshot per tick, for FID over training time (`animegen evaluate --snapshots`)
    save_checkpoint(sampling_snapshot(ckpt), out / "snapshots" / f"G_ema-{kimg:07.1f}kimg.pt")
    plot_losses(out / "train_log.jsonl", out / "loss.png")


def _save_checkpoint(state: TrainState, cfg: TrainConfig, data: TrainData, out: Path) -> dict:
    """``out/checkpoint.pt`` of the current step, after a finiteness check of G (a diverged G is never saved)."""
    _check_finite(state.G, state.images_seen / 1000, out)
    ckpt = state.checkpoint(cfg.to_dict(), data.class_names, data.img_channels, data.images.device)
    save_checkpoint(ckpt, out / "checkpoint.pt")
    return ckpt


def _check_finite(G: torch.nn.Module, kimg: float, out: Path) -> None:
    for name, p in G.named_parameters():
        if not torch.isfinite(p).all():
            raise TrainingDiverged(f"parameter {name} is not finite at {kimg:.1f} kimg; the last good checkpoint "
                                   f"in {out} was kept")


def _previous_run(ckpt_file: Path, resume: bool) -> dict | None:
    """The checkpoint a resumed run continues (None for a new run); a new run refuses an --out that holds one."""
    if resume:
        if not ckpt_file.exists():
            raise FileNotFoundError(f"--resume: {ckpt_file} does not exist; start the run without --resume")
        return load_checkpoint(ckpt_file)
    if ckpt_file.exists():
        raise FileExistsError(f"{ckpt_file.parent} already holds a run (checkpoint.pt); pass --resume to continue "
                              "it, or choose another --out")
    return None


def _record_inputs(out: Path, data: str, init_model: str | None, ckpt: dict | None) -> None:
    """``out/inputs.json``: the data (and init model) the run started from, which ``animegen train --resume``
    reads back; a resumed run must name the same data (a run older than inputs.json kept it in its config)."""
    path = out / INPUTS
    recorded = read_json(path) or {}
    if ckpt is not None:
        started = recorded.get("data", ckpt["config"].get("data"))
        if started is not None and started != data:
            raise ValueError(f"--resume continues the run stored in the checkpoint; it trains on {started!r}, not "
                             f"{data!r}. Give its data, or start a new run in another --out.")
        if recorded:
            return
        init_model = ckpt["config"].get("init_from")
    write_json(path, {"data": data, "init_model": init_model})


def _resume_config(cfg: TrainConfig, saved: dict) -> TrainConfig:
    """The checkpoint's config, with the options a resumed run may change taken from ``cfg``; any other option
    ``cfg`` sets must be the run's (one ``cfg`` leaves to its architecture's default, None, takes the run's)."""
    base = TrainConfig.from_dict(saved_config(saved)).with_arch_defaults()
    # an option newer than the checkpoint is absent from it: the run used LEGACY's value, else the option's default
    recorded = base.to_dict()
    diff = [k for k, v in cfg.to_dict().items()
            if k not in RESUMABLE_OVERRIDES and v is not None and recorded.get(k) != v]
    if diff:
        raise ValueError("--resume continues the run stored in the checkpoint; these options differ from it: "
                         + ", ".join(f"{k} ({recorded.get(k)!r} -> {getattr(cfg, k)!r})" for k in diff)
                         + ". Drop them, or start a new run in another --out.")
    return dataclasses.replace(base, **{k: getattr(cfg, k) for k in RESUMABLE_OVERRIDES})


def _load_data(cfg: TrainConfig, uri: str, device: torch.device, channels_last: bool,
               ckpt: dict | None) -> TrainData:
    """The dataset ``uri`` on the device: uint8 images and, for a conditional run, float condition rows."""
    data = open_dataset(uri, cfg.resolution)
    if cfg.conditional and data.labels is None:
        raise ValueError(f"--conditional needs a labelled dataset; {uri} has no labels "
                         "(label it first with `animegen label`, or train unconditionally)")
    class_names = list(data.class_names) if cfg.conditional else []
    if ckpt is not None and class_names != list(ckpt["class_names"]):
        raise ValueError("--resume: the dataset's classes differ from the checkpoint's")
    nbytes = data.images.nbytes
    if should_stream(nbytes, device, cfg.data_placement, cfg.data_memory_fraction):
        images = StreamedImages(data.images, device, channels_last)
        if parallel.world().main:
            where = "the memory map" if isinstance(data.images, np.memmap) else "host memory"
            print(f"data: {human_bytes(nbytes)} of images streamed from {where} (placement {cfg.data_placement}; "
                  f"the device's memory: {human_bytes(device_memory_bytes(device))})", flush=True)
    else:
        images = images_to_device(data.images, device, channels_last)
    conditions = torch.from_numpy(data.conditions()).to(device) if cfg.conditional else None
    return TrainData(images, conditions, class_names)


def _build_state(cfg: TrainConfig, data: TrainData, device: torch.device, channels_last: bool, out: Path,
                 init_model: str | None) -> TrainState:
    """Models (started from ``init_model``'s weights when given), optimisers, regularisers, sampler, at step 0."""
    G, D = build_models(cfg.arch, **model_kwargs(cfg, len(data.class_names), data.img_channels))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    if init_model:
        init_from(G, D, G_ema, cfg, init_model, data.class_names, out if parallel.world().main else None)
    if parallel.world().size > 1:  # DCGAN's BatchNorm: the global batch's statistics in G and D's steps
        for m in list(G.modules()) + list(D.modules()):
            if isinstance(m, BatchNorm2d):
                m.sync = True
    for block in list(D.blocks)[: cfg.freeze_d]:
        block.requires_grad_(False)
    for m in (G, D, G_ema):
        m.to(device)
        if channels_last:
            m.to(memory_format=torch.channels_last)
    d_params = [p for p in D.parameters() if p.requires_grad]
    regs = [R1(cfg.r1_gamma, cfg.r1_interval), PathLength(cfg.pl_weight, cfg.pl_interval, cfg.pl_decay)]
    if cfg.arch not in STYLE_ARCHS:
        regs = [r for r in regs if r.target == "D"]  # path length needs a w space
    fused = dict(fused=True) if device.type == "cuda" else {}
    lr_g, betas_g = lazy_adjusted(cfg, cfg.lr_g, [r for r in regs if r.target == "G"])
    lr_d, betas_d = lazy_adjusted(cfg, cfg.lr_d, [r for r in regs if r.target == "D"])
    opt_G = torch.optim.Adam(G.parameters(), lr=lr_g, betas=betas_g, eps=cfg.adam_eps, **fused)
    opt_D = torch.optim.Adam(d_params, lr=lr_d, betas=betas_d, eps=cfg.adam_eps, **fused)
    augment = make_augment(cfg.augment, cfg.ada_target, cfg.ada_kimg, cfg.ada_interval)
    return TrainState(G, D, G_ema, opt_G, opt_D, regs, BatchSampler(data.n, cfg.seed), d_params=d_params,
                      augment=augment)


def lazy_adjusted(cfg: TrainConfig, lr: float, regs: list) -> tuple[float, tuple[float, ...]]:
    """The optimiser's lr and betas. StyleGAN2 runs a lazy regulariser as an extra step every ``interval`` steps;
    its reference scales lr by c = interval / (interval + 1) and raises the betas to the power c, so the
    optimiser's time constants per image stay those of the plain schedule. Other architectures: unchanged."""
    on = [r for r in regs if r.weight > 0 and r.interval > 0]
    if cfg.arch != "stylegan2" or not on:
        return lr, tuple(cfg.betas)
    c = on[0].interval / (on[0].interval + 1)
    return lr * c, tuple(b ** c for b in cfg.betas)


def _class_rows(conditions: torch.Tensor | None, limit: int = 24) -> torch.Tensor | None:
    """The distinct condition vectors of the data (classes, or multi-hot combinations), most frequent first,
    at most ``limit``, in class order: one grid row each."""
    if conditions is None:
        return None
    rows, counts = torch.unique(conditions.cpu(), dim=0, return_counts=True)
    keep = torch.argsort(counts, descending=True, stable=True)[:limit]
    rows = rows[keep]
    order = torch.argsort(rows.argmax(dim=1) * (rows.shape[1] + 1) + rows.sum(dim=1).long(), stable=True)
    return rows[order]


def _fixed_latents(G: torch.nn.Module, cfg: TrainConfig, class_rows: torch.Tensor | None) -> FixedLatents:
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    cols = cfg.grid_size
    rows = cols if class_rows is None else len(class_rows)
    z = torch.randn(rows * cols, G.z_dim, generator=gen)
    c = None if class_rows is None else class_rows.repeat_interleave(cols, dim=0)
    return FixedLatents(z, c, cols)


def _progress_bar(cfg: TrainConfig, total_images: int, images_seen: int, conditional: bool):
    if not cfg.progress or not parallel.world().main:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total_images, initial=images_seen, unit="img", unit_scale=True, dynamic_ncols=True,
                desc=f"{cfg.arch}{'-cond' if conditional else ''}")
