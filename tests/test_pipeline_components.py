"""The pipeline's pieces without a pipeline run: components called through ``component.python_func`` with artifact
objects on temporary folders, the report step on hand-made evaluations, the DAG table, parameter handling, and
`animegen pipeline submit` against a local HTTP server that records what kfp.Client sends."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import yaml
from kfp import dsl

from animegen.cli import main
from animegen.components import runtime as rt
from animegen.eval.report import ReportConfig, run_id_for, run_report
from animegen.pipelines.pipeline import (
    MODELS,
    PARAMETERS,
    TASKS,
    branches,
    check_params,
    downstream,
    make_pipeline,
    parse_toleration,
    select,
)


def artifact(cls, path: Path):
    return cls(uri=str(path))


# ------------------------------------------------------------------------------------------------ components
def test_ingest_component_lineart_with_three_channels(tmp_path):
    from animegen.components.ingest.component import ingest

    ds, summary = artifact(dsl.Dataset, tmp_path / "ds"), artifact(dsl.HTML, tmp_path / "summary.html")
    ingest.python_func(source="synthetic:?n=24&seed=3&labels=none", dataset=ds, summary=summary, resolution=16,
                       mode="lineart", channels=3, sha256="", holdout=0.25, grow_to=0, limit=0, seed=0,
                       s3_endpoint="", options={"split_block": 4.0})  # a KFP dict: numbers arrive as floats
    images = np.load(tmp_path / "ds" / "images.npy")
    assert images.shape == (24, 16, 16, 3) and (images[..., 0] == images[..., 2]).all()
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["channels"] == 3 and manifest["mode"] == "lineart" and manifest["split"]["block"] == 4
    assert ds.metadata["count"] == 24 and ds.metadata["source"] == "synthetic:?n=24&seed=3&labels=none"
    assert "data:image/png;base64" in Path(summary.path).read_text()
    with pytest.raises(ValueError, match="'source' .* is no longer an ingest option"):  # the parameter, not options
        ingest.python_func(source="synthetic:?n=4", dataset=ds, summary=summary, resolution=16, mode="rgb",
                           channels=0, sha256="", holdout=0.25, grow_to=0, limit=0, seed=0, s3_endpoint="",
                           options={"source": "synthetic:?n=8"})


def test_ingest_channels_option_is_validated():
    from animegen.data.ingest import IngestConfig

    with pytest.raises(ValueError, match="channels=2"):
        IngestConfig(channels=2)
    with pytest.raises(ValueError, match="use mode grayscale"):
        IngestConfig(channels=1)
    assert IngestConfig.from_dict(IngestConfig(mode="grayscale", channels=3).to_dict()).channels == 3


def test_label_train_and_transfer_components(tmp_path):
    from animegen.components.label.component import label
    from animegen.components.train.component import train
    from animegen.components.transfer.component import transfer
    from animegen.data.ingest import IngestConfig, run_ingest

    run_ingest(IngestConfig(resolution=16, holdout=0.25, split_block=4),
               "synthetic:?n=48&hair=blonde,black&eyes=red,blue", tmp_path / "ds")
    labelled = artifact(dsl.Dataset, tmp_path / "lab")
    label.python_func(dataset=artifact(dsl.Dataset, tmp_path / "ds"), labelled=labelled,
                      summary=artifact(dsl.HTML, tmp_path / "lab.html"), tags="auto", mode="pair", threshold=0.7,
                      min_per_class=1, hair="", eyes="", options={"grid_k": 2.0, "rules": {"min_per_class": 1.0}})
    assert labelled.metadata["num_classes"] == 4 and "verification grid" in (tmp_path / "lab.html").read_text()
    assert sorted(labelled.metadata["classes"]) == ["black hair blue eyes", "black hair red eyes",
                                                    "blonde hair blue eyes", "blonde hair red eyes"]
    tiny = dict(resolution=16, batch=8, z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=32,
                cond_mode="concat", r1_gamma=-1.0, snapshot_kimg=0.0, seed=0, device="cpu")
    source = artifact(dsl.Model, tmp_path / "source")
    train.python_func(dataset=labelled, model=source, summary=artifact(dsl.HTML, tmp_path / "train.html"),
                      arch="stylegan", conditional=True, kimg=0.016, options={"log_every": 1.0}, **tiny)
    cfg = json.loads((tmp_path / "source" / "config.json").read_text())
    assert cfg["conditional"] and cfg["batch"] == 8 and cfg["r1_gamma"] == 10.0 and cfg["log_every"] == 1
    assert source.metadata["kimg"] == 0.016 and "samples" in (tmp_path / "train.html").read_text()
    # transfer: the source's architecture is taken from its config; "black hair" is the mean of two classes
    run_ingest(IngestConfig(resolution=16, mode="grayscale", channels=3, holdout=0.25, split_block=4),
               "synthetic:?n=16&seed=5&labels=none", tmp_path / "mono")
    target = artifact(dsl.Model, tmp_path / "target")
    transfer.python_func(init_model=source, dataset=artifact(dsl.Dataset, tmp_path / "mono"), model=target,
                         summary=artifact(dsl.HTML, tmp_path / "transfer.html"), init_class="black hair",
                         class_map={}, freeze_d=1, conditional=False, kimg=0.008, batch=8, r1_gamma=-1.0,
                         snapshot_kimg=0.0, seed=0, device="cpu", options={})
    report = json.loads((tmp_path / "target" / "init_report.json").read_text())
    assert report["folded_class"] == "mean of 2 classes: black hair blue eyes, black hair red eyes"
    assert report["G_loaded"] > 0
    tcfg = json.loads((tmp_path / "target" / "config.json").read_text())
    assert tcfg["z_dim"] == 16 and tcfg["channel_max"] == 32 and tcfg["freeze_d"] == 1 and not tcfg["conditional"]
    # a retried attempt continues the checkpoint the previous one left (exact resume), instead of failing
    transfer.python_func(init_model=source, dataset=artifact(dsl.Dataset, tmp_path / "mono"), model=target,
                         summary=artifact(dsl.HTML, tmp_path / "transfer.html"), init_class="black hair",
                         class_map={}, freeze_d=1, conditional=False, kimg=0.016, batch=8, r1_gamma=-1.0,
                         snapshot_kimg=0.0, seed=0, device="cpu", options={})
    assert json.loads((tmp_path / "target" / "summary.json").read_text())["kimg"] == 0.016


def test_control_components(tmp_path):
    from animegen.components.control.component import plan, skip

    out = plan.python_func(run_manga=True, run_character=False, run_baselines=True, run_dcgan=True)
    assert out._asdict() == {"manga": True, "manga_scratch": True, "character": False, "character_scratch": False,
                             "cross_fid": False, "dcgan": True}
    metrics = artifact(dsl.Metrics, tmp_path / "m")
    skip.python_func(branch="dcgan", reason="run_dcgan is false", dataset=artifact(dsl.Dataset, tmp_path / "d"),
                     metrics=metrics)
    assert json.loads((tmp_path / "m").read_text()) == {"skipped": "run_dcgan is false", "branch": "dcgan"}
    assert json.loads((tmp_path / "d" / "SKIPPED.json").read_text()) == {"skipped": "run_dcgan is false",
                                                                         "branch": "dcgan"}
    assert branches(False, True, True, False)["character_scratch"] and not branches(False, True, False, True)[
        "character_scratch"]


def test_runtime_helpers():
    # a parameter's "unset" value (the schema's: 0, '' or < 0; KFP parameters cannot be None) means the default
    from animegen.data.ingest import IngestConfig
    from animegen.eval.evaluate import FidConfig

    ing = rt.build_config(IngestConfig, {}, {"channels": 0, "sha256": "", "grow_to": 0, "limit": 0, "seed": 0})
    assert (ing.channels, ing.sha256, ing.grow_to, ing.limit, ing.seed) == (None, None, None, None, 0)
    assert rt.build_config(FidConfig, {}, {"max_images": 0}).max_images is None
    assert rt.build_config(FidConfig, {}, {"max_images": 5}).max_images == 5
    assert rt.csv_list(" a, b ,,c") == ["a", "b", "c"] and rt.csv_list("") is None
    from animegen.eval.evaluate import EvalConfig
    from animegen.labels.label import LabelConfig

    cfg = rt.build_config(EvalConfig, {"grid_n": 3.0, "truncation_psis": [1.0, 0.5]}, {"n_fid": 10, "batch": None})
    assert cfg.grid_n == 3 and isinstance(cfg.grid_n, int) and cfg.batch is None and cfg.n_fid == 10
    lab = rt.build_config(LabelConfig, {"rules": {"min_per_class": 400.0, "threshold": 1.0}}, {})
    assert lab.rules.min_per_class == 400 and isinstance(lab.rules.min_per_class, int)
    with pytest.raises(ValueError, match="unknown EvalConfig option"):
        rt.build_config(EvalConfig, {"nfid": 3}, {})
    doc = {"fid": 12.5, "fid_psi": 10.0, "kid": float("nan"), "psi": 0.6, "both_accuracy": 0.5,
           "train": {"wall_s": 30.0, "peak_memory_bytes": 2**21, "img_per_s": 100.0}}
    assert rt.evaluation_scalars(doc, "manga") == {"fid_manga": 12.5, "fid_psi_manga": 10.0, "acc_both_manga": 0.5,
                                                   "train_s_manga": 30.0, "img_per_s_manga": 100.0,
                                                   "peak_mem_mib_manga": 2.0}
    assert "fid_psi_x" not in rt.evaluation_scalars({**doc, "psi": 1.0}, "x")
    with pytest.raises(ValueError, match="stable"):
        rt.check_model_name("Manga-Scratch")


# ------------------------------------------------------------------------------------------------ report step
def fake_eval(name: str, fid: float, arch: str = "stylegan", conditional: bool = False) -> dict:
    return {"format": "animegen-evaluation/1", "fid": fid, "fid_psi": fid + 1, "kid": 0.01, "kid_std": 0.001,
            "psi": 0.6, "n_fid": 10, "n_reference": 20, "both_accuracy": 0.5 if conditional else None,
            "model": {"name": name, "arch": arch, "conditional": conditional, "kimg": 1.0},
            "train": {"wall_s": 10.0, "img_per_s": 50.0, "peak_memory_bytes": 2**30, "device": "cpu"},
            "extractor": {"id": "torchscript:abc"}, "created": "2025-01-01T00:00:00+00:00",
            "config": {"n_fid": 10}, "train_config": {"kimg": 1.0}, "dataset": {"uri": "d"},
            "artifacts": {"model": f"minio://b/{name}/model", "dataset": f"minio://b/{name}/data",
                          "tagger": "minio://b/tagger", "metrics": f"minio://b/{name}/metrics"}}


def test_run_report_table_skips_and_registry(tmp_path, capsys):
    from animegen.store.registry import list_runs, read_run

    evaluations = {"conditional": fake_eval("conditional", 40.0, conditional=True),
                   "manga": fake_eval("manga", 60.0), "manga_scratch": fake_eval("manga_scratch", 80.0),
                   "character": {"skipped": "run_character is false"},
                   "character_scratch": {"skipped": "run_character is false"},
                   "dcgan": fake_eval("dcgan", 90.0, "dcgan"),
                   "dcgan_conditional": fake_eval("dcgan_conditional", 95.0, "dcgan", True)}
    evaluations["cross_fid"] = {"skipped": "run_manga or run_character is false"}
    cfg = ReportConfig(run_id="run-1", registry_uri=str(tmp_path / "reg"), report_uri="minio://b/report")
    result = run_report(cfg, evaluations, tmp_path / "out")
    assert result["run_id"] == "run-1"
    html = Path(result["report"]).read_text()
    assert html.index(">conditional<") < html.index(">manga<") < html.index(">dcgan<")  # the DAG's order
    assert "+20.00" in html  # scratch - transfer FID
    assert "run_character is false" in html and "DCGAN vs StyleGAN" in html
    assert f"animegen studio run:run-1 --registry {tmp_path / 'reg'}" in html  # how to open the models
    assert result["scalars"]["fid_manga_scratch"] == 80.0 and "fid_character" not in result["scalars"]
    md = Path(result["markdown"]).read_text()
    assert "| manga_scratch | stylegan | 80.00 |" in md and "Skipped: character" in md
    assert list_runs(tmp_path / "reg") == ["run-1"]
    run = read_run(tmp_path / "reg", "run-1")
    assert set(run["models"]) == {"conditional", "manga", "manga_scratch", "dcgan", "dcgan_conditional"}
    assert run["tasks"]["transfer-manga"]["model"] == "minio://b/manga/model"
    assert run["tasks"]["evaluate-manga"]["metrics"] == "minio://b/manga/metrics"
    assert run["tasks"]["tagger"]["tagger"] == "minio://b/tagger"
    assert run["skipped"]["cross_fid"] == "run_manga or run_character is false"
    assert "registry: run run-1 written" in capsys.readouterr().out
    result = run_report(ReportConfig(run_id="run-2"), evaluations, tmp_path / "out2")
    assert result["registry"].startswith("skipped") and "registry: skipped" in capsys.readouterr().out
    with pytest.raises(ValueError, match="every branch was skipped"):
        run_report(ReportConfig(run_id="r"), {"conditional": {"skipped": "x"}}, tmp_path / "out3")
    # without a run_id the job names it, as on a cluster (a remote report URI appends the job id)
    cfg = ReportConfig(job_name="Run of animegen (x7)", job_id="1b2c3d4e-5f60", report_uri="minio://b/report")
    assert run_report(cfg, evaluations, tmp_path / "out4")["run_id"] == "Run-of-animegen-x7-1b2c3d4e"


def test_run_ids():
    assert run_id_for("animegen-2025-01-01-10-00-00-123456", "f00", remote=False) == \
        "animegen-2025-01-01-10-00-00-123456"
    assert run_id_for("Run of animegen (x7)", "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901", remote=True) == \
        "Run-of-animegen-x7-1b2c3d4e"
    assert run_id_for("", "1b2c3d4e-5f60", remote=True) == "1b2c3d4e-5f60"


# ------------------------------------------------------------------------------------------------ the DAG table
def test_task_table_matches_the_built_dag():
    """TASKS (what --only and the rerun logic use) lists exactly the dependencies the DAG code wires: checked on
    the build with every branch decided up front (no dsl.OneOf in between), whose tasks are those of the real DAG."""
    from animegen.pipelines.pipeline import default_params

    static = make_pipeline(static=default_params()).pipeline_spec
    tasks = static.root.dag.tasks
    assert set(tasks) == set(TASKS)
    for name, task in TASKS.items():
        producers = {a.task_output_artifact.producer_task for a in tasks[name].inputs.artifacts.values()}
        assert producers == set(task.upstream), name
        for output in task.outputs:
            comp = static.components[tasks[name].component_ref.name]
            assert output in comp.output_definitions.artifacts, (name, output)
    dynamic = make_pipeline().pipeline_spec
    names = set(dynamic.root.dag.tasks)
    for comp in dynamic.components.values():
        if comp.HasField("dag"):
            names |= set(comp.dag.tasks)
    assert set(TASKS) <= names


def test_select_and_downstream():
    assert select(["transfer"]) == {"transfer-manga", "transfer-character"}
    assert downstream({"tagger"}) == {"tagger", "report"} | {m.evaluate for m in MODELS.values()}
    assert downstream({"ingest-manga"}) == {"ingest-manga", "transfer-manga", "evaluate-manga",
                                            "train-manga-scratch", "evaluate-manga-scratch", "fid-manga-character",
                                            "report"}
    assert select(["evaluate-manga"]) == {"evaluate-manga"}
    with pytest.raises(ValueError, match="not a stage"):
        select(["evaluation"])


def test_parameters():
    values = check_params({"n_fid": 7, "psi": 1, "run_dcgan": False})
    assert values["psi"] == 1.0 and isinstance(values["psi"], float) and values["n_fid"] == 7
    with pytest.raises(ValueError, match="expected int"):
        check_params({"n_fid": "7"})
    with pytest.raises(ValueError, match="unknown pipeline parameter"):
        check_params({"nfid": 7})
    assert parse_toleration("nvidia.com/gpu:NoSchedule") == {"key": "nvidia.com/gpu", "operator": "Exists",
                                                            "effect": "NoSchedule"}
    with pytest.raises(ValueError):
        parse_toleration("nvidia.com/gpu=present")
    mlds = yaml.safe_load((Path(__file__).parents[1] / "configs" / "pipeline" / "mlds.yaml").read_text())
    full = check_params(mlds)  # the real-run parameter file names only real parameters, with the right types
    assert full["resolution"] == 64 and full["n_fid"] >= 10000 and full["main_source"] != PARAMETERS[
        "main_source"].default


def test_params_command_lists_every_parameter(capsys):
    assert main(["pipeline", "params"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PARAMETERS)


# ------------------------------------------------------------------------------------------------ submit
class _FakeKfp(BaseHTTPRequestHandler):
    """Answers the few KFP v2beta1 calls kfp.Client makes to start a run; records them."""

    calls: list[tuple[str, str, dict | None]] = []

    def log_message(self, *args) -> None:  # quiet
        pass

    def _reply(self, doc: dict, status: int = 200) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.calls.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/healthz"):
            return self._reply({"commit_sha": "abc1234", "tag_name": "2.17.0", "multi_user": False,
                                "pipeline_store": "database"})  # KFP 2.17.0 main.go's healthz
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiments": [], "total_size": 0})
        return self._reply({"error": "not found"}, 404)

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.calls.append(("POST", self.path, body))
        if self.path.startswith("/apis/v2beta1/experiments"):
            return self._reply({"experiment_id": "exp-1", "display_name": body.get("display_name")})
        if self.path.startswith("/apis/v2beta1/runs"):
            return self._reply({"run_id": "run-42", "display_name": body.get("display_name"),
                                "experiment_id": body.get("experiment_id"), "state": "PENDING"})
        return self._reply({"error": "not found"}, 404)


def test_submit_sends_the_compiled_pipeline_and_parameters(capsys):
    _FakeKfp.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"http://127.0.0.1:{server.server_port}"
    try:
        assert main(["pipeline", "submit", "--host", host, "--experiment", "papers", "--run-name", "try-1",
                     "--param", "n_fid=5000", "--param", "run_dcgan=false", "--param",
                     'eval_options={"grid_n": 4}', "--param", 'gpu_node_selector={"agentpool": "gpu"}', "--param",
                     "gpus=1"]) == 0
    finally:
        server.shutdown()
    out = capsys.readouterr().out
    assert "submitted run run-42" in out and f"{host}/#/runs/details/run-42" in out  # kfp prints the link
    posts = {path.split("?")[0]: body for method, path, body in _FakeKfp.calls if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "papers"
    run = posts["/apis/v2beta1/runs"]
    assert run["display_name"] == "try-1" and run["experiment_id"] == "exp-1"
    assert run["runtime_config"]["parameters"] == {"n_fid": 5000, "run_dcgan": False,
                                                   "eval_options": {"grid_n": 4},
                                                   "gpu_node_selector": {"agentpool": "gpu"}, "gpus": "1"}
    spec, platform = run["pipeline_spec"]["pipeline_spec"], run["pipeline_spec"]["platform_spec"]
    assert spec["pipelineInfo"]["name"] == "animegen" and "comp-evaluate-manga" in spec["components"]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # placement travels as a run parameter (the run's value above), which the platform spec names
    selector = executors["exec-train-conditional"]["nodeSelector"]["nodeSelectorJson"]  # in the one-node sub-DAG
    assert selector["componentInputParameter"].removeprefix("pipelinechannel--") == "gpu_node_selector"
    assert spec["root"]["inputDefinitions"]["parameters"]["gpu_node_selector"]["parameterType"] == "STRUCT"


def test_submit_refused_connection_is_a_clear_error(capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["pipeline", "submit", "--host", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err
    assert f"cannot submit to KFP at http://127.0.0.1:{port}" in err and "--host" in err
    assert "Traceback" not in err


def test_report_stage_imports_neither_components_nor_pipelines():
    """The report stage is library code: importing it loads no KFP glue and no pipeline module (the old
    pipelines/report.py imported components.runtime, closing a components <-> pipelines cycle), nor torch (the
    pipeline's skip placeholders call it)."""
    import subprocess
    import sys

    code = ("import sys, animegen.eval.report; print(sorted(m for m in sys.modules "
            "if m.startswith(('animegen.components', 'animegen.pipelines', 'kfp', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_package_cycle_between_components_eval_and_pipelines():
    """pipelines builds the DAG from the components; components and the library below them never import pipelines
    (the names they share, the run's models and tasks and its branch switches, live in animegen.run_layout)."""
    import ast

    src = Path(__file__).resolve().parents[1] / "src" / "animegen"
    offenders = []
    for package in ("components", "eval", "data", "labels", "store", "train"):
        for path in sorted((src / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                offenders += [f"{path.relative_to(src)}: {n}" for n in names if n.startswith("animegen.pipelines")]
    assert offenders == []
