"""Single-stage pipelines (rerun one stage from the KFP UI) and the default registry record they rerun from.

The committed evaluate_only.yaml / transfer_only.yaml equal a fresh compile and take their input artifacts as URI run
parameters (importers fed by pipeline parameters, nothing baked in). Then, as a UI user would: the committed
animegen_pipeline.yaml is run with kfp.local at its default ``registry_uri`` (``auto``) on tiny settings, which
records the run in ``<pipeline_root>/registry``; the URIs its record lists (``animegen pipeline stage-args``) are
given to the committed single-stage YAMLs, run with kfp.local: evaluate-only reproduces the run's own evaluation,
transfer-only retrains the monochrome transfer, and evaluate-only scores that new model. About 2-3 minutes on 2
CPU cores.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from animegen.cli import main
from animegen.pipelines.params import PARAMETERS
from animegen.pipelines.pipeline import COMPILED
from animegen.pipelines.single import STAGES, compile_stage, stage_arguments, stage_parameters
from animegen.store.registry import AUTO, resolve_registry_uri

TINY = {
    "main_source": "synthetic:?n=96&hair=blonde,black&eyes=red,blue",
    "manga_source": "synthetic:?n=40&seed=7&labels=none",
    "resolution": 16, "holdout": 0.25,
    "kimg_conditional": 0.032, "kimg_manga": 0.016,
    "sg_batch": 8, "sg_z_dim": 16, "sg_w_dim": 16, "sg_mapping_layers": 2, "sg_channel_base": 128,
    "sg_channel_max": 32, "tagger_epochs": 1, "tagger_width": 8, "tagger_resolution": 16, "tagger_batch": 16,
    "n_fid": 8, "psi": 0.7, "k_per_class": 4, "max_reference": 16,
    "eval_options": {"grid_n": 2, "truncation_psis": [1.0, 0.0], "interp_steps": 2},
    "train_options": {"log_every": 2},
    "run_manga": True, "run_character": False, "run_baselines": False, "run_dcgan": False,
}
EVAL = ("n_fid", "psi", "k_per_class", "max_reference", "eval_options", "seed", "device")
TRANSFER = ("sg_batch", "sg_r1_gamma", "freeze_d", "snapshot_kimg", "train_options", "seed", "device")


# ------------------------------------------------------------------------------------------------ compiled files
@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return {stage: compile_stage(stage, out / f"{stage}.yaml").read_text() for stage in STAGES}


@pytest.mark.parametrize("stage", ["evaluate", "transfer"])
def test_committed_single_stage_yaml_equals_a_fresh_compile(compiled, stage):
    path = STAGES[stage].file
    assert path.is_file(), f"{path} missing: run `animegen pipeline compile --stage {stage} --out {path}`"
    assert path.read_text() == compiled[stage], (
        f"{path.name} is stale: regenerate it with `animegen pipeline compile --stage {stage} --out "
        f"src/animegen/pipelines/{path.name}`")


@pytest.mark.parametrize("stage,uris", [("evaluate", ("model_uri", "dataset_uri", "tagger_uri")),
                                        ("transfer", ("init_model_uri", "dataset_uri"))])
def test_input_artifacts_are_uri_run_parameters(compiled, stage, uris):
    spec = next(yaml.safe_load_all(compiled[stage]))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(stage_parameters(stage))
    for name in uris:
        assert params[name]["parameterType"] == "STRING" and params[name]["defaultValue"] == ""
        assert params[name].get("description")
    importers = {n: t for n, t in spec["root"]["dag"]["tasks"].items() if "importer" in t["componentRef"]["name"]}
    fed = sorted(t["inputs"]["parameters"]["uri"]["componentInputParameter"] for t in importers.values())
    assert fed == sorted(uris)  # each URI parameter feeds one importer, at run time
    for executor in spec["deploymentSpec"]["executors"].values():
        if "importer" in executor:
            assert executor["importer"]["artifactUri"] == {"runtimeParameter": "uri"}  # nothing baked in
    # the other parameters are the full pipeline's own (same names, types, defaults, help)
    for name, p in stage_parameters(stage).items():
        if name in PARAMETERS:
            assert p == PARAMETERS[name]
        assert params[name].get("description"), f"{name} has no description in the UI"
    assert {"main_source", "run_manga", "registry_uri"}.isdisjoint(params)  # nothing of other stages


def k8s(platform: list) -> dict:
    """The kfp-kubernetes executors (node selectors, tolerations, secrets) of a YAML's second document, if any."""
    return platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}


def test_single_stage_tasks_are_placed_like_the_full_pipelines(compiled):
    full_spec, *full_platform = list(yaml.safe_load_all(COMPILED.read_text()))
    for stage, like in (("transfer", "exec-transfer-manga"), ("evaluate", "exec-evaluate-conditional")):
        spec, *platform = list(yaml.safe_load_all(compiled[stage]))
        mine = spec["deploymentSpec"]["executors"][f"exec-{stage}"]["container"]
        theirs = full_spec["deploymentSpec"]["executors"][like]["container"]
        assert mine["image"] == theirs["image"] and mine.get("resources") == theirs.get("resources")
        mine_k8s = k8s(platform).get(f"exec-{stage}")
        # the full pipeline's task sits in a dsl.If branch, whose sub-DAG passes the root parameter on as
        # 'pipelinechannel--<name>'; the single-stage task reads the root parameter <name> itself: the same parameter
        theirs_k8s = json.loads(json.dumps(k8s(full_platform).get(like)).replace('"pipelinechannel--', '"'))
        assert mine_k8s and mine_k8s == theirs_k8s
    transfer = next(yaml.safe_load_all(compiled["transfer"]))
    assert transfer["deploymentSpec"]["executors"]["exec-transfer"]["container"]["resources"]["accelerator"]
    assert transfer["root"]["dag"]["tasks"]["transfer"]["retryPolicy"]["maxRetryCount"] >= 1


def test_compile_stage_cli(tmp_path, capsys):
    out = tmp_path / "t.yaml"
    assert main(["pipeline", "compile", "--stage", "transfer", "--out", str(out), "--param", "kimg=2.5",
                 "--param", "init_class=blonde hair"]) == 0
    params = next(yaml.safe_load_all(out.read_text()))["root"]["inputDefinitions"]["parameters"]
    assert params["kimg"]["defaultValue"] == 2.5 and params["init_class"]["defaultValue"] == "blonde hair"
    assert main(["pipeline", "compile", "--stage", "evaluate", "--out", str(out), "--param", "main_source=x"]) == 2
    assert "no such parameter of the evaluate-only pipeline" in capsys.readouterr().err
    assert main(["pipeline", "compile", "--stage", "evaluate", "--only", "evaluate", "--out", str(out)]) == 2
    capsys.readouterr()
    assert main(["pipeline", "params", "--stage", "evaluate"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(stage_parameters("evaluate")) and "model_uri" in listed and "n_fid" in listed


# ------------------------------------------------------------------------------------------------ default registry
def test_default_registry_is_derived_from_where_the_run_stores_its_artifacts(monkeypatch):
    monkeypatch.delenv("ANIMEGEN_NAMESPACE", raising=False)
    assert PARAMETERS["registry_uri"].default == AUTO
    # single-user: KFP's default pipeline root minio://mlpipeline/v2/artifacts
    assert resolve_registry_uri(AUTO, "minio://mlpipeline/v2/artifacts/animegen/abc/report/123/report")[0] == \
        "s3://mlpipeline/shared/animegen/runs/"
    # multi-user: the profile controller's root minio://mlpipeline/private-artifacts/<ns>/v2/artifacts
    uri, why = resolve_registry_uri(AUTO, "minio://mlpipeline/private-artifacts/team-a/v2/artifacts/x/report")
    assert uri == "s3://mlpipeline/private/team-a/animegen/runs/" and "team-a" in why
    monkeypatch.setenv("ANIMEGEN_NAMESPACE", "team-b")
    assert resolve_registry_uri(AUTO, "s3://other/v2/artifacts/x/report")[0] == \
        "s3://other/private/team-b/animegen/runs/"
    # kfp.local: <pipeline_root>/<run>/report/report -> <pipeline_root>/registry
    assert resolve_registry_uri(AUTO, "/tmp/root/animegen-2026/report/report")[0] == "/tmp/root/registry"
    # explicit values win; '' records nothing; an unknown store says what to set
    assert resolve_registry_uri("s3://b/runs/", "minio://mlpipeline/x/y/z")[0] == "s3://b/runs/"
    assert resolve_registry_uri("", "minio://mlpipeline/x/y/z")[0] == ""
    uri, why = resolve_registry_uri(AUTO, "gs://bucket/v2/artifacts/x/report")
    assert uri == "" and "set registry_uri" in why


def test_default_registry_is_under_an_allowed_prefix_of_every_namespace():
    """A multi-user namespace's key may write only under mlpipeline/{artifacts, private-artifacts/<ns>, private/<ns>,
    shared}/ (the profile controller's policy): the default registry is inside them, single- or multi-user."""
    ns = "team-a"
    allowed = ("s3://mlpipeline/artifacts/", f"s3://mlpipeline/private-artifacts/{ns}/",
               f"s3://mlpipeline/private/{ns}/", "s3://mlpipeline/shared/")
    for root in ("minio://mlpipeline/v2/artifacts", f"minio://mlpipeline/private-artifacts/{ns}/v2/artifacts"):
        uri, _ = resolve_registry_uri(AUTO, f"{root}/animegen/run/report/1/report")
        assert uri.startswith(allowed), uri


# ------------------------------------------------------------------------------------------------ kfp.local runs
def run_yaml(path: Path, **args):
    from kfp import components

    return components.load_component_from_file(str(path))(**args)


@pytest.fixture(scope="module")
def first_run(stage_env, tmp_path_factory):
    """The committed full pipeline YAML run with kfp.local at its default registry_uri: it records itself."""
    from animegen.pipelines.local import init_local
    from animegen.store.registry import list_runs, read_run

    root = init_local(tmp_path_factory.mktemp("root"))
    run_yaml(COMPILED, **TINY)
    (run_id,) = list_runs(root / "registry")
    return root, run_id, read_run(root / "registry", run_id)


@pytest.mark.slow
def test_stage_args_cli_prints_the_records_uris(first_run, capsys):
    root, run_id, record = first_run
    assert main(["pipeline", "stage-args", "--registry", str(root / "registry"), "--from-run", run_id,
                 "--stage", "transfer", "--model", "manga", "--json"]) == 0
    args = json.loads(capsys.readouterr().out)
    assert args == {"init_model_uri": record["tasks"]["train-conditional"]["model"],
                    "dataset_uri": record["tasks"]["ingest-manga"]["dataset"]}
    assert main(["pipeline", "stage-args", "--registry", str(root / "registry"), "--from-run", run_id,
                 "--stage", "transfer", "--model", "conditional"]) == 2
    assert main(["pipeline", "stage-args", "--registry", str(root / "registry"), "--from-run", run_id,
                 "--stage", "evaluate", "--model", "character"]) == 2  # that branch did not run
    assert "records no" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_only_reruns_a_recorded_evaluation(first_run):
    root, run_id, record = first_run
    args = stage_arguments(record, "evaluate", "conditional")
    assert all(Path(args[k]).exists() for k in ("model_uri", "dataset_uri", "tagger_uri"))
    task = run_yaml(STAGES["evaluate"].file, **args, **{k: TINY[k] for k in EVAL if k in TINY})
    doc = json.loads(Path(task.outputs["Output"].path).read_text())
    before = record["metrics"]["conditional"]
    assert doc["model_name"] == "conditional" and math.isfinite(doc["fid"])
    assert doc["artifacts"]["model"] == args["model_uri"] and doc["artifacts"]["tagger"] == args["tagger_uri"]
    # the same model, set, seed and settings: the rerun measures what the run measured
    assert doc["fid"] == pytest.approx(before["fid"], rel=1e-4)
    assert doc["both_accuracy"] == pytest.approx(before["both_accuracy"])


@pytest.mark.slow
def test_transfer_only_then_evaluate_only(first_run):
    root, run_id, record = first_run
    args = stage_arguments(record, "transfer", "manga")
    task = run_yaml(STAGES["transfer"].file, **args, init_class=TINY.get("manga_init_class", "black hair"),
                    kimg=TINY["kimg_manga"], **{k: TINY[k] for k in TRANSFER if k in TINY})
    model = Path(task.outputs["Output"].path)
    assert (model / "config.json").is_file() and (model / "init_report.json").is_file()
    assert json.loads((model / "config.json").read_text())["arch"] == "stylegan"
    assert str(model) != record["tasks"]["transfer-manga"]["model"]  # a new model, beside the old one
    ev = stage_arguments(record, "evaluate", "manga")
    task = run_yaml(STAGES["evaluate"].file, **{**ev, "model_uri": str(model)},
                    **{k: TINY[k] for k in EVAL if k in TINY})
    doc = json.loads(Path(task.outputs["Output"].path).read_text())
    assert doc["model_name"] == "manga" and math.isfinite(doc["fid"]) and doc["artifacts"]["model"] == str(model)


def test_report_records_a_default_run_in_the_object_store_and_stage_args_read_it(s3_server, monkeypatch, tmp_path):
    """The report of a default run (registry_uri auto) on a multi-user install: its record lands under the
    namespace's own prefix of KFP's bucket (a real S3 server, SeaweedFS), and it gives the single-stage URIs."""
    from s3server import use_server_env

    from animegen.eval.report import ReportConfig, run_report
    from animegen.store.registry import list_runs, read_run

    use_server_env(s3_server, monkeypatch, "mlpipeline")
    monkeypatch.delenv("ANIMEGEN_NAMESPACE", raising=False)
    root = "minio://mlpipeline/private-artifacts/team-a/v2/artifacts/animegen/3f2a"

    def evaluation(name: str, model_task: str, dataset: str) -> dict:
        return {"format": "animegen-evaluation/1", "fid": 40.0, "kid": 0.01, "psi": 0.6, "both_accuracy": 0.5,
                "model": {"name": name, "arch": "stylegan", "conditional": name == "conditional", "kimg": 1.0},
                "train": {"wall_s": 1.0}, "config": {}, "train_config": {}, "dataset": {"uri": dataset},
                "artifacts": {"model": f"{root}/{model_task}/1/model", "dataset": f"{root}/{dataset}",
                              "tagger": f"{root}/tagger/4/tagger", "metrics": f"{root}/evaluate-{name}/5/metrics"}}

    skipped = {"skipped": "off"}
    evaluations = {"conditional": evaluation("conditional", "train-conditional", "label/2/labelled"),
                   "manga": evaluation("manga", "transfer-manga", "ingest-manga/3/dataset"),
                   "manga_scratch": skipped, "character": skipped, "character_scratch": skipped, "dcgan": skipped,
                   "dcgan_conditional": skipped, "cross_fid": skipped}
    cfg = ReportConfig(job_name="animegen-run", job_id="abcdef12-3456", registry_uri=AUTO,
                       report_uri=f"{root}/report/9/report")
    result = run_report(cfg, evaluations, tmp_path / "out")
    registry = "s3://mlpipeline/private/team-a/animegen/runs/"
    assert result["registry"] == f"{registry}animegen-run-abcdef12"
    assert list_runs(registry) == ["animegen-run-abcdef12"]
    record = read_run(registry, "animegen-run-abcdef12")
    assert stage_arguments(record, "evaluate", "manga") == {
        "model_uri": f"{root}/transfer-manga/1/model", "dataset_uri": f"{root}/ingest-manga/3/dataset",
        "tagger_uri": f"{root}/tagger/4/tagger", "model_name": "manga"}
    assert stage_arguments(record, "transfer", "manga") == {
        "init_model_uri": f"{root}/train-conditional/1/model", "dataset_uri": f"{root}/ingest-manga/3/dataset"}
    # nothing was written outside the namespace's prefixes
    keys = [o.object_name for o in s3_server.client().list_objects("mlpipeline", recursive=True)]
    assert keys and all(k.startswith("private/team-a/") for k in keys), keys
