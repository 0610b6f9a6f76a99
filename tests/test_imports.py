"""The package imports, trains, samples and evaluates without kfp, kfp-kubernetes, minio, kaggle or pytorch-fid.

A lent GPU machine (and any plain training box) has torch, torchvision, numpy, scipy, Pillow, matplotlib, tqdm,
PyYAML and scikit-learn, and none of those five: each is imported only where it is used (the KFP component
definitions, the s3:// adapter, the kaggle: source, the pytorch-fid back-end). The subprocesses here run with a
``sitecustomize`` that makes importing any of them fail, as if they were not installed.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

BLOCKED = ("kfp", "minio", "kaggle", "pytorch_fid")  # kfp covers kfp.kubernetes, kfp.dsl, kfp.local, ...
SITECUSTOMIZE = f"""
import importlib.abc, sys

BLOCKED = {BLOCKED!r}


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""
# The modules that need one of them by design: the KFP component definitions (kfp.dsl decorators at import)
# and the minio SDK adapter behind s3:// (imported only when an s3:// URI is used).
NEEDS_BLOCKED = {"animegen.store.s3"}
NEEDS_BLOCKED_PREFIX = "animegen.components."
NEEDS_BLOCKED_SUFFIX = ".component"
SYN = "synthetic:?n=64&resolution=16&hair=blonde,blue&eyes=red,green"


def blocked_env(tmp_path: Path, blocked=BLOCKED) -> dict:
    """os.environ with a sitecustomize that makes importing ``blocked`` fail in every Python process started
    with it (children of children too), and the checkout's src/ on the path."""
    folder = tmp_path / "block-imports"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE.replace(repr(BLOCKED), repr(tuple(blocked))))
    path = [str(folder), str(ROOT / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), "ANIMEGEN_CACHE": str(tmp_path / "cache"),
            "TORCH_HOME": str(tmp_path / "torch_home")}


def run(code: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_the_blocker_blocks(tmp_path):
    env = blocked_env(tmp_path)
    for name in ("kfp", "kfp.kubernetes", "minio", "kaggle", "pytorch_fid"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (name, proc.stderr)


def test_every_module_imports_without_the_optional_packages(tmp_path):
    code = f"""
import importlib, json, pkgutil, sys
import animegen
failed = {{}}
for m in pkgutil.walk_packages(animegen.__path__, "animegen."):
    try:
        importlib.import_module(m.name)
    except ImportError as e:
        failed[m.name] = str(e)
import animegen.cli
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {BLOCKED!r})
print(json.dumps({{"failed": failed, "loaded": loaded}}))
"""
    out = json.loads(run(code, blocked_env(tmp_path)).stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    unexpected = {m: e for m, e in out["failed"].items()
                  if m not in NEEDS_BLOCKED and not (m.startswith(NEEDS_BLOCKED_PREFIX)
                                                     and m.endswith(NEEDS_BLOCKED_SUFFIX))}
    assert unexpected == {}, unexpected
    assert all("blocked by the test" in e for e in out["failed"].values()), out["failed"]


def test_train_sample_evaluate_without_the_optional_packages(tmp_path):
    """`animegen train`, `sample` and `evaluate` (FID with an explicit TorchScript Inception: seeded random weights,
    as on a lent GPU) run in one process where kfp, minio, kaggle and pytorch-fid cannot be imported."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import write_seeded_inception

    weights = write_seeded_inception(tmp_path / "inception")["torchscript"]
    run_dir, samples, evals = tmp_path / "run", tmp_path / "samples", tmp_path / "eval"
    train = ["train", "--data", SYN, "--out", str(run_dir), "--arch", "stylegan", "--conditional",
             "--resolution", "16", "--batch", "8", "--kimg", "0.024", "--snapshot-kimg", "0.024", "--z-dim", "16",
             "--w-dim", "16", "--mapping-layers", "2", "--channel-base", "128", "--channel-max", "32",
             "--no-progress", "--device", "cpu"]
    sample = ["sample", str(run_dir), "--out", str(samples), "--n", "2", "--device", "cpu"]
    evaluate = ["evaluate", str(run_dir), "--data", SYN, "--out", str(evals), "--n-fid", "4", "--k-per-class", "1",
                "--max-reference", "8", "--no-grids", "--inception-weights", weights, "--device", "cpu"]
    code = f"""
import sys
from animegen.cli import main
for argv in {[train, sample, evaluate]!r}:
    rc = main(argv)
    assert rc in (0, None), (argv[0], rc)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {BLOCKED!r})
assert loaded == [], loaded
print("ok")
"""
    proc = run(code, blocked_env(tmp_path))
    assert proc.stdout.strip().endswith("ok")
    assert (run_dir / "checkpoint.pt").is_file()
    assert len(list(samples.rglob("*.png"))) >= 2
    metrics = json.loads((evals / "metrics.json").read_text())
    assert math.isfinite(metrics["fid"]) and metrics["n_fid"] == 4
    assert metrics["extractor"]["backend"] == "torchscript" and metrics["extractor"]["source"] == "explicit"


def test_paper_tables_gpu_record_imports_without_the_optional_packages(tmp_path):
    """benchmarks/paper_tables.py --record runs on the lent GPU, which has none of kfp, minio, kaggle, pytorch-fid:
    the module and everything the record path uses import without them."""
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
import paper_tables
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {BLOCKED!r})
assert loaded == [], loaded
print("ok")
"""
    assert run(code, blocked_env(tmp_path)).stdout.strip().endswith("ok")
