"""Training on several nodes: a Kubeflow Trainer ``TrainJob`` (or, on clusters with the older Training Operator, a
``PyTorchJob``) that runs the project's own torchrun command (:func:`animegen.train.launch.torchrun_command`) in
the GPU image on every node, submitted and watched by a small launcher (the pipeline's ``train-conditional-nodes``
task, which asks for no GPU itself).

The training pods share nothing but the object store: each node fetches the Dataset from its ``s3://`` (KFP:
``minio://``) URI, rank 0 uploads the run's checkpoint to ``checkpoint_uri`` (animegen.train.remote) as it goes and
the finished Model at the end, and the launcher downloads that upload into its own Model artifact. A launcher that
is retried finds its job by name (the run's id and the task's name): still running, it waits for it again;
finished, it takes its Model; failed, it deletes it and submits it anew, and the new pods resume from the last
uploaded checkpoint. Credentials reach the pods as ``secretKeyRef`` environment entries naming the object-store
secret, never as values.

Targets: Kubeflow Trainer v2 (``trainer.kubeflow.org/v1alpha1``, the ``torch-distributed`` ClusterTrainingRuntime,
``podTemplateOverrides`` for node selector and tolerations) and the Training Operator v1 (``kubeflow.org/v1``
PyTorchJob with ``nprocPerNode``). Both hand torchrun its rendezvous in ``PET_*`` environment variables.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animegen.train.launch import job, torchrun_command
from animegen.train.loop import TrainResult

KINDS = {  # kind -> (group, version, plural)
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
    "PyTorchJob": ("kubeflow.org", "v1", "pytorchjobs"),
}
VERBS = ("create", "get", "delete")  # what Jobs does: the RBAC in manifests/trainer-rbac grants them
POD_OUT = "/tmp/animegen/model"  # the Model folder inside a training pod (rank 0's; uploaded to the store)
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class NodeJobFailed(RuntimeError):
    """The TrainJob / PyTorchJob failed (with the controller's reason) or was deleted while the launcher waited."""


@dataclass(frozen=True)
class NodeJob:
    """What a multi-node training job is made of (rendered by :func:`render`)."""

    name: str
    namespace: str
    image: str
    command: list[str]
    nodes: int
    gpus_per_node: int
    kind: str = "TrainJob"
    runtime: str = "torch-distributed"      # TrainJob: the ClusterTrainingRuntime it runs under
    accelerator: str = "nvidia.com/gpu"     # the extended resource a GPU is requested as
    requests: dict[str, str] = field(default_factory=dict)   # per node: cpu, memory
    limits: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)  # EnvVar objects (value or valueFrom)
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r}: one of {', '.join(KINDS)}")
        if self.nodes < 2:
            raise ValueError(f"nodes {self.nodes}: a multi-node job has at least 2 (one node: the train task itself)")
        if self.gpus_per_node < 1:
            raise ValueError(f"gpus per node {self.gpus_per_node}: at least 1")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", self.name):
            raise ValueError(f"job name {self.name!r}: an RFC 1035 label (lower case, digits, '-', <= 63)")


def job_name(run_id: str, task_name: str) -> str:
    """A stable RFC 1035 name for the job of ``task_name`` in run ``run_id`` (the same for every attempt)."""
    digest = hashlib.sha256(f"{run_id}/{task_name}".encode()).hexdigest()[:10]
    readable = re.sub(r"[^a-z0-9-]+", "-", task_name.lower()).strip("-")[:40].strip("-")
    return f"animegen-{readable}-{digest}" if readable else f"animegen-{digest}"


def object_store_env(secret: str, endpoint: str = "", region: str = "", store: str = "") -> list[dict[str, Any]]:
    """The training pods' object-store environment: endpoint, region and store as values, the key pair as
    references to ``secret`` (keys ``accesskey`` / ``secretkey``, as KFP's own object-store secret)."""
    env = [{"name": k, "value": v} for k, v in (("S3_ENDPOINT_URL", endpoint), ("AWS_REGION", region),
                                                 ("ANIMEGEN_STORE", store)) if v]
    if secret:
        env += [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for name, key in (("AWS_ACCESS_KEY_ID", "accesskey"), ("AWS_SECRET_ACCESS_KEY", "secretkey"))]
    return env


def _resources(j: NodeJob) -> dict[str, Any]:
    limits = {**j.limits, j.accelerator: str(j.gpus_per_node)}
    return {"requests": dict(j.requests), "limits": limits} if j.requests else {"limits": limits}


def render(j: NodeJob) -> dict[str, Any]:
    """The manifest of ``j``: a TrainJob or a PyTorchJob."""
    group, version, _ = KINDS[j.kind]
    meta = {"name": j.name, "namespace": j.namespace,
            "labels": {"app.kubernetes.io/part-of": "animegen", "app.kubernetes.io/component": "train", **j.labels}}
    placement = {k: v for k, v in (("nodeSelector", dict(j.node_selector)), ("tolerations", list(j.tolerations)))
                 if v}
    if j.kind == "TrainJob":
        spec: dict[str, Any] = {
            "runtimeRef": {"name": j.runtime, "apiGroup": group, "kind": "ClusterTrainingRuntime"},
            "trainer": {"image": j.image, "command": list(j.command), "env": list(j.env), "numNodes": j.nodes,
                        "numProcPerNode": j.gpus_per_node, "resourcesPerNode": _resources(j)}}
        if placement:
            spec["podTemplateOverrides"] = [{"targetJobs": [{"name": "node"}], "spec": placement}]
        return {"apiVersion": f"{group}/{version}", "kind": "TrainJob", "metadata": meta, "spec": spec}
    pod = {"metadata": {"labels": dict(meta["labels"])},
           "spec": {"containers": [{"name": "pytorch", "image": j.image, "command": list(j.command),
                                    "env": list(j.env), "resources": _resources(j)}], **placement}}
    replica = {"restartPolicy": "Never", "template": pod}  # a failed rank fails the job; the launcher resubmits
    return {"apiVersion": f"{group}/{version}", "kind": "PyTorchJob", "metadata": meta,
            "spec": {"nprocPerNode": str(j.gpus_per_node), "runPolicy": {"backoffLimit": 0},
                     "pytorchReplicaSpecs": {"Master": {"replicas": 1, **replica},
                                             "Worker": {"replicas": j.nodes - 1, **replica}}}}


# ------------------------------------------------------------------------------------------------ state
def state_of(obj: dict[str, Any]) -> tuple[str, str]:
    """``(state, detail)`` of a TrainJob or PyTorchJob: state one of Created, Running, Suspended, Restarting,
    Succeeded, Failed; detail the controller's reason and message (or the child jobs' counts)."""
    status = obj.get("status") or {}
    true = [c for c in status.get("conditions") or [] if str(c.get("status")) == "True"]
    by_type = {c.get("type"): c for c in true}

    def detail(c: dict) -> str:
        return ": ".join(x for x in (c.get("reason"), c.get("message")) if x)

    if "Failed" in by_type:
        return "Failed", detail(by_type["Failed"])
    for done in ("Complete", "Succeeded"):  # TrainJob / PyTorchJob
        if done in by_type:
            return "Succeeded", detail(by_type[done])
    if "Suspended" in by_type:
        return "Suspended", detail(by_type["Suspended"])
    if obj.get("kind") == "TrainJob":
        jobs = status.get("jobsStatus") or []
        if any((s.get("active") or 0) or (s.get("ready") or 0) for s in jobs):
            counts = ", ".join(f"{s.get('name')}: {s.get('ready') or 0} ready, {s.get('active') or 0} active"
                               for s in jobs)
            return "Running", counts
        return "Created", ""
    for kind in ("Restarting", "Running", "Created"):  # PyTorchJob: the latest of these that holds
        if kind in by_type:
            return kind, detail(by_type[kind])
    return "Created", ""


# ------------------------------------------------------------------------------------------------ the API
class Jobs:
    """The TrainJobs (or PyTorchJobs) of one namespace through the Kubernetes API (the ``kubernetes`` client;
    in a pod its service account, else the kubeconfig; ``api_client`` for another endpoint)."""

    def __init__(self, kind: str, namespace: str, api_client: Any = None):
        from kubernetes import client, config

        if api_client is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config(config_file=_kubeconfig())
            api_client = client.ApiClient()
        self.kind, self.namespace = kind, namespace
        self.group, self.version, self.plural = KINDS[kind]
        self.api = client.CustomObjectsApi(api_client)
        self._exc = client.exceptions.ApiException

    def _where(self) -> dict[str, str]:
        return dict(group=self.group, version=self.version, namespace=self.namespace, plural=self.plural)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.create_namespaced_custom_object(body=body, **self._where())

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            return self.api.get_namespaced_custom_object(name=name, **self._where())
        except self._exc as e:
            if e.status == 404:
                return None
            raise

    def delete(self, name: str) -> None:
        try:
            self.api.delete_namespaced_custom_object(name=name, body={"propagationPolicy": "Foreground"},
                                                     **self._where())
        except self._exc as e:
            if e.status != 404:
                raise


def submit(jobs: Jobs, body: dict[str, Any], poll_s: float = 5.0, log: Callable[[str], None] = print) -> str:
    """Create the job ``body`` names, or take up the one an earlier attempt left: running (or finished), it is
    watched again; failed, it is deleted and created anew (its pods resume from the uploaded checkpoint).
    Returns what happened: created, attached or recreated."""
    name = body["metadata"]["name"]
    existing = jobs.get(name)
    if existing is not None:
        state, detail = state_of(existing)
        if state != "Failed":
            log(f"{jobs.kind} {name}: found from an earlier attempt ({state}); watching it")
            return "attached"
        log(f"{jobs.kind} {name}: an earlier attempt failed ({detail}); deleting it and submitting it again")
        jobs.delete(name)
        while jobs.get(name) is not None:
            time.sleep(poll_s)
        jobs.create(body)
        return "recreated"
    jobs.create(body)
    log(f"{jobs.kind} {name}: created in {jobs.namespace} ({body['kind']}, {_shape(body)})")
    return "created"


def _shape(body: dict[str, Any]) -> str:
    spec = body["spec"]
    if body["kind"] == "TrainJob":
        return f"{spec['trainer']['numNodes']} nodes x {spec['trainer']['numProcPerNode']} processes"
    reps = spec["pytorchReplicaSpecs"]
    return f"{reps['Master']['replicas'] + reps['Worker']['replicas']} nodes x {spec['nprocPerNode']} processes"


def wait(jobs: Jobs, name: str, poll_s: float = 10.0, timeout_s: float | None = None,
         log: Callable[[str], None] = print) -> dict[str, Any]:
    """Watch job ``name`` until it succeeds (returns it); every change of state is logged. Raises
    :class:`NodeJobFailed` with the controller's reason when it fails or is deleted, TimeoutError after
    ``timeout_s``."""
    start, last = time.monotonic(), None
    while True:
        obj = jobs.get(name)
        if obj is None:
            raise NodeJobFailed(f"{jobs.kind} {name} was deleted while the launcher waited for it")
        state, detail = state_of(obj)
        if (state, detail) != last:
            log(f"{jobs.kind} {name}: {state}{f' ({detail})' if detail else ''}")
            last = (state, detail)
        if state == "Succeeded":
            return obj
        if state == "Failed":
            raise NodeJobFailed(f"{jobs.kind} {name} failed: {detail or 'no reason given'}")
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"{jobs.kind} {name}: still {state} after {timeout_s:g} s")
        time.sleep(poll_s)


def _kubeconfig() -> str | None:
    """$KUBECONFIG as it is now (the kubernetes package reads it once, at import), else its default."""
    return os.environ.get("KUBECONFIG") or None


def current_namespace(default: str = "default") -> str:
    """The namespace of the pod this runs in (its service account's), else the kubeconfig's current context's,
    else ``default``."""
    try:
        return NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        pass
    try:
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=_kubeconfig())
        return (active or {}).get("context", {}).get("namespace") or default
    except Exception:  # no kubeconfig either
        return default


def train_on_nodes(cfg, data_uri: str, out: str | Path, *, nodes: int, gpus_per_node: int, image: str,
                   run_id: str, task_name: str, kind: str = "TrainJob", runtime: str = "torch-distributed",
                   namespace: str = "", accelerator: str = "nvidia.com/gpu", requests: dict | None = None,
                   limits: dict | None = None,
                   node_selector: dict | None = None, tolerations: list | None = None,
                   env: list | None = None, pod_out: str = POD_OUT, poll_s: float = 10.0,
                   timeout_s: float | None = None, jobs: Jobs | None = None) -> TrainResult:
    """Train ``cfg`` on ``nodes`` x ``gpus_per_node`` processes as a TrainJob / PyTorchJob and put the resulting
    Model into ``out``. ``cfg.checkpoint_uri`` is required (the pods hand the Model back through it); ``data_uri``
    must be readable from every node (an ``s3://`` or ``minio://`` Dataset)."""
    from animegen.store.uris import is_s3
    from animegen.train.remote import restore

    if not cfg.checkpoint_uri:
        raise ValueError("training on several nodes needs a checkpoint URI in the object store (checkpoint_root "
                         "or store_uri): the nodes hand the Model back through it")
    if not (is_s3(data_uri) or data_uri.startswith("synthetic:")):
        raise ValueError(f"data {data_uri!r}: the nodes cannot read a local path; give an s3:// (minio://) Dataset")
    namespace = namespace or current_namespace()
    doc = job(cfg, data_uri, pod_out)
    spec = NodeJob(name=job_name(run_id, task_name), namespace=namespace, image=image,
                   command=torchrun_command(doc, gpus_per_node, nnodes=nodes, python="python"), nodes=nodes,
                   gpus_per_node=gpus_per_node, kind=kind, runtime=runtime, accelerator=accelerator,
                   requests=requests or {},
                   limits=limits or {}, node_selector=node_selector or {}, tolerations=tolerations or [],
                   env=env or [], labels={"animegen/task": re.sub(r"[^A-Za-z0-9_.-]", "-", task_name)[:63]})
    jobs = jobs or Jobs(kind, namespace)
    submit(jobs, render(spec), poll_s=poll_s)
    wait(jobs, spec.name, poll_s=poll_s, timeout_s=timeout_s)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if restore(cfg.checkpoint_uri, out) is None and not (out / "summary.json").is_file():
        raise NodeJobFailed(f"{kind} {spec.name} succeeded but left no Model under {cfg.checkpoint_uri}")
    summary = json.loads((out / "summary.json").read_text())
    return TrainResult(**{k: summary[k] for k in TrainResult.__dataclass_fields__} | {"out": out})
