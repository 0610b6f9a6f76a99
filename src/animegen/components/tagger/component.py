"""KFP component: train the hair/eye colour tagger (``animegen.labels.colour_train.run_tagger_train``)."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from animegen.components.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def tagger(
    dataset: Input[Dataset],
    tagger: Output[Model],
    metrics: Output[Metrics],
    epochs: int = 10,
    width: int = 32,
    resolution: int = 64,
    batch: int = 128,
    seed: int = 0,
    device: str = "auto",
    options: dict = {},
):
    """Train the colour tagger on the labelled ``dataset``; it scores the per-class accuracy of generated images in
    every evaluation. ``metrics``: held-out hair / eye accuracy (``tagger_acc_hair``, ``tagger_acc_eye``)."""
    from animegen.components import runtime as rt
    from animegen.labels.colour_train import TaggerTrainConfig, run_tagger_train

    cfg = rt.build_config(TaggerTrainConfig, options, {"epochs": epochs, "width": width, "resolution": resolution,
                                                       "batch": batch, "seed": seed, "device": device})
    out = rt.out_dir(tagger)
    result = run_tagger_train(cfg, dataset.path, out)
    scalars = {f"tagger_acc_{k}": rt.finite(result.get(f"{k}_accuracy")) for k in ("hair", "eye")}
    rt.log_scalars(metrics, {k: v for k, v in scalars.items() if v is not None})
    rt.write_json(metrics.path, result)
