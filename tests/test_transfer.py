"""Transfer (--init-from) keeps the function: right after init, in eval mode, the new G(z, c), G_ema(z, c) and
D(x | c) equal the source's at the corresponding (soft) class vector, for every architecture, cond mode and
class-count change. Tolerance: rtol 1e-4, atol 1e-5 (float32 rescaling of equalised-lr weights)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import SYN, tiny_config

from animegen.models import build_models
from animegen.train import run_train
from animegen.train.checkpoint import load_checkpoint, model_kwargs, save_checkpoint
from animegen.train.config import TrainConfig
from animegen.train.transfer import ARCH_FIELDS, inherit_architecture, init_from

PAIRS = ["black hair green eyes", "black hair red eyes", "blonde hair green eyes", "blonde hair red eyes",
         "blue hair green eyes", "blue hair red eyes"]
TAGS = ["black hair", "blonde hair", "blue hair", "green eyes", "red eyes"]
TOL = dict(rtol=1e-4, atol=1e-5)
ARCH_MODES = [("dcgan", "concat"), ("dcgan", "projection"), ("stylegan", "concat"), ("stylegan", "projection"),
              ("stylegan2", "projection"), ("stylegan2", "concat")]


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Move every tensor away from its initialisation (zero biases, zero noise weights and zero class means
    would hide a wrong remapping)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            delta = torch.randn(t.shape, generator=gen) * 0.2
            t.copy_((t + delta).abs() + 0.5 if "running_var" in name else t + delta)


def source_model(tmp_path, arch, cond_mode, class_names, seed=1):
    """A Model directory holding random, perturbed weights with these classes (no training needed)."""
    cfg = tiny_config(arch, cond_mode=cond_mode, conditional=bool(class_names)).with_arch_defaults()
    torch.manual_seed(seed)
    G, D = build_models(arch, **model_kwargs(cfg, len(class_names), 3))
    perturb_(G, seed)
    perturb_(D, seed + 1)
    G_ema = copy.deepcopy(G)
    perturb_(G_ema, seed + 2)
    state = {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(), "config": cfg.to_dict(),
             "class_names": class_names, "img_channels": 3, "images_seen": 0, "version": "test"}
    out = tmp_path / f"src-{arch}-{cond_mode}-{len(class_names)}"
    out.mkdir(parents=True)
    save_checkpoint(state, out / "checkpoint.pt")
    return out, (G.eval(), D.eval(), G_ema.eval())


def transferred(tmp_path, arch, cond_mode, src_dir, class_names, **kw):
    cfg = tiny_config(arch, cond_mode=cond_mode, conditional=bool(class_names), **kw).with_arch_defaults()
    torch.manual_seed(99)  # another initialisation than the source's
    G, D = build_models(arch, **model_kwargs(cfg, len(class_names), 3))
    G_ema = copy.deepcopy(G)
    report = init_from(G, D, G_ema, cfg, src_dir, class_names, tmp_path)
    assert json.loads((tmp_path / "init_report.json").read_text()) == report
    return (G.eval(), D.eval(), G_ema.eval()), report


def assert_same_function(src, dst, c_src, c_dst, arch):
    """G, G_ema (at psi 1 and, for StyleGAN, 0.7 towards the class mean) and D agree at matching classes."""
    (sG, sD, sE), (dG, dD, dE) = src, dst
    gen = torch.Generator().manual_seed(3)
    n = len(c_src) if c_src is not None else len(c_dst)
    z = torch.randn(n, sG.z_dim, generator=gen)
    x = torch.rand(n, 3, 16, 16, generator=gen) * 2 - 1
    with torch.no_grad():
        for a, b in ((sG, dG), (sE, dE)):
            for psi in ((1.0, 0.7) if arch == "stylegan" else (1.0,)):
                torch.testing.assert_close(b(z, c_dst, truncation_psi=psi, noise_mode="const"),
                                           a(z, c_src, truncation_psi=psi, noise_mode="const"), **TOL)
        torch.testing.assert_close(dD(x, c_dst), sD(x, c_src), **TOL)


@pytest.mark.parametrize("arch,cond_mode", ARCH_MODES)
def test_conditional_to_fewer_classes_by_name_map_and_partial_name(tmp_path, arch, cond_mode):
    src_dir, src = source_model(tmp_path, arch, cond_mode, PAIRS)
    new = ["blonde hair red eyes", "red hair red eyes", "red hair green eyes", "pink hair green eyes"]
    class_map = {"red hair red eyes": "black hair red eyes", "pink hair green eyes": "green eyes"}
    dst, report = transferred(tmp_path, arch, cond_mode, src_dir, new, init_class="blue hair", class_map=class_map)
    assert report["class_init"]["red hair green eyes"] == "mean of 2 classes: blue hair green eyes, blue hair red eyes"
    # the soft source class vector each new class must reproduce, written out by hand
    expect = torch.zeros(4, 6)
    expect[0, 3] = 1  # same name
    expect[1, 1] = 1  # class map
    expect[2, [4, 5]] = 0.5  # init_class 'blue hair': the mean of its two classes
    expect[3, [0, 2, 4]] = 1 / 3  # class map to a partial name: the three 'green eyes' classes
    c_dst = torch.eye(4).repeat(2, 1)
    assert_same_function(src, dst, c_dst @ expect, c_dst, arch)


@pytest.mark.parametrize("arch,cond_mode", ARCH_MODES)
def test_conditional_to_more_classes_start_at_the_mean_of_all(tmp_path, arch, cond_mode):
    src_dir, src = source_model(tmp_path, arch, cond_mode, PAIRS[:3])
    new = PAIRS[:2] + ["x", "y", "z"]
    dst, report = transferred(tmp_path, arch, cond_mode, src_dir, new)
    assert report["class_init"]["x"] == "mean of source classes"
    expect = torch.tensor([[1, 0, 0], [0, 1, 0]] + [[1 / 3] * 3] * 3)
    c_dst = torch.eye(5).repeat(2, 1)
    assert_same_function(src, dst, c_dst @ expect, c_dst, arch)


@pytest.mark.parametrize("arch,cond_mode", ARCH_MODES)
@pytest.mark.parametrize("init_class,fold", [("blonde hair red eyes", [3]), ("red eyes", [1, 3, 5]), (None, range(6))])
def test_conditional_to_unconditional_equals_the_source_at_the_folded_class(tmp_path, arch, cond_mode, init_class,
                                                                              fold):
    src_dir, src = source_model(tmp_path, arch, cond_mode, PAIRS)
    dst, report = transferred(tmp_path, arch, cond_mode, src_dir, [], init_class=init_class)
    assert dst[0].c_dim == 0 and dst[1].c_dim == 0
    assert report["folded_class"] == ("mean of source classes" if init_class is None else
                                      PAIRS[3] if len(fold) == 1 else f"mean of 3 classes: {', '.join(PAIRS[1::2])}")
    c_src = torch.zeros(8, 6)
    c_src[:, list(fold)] = 1 / len(fold)
    assert_same_function(src, dst, c_src, None, arch)


@pytest.mark.parametrize("arch,cond_mode", ARCH_MODES)
def test_unconditional_to_conditional_equals_the_source_for_every_class(tmp_path, arch, cond_mode):
    src_dir, src = source_model(tmp_path, arch, cond_mode, [])
    dst, _ = transferred(tmp_path, arch, cond_mode, src_dir, PAIRS[:4])
    c_dst = torch.eye(4).repeat(2, 1)
    assert_same_function(src, dst, None, c_dst, arch)


@pytest.mark.parametrize("arch,cond_mode", ARCH_MODES)
def test_multi_hot_tags_remap_each_tag(tmp_path, arch, cond_mode):
    src_dir, src = source_model(tmp_path, arch, cond_mode, TAGS)
    new = ["blonde hair", "red hair", "red eyes", "green eyes"]
    dst, _ = transferred(tmp_path, arch, cond_mode, src_dir, new, class_map={"red hair": "black hair"})
    expect = torch.zeros(4, 5)
    expect[0, 1] = expect[1, 0] = expect[2, 4] = expect[3, 3] = 1
    c_dst = torch.tensor([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.float).repeat(2, 1)
    assert_same_function(src, dst, c_dst @ expect, c_dst, arch)


def test_another_cond_mode_is_refused_with_a_reason(tmp_path):
    src_dir, _ = source_model(tmp_path, "stylegan", "concat", PAIRS)
    with pytest.raises(ValueError, match="cond_mode"):
        transferred(tmp_path, "stylegan", "projection", src_dir, PAIRS[:2])


def test_the_same_transfer_from_the_cli_and_from_the_component_gives_the_same_model(tmp_path, capsys):
    """`animegen train --init-from` and the pipeline's transfer component both call run_transfer: the source's
    architecture is inherited in both (no architecture flag or option given), and the same request gives
    byte-identical config.json, init_report.json and train_log.jsonl losses and identical weights."""
    from kfp import dsl

    from animegen.cli import main
    from animegen.components.transfer.component import transfer
    from animegen.data import open_dataset, write_packed

    src = tmp_path / "src"
    run_train(tiny_config("stylegan", conditional=True, kimg=0.016, snapshot_kimg=0.016), SYN, src)
    data = write_packed(open_dataset("synthetic:?n=32&seed=4&resolution=16&hair=blonde,pink&eyes=red,green"),
                        tmp_path / "data")
    request = dict(init_class="black hair", class_map={"pink hair red eyes": "blue hair red eyes"}, freeze_d=1,
                   conditional=True, kimg=0.024, batch=8, seed=0, device="cpu")

    model = dsl.Model(uri=str(tmp_path / "component"))
    transfer.python_func(init_model=dsl.Model(uri=str(src)), dataset=dsl.Dataset(uri=str(data)), model=model,
                         summary=dsl.HTML(uri=str(tmp_path / "summary.html")), r1_gamma=-1.0, snapshot_kimg=0.0,
                         options={"log_every": 1.0}, **request)
    flags = ["--init-class", "black hair", "--class-map", "pink hair red eyes=blue hair red eyes", "--freeze-d", "1",
             "--conditional", "--kimg", "0.024", "--batch", "8", "--seed", "0", "--device", "cpu", "--log-every", "1",
             "--no-progress"]
    cli = tmp_path / "cli"
    assert main(["train", "--init-from", str(src), "--data", str(data), "--out", str(cli), *flags]) == 0

    a, b = tmp_path / "component", cli
    config = json.loads((a / "config.json").read_text())
    source = json.loads((src / "config.json").read_text())
    assert {k: config[k] for k in ARCH_FIELDS} == {k: source[k] for k in ARCH_FIELDS}  # 16 px, z 16, ... inherited
    assert config["freeze_d"] == 1 and config["class_map"] == request["class_map"] and config["kimg"] == 0.024
    for name in ("config.json", "init_report.json", "inputs.json"):
        assert (a / name).read_text() == (b / name).read_text(), name
    assert json.loads((a / "inputs.json").read_text()) == {"data": str(data), "init_model": str(src)}
    strip = [[{k: v for k, v in json.loads(line).items() if k != "img_s"} for line in (d / "train_log.jsonl")
              .read_text().splitlines()] for d in (a, b)]
    assert strip[0] == strip[1] and len(strip[0]) == 3
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["class_names"] == cb["class_names"] == ["blonde hair green eyes", "blonde hair red eyes",
                                                      "pink hair green eyes", "pink hair red eyes"]
    for part in ("G", "D", "G_ema"):
        assert ca[part].keys() == cb[part].keys()
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), (part, k)
    assert model.metadata["arch"] == "stylegan"
    # --print-config shows the inherited architecture
    capsys.readouterr()
    assert main(["train", "--init-from", str(src), "--print-config", *flags]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: printed[k] for k in ARCH_FIELDS} == {k: source[k] for k in ARCH_FIELDS}


def test_an_architecture_option_given_explicitly_is_kept_even_at_its_default(tmp_path, capsys):
    """Inheritance fills only what the user left out: `--resolution 64` (the default) on a 16 px source stays 64,
    and `--arch dcgan` (the default) on a StyleGAN source is refused as a mismatch instead of silently becoming a
    StyleGAN; the same for a component's ``options``."""
    from animegen.cli import main

    src, _ = source_model(tmp_path, "stylegan", "concat", ["a", "b"])
    assert main(["train", "--init-from", str(src), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["resolution"] == 16  # inherited
    assert main(["train", "--init-from", str(src), "--resolution", "64", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["resolution"] == 64 and printed["arch"] == "stylegan"
    assert main(["train", "--init-from", str(src), "--arch", "dcgan", "--data", SYN,
                 "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    assert "a stylegan model cannot initialise a dcgan" in capsys.readouterr().err
    cfg = inherit_architecture(TrainConfig(arch="dcgan"), src, keep={"arch"})
    assert cfg.arch == "dcgan" and cfg.resolution == 16


@pytest.mark.parametrize("arch", ["dcgan", "stylegan", "stylegan2"])
def test_a_transfer_run_starts_its_fid_curve_at_the_source_model(tmp_path, arch):
    """The 0 kimg sampling snapshot of a transfer is the transferred model before any step: with the same classes it
    draws what the source's G_ema draws (the start of the transfer's FID-over-kimg curve is the source's FID)."""
    from animegen.train import run_transfer
    from animegen.train.checkpoint import load_generator

    src, dst = tmp_path / "src", tmp_path / "dst"
    run_train(tiny_config(arch, conditional=True, kimg=0.032, snapshot_kimg=0.032), SYN, src)
    run_transfer(tiny_config(arch, conditional=True, kimg=0.16, snapshot_kimg=0.16, seed=5), src, SYN, dst)
    G_src, meta = load_generator(src)
    G0, meta0 = load_generator(dst / "snapshots" / "G_ema-00000.0kimg.pt")
    assert meta0["images_seen"] == 0 and meta0["class_names"] == meta["class_names"]
    z = torch.randn(4, G_src.z_dim, generator=torch.Generator().manual_seed(0))
    c = torch.eye(len(meta["class_names"]))[:4]
    torch.testing.assert_close(G0(z, c, noise_mode="const"), G_src(z, c, noise_mode="const"), **TOL)
