"""benchmarks/gpu_check.py: its dry run (every stage, tiny, on the CPU, with kfp/minio/kaggle/pytorch-fid not
importable, as on the lent GPU machine), the scoring of what it brings back, the faces subset it carries, and the
seeded random Inception it measures FID speed with."""
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT
from test_imports import blocked_env

sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402
import gpu_check  # noqa: E402

MLDS = common.MLDS
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def check(cmd, env, timeout=600):
    proc = subprocess.run([sys.executable, str(SCRIPT), *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_dry_run_reports_every_stage_and_scores(tmp_path):
    env = blocked_env(tmp_path)  # as on the lent GPU: no kfp, minio, kaggle, pytorch-fid
    out = tmp_path / "out"
    check(["--dry-run", "--out", str(out)], env)
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["finished"] and doc["mode"] == "dry-run"
    env_rec = doc["environment"]
    assert {"device_name", "torch", "python", "git_commit", "device_type"} <= set(env_rec)
    assert env_rec["pytorch_fid"] == "absent"
    st = doc["stages"]
    assert list(st) == list(gpu_check.STAGES)
    assert all(st[s]["status"] == "ok" for s in st), {s: st[s]["status"] for s in st}

    tests = st["cuda_tests"]
    assert "tests/test_cuda.py" in tests["files"] and tests["tests"]
    n_cuda = sum(t["outcome"] == "passed" for t in tests["tests"])
    assert (n_cuda > 0) == torch.cuda.is_available() and tests["counts"]["failed"] == tests["counts"]["error"] == 0

    tp = st["train_throughput"]["figures"]
    assert set(tp) == {"dcgan", "stylegan-cond"}
    assert all(r["img_s"] > 0 and r["peak_memory_bytes"] > 0 for r in tp.values())

    fs = st["fid_speed"]
    assert fs["agree"] and fs["figures"]["animegen (torchscript)"]["wall_s"] > 0
    assert np.isfinite(fs["figures"]["animegen (torchscript)"]["fid"])
    assert fs["roofline"]["inception_gflop_per_image"] > 10  # the real network's FLOPs (11.4 GFLOP at 299 px)
    assert fs["result"]["weights"]["kind"].startswith("seeded random")

    q = st["quality"]
    assert q["kimg"] > 0 and q["summary"]["images_seen"] > 0 and q["samples"]["n"] == 64
    prof = st["profile"]
    assert prof["top"] and prof["top"][0]["self_ms"] > 0

    # what comes back from the device: at most 8 plain files of at most 16 MiB, simple names
    files = sorted(p for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() and p.stat().st_size <= 16 * 2 ** 20 for p in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", p.name) for p in files)
    with np.load(out / "samples-0.npz") as f:
        assert f["images"].dtype == np.uint8 and f["images"].shape == (32, 64, 64, 3)
        assert f["labels"].shape == (32,) and len(f["class_names"]) > 0

    scored = tmp_path / "scored"
    check(["--score", str(out), "--dry-run", "--out", str(scored)], env)
    result = json.loads(next(scored.glob("gpu_check-cpu-*-dry-run.json")).read_text())
    assert result["stages"] == doc["stages"]
    score = result["score"]
    assert np.isfinite(score["fid"]["fid"]) and np.isfinite(score["fid"]["kid"])
    assert score["fid"]["extractor_source"] != "explicit"  # the real weights, as resolve_extractor finds them
    acc = score["accuracy"]
    assert 0 <= acc["hair_accuracy"] <= 1 and 0 <= acc["eye_accuracy"] <= 1 and acc["images"] == 64
    assert sum(r["n"] for r in acc["classes"]) == 64


def test_print_invocation_names_command_carry_and_timeout():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--print-invocation"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert gpu_check.RUN_COMMAND in proc.stdout and '[".gpucheck"]' in proc.stdout
    assert "--out $OUT" in gpu_check.RUN_COMMAND and str(gpu_check.RUN_TIMEOUT_S) in proc.stdout
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    assert gpu_check.RUN_COMMAND in readme and str(gpu_check.RUN_TIMEOUT_S) in readme
    assert ".gpucheck/" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.skipif(not MLDS.is_file(), reason="needs the shared MLDS zip")
def test_faces_subset_keeps_the_mlds_layout_and_tags(tmp_path):
    entries, tags, provenance = gpu_check.mlds_entries(MLDS)
    assert len(entries) == 36740 - 1248  # byte duplicates dropped, as fid_floor.mlds_images does
    picks = [5, 0, 1000, 20000, len(entries) - 1]
    dest = tmp_path / "subset.zip"
    facts = gpu_check.write_subset(MLDS, dest, picks, "test subset")
    assert facts["images"] == 5
    with zipfile.ZipFile(dest) as zf:
        names = zf.namelist()
        jpgs = [n for n in names if n.endswith(".jpg")]
        assert jpgs == [entries[i][0] for i in sorted(picks)]
        assert all(zf.read(entries[i][0]) == entries[i][1] for i in picks)
        stems = {Path(n).stem for n in jpgs}
        rows = [r for r in zf.read("mlds-anime-faces-64/tags.csv").decode().splitlines() if r]
        assert {r.split(",")[0] for r in rows} <= stems and len(rows) >= 4  # 4 of the 5 ids are labelled
        assert "test subset" in zf.read("mlds-anime-faces-64/PROVENANCE.txt").decode()


def test_seeded_inception_is_pytorch_fids_network(tmp_path):
    """The seeded network loads strictly into pytorch-fid's InceptionV3 and computes what it computes; animegen's
    TorchScript back-end on the scripted copy gives the same features as its pytorch-fid back-end."""
    pfi = pytest.importorskip("pytorch_fid.inception")
    from animegen.eval.inception import resolve_extractor

    net = common.fid_inception(seed=0)
    state = net.state_dict()
    fetch = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *a, **k: state
    try:
        ref = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()  # load_state_dict(strict=True)
    finally:
        pfi.load_state_dict_from_url = fetch
    x = torch.rand(2, 3, 299, 299, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(x)[0].flatten(1)
        got = common.fid_inception_pool3(net)(2 * x - 1).flatten(1)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert want.abs().mean() > 0.05  # activations neither vanish nor explode through the random network

    paths = common.write_seeded_inception(tmp_path, seed=0)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    a = resolve_extractor(paths["torchscript"], device="cpu").features(images)
    b = resolve_extractor(paths["state_dict"], device="cpu").features(images)
    assert np.abs(a - b).max() < 1e-4
