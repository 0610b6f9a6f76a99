"""Run-time placement: the default requests and limits fit every GPU node type the docs recommend, the placement
parameters are checked before a run, and the training launcher reads the GPU count at run time.

Allocatable CPU / memory per node type are conservative figures: the machine's vCPUs and memory less the
provider's kubelet reservations (GKE: CPU 6% of the first core + 1% of the second + 0.5% of the next two + 0.25%
of the rest, memory 25% of the first 4 GiB + 20% of the next 4 + 10% of the next 8 + 6% of the next 112, plus a
100 MiB eviction threshold; EKS AL2/AL2023: CPU the same scale, memory 255 MiB + 11 MiB per max pod (29 on an
xlarge) + 100 MiB eviction; AKS: CPU 140 m on 4 cores, memory 750 MiB eviction + 25/20/10/6% tiers), then
rounded down again for the system daemonsets every GPU node runs (kube-proxy, CNI, logging, metrics, the NVIDIA
device plugin and DCGM exporter: about 0.4 CPU and 1 GiB requested together).
"""
from __future__ import annotations

import pytest

from animegen.pipelines.params import PipelineParams, check_params, cpu_cores, memory_bytes

GiB = 2**30

# node type: (vCPUs, memory GiB of the machine, allocatable CPU, allocatable memory GiB after daemonsets)
NODE_TYPES = {
    "g2-standard-8 (GKE, 1x L4)": (8, 32, 7.4, 27.0),
    "n1-standard-8 (GKE, + T4)": (8, 30, 7.4, 25.5),
    "g4dn.xlarge (EKS, 1x T4)": (4, 16, 3.5, 13.5),
    "g5.xlarge (EKS, 1x A10G)": (4, 16, 3.5, 13.5),
    "g6.xlarge (EKS, 1x L4)": (4, 16, 3.5, 13.5),
    "Standard_NC4as_T4_v3 (AKS, 1x T4)": (4, 28, 3.5, 22.0),
}


def test_node_table_is_conservative():
    """Each allocatable figure sits well below the machine's own size (a table that claimed more than a node has
    would let a default through that stays Pending): at least the kubelet's share and 0.4 CPU of daemonsets, and
    at least 2 GiB of memory (GKE alone reserves 3.4 GiB of 30 GiB; EKS 0.9 GiB + daemonsets on 16 GiB)."""
    for node, (vcpu, mem, cpu_alloc, mem_alloc) in NODE_TYPES.items():
        assert cpu_alloc <= vcpu - 0.5, node
        assert mem_alloc <= mem - 2.5, node


@pytest.mark.parametrize("node", sorted(NODE_TYPES))
def test_default_gpu_and_cpu_tasks_fit_every_documented_gpu_node(node):
    """A GPU task's requests (what the scheduler and the autoscaler compare with a node's allocatable) fit; so do
    an evaluation's when it is moved to the GPU pool (eval_image / eval_gpus / eval_node_selector); memory limits
    fit too (a limit above allocatable invites the kernel's OOM killer under pressure); CPU limits stay within the
    node's vCPUs. Requests are below limits (burstable: the pod may use idle CPU)."""
    vcpu, _, cpu_alloc, mem_alloc = NODE_TYPES[node]
    p = PipelineParams()
    for kind in ("gpu", "cpu"):
        req_cpu, lim_cpu = cpu_cores(getattr(p, f"{kind}_cpu_request")), cpu_cores(getattr(p, f"{kind}_cpu_limit"))
        req_mem = memory_bytes(getattr(p, f"{kind}_memory_request"))
        lim_mem = memory_bytes(getattr(p, f"{kind}_memory_limit"))
        assert req_cpu <= cpu_alloc and req_mem <= mem_alloc * GiB, (node, kind)
        assert lim_mem <= mem_alloc * GiB and lim_cpu <= vcpu, (node, kind)
        assert req_cpu < lim_cpu and req_mem < lim_mem, kind
    assert p.gpus == "1" and p.eval_gpus == "0"


def test_the_old_defaults_would_not_fit():
    """What problem 4 reported: request = limit = 8 CPU / 32G fits none of the documented node types."""
    for node, (_, _, cpu_alloc, mem_alloc) in NODE_TYPES.items():
        assert cpu_cores("8") > cpu_alloc or memory_bytes("32G") > mem_alloc * GiB, node


def test_quantities():
    assert cpu_cores("500m") == 0.5 and cpu_cores("3") == 3 and cpu_cores("1.5") == 1.5
    assert memory_bytes("12Gi") == 12 * GiB and memory_bytes("8G") == 8e9 and memory_bytes("512Mi") == 512 * 2**20
    for bad in ("", "3 cores", "-1", "1.5.1"):
        with pytest.raises(ValueError, match="CPU quantity"):
            cpu_cores(bad)
    for bad in ("", "12GB", "lots", "12 Gi"):
        with pytest.raises(ValueError, match="memory quantity"):
            memory_bytes(bad)


@pytest.mark.parametrize("values, message", [
    ({"gpus": "0"}, "gpus '0'"),
    ({"gpus": "two"}, "gpus 'two'"),
    ({"eval_gpus": ""}, "eval_gpus ''"),
    ({"gpu_cpu_request": "5", "gpu_cpu_limit": "4"}, "gpu_cpu_request 5 exceeds gpu_cpu_limit 4"),
    ({"cpu_memory_request": "13Gi"}, "cpu_memory_request 13Gi exceeds cpu_memory_limit 12Gi"),
    ({"gpu_memory_limit": ""}, "memory quantity ''"),
    ({"gpu_image": " "}, "gpu_image must not be empty"),
    ({"gpu_node_selector": {"pool": 1}}, "label values must be strings"),
    ({"gpu_tolerations": [{"key": "a", "operator": "Maybe"}]}, "not a Kubernetes toleration"),
    ({"eval_tolerations": [{"key": "a", "colour": "red"}]}, "not a Kubernetes toleration"),
])
def test_placement_values_the_driver_would_fail_on_are_refused_before_a_run(values, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_params(values)


def test_other_clouds_values_are_accepted():
    p = check_params({"gpu_node_selector": {"agentpool": "gpu"}, "gpu_tolerations": [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}], "gpus": "2",
        "eval_gpus": "1", "eval_image": "reg.example/animegen-gpu:1", "gpu_memory_request": "20Gi",
        "gpu_memory_limit": "24Gi"})
    assert p["gpus"] == "2" and p["gpu_tolerations"][0]["key"] == "sku"


# ------------------------------------------------------------------------------------------------ the launcher
def _no_cuda(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _cuda(monkeypatch, n):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_launcher_reads_the_count_at_run_time_and_exports_it(monkeypatch, capsys):
    from animegen.components import runtime as rt

    monkeypatch.delenv(rt.GPUS_ENV, raising=False)
    _cuda(monkeypatch, 1)
    assert rt.launch_gpus("1", "auto") == ("auto", 1)
    assert rt.os.environ[rt.GPUS_ENV] == "1"
    captured = capsys.readouterr()
    assert "gpus=1 requested, 1 visible, training on 1 GPU(s)" in captured.out and "warning" not in captured.err


def test_launcher_trains_on_every_gpu_of_the_pod_one_process_each(monkeypatch, capsys):
    from animegen.components import runtime as rt

    _cuda(monkeypatch, 4)
    assert rt.launch_gpus("4", "cuda") == ("cuda", 4)
    assert rt.launch_gpus("4", "auto") == ("auto", 4)
    assert rt.os.environ[rt.GPUS_ENV] == "4"
    captured = capsys.readouterr()
    assert "training on 4 GPU(s), 4 processes (torchrun)" in captured.out and "warning" not in captured.err
    _cuda(monkeypatch, 2)  # fewer visible than asked: the visible ones, warned
    assert rt.launch_gpus("4", "cuda") == ("cuda", 2)
    assert "gpus=4 requested but 2 GPU(s) visible" in capsys.readouterr().err


def test_launcher_on_the_cpu_runs_gpus_gloo_processes(monkeypatch, capsys):
    """A local run (no GPU) with gpus=2 runs the pod's two-process job as 2 gloo processes: its CPU twin."""
    from animegen.components import runtime as rt

    _no_cuda(monkeypatch)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert rt.launch_gpus("2", "cpu") == ("cpu", 2)
    assert "training on cpu, 2 processes (torchrun)" in capsys.readouterr().out


def test_launcher_warns_when_the_pod_sees_fewer_gpus(monkeypatch, capsys):
    from animegen.components import runtime as rt

    _no_cuda(monkeypatch)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert rt.launch_gpus("1", "auto") == ("auto", 1)  # a local run (kfp.local): no pod asked for a GPU, no warning
    captured = capsys.readouterr()
    assert "warning" not in captured.err and "gpus=1 requested, 0 visible, training on auto" in captured.out
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # in a pod given one GPU
    assert rt.launch_gpus("1", "auto") == ("auto", 1)
    assert "gpus=1 requested but 0 GPU(s) visible in this container (training on the CPU)" in capsys.readouterr().err
    for bad in ("1.0", "0", "two"):
        with pytest.raises(ValueError, match="whole number"):
            rt.launch_gpus(bad)


def test_object_store_env_includes_the_fid_statistics_store(monkeypatch):
    from animegen.components import runtime as rt
    from animegen.eval.fid import STORE_ENV, StatsCache

    for var in ("S3_ENDPOINT_URL", "AWS_REGION", STORE_ENV):
        monkeypatch.delenv(var, raising=False)
    rt.set_object_store_env("", "", "")
    assert STORE_ENV not in rt.os.environ and StatsCache.from_env().store is None
    rt.set_object_store_env("http://seaweedfs.kubeflow:9000", "us-east-1", "s3://mlpipeline/shared/animegen")
    assert rt.os.environ["S3_ENDPOINT_URL"] == "http://seaweedfs.kubeflow:9000"
    assert StatsCache.from_env().store == "s3://mlpipeline/shared/animegen"


def test_gpu_components_take_the_count_and_store_components_the_store():
    """The components' own signatures: train and transfer read ``gpus`` (a string: the run parameter's type),
    every store-using component takes the endpoint, region and ANIMEGEN_STORE prefix."""
    import inspect

    from animegen.pipelines.pipeline import STORE_COMPONENTS, _components

    comps = _components()
    for name in ("train", "transfer", "train_nodes"):
        sig = inspect.signature(comps[name].python_func)
        assert sig.parameters["gpus"].annotation in (str, "str") and sig.parameters["gpus"].default == "1"
    for name in STORE_COMPONENTS:
        params = inspect.signature(comps[name].python_func).parameters
        assert {"s3_endpoint"} <= set(params), name
        if name not in ("ingest", "report"):
            assert {"s3_region", "store_uri"} <= set(params), name
    assert set(STORE_COMPONENTS) == {"ingest", "label", "train", "train_nodes", "transfer", "evaluate", "cross_fid",
                                     "report"}
