"""The compiled pipeline YAML (what users upload): GPU placement, images, caching, retries, metrics, parameters,
secrets; the committed file equals a fresh compile. Both YAML documents are read (the second holds kfp-kubernetes'
node selectors, tolerations and secrets)."""
from __future__ import annotations

import re

import pytest
import yaml

from animegen.cli import main
from animegen.components.container_images import CPU_IMAGE, GPU_IMAGE
from animegen.pipelines.pipeline import COMPILED, MODELS, NODES_TASK, PARAMETERS, TASKS, compile_pipeline

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
        "skip-cross-fid", "train-conditional-nodes"}


def _param(value: str) -> str:
    """The run parameter a ``{{$.inputs.parameters['pipelinechannel--NAME']}}`` placeholder names."""
    m = re.fullmatch(r"\{\{\$\.inputs\.parameters\['pipelinechannel--(\w+)'\]\}\}", str(value))
    assert m, f"{value!r} is not a run-parameter placeholder"
    return m.group(1)


def _json_param(entry: dict) -> str:
    """The run parameter a kfp-kubernetes *Json entry (nodeSelectorJson, tolerationJson) reads: the root's own
    input, or a condition sub-DAG's pipelinechannel-- copy of it."""
    return entry["componentInputParameter"].removeprefix("pipelinechannel--")


def test_placement_and_images_are_run_parameters_per_stage(compiled):
    """Every executor's image, CPU / memory requests and limits, accelerator type and count, node selector and
    tolerations name a run parameter (the KFP 2.17 driver resolves them per task), never a compiled-in value:
    GPU tasks the gpu_* ones, evaluations the eval_* ones, every other task the cpu_* ones and no accelerator."""
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    seen = set()
    for name, task in all_tasks(spec).items():
        if "componentRef" not in task or "executorLabel" not in spec["components"][task["componentRef"]["name"]]:
            continue
        label = executor(spec, task)
        container = executors[label]["container"]
        res, kube = container.get("resources", {}), k8s.get(label, {})
        if name not in TASKS:  # plan and skip-*: tiny control tasks on the cpu image, anywhere
            assert _param(container["image"]) == "cpu_image" and "accelerator" not in res, name
            assert "nodeSelector" not in kube and "tolerations" not in kube, name
            continue
        stage = TASKS[name].stage
        kind = "gpu" if name in GPU_TASKS else "cpu"
        image = "gpu_image" if kind == "gpu" else "eval_image" if stage == "evaluate" else "cpu_image"
        assert _param(container["image"]) == image, name
        assert {k: _param(v) for k, v in res.items() if k != "accelerator"} == {
            "resourceCpuRequest": f"{kind}_cpu_request", "resourceCpuLimit": f"{kind}_cpu_limit",
            "resourceMemoryRequest": f"{kind}_memory_request", "resourceMemoryLimit": f"{kind}_memory_limit"}, name
        if kind == "gpu" or stage == "evaluate":
            prefix = "gpu" if kind == "gpu" else "eval"
            assert _param(res["accelerator"]["resourceType"]) == "gpu_accelerator", name
            assert _param(res["accelerator"]["resourceCount"]) == ("gpus" if kind == "gpu" else "eval_gpus"), name
            assert _json_param(kube["nodeSelector"]["nodeSelectorJson"]) == f"{prefix}_node_selector", name
            assert "labels" not in kube["nodeSelector"], name
            (tol,) = kube["tolerations"]
            assert set(tol) == {"tolerationJson"} and _json_param(tol["tolerationJson"]) == f"{prefix}_tolerations"
        else:
            assert "accelerator" not in res, name
            assert "nodeSelector" not in kube and "tolerations" not in kube, name
        seen.add(name)
    assert seen == set(TASKS)
    assert GPU_TASKS == {"train-conditional", "transfer-manga", "train-manga-scratch", "transfer-character",
                         "train-character-scratch", "train-dcgan", "train-dcgan-conditional"}


def test_placement_defaults_in_the_yaml(compiled):
    """The defaults a UI user sees: the images of this version, one GPU of nvidia.com/gpu on the GKE L4 pool with
    the nvidia.com/gpu taint tolerated, evaluations on the CPU image anywhere; GPU counts are strings (the driver
    reads resource placeholders with GetStringValue: a NUMBER parameter would give no GPU at all)."""
    _, spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_image"]["defaultValue"] == GPU_IMAGE and params["cpu_image"]["defaultValue"] == CPU_IMAGE
    assert params["eval_image"]["defaultValue"] == CPU_IMAGE
    assert params["gpu_accelerator"]["defaultValue"] == "nvidia.com/gpu"
    for name in ("gpus", "eval_gpus", "gpu_cpu_request", "gpu_cpu_limit", "gpu_memory_request", "gpu_memory_limit",
                 "cpu_cpu_request", "cpu_cpu_limit", "cpu_memory_request", "cpu_memory_limit", "gpu_image",
                 "cpu_image", "eval_image", "gpu_accelerator"):
        assert params[name]["parameterType"] == "STRING", name
    assert params["gpus"]["defaultValue"] == "1" and params["eval_gpus"]["defaultValue"] == "0"
    assert params["gpu_node_selector"]["parameterType"] == "STRUCT"
    assert params["gpu_node_selector"]["defaultValue"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert params["gpu_tolerations"]["parameterType"] == "LIST"
    assert params["gpu_tolerations"]["defaultValue"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                          "effect": "NoSchedule"}]
    assert params["eval_node_selector"]["defaultValue"] == {} and params["eval_tolerations"]["defaultValue"] == []


def test_no_pip_install_in_any_task(compiled):
    _, spec, _ = compiled
    for label, ex in spec["deploymentSpec"]["executors"].items():
        command = " ".join(ex["container"]["command"])
        assert "pip install" not in command, f"{label}: install_kfp_package=False (the images carry kfp)"


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
    # everything but the colour tagger, and the multi-node launcher (its training pods get the same secret by name)
    store_tasks = {n for n, t in TASKS.items() if t.stage != "tagger"} | {NODES_TASK}
    assert with_secret == {f"exec-{n}" for n in store_tasks}
    assert store_tasks >= {"ingest-main", "label", "train-conditional", "transfer-manga", "evaluate-conditional",
                           "fid-manga-character", "report"} and "tagger" not in store_tasks
    tasks = all_tasks(spec)
    for name in store_tasks - {n for n in TASKS if n.startswith("ingest")} - {"report"}:  # the launcher too
        ins = tasks[name]["inputs"]["parameters"]  # the endpoint, region and ANIMEGEN_STORE prefix reach it
        assert {k: v.get("componentInputParameter", "").removeprefix("pipelinechannel--") for k, v in ins.items()
                if k in ("s3_endpoint", "s3_region", "store_uri")} == {
            "s3_endpoint": "s3_endpoint", "s3_region": "s3_region", "store_uri": "store_uri"}, name
    for label in with_secret:
        (entry,) = k8s[label]["secretAsEnv"]
        assert entry["secretName"] == "mlpipeline-minio-artifact"
        assert {(m["secretKey"], m["envVar"]) for m in entry["keyToEnv"]} == {
            ("accesskey", "AWS_ACCESS_KEY_ID"), ("secretkey", "AWS_SECRET_ACCESS_KEY")}


def test_compile_sets_placement_defaults_for_other_clouds(tmp_path, capsys):
    """Placement is a run parameter; `compile --param` bakes another cloud's values in as defaults (EKS here), and
    values the driver or Kubernetes would refuse are refused at compile time."""
    out = tmp_path / "eks.yaml"
    assert main(["pipeline", "compile", "--out", str(out), "--param",
                 'gpu_node_selector={"eks.amazonaws.com/nodegroup": "gpu"}', "--param",
                 'gpu_tolerations=[{"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", '
                 '"effect": "NoSchedule"}]', "--param", "gpus=2", "--param", "gpu_image=reg.example/a-gpu:1",
                 "--param", "n_fid=5000", "--param", "run_dcgan=false"]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["gpu_node_selector"]["defaultValue"] == {"eks.amazonaws.com/nodegroup": "gpu"}
    assert params["gpu_tolerations"]["defaultValue"] == [{"key": "nvidia.com/gpu", "operator": "Equal",
                                                          "value": "true", "effect": "NoSchedule"}]
    assert params["gpus"]["defaultValue"] == "2" and params["gpu_image"]["defaultValue"] == "reg.example/a-gpu:1"
    assert params["n_fid"]["defaultValue"] == 5000 and params["run_dcgan"]["defaultValue"] is False
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-transfer-manga"]
    assert _json_param(k8s["nodeSelector"]["nodeSelectorJson"]) == "gpu_node_selector"
    for bad, why in (("gpus=0", "gpus"), ("gpus=1.5", "gpus"), ("gpu_cpu_request=lots", "CPU quantity"),
                     ("gpu_memory_request=64Gi", "exceeds gpu_memory_limit"), ("eval_gpus=-1", "eval_gpus"),
                     ('gpu_tolerations=[{"key": "k", "effect": "Sometimes"}]', "not a Kubernetes toleration"),
                     ("cpu_memory_limit=", "memory quantity")):
        assert main(["pipeline", "compile", "--out", str(tmp_path / "bad.yaml"), "--param", bad]) == 2, bad
        assert why in capsys.readouterr().err, bad
    with pytest.raises(SystemExit) as exc:  # the compile-time placement flags are gone: run parameters now
        main(["pipeline", "compile", "--out", str(out), "--gpu-node-selector", "agentpool=gpu"])
    assert exc.value.code == 2 and "unrecognized arguments: --gpu-node-selector" in capsys.readouterr().err
    assert main(["pipeline", "compile", "--out", str(out), "--param", "n_fid=many"]) == 2
    assert main(["pipeline", "compile", "--out", str(out), "--param", "nfid=5"]) == 2
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


def test_placement_references_resolve_where_the_driver_looks(compiled):
    """The backend's rules, as the 2.17 driver reads them: a resource or image placeholder
    ``{{$.inputs.parameters['pipelinechannel--X']}}`` is looked up in the task's own executor input, so X must be
    an input parameter of the task (else "executorInput did not contain container Image input parameter"); a
    nodeSelectorJson / tolerationJson componentInputParameter is resolved against the DAG that holds the task, so
    it must be an input of that DAG (the root's parameter, or the condition sub-DAG's pipelinechannel-- copy)."""
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    dags = {"root": spec["root"], **{n: c for n, c in spec["components"].items() if "dag" in c}}
    checked = 0
    for dag_name, dag in dags.items():
        dag_inputs = set((dag.get("inputDefinitions") or {}).get("parameters", {}))
        for name, task in dag["dag"]["tasks"].items():
            comp = spec["components"][task["componentRef"]["name"]]
            if "executorLabel" not in comp:
                continue
            label = comp["executorLabel"]
            container = executors[label]["container"]
            task_inputs = set(task.get("inputs", {}).get("parameters", {}))
            res = container.get("resources", {})
            values = [container["image"], *[v for k, v in res.items() if k != "accelerator"],
                      *res.get("accelerator", {}).values()]
            for value in values:
                assert f"pipelinechannel--{_param(value)}" in task_inputs, (dag_name, name, value)
            for key, value in task.get("inputs", {}).get("parameters", {}).items():  # passed down from the DAG
                if "componentInputParameter" in value:
                    assert value["componentInputParameter"] in dag_inputs, (dag_name, name, key)
            kube = k8s.get(label, {})
            refs = [kube["nodeSelector"]["nodeSelectorJson"]] if "nodeSelector" in kube else []
            refs += [t["tolerationJson"] for t in kube.get("tolerations", [])]
            for ref in refs:
                assert ref["componentInputParameter"] in dag_inputs, (dag_name, name, ref)
            checked += 1
    assert checked >= len(TASKS)
