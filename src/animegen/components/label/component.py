"""KFP component: tags -> hair/eye classes, the Labelled Dataset (``animegen.labels.label.run_label``)."""
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from animegen.components.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def label(
    dataset: Input[Dataset],
    labelled: Output[Dataset],
    summary: Output[HTML],
    tags: str = "auto",
    mode: str = "pair",
    threshold: float = 0.7,
    min_per_class: int = 1,
    hair: str = "",
    eyes: str = "",
    options: dict = {},
    s3_endpoint: str = "",
    s3_region: str = "",
    store_uri: str = "",
):
    """Label ``dataset`` with the class rules of the conditional StyleGAN paper; ``summary`` shows the class
    histogram and the verification grid. ``hair`` / ``eyes``: comma-separated tags to keep ("" = the paper's);
    ``options``: any other LabelConfig field (``rules`` merged with the rule parameters above)."""
    from animegen.components import runtime as rt
    from animegen.data.dataset import read_packed
    from animegen.labels.label import LabelConfig, run_label

    rt.set_object_store_env(s3_endpoint, s3_region, store_uri)

    options = dict(options)
    rules = rt.merge(options.pop("rules", {}), {"mode": mode, "threshold": threshold, "min_per_class": min_per_class,
                                                "hair": rt.csv_list(hair), "eyes": rt.csv_list(eyes)})
    cfg = rt.build_config(LabelConfig, options, {"tags": tags, "rules": rules})
    out = run_label(cfg, dataset.path, rt.out_dir(labelled))
    packed = read_packed(out)
    labelled.metadata.update({"count": packed.manifest["count"], "num_classes": packed.manifest["num_classes"],
                              "label_kind": packed.manifest["label_kind"], "classes": packed.classes["names"]})
    rt.dataset_summary(summary, packed, "Labelled dataset",
                       figures=[("images per class", out / "class_histogram.png"),
                                ("verification grid: a row per class", out / "verification_grid.png")])
