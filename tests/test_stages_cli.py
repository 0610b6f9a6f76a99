"""The ingest -> label -> train chain through the CLI, and the shared MLDS set's acceptance figures."""
import csv
import io
import json
import zipfile
from collections import Counter

import numpy as np
import pytest
from helpers import ROOT

from animegen.cli import main
from animegen.data import open_dataset

MLDS = ROOT.parent / "shared" / "datasets" / "mlds-anime-faces-64.zip"


def test_ingest_label_train_chain_on_synthetic(tmp_path):
    ds, lab, model = tmp_path / "ds", tmp_path / "lab", tmp_path / "model"
    src = "synthetic:?n=96&hair=blonde,black&eyes=red,blue"
    assert main(["ingest", src, "--out", str(ds), "--resolution", "16", "--holdout", "0.25", "--split-block",
                 "8", "--no-progress"]) == 0
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["count"] == 96 and manifest["resolution"] == 16
    assert main(["label", str(ds), "--out", str(lab), "--tags", "index", "--grid-k", "2"]) == 0
    labelled = open_dataset(str(lab))
    assert labelled.class_names == ["black hair blue eyes", "black hair red eyes", "blonde hair blue eyes",
                                    "blonde hair red eyes"]
    assert len(labelled) == 96 and (lab / "verification_grid.png").exists()
    assert main(["train", "--data", str(lab), "--out", str(model), "--conditional", "--resolution", "16",
                 "--kimg", "0.032", "--batch", "8", "--z-dim", "8", "--channel-base", "64", "--no-progress"]) == 0
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["conditional"] and cfg["resolution"] == 16 and "data" not in cfg  # the options; the inputs beside
    assert json.loads((model / "inputs.json").read_text()) == {"data": str(lab), "init_model": None}


def test_cli_config_file_and_list_flags(tmp_path):
    ds = tmp_path / "ds"
    (tmp_path / "ingest.yaml").write_text("resolution: 16\nholdout: 0.5\nsplit_block: 4\nmode: grayscale\n")
    assert main(["ingest", "synthetic:?n=16", "--out", str(ds), "--config", str(tmp_path / "ingest.yaml"),
                 "--mode", "lineart", "--no-progress"]) == 0
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["mode"] == "lineart" and manifest["channels"] == 1 and manifest["resolution"] == 16
    lab = tmp_path / "lab"
    assert main(["label", str(ds), "--out", str(lab), "--tags", "index", "--mode", "multi_hot",
                 "--hair", "blonde_hair", "black_hair", "--eyes", "red_eyes"]) == 0
    classes = json.loads((lab / "classes.json").read_text())
    assert set(classes["names"]) <= {"blonde hair", "black hair", "red eyes"}


@pytest.mark.skipif(not MLDS.is_file(), reason=f"{MLDS} not present")
def test_mlds_ingests_with_its_tags(tmp_path):
    ds, lab = tmp_path / "ds", tmp_path / "lab"
    assert main(["ingest", str(MLDS), "--out", str(ds), "--no-progress"]) == 0
    manifest = json.loads((ds / "manifest.json").read_text())
    assert manifest["count"] == 36_740 - 1_248  # the byte-identical duplicates are dropped and counted
    assert main(["label", str(ds), "--out", str(lab)]) == 0  # tags.csv found in the archive
    report = json.loads((lab / "label_report.json").read_text())
    text = json.dumps(report)
    for stem in ("36736", "36737", "36738", "36739"):  # the 4 unlabelled images are reported
        assert stem in text
    # class counts equal what tags.csv says for the images kept
    with zipfile.ZipFile(MLDS) as z:
        rows = list(csv.reader(io.TextIOWrapper(z.open("mlds-anime-faces-64/tags.csv"))))
    tag_of = {r[0]: r[1] for r in rows}
    kept = [json.loads(line) for line in (ds / "index.jsonl").read_text().splitlines()]
    expected = Counter(tag_of[r["stem"]].strip() for r in kept if r["stem"] in tag_of)
    classes = json.loads((lab / "classes.json").read_text())
    got = dict(zip(classes["names"], classes["counts"]))
    assert {k: v for k, v in got.items() if v} == dict(expected)
    labels = np.load(lab / "labels.npy")
    assert len(labels) == sum(expected.values()) == 35_492 - 4


def test_tagger_train_predict_label_and_cluster_commands(tmp_path, capsys):
    data = "synthetic:?n=160&resolution=32&hair=blonde,blue&eyes=red,green"
    tagger = tmp_path / "tagger"
    assert main(["tagger", "train", "--data", data, "--out", str(tagger), "--epochs", "4", "--batch", "32",
                 "--width", "8", "--resolution", "32", "--block", "8", "--device", "cpu"]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    ds = tmp_path / "ds"
    assert main(["ingest", data, "--out", str(ds), "--resolution", "32", "--no-progress"]) == 0
    pred = tmp_path / "pred"
    assert main(["tagger", "predict", str(tagger), "--data", str(ds), "--out", str(pred), "--device", "cpu"]) == 0
    table = pred / "colour_probs.csv"
    header = table.read_text().splitlines()[0].split(",")
    assert "blonde_hair" in header and "green_eyes" in header
    lab = tmp_path / "lab"
    assert main(["label", str(ds), "--out", str(lab), "--tags", f"table:{table}", "--join", header[0],
                 "--threshold", "0.5", "--mode", "hair", "--hair", "blonde_hair", "blue_hair"]) == 0
    assert json.loads((lab / "classes.json").read_text())["names"] == ["blonde hair", "blue hair"]
    clusters = tmp_path / "clusters"
    assert main(["cluster", "--data", str(ds), "--out", str(clusters), "--tagger", str(tagger), "--k-min", "2",
                 "--k-max", "3", "--device", "cpu"]) == 0
    assert (clusters / "clusters.json").exists() and (clusters / "manifest.json").exists()


def test_evaluate_compare_and_fid_commands(tmp_path, capsys):
    model, ds = tmp_path / "model", tmp_path / "ds"
    data = "synthetic:?n=64&resolution=16&hair=blonde,black&eyes=red"
    assert main(["ingest", data, "--out", str(ds), "--resolution", "16", "--split-block", "8",
                 "--no-progress"]) == 0
    assert main(["train", "--data", data, "--out", str(model), "--resolution", "16", "--kimg", "0.032",
                 "--batch", "8", "--z-dim", "8", "--channel-base", "64", "--no-progress"]) == 0
    evals = []
    for seed in (0, 1):
        ev = tmp_path / f"eval{seed}"
        assert main(["evaluate", str(model), "--data", str(ds), "--out", str(ev), "--n-fid", "12",
                     "--max-reference", "12", "--grid-n", "2", "--interp-steps", "2", "--seed", str(seed),
                     "--device", "cpu", "--no-progress"]) == 0
        metrics = json.loads((ev / "metrics.json").read_text())
        assert np.isfinite(metrics["fid"]) and "report:" in capsys.readouterr().out
        evals.append(str(ev))
    assert main(["compare", *evals, "--out", str(tmp_path / "cmp")]) == 0
    assert "fid" in capsys.readouterr().out.lower()
    assert len((tmp_path / "cmp" / "compare.csv").read_text().strip().splitlines()) == 3  # header + 2 runs
    assert main(["fid", str(ds), "synthetic:?n=12&resolution=16", "--out", str(tmp_path / "fid"),
                 "--max-images", "12", "--device", "cpu", "--no-progress"]) == 0
    assert "fid" in json.loads((tmp_path / "fid" / "fid.json").read_text())
