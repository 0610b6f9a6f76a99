"""KFP component: the run's report over every model and its row per model in the run registry
(``animegen.eval.report.run_report``, which runs ``animegen.eval.compare.run_compare``)."""
from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Markdown, Metrics, Output

from animegen.components.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report(
    conditional: Input[Metrics],
    manga: Input[Metrics],
    manga_scratch: Input[Metrics],
    character: Input[Metrics],
    character_scratch: Input[Metrics],
    dcgan: Input[Metrics],
    dcgan_conditional: Input[Metrics],
    cross_fid: Input[Metrics],
    report: Output[HTML],
    table: Output[Markdown],
    summary: Output[Metrics],
    report_dir: Output[Artifact],
    registry_uri: str = "auto",
    s3_endpoint: str = "",
    s3_region: str = "",
    job_name: str = "",
    job_id: str = "",
):
    """One table and plots over every model of the run (``report``, ``table``), every model's scalars in one Metrics
    artifact (``summary``), the whole report folder (``report_dir``: compare/ tables and plots, run.json), and a row
    per model in the run registry at ``registry_uri`` (s3://BUCKET/runs/ or a folder; "auto" = beside the run's
    artifacts, see ``animegen.store.registry.resolve_registry_uri``; "" = not recorded, logged).
    Each input is an evaluation's Metrics artifact, or the ``skip`` placeholder of a branch that did not run.
    Object-store keys come from the environment (the object-store secret, ``use_secret_as_env``); ``s3_endpoint`` /
    ``s3_region`` are set into it."""
    import json
    import shutil
    from pathlib import Path

    from animegen.components import runtime as rt
    from animegen.eval.report import ReportConfig, run_report

    rt.set_object_store_env(s3_endpoint, s3_region)
    inputs = {"conditional": conditional, "manga": manga, "manga_scratch": manga_scratch, "character": character,
              "character_scratch": character_scratch, "dcgan": dcgan, "dcgan_conditional": dcgan_conditional,
              "cross_fid": cross_fid}
    cfg = ReportConfig(job_name=job_name, job_id=job_id, registry_uri=registry_uri, report_uri=report.uri or "")
    evaluations = {name: json.loads(Path(a.path).read_text()) for name, a in inputs.items()}
    result = run_report(cfg, evaluations, rt.out_dir(report_dir))
    shutil.copyfile(result["report"], report.path)
    shutil.copyfile(result["markdown"], table.path)
    rt.log_scalars(summary, result["scalars"])
    rt.write_json(summary.path, result["scalars"])
    report_dir.metadata.update({"run_id": result["run_id"], "registry": str(result["registry"])})
    print(Path(result["markdown"]).read_text())
    print(f"report: {report.path}")
