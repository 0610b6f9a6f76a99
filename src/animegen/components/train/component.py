"""KFP component: train a GAN from scratch (``animegen.train.run_train``); GPU image, GPU node pool."""
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from animegen.components.container_images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    model: Output[Model],
    summary: Output[HTML],
    arch: str = "stylegan",
    conditional: bool = False,
    resolution: int = 64,
    kimg: float = 10.0,
    batch: int = 0,
    z_dim: int = 0,
    w_dim: int = 512,
    mapping_layers: int = 8,
    channel_base: int = 0,
    channel_max: int = 512,
    cond_mode: str = "",
    r1_gamma: float = -1.0,
    augment: str = "",
    snapshot_kimg: float = 0.0,
    seed: int = 0,
    device: str = "auto",
    options: dict = {},
    gpus: str = "1",
    checkpoint_root: str = "",
    run_id: str = "",
    task_name: str = "",
    s3_endpoint: str = "",
    s3_region: str = "",
    store_uri: str = "",
):
    """Train ``arch`` (dcgan | stylegan | stylegan2, ``conditional`` on the dataset's classes) on ``dataset`` for
    ``kimg`` thousand images into the Model ``model`` (checkpoint.pt, config.json, train_log.jsonl, loss.png, samples/,
    snapshots/). 0, '' (and r1_gamma < 0) mean the architecture's default (augment '': ADA for a StyleGAN2 on
    a small set). ``options``: any other TrainConfig field.
    A retried task continues the checkpoint its previous attempt left in ``model`` (exact resume).
    ``gpus``, the store and the checkpoint upload (every ``checkpoint_interval_s``, an ``options`` field, under
    ``<checkpoint_root>/<run_id>/<task_name>``, so a retry resumes): ``runtime.training_task``."""
    from animegen.components import runtime as rt
    from animegen.train import TrainConfig
    from animegen.train.launch import train_processes

    device, nproc, checkpoint_uri = rt.training_task(gpus, device, s3_endpoint, s3_region, store_uri,
                                                     checkpoint_root, run_id, task_name)  # read at run time

    out = rt.out_dir(model)
    cfg = rt.build_config(TrainConfig, options, {
        "arch": arch, "conditional": conditional, "resolution": resolution,
        "kimg": kimg, "batch": batch, "z_dim": z_dim, "w_dim": w_dim,
        "mapping_layers": mapping_layers, "channel_base": channel_base, "channel_max": channel_max,
        "cond_mode": cond_mode, "r1_gamma": r1_gamma, "augment": augment,
        "snapshot_kimg": snapshot_kimg, "seed": seed, "device": device, "progress": False,
        "checkpoint_uri": checkpoint_uri})
    result = train_processes(cfg, dataset.path, out, resume=(out / "checkpoint.pt").is_file(), nproc=nproc)
    model.metadata.update({"arch": arch, "conditional": conditional, "kimg": result.images_seen / 1000,
                           "img_per_s": result.img_per_s, "device": result.device})
    kind = f"{arch}{' (conditional)' if conditional else ''}"
    rt.model_summary(summary, out, f"{kind}: {result.images_seen / 1000:g} kimg")


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_nodes(
    dataset: Input[Dataset],
    model: Output[Model],
    summary: Output[HTML],
    arch: str = "stylegan",
    conditional: bool = False,
    resolution: int = 64,
    kimg: float = 10.0,
    batch: int = 0,
    z_dim: int = 0,
    w_dim: int = 512,
    mapping_layers: int = 8,
    channel_base: int = 0,
    channel_max: int = 512,
    cond_mode: str = "",
    r1_gamma: float = -1.0,
    augment: str = "",
    snapshot_kimg: float = 0.0,
    seed: int = 0,
    options: dict = {},
    nodes: str = "2",
    gpus: str = "1",
    gpu_image: str = GPU_IMAGE,
    gpu_accelerator: str = "nvidia.com/gpu",
    gpu_cpu_request: str = "",
    gpu_cpu_limit: str = "",
    gpu_memory_request: str = "",
    gpu_memory_limit: str = "",
    gpu_node_selector: dict = {},
    gpu_tolerations: list = [],
    trainer_kind: str = "TrainJob",
    trainer_runtime: str = "torch-distributed",
    credentials_secret: str = "",
    checkpoint_root: str = "",
    run_id: str = "",
    task_name: str = "",
    s3_endpoint: str = "",
    s3_region: str = "",
    store_uri: str = "",
):
    """Train as ``train`` does, on ``nodes`` x ``gpus`` GPUs: submit a Kubeflow Trainer TrainJob (``trainer_kind``
    PyTorchJob: the Training Operator's) running ``gpu_image`` on every node with the GPU tasks' accelerator, CPU,
    memory, node selector and tolerations, watch it, and take the Model its rank 0 uploaded to
    ``<checkpoint_root>/<run_id>/<task_name>`` (``animegen.train.multinode``). The pods read ``dataset`` from the
    object store, with the key pair of the secret ``credentials_secret``. A retried task finds its job again."""
    from animegen.components import runtime as rt
    from animegen.train import TrainConfig
    from animegen.train.multinode import object_store_env, train_on_nodes
    from animegen.train.remote import task_checkpoint_uri

    rt.set_object_store_env(s3_endpoint, s3_region, store_uri)
    out = rt.out_dir(model)
    cfg = rt.build_config(TrainConfig, options, {
        "arch": arch, "conditional": conditional, "resolution": resolution,
        "kimg": kimg, "batch": batch, "z_dim": z_dim, "w_dim": w_dim,
        "mapping_layers": mapping_layers, "channel_base": channel_base, "channel_max": channel_max,
        "cond_mode": cond_mode, "r1_gamma": r1_gamma, "augment": augment,
        "snapshot_kimg": snapshot_kimg, "seed": seed, "device": "auto", "progress": False,
        "checkpoint_uri": task_checkpoint_uri(checkpoint_root, run_id, task_name)})
    per_node = {k: v for k, v in (("cpu", gpu_cpu_request), ("memory", gpu_memory_request)) if v}
    limits = {k: v for k, v in (("cpu", gpu_cpu_limit), ("memory", gpu_memory_limit)) if v}
    result = train_on_nodes(cfg, dataset.uri, out, nodes=int(nodes), gpus_per_node=int(gpus), image=gpu_image,
                            accelerator=gpu_accelerator, run_id=run_id, task_name=task_name, kind=trainer_kind,
                            runtime=trainer_runtime, requests=per_node, limits=limits,
                            node_selector=dict(gpu_node_selector), tolerations=list(gpu_tolerations),
                            env=object_store_env(credentials_secret, s3_endpoint, s3_region, store_uri))
    model.metadata.update({"arch": arch, "conditional": conditional, "kimg": result.images_seen / 1000,
                           "img_per_s": result.img_per_s, "device": result.device, "nodes": int(nodes)})
    kind = f"{arch}{' (conditional)' if conditional else ''}"
    rt.model_summary(summary, out, f"{kind}: {result.images_seen / 1000:g} kimg on {nodes} nodes x {gpus} GPUs")
