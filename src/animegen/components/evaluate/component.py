"""KFP components: evaluate one Model (``animegen.eval.evaluate.run_evaluate``) and the cross-dataset FID between two
Datasets (``run_fid``). Never cached: an evaluation is what one reruns after changing how it is measured."""
from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from animegen.components.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    model: Input[Model],
    dataset: Input[Dataset],
    tagger: Input[Model],
    model_name: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
    report: Output[HTML],
    hair_confusion: Output[ClassificationMetrics],
    eye_confusion: Output[ClassificationMetrics],
    n_fid: int = 10000,
    psi: float = 0.6,
    k_per_class: int = 100,
    max_reference: int = 0,
    snapshots: bool = False,
    grids: bool = True,
    batch: int = 0,
    seed: int = 0,
    device: str = "auto",
    options: dict = {},
    s3_endpoint: str = "",
    s3_region: str = "",
    store_uri: str = "",
):
    """FID / KID against ``dataset`` (at psi 1 and ``psi``), per-class accuracy scored by ``tagger`` (conditional
    models), grids and report.html into ``evaluation``. ``metrics``: the scalars under stable names ending in
    ``_<model_name>`` (fid_, fid_psi_, kid_, acc_hair_, acc_eye_, acc_both_, train_s_, img_per_s_, peak_mem_mib_) and
    the metrics.json (with the input artifacts' URIs) as its file; ``report``: the self-contained report.html;
    ``hair_confusion`` / ``eye_confusion``: requested vs predicted colour. ``max_reference``, ``batch``: 0 = all /
    the extractor's default. ``options``: any other EvalConfig field."""
    import json
    import shutil
    from pathlib import Path

    from animegen.components import runtime as rt
    from animegen.eval.evaluate import EvalConfig, run_evaluate

    rt.set_object_store_env(s3_endpoint, s3_region, store_uri)

    rt.check_model_name(model_name)
    cfg = rt.build_config(EvalConfig, options, {
        "n_fid": n_fid, "psi": psi, "k_per_class": k_per_class, "max_reference": max_reference,
        "snapshots": snapshots, "grids": grids, "batch": batch, "seed": seed, "device": device,
        "tagger": tagger.path})
    out = run_evaluate(cfg, model.path, dataset.path, rt.out_dir(evaluation))
    doc = json.loads((out / "metrics.json").read_text())
    doc["model"]["name"] = model_name
    doc["model_name"] = model_name
    doc["train_config"] = json.loads((Path(model.path) / "config.json").read_text())
    doc["artifacts"] = {"model": model.uri, "dataset": dataset.uri, "tagger": tagger.uri,
                        "evaluation": evaluation.uri, "metrics": metrics.uri, "report": report.uri}
    rt.log_scalars(metrics, rt.evaluation_scalars(doc, model_name))
    rt.write_json(metrics.path, doc)  # a file at metrics.path: KFP can then cache and store it like any artifact
    shutil.copyfile(out / "report.html", report.path)
    accuracy = doc.get("accuracy") or {}
    reason = doc.get("accuracy_skipped") or "no per-class accuracy"
    rt.log_confusion(hair_confusion, (accuracy.get("confusion") or {}).get("hair"), reason)
    rt.log_confusion(eye_confusion, (accuracy.get("confusion") or {}).get("eye"), reason)
    print(f"{model_name}: FID {doc.get('fid')} (psi 1), {doc.get('fid_psi')} (psi {doc.get('psi')}); "
          f"both-colours accuracy {doc.get('both_accuracy')}")


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def cross_fid(
    a: Input[Dataset],
    b: Input[Dataset],
    name: str,
    metrics: Output[Metrics],
    max_images: int = 0,
    device: str = "auto",
    options: dict = {},
    s3_endpoint: str = "",
    s3_region: str = "",
    store_uri: str = "",
):
    """FID / KID between the Datasets ``a`` and ``b`` (e.g. the monochrome and the single-character sets: how far
    apart the two transfer targets are). ``metrics``: ``fid_<name>``, ``kid_<name>`` and fid.json as its file.
    ``max_images``: 0 = every image of each side. ``options``: any other FidConfig field."""
    import json
    import tempfile
    from pathlib import Path

    from animegen.components import runtime as rt
    from animegen.eval.evaluate import FidConfig, run_fid

    rt.set_object_store_env(s3_endpoint, s3_region, store_uri)

    rt.check_model_name(name)
    cfg = rt.build_config(FidConfig, options, {"max_images": max_images, "device": device})
    with tempfile.TemporaryDirectory(prefix="animegen-fid-") as tmp:
        doc = json.loads(Path(run_fid(cfg, a.path, b.path, tmp)).read_text())
    doc.update(name=name, artifacts={"a": a.uri, "b": b.uri, "metrics": metrics.uri})
    rt.log_scalars(metrics, {f"{k}_{name}": v for k in ("fid", "kid") if (v := rt.finite(doc.get(k))) is not None})
    rt.write_json(metrics.path, doc)
    print(f"{name}: FID {doc.get('fid')}, KID {doc.get('kid')} ({doc['a']['n']} vs {doc['b']['n']} images)")
