"""Tests for animegen.latent: interpolation ops, class specs, truncation, and the four latent tools."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from animegen.latent import (
    circle,
    conditions_for,
    interpolate,
    lerp,
    map_z,
    mix,
    path,
    render_ws,
    sample,
    slerp,
    style_ranges,
    to_uint8,
    truncate,
)
from animegen.models import build_models

RES = 16
CLASSES = ["blonde hair", "red eyes", "blue hair"]


def make_g(arch: str, c_dim: int = 0) -> torch.nn.Module:
    torch.manual_seed(0)
    if arch == "stylegan":
        G, _ = build_models("stylegan", c_dim=c_dim, resolution=RES, z_dim=16, w_dim=16, mapping_layers=2,
                            channel_base=64, channel_max=16)
    else:
        G, _ = build_models("dcgan", c_dim=c_dim, resolution=RES, z_dim=8, channel_base=64)
    return G.eval()


@pytest.fixture(scope="module", params=[("stylegan", 0), ("stylegan", 3), ("dcgan", 0), ("dcgan", 3)],
                ids=["stylegan", "stylegan-cond", "dcgan", "dcgan-cond"])
def model(request):
    arch, c_dim = request.param
    return make_g(arch, c_dim), CLASSES[:c_dim]


def grid_size(rows: int, cols: int, res: int = RES, pad: int = 2) -> tuple[int, int]:
    """PIL (width, height) of a save_grid grid."""
    return cols * (res + pad) + pad, rows * (res + pad) + pad


def cell(grid: np.ndarray, r: int, c: int, res: int = RES, pad: int = 2) -> np.ndarray:
    """The image at grid row r, column c of a save_grid array."""
    y, x = pad + r * (res + pad), pad + c * (res + pad)
    return grid[y:y + res, x:x + res]


def assert_same_image(png_cell: np.ndarray, image: torch.Tensor) -> None:
    """A grid cell equals a rendered [1, C, H, W] image (to within uint8 rounding across batch sizes)."""
    np.testing.assert_allclose(png_cell.astype(int), to_uint8(image)[0].astype(int), atol=1, rtol=0)


def read_png(p) -> Image.Image:
    im = Image.open(p)
    im.load()
    return im


# ------------------------------------------------------------------------------------------------- ops

def test_lerp_midpoint_and_endpoints():
    a, b = torch.randn(5, 7), torch.randn(5, 7)
    torch.testing.assert_close(lerp(a, b, 0.5), (a + b) / 2)
    assert torch.equal(lerp(a, b, 0.0), a) and torch.equal(lerp(a, b, 1.0), b)


def test_slerp_interpolates_norm_and_hits_endpoints():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 32, generator=g).double(), 3 * torch.randn(6, 32, generator=g).double()
    t = torch.linspace(0, 1, 9, dtype=torch.float64)[:, None, None]  # [9, 1, 1] against rows [6, 32]
    out = slerp(a, b, t)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    torch.testing.assert_close(out.norm(dim=-1), na + t[..., 0] * (nb - na))
    assert torch.equal(out[0], a.expand_as(out[0])) and torch.equal(out[-1], b.expand_as(out[-1]))
    # the direction moves at constant angular speed along the great circle
    cos = lambda x, y: (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))  # noqa: E731
    omega = cos(a, b).clamp(-1, 1).acos()
    torch.testing.assert_close(cos(out, a).clamp(-1, 1).acos(), t[..., 0] * omega)
    # equal norms: constant norm
    b_eq = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(slerp(a, b_eq, t).norm(dim=-1), na.expand(9, -1))


def test_slerp_is_safe_for_parallel_rows():
    a = torch.randn(3, 8)
    for b in (2 * a, a.clone(), -a):
        out = slerp(a, b, torch.linspace(0, 1, 5)[:, None, None])
        assert torch.isfinite(out).all()
    torch.testing.assert_close(slerp(a, 2 * a, 0.5), 1.5 * a)


def test_circular_path_closes_with_equal_steps():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 64, generator=g).double()
    b = b - (a @ b) / (a @ a) * a  # orthogonal, same norm: a great circle
    b = b * a.norm() / b.norm()
    frames = path(torch.stack([a, b]), 5, "circular")
    assert frames.shape == (20, 64)
    torch.testing.assert_close(circle(a, b, torch.tensor([2 * math.pi]))[0], frames[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(frames[5], b, atol=1e-6, rtol=0)  # a quarter turn lands on b
    steps = (torch.roll(frames, -1, 0) - frames).norm(dim=-1)  # includes last -> first
    torch.testing.assert_close(steps, steps[0].expand_as(steps))
    # float32 latents close to 1e-6 too
    a32, b32 = torch.randn(2, 16, generator=g)
    last_next = circle(a32, b32, torch.tensor([2 * math.pi]))[0]
    assert (last_next - path(torch.stack([a32, b32]), 4, "circular")[0]).abs().max() < 1e-6


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_closed_path_loops_back_to_the_first_key(method):
    keys = torch.randn(4, 10)
    closed = path(keys, 6, method, closed=True)
    opened = path(torch.cat([keys, keys[:1]]), 6, method)  # the same loop with its end frame
    assert closed.shape == (24, 10) and opened.shape == (25, 10)
    torch.testing.assert_close(opened[:-1], closed)
    assert torch.equal(opened[-1], closed[0])  # the frame after the last is the first
    assert torch.equal(closed[::6], keys)  # every key is hit exactly
    assert path(keys, 6, method).shape == (19, 10)


def test_path_rejects_bad_requests():
    with pytest.raises(ValueError, match="exactly 2"):
        path(torch.randn(3, 4), 4, "circular")
    with pytest.raises(ValueError, match="unknown path method"):
        path(torch.randn(3, 4), 4, "cubic")


def test_conditions_for():
    assert conditions_for(CLASSES, "red eyes").tolist() == [[0, 1, 0]]
    assert conditions_for(CLASSES, 2).tolist() == [[0, 0, 1]]
    assert conditions_for(CLASSES, "2").tolist() == [[0, 0, 1]]
    assert torch.equal(conditions_for(CLASSES, "all"), torch.eye(3))
    assert conditions_for(CLASSES, "blonde hair+red eyes").tolist() == [[1, 1, 0]]
    assert conditions_for(CLASSES, ["blue hair", "blonde hair + Red Eyes"]).tolist() == [[0, 0, 1], [1, 1, 0]]
    with pytest.raises(ValueError, match="'blonde hair', 'red eyes', 'blue hair'"):
        conditions_for(CLASSES, "green hair")
    with pytest.raises(ValueError, match="unknown class"):
        conditions_for(CLASSES, "blonde hair+green eyes")
    with pytest.raises(ValueError, match="unknown class"):
        conditions_for(CLASSES, 3)
    with pytest.raises(ValueError, match="unconditional"):
        conditions_for([], "red eyes")


def test_style_ranges_follow_the_resolution():
    assert style_ranges(4) == {"coarse": (0, 4), "middle": None, "fine": None}  # 8 px
    assert style_ranges(6) == {"coarse": (0, 4), "middle": (4, 6), "fine": None}  # 16 px
    assert style_ranges(10) == {"coarse": (0, 4), "middle": (4, 8), "fine": (8, 10)}  # 64 px
    assert style_ranges(14)["fine"] == (8, 14)  # 256 px


# ------------------------------------------------------------------------------------------------- truncation

@pytest.mark.parametrize("arch", ["stylegan", "stylegan2", "dcgan"])
def test_psi_zero_gives_one_image_for_every_z(arch):
    G = make_g(arch)
    z = torch.randn(4, G.z_dim)
    img = render_ws(G, map_z(G, z, None, truncation_psi=0.0))
    assert (img - img[:1]).abs().max() == 0
    varied = render_ws(G, map_z(G, z, None, truncation_psi=1.0))
    assert (varied - varied[:1]).abs().max() > 0


def test_psi_zero_conditional_is_the_class_average():
    G = make_g("stylegan", 3)
    G.w_avg_class.copy_(torch.randn_like(G.w_avg_class))
    c = conditions_for(CLASSES, [0, 0, 1, 1])
    img = render_ws(G, map_z(G, torch.randn(4, G.z_dim), c, truncation_psi=0.0))
    assert torch.equal(img[0], img[1]) and torch.equal(img[2], img[3])
    assert (img[0] - img[2]).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------- tools

def test_sample_writes_images_and_grids(model, tmp_path):
    G, names = model
    files = sample(G, names, tmp_path, n=3, batch=2)
    n_groups = max(1, len(names))
    assert len(files["images"]) == 3 * n_groups and all(p.exists() for p in files["images"])
    assert read_png(files["images"][0]).size == (RES, RES)
    grid = read_png(tmp_path / "grid.png")
    assert grid.size == (grid_size(n_groups, 3) if names else grid_size(2, 2))
    doc = json.loads((tmp_path / "sample.json").read_text())
    assert doc["tool"] == "sample" and doc["files"]["grid"] == "grid.png" and doc["options"]["classes"] == names
    if names:
        assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(["blonde_hair", "red_eyes",
                                                                                  "blue_hair"])
        assert read_png(tmp_path / "grid_red_eyes.png").size == grid_size(2, 2)
        assert set(files["class_grids"]) == set(names)


@pytest.mark.parametrize("arch", ["stylegan", "stylegan2", "dcgan"])
def test_sample_is_deterministic_and_takes_a_class_spec(arch, tmp_path):
    # DCGAN: BatchNorm samples with recalibrated statistics, still one image per latent at any batch size
    G = make_g(arch, 3)
    a = sample(G, CLASSES, tmp_path / "a", n=2, classes="blue hair", seed=3)
    b = sample(G, CLASSES, tmp_path / "b", n=2, classes="blue hair", seed=3, batch=1)
    assert [p.relative_to(tmp_path / "a") for p in a["images"]] == [p.relative_to(tmp_path / "b") for p in b["images"]]
    np.testing.assert_allclose(np.asarray(read_png(a["grid"])), np.asarray(read_png(b["grid"])), atol=1)
    with pytest.raises(ValueError, match="valid classes"):
        sample(G, CLASSES, tmp_path / "c", n=1, classes="green hair")


@pytest.mark.parametrize("method,space", [("slerp", "z"), ("linear", "w"), ("circular", "z"), ("slerp", "w")])
def test_interpolate_writes_grid_and_looping_gif(model, method, space, tmp_path):
    G, names = model
    if space == "w" and G.arch == "dcgan":
        with pytest.raises(ValueError, match="DCGAN has no w space; use space='z'"):
            interpolate(G, names, tmp_path, method=method, space=space)
        return
    files = interpolate(G, names, tmp_path, method=method, space=space, n_keys=3, steps=4, rows=2)
    n_frames = 16 if method == "circular" else 12
    assert read_png(files["grid"]).size == grid_size(2, 10)
    gif = Image.open(files["gif"])
    assert gif.n_frames == n_frames and gif.info["loop"] == 0
    assert gif.size == grid_size(1, 2)
    doc = json.loads((tmp_path / "interpolate.json").read_text())
    assert doc["options"]["frames"] == n_frames and doc["files"]["gif"] == "interp.gif"


def test_mix_writes_the_bands_this_resolution_has(tmp_path):
    G = make_g("stylegan", 3)
    files = mix(G, CLASSES, tmp_path, n_rows=3, n_cols=2)
    assert set(files) == {"coarse", "middle", "json"}
    for band in ("coarse", "middle"):
        im = np.asarray(read_png(tmp_path / f"mix_{band}.png"))
        assert im.shape[:2][::-1] == grid_size(4, 3)
        assert (cell(im, 0, 0) == 255).all()  # blank top-left cell
    doc = json.loads((tmp_path / "mix.json").read_text())
    assert doc["options"]["bands"]["coarse"] == [0, 4] and "skipped" in doc["options"]["bands"]["fine"]


def test_mix_cells_take_the_band_from_the_column_source(tmp_path):
    G = make_g("stylegan")
    mix(G, [], tmp_path, n_rows=2, n_cols=3, seed=5)
    im = np.asarray(read_png(tmp_path / "mix_middle.png"))
    ws = map_z(G, torch.randn(5, G.z_dim, generator=torch.Generator().manual_seed(5)), None)  # rows, then columns
    expected = ws[1].clone()
    expected[4:6] = ws[2 + 2, 4:6]  # row source 1 with column source 2's middle (16 px) styles
    assert_same_image(cell(im, 1 + 1, 2 + 1), render_ws(G, expected[None]))
    assert_same_image(cell(im, 0, 2 + 1), render_ws(G, ws[4:5]))  # header: column source
    assert_same_image(cell(im, 1 + 1, 0), render_ws(G, ws[1:2]))  # left: row source


def test_dcgan_has_no_style_mixing(tmp_path):
    with pytest.raises(ValueError, match="StyleGAN"):
        mix(make_g("dcgan"), [], tmp_path)


def test_truncate_grid_and_psi_zero_column(model, tmp_path):
    G, names = model
    psis = (1, 0, -1)
    files = truncate(G, names, tmp_path, psis=psis, n=3)
    im = np.asarray(read_png(files["grid"]))
    assert im.shape[:2][::-1] == grid_size(3, 3)
    col = [cell(im, r, 1) for r in range(3)]
    if not names:  # ψ = 0: every row the same image (around w_avg for StyleGAN, z = 0 for DCGAN)
        assert all(np.array_equal(col[0], c) for c in col)
    assert json.loads((tmp_path / "truncate.json").read_text())["options"]["psis"] == [1.0, 0.0, -1.0]


def test_tools_refuse_mismatched_classes(tmp_path):
    G = make_g("stylegan", 3)
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        truncate(G, CLASSES[:2], tmp_path)
    with pytest.raises(ValueError, match="unconditional"):
        truncate(make_g("stylegan"), [], tmp_path, class_name="red eyes")


def test_tools_work_on_a_loaded_checkpoint_without_training(tmp_path):
    from animegen.train.checkpoint import load_generator, save_checkpoint
    from animegen.train.config import TrainConfig

    cfg = TrainConfig(arch="stylegan", resolution=RES, conditional=True, z_dim=16, w_dim=16, mapping_layers=2,
                      channel_base=64, channel_max=16)
    torch.manual_seed(0)
    G, D = build_models("stylegan", c_dim=3, resolution=RES, z_dim=16, w_dim=16, mapping_layers=2,
                        channel_base=64, channel_max=16)
    save_checkpoint({"G": G.state_dict(), "D": D.state_dict(), "G_ema": G.state_dict(), "config": cfg.to_dict(),
                     "class_names": CLASSES, "img_channels": 3, "images_seen": 0}, tmp_path / "model" / "checkpoint.pt")
    G_ema, meta = load_generator(tmp_path / "model")
    files = truncate(G_ema, meta["class_names"], tmp_path / "out", psis=(1, 0), n=2, class_name="blue hair")
    assert read_png(files["grid"]).size == grid_size(2, 2)
