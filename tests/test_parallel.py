"""Data-parallel training (animegen.parallel) with 2 gloo processes on the CPU: a run of 2 ranks, each on half
the global batch, gives the weights of 1 process on the whole batch, lazy regularisation steps, BatchNorm, the
tracked means and ADA's p included; rank 0 alone writes the run's files."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import ROOT, SYN, tiny_config

from animegen.train import run_train
from animegen.train.checkpoint import load_checkpoint

# float32 sums in another order (a gradient averaged over 2 ranks, BatchNorm's statistics from two halves) for
# 20 Adam steps: the weights agree to this, where a run that differs in one sample or draw is off by > 1e-2
ATOL, RTOL = 2e-4, 1e-3


def train_2ranks(cfg, out, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """``animegen train --nproc 2`` on ``cfg`` (written as a config file), from a fresh process."""
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out.parent / f"{out.name}-config.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "animegen.cli", "train", "--config", str(cfg_file), "--data", SYN, "--out",
           str(out), "--nproc", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def assert_same_weights(a: dict, b: dict) -> None:
    for key in ("G", "D", "G_ema"):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            other = b[key][name]
            if value.is_floating_point():
                torch.testing.assert_close(other, value, atol=ATOL, rtol=RTOL, msg=f"{key}.{name}")
            else:
                assert torch.equal(other, value), f"{key}.{name}"


CASES = {
    # StyleGAN with R1 and path length every 4 steps (their own passes for StyleGAN2), style mixing, G_ema
    "stylegan": dict(r1_interval=4, pl_interval=4, pl_weight=2.0, style_mixing=0.9),
    "stylegan-conditional": dict(conditional=True, r1_interval=4, pl_interval=4, pl_weight=2.0),
    "dcgan": dict(),  # BatchNorm in G and D: the global batch's statistics
    "stylegan2-ada": dict(augment="ada", ada_kimg=0.05, ada_interval=2, r1_interval=4, pl_interval=4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_on_half_batches_train_the_weights_of_one_on_the_whole(tmp_path, case):
    arch = case.split("-")[0]
    cfg = tiny_config(arch, kimg=0.16, snapshot_kimg=0.08, batch=8, **CASES[case])  # 20 steps
    one = run_train(cfg, SYN, tmp_path / "one")
    run = train_2ranks(cfg, tmp_path / "two")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    a, b = load_checkpoint(tmp_path / "one"), load_checkpoint(tmp_path / "two")
    assert b["images_seen"] == a["images_seen"] == one.images_seen and b["step"] == a["step"] == 20
    assert_same_weights(a, b)
    if arch != "dcgan":  # the tracked mean w (per class too): the global batch's
        torch.testing.assert_close(b["G_ema"]["w_avg"], a["G_ema"]["w_avg"], atol=ATOL, rtol=RTOL)
    for name, state in a["regularizers"].items():
        for k, v in state.items():
            torch.testing.assert_close(torch.as_tensor(b["regularizers"][name][k]), torch.as_tensor(v),
                                       atol=ATOL, rtol=RTOL)
    if CASES[case].get("augment") == "ada":
        assert a["augment"]["p"] > 0 and b["augment"]["p"] == pytest.approx(a["augment"]["p"], abs=1e-9)
    # one writer: rank 0's log, one summary saying how many processes trained
    log = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [r["step"] for r in map(json.loads, (tmp_path / "one" / "train_log.jsonl")
                                                                .read_text().splitlines())]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2


def test_the_global_batch_must_divide_among_the_processes(tmp_path):
    run = train_2ranks(tiny_config("dcgan", kimg=0.02, batch=7), tmp_path / "odd")
    assert run.returncode != 0 and "must divide among 2 processes" in run.stderr
