"""StyleGAN2 and D augmentation against the reference math (issue 13): modulated convolution vs an explicit
per-sample weight modulation + demodulation, ADA's p rule for a given sequence of D outputs, the augmentations'
identity at p = 0 and their gradients, the lazy-regularisation optimiser adjustment, FreezeD."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import SYN, tiny_config

from animegen.models import build_models
from animegen.models.stylegan2 import StyleGAN2Generator, modulated_conv2d
from animegen.train import run_train, run_transfer
from animegen.train.augment import AdaptiveAugment, DiffAugment, augment_images, make_augment
from animegen.train.checkpoint import load_checkpoint
from animegen.train.config import TrainConfig
from animegen.train.loop import lazy_adjusted
from animegen.train.losses import R1, PathLength


def explicit_modulated_conv(x, weight, styles, demodulate):
    """One sample at a time: w'_oikk = w_oikk * s_i, then w''_oikk = w'_oikk / sqrt(sum_ikk w'^2 + 1e-8); as one
    grouped convolution of the batch (groups = N), the form of the StyleGAN2 paper's equations 1-3."""
    n, i, h, w = x.shape
    o, _, k, _ = weight.shape
    wts = weight[None] * styles[:, None, :, None, None]  # [N, O, I, k, k]
    if demodulate:
        wts = wts / (wts.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8).sqrt()
    out = F.conv2d(x.reshape(1, n * i, h, w), wts.reshape(n * o, i, k, k), padding=k // 2, groups=n)
    return out.reshape(n, o, h, w)


@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("k", [1, 3])
def test_modulated_conv_equals_per_sample_weights(demodulate, k):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 6, 8, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(7, 6, k, k, generator=gen, dtype=torch.float64)
    styles = torch.randn(5, 6, generator=gen, dtype=torch.float64) + 1
    got = modulated_conv2d(x, weight, styles, demodulate)
    want = explicit_modulated_conv(x, weight, styles, demodulate)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # a loop over samples with F.conv2d as a third, independent form
    for s in range(5):
        wt = weight * styles[s][None, :, None, None]
        if demodulate:
            wt = wt / (wt.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        torch.testing.assert_close(got[s:s + 1], F.conv2d(x[s:s + 1], wt, padding=k // 2), rtol=1e-10, atol=1e-10)


def test_demodulation_gives_unit_variance_outputs():
    """The point of demodulation: for unit-variance inputs the output channels have unit variance whatever the
    style's scale (no instance norm needed)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 32, 32, generator=gen)
    weight = torch.randn(32, 64, 3, 3, generator=gen)
    for scale in (0.1, 1.0, 30.0):
        out = modulated_conv2d(x, weight, torch.rand(4, 64, generator=gen) * scale + 0.05)
        assert out[:, :, 1:-1, 1:-1].std().item() == pytest.approx(1.0, rel=0.1)


def test_generator_shapes_ws_and_noise():
    G, D = build_models("stylegan2", c_dim=0, resolution=32, z_dim=16, w_dim=16, mapping_layers=2, channel_base=256,
                        channel_max=32)
    assert isinstance(G, StyleGAN2Generator) and G.arch == "stylegan2"
    assert G.num_ws == 1 + 2 * 3 + 1  # 4 px: one conv; 8, 16, 32 px: two each; the last toRGB's w
    z = torch.randn(3, 16)
    ws = G.mapping(z)
    img = G.synthesis(ws, noise_mode="const")
    assert img.shape == (3, 3, 32, 32) and torch.isfinite(img).all()
    assert torch.equal(img, G.synthesis(ws, noise_mode="const"))
    with torch.no_grad():
        for layer in G.layers:
            layer.noise.weight.fill_(0.5)
    assert not torch.equal(G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random"))
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(ws[:, :-1])
    assert D(img).shape == (3,)


def test_each_w_reaches_the_image():
    """Every one of the num_ws ws has an effect (the last toRGB reads the last one)."""
    G, _ = build_models("stylegan2", resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128,
                        channel_max=32)
    ws = G.mapping(torch.randn(2, 16)).detach().requires_grad_(True)
    G.synthesis(ws, noise_mode="const").square().sum().backward()
    assert (ws.grad.abs().sum(dim=(0, 2)) > 0).all()


# ---------------------------------------------------------------------------------------------------- ADA

def reference_ada(p: float, signs_per_step: list[list[float]], batch: int, interval: int, target: float,
                  ada_kimg: float) -> list[float]:
    """StyleGAN2-ADA's rule written out: every `interval` steps, rt = mean of the signs collected since the last
    update; p <- max(p + sign(rt - target) * batch * interval / (ada_kimg * 1000), 0)."""
    ps, acc = [], []
    for step, signs in enumerate(signs_per_step, start=1):
        acc += signs
        if step % interval == 0:
            rt = sum(acc) / len(acc)
            p = max(p + float(torch.sign(torch.tensor(rt - target))) * batch * interval / (ada_kimg * 1000), 0.0)
            acc = []
        ps.append(p)
    return ps


def test_ada_p_follows_the_reference_rule():
    gen = torch.Generator().manual_seed(0)
    batch, interval, target, ada_kimg = 8, 4, 0.6, 0.2
    # D first overfits (mostly positive on reals), then is fooled (mostly negative)
    logits = [torch.randn(batch, generator=gen) + (2.0 if step < 40 else -2.0) for step in range(80)]
    ada = AdaptiveAugment(target=target, ada_kimg=ada_kimg, interval=interval)
    got = []
    for step, lg in enumerate(logits, start=1):
        ada.observe(lg)
        ada.update(step, batch, step * batch)
        got.append(ada.p)
    want = reference_ada(0.0, [torch.sign(lg).tolist() for lg in logits], batch, interval, target, ada_kimg)
    assert got == pytest.approx(want, abs=1e-12)
    assert max(got) > 0.5 and got[-1] < max(got)  # it rose, then fell back
    assert len(ada.history) == 20 and ada.history[0]["rt"] == pytest.approx(
        float(torch.sign(torch.cat(logits[:4])).mean()))
    restored = AdaptiveAugment(target=target, ada_kimg=ada_kimg, interval=interval)
    restored.load_state_dict(ada.state_dict())
    assert restored.state_dict() == ada.state_dict()


def test_augmentations_are_the_identity_at_p_zero_and_differentiable():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    assert augment_images(x, 0.0) is x
    assert AdaptiveAugment()(x) is x  # a new ADA starts at p = 0
    for aug in (lambda t: augment_images(t, 0.8), DiffAugment()):
        xi = x.clone().requires_grad_(True)
        y = aug(xi)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert not torch.allclose(y, x)
        y.square().sum().backward()
        assert xi.grad is not None and xi.grad.abs().sum() > 0
    g = torch.zeros(2, 1, 16, 16, requires_grad=True)  # greyscale input: geometric part only
    augment_images(g + 0.5, 1.0).sum().backward()
    assert g.grad.abs().sum() > 0


def test_ada_geometric_path_preserves_a_constant_image_and_its_colour_path_moves_colours():
    const = torch.full((4, 3, 16, 16), 0.3)
    torch.manual_seed(0)
    from animegen.train.augment import colour_matrix, geometric_matrix
    m = geometric_matrix(4, 1.0, "cpu", 16)
    grid = F.affine_grid(torch.linalg.inv(m)[:, :2], [4, 3, 16, 16], align_corners=False)
    out = F.grid_sample(const, grid, padding_mode="reflection", align_corners=False)
    torch.testing.assert_close(out, const, rtol=0, atol=1e-5)  # reflection padding: no border leaks in
    c = colour_matrix(4, 0.0, "cpu")
    torch.testing.assert_close(c, torch.eye(4).repeat(4, 1, 1), rtol=0, atol=1e-6)  # p = 0: no colour change


def test_make_augment_and_the_default():
    assert isinstance(make_augment("ada"), AdaptiveAugment) and isinstance(make_augment("diffaugment"), DiffAugment)
    assert make_augment("none") is None
    with pytest.raises(ValueError, match="unknown augment"):
        make_augment("mixup")


def test_stylegan2_defaults_ada_on_a_small_set_and_logs_rt(tmp_path):
    out = tmp_path / "sg2"
    run_train(tiny_config("stylegan2", kimg=0.16, snapshot_kimg=0.08, log_every=5), SYN, out)
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["augment"] == "ada" and ckpt["config"]["cond_mode"] == "projection"
    assert ckpt["config"]["r1_gamma"] == pytest.approx(0.0002 * 16 ** 2 / 8)  # the heuristic
    assert ckpt["augment"]["p"] >= 0 and len(ckpt["augment"]["history"]) == 5
    v1 = tmp_path / "v1"  # the v1 model keeps its settings: no augmentation by default, r_t still logged
    run_train(tiny_config("stylegan", kimg=0.08, snapshot_kimg=0.08, log_every=5), SYN, v1)
    assert load_checkpoint(v1)["config"]["augment"] == "none"
    import json
    rows = [json.loads(line) for line in (v1 / "train_log.jsonl").read_text().splitlines()]
    assert all(-1 <= r["rt"] <= 1 and "ada_p" not in r for r in rows)


def test_lazy_regularisation_adjusts_lr_and_betas_for_stylegan2_only():
    cfg = TrainConfig(arch="stylegan2").with_arch_defaults()
    c = 16 / 17
    lr, betas = lazy_adjusted(cfg, 0.0025, [R1(1.0, 16)])
    assert lr == pytest.approx(0.0025 * c) and betas == pytest.approx((0.0, 0.99 ** c))
    assert lazy_adjusted(cfg, 0.0025, [R1(0.0, 16)]) == (0.0025, (0.0, 0.99))  # off: no extra step
    c4 = 4 / 5
    assert lazy_adjusted(cfg, 0.002, [PathLength(2.0, 4)])[0] == pytest.approx(0.002 * c4)
    v1 = TrainConfig(arch="stylegan").with_arch_defaults()
    assert lazy_adjusted(v1, 0.001, [R1(10.0, 16)]) == (0.001, (0.0, 0.99))  # the papers' v1 settings stay


def test_freeze_d_transfer_of_a_stylegan2(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    run_train(tiny_config("stylegan2", conditional=True, kimg=0.08, snapshot_kimg=0.08), SYN, src)
    old = load_checkpoint(src)
    run_transfer(tiny_config("stylegan2", kimg=0.08, snapshot_kimg=0.08, freeze_d=2), src,
                 "synthetic:?n=64&resolution=16&hair=blonde&eyes=red&labels=none", dst)
    new = load_checkpoint(dst)
    frozen = [k for k in new["D"] if k.startswith(("blocks.0.", "blocks.1."))]
    assert frozen and all(torch.equal(new["D"][k], old["D"][k]) for k in frozen)
    moved = [k for k in new["D"] if k.startswith("blocks.2.")]
    assert any(not torch.equal(new["D"][k], old["D"][k]) for k in moved)
    assert math.isfinite(float(new["augment"]["p"]))


def test_r1_and_bf16_through_ada_with_p_above_zero(tmp_path):
    """R1 differentiates D's gradient w.r.t. the reals through the augmentation (a double backward through
    grid_sample), and under bf16 autocast the augmentation's matrices stay float32: a run whose p is forced up
    (target -1: every r_t is above it) crosses R1 steps with p > 0, in float32 and in bf16, with finite losses."""
    import json

    for amp in ("off", "on"):
        out = tmp_path / amp
        run_train(tiny_config("stylegan2", conditional=True, kimg=0.24, snapshot_kimg=0.24, log_every=4,
                              ada_target=-1.0, ada_kimg=0.05, amp=amp), SYN, out)
        rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        assert all(math.isfinite(r["loss_d"]) and math.isfinite(r["loss_g"]) for r in rows)
        r1_rows = [r for r in rows if "r1" in r]
        assert r1_rows and all(r["ada_p"] > 0.5 and r["r1"] > 0 for r in r1_rows[1:])
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    D = build_models("stylegan2", resolution=16, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128,
                     channel_max=32)[1]
    (g,) = torch.autograd.grad(D(augment_images(x, 0.7)).sum(), x, create_graph=True)
    g.square().sum().backward()  # R1's second derivative
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = augment_images(torch.rand(4, 3, 16, 16) * 2 - 1, 0.7)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
