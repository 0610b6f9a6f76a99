"""KFP component: fine-tune a trained Model on a new Dataset (``animegen.train.run_transfer``)."""
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Model, Output

from animegen.components.container_images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def transfer(
    init_model: Input[Model],
    dataset: Input[Dataset],
    model: Output[Model],
    summary: Output[HTML],
    init_class: str = "",
    class_map: dict = {},
    freeze_d: int = 0,
    conditional: bool = False,
    kimg: float = 10.0,
    batch: int = 0,
    r1_gamma: float = -1.0,
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
    """Start from ``init_model``'s weights (its architecture, widths and resolution are the source's unless
    ``options`` set them: ``animegen.train.run_transfer``) and train on ``dataset`` for ``kimg``. ``init_class``:
    the source class (or partial name such as "black hair", the mean of every class containing it) that unmapped
    new classes start from, or that an unconditional target is folded into; ``class_map``: new class -> old
    class; ``freeze_d``: frozen discriminator blocks. ``init_report.json`` in the Model says what was loaded,
    remapped and skipped.
    ``checkpoint_root``: where the checkpoint is uploaded every ``checkpoint_interval_s`` (an ``options`` field,
    default 600) and at the end, under ``<run_id>/<task_name>`` (the pipeline passes the run's id and the task's
    name); a retried attempt, whose ``model`` folder is empty again, restores the last complete upload and resumes
    it exactly ('' = $ANIMEGEN_CHECKPOINTS, else $ANIMEGEN_STORE/checkpoints, else no upload). ``s3_endpoint`` /
    ``s3_region``: the object store's (keys from the environment)."""
    from animegen.components import runtime as rt
    from animegen.train import TrainConfig, run_transfer
    from animegen.train.remote import task_checkpoint_uri

    rt.set_object_store_env(s3_endpoint, s3_region, store_uri)
    device = rt.launch_gpus(gpus, device)  # the GPU count is a run parameter: read it now, not at compile time

    out = rt.out_dir(model)
    cfg = rt.build_config(TrainConfig, options, {
        "init_class": init_class, "class_map": dict(class_map), "freeze_d": freeze_d,
        "conditional": conditional, "kimg": kimg, "batch": batch,
        "r1_gamma": r1_gamma, "snapshot_kimg": snapshot_kimg, "seed": seed,
        "device": device, "progress": False,
        "checkpoint_uri": task_checkpoint_uri(checkpoint_root, run_id, task_name) or None})
    result = run_transfer(cfg, init_model.path, dataset.path, out, resume=(out / "checkpoint.pt").is_file(),
                          keep=options)
    arch = rt.read_json(out / "config.json")["arch"]  # the source's, unless options set another
    model.metadata.update({"arch": arch, "conditional": conditional, "kimg": result.images_seen / 1000,
                           "init_class": init_class, "img_per_s": result.img_per_s, "device": result.device})
    rt.model_summary(summary, out, f"transfer ({arch}, init class {init_class or 'mean'}): "
                                   f"{result.images_seen / 1000:g} kimg")
