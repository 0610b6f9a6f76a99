"""The pipeline run end to end with kfp.local on tiny settings: the whole DAG through `animegen pipeline run --local`,
a rerun of one stage reusing the other stages' artifacts (`--only evaluate --from-run`), the compiled YAML itself run
locally (the file users upload), and the cluster way to rerun a step (a compiled variant that imports a registry
run's artifacts) run locally.

Every FID here is computed from a handful of 16 px images: finite, consistent, meaningless. About 3-4 minutes on
2 CPU cores, most of it process start-up (each task is a subprocess) and Inception on the CPU.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from animegen.cli import main
from animegen.pipelines.local import RECORD, init_local
from animegen.pipelines.pipeline import COMPILED, MODELS, TASKS

pytestmark = pytest.mark.slow

TINY = {
    "main_source": "synthetic:?n=96&hair=blonde,black&eyes=red,blue",
    "manga_source": "synthetic:?n=40&seed=7&labels=none",
    "character_source": "synthetic:?n=20&seed=23&hair=blonde&eyes=blue&labels=none",
    "character_grow_to": 32, "resolution": 16, "holdout": 0.25,
    "kimg_conditional": 0.048, "kimg_manga": 0.024, "kimg_character": 0.024, "kimg_dcgan": 0.024,
    "kimg_dcgan_conditional": 0.024,
    "sg_batch": 8, "sg_z_dim": 16, "sg_w_dim": 16, "sg_mapping_layers": 2, "sg_channel_base": 128,
    "sg_channel_max": 32, "dcgan_batch": 8, "dcgan_z_dim": 16, "dcgan_channel_base": 128, "dcgan_channel_max": 64,
    "tagger_epochs": 2, "tagger_width": 8, "tagger_resolution": 16, "tagger_batch": 16,
    "n_fid": 8, "psi": 0.7, "k_per_class": 4, "max_reference": 24, "cross_fid_max_images": 24,
    "eval_options": {"grid_n": 2, "truncation_psis": [1.0, 0.0], "interp_steps": 2},
    "train_options": {"log_every": 2},
}
SHORT = {**TINY, "run_manga": False, "run_character": False, "run_dcgan": False}


@pytest.fixture(scope="module")
def full_run(stage_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    log = root / "cli.txt"
    import contextlib
    import io
    buf = io.StringIO()
    params = tmp_path_factory.mktemp("params") / "tiny.yaml"
    params.write_text(yaml.safe_dump({k: v for k, v in TINY.items() if k != "train_options"}))
    with contextlib.redirect_stdout(buf):
        assert main(["pipeline", "run", "--local", "--pipeline-root", str(root), "--params", str(params),
                     "--param", 'train_options={"log_every": 2}']) == 0
    log.write_text(buf.getvalue())
    (run_dir,) = [p for p in root.glob("animegen-*") if p.is_dir()]
    return root, run_dir, buf.getvalue()


def metrics_of(run_dir: Path, task: str) -> dict:
    return json.loads((run_dir / task / "metrics").read_text())


def test_whole_dag_artifacts_exist_and_agree(full_run):
    root, run_dir, out = full_run
    record = json.loads((run_dir / RECORD).read_text())
    assert record["status"] == "succeeded" and record["rerun"] == "all"
    # the CLI reads like a progress report: a line per task, a table of the models, the report's .html path
    lines = out.strip().splitlines()
    assert len(lines) <= 60, f"{len(lines)} lines printed:\n{out}"
    page = run_dir / "report" / "report_dir" / "report.html"
    assert lines[-1] == f"report: {page}" and page.read_text() == (run_dir / "report" / "report").read_text()
    ran = sorted(p.name for p in run_dir.iterdir() if (p / "executor_output.json").is_file())
    done = [re.fullmatch(r"\[ ?(\d+)/(\d+)\] (\S+) +ok +\d+\.\d s", line) for line in lines]
    done = [m for m in done if m]
    assert sorted(m[3] for m in done) == ran and [int(m[1]) for m in done] == list(range(1, len(ran) + 1))
    assert {int(m[2]) for m in done} == {len(ran)}, "the counter's total is the number of tasks that ran"
    assert all((run_dir / task / "log.txt").read_text().strip() for task in ran), "each task's log beside it"
    for name, spec in MODELS.items():  # the stage's own output is in its task's log
        assert f"{name}: FID " in (run_dir / spec.evaluate / "log.txt").read_text()
    table = lines[lines.index(next(ln for ln in lines if ln.startswith("model "))):-1]
    assert table[0].split() == ["model", "FID", "KID", "both", "✓", "train", "time"]
    assert {ln.split()[0] for ln in table[1:]} == set(MODELS)
    assert set(record["tasks"]) == set(TASKS)
    # datasets: complete (manifest last), the shapes the parameters asked for
    for task, output in (("ingest-main", "dataset"), ("label", "labelled"), ("ingest-manga", "dataset"),
                         ("ingest-character", "dataset")):
        d = run_dir / task / output
        manifest = json.loads((d / "manifest.json").read_text())
        images = np.load(d / "images.npy", mmap_mode="r")
        assert manifest["count"] == len(images) and manifest["resolution"] == 16 == images.shape[1]
        assert images.shape[3] == 3, f"{task}: every set is 3-channel (the manga set repeats its grey channel)"
        assert (run_dir / task / "summary").read_text().startswith("<!DOCTYPE html>")
    manga = json.loads((run_dir / "ingest-manga" / "dataset" / "manifest.json").read_text())
    assert manga["mode"] == "lineart" and manga["channels"] == 3
    character = json.loads((run_dir / "ingest-character" / "dataset" / "manifest.json").read_text())
    assert character["kept"] == 20 and character["grown"] > 0
    classes = json.loads((run_dir / "label" / "labelled" / "classes.json").read_text())["names"]
    assert classes == ["black hair blue eyes", "black hair red eyes", "blonde hair blue eyes", "blonde hair red eyes"]
    # models: checkpoints loadable with weights_only; transfers started from the conditional model's classes
    for name, spec in MODELS.items():
        model = run_dir / spec.model[0] / "model"
        state = torch.load(model / "checkpoint.pt", map_location="cpu", weights_only=True)
        cfg = json.loads((model / "config.json").read_text())
        assert state["images_seen"] > 0 and cfg["resolution"] == 16, name
    init = json.loads((run_dir / "transfer-manga" / "model" / "init_report.json").read_text())
    assert init["source"] == str(run_dir / "train-conditional" / "model")
    assert init["folded_class"] == "mean of 2 classes: black hair blue eyes, black hair red eyes", \
        "init class 'black hair' is the mean of every black-hair class"
    init = json.loads((run_dir / "transfer-character" / "model" / "init_report.json").read_text())
    assert init["folded_class"] == "mean of 2 classes: blonde hair blue eyes, blonde hair red eyes"
    # evaluations: a finite FID per model, named metrics, the inputs they were computed from
    for name, spec in MODELS.items():
        doc = metrics_of(run_dir, spec.evaluate)
        assert math.isfinite(doc["fid"]) and math.isfinite(doc["fid_psi"]) and doc["model"]["name"] == name
        assert doc["n_fid"] == 8 and doc["artifacts"]["model"] == str(run_dir / spec.model[0] / "model")
        assert doc["artifacts"]["dataset"] == str(run_dir / spec.dataset[0] / spec.dataset[1])
        assert (run_dir / spec.evaluate / "evaluation" / "report.html").is_file()
        assert (run_dir / spec.evaluate / "report").read_text() == (
            run_dir / spec.evaluate / "evaluation" / "report.html").read_text()
        executor = json.loads((run_dir / spec.evaluate / "executor_output.json").read_text())
        logged = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        assert logged[f"fid_{name}"] == pytest.approx(doc["fid"]) and f"kid_{name}" in logged
        conf = json.loads((run_dir / spec.evaluate / "hair_confusion").read_text())
        if name in ("conditional", "dcgan_conditional"):
            assert doc["both_accuracy"] is not None and f"acc_both_{name}" in logged
            assert conf["categories"] == ["black", "blonde"] and np.sum(conf["matrix"]) == 4 * 4
            cm = executor["artifacts"]["hair_confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
            assert cm["annotationSpecs"] == [{"displayName": "black"}, {"displayName": "blonde"}]
        else:
            assert doc["both_accuracy"] is None and "skipped" in conf
    cross = metrics_of(run_dir, "fid-manga-character")
    assert math.isfinite(cross["fid"]) and cross["a"]["n"] == 24 == cross["b"]["n"]
    # the report: every model, the papers' comparisons, one Metrics artifact with every scalar
    report = (run_dir / "report" / "report").read_text()
    for name in MODELS:
        assert f">{name}<" in report
    for heading in ("Transfer learning vs training from scratch", "DCGAN vs StyleGAN", "Cross-dataset FID"):
        assert heading in report
    assert "data:image/png;base64" in report  # the FID bar plot, embedded
    summary = json.loads((run_dir / "report" / "summary").read_text())
    assert {f"fid_{name}" for name in MODELS} | {"fid_manga_vs_character"} <= set(summary)
    assert "| manga_scratch |" in (run_dir / "report" / "table").read_text()


def test_registry_rows(full_run):
    from animegen.eval.compare import CompareConfig, run_compare
    from animegen.store.registry import list_runs, read_run

    root, run_dir, _ = full_run
    registry = root / "registry"
    assert list_runs(registry) == [run_dir.name]
    run = read_run(registry, run_dir.name)
    assert set(run["models"]) == set(MODELS) == set(run["metrics"])
    for name in MODELS:
        assert math.isfinite(run["models"][name]["summary"]["fid"])
        assert run["metrics"][name]["fid"] == metrics_of(run_dir, MODELS[name].evaluate)["fid"]
        assert run["models"][name]["artifacts"]["model"] == str(run_dir / MODELS[name].model[0] / "model")
    assert run["tasks"]["train-conditional"]["model"] == str(run_dir / "train-conditional" / "model")
    assert run["params"]["models"]["manga"]["train"]["init_class"] == "black hair"
    out = run_compare(CompareConfig(), [str(registry)], root / "compare")  # `animegen compare` reads the registry
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert {r["model"] for r in rows} == set(MODELS) and {r["run"] for r in rows} == {run_dir.name}


def test_rerun_evaluate_reuses_the_other_stages(full_run, capsys):
    root, first, _ = full_run
    capsys.readouterr()
    assert main(["pipeline", "run", "--local", "--pipeline-root", str(root), "--only", "evaluate", "--from-run",
                 first.name, "--param", "n_fid=10"]) == 0
    out = capsys.readouterr().out
    (second,) = [p for p in root.glob("animegen-*") if p.is_dir() and p != first]
    record = json.loads((second / RECORD).read_text())
    assert record["from_run"] == first.name and record["params"]["n_fid"] == 10
    assert set(record["rerun"]) == {t for t, spec in TASKS.items() if spec.stage in ("evaluate", "report")}
    assert set(record["reused"]) == {"label", "tagger", "train-conditional", "transfer-manga", "train-manga-scratch",
                                     "ingest-manga", "transfer-character", "train-character-scratch",
                                     "ingest-character", "train-dcgan", "train-dcgan-conditional"}
    ran = {p.name for p in second.iterdir() if p.is_dir() and (p / "executor_output.json").is_file()}
    assert ran == set(record["rerun"]), "only the evaluations and the report ran again"
    assert out.strip().splitlines()[-1] == f"report: {second / 'report' / 'report_dir' / 'report.html'}"
    assert len(out.strip().splitlines()) <= 30
    assert not (second / "train-conditional").exists(), "reused tasks print no line and write no log"
    for name, spec in MODELS.items():
        doc = metrics_of(second, spec.evaluate)
        assert doc["n_fid"] == 10 and math.isfinite(doc["fid"])
        assert doc["artifacts"]["model"] == str(first / spec.model[0] / "model"), "the first run's model"
        assert doc["model"]["checkpoint_sha256"] == metrics_of(first, spec.evaluate)["model"]["checkpoint_sha256"]
    # the rerun's record points at the first run's artifacts for what it reused: it can be rerun from in turn
    assert record["tasks"]["train-conditional"]["model"] == str(first / "train-conditional" / "model")
    assert record["tasks"]["evaluate-manga"]["metrics"] == str(second / "evaluate-manga" / "metrics")


def test_rerun_refuses_what_it_cannot_reuse(full_run, tmp_path, capsys):
    root, first, _ = full_run
    assert main(["pipeline", "run", "--local", "--pipeline-root", str(root), "--only", "evaluate"]) == 2
    assert "--from-run" in capsys.readouterr().err
    assert main(["pipeline", "run", "--local", "--pipeline-root", str(root), "--only", "nothing", "--from-run",
                 first.name]) == 2
    assert "not a stage" in capsys.readouterr().err
    assert main(["pipeline", "run", "--local", "--pipeline-root", str(root), "--only", "report", "--from-run",
                 "animegen-1999"]) == 2
    assert "no animegen_run.json" in capsys.readouterr().err
    assert main(["pipeline", "run", "--pipeline-root", str(root)]) == 2
    assert "--local" in capsys.readouterr().err


def test_compiled_yaml_runs_locally(stage_env, tmp_path):
    """The exact file users upload, run with kfp.local: the short variant (optional branches off)."""
    from kfp import components

    init_local(tmp_path)
    pipeline = components.load_component_from_file(str(COMPILED))
    task = pipeline(**{**SHORT, "registry_uri": str(tmp_path / "registry")})
    report = Path(task.outputs["Output"].path)
    (run_dir,) = [p for p in tmp_path.glob("animegen-*") if p.is_dir()]
    ran = {p.name for p in run_dir.iterdir() if (p / "executor_output.json").is_file()}
    assert ran == {"ingest-main", "label", "tagger", "train-conditional", "evaluate-conditional", "plan",
                   "skip-manga", "skip-manga-scratch", "skip-character", "skip-character-scratch", "skip-dcgan",
                   "skip-cross-fid", "report"}
    text = report.read_text()
    assert ">conditional<" in text and "Skipped" in text and "run_dcgan is false" in text
    assert math.isfinite(metrics_of(run_dir, "evaluate-conditional")["fid"])
    record = json.loads((run_dir / "report" / "report_dir" / "run.json").read_text())
    assert set(record["models"]) == {"conditional"} and set(record["skipped"]) == {
        "manga", "manga_scratch", "character", "character_scratch", "dcgan", "dcgan_conditional", "cross_fid"}


def test_cluster_rerun_variant_imports_registry_artifacts(full_run, tmp_path):
    """`pipeline compile --only report --from-run RUN --registry URI`: a YAML whose upstream artifacts are
    dsl.importer nodes of the registry run's URIs (here local paths), run locally."""
    from kfp import components

    root, first, _ = full_run
    out = tmp_path / "rerun.yaml"
    params = [f"{k}={json.dumps(v) if isinstance(v, dict) else v}" for k, v in TINY.items()]
    assert main(["pipeline", "compile", "--out", str(out), "--only", "report", "--from-run", first.name,
                 "--registry", str(root / "registry")] + [a for p in params for a in ("--param", p)]) == 0
    spec = next(yaml.safe_load_all(out.read_text()))
    importers = [c for c in spec["deploymentSpec"]["executors"].values() if "importer" in c]
    assert len(importers) == 8  # the 7 evaluations' and the cross FID's Metrics
    assert all(i["importer"]["artifactUri"]["constant"].startswith(str(first)) for i in importers)
    init_local(tmp_path / "root")
    task = components.load_component_from_file(str(out))(registry_uri="")
    report = Path(task.outputs["Output"].path)
    text = report.read_text()
    for name in MODELS:
        assert f">{name}<" in text
    assert "fid_manga_vs_character" in (report.parent / "summary").read_text()
    executor = json.loads((report.parent / "executor_output.json").read_text())
    assert executor["artifacts"]["report_dir"]["artifacts"][0]["metadata"]["registry"].startswith("skipped")


def test_a_failed_run_is_recorded_and_says_how_to_go_on(stage_env, tmp_path, capsys):
    assert main(["pipeline", "run", "--local", "--pipeline-root", str(tmp_path), "--param",
                 "main_source=synthetic:?colour=red"]) == 2
    captured = capsys.readouterr()
    err, out = captured.err, captured.out
    (run_dir,) = [p for p in tmp_path.glob("animegen-*") if p.is_dir()]
    assert "ingest-main" in err and f"--from-run {run_dir.name}" in err
    # the failing task's line, its last log lines (with the stage's error) and the path of its full log
    assert re.search(r"\[ ?\d+/\d+\] ingest-main +FAILED", out)
    log = run_dir / "ingest-main" / "log.txt"
    assert f"full log: {log}" in out and "colour" in log.read_text()
    assert "colour" in out.split("full log:")[0], "the error is among the lines printed"
    assert len(out.splitlines()) <= 30
    record = json.loads((run_dir / RECORD).read_text())
    assert record["status"] == "failed" and record["tasks"] == {} and record["report"] is None


def test_task_reporter_prints_a_line_per_task_and_keeps_its_log_beside_it(tmp_path):
    """What `pipeline run --local` does with each kfp.local task subprocess (without running a pipeline)."""
    import io
    import sys

    from kfp.local import subprocess_task_handler as handler

    from animegen.pipelines.local import TaskReporter

    def command(task: str, code: int) -> list[str]:
        executor = json.dumps({"outputs": {"outputFile": str(tmp_path / "run" / task / "executor_output.json")}})
        script = (f"import os, sys; print('hello from {task}', os.environ.get('STAGE_VAR')); "
                  f"print('boom', file=sys.stderr); sys.exit({code})")
        return [sys.executable, "-c", script, "--executor_input", executor]

    out = io.StringIO()
    original = handler.run_local_subprocess
    with TaskReporter(out, total=2).installed():
        print("kfp's own chatter")
        assert handler.run_local_subprocess(full_command=command("a", 0), env_vars={"STAGE_VAR": "x"}) == 0
        assert handler.run_local_subprocess(full_command=command("b", 3)) == 3
    assert handler.run_local_subprocess is original
    text = out.getvalue()
    lines = text.splitlines()
    assert re.fullmatch(r"\[1/2\] a +ok +\d+\.\d s", lines[0]) and re.fullmatch(r"\[2/2\] b +FAILED +\d+\.\d s",
                                                                                 lines[1])
    log = tmp_path / "run" / "b" / "log.txt"
    assert lines[-1] == f"--- full log: {log}" and "hello from b None" in text and "boom" in text
    assert sorted((tmp_path / "run" / "a" / "log.txt").read_text().splitlines()) == ["boom", "hello from a x"]
    assert "chatter" not in text and len(lines) == 6  # 2 task lines, the failure's header, 2 log lines, its path
