"""The training loop shared by every architecture: data on the device, D and G steps, lazy regularisers,
EMA, snapshots, atomic checkpoints, exact resume, init-from, NaN guard."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..data import open_dataset
from animegen.image_files import save_grid
from ..latent.tools import map_z, render_ws
from ..models import build_models
from ..utils import atomic_replace, atomic_write_text, human_bytes, peak_memory_bytes, resolve_device, write_json
from .checkpoint import load_checkpoint, load_weights, model_kwargs, save_checkpoint
from .config import TrainConfig
from .losses import PathLength, R1, ema_beta, make_loss, style_mix
from .transfer import init_from

# Options a resumed run may change; everything else must match the checkpoint.
RESUMABLE_OVERRIDES = ("kimg", "epochs", "snapshot_kimg", "log_every", "progress", "device", "amp", "out")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint was kept."""


@dataclass
class TrainResult:
    out: Path
    images_seen: int
    steps: int
    wall_s: float
    img_per_s: float
    peak_memory_bytes: int
    device: str


class BatchSampler:
    """Indices into the device-resident dataset: concatenated random permutations (works for any N, also
    N < batch), drawn from its own generator so that its state can be saved and restored exactly."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.gen = torch.Generator().manual_seed(seed)
        self.buffer = torch.empty(0, dtype=torch.int64)

    def next(self, batch: int) -> torch.Tensor:
        while len(self.buffer) < batch:
            self.buffer = torch.cat([self.buffer, torch.randperm(self.n, generator=self.gen)])
        idx, self.buffer = self.buffer[:batch], self.buffer[batch:]
        return idx

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.buffer = state["buffer"].clone()


def images_to_device(arr: np.ndarray, device: torch.device, channels_last: bool, chunk: int = 4096) -> torch.Tensor:
    """uint8 [N, H, W, C] (possibly a read-only memmap) -> uint8 [N, C, H, W] on the device, copied in chunks so
    the host never holds a second full copy."""
    n, h, w, c = arr.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((n, c, h, w), dtype=torch.uint8, device=device, memory_format=fmt)
    for i in range(0, n, chunk):
        out[i:i + chunk] = torch.from_numpy(np.array(arr[i:i + chunk])).permute(0, 3, 1, 2)
    return out


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


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


def _fixed_latents(G: nn.Module, cfg: TrainConfig, class_rows: torch.Tensor | None):
    gen = torch.Generator().manual_seed(cfg.seed + 12345)
    cols = cfg.grid_size
    rows = cols if class_rows is None else len(class_rows)
    z = torch.randn(rows * cols, G.z_dim, generator=gen)
    c = None if class_rows is None else class_rows.repeat_interleave(cols, dim=0)
    return z, c, cols


def plot_losses(log_path: Path, out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "kimg" in r and "loss_d" in r]
    if not rows:
        return
    keys = [k for k in ("loss_d", "loss_g", "r1", "pl") if any(k in r for r in rows)]
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        pts = [(r["kimg"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("kimg")
    fig.tight_layout()
    atomic_replace(out_png, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _resume_config(cfg: TrainConfig, saved: dict) -> TrainConfig:
    base = TrainConfig.from_dict(saved)
    diff = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_OVERRIDES and saved.get(k) != v]
    if diff:
        raise ValueError("--resume continues the run stored in the checkpoint; these options differ from it: "
                         + ", ".join(f"{k} ({saved.get(k)!r} -> {getattr(cfg, k)!r})" for k in diff)
                         + ". Drop them, or start a new run in another --out.")
    return dataclasses.replace(base, **{k: getattr(cfg, k) for k in RESUMABLE_OVERRIDES})


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Train a GAN as ``cfg`` says; write the Model directory ``cfg.out``. See TrainConfig for the options."""
    cfg = cfg.with_arch_defaults()
    out = Path(cfg.out)
    ckpt_file = out / "checkpoint.pt"
    state = None
    if resume:
        if not ckpt_file.exists():
            raise FileNotFoundError(f"--resume: {ckpt_file} does not exist; start the run without --resume")
        state = load_checkpoint(ckpt_file)
        cfg = _resume_config(cfg, state["config"]).with_arch_defaults()
    elif ckpt_file.exists():
        raise FileExistsError(f"{out} already holds a run (checkpoint.pt); pass --resume to continue it, "
                              "or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    (out / "snapshots").mkdir(exist_ok=True)
    device = resolve_device(cfg.device)
    use_amp = cfg.uses_amp(device.type)
    channels_last = use_amp or device.type == "cuda"
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    # --- data: uint8 on the device; conditions as float rows
    data = open_dataset(cfg.data, cfg.resolution)
    if cfg.conditional and data.labels is None:
        raise ValueError(f"--conditional needs a labelled dataset; {cfg.data} has no labels "
                         "(label it first with `animegen label`, or train unconditionally)")
    class_names = list(data.class_names) if cfg.conditional else []
    if state is not None and class_names != list(state["class_names"]):
        raise ValueError("--resume: the dataset's classes differ from the checkpoint's")
    images = images_to_device(data.images, device, channels_last)
    conditions = torch.from_numpy(data.conditions()).to(device) if cfg.conditional else None
    n_data, img_channels = images.shape[0], images.shape[1]
    total_images = int(round(cfg.kimg * 1000)) if cfg.kimg is not None else int(round(cfg.epochs * n_data))

    # --- models, optimisers, plug-ins
    G, D = build_models(cfg.arch, **model_kwargs(cfg, len(class_names), img_channels))
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    if state is None and cfg.init_from:
        init_from(G, D, G_ema, cfg, class_names, out)
    for block in list(D.blocks)[: cfg.freeze_d]:
        block.requires_grad_(False)
    for m in (G, D, G_ema):
        m.to(device)
        if channels_last:
            m.to(memory_format=torch.channels_last)
    d_params = [p for p in D.parameters() if p.requires_grad]
    adam = dict(betas=tuple(cfg.betas), fused=True) if device.type == "cuda" else dict(betas=tuple(cfg.betas))
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, **adam)
    opt_D = torch.optim.Adam(d_params, lr=cfg.lr_d, **adam)
    loss = make_loss(cfg.loss, cfg.real_label)
    regs = [R1(cfg.r1_gamma, cfg.r1_interval), PathLength(cfg.pl_weight, cfg.pl_interval, cfg.pl_decay)]
    if cfg.arch != "stylegan":
        regs = [r for r in regs if r.target == "D"]  # path length needs a w space
    sampler = BatchSampler(n_data, cfg.seed)
    ema_decay = ema_beta(cfg.batch, cfg.ema_kimg)
    step, images_seen = 0, 0

    if state is not None:
        for module, key in ((G, "G"), (D, "D"), (G_ema, "G_ema")):
            load_weights(module, state, key)
        opt_G.load_state_dict(state["opt_G"]); opt_D.load_state_dict(state["opt_D"])
        for r in regs:
            r.load_state_dict(state["regularizers"].get(r.name, {}) or r.state_dict())
        sampler.load_state_dict(state["sampler"])
        step, images_seen = int(state["step"]), int(state["images_seen"])
        _set_rng_state(state["rng"], device)
        _truncate_log(out / "train_log.jsonl", step)
    cfg.save(out / "config.json")

    class_rows = _class_rows(conditions)
    fixed_z, fixed_c, grid_cols = _fixed_latents(G, cfg, class_rows)
    if state is None:
        reals = (images[: cfg.grid_size ** 2].float().cpu() / 127.5 - 1)
        save_grid(reals, out / "samples" / "reals.png", ncol=cfg.grid_size)

    def autocast(enabled: bool = True):
        """bf16 autocast when amp is in use; ``enabled=False`` keeps a pass in float32 (the regularisers')."""
        return torch.autocast(device.type, dtype=torch.bfloat16) if use_amp and enabled else nullcontext()

    def real_batch():
        idx = sampler.next(cfg.batch)
        # pinned + non_blocking: a pageable host->device copy would synchronise the host every step
        idx = idx.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else idx
        x = images[idx].float().div_(127.5).sub_(1.0)
        if cfg.xflip:
            flip = torch.rand(len(x), 1, 1, 1, device=device) < 0.5
            x = torch.where(flip, x.flip(3), x)
        return x, (conditions[idx] if conditions is not None else None)

    def fake_conditions(n: int):
        if conditions is None:
            return None
        return conditions[torch.randint(n_data, (n,), device=device)]

    def generate(z, c, update_w_avg: bool):
        ws = G.mapping(z, c, update_w_avg=update_w_avg)
        ws = style_mix(G, z, c, ws, cfg.style_mixing)
        return G.synthesis(ws), ws

    # accumulators live on the device: no host sync per step
    acc_keys = ["loss_d", "loss_g", "d_real", "d_fake"] + [r.name for r in regs]
    acc = torch.zeros(len(acc_keys), device=device)  # sums on the device
    zero = torch.zeros((), device=device)
    counts = [0] * len(acc_keys)  # how many steps contributed to each sum (regularisers: due steps only)
    acc_steps = 0
    next_snapshot = (images_seen // int(cfg.snapshot_kimg * 1000) + 1) * int(cfg.snapshot_kimg * 1000)
    log_path = out / "train_log.jsonl"
    t_start = time.perf_counter()
    t_last, seen_last = t_start, images_seen
    start_seen = images_seen
    progress = None
    if cfg.progress:
        from tqdm.auto import tqdm
        progress = tqdm(total=total_images, initial=images_seen, unit="img", unit_scale=True, dynamic_ncols=True,
                        desc=f"{cfg.arch}{'-cond' if conditions is not None else ''}")

    def flush_log():
        nonlocal acc, counts, acc_steps, t_last, seen_last
        if acc_steps == 0:
            return {}
        sums = acc.tolist()
        now = time.perf_counter()
        rate = (images_seen - seen_last) / max(now - t_last, 1e-9)
        row = {"step": step, "kimg": round(images_seen / 1000, 3)}
        row |= {k: v / n for k, v, n in zip(acc_keys, sums, counts) if n > 0}  # regularisers: mean over due steps
        row["img_s"] = round(rate, 2)
        bad = [k for k in acc_keys if k in row and not math.isfinite(row[k])]
        if bad:
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step, "kimg": row["kimg"], "event": "diverged", "losses": bad}) + "\n")
            raise TrainingDiverged(
                f"{', '.join(bad)} became NaN/Inf before step {step} ({row['kimg']} kimg); stopped. The last good "
                f"checkpoint in {out} was kept. Try a lower learning rate, a larger r1_gamma, or --amp off.")
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if progress is not None:
            progress.set_postfix({k: f"{row[k]:.3f}" for k in ("loss_d", "loss_g")} | {"img/s": f"{rate:.0f}"})
        acc = torch.zeros_like(acc)
        counts = [0] * len(acc_keys)
        acc_steps, t_last, seen_last = 0, now, images_seen
        return row

    def snapshot():
        img = render_ws(G_ema, map_z(G_ema, fixed_z, fixed_c, 1.0, device), device)
        save_grid(img, out / "samples" / f"fakes-{images_seen / 1000:07.1f}kimg.png", ncol=grid_cols)
        for name, p in G.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(f"parameter {name} is not finite at {images_seen / 1000:.1f} kimg; the last "
                                       f"good checkpoint in {out} was kept")
        ckpt = {
            "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "step": step, "images_seen": images_seen, "rng": _rng_state(device), "sampler": sampler.state_dict(),
            "regularizers": {r.name: r.state_dict() for r in regs},
            "config": cfg.to_dict(), "class_names": class_names, "img_channels": img_channels,
            "version": __version__,
        }
        save_checkpoint(ckpt, ckpt_file)
        # a small sampling-only snapshot per tick, for FID over training time (`animegen evaluate --snapshots`)
        snap = {"G_ema": G_ema.state_dict(), "images_seen": images_seen, "config": cfg.to_dict(),
                "class_names": class_names, "img_channels": img_channels, "version": __version__}
        save_checkpoint(snap, out / "snapshots" / f"G_ema-{images_seen / 1000:07.1f}kimg.pt")
        plot_losses(log_path, out / "loss.png")

    G.train(); D.train()
    d_trainable = d_params
    while images_seen < total_images:
        # ---- D step
        with torch.no_grad(), autocast():
            z = torch.randn(cfg.batch, G.z_dim, device=device)
            c_fake = fake_conditions(cfg.batch)
            fake, _ = generate(z, c_fake, update_w_avg=False)
        real, c_real = real_batch()
        d_due = [r for r in regs if r.target == "D" and r.due(step)]
        if d_due:
            real.requires_grad_(True)
        with autocast(enabled=not d_due):  # R1's gradient w.r.t. the reals is taken through a float32 graph
            real_logits = D(real, c_real).float()
        with autocast():
            fake_logits = D(fake.detach(), c_fake).float()
        loss_d = loss.d_loss(real_logits, fake_logits)
        total_d = loss_d
        reg_vals = {}
        for r in d_due:
            reg_vals[r.name] = r.penalty({"real": real, "real_logits": real_logits})
            total_d = total_d + reg_vals[r.name]
        opt_D.zero_grad(set_to_none=True)
        total_d.backward()
        opt_D.step()

        # ---- G step
        for p in d_trainable:
            p.requires_grad_(False)
        z = torch.randn(cfg.batch, G.z_dim, device=device)
        c_g = fake_conditions(cfg.batch)
        g_due = [r for r in regs if r.target == "G" and r.due(step)]
        with autocast(enabled=not g_due):  # path length's Jacobian (mapping -> ws -> image) in float32
            fake, ws = generate(z, c_g, update_w_avg=True)
        with autocast():
            gen_logits = D(fake, c_g).float()
        loss_g = loss.g_loss(gen_logits)
        total_g = loss_g
        for r in g_due:
            reg_vals[r.name] = r.penalty({"fake": fake, "ws": ws})
            total_g = total_g + reg_vals[r.name]
        opt_G.zero_grad(set_to_none=True)
        total_g.backward()
        opt_G.step()
        for p in d_trainable:
            p.requires_grad_(True)

        # ---- EMA
        with torch.no_grad():
            g_params, e_params = list(G.parameters()), list(G_ema.parameters())
            if ema_decay > 0:
                torch._foreach_lerp_(e_params, g_params, 1.0 - ema_decay)
            else:
                torch._foreach_copy_(e_params, g_params)
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)

        step += 1
        images_seen += cfg.batch
        with torch.no_grad():
            vals = [loss_d.detach(), loss_g.detach(), real_logits.detach().mean(), fake_logits.detach().mean()]
            vals += [reg_vals[r.name].detach() / (r.weight * r.interval) if r.name in reg_vals else zero
                     for r in regs]
            acc += torch.stack(vals).float()
        counts = [n + (i < 4 or acc_keys[i] in reg_vals) for i, n in enumerate(counts)]
        acc_steps += 1
        if progress is not None:
            progress.update(cfg.batch)
        done = images_seen >= total_images
        snap = done or images_seen >= next_snapshot
        if snap or step % cfg.log_every == 0:
            flush_log()
        if snap:
            snapshot()
            next_snapshot += int(cfg.snapshot_kimg * 1000)
            t_last = time.perf_counter()  # snapshot time is not training throughput

    if progress is not None:
        progress.close()
    wall = time.perf_counter() - t_start
    result = TrainResult(out=out, images_seen=images_seen, steps=step, wall_s=wall,
                         img_per_s=(images_seen - start_seen) / max(wall, 1e-9),
                         peak_memory_bytes=peak_memory_bytes(device), device=str(device))
    summary = dataclasses.asdict(result) | {"out": str(out), "kimg": images_seen / 1000, "torch": torch.__version__}
    write_json(out / "summary.json", summary)
    print(f"done: {images_seen / 1000:.1f} kimg, {step} steps in {wall:.1f} s, {result.img_per_s:.1f} img/s, "
          f"peak memory {human_bytes(result.peak_memory_bytes)} ({device}); model in {out}", flush=True)
    return result


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run continues from."""
    if not log_path.exists():
        return
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    keep = [r for r in rows if r.get("step", 0) <= step and "event" not in r]
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in keep))
