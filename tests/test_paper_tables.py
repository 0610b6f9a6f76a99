"""benchmarks/paper_tables.py --quick: the four tables of issue 12 at toy budgets on the shared MLDS faces, through
the project's own stages (~3 min on 2 cores). Skips when ../shared's MLDS zip is absent."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SYN, tiny_config

ROOT = Path(__file__).resolve().parents[1]
MLDS = ROOT.parent / "shared" / "datasets" / "mlds-anime-faces-64.zip"
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_gpu_scale_split_scores_what_evaluate_scores(tmp_path):
    """--scale gpu records samples on the lent GPU (no Inception there), packs them into the files the device tool
    returns and scores them here: the FIDs, KIDs, interval and curve must be evaluate's own for the same model."""
    import dataclasses

    import paper_tables as pt

    from animegen.train import run_train

    model = tmp_path / "model"
    run_train(tiny_config("stylegan", conditional=True, kimg=0.16, snapshot_kimg=0.08), SYN, model)
    S = dataclasses.replace(pt.SCALES["quick"], grid_n=2, k_per_class=4, bootstrap=4)
    direct = pt.evaluate(S, model, SYN, tmp_path / "eval", n_fid=40, n_curve=24, tagger=None)
    dev = tmp_path / "device"
    rec = pt.record_model(S, model, SYN, dev / "evals" / "m", n_fid=40, n_curve=24, tagger=None)
    assert rec["sets"] == {"final": 40, "kimg-0000000.0": 24, "kimg-0000000.1": 24, "kimg-0000000.2": 24}
    (dev / "device.json").write_text(json.dumps({"run_id": "r1", "models": {"m": rec}}))
    pt.PACK_CHUNK_BYTES = 20_000  # several chunks, several parts
    pt.PACK_CHUNKS_PER_PART = 2
    pt.pack(dev, tmp_path / "part1", 1)
    parts = json.loads((tmp_path / "part1" / "device.json").read_text())["parts"]
    assert parts >= 2  # how many depends on how well the samples compress
    fetched = [tmp_path / "part1"]
    for part in range(2, parts + 1):
        pt.pack(dev, tmp_path / f"part{part}", part)
        fetched.append(tmp_path / f"part{part}")
    here = tmp_path / "here"
    with pytest.raises(SystemExit, match=f"parts \\[1\\] of {parts}"):
        pt.unpack(fetched[:1], here)
    pt.unpack(fetched, here)
    for key in rec["sets"]:  # lossless: the images scored here are the ones drawn there
        assert np.array_equal(np.load(here / "evals" / "m" / f"samples-{key}.npy"),
                              np.load(dev / "evals" / "m" / f"samples-{key}.npy"))
    assert (here / "evals" / "m" / "mixing" / "mix_coarse.png").is_file()
    scored = pt.score_model(S, rec, here / "evals" / "m", SYN)
    for key in ("fid", "kid"):
        assert scored[key] == pytest.approx(direct[key], rel=1e-6, abs=1e-9)
    assert scored["fid_interval"] == pytest.approx(direct["fid_interval"], rel=1e-6)
    assert [(p["kimg"], p["n"]) for p in scored["fid_over_kimg"]] == [(p["kimg"], p["n"])
                                                                       for p in direct["fid_over_kimg"]]
    assert [p["fid"] for p in scored["fid_over_kimg"]] == pytest.approx([p["fid"] for p in direct["fid_over_kimg"]],
                                                                        rel=1e-6)
    # the last curve point reuses the final samples only when whole batches make it: then they are the same images
    from animegen.train.checkpoint import load_generator

    G, _ = load_generator(model / "checkpoint.pt", "cpu")
    b = pt.sample_batch(torch.device("cpu"))
    assert np.array_equal(pt.generated_uint8(G, b, torch.device("cpu")),
                          pt.generated_uint8(G, 2 * b + 3, torch.device("cpu"))[:b])
    # parts of two different device runs (a machine gone cold between calls) are refused
    doc = json.loads((fetched[1] / "device.json").read_text()) | {"run_id": "r2"}
    (fetched[1] / "device.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match="different device runs"):
        pt.unpack(fetched, tmp_path / "again")


def test_spread_decides_a_comparison_only_beyond_its_seeds_or_intervals():
    import paper_tables as pt

    def m(fid, lo=None, hi=None):
        return {"fid": fid, "fid_interval": [lo or fid - 1, hi or fid + 1]}

    models = {"dcgan": m(200), "dcgan-seed1": m(210), "dcgan_tutorial": m(190), "dcgan_tutorial-seed1": m(205),
              "stylegan": m(150), "mono_transfer": m(100), "mono_transfer-seed1": m(101), "mono_scratch": m(120),
              "mono_scratch-seed1": m(125), "character_transfer": m(100, 90, 110), "character_scratch": m(105, 95, 115)}
    for k in ("mono_transfer", "mono_transfer-seed1", "mono_scratch", "mono_scratch-seed1", "character_transfer",
              "character_scratch"):  # curves for the speed-up: scratch reaches its final FID at 2 kimg
        models[k] |= {"fid_over_kimg": [{"kimg": 0.0, "fid": 300.0}, {"kimg": 2.0, "fid": models[k]["fid"]}],
                      "train": {"img_per_s": 10.0}}
    rows = {r["comparison"]: r for r in pt.spread(models)}
    ours = rows["ours vs the tutorial DCGAN"]
    assert ours["fid_a"] == [200, 210] and ours["fid_b"] == [190, 205] and ours["mean_b"] == 197.5
    assert ours["verdict"] == "dcgan_tutorial lower, inside the seed spread" and not ours["decided"]
    assert rows["StyleGAN vs DCGAN"]["verdict"] == "stylegan lower, beyond the bootstrap intervals"
    mono = rows["monochrome: transfer vs scratch"]
    assert mono["verdict"] == "mono_transfer lower, beyond the seed spread" and mono["decided"]
    assert len(mono["speedup_kimg"]) == 2 and all(x > 1 for x in mono["speedup_kimg"])
    assert rows["single character: transfer vs scratch"]["verdict"] == \
        "character_transfer lower, inside the bootstrap intervals"


def test_cpu_scale_trains_stylegan_in_bf16_only_where_the_cpu_computes_bf16_natively(monkeypatch):
    import paper_tables as pt

    def cpu(*flags):
        monkeypatch.setattr(pt, "environment", lambda device: {"cpu": {"flags": ["avx2", "avx512f", *flags]}})

    cpu("avx512_bf16", "amx_bf16", "amx_tile")
    S = pt.on_this_machine(pt.SCALES["cpu"])
    assert S.stylegan["amp"] == "on" and S.stylegan["batch"] == pt.SCALES["cpu"].stylegan["batch"]
    assert "amp" not in S.dcgan  # DCGAN keeps float32
    cpu("avx512_bf16")
    assert pt.on_this_machine(pt.SCALES["cpu"]).stylegan["amp"] == "on"
    cpu()  # bf16 emulated: slower than float32
    assert pt.on_this_machine(pt.SCALES["cpu"]).stylegan["amp"] == "off"
    for scale in ("quick", "gpu"):  # the quick scale stays float32; CUDA's autocast is amp auto's own choice
        assert pt.on_this_machine(pt.SCALES[scale]) == pt.SCALES[scale]
    assert "amp" not in pt.SCALES["cpu"].stylegan  # the table itself names no precision: the machine decides


@pytest.mark.skipif(not MLDS.exists(), reason=f"{MLDS} is absent (the shared MLDS faces)")
def test_quick_paper_tables_write_the_four_tables_and_a_report(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "paper_tables.py"), "--quick", "--work", str(work),
           "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for title in ("Seed 1: DCGAN vs StyleGAN", "Seed 2, Table II", "Seed 2, Table III", "Cross-dataset FID"):
        assert title in run.stdout
    doc = json.loads(next(out.glob("paper_tables-quick-*.json")).read_text())
    # seed 1: every model with a finite FID inside its bootstrap interval, the floor beside it, a curve from 0 kimg
    assert [r["model"] for r in doc["seed1"]] == ["dcgan", "dcgan_tutorial", "dcgan_conditional", "stylegan",
                                                  "stylegan_conditional"]
    for r in doc["seed1"]:
        lo, hi = r["fid_interval"]
        assert lo <= r["fid"] <= hi and r["floor"] < r["fid"] and r["img_per_s"] > 0
        assert doc["models"][r["model"]]["fid_over_kimg"][0]["kimg"] == 0.0
    # the parts of MLDS are disjoint blocks, the single-character run is 55 consecutive ids grown to 112
    data = doc["data"]
    assert data["counts"]["ref"] == 192 and data["counts"]["character"] == 112 and len(data["character_ids"]) == 55
    # Table II: per-class rows with class sizes, and the baselines
    s = doc["table2_summary"]
    assert doc["table2"] and all(r["size"] >= 16 and r["n"] == 8 for r in doc["table2"])
    hair_colours = {name.split()[0] for name in data["class_names"]}  # the colours the tagger learned
    assert s["chance"]["hair"] == pytest.approx(1 / len(hair_colours)) and s["chance"]["hair"] <= s["prior"]["hair"] < 1
    assert s["tagger_heldout"]["hair_accuracy"] is not None and len(s["accuracy_over_kimg"]) == 3
    # Table III and the cross-dataset FID
    assert [r["target"] for r in doc["table3"]] == ["mono", "character"]
    assert all(math.isfinite(r["transfer_fid"]) and math.isfinite(r["scratch_fid"]) for r in doc["table3"])
    assert math.isfinite(doc["cross_fid"]["mono_vs_character"])
    # the decisive comparisons over two training seeds (a second DCGAN, tutorial DCGAN and four transfer runs)
    sp = {r["comparison"]: r for r in doc["spread"]}
    assert [len(r["fid_a"]) for r in doc["spread"]] == [2, 1, 2, 2] and all(len(r["fid_b"]) == 2 for r in sp.values())
    assert sp["ours vs the tutorial DCGAN"]["fid_a"][1] == doc["models"]["dcgan-seed1"]["fid"]
    assert len(set(sp["ours vs the tutorial DCGAN"]["fid_a"])) == 2  # another seed, another model
    assert len(sp["monochrome: transfer vs scratch"]["speedup_kimg"]) == 2 and "decisive comparisons" in run.stdout
    report = (work / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 6 and "Table III" in report
    assert (out / "paper_tables-quick" / "accuracy_vs_class_size.png").is_file()
    # issue 13's section: StyleGAN2 beside the same run's StyleGAN, the character transfer with and without ADA
    run = subprocess.run(cmd + ["--section", "stylegan2"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "StyleGAN2 vs StyleGAN" in run.stdout and "ADA vs no augmentation" in run.stdout
    sec = json.loads(next(out.glob("paper_tables-stylegan2-quick-*.json")).read_text())
    assert [r["model"] for r in sec["seed1"]] == ["stylegan", "stylegan2", "stylegan_conditional",
                                                  "stylegan2_conditional"]
    assert sec["seed1"][0]["fid"] == doc["seed1"][3]["fid"]  # v1 is the main run's own model, not retrained
    u = sec["unconditional_over_seeds"]  # and a second seed of the unconditional pair, for the spread
    assert len(u["stylegan"]) == len(u["stylegan2"]) == 2 and u["stylegan"][0] == sec["seed1"][0]["fid"]
    assert "seed spread" in u["verdict"] and "unconditional over seeds" in run.stdout
    ada, none = sec["character_transfer"]
    assert ada["augment"] == "ada" and none["augment"] == "none"
    assert all(r["p"] is None for r in none["rt"]) and any(r["p"] is not None for r in ada["rt"])
    assert all(-1 <= r["rt"] <= 1 for r in none["rt"]) and math.isfinite(ada["fid"])
