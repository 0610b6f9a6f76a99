"""The CUDA paths: bf16 training per architecture, fused Adam, the pinned-memory batch index, a streamed set's
side-stream copy, Inception on the GPU.

Every test is marked ``cuda`` and skips without a CUDA device; ``benchmarks/gpu_check.py`` runs them on a lent GPU
(``python -m pytest -m cuda tests/test_cuda.py``). The Inception check uses seeded random weights built by
``benchmarks/common.py`` (the real 95 MB weights do not travel to that machine): the same network and FLOPs.
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, SYN

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CASES = {  # name: (arch, TrainConfig overrides, data)
    "dcgan": ("dcgan", dict(), SYN),
    "dcgan-cond": ("dcgan", dict(conditional=True), SYN),
    "stylegan": ("stylegan", dict(), SYN),
    "stylegan-cond-concat": ("stylegan", dict(conditional=True, cond_mode="concat"), SYN),
    "stylegan-cond-projection": ("stylegan", dict(conditional=True, cond_mode="projection"), SYN),
    "stylegan-multi-hot": ("stylegan", dict(conditional=True), SYN + "&labels=multi_hot"),
    "stylegan2-cond-ada": ("stylegan2", dict(conditional=True, ada_kimg=0.05, ada_target=-1.0), SYN),  # p forced up
    "stylegan2-diffaugment": ("stylegan2", dict(augment="diffaugment"), SYN),
}


def log_rows(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", list(CASES))
def test_amp_training_on_cuda(tmp_path, tiny, case):
    """bf16 autocast + channels_last on CUDA for 25 steps: across the lazy R1 / path-length step (16), a snapshot,
    the checkpoint; finite losses; G_ema samples on the GPU."""
    from animegen.train import run_train
    from animegen.train.checkpoint import load_checkpoint, load_generator

    arch, kw, data = CASES[case]
    out = tmp_path / "run"
    res = run_train(tiny(arch, device="cuda", amp="on", kimg=0.2, snapshot_kimg=0.1, log_every=5, **kw), data, out)
    assert res.device.startswith("cuda") and res.steps == 25 and res.peak_memory_bytes > 0
    rows = [r for r in log_rows(out) if "loss_d" in r]
    assert rows and all(math.isfinite(r[k]) for r in rows for k in ("loss_d", "loss_g"))
    if arch != "dcgan":
        assert any("r1" in r and math.isfinite(r["r1"]) for r in rows)
        assert any("pl" in r and math.isfinite(r["pl"]) for r in rows)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["config"]["amp"] == "on" and state["step"] == 25
    assert all(torch.isfinite(v).all() for v in state["G_ema"].values() if v.is_floating_point())
    G, meta = load_generator(out, "cuda")
    c = None
    if G.c_dim:
        c = torch.zeros(4, G.c_dim, device="cuda")
        c[:, 0] = 1
    with torch.no_grad():
        x = G(torch.randn(4, G.z_dim, device="cuda"), c)
    assert x.is_cuda and x.shape[0] == 4 and torch.isfinite(x).all()


def test_amp_resume_on_cuda(tmp_path, tiny):
    """A bf16 conditional StyleGAN run stopped at a checkpoint and resumed continues on the GPU."""
    from animegen.train import run_train

    cfg = tiny("stylegan", conditional=True, device="cuda", amp="on", kimg=0.12, snapshot_kimg=0.12, log_every=5)
    out = tmp_path / "run"
    run_train(cfg, SYN, out)
    cfg.kimg = 0.24
    res = run_train(cfg, SYN, out, resume=True)
    assert res.steps == 30 and res.images_seen == 240
    assert [r["step"] for r in log_rows(out) if "loss_d" in r][-1] == 30


def test_fused_adam_is_used(tmp_path, tiny, monkeypatch):
    """On CUDA both optimisers are Adam(fused=True), and the fused kernel is what steps them."""
    from animegen.train import run_train
    from animegen.train.checkpoint import load_checkpoint

    calls = []
    fused = torch._fused_adam_

    def spy(*args, **kwargs):
        calls.append(len(args[0]))
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", spy)
    run_train(tiny("stylegan", conditional=True, device="cuda", kimg=0.04, snapshot_kimg=1, log_every=5), SYN,
              tmp_path / "run")
    assert len(calls) == 2 * 5  # one G and one D step per iteration, 5 iterations
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    for opt in ("opt_G", "opt_D"):
        assert all(group["fused"] is True for group in state[opt]["param_groups"])


def test_pinned_memory_batch_index(tmp_path, tiny, monkeypatch):
    """Each step's indices are pinned on the host and copied without a sync; the gathered batch equals the CPU's."""
    from animegen.data import open_dataset
    from animegen.train import run_train
    from animegen.train.state import BatchSampler, images_to_device

    data = open_dataset(SYN, 16)
    on_gpu = images_to_device(data.images, torch.device("cuda"), channels_last=True)
    on_cpu = images_to_device(data.images, torch.device("cpu"), channels_last=False)
    a, b = BatchSampler(len(data.images), 0), BatchSampler(len(data.images), 0)
    for _ in range(5):
        idx = a.next(8).pin_memory()
        assert idx.is_pinned()
        got = on_gpu[idx.to("cuda", non_blocking=True)]
        torch.cuda.synchronize()
        assert torch.equal(got.cpu(), on_cpu[b.next(8)])

    pinned = []
    original = torch.Tensor.pin_memory

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.dtype == torch.int64 and self.ndim == 1:
            pinned.append(out.is_pinned())
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", spy)
    run_train(tiny("dcgan", conditional=True, device="cuda", kimg=0.04, snapshot_kimg=1, log_every=5), SYN,
              tmp_path / "run")
    assert len(pinned) == 5 and all(pinned)


def test_a_streamed_set_on_cuda_is_copied_on_a_side_stream_and_trains_as_the_resident_one(tmp_path, tiny):
    """StreamedImages on CUDA: pinned host rows copied on a side stream, waited for by the training stream; the
    batches equal the device-resident ones; a training run streams (prefetch hits) and logs the resident run's
    losses to float tolerance (cuDNN may pick other kernels)."""
    from animegen.data import open_dataset
    from animegen.train import run_train
    from animegen.train.state import BatchSampler, images_to_device
    from animegen.train.stream import StreamedImages

    data = open_dataset(SYN, 16)
    resident = images_to_device(data.images, torch.device("cuda"), channels_last=True)
    streamed = StreamedImages(data.images, torch.device("cuda"), channels_last=True)
    sampler = BatchSampler(len(data.images), 0)
    for _ in range(6):
        idx = sampler.next(8)
        got = streamed[idx]
        assert got.is_cuda and torch.equal(got, resident[idx.cuda()])
        streamed.prefetch(sampler.peek(8))
    assert streamed.hits == 5
    streamed.close()
    opts = dict(device="cuda", kimg=0.08, snapshot_kimg=0, log_every=2, amp="off")
    run_train(tiny("stylegan", **opts), SYN, tmp_path / "resident")
    run_train(tiny("stylegan", data_placement="stream", **opts), SYN, tmp_path / "streamed")
    a, b = log_rows(tmp_path / "resident"), log_rows(tmp_path / "streamed")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["loss_d"] == pytest.approx(ra["loss_d"], rel=1e-3, abs=1e-4)


def test_a_studio_recipe_on_cuda_matches_the_cpu_within_the_stated_tolerance(tmp_path, tiny):
    """The README's promise: a recipe gives the same face on another device to within 2 levels of 255 per pixel
    (float32 both; bit for bit only on the same device and dtype)."""
    from animegen.studio.engine import Recipe, load_model, render
    from animegen.train import run_train

    run_train(tiny("stylegan", conditional=True, kimg=0.016, snapshot_kimg=0), SYN, tmp_path / "m")
    cpu, gpu = load_model("m", tmp_path / "m", "cpu"), load_model("m", tmp_path / "m", "cuda")
    for k in range(4):
        r = Recipe("m", k, (cpu.class_names[k],), 0.8, k, None)
        a, b = render(cpu, r).astype(int), render(gpu, r).astype(int)
        assert np.abs(a - b).max() <= 2


@pytest.fixture(scope="module")
def seeded_weights(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import write_seeded_inception

    return write_seeded_inception(tmp_path_factory.mktemp("inception"), seed=0)


@pytest.mark.parametrize("form", ["torchscript", "state_dict"])
def test_inception_features_on_cuda_equal_cpu(seeded_weights, form):
    """The FID extractor (seeded random weights, TF32 off) gives the same features and FID on CUDA as on the CPU,
    within 1e-3, from uint8 images and from generator-style float tensors."""
    if form == "state_dict":
        pytest.importorskip("pytorch_fid", reason="the pytorch-fid back-end needs pytorch-fid")
    from animegen.eval.fid import Stats, fid_from_stats
    from animegen.eval.inception import resolve_extractor

    path = seeded_weights[form]
    cpu = resolve_extractor(path, device="cpu", download=False)
    gpu = resolve_extractor(path, device="cuda", download=False)
    assert gpu.id == cpu.id and gpu.device.type == "cuda"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (48, 64, 64, 3), dtype=np.uint8)
    f_cpu, f_gpu = cpu.features(images), gpu.features(images)
    assert f_gpu.shape == (48, 2048) and np.isfinite(f_gpu).all()
    scale = max(1.0, float(np.abs(f_cpu).max()))
    assert np.abs(f_gpu - f_cpu).max() <= 1e-3 * scale, np.abs(f_gpu - f_cpu).max()
    x = torch.from_numpy(rng.uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32))
    assert np.abs(gpu(x.cuda()) - cpu(x)).max() <= 1e-3 * scale
    half = len(images) // 2
    fid_cpu = fid_from_stats(*(Stats.from_features(f, cpu.id) for f in (f_cpu[:half], f_cpu[half:])))
    fid_gpu = fid_from_stats(*(Stats.from_features(f, gpu.id) for f in (f_gpu[:half], f_gpu[half:])))
    assert abs(fid_gpu - fid_cpu) <= 1e-3 * max(1.0, fid_cpu), (fid_gpu, fid_cpu)
