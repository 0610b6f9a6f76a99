"""benchmarks/paper_tables.py --quick: the four tables of issue 12 at toy budgets on the shared MLDS faces, through
the project's own stages (~3 min on 2 cores). Skips when ../shared's MLDS zip is absent."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MLDS = ROOT.parent / "shared" / "datasets" / "mlds-anime-faces-64.zip"


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
    report = (work / "report.html").read_text()
    assert report.count("data:image/png;base64") >= 6 and "Table III" in report
    assert (out / "paper_tables-quick" / "accuracy_vs_class_size.png").is_file()
