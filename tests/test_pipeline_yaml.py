"""The compiled pipeline YAML (what users upload): GPU placement, images, caching, retries, metrics, parameters,
secrets; the committed file equals a fresh compile. Both YAML documents are read (the second holds kfp-kubernetes'
node selectors, tolerations and secrets)."""
from __future__ import annotations

import re

import pytest
import yaml

from animegen.cli import main
from animegen.components.container_images import CPU_IMAGE, GPU_IMAGE
from animegen.pipelines.pipeline import COMPILED, MODELS, PARAMETERS, TASKS, compile_pipeline

FAKE_KEY, FAKE_SECRET = "AKIAFAKEKEY0123456789", "fake/Secret+Value0123456789abcdefghijkl"
GPU_TASKS = {n for n, t in TASKS.items() if t.stage in ("train", "transfer")}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A fresh compile with fake object-store credentials in the environment (none may leak into the YAML)."""
    mp = pytest.MonkeyPatch()
    for var, value in (("AWS_ACCESS_KEY_ID", FAKE_KEY), ("AWS_SECRET_ACCESS_KEY", FAKE_SECRET),
                       ("S3_ENDPOINT_URL", "http://fake-endpoint.invalid:9000"), ("KAGGLE_KEY", FAKE_SECRET)):
        mp.setenv(var, value)
    path = compile_pipeline(tmp_path_factory.mktemp("yaml") / "pipeline.yaml")
    mp.undo()
    text = path.read_text()
    spec, platform = list(yaml.safe_load_all(text))
    return text, spec, platform


def all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of the root DAG and of the condition sub-DAGs, by name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update((comp.get("dag") or {}).get("tasks", {}))
    return tasks


def executor(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]].get("executorLabel", "")


def test_committed_yaml_equals_a_fresh_compile(compiled):
    text, _, _ = compiled
    assert COMPILED.is_file(), f"{COMPILED} missing: run `animegen pipeline compile --out {COMPILED}`"
    assert COMPILED.read_text() == text, (f"{COMPILED.name} is stale: regenerate it with "
                                          f"`animegen pipeline compile --out src/animegen/pipelines/{COMPILED.name}`")


def test_every_dag_task_is_in_the_yaml_under_its_name(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    assert set(TASKS) <= set(tasks)
    controls = set(tasks) - set(TASKS)
    assert {t for t in controls if not t.startswith("condition")} == {
        "plan", "skip-manga", "skip-manga-scratch", "skip-character", "skip-character-scratch", "skip-dcgan",
        "skip-cross-fid"}


def test_gpu_accelerator_node_selector_and_toleration_on_train_and_transfer_only(compiled):
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    tasks = all_tasks(spec)
    for name, task in tasks.items():
        if "componentRef" not in task or "executorLabel" not in spec["components"][task["componentRef"]["name"]]:
            continue
        label = executor(spec, task)
        resources = executors[label]["container"].get("resources", {})
        kube = k8s.get(label, {})
        if name in GPU_TASKS:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu", name
            assert int(resources["accelerator"]["resourceCount"]) == 1, name
            assert resources["resourceCpuRequest"] == "8" and resources["resourceMemoryLimit"] == "32G", name
            assert kube["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}, name
            assert kube["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "accelerator" not in resources, name
            assert "nodeSelector" not in kube and "tolerations" not in kube, name
    assert {n for n in tasks if n in GPU_TASKS} == GPU_TASKS == {
        "train-conditional", "transfer-manga", "train-manga-scratch", "transfer-character",
        "train-character-scratch", "train-dcgan", "train-dcgan-conditional"}


def test_images_per_stage(compiled):
    _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name, task in all_tasks(spec).items():
        comp = spec["components"].get(task.get("componentRef", {}).get("name", ""), {})
        if "executorLabel" not in comp:
            continue
        image = executors[comp["executorLabel"]]["container"]["image"]
        assert image == (GPU_IMAGE if name in GPU_TASKS else CPU_IMAGE), name
        command = " ".join(executors[comp["executorLabel"]]["container"]["command"])
        assert "pip install" not in command, f"{name}: install_kfp_package=False (the images carry kfp)"


def test_caching_and_retries(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    for name, task in tasks.items():
        stage = TASKS[name].stage if name in TASKS else None
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        if stage in ("ingest", "label", "tagger", "train", "transfer"):
            assert cached, f"{name} should be cached"
        if stage in ("evaluate", "report"):
            assert not cached, f"{name} must never be served from cache"
        retry = task.get("retryPolicy")
        if name in GPU_TASKS:
            assert retry and retry["maxRetryCount"] == 2 and retry["backoffDuration"] == "60s", name
        elif name in TASKS:
            assert not retry, name


def test_metrics_outputs_and_stable_names(compiled):
    _, spec, _ = compiled
    tasks = all_tasks(spec)
    for model, m in MODELS.items():
        task = tasks[m.evaluate]
        assert task["inputs"]["parameters"]["model_name"]["runtimeValue"]["constant"] == model
        outputs = spec["components"][task["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
        assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
        assert outputs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
        assert outputs["hair_confusion"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    assert set(MODELS) == {"conditional", "manga", "manga_scratch", "character", "character_scratch", "dcgan",
                           "dcgan_conditional"}
    fid = tasks["fid-manga-character"]
    assert fid["inputs"]["parameters"]["name"]["runtimeValue"]["constant"] == "manga_vs_character"
    report = spec["components"][tasks["report"]["componentRef"]["name"]]["outputDefinitions"]["artifacts"]
    assert report["summary"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert report["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert report["table"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_branches_are_conditions_on_parameters(compiled):
    _, spec, _ = compiled
    conditions = [t["triggerPolicy"]["condition"] for t in all_tasks(spec).values() if "triggerPolicy" in t]
    text = " ".join(conditions)
    for switch in ("run_manga", "run_character", "run_dcgan"):
        assert f"pipelinechannel--{switch}" in text
    for planned in ("manga_scratch", "character_scratch", "cross_fid"):
        assert f"plan-{planned}" in text  # two switches: the plan task's output


def test_pipeline_parameters(compiled):
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(PARAMETERS)
    for name in ("main_source", "manga_source", "character_source", "character_grow_to", "resolution",
                 "kimg_conditional", "kimg_manga", "kimg_character", "kimg_dcgan", "kimg_dcgan_conditional",
                 "sg_batch", "dcgan_batch", "sg_channel_base", "n_fid", "psi", "seed", "registry_uri", "s3_endpoint",
                 "run_manga", "run_character", "run_baselines", "run_dcgan", "manga_init_class",
                 "character_init_class"):
        assert name in params, name
    assert params["manga_init_class"]["defaultValue"] == "black hair"
    assert params["run_baselines"]["defaultValue"] is True
    assert params["registry_uri"]["defaultValue"] == "auto"  # a default run records itself (test_single_stage)
    for name, p in params.items():
        assert p.get("description"), f"{name} has no description in the UI"


def test_object_store_secret_and_no_credential_value(compiled):
    text, spec, platform = compiled
    for value in (FAKE_KEY, FAKE_SECRET, "fake-endpoint.invalid"):
        assert value not in text
    assert not re.search(r"AKIA[0-9A-Z]{12,}", text)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    with_secret = {label for label, cfg in k8s.items() if "secretAsEnv" in cfg}
    assert with_secret == {"exec-ingest-main", "exec-ingest-manga", "exec-ingest-character", "exec-report"}
    for label in with_secret:
        (entry,) = k8s[label]["secretAsEnv"]
        assert entry["secretName"] == "mlpipeline-minio-artifact"
        assert {(m["secretKey"], m["envVar"]) for m in entry["keyToEnv"]} == {
            ("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")}


def test_compile_cli_options_for_other_clouds(tmp_path, capsys):
    out = tmp_path / "eks.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--gpu-node-selector", "eks.amazonaws.com/nodegroup=gpu",
                 "--gpu-toleration", "nvidia.com/gpu=true:NoSchedule", "--gpus", "2", "--accelerator",
                 "nvidia.com/gpu", "--param", "n_fid=5000", "--param", "run_dcgan=false"]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-transfer-manga"]
    assert k8s["nodeSelector"]["labels"] == {"eks.amazonaws.com/nodegroup": "gpu"}
    assert k8s["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "true",
                                   "effect": "NoSchedule"}]
    acc = spec["deploymentSpec"]["executors"]["exec-train-conditional"]["container"]["resources"]["accelerator"]
    assert int(acc["resourceCount"]) == 2
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["n_fid"]["defaultValue"] == 5000 and params["run_dcgan"]["defaultValue"] is False
    aks = tmp_path / "aks.yaml"
    assert main(["pipeline", "compile", "--out", str(aks), "--gpu-node-selector", "none", "--gpu-toleration",
                 "sku=gpu:NoSchedule"]) == 0
    k8s = list(yaml.safe_load_all(aks.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "nodeSelector" not in k8s["exec-train-dcgan"]
    assert k8s["exec-train-dcgan"]["tolerations"][0]["key"] == "sku"
    assert main(["pipeline", "compile", "--out", str(aks), "--gpu-toleration", "nvidia.com/gpu"]) == 2
    assert "KEY[=VALUE]:EFFECT" in capsys.readouterr().err
    assert main(["pipeline", "compile", "--out", str(aks), "--param", "n_fid=many"]) == 2
    assert main(["pipeline", "compile", "--out", str(aks), "--param", "nfid=5"]) == 2
    assert "no such pipeline parameter" in capsys.readouterr().err


def test_kaggle_secret_option(tmp_path):
    out = tmp_path / "kaggle.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--kaggle-secret", "kaggle-credentials"]) == 0
    k8s = list(yaml.safe_load_all(out.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for label in ("exec-ingest-main", "exec-ingest-manga", "exec-ingest-character"):
        secrets = {e["secretName"]: e["keyToEnv"] for e in k8s[label]["secretAsEnv"]}
        assert {(m["secretKey"], m["envVar"]) for m in secrets["kaggle-credentials"]} == {
            ("username", "KAGGLE_USERNAME"), ("key", "KAGGLE_KEY")}
    assert all(e["secretName"] != "kaggle-credentials" for e in k8s["exec-report"]["secretAsEnv"])
