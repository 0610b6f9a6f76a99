"""Helpers shared by the test modules (``from helpers import ROOT, SYN, tiny_config``); fixtures live in conftest.py."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "dcgan": dict(z_dim=16, channel_base=128, channel_max=64),
    "stylegan": dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=32),
    "stylegan2": dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=32),
}
SYN = "synthetic:?n=128&resolution=16&hair=blonde,blue,black&eyes=red,green"


def tiny_config(arch="dcgan", **kw):
    """A TrainConfig for a model small enough to train hundreds of steps on a CPU in seconds (train it with
    ``run_train(cfg, SYN, out_dir)``)."""
    from animegen.train import TrainConfig

    values = dict(resolution=16, arch=arch, batch=8, kimg=0.4, snapshot_kimg=0.2, log_every=10, progress=False,
                  **TINY[arch])
    values.update(kw)
    return TrainConfig(**values)
