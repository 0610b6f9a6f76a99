"""KFP component: fine-tune a trained Model on a new Dataset (``animegen.train.train`` with ``init_from``)."""
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
):
    """Start from ``init_model``'s weights (its architecture, widths and resolution are taken from its config.json)
    and train on ``dataset`` for ``kimg``. ``init_class``: the source class (or partial name such as "black hair",
    the mean of every class containing it) that unmapped new classes start from, or that an unconditional target
    is folded into; ``class_map``: new class -> old class; ``freeze_d``: frozen discriminator blocks.
    ``init_report.json`` in the Model says what was loaded, remapped and skipped."""
    import json
    from pathlib import Path

    from animegen.components import runtime as rt
    from animegen.train import TrainConfig
    from animegen.train import train as run_train

    source = json.loads((Path(init_model.path) / "config.json").read_text())
    arch_fields = ("arch", "cond_mode", "resolution", "z_dim", "w_dim", "mapping_layers", "channel_base",
                   "channel_max", "loss")
    out = rt.out_dir(model)
    cfg = rt.build_config(TrainConfig, {**{k: source[k] for k in arch_fields if k in source}, **options}, {
        "data": dataset.path, "out": str(out), "init_from": init_model.path, "init_class": rt.opt(init_class),
        "class_map": dict(class_map), "freeze_d": freeze_d, "conditional": conditional, "kimg": kimg,
        "batch": rt.opt(batch), "r1_gamma": None if r1_gamma < 0 else r1_gamma,
        "snapshot_kimg": rt.opt(snapshot_kimg), "seed": seed, "device": device, "progress": False})
    result = run_train(cfg, resume=(out / "checkpoint.pt").is_file())
    model.metadata.update({"arch": cfg.arch, "conditional": conditional, "kimg": result.images_seen / 1000,
                           "init_class": init_class, "img_per_s": result.img_per_s, "device": result.device})
    rt.model_summary(summary, out, f"transfer ({cfg.arch}, init class {init_class or 'mean'}): "
                                   f"{result.images_seen / 1000:g} kimg")
