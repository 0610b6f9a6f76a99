"""Damaged and foreign checkpoints: every command that loads a model names the file, says it is damaged or not an
animegen checkpoint and why, and exits with status 2 without a traceback; nothing in a foreign pickle runs."""
from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, SYN, TINY, tiny_config

from animegen.cli import main
from animegen.train import run_train
from animegen.train.checkpoint import CheckpointError, load_checkpoint, load_generator, models_from_checkpoint

TINY_DC = ["--arch", "dcgan", "--resolution", "16", "--z-dim", str(TINY["dcgan"]["z_dim"]), "--channel-base",
           str(TINY["dcgan"]["channel_base"]), "--channel-max", str(TINY["dcgan"]["channel_max"]), "--batch", "8",
           "--no-progress"]


class RunsCode:
    """Pickles as a call of os.system: torch.load(weights_only=True) must refuse it without calling it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A real Model directory from a tiny DCGAN run (checkpoint.pt, config.json, snapshots/)."""
    root = tmp_path_factory.mktemp("ckpt")
    run_train(tiny_config("dcgan", kimg=0.08, snapshot_kimg=0.08), SYN, root / "model")
    return root / "model"


def copy_model(model, dst):
    shutil.copytree(model, dst)
    return dst


def full_state(model):
    return torch.load(model / "checkpoint.pt", weights_only=True)


# Each case rewrites a copy of checkpoint.pt; the pattern is what stderr must say after the file's path.
def truncated(path, model, marker):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path, model, marker):
    path.write_bytes(b"")


def foreign_pickle(path, model, marker):
    torch.save({"G_ema": RunsCode(marker)}, path)


def raw_pickle(path, model, marker):
    path.write_bytes(pickle.dumps({"config": RunsCode(marker)}, protocol=4))


def plain_state_dict(path, model, marker):
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)


def foreign_dict(path, model, marker):
    torch.save({"foo": 1}, path)


def missing_keys(path, model, marker):
    state = full_state(model)
    del state["G_ema"], state["config"]
    torch.save(state, path)


def newer_version(path, model, marker):
    torch.save({**full_state(model), "version": "99.0.0"}, path)


CASES = {
    "truncated": (truncated, r"damaged checkpoint: truncated: .*\(\d+ bytes\)"),
    "empty": (empty, r"damaged checkpoint: empty file \(0 bytes\)"),
    "foreign_pickle": (foreign_pickle, r"not an animegen checkpoint: refused by torch\.load\(weights_only=True\): "
                                       r"it carries code \(GLOBAL (posix|nt)\.system\)"),
    "raw_pickle": (raw_pickle, r"not an animegen checkpoint: refused by torch\.load\(weights_only=True\): "
                               r"it carries code \(GLOBAL (posix|nt)\.system\)"),
    "plain_state_dict": (plain_state_dict, r"not an animegen checkpoint: a plain state dict of 2 tensors "
                                           r"\(weight, bias\)"),
    "foreign_dict": (foreign_dict, r"not an animegen checkpoint: its keys are foo;"),
    "missing_keys": (missing_keys, r"not an animegen checkpoint: missing keys G_ema, config"),
    "newer_version": (newer_version, r"checkpoint of a newer animegen: format version 99\.0\.0; this animegen "
                                     r"\(\S+\) reads checkpoints of animegen <= \d+\.\d+\.x"),
}


def commands(bad, tmp_path):
    """Every command that loads a model, given the damaged Model directory ``bad``."""
    return {
        "sample": ["sample", str(bad), "--out", str(tmp_path / "s"), "--n", "1", "--device", "cpu"],
        "interpolate": ["interpolate", str(bad), "--out", str(tmp_path / "i"), "--steps", "2", "--rows", "1",
                        "--device", "cpu"],
        "truncate": ["truncate", str(bad / "checkpoint.pt"), "--out", str(tmp_path / "t"), "--n", "1",
                     "--device", "cpu"],
        "evaluate": ["evaluate", str(bad), "--data", SYN, "--out", str(tmp_path / "e"), "--device", "cpu"],
        "resume": ["train", "--out", str(bad), "--resume"],
        "init_from": ["train", "--data", SYN, "--out", str(tmp_path / "new"), "--init-from", str(bad),
                      "--kimg", "0.008", *TINY_DC],
    }


def assert_clear_error(code, capsys, path, pattern):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(re.escape(str(path)) + ": " + pattern, err), err


@pytest.mark.parametrize("case", list(CASES))
def test_every_command_reports_a_bad_checkpoint(model, tmp_path, capsys, case):
    damage, pattern = CASES[case]
    bad = copy_model(model, tmp_path / "bad")
    marker = tmp_path / "code-ran"
    damage(bad / "checkpoint.pt", model, marker)
    for name, argv in commands(bad, tmp_path).items():
        assert_clear_error(main(argv), capsys, bad / "checkpoint.pt", pattern)
        assert not marker.exists(), f"{name}: the pickle's code ran"
    with pytest.raises(CheckpointError) as e:  # the Python API raises the same error (a ValueError)
        load_checkpoint(bad)
    assert isinstance(e.value, ValueError) and e.value.path == bad / "checkpoint.pt"
    assert not marker.exists()


def test_a_damaged_snapshot_stops_evaluate_before_any_slow_step(model, tmp_path, capsys):
    bad = copy_model(model, tmp_path / "bad")
    snaps = sorted((bad / "snapshots").glob("G_ema-*.pt"))
    assert snaps
    data = snaps[-1].read_bytes()
    snaps[-1].write_bytes(data[: len(data) - 100])
    argv = ["evaluate", str(bad), "--data", SYN, "--out", str(tmp_path / "e"), "--snapshots", "--device", "cpu"]
    assert_clear_error(main(argv), capsys, snaps[-1], r"damaged checkpoint: truncated")
    assert not (tmp_path / "e" / "metrics.json").exists()
    # the snapshot given as the model itself
    assert_clear_error(main(["sample", str(snaps[-1]), "--out", str(tmp_path / "s"), "--n", "1", "--device", "cpu"]),
                       capsys, snaps[-1], r"damaged checkpoint: truncated")


def test_valid_checkpoint_and_snapshot_still_load(model):
    state = load_checkpoint(model)
    assert {"G", "D", "G_ema", "opt_G", "config", "class_names", "version"} <= set(state)
    G, meta = load_generator(model)
    assert meta["images_seen"] == state["images_seen"] > 0
    snap = sorted((model / "snapshots").glob("G_ema-*.pt"))[-1]
    G2, meta2 = load_generator(snap)
    assert meta2["images_seen"] == meta["images_seen"]
    assert load_checkpoint(snap, mmap=True)["G_ema"].keys() == state["G_ema"].keys()
    # an older animegen's checkpoint, or one without a version, is read
    assert load_checkpoint(model)["version"]
    torch.save({**dict(state), "version": "0.0.1"}, model.parent / "older.pt")
    load_checkpoint(model.parent / "older.pt")


def test_a_snapshot_is_not_resumed_nor_used_for_init_from(model, tmp_path, capsys):
    snap = sorted((model / "snapshots").glob("G_ema-*.pt"))[-1]
    argv = ["train", "--data", SYN, "--out", str(tmp_path / "new"), "--init-from", str(snap), "--kimg", "0.008",
            *TINY_DC]
    assert_clear_error(main(argv), capsys, snap, r"not a full checkpoint: a sampling snapshot holds G_ema only, "
                                                 r"not 'G': use the run's checkpoint\.pt")
    with pytest.raises(CheckpointError, match="not a full checkpoint"):
        models_from_checkpoint(load_checkpoint(snap))


def test_a_checkpoint_without_training_state_is_not_resumed(model, tmp_path, capsys):
    bad = copy_model(model, tmp_path / "bad")
    state = full_state(model)
    for key in ("opt_G", "opt_D", "step", "rng", "sampler", "regularizers"):
        del state[key]
    torch.save(state, bad / "checkpoint.pt")
    load_generator(bad)  # sampling needs no training state
    assert_clear_error(main(["train", "--out", str(bad), "--resume"]), capsys, bad / "checkpoint.pt",
                       r"not a full checkpoint: it holds no training state \('opt_G'\): it can be sampled, evaluated "
                       r"or used for --init-from, but not resumed")
    # a half-present training state is an error at once
    state["opt_G"] = {}
    torch.save(state, bad / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="missing keys opt_D, step, rng, sampler, regularizers"):
        load_checkpoint(bad)


@pytest.mark.parametrize("edit, pattern", [
    (lambda s: s["config"].update(channel_max=8), r"damaged checkpoint: its G_ema does not fit the model its config "
                                                  r"describes .*size mismatch"),
    (lambda s: s["config"].update(arch="biggan"), r"not an animegen checkpoint: its config is not one this animegen "
                                                  r"reads: unknown architecture 'biggan'"),
    (lambda s: s["config"].update(wings=3), r"not an animegen checkpoint: its config is not one this animegen reads: "
                                            r"unknown TrainConfig option\(s\): wings"),
    (lambda s: s.update(class_names="blonde"), r"damaged checkpoint: class_names is str, not a list of names"),
    (lambda s: s.update(img_channels=0), r"damaged checkpoint: img_channels is 0, not an integer >= 1"),
    (lambda s: s.update(version=3), r"not an animegen checkpoint: its version is 3, not a version string"),
    (lambda s: s.update(G_ema={"w": 1}), r"damaged checkpoint: G_ema is not a state dict of named tensors"),
    (lambda s: s["G_ema"].pop(next(iter(s["G_ema"]))), r"damaged checkpoint: G and G_ema differ in tensors"),
], ids=["shapes", "arch", "option", "class_names", "img_channels", "version", "G_ema", "G_vs_G_ema"])
def test_wrong_contents_are_named(model, tmp_path, capsys, edit, pattern):
    bad = copy_model(model, tmp_path / "bad")
    state = full_state(model)
    edit(state)
    torch.save(state, bad / "checkpoint.pt")
    assert_clear_error(main(commands(bad, tmp_path)["sample"]), capsys, bad / "checkpoint.pt", pattern)


def test_not_a_pytorch_file(tmp_path, capsys):
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "checkpoint.pt").write_text("hello, not a checkpoint\n")
    assert_clear_error(main(commands(bad, tmp_path)["sample"]), capsys, bad / "checkpoint.pt",
                       r"not an animegen checkpoint: not a PyTorch file \(it begins with b'hello, n'\)")
    shutil.make_archive(str(tmp_path / "archive"), "zip", bad)
    shutil.copyfile(tmp_path / "archive.zip", bad / "checkpoint.pt")
    assert_clear_error(main(commands(bad, tmp_path)["sample"]), capsys, bad / "checkpoint.pt",
                       r"not an animegen checkpoint: a zip archive but not a PyTorch file \(no data\.pkl")


def test_transfer_component_reports_the_init_model(model, tmp_path):
    dsl = pytest.importorskip("kfp.dsl")
    from animegen.components.transfer.component import transfer
    from animegen.data.ingest import IngestConfig, run_ingest

    bad = copy_model(model, tmp_path / "bad")
    truncated(bad / "checkpoint.pt", model, None)
    run_ingest(IngestConfig(resolution=16, holdout=0.25, split_block=4), "synthetic:?n=16&seed=5&labels=none",
               tmp_path / "ds")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: damaged checkpoint: truncated") as e:
        transfer.python_func(init_model=dsl.Model(uri=str(bad)), dataset=dsl.Dataset(uri=str(tmp_path / "ds")),
                             model=dsl.Model(uri=str(tmp_path / "target")),
                             summary=dsl.HTML(uri=str(tmp_path / "t.html")), init_class="", class_map={},
                             freeze_d=0, conditional=False, kimg=0.008, batch=8, r1_gamma=-1.0, snapshot_kimg=0.0,
                             seed=0, device="cpu", options={})
    assert e.value.path == bad / "checkpoint.pt"


def test_a_component_process_ends_with_the_message_not_a_traceback(tmp_path):
    """A component body imports animegen.components.runtime before it calls its stage; an uncaught
    CheckpointError then ends the task with one line (exit status 1), other errors keep their traceback."""
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = ("from animegen.components import runtime as rt\n"
            "from animegen.train.checkpoint import load_checkpoint\n"
            f"load_checkpoint({str(bad)!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip() == f"error: {bad}: damaged checkpoint: empty file (0 bytes)"
    r = subprocess.run([sys.executable, "-c", "from animegen.components import runtime\nraise KeyError('x')"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "Traceback" in r.stderr and "KeyError" in r.stderr


def test_resume_names_the_file_when_a_tensor_does_not_fit(model, tmp_path, capsys):
    bad = copy_model(model, tmp_path / "bad")
    state = full_state(model)
    state["D"]["fc.weight"] = torch.zeros(1, 3)  # G_ema is intact: sampling works, resuming D cannot
    torch.save(state, bad / "checkpoint.pt")
    load_generator(bad)
    assert_clear_error(main(["train", "--out", str(bad), "--resume"]), capsys, bad / "checkpoint.pt",
                       r"damaged checkpoint: its D does not fit the model its config describes .*size mismatch")
