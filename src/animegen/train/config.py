"""Training configuration: one dataclass, JSON/YAML round trip, architecture defaults, CLI overrides."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from animegen.config import Config, load_config_file  # noqa: F401  (re-exported for callers)

AMP_MODES = ("auto", "on", "off")
# What older config.json files and checkpoints hold beside the options: the run's data, output and init model, now
# the arguments of run_train / run_transfer (and the CLI's --data, --out, --init-from).
RUN_KEYS = ("data", "out", "init_from")

# Defaults that differ by architecture; a field left at None takes these (see TrainConfig.resolved).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "dcgan": dict(z_dim=100, channel_base=2048, batch=128, lr_g=2e-4, lr_d=2e-4, betas=[0.5, 0.999],
                  real_label=[0.9, 1.0], r1_gamma=0.0, pl_weight=0.0, style_mixing=0.0, ema_kimg=0.0),
    "stylegan": dict(z_dim=512, channel_base=4096, batch=64, lr_g=1e-3, lr_d=1e-3, betas=[0.0, 0.99],
                     real_label=[1.0, 1.0], r1_gamma=10.0, pl_weight=2.0, style_mixing=0.9, ema_kimg=10.0),
}


@dataclass
class TrainConfig(Config):
    # data
    resolution: int = 64
    conditional: bool = False
    # model
    arch: str = "dcgan"
    cond_mode: str = "concat"          # concat | projection (learned class embedding + projection term in D)
    z_dim: int | None = None
    w_dim: int = 512
    mapping_layers: int = 8
    channel_base: int | None = None    # feature maps at resolution r: min(channel_max, channel_base / r)
    channel_max: int = 512
    # duration (kimg wins when both are given)
    kimg: float | None = None
    epochs: float | None = None
    # optimisation
    batch: int | None = None
    lr_g: float | None = None
    lr_d: float | None = None
    betas: list[float] | None = None
    loss: str = "bce"                  # bce (non-saturating logistic) | hinge
    real_label: list[float] | None = None  # real targets drawn from U[lo, hi] (label smoothing); [1, 1] = none
    r1_gamma: float | None = None
    r1_interval: int = 16
    pl_weight: float | None = None
    pl_interval: int = 16
    pl_decay: float = 0.01
    style_mixing: float | None = None
    ema_kimg: float | None = None      # half-life of the G_ema average in kimg; 0 = G_ema is a copy of G
    xflip: bool = True
    # bookkeeping
    seed: int = 0
    device: str = "auto"               # auto | cpu | cuda
    amp: str = "auto"                  # auto: bf16 autocast on CUDA only | on: bf16 + channels_last anywhere | off
    snapshot_kimg: float = 50.0
    log_every: int = 50                # steps between log lines
    grid_size: int = 8                 # samples per row (and rows when unconditional) of the snapshot grids
    progress: bool = True
    # transfer (run_transfer)
    class_map: dict[str, str] = field(default_factory=dict)  # new class -> old class, for the init model
    init_class: str | None = None      # old class every unmapped new class starts from
    freeze_d: int = 0                  # freeze the first K discriminator blocks (from the input side)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """As Config.from_dict; the keys of a run's inputs and output that configs and checkpoints written before
        they became run_train's arguments hold (RUN_KEYS) are dropped."""
        return super().from_dict({k: v for k, v in values.items() if k not in RUN_KEYS})

    def resolved(self) -> "TrainConfig":
        """A copy with every architecture default filled in, validated."""
        if self.arch not in ARCH_DEFAULTS:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCH_DEFAULTS)}")
        values = dataclasses.asdict(self)
        for key, default in ARCH_DEFAULTS[self.arch].items():
            if values[key] is None:
                values[key] = default
        cfg = TrainConfig(**values)
        if cfg.kimg is None and cfg.epochs is None:
            cfg.kimg = 100.0
        if cfg.loss not in ("bce", "hinge"):
            raise ValueError(f"unknown loss {cfg.loss!r}; choose bce or hinge")
        if cfg.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda (got {cfg.device!r})")
        if cfg.batch < 1:
            raise ValueError("batch must be >= 1")
        if isinstance(cfg.amp, bool):  # configs and checkpoints written when amp was a bool (true: on CUDA)
            cfg.amp = "auto" if cfg.amp else "off"
        if cfg.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {', '.join(AMP_MODES)} (got {cfg.amp!r})")
        return cfg

    def uses_amp(self, device_type: str) -> bool:
        """Whether training on ``device_type`` runs in bf16 autocast (with channels_last)."""
        return self.amp == "on" or (self.amp == "auto" and device_type == "cuda")
