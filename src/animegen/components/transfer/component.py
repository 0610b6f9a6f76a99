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
    """Start from ``init_model``'s weights (its architecture, widths and resolution are the source's unless
    ``options`` set them: ``animegen.train.run_transfer``) and train on ``dataset`` for ``kimg``. ``init_class``:
    the source class (or partial name such as "black hair", the mean of every class containing it) that unmapped
    new classes start from, or that an unconditional target is folded into; ``class_map``: new class -> old
    class; ``freeze_d``: frozen discriminator blocks; ``augment``: D's augmentation ('' = the default: ADA for a
    StyleGAN2 on a small set). ``init_report.json`` in the Model says what was loaded, remapped and skipped.
    ``gpus``, the store and the checkpoint upload (every ``checkpoint_interval_s``, an ``options`` field, under
    ``<checkpoint_root>/<run_id>/<task_name>``, so a retry resumes): ``runtime.training_task``."""
    from animegen.components import runtime as rt
    from animegen.train import TrainConfig
    from animegen.train.launch import train_processes

    device, nproc, checkpoint_uri = rt.training_task(gpus, device, s3_endpoint, s3_region, store_uri,
                                                     checkpoint_root, run_id, task_name)  # read at run time

    out = rt.out_dir(model)
    cfg = rt.build_config(TrainConfig, options, {
        "init_class": init_class, "class_map": dict(class_map), "freeze_d": freeze_d,
        "conditional": conditional, "kimg": kimg, "batch": batch,
        "r1_gamma": r1_gamma, "augment": augment, "snapshot_kimg": snapshot_kimg, "seed": seed,
        "device": device, "progress": False,
        "checkpoint_uri": checkpoint_uri})
    result = train_processes(cfg, dataset.path, out, resume=(out / "checkpoint.pt").is_file(), nproc=nproc,
                             init_model=init_model.path, keep=options)
    arch = rt.read_json(out / "config.json")["arch"]  # the source's, unless options set another
    model.metadata.update({"arch": arch, "conditional": conditional, "kimg": result.images_seen / 1000,
                           "init_class": init_class, "img_per_s": result.img_per_s, "device": result.device})
    rt.model_summary(summary, out, f"transfer ({arch}, init class {init_class or 'mean'}): "
                                   f"{result.images_seen / 1000:g} kimg")
