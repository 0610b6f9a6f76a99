"""Training on several nodes (animegen.train.multinode): the TrainJob / PyTorchJob manifests rendered from their
parameters, the launcher's submit-and-watch loop against a local fake of the Kubernetes API (tests/k8sfake.py),
and a whole run where the fake's controller starts the rendered command as 2 "nodes" on this machine, with the
Trainer's rendezvous environment, the Dataset and the checkpoint in a real S3 server."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import ROOT, tiny_config
from k8sfake import FakeKube, LocalNodes, Script, condition
from s3server import use_server_env

from animegen.train.multinode import (
    POD_OUT,
    Jobs,
    NodeJob,
    NodeJobFailed,
    job_name,
    object_store_env,
    render,
    state_of,
    submit,
    train_on_nodes,
    wait,
)

SECRET = "mlpipeline-minio-artifact"
SELECTOR = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def node_job(kind: str = "TrainJob", **over) -> NodeJob:
    args = dict(name="animegen-train-abc", namespace="team-a", image="ghcr.io/animegen/animegen-gpu:0.1.0",
                command=["python", "-m", "torch.distributed.run", "--nnodes=4", "--nproc_per_node=8", "-m",
                         "animegen.train.launch", "{}"],
                nodes=4, gpus_per_node=8, kind=kind, requests={"cpu": "32", "memory": "256Gi"},
                limits={"memory": "256Gi"}, node_selector=SELECTOR, tolerations=TOLERATIONS,
                env=object_store_env(SECRET, "http://seaweedfs.kubeflow:9000", "us-east-1"))
    return NodeJob(**{**args, **over})


# ------------------------------------------------------------------------------------------------ manifests
def test_a_trainjob_is_rendered_from_its_parameters():
    m = render(node_job())
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["metadata"]["name"] == "animegen-train-abc" and m["metadata"]["namespace"] == "team-a"
    spec = m["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}
    t = spec["trainer"]
    assert t["image"] == "ghcr.io/animegen/animegen-gpu:0.1.0" and t["numNodes"] == 4 and t["numProcPerNode"] == 8
    assert t["command"][:3] == ["python", "-m", "torch.distributed.run"]
    assert t["resourcesPerNode"] == {"requests": {"cpu": "32", "memory": "256Gi"},
                                     "limits": {"memory": "256Gi", "nvidia.com/gpu": "8"}}
    assert spec["podTemplateOverrides"] == [{"targetJobs": [{"name": "node"}],
                                             "spec": {"nodeSelector": SELECTOR, "tolerations": TOLERATIONS}}]
    env = {e["name"]: e for e in t["env"]}
    assert env["S3_ENDPOINT_URL"]["value"] == "http://seaweedfs.kubeflow:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": "accesskey"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": SECRET, "key": "secretkey"}}
    assert all("value" not in e for e in t["env"] if e["name"].startswith("AWS_") and e["name"] != "AWS_REGION")
    bare = render(node_job(node_selector={}, tolerations=[], requests={}))
    assert "podTemplateOverrides" not in bare["spec"] and "requests" not in bare["spec"]["trainer"]["resourcesPerNode"]


def test_a_pytorchjob_is_rendered_for_the_training_operator():
    m = render(node_job("PyTorchJob", nodes=3, gpus_per_node=4))
    assert m["apiVersion"] == "kubeflow.org/v1" and m["kind"] == "PyTorchJob"
    spec = m["spec"]
    assert spec["nprocPerNode"] == "4" and spec["runPolicy"] == {"backoffLimit": 0}
    master, worker = spec["pytorchReplicaSpecs"]["Master"], spec["pytorchReplicaSpecs"]["Worker"]
    assert master["replicas"] == 1 and worker["replicas"] == 2
    for rep in (master, worker):
        pod = rep["template"]["spec"]
        (c,) = pod["containers"]
        assert c["name"] == "pytorch" and c["image"].endswith("animegen-gpu:0.1.0")
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
        assert pod["nodeSelector"] == SELECTOR and pod["tolerations"] == TOLERATIONS
        assert rep["restartPolicy"] == "Never"


def test_job_names_are_stable_rfc1035_labels():
    a = job_name("0f1e2d3c-run", "train-conditional-nodes")
    assert a == job_name("0f1e2d3c-run", "train-conditional-nodes") != job_name("other-run", "train-conditional-nodes")
    long = job_name("r", "Train_Conditional " * 10)
    for name in (a, long):
        assert len(name) <= 63 and name[0].isalpha() and name.replace("-", "").isalnum() and name.islower()
    with pytest.raises(ValueError, match="at least 2"):
        node_job(nodes=1)
    with pytest.raises(ValueError, match="kind"):
        node_job(kind="MPIJob")
    with pytest.raises(ValueError, match="RFC 1035"):
        node_job(name="Bad_Name")


# ------------------------------------------------------------------------------------------------ the watch loop
RUNNING = {"jobsStatus": [{"name": "node", "ready": 4, "active": 4, "succeeded": 0, "failed": 0, "suspended": 0}]}


def test_the_launcher_watches_a_trainjob_from_created_to_succeeded():
    lines: list[str] = []
    script = Script([{}, RUNNING, RUNNING, {"conditions": [condition("Complete", "JobsCompleted", "done")]}])
    with FakeKube(script) as kube:
        jobs = Jobs("TrainJob", "team-a", api_client=kube.api_client())
        assert submit(jobs, render(node_job()), log=lines.append) == "created"
        obj = wait(jobs, "animegen-train-abc", poll_s=0.01, log=lines.append)
    assert state_of(obj)[0] == "Succeeded"
    states = [line.split(": ", 1)[1].split(" ")[0] for line in lines[1:]]
    assert states == ["Created", "Running", "Succeeded"]  # each change once
    assert "4 nodes x 8 processes" in lines[0]
    assert ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/team-a/trainjobs") in kube.requests


def test_a_failed_job_fails_the_launcher_with_its_reason():
    failed = {"conditions": [condition("Failed", "JobsFailed", "pod node-1 OOMKilled")]}
    with FakeKube(Script([{}, RUNNING, failed])) as kube:
        jobs = Jobs("TrainJob", "team-a", api_client=kube.api_client())
        submit(jobs, render(node_job()), log=lambda s: None)
        with pytest.raises(NodeJobFailed, match="failed: JobsFailed: pod node-1 OOMKilled"):
            wait(jobs, "animegen-train-abc", poll_s=0.01, log=lambda s: None)


def test_a_job_deleted_while_watched_fails_the_launcher():
    with FakeKube(Script([{}, RUNNING])) as kube:
        jobs = Jobs("PyTorchJob", "team-a", api_client=kube.api_client())
        submit(jobs, render(node_job("PyTorchJob")), log=lambda s: None)
        jobs.get("animegen-train-abc")
        kube.objects.clear()  # kubectl delete pytorchjob ...
        with pytest.raises(NodeJobFailed, match="was deleted"):
            wait(jobs, "animegen-train-abc", poll_s=0.01, log=lambda s: None)


def test_pytorchjob_conditions_are_read_as_states():
    def obj(*conds):
        return {"kind": "PyTorchJob", "status": {"conditions": list(conds)}}

    assert state_of(obj(condition("Created"))) == ("Created", "")
    assert state_of(obj(condition("Created"), condition("Running", "Running", "all pods up")))[0] == "Running"
    assert state_of(obj(condition("Created"), condition("Succeeded", "Done", "ok"))) == ("Succeeded", "Done: ok")
    assert state_of(obj(condition("Running"), condition("Failed", "BackoffLimitExceeded", "x"))) == (
        "Failed", "BackoffLimitExceeded: x")
    assert state_of(obj({"type": "Failed", "status": "False"}, condition("Running")))[0] == "Running"


def test_a_retried_launcher_attaches_to_its_running_job_and_resubmits_a_failed_one():
    lines: list[str] = []
    body = render(node_job())
    with FakeKube(Script([RUNNING])) as kube:
        jobs = Jobs("TrainJob", "team-a", api_client=kube.api_client())
        jobs.create(body)
        assert submit(jobs, body, log=lines.append) == "attached"
        assert sum(m == "POST" for m, _ in kube.requests) == 1
    failed = {"conditions": [condition("Failed", "JobsFailed", "node lost")]}
    with FakeKube(Script([failed, {}])) as kube:
        jobs = Jobs("TrainJob", "team-a", api_client=kube.api_client())
        jobs.create(body)
        assert submit(jobs, body, poll_s=0.01, log=lines.append) == "recreated"
        assert [m for m, _ in kube.requests].count("DELETE") == 1 and [m for m, _ in kube.requests].count("POST") == 2
    assert "earlier attempt failed (JobsFailed: node lost)" in lines[-1]


# ------------------------------------------------------------------------------------------------ a whole run
def _upload_dataset(server, folder, bucket: str, prefix: str) -> str:
    """The Dataset folder as KFP's launcher stores an output artifact: plain objects under a prefix."""
    client = server.client()
    for path in folder.rglob("*"):
        if path.is_file():
            client.fput_object(bucket, f"{prefix}/{path.relative_to(folder)}", str(path))
    return f"minio://{bucket}/{prefix}"


class Art:
    """A KFP artifact as a component body sees it: path, uri, metadata."""

    def __init__(self, path, uri: str | None = None):
        self.path, self.uri, self.metadata = str(path), uri or str(path), {}


def test_the_launcher_task_trains_on_two_nodes_from_the_store_and_hands_back_the_model(s3_server, monkeypatch,
                                                                                         tmp_path):
    """The pipeline's train_nodes component (its own function, as the launcher pod runs it), with a kubeconfig
    pointing at the fake API, whose controller runs the rendered TrainJob's command as 2 nodes here (2 gloo ranks
    joined by torchrun's static rendezvous from the PET_* variables, the key pair from the secret the job names):
    the nodes read the Dataset from S3 by its minio:// URI, rank 0 uploads the Model, the launcher restores it into
    its Model artifact. A retried launcher takes the finished job's Model without training again."""
    import yaml

    from animegen.components.train.component import train_nodes
    from animegen.data.ingest import IngestConfig, run_ingest

    server = use_server_env(s3_server, monkeypatch, "pipeline")
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "launcher-cache"))
    ds = run_ingest(IngestConfig(resolution=16, holdout=0.0), "synthetic:?n=32&resolution=16&labels=none",
                    tmp_path / "dataset")
    data_uri = _upload_dataset(server, ds, "pipeline", "v2/artifacts/run-1/ingest/dataset")
    # the launcher pod's environment: its own key pair (the task's secret) and no access to the nodes' files
    nodes = LocalNodes(secrets={SECRET: {"accesskey": server.access_key, "secretkey": server.secret_key}},
                       extra_env={"PYTHONPATH": str(ROOT / "src"), "ANIMEGEN_CACHE": str(tmp_path / "node-cache"),
                                  "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "S3_ENDPOINT_URL": ""},
                       cwd=str(ROOT), log_dir=tmp_path, paths={POD_OUT: str(tmp_path / "pod" / "model")})
    with FakeKube(nodes) as kube:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": kube.host}}],
            "users": [{"name": "launcher", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "launcher", "namespace": "team-a"}}]}))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

        def attempt(name: str) -> Art:
            model = Art(tmp_path / name)
            train_nodes.python_func(
                dataset=Art(ds, uri=data_uri), model=model, summary=Art(tmp_path / f"{name}.html"), arch="dcgan",
                resolution=16, kimg=0.032, batch=8, z_dim=16, channel_base=128, channel_max=64, nodes="2",
                gpus="1", gpu_cpu_request="1", gpu_memory_limit="2Gi", gpu_node_selector=SELECTOR,
                gpu_tolerations=TOLERATIONS, credentials_secret=SECRET, checkpoint_root="s3://pipeline/ck",
                run_id="run-1", task_name="train-conditional-nodes", s3_endpoint=server.endpoint)
            return model

        model = attempt("model")
        (stored,) = kube.objects.values()
        logs = "".join(p.read_text() for p in tmp_path.glob("*-node*.log"))
        assert model.metadata["kimg"] == 0.032 and model.metadata["nodes"] == 2, logs[-3000:]
        out = Path(model.path)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["processes"] == 2 and summary["steps"] == 4 and (out / "checkpoint.pt").is_file()
        assert stored["metadata"]["namespace"] == "team-a"  # the kubeconfig's (in a pod: its service account's)
        trainer = stored["spec"]["trainer"]
        assert trainer["numNodes"] == 2 and trainer["resourcesPerNode"] == {
            "requests": {"cpu": "1"}, "limits": {"memory": "2Gi", "nvidia.com/gpu": "1"}}
        (command,) = nodes.commands.values()
        assert "--nnodes=2" in command and "--nproc_per_node=1" in command and "--standalone" not in command
        job_doc = json.loads(command[-1])
        assert job_doc["data"] == data_uri and job_doc["config"]["checkpoint_uri"] == \
            "s3://pipeline/ck/run-1/train-conditional-nodes"
        text = json.dumps(stored)
        assert server.secret_key not in text and server.access_key not in text  # only secretKeyRefs
        # a retried launcher: the job is found finished, its Model restored again, nothing trains
        again = attempt("model-2")
        assert again.metadata["kimg"] == 0.032 and sum(m == "POST" for m, _ in kube.requests) == 1


def test_the_compiled_pipeline_trains_the_conditional_model_on_one_node_or_launches_a_job():
    """In the committed YAML: train-conditional runs when nodes == "1", train-conditional-nodes otherwise (an
    If / Else on the run parameter), the evaluation and transfers take whichever Model was made (dsl.OneOf);
    the launcher asks for no GPU, runs the CPU image, is retried, and passes the GPU tasks' placement on to the
    job's nodes; the secret reaches the nodes by name."""
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "src/animegen/pipelines/animegen_pipeline.yaml").read_text()))
    spec, platform = docs[0], docs[1]

    def find(dag, name, path=()):
        for task_name, task in dag["tasks"].items():
            if task_name == name:
                return task, path
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                hit = find(comp["dag"], name, (*path, task))
                if hit:
                    return hit
        return None

    one, one_path = find(spec["root"]["dag"], "train-conditional")
    many, many_path = find(spec["root"]["dag"], "train-conditional-nodes")
    conditions = [t["triggerPolicy"]["condition"] for t in (*one_path, *many_path) if "triggerPolicy" in t]
    assert any("== '1'" in c and "nodes" in c for c in conditions)
    assert any("!(" in c and "nodes" in c for c in conditions)  # the Else
    params = many["inputs"]["parameters"]
    for name in ("nodes", "gpus", "gpu_image", "gpu_accelerator", "gpu_cpu_request", "gpu_memory_limit",
                 "gpu_node_selector", "gpu_tolerations", "trainer_kind", "trainer_runtime", "checkpoint_root"):
        assert params[name]["componentInputParameter"].removeprefix("pipelinechannel--") == name, name
    assert params["credentials_secret"]["runtimeValue"]["constant"] == "mlpipeline-minio-artifact"
    executor = spec["deploymentSpec"]["executors"]["exec-train-conditional-nodes"]["container"]
    assert "accelerator" not in executor.get("resources", {})
    assert "cpu_image" in executor["image"]
    assert many.get("retryPolicy", {}).get("maxRetryCount") == 2
    body = "".join(executor["command"])
    assert "train_on_nodes(cfg, dataset.uri, out" in body
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "exec-train-conditional-nodes" in k8s and "nodeSelector" not in k8s["exec-train-conditional-nodes"]
    evaluate, _ = find(spec["root"]["dag"], "evaluate-conditional")
    model_in = evaluate["inputs"]["artifacts"]["model"]
    assert "taskOutputArtifact" in model_in and model_in["taskOutputArtifact"]["producerTask"].startswith("condition")
    assert spec["root"]["inputDefinitions"]["parameters"]["nodes"]["defaultValue"] == "1"


def test_training_on_nodes_needs_the_store(tmp_path):
    cfg = tiny_config("dcgan", kimg=0.01)
    with pytest.raises(ValueError, match="checkpoint URI"):
        train_on_nodes(cfg, "s3://b/d", tmp_path, nodes=2, gpus_per_node=1, image="i", run_id="r", task_name="t",
                       jobs=object())
    cfg = tiny_config("dcgan", kimg=0.01, checkpoint_uri="s3://b/ck")
    with pytest.raises(ValueError, match="cannot read a local path"):
        train_on_nodes(cfg, str(tmp_path), tmp_path, nodes=2, gpus_per_node=1, image="i", run_id="r",
                       task_name="t", jobs=object())
    assert os.path.isdir(tmp_path)
