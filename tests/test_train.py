import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, SYN, tiny_config

from animegen.cli import main as cli_main
from animegen.train import TrainingDiverged, run_train, run_transfer
from animegen.train.checkpoint import load_checkpoint, load_generator
from animegen.train.transfer import class_index_map


def log_rows(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def losses(out):
    return [{k: v for k, v in r.items() if k != "img_s"} for r in log_rows(out)]


@pytest.mark.parametrize("arch", ["dcgan", "stylegan", "stylegan2"])
def test_tiny_model_trains_and_writes_the_model_artifact(tmp_path, arch, capsys):
    cfg = tiny_config(arch, kimg=2.4, snapshot_kimg=1.2, log_every=25)  # 300 steps of batch 8
    out = tmp_path / "run"
    res = run_train(cfg, SYN, out)
    assert res.steps == 300 and res.images_seen == 2400
    rows = log_rows(out)
    assert [r["step"] for r in rows] == list(range(25, 301, 25))
    # the losses move: D learns to separate real from fake, then G pushes back
    first = rows[0]
    assert max(abs(r["loss_d"] - first["loss_d"]) for r in rows) > 0.05
    assert max(abs(r["loss_g"] - first["loss_g"]) for r in rows) > 0.05
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in rows)
    if arch != "dcgan":
        assert any("r1" in r for r in rows) and any("pl" in r for r in rows)
    # the Model artifact
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "step", "images_seen", "rng", "config"} <= set(state)
    assert state["step"] == 300
    saved = json.loads((out / "config.json").read_text())
    assert saved["arch"] == arch and not {"data", "out", "init_from"} & set(saved)  # inputs are arguments
    assert json.loads((out / "inputs.json").read_text()) == {"data": SYN, "init_model": None}
    assert (out / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["G_ema-00000.0kimg.pt", "G_ema-00001.2kimg.pt",
                                                                      "G_ema-00002.4kimg.pt"]
    G0, meta0 = load_generator(out / "snapshots" / "G_ema-00000.0kimg.pt")  # the initialised model: curves start at 0
    assert meta0["images_seen"] == 0
    G1, meta1 = load_generator(out / "snapshots" / "G_ema-00001.2kimg.pt")
    assert meta1["images_seen"] == 1200
    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert samples == ["fakes-00001.2kimg.png", "fakes-00002.4kimg.png", "reals.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["img_per_s"] > 0 and summary["peak_memory_bytes"] > 0
    assert "img/s" in capsys.readouterr().out
    # G_ema has moved away from its initialisation, and it samples
    G, meta = load_generator(out)
    assert meta["images_seen"] == 2400
    x = G(torch.randn(2, G.z_dim))
    assert x.shape == (2, 3, 16, 16)
    assert any(not torch.equal(a, b) for a, b in zip(G0.state_dict().values(), G.state_dict().values()))
    if arch != "dcgan":
        assert G.w_avg.abs().sum() > 0  # tracked mean w


@pytest.mark.parametrize("arch", ["dcgan", "stylegan", "stylegan2"])
def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path, arch):
    kw = dict(conditional=True, kimg=0.48, snapshot_kimg=0.16, log_every=5)
    if arch == "stylegan2":  # ADA (the default on a small set) moving fast: p and its accumulators resume too
        kw.update(ada_kimg=0.5, ada_interval=3)
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(tiny_config(arch, **kw), SYN, full)
    run_train(tiny_config(arch, **{**kw, "kimg": 0.16}), SYN, part)
    run_train(tiny_config(arch, **kw), SYN, part, resume=True)
    assert losses(full) == losses(part)
    a, b = load_checkpoint(full), load_checkpoint(part)
    for key in ("G", "D", "G_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    if arch == "stylegan2":
        assert a["augment"] == b["augment"] and a["augment"]["p"] > 0 and len(a["augment"]["history"]) == 20


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    """SIGKILL a run after its first checkpoint; resuming it reproduces the uninterrupted run's log."""
    kw = dict(kimg=0.8, snapshot_kimg=0.16, log_every=5)
    full = tmp_path / "full"
    run_train(tiny_config("stylegan", **kw), SYN, full)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "animegen.cli", "train", "--arch", "stylegan", "--data", SYN, "--out", str(out),
           "--resolution", "16", "--batch", "8", "--kimg", "0.8", "--snapshot-kimg", "0.16", "--log-every", "5",
           "--no-progress", "--z-dim", "16", "--w-dim", "16", "--mapping-layers", "2", "--channel-base", "128",
           "--channel-max", "32"]
    # same thread count as this process: CPU float reductions are bit-reproducible per thread count
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(out)  # the latest checkpoint is whole, whenever the kill landed
    assert 0 < state["images_seen"] < 800, "the run was not interrupted mid-way"
    assert cli_main(["train", "--out", str(out), "--resume"]) == 0
    assert losses(full) == losses(out)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_train(tiny_config("dcgan", kimg=0.16, snapshot_kimg=0.08), SYN, out)
    before = (out / "checkpoint.pt").read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        run_train(tiny_config("dcgan", kimg=0.32, snapshot_kimg=0.08), SYN, out, resume=True)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from animegen.train import losses as losses_mod

    calls = {"n": 0}
    original = losses_mod.BCELoss.d_loss

    def poisoned(self, real, fake):
        calls["n"] += 1
        value = original(self, real, fake)
        return value * float("nan") if calls["n"] > 25 else value

    monkeypatch.setattr(losses_mod.BCELoss, "d_loss", poisoned)
    cfg, out = tiny_config("dcgan", kimg=0.8, snapshot_kimg=0.16, log_every=5), tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="NaN"):
        run_train(cfg, SYN, out)
    state = load_checkpoint(out)
    assert state["step"] == 20  # the snapshot before the NaN
    assert all(torch.isfinite(v).all() for v in state["G"].values() if v.is_floating_point())
    assert log_rows(out)[-1]["event"] == "diverged"


def test_init_from_with_another_class_count(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    # 3 hair x 2 eye = 6 classes; concat: D's class input (fromRGB's) is remapped under FreezeD
    run_train(tiny_config("stylegan", conditional=True, cond_mode="concat", kimg=0.16), SYN, src)
    old = load_checkpoint(src)
    old_names = old["class_names"]
    assert len(old_names) == 6
    # 4 classes (2 hair x 2 eyes): two of them exist in the source under the same names
    cfg = tiny_config("stylegan", conditional=True, kimg=0.08, freeze_d=2,
                      class_map={"red hair red eyes": "black hair red eyes"}, init_class="blue hair green eyes")
    run_transfer(cfg, src, "synthetic:?n=64&resolution=16&hair=blonde,red&eyes=red,green", dst)
    new = load_checkpoint(dst)
    names = new["class_names"]
    assert len(names) == 4
    report = json.loads((dst / "init_report.json").read_text())
    assert report["class_init"] == {"blonde hair green eyes": "blonde hair green eyes",
                                    "blonde hair red eyes": "blonde hair red eyes",
                                    "red hair green eyes": "blue hair green eyes",
                                    "red hair red eyes": "black hair red eyes"}
    # frozen D blocks are exactly the source's, except fromRGB's class input (blocks.0.class_in), remapped
    for name, value in new["D"].items():
        if name.startswith(("blocks.0.", "blocks.1.")) and name != "blocks.0.class_in.weight":
            assert torch.equal(value, old["D"][name]), name
    c_old, c_new = old["D"]["blocks.0.class_in.weight"], new["D"]["blocks.0.class_in.weight"]
    assert c_new.shape[1] == 4 and c_old.shape[1] == 6
    for k, new_name in enumerate(names):  # each new class starts as the source class it was mapped to
        j = old_names.index(report["class_init"][new_name])
        torch.testing.assert_close(c_new[:, k], c_old[:, j], rtol=0, atol=0)


def test_init_from_conditional_into_unconditional_and_back(tmp_path):
    src, uncond, back = tmp_path / "src", tmp_path / "uncond", tmp_path / "back"
    run_train(tiny_config("dcgan", conditional=True, kimg=0.08), SYN, src)
    run_transfer(tiny_config("dcgan", kimg=0.08, init_class="black hair"), src, SYN, uncond)
    report = json.loads((uncond / "init_report.json").read_text())
    # a partial name: the mean of every 'black hair * eyes' class is folded in
    assert report["folded_class"] == "mean of 2 classes: black hair green eyes, black hair red eyes"
    new = load_checkpoint(uncond)
    assert new["G"]["project.weight"].shape[1] == 16  # z only: the class columns were folded into the bias
    run_transfer(tiny_config("dcgan", conditional=True, kimg=0.08), uncond, SYN, back)
    assert json.loads((back / "init_report.json").read_text())["G_loaded"] > 0


def test_init_from_refuses_incompatible_sources(tmp_path):
    src = tmp_path / "src"
    run_train(tiny_config("dcgan", kimg=0.08), SYN, src)
    with pytest.raises(ValueError, match="cannot initialise"):
        run_transfer(tiny_config("stylegan"), src, SYN, tmp_path / "x")
    with pytest.raises(ValueError, match="not in the source model's classes"):
        class_index_map(["a", "b"], ["c"], {"c": "zzz"})
    assert class_index_map(["red hair blue eyes", "red hair red eyes", "blue hair red eyes"], ["x", "y"],
                           {"x": "red hair"}, init_class="red eyes") == [[0, 1], [1, 2]]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_transfer(tiny_config("dcgan"), tmp_path / "missing", SYN, tmp_path / "y")


def test_cli_train_with_config_file_flags_override_and_refusals(tmp_path, capsys):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("arch: dcgan\nbatch: 4\nkimg: 0.04\nz-dim: 16\nchannel_base: 128\nresolution: 16\n"
                        f"data: '{SYN}'\nprogress: false\n")
    out = tmp_path / "cli"
    assert cli_main(["train", "--config", str(cfg_file), "--batch", "8", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["batch"] == 8 and saved["z_dim"] == 16 and saved["kimg"] == 0.04
    assert cli_main(["train", "--config", str(cfg_file), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli_main(["train", "--out", str(out), "--resume", "--kimg", "0.08"]) == 0
    assert load_checkpoint(out)["images_seen"] == 80
    assert cli_main(["train", "--out", str(out), "--resume", "--batch", "4"]) == 2
    assert "differ" in capsys.readouterr().err
    assert cli_main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["train", "--arch"])


def test_configs_and_runs_that_hold_their_data_and_out_still_load_and_resume(tmp_path, capsys):
    """Before run_train took them as arguments, config.json and checkpoints held data, out and init_from: such a
    config still loads (the keys dropped, other unknown keys still refused) and such a run resumes from the CLI on
    the data its config names; a resume on other data is refused."""
    from animegen.train import TrainConfig
    from animegen.train.config import RUN_KEYS

    cfg = tiny_config("dcgan", kimg=0.016, snapshot_kimg=0.016, log_every=1)
    old = cfg.to_dict() | {"data": SYN, "out": "runs/x", "init_from": None}
    assert set(RUN_KEYS) <= set(old) and TrainConfig.from_dict(old) == cfg
    with pytest.raises(ValueError, match=r"unknown TrainConfig option\(s\): wings"):
        TrainConfig.from_dict(old | {"wings": 2})

    out, data = tmp_path / "old", SYN + "&seed=3"
    run_train(cfg, data, out)
    (out / "inputs.json").unlink()  # as an older animegen left it: the inputs in config.json and the checkpoint
    (out / "config.json").write_text(json.dumps(json.loads((out / "config.json").read_text())
                                                | {"data": data, "out": str(out), "init_from": None}))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["config"] |= {"data": data, "out": str(out), "init_from": None}
    torch.save(state, out / "checkpoint.pt")
    assert cli_main(["train", "--out", str(out), "--resume", "--kimg", "0.032"]) == 0
    assert load_checkpoint(out)["images_seen"] == 32 and [r["step"] for r in log_rows(out)] == [1, 2, 3, 4]
    assert json.loads((out / "inputs.json").read_text()) == {"data": data, "init_model": None}
    assert not set(RUN_KEYS) & set(json.loads((out / "config.json").read_text()))
    capsys.readouterr()
    assert cli_main(["train", "--out", str(out), "--resume", "--kimg", "0.048", "--data", SYN]) == 2
    assert "trains on" in capsys.readouterr().err
    assert load_checkpoint(out)["images_seen"] == 32


def test_conditional_needs_labels(tmp_path):
    with pytest.raises(ValueError, match="labelled dataset"):
        run_train(tiny_config("dcgan", conditional=True), SYN + "&labels=none", tmp_path / "run")


def test_epochs_duration_and_small_datasets(tmp_path):
    cfg = tiny_config("dcgan", kimg=None, epochs=2, batch=16)
    res = run_train(cfg, "synthetic:?n=10&resolution=16", tmp_path / "run")  # fewer images than a batch
    assert res.images_seen == 32  # 2 epochs of 10 images, rounded up to whole batches


def test_multi_hot_conditional_training_and_sampling(tmp_path):
    from animegen.latent import sample

    out = tmp_path / "run"
    run_train(tiny_config("stylegan", conditional=True, kimg=0.08), SYN + "&labels=multi_hot", out)
    G, meta = load_generator(out)
    assert meta["class_names"] == ["black hair", "blonde hair", "blue hair", "green eyes", "red eyes"]
    assert G.c_dim == 5
    paths = sample(G, meta["class_names"], tmp_path / "s", n=2, classes=["blonde hair+red eyes"])
    assert len(paths["images"]) == 2 and paths["images"][0].parent.name == "blonde_hair+red_eyes"
    assert (tmp_path / "s" / "grid.png").exists()


def test_snapshot_kimg_zero_snapshots_only_at_the_end(tmp_path):
    out = tmp_path / "run"
    run_train(tiny_config("dcgan", kimg=0.16, snapshot_kimg=0), SYN, out)
    snaps = sorted(p.name for p in (out / "snapshots").glob("G_ema-*.pt"))
    assert snaps == ["G_ema-00000.0kimg.pt", "G_ema-00000.2kimg.pt"]
    assert load_checkpoint(out)["images_seen"] == 160
    with pytest.raises(ValueError, match="snapshot_kimg must be >= 0"):
        run_train(tiny_config("dcgan", kimg=0.16, snapshot_kimg=-1), SYN, tmp_path / "neg")


def test_a_checkpoint_older_than_an_option_resumes(tmp_path):
    """A run saved before an option existed (its config lacks the key) resumes with that option at its default;
    giving the option another value is still refused."""
    out = tmp_path / "run"
    run_train(tiny_config("stylegan", kimg=0.08, snapshot_kimg=0.08), SYN, out)
    state = load_checkpoint(out)
    for key in ("ada_target", "ada_kimg", "ada_interval", "augment"):
        del state["config"][key]
    torch.save(dict(state), out / "checkpoint.pt")
    run_train(tiny_config("stylegan", kimg=0.16, snapshot_kimg=0.08), SYN, out, resume=True)
    assert load_checkpoint(out)["images_seen"] == 160
    with pytest.raises(ValueError, match="ada_target"):
        run_train(tiny_config("stylegan", kimg=0.24, snapshot_kimg=0.08, ada_target=0.9), SYN, out, resume=True)


def test_a_conditional_stylegan_saved_before_class_weights_samples_alike_and_refuses_to_resume(tmp_path):
    """A checkpoint written when the concat class was extra columns of the first mapping layer and of fromRGB (at
    the dense gains) loads as the same generator; resuming it is refused with what to do (its optimiser state
    belongs to the old parameters)."""
    import math

    from animegen.train.checkpoint import CheckpointError, save_checkpoint

    run = tmp_path / "run"
    cfg = tiny_config("stylegan", conditional=True, cond_mode="concat", kimg=0.08, snapshot_kimg=0.08)
    run_train(cfg, SYN, run)
    ckpt = dict(load_checkpoint(run))
    z_dim, lr_mul = cfg.z_dim, 0.01
    for key in ("G", "G_ema"):  # the old layout: [w, z + c] at gain lr_mul / sqrt(z + c)
        sd = dict(ckpt[key])
        dense, cls = sd["mapping_net.layers.0.weight"], sd.pop("mapping_net.class_in.weight")
        g_old = lr_mul / math.sqrt(z_dim + cls.shape[1])
        sd["mapping_net.layers.0.weight"] = torch.cat([dense * (lr_mul / math.sqrt(z_dim)) / g_old, cls / g_old], 1)
        ckpt[key] = sd
    sd = dict(ckpt["D"])
    rgb, cls = sd["blocks.0.conv.weight"], sd.pop("blocks.0.class_in.weight")
    g_old = 1 / math.sqrt(3 + cls.shape[1])
    sd["blocks.0.conv.weight"] = torch.cat([rgb * (1 / math.sqrt(3)) / g_old, cls[:, :, None, None] / g_old], 1)
    ckpt["D"] = sd
    old = tmp_path / "old"
    old.mkdir()
    save_checkpoint(ckpt, old / "checkpoint.pt")
    (old / "config.json").write_text((run / "config.json").read_text())
    G_new, meta = load_generator(run)
    G_old, _ = load_generator(old)
    z, c = torch.randn(4, G_new.z_dim), torch.eye(len(meta["class_names"]))[[0, 1, 2, 0]]
    torch.testing.assert_close(G_old(z, c, noise_mode="const"), G_new(z, c, noise_mode="const"), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(CheckpointError, match="cannot resume; start a new run from it with --init-from"):
        run_train(tiny_config("stylegan", conditional=True, kimg=0.16, snapshot_kimg=0.08), SYN, old, resume=True)
    run_transfer(tiny_config("stylegan", conditional=True, kimg=0.08, snapshot_kimg=0.08), old, SYN, tmp_path / "t")


@pytest.mark.parametrize("arch,g_batch", [("dcgan", None), ("dcgan", "fresh"), ("stylegan", None),
                                          ("stylegan", "reuse")])
def test_g_steps_on_the_batch_d_has_just_seen_by_default_for_dcgan(tmp_path, monkeypatch, arch, g_batch):
    """DCGAN's default (g_batch reuse, as the DCGAN reference and the PyTorch tutorial train): G's step scores
    with D the very images D's step has just seen as fakes, from one pass through G per step; 'fresh' (StyleGAN's
    default) draws a new batch for G's step, a second pass."""
    import animegen.train.loop as loop

    events, d_inputs = [], []
    build = loop.build_models

    def counted(*args, **kw):
        G, D = build(*args, **kw)
        if isinstance(G.synthesis, torch.nn.Module):
            G.synthesis.register_forward_hook(lambda m, i, o: events.append("G"))
        else:  # DCGAN: a method
            synthesis = G.synthesis
            G.synthesis = lambda *a, **k: (events.append("G"), synthesis(*a, **k))[1]
        def seen(m, i, o):
            events.append("D")
            d_inputs.append(i[0].detach().clone())

        D.register_forward_hook(seen)
        return G, D

    monkeypatch.setattr(loop, "build_models", counted)
    steps = 3
    cfg = tiny_config(arch, conditional=True, kimg=0.008 * steps, snapshot_kimg=0, r1_gamma=0.0, pl_weight=0.0,
                      **({} if g_batch is None else {"g_batch": g_batch}))
    run_train(cfg, SYN, tmp_path / "run")
    reuse = (g_batch or {"dcgan": "reuse", "stylegan": "fresh"}[arch]) == "reuse"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["g_batch"] == ("reuse" if reuse else "fresh")
    # the training steps' passes (the end's snapshot samples G after them): one pass through G per step, or two
    last_d = len(events) - events[::-1].index("D")
    assert "".join(events[:last_d]) == ("GDDD" if reuse else "GDDGD") * steps
    for s in range(steps):  # D's passes: real, fake, then G's step's fake
        _real, d_fake, g_fake = d_inputs[3 * s: 3 * s + 3]
        assert torch.equal(d_fake, g_fake) == reuse


def test_a_dcgan_run_saved_before_g_batch_resumes_with_a_fresh_g_batch(tmp_path):
    """A DCGAN run saved before the g_batch option trained G on a fresh batch: resumed from the CLI with no
    options (config.json and checkpoint without the key), it goes on that way, exactly as an uninterrupted run."""
    kw = dict(conditional=True, kimg=0.048, snapshot_kimg=0.016, log_every=1, g_batch="fresh")
    full, part = tmp_path / "full", tmp_path / "part"
    run_train(tiny_config("dcgan", **kw), SYN, full)
    run_train(tiny_config("dcgan", **{**kw, "kimg": 0.016}), SYN, part)
    for f in ("config.json",):
        saved = json.loads((part / f).read_text())
        del saved["g_batch"]
        (part / f).write_text(json.dumps(saved))
    state = torch.load(part / "checkpoint.pt", weights_only=True)
    del state["config"]["g_batch"]
    torch.save(state, part / "checkpoint.pt")
    assert cli_main(["train", "--out", str(part), "--resume", "--kimg", "0.048"]) == 0
    assert losses(full) == losses(part)
    assert json.loads((part / "config.json").read_text())["g_batch"] == "fresh"
    with pytest.raises(ValueError, match="g_batch"):
        run_train(tiny_config("dcgan", **{**kw, "kimg": 0.064, "g_batch": "reuse"}), SYN, part, resume=True)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="resetting the peak RSS needs Linux")
def test_peak_memory_is_the_runs_own_not_what_the_process_held_before(tmp_path):
    """A process that trains several models (the paper tables, a notebook) reports each run's peak, not the
    largest so far."""
    held = np.ones(4 * 2**30 // 8)  # 4 GiB resident before the run, freed
    del held
    res = run_train(tiny_config(kimg=0.05, snapshot_kimg=0), SYN, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 < res.peak_memory_bytes == summary["peak_memory_bytes"] < 4 * 2**30
