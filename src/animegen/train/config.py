"""Training configuration: one dataclass, JSON/YAML round trip, architecture defaults, CLI overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from animegen.config import Config, load_config_file, opt  # noqa: F401  (load_config_file: re-exported)
from animegen.train.augment import SMALL_DATASET

AMP_MODES = ("auto", "on", "off")
# What older config.json files and checkpoints hold beside the options: the run's data, output and init model, now
# the arguments of run_train / run_transfer (and the CLI's --data, --out, --init-from).
RUN_KEYS = ("data", "out", "init_from")

# Defaults that differ by architecture; a field left at None takes these (see TrainConfig.with_arch_defaults).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "dcgan": dict(z_dim=100, channel_base=2048, batch=128, lr_g=2e-4, lr_d=2e-4, betas=[0.5, 0.999],
                  real_label=[0.9, 1.0], r1_gamma=0.0, pl_weight=0.0, style_mixing=0.0, ema_kimg=0.0,
                  cond_mode="projection", g_batch="reuse"),
    "stylegan": dict(z_dim=512, channel_base=4096, batch=64, lr_g=1e-3, lr_d=1e-3, betas=[0.0, 0.99],
                     real_label=[1.0, 1.0], r1_gamma=10.0, pl_weight=2.0, style_mixing=0.9, ema_kimg=10.0,
                     # the class as StyleGAN2-ADA reads it (embedding in G, projection in D; DCGAN's too): with the
                     # papers' concat, a 117-class model's FID did not improve over 72 kimg on MLDS (README, Benchmarks)
                     cond_mode="projection", g_batch="fresh"),
    # StyleGAN2-ADA's settings where they bear on the comparison with v1: lr 0.0025, R1 gamma = 0.0002 *
    # resolution^2 / batch (its 'auto' heuristic, filled in by with_arch_defaults), lazy R1 / path length as steps of
    # their own with the optimiser adjusted for the interval. Unlike its 'auto' config: 8 mapping layers (auto: 2)
    # and path length every 16 steps (the reference: 4) as v1, channel_base 8192 (auto: 16384), no EMA ramp-up,
    # path length on the whole batch (the reference: half)
    "stylegan2": dict(z_dim=512, channel_base=8192, batch=32, lr_g=2.5e-3, lr_d=2.5e-3, betas=[0.0, 0.99],
                      real_label=[1.0, 1.0], r1_gamma=None, pl_weight=2.0, style_mixing=0.9, ema_kimg=10.0,
                      cond_mode="projection",  # StyleGAN2-ADA's class embedding in G, projection in D
                      g_batch="fresh"),
}
# What a run saved before an option existed used instead of its default (saved_config fills these in).
LEGACY = {"g_batch": "fresh"}
STYLE_ARCHS = ("stylegan", "stylegan2")  # a mapping network and a w space: style mixing, path length, truncation


def saved_config(values: dict[str, Any]) -> dict[str, Any]:
    """The options of a run's saved config (config.json, a checkpoint's): an option newer than the run takes the
    value the run used (LEGACY), not its default."""
    return LEGACY | values


def r1_auto(resolution: int, batch: int) -> float:
    """StyleGAN2-ADA's R1 weight heuristic: 0.0002 * resolution^2 / batch."""
    return 0.0002 * resolution ** 2 / batch


def _arch(help: str, key: str, **kw: Any) -> dict[str, Any]:
    """Metadata of a field whose default depends on the architecture (None: ARCH_DEFAULTS)."""
    return opt(help, default_text=", ".join(f"{_fmt(d[key])} {arch}" for arch, d in ARCH_DEFAULTS.items()), **kw)


def _fmt(value: Any) -> str:
    if value is None:
        return "0.0002*resolution^2/batch"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


@dataclass
class TrainConfig(Config):
    # data
    resolution: int = field(default=64, metadata=opt("image size in pixels (a power of two: 32, 64, 128, 256)"))
    conditional: bool = field(default=False, metadata=opt(
        "condition G and D on the dataset's classes (one-hot or multi-hot)"))
    # model
    arch: str = field(default="dcgan", metadata=opt("architecture", choices=tuple(ARCH_DEFAULTS),
                                                    noun="architecture"))
    cond_mode: str | None = field(default=None, metadata=_arch(
        "conditioning: concat (class vector into G's input and D's input channels) or projection (learned class "
        "embedding in G, projection term in D)", "cond_mode", choices=("concat", "projection"), unset=""))
    z_dim: int | None = field(default=None, metadata=_arch("latent size", "z_dim", unset=0))
    w_dim: int = field(default=512, metadata=opt("StyleGAN w size"))
    mapping_layers: int = field(default=8, metadata=opt("StyleGAN mapping network depth"))
    channel_base: int | None = field(default=None, metadata=_arch(
        "feature maps at resolution r: min(channel_max, channel_base / r)", "channel_base", unset=0))
    channel_max: int = field(default=512, metadata=opt("cap on feature maps per layer"))
    # duration (kimg wins when both are given)
    kimg: float | None = field(default=None, metadata=opt(
        "training length in thousands of real images shown to D", default_text="100 when epochs is not given"))
    epochs: float | None = field(default=None, metadata=opt(
        "training length in passes over the dataset (when kimg is not given)"))
    # optimisation
    batch: int | None = field(default=None, metadata=_arch("batch size", "batch", unset=0))
    lr_g: float | None = field(default=None, metadata=_arch("generator learning rate", "lr_g", unset=0))
    lr_d: float | None = field(default=None, metadata=_arch("discriminator learning rate", "lr_d", unset=0))
    betas: list[float] | None = field(default=None, metadata=_arch("Adam betas", "betas"))
    adam_eps: float = field(default=1e-8, metadata=opt(
        "Adam's epsilon (the papers' 1e-8; larger damps the steps of parameters whose gradient is near zero)"))
    loss: str = field(default="bce", metadata=opt("bce (non-saturating logistic) or hinge", choices=("bce", "hinge")))
    real_label: list[float] | None = field(default=None, metadata=_arch(
        "real targets drawn from U[LO, HI] (label smoothing; 1 1 = none)", "real_label"))
    r1_gamma: float | None = field(default=None, metadata=_arch("R1 penalty weight (0 turns it off)", "r1_gamma",
                                                                 unset=-1))
    r1_interval: int = field(default=16, metadata=opt("apply R1 every N steps (lazy regularisation)"))
    pl_weight: float | None = field(default=None, metadata=_arch(
        "path-length regularisation weight (stylegan; 0 turns it off)", "pl_weight", unset=-1))
    pl_interval: int = field(default=16, metadata=opt("apply path-length regularisation every N steps"))
    pl_decay: float = field(default=0.01, metadata=opt("decay of the path-length running mean"))
    style_mixing: float | None = field(default=None, metadata=_arch(
        "probability of style-mixing regularisation (stylegan)", "style_mixing", unset=-1))
    ema_kimg: float | None = field(default=None, metadata=_arch(
        "half-life of G_ema in kimg (0: G_ema is a copy of G)", "ema_kimg", unset=-1))
    g_batch: str | None = field(default=None, metadata=_arch(
        "G's step on the batch D's step has just seen as fakes (reuse: their latents and classes, generated once "
        "per step, as the DCGAN paper's reference and the PyTorch DCGAN tutorial train) or on a newly drawn batch "
        "(fresh: as StyleGAN's references train)", "g_batch", choices=("reuse", "fresh"), unset=""))
    xflip: bool = field(default=True, metadata=opt("random horizontal flips (p 0.5) of the real images"))
    data_placement: str = field(default="auto", metadata=opt(
        "where the training images live: device (all of them, as uint8), stream (read from the packed set's "
        "memory map batch by batch, the next batch prefetched) or auto (stream when the set is larger than "
        "data_memory_fraction of the device's memory)", choices=("auto", "device", "stream")))
    data_memory_fraction: float = field(default=0.3, metadata=opt(
        "auto placement: the share of the device's memory (a GPU's total, or the host's available memory) the "
        "set may take on the device"))
    augment: str | None = field(default=None, metadata=opt(
        "augmentation of every image D sees: ada (adaptive, p tuned from D's overfitting r_t), diffaugment "
        "(colour, translation, cutout) or none", choices=("ada", "diffaugment", "none"), unset="",
        default_text=f"stylegan2: ada below {SMALL_DATASET:,} training images, else none; other architectures: "
                     "none"))
    ada_target: float = field(default=0.6, metadata=opt("ADA: the r_t = E[sign(D(real))] that p is tuned towards"))
    ada_kimg: float = field(default=500.0, metadata=opt("ADA: thousands of images for p to move from 0 to 1"))
    ada_interval: int = field(default=4, metadata=opt("ADA: steps between updates of p"))
    # bookkeeping
    seed: int = field(default=0, metadata=opt("seed for initialisation, data order and latents"))
    device: str = field(default="auto", metadata=opt("device", choices=("auto", "cpu", "cuda")))
    amp: str = field(default="auto", metadata=opt(
        "mixed precision: auto (bf16 autocast and channels_last on CUDA only), on (on any device, CPU included), "
        "off (float32 everywhere)", choices=AMP_MODES))
    snapshot_kimg: float = field(default=50.0, metadata=opt(
        "write a checkpoint and a sample grid every N kimg (0: only at the end)", unset=0))
    log_every: int = field(default=50, metadata=opt("steps between train_log.jsonl lines"))
    grid_size: int = field(default=8, metadata=opt("columns of the sample grids (and rows when unconditional)"))
    progress: bool = field(default=True, metadata=opt("show a progress bar"))
    # checkpoint upload (train/remote.py): what makes a retried task resume
    checkpoint_uri: str | None = field(default=None, metadata=opt(
        "object-store prefix (s3://bucket/prefix) the Model directory is uploaded to every checkpoint_interval_s "
        "and at the end (manifest last); a run whose --out holds no checkpoint first restores the last complete "
        "upload from there and continues it exactly", default_text="no upload", unset=""))
    checkpoint_interval_s: float = field(default=600.0, metadata=opt(
        "seconds between checkpoint uploads (with checkpoint_uri); an upload waits for the next log line"))
    # transfer (run_transfer)
    class_map: dict[str, str] = field(default_factory=dict, metadata=opt(
        "NEW=OLD: new class NEW starts from old class OLD (repeatable); same names map by themselves"))
    init_class: str | None = field(default=None, metadata=opt(
        "old class every unmapped new class starts from (a partial name averages every class containing it; for an "
        "unconditional target, the class folded into it)", default_text="the mean of the old classes", unset=""))
    freeze_d: int = field(default=0, metadata=opt("freeze the first K discriminator blocks (from the input side)"))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """As Config.from_dict; the keys of a run's inputs and output that configs and checkpoints written before
        they became run_train's arguments hold (RUN_KEYS) are dropped."""
        return super().from_dict({k: v for k, v in values.items() if k not in RUN_KEYS})

    def validate(self) -> None:
        if isinstance(self.amp, bool):  # configs and checkpoints written when amp was a bool (true: on CUDA)
            self.amp = "auto" if self.amp else "off"
        if self.batch is not None and self.batch < 1:
            raise ValueError("batch must be >= 1")
        if self.ada_interval < 1 or self.ada_kimg <= 0:
            raise ValueError("ada_interval must be >= 1 and ada_kimg > 0")
        if self.snapshot_kimg < 0:
            raise ValueError("snapshot_kimg must be >= 0 (0: a snapshot only at the end)")

    def with_arch_defaults(self) -> "TrainConfig":
        """A copy with every architecture default (ARCH_DEFAULTS) filled in, and kimg 100 when no length is set."""
        values = dataclasses.asdict(self)
        for key, default in ARCH_DEFAULTS[self.arch].items():
            if values[key] is None:
                values[key] = default
        if values["r1_gamma"] is None:  # stylegan2: the heuristic
            values["r1_gamma"] = r1_auto(values["resolution"], values["batch"])
        if values["kimg"] is None and values["epochs"] is None:
            values["kimg"] = 100.0
        return TrainConfig(**values)

    def uses_amp(self, device_type: str) -> bool:
        """Whether training on ``device_type`` runs in bf16 autocast (with channels_last)."""
        return self.amp == "on" or (self.amp == "auto" and device_type == "cuda")
