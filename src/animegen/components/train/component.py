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
