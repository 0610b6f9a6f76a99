"""BatchNorm statistics for sampling (issue 12): recalibrate_batchnorm and where it is used."""
from __future__ import annotations

import copy
import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from animegen.latent import map_z, render_ws, sample
from animegen.models import build_models
from animegen.models.batchnorm import (
    batchnorm_layers,
    ensure_recalibrated,
    is_recalibrated,
    recalibrate_batchnorm,
    recalibration_inputs,
)

RES = 16
CLASSES = ["blonde hair", "red eyes", "blue hair"]


def make_dcgan(c_dim: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    G, _ = build_models("dcgan", c_dim=c_dim, resolution=RES, z_dim=8, channel_base=64)
    return G.eval()


def _trained_like(G: torch.nn.Module) -> torch.nn.Module:
    """Running statistics far from G's batch statistics (as after training): the recalibration must replace them."""
    for m in batchnorm_layers(G):
        m.running_mean.fill_(3.0)
        m.running_var.fill_(0.01)
    return G


def explicit_stats(G: torch.nn.Module, batches) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per BN layer: the mean over ``batches`` of each batch's mean and unbiased variance of the layer's input,
    G in train mode (the batch statistics the layers normalise with)."""
    ref = copy.deepcopy(G).train()
    layers = batchnorm_layers(ref)
    seen: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(len(layers))}

    def hook(i):
        def fn(_m, inp):
            x = inp[0].double()
            dims = [0] + list(range(2, x.ndim))
            seen[i].append((x.mean(dims), x.var(dims, unbiased=True)))
        return fn

    for i, m in enumerate(layers):
        m.register_forward_pre_hook(hook(i))
    with torch.no_grad():
        for z, c in batches:
            ref(z, c)
    return [(torch.stack([m for m, _ in seen[i]]).mean(0), torch.stack([v for _, v in seen[i]]).mean(0))
            for i in range(len(layers))]


@pytest.mark.parametrize("c_dim", [0, 3])
def test_recalibrated_stats_equal_an_explicit_computation(c_dim):
    G = _trained_like(make_dcgan(c_dim))
    weights = {k: v.clone() for k, v in G.named_parameters()}
    expected = explicit_stats(G, recalibration_inputs(G, 5, 6, seed=4))
    assert recalibrate_batchnorm(G, n_batches=5, batch=6, seed=4)
    layers = batchnorm_layers(G)
    assert len(layers) == len(expected) >= 2
    for m, (mean, var) in zip(layers, expected):
        torch.testing.assert_close(m.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert m.momentum == 0.1 and int(m.num_batches_tracked) == 5
    assert not G.training and all(not m.training for m in layers)
    assert all(torch.equal(p, weights[k]) for k, p in G.named_parameters())  # only the statistics change


def test_recalibration_is_deterministic_and_leaves_the_global_rng_alone():
    G = _trained_like(make_dcgan(3))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    recalibrate_batchnorm(G, 3, 4, seed=9)
    assert torch.equal(torch.get_rng_state(), before)
    a = [b.clone() for b in G.buffers()]
    recalibrate_batchnorm(G, 3, 4, seed=9)
    assert all(torch.equal(x, y) for x, y in zip(a, G.buffers()))
    recalibrate_batchnorm(G, 3, 4, seed=10)
    assert not all(torch.equal(x, y) for x, y in zip(a, G.buffers()))
    G.train()
    recalibrate_batchnorm(G, 2, 4)
    assert G.training and all(m.training for m in batchnorm_layers(G))  # the training flag is restored


def test_conditions_are_drawn_from_the_given_rows():
    G = make_dcgan(3)
    rows = torch.tensor([[1.0, 1.0, 0.0]])
    batches = recalibration_inputs(G, 2, 5, seed=0, conditions=rows)
    assert all(torch.equal(c, rows.expand(5, -1)) for _, c in batches)
    one_hot = torch.cat([c for _, c in recalibration_inputs(G, 4, 8, seed=0)])
    assert torch.equal(one_hot.sum(1), torch.ones(32)) and set(one_hot.argmax(1).tolist()) == {0, 1, 2}
    with pytest.raises(ValueError, match="condition matrix"):
        recalibration_inputs(G, 1, 2, 0, conditions=torch.ones(2, 4))


def test_stylegan_has_no_batchnorm_and_is_left_alone():
    torch.manual_seed(0)
    G, _ = build_models("stylegan", resolution=RES, z_dim=16, w_dim=16, mapping_layers=2, channel_base=64,
                        channel_max=16)
    state = {k: v.clone() for k, v in G.state_dict().items()}
    rng = torch.get_rng_state()
    assert not batchnorm_layers(G)
    assert recalibrate_batchnorm(G) is False and ensure_recalibrated(G) is False and is_recalibrated(G)
    assert all(torch.equal(v, state[k]) for k, v in G.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)


def test_ensure_recalibrated_runs_once_per_weights():
    G = _trained_like(make_dcgan())
    assert not is_recalibrated(G)
    assert ensure_recalibrated(G, batch=4, n_batches=2) is True
    assert is_recalibrated(G) and ensure_recalibrated(G) is False  # cached (any settings)
    with torch.no_grad():
        next(G.parameters()).mul_(1.01)  # new weights: the statistics are stale
    assert not is_recalibrated(G) and ensure_recalibrated(G, batch=4, n_batches=2) is True
    G.load_state_dict(make_dcgan().state_dict())  # loaded weights and buffers: stale too
    assert not is_recalibrated(G)


def test_dcgan_samples_are_batch_size_independent_after_recalibration(tmp_path):
    G = _trained_like(make_dcgan(3))
    running = render_ws(G, map_z(G, torch.randn(4, 8), torch.eye(3)[[0, 1, 2, 0]]))
    a = sample(G, CLASSES, tmp_path / "a", n=3, seed=3, batch=1)  # recalibrates G (once) before sampling
    assert is_recalibrated(G)
    b = sample(G, CLASSES, tmp_path / "b", n=3, seed=3, batch=5)
    c = sample(G, CLASSES, tmp_path / "c", n=3, seed=3, batch=2)
    for other in (b, c):
        for p, q in zip(a["images"], other["images"]):
            np.testing.assert_allclose(np.asarray(Image.open(p)).astype(int), np.asarray(Image.open(q)).astype(int),
                                       atol=1, rtol=0)
    # an image is the same alone or in a batch, and differs from the uncalibrated (running statistics) one
    z, cond = torch.randn(4, 8), torch.eye(3)[[0, 1, 2, 0]]
    ws = map_z(G, z, cond)
    full = render_ws(G, ws, batch=4)
    single = torch.cat([render_ws(G, ws[i:i + 1], batch=1) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=0, atol=1e-5)
    assert (render_ws(G, map_z(G, z, cond)) - running).abs().max() > 1e-3


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_load_generator_recalibrates_its_own_copy_with_the_training_batch(tmp_path):
    from animegen.train.checkpoint import load_checkpoint, load_generator, sampling_conditions, save_checkpoint
    from animegen.train.config import TrainConfig

    cfg = TrainConfig(arch="dcgan", resolution=RES, conditional=True, z_dim=8, channel_base=64, batch=6)
    G0 = _trained_like(make_dcgan(3))
    _, D = build_models("dcgan", c_dim=3, resolution=RES, z_dim=8, channel_base=64)
    f = tmp_path / "model" / "checkpoint.pt"
    save_checkpoint({"G": G0.state_dict(), "D": D.state_dict(), "G_ema": G0.state_dict(), "config": cfg.to_dict(),
                     "class_names": CLASSES, "img_channels": 3, "images_seen": 0}, f)
    digest = _sha(f)
    G, meta = load_generator(tmp_path / "model")
    assert _sha(f) == digest  # the checkpoint is not rewritten
    assert torch.equal(load_checkpoint(f)["G_ema"]["project_bn.running_mean"], G0.project_bn.running_mean)
    assert is_recalibrated(G) and ensure_recalibrated(G) is False  # runs once per loaded model
    ref = copy.deepcopy(G0)
    recalibrate_batchnorm(ref, batch=6, conditions=sampling_conditions(CLASSES))
    for a, b in zip(G.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    G2, _ = load_generator(f)  # deterministic: the same statistics on every load
    assert all(torch.equal(a, b) for a, b in zip(G.buffers(), G2.buffers()))


def test_sampling_conditions_follow_the_evaluation_guess():
    from animegen.train.checkpoint import sampling_conditions

    assert sampling_conditions([]) is None
    assert sampling_conditions(["blonde hair red eyes", "blue hair green eyes"]) is None  # one-hot pair classes
    rows = sampling_conditions(CLASSES)  # single hair and eye columns: multi-hot, every hair x eye combination
    assert rows is not None and rows.shape == (2, 3) and torch.equal(rows.sum(1), torch.full((2,), 2.0))


@pytest.mark.parametrize("labels", ["", "&labels=multi_hot"], ids=["pair-classes", "multi-hot"])
def test_training_snapshots_sample_like_the_loaded_snapshot_and_keep_the_trained_statistics(tmp_path, labels):
    from helpers import SYN, tiny_config

    from animegen.image_files import grid_array
    from animegen.train import run_train
    from animegen.train.checkpoint import load_checkpoint, load_generator
    from animegen.train.loop import _class_rows, _fixed_latents

    cfg = tiny_config("dcgan", conditional=True, kimg=0.16, snapshot_kimg=0.16)
    out = tmp_path / "run"
    run_train(cfg, SYN + labels, out)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    snap_file = out / "snapshots" / "G_ema-00000.2kimg.pt"
    snap = load_checkpoint(snap_file)
    # the files hold the trained running statistics (G_ema's buffers are G's), not the recalibrated ones
    for key in ("project_bn.running_mean", "project_bn.running_var", "blocks.0.1.running_var"):
        assert torch.equal(ckpt["G_ema"][key], ckpt["G"][key]) and torch.equal(snap["G_ema"][key], ckpt["G"][key])
    G, meta = load_generator(snap_file)
    assert not torch.equal(G.project_bn.running_mean, ckpt["G"]["project_bn.running_mean"])
    # the training grid is what the loaded snapshot (recalibrated by load_generator) draws for the fixed latents
    from animegen.data import open_dataset

    conditions = torch.as_tensor(open_dataset(SYN + labels).conditions(), dtype=torch.float32)
    fixed = _fixed_latents(G, cfg, _class_rows(conditions))
    expected = grid_array(render_ws(G, map_z(G, fixed.z, fixed.c)), ncol=fixed.cols).astype(int)
    grid = np.asarray(Image.open(out / "samples" / "fakes-00000.2kimg.png").convert("RGB")).astype(int)
    np.testing.assert_allclose(grid, expected, atol=1, rtol=0)


def test_recalibration_info_records_the_settings():
    from animegen.models.batchnorm import recalibration_info

    G = make_dcgan()
    assert recalibration_info(G) == {"recalibrated": False}
    recalibrate_batchnorm(G, 2, 4, seed=5)
    assert recalibration_info(G) == {"recalibrated": True, "n_batches": 2, "batch": 4, "seed": 5}
    torch.manual_seed(0)
    S, _ = build_models("stylegan", resolution=RES, z_dim=16, w_dim=16, mapping_layers=2, channel_base=64,
                        channel_max=16)
    assert recalibration_info(S) is None
