"""The report stage: one table and plots over every model of a pipeline run, and the run's registry record.

``run_report(cfg, evaluations, out_dir)`` takes each model's Evaluation metrics (the JSON the evaluate component
writes to its Metrics artifact: metrics.json plus ``model_name``, ``train_config`` and the URIs of its input and
output artifacts), or ``{"skipped": reason}`` for a branch a parameter turned off, keyed by model name; the
cross-dataset FID, when there is one, under the key ``cross_fid``. It writes into ``out_dir``:

- ``compare/``: ``animegen compare`` over the run's evaluations (compare.txt/csv/json/html, fid.png,
  fid_over_kimg.png when snapshot FIDs were evaluated);
- ``report.html`` (self-contained): the table and plots, the two papers' comparisons side by side (transfer vs
  from scratch at the same budget; DCGAN vs StyleGAN: FID, training time, peak memory), the cross-dataset FID,
  the skipped branches;
- ``report.md``: the same table in Markdown (the KFP UI renders it);
- ``run.json``: the run's registry record, also written to the registry (:func:`animegen.store.registry.write_run`)
  when ``cfg.registry_uri`` is given (``auto``, the pipeline's default: beside the run's artifacts, see
  :func:`animegen.store.registry.resolve_registry_uri`): a row per model with its metrics and artifact URIs, the
  run's configuration (each model's training and evaluation config), and ``tasks``: ``{task: {output: URI}}`` of
  the artifacts the report knows, from which ``animegen pipeline compile --only STAGE --from-run RUN_ID --registry
  URI`` builds a pipeline that imports them instead of recomputing them, and which the single-stage pipelines
  (``animegen.pipelines.single``) take as run parameters (see pipelines/README.md).

It also names each evaluation's scalars as the KFP UI shows them (:func:`evaluation_scalars`), for the evaluate and
report components.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animegen.config import Config
from animegen.eval.html import esc, fmt, html_page, html_table
from animegen.run_layout import CROSS_FID, MODELS, TAGGER
from animegen.utils import atomic_write_text, finite, write_json

SKIPPED = "skipped"  # key of the JSON a skipped branch writes in place of an Evaluation's metrics
CROSS_FID_KEY = "cross_fid"  # the key of the cross-dataset FID among run_report's evaluations
# Scalars of an Evaluation's metrics.json logged to the KFP Metrics artifact, and their names there: every name
# ends in _<model> so the KFP Compare page lines runs up per model (fid_conditional, acc_both_manga, ...).
EVAL_SCALARS = {
    "fid": "fid", "fid_psi": "fid_psi", "kid": "kid", "kid_psi": "kid_psi",
    "hair_accuracy": "acc_hair", "eye_accuracy": "acc_eye", "both_accuracy": "acc_both",
    "hair_accuracy_psi": "acc_hair_psi", "eye_accuracy_psi": "acc_eye_psi", "both_accuracy_psi": "acc_both_psi",
}
TRAIN_SCALARS = {"wall_s": "train_s", "img_per_s": "img_per_s", "peak_memory_bytes": "peak_mem_mib"}


@dataclass
class ReportConfig(Config):
    """Options of the report stage."""

    run_id: str = ""  # the run's registry id ("" = from job_name / job_id, see run_id_for)
    job_name: str = ""  # the KFP job (locally: the run folder's name)
    job_id: str = ""
    registry_uri: str = ""  # s3://BUCKET/runs/ or a folder to record the run in ("" = not recorded; "auto": see
    # animegen.store.registry.resolve_registry_uri, derived from report_uri)
    report_uri: str = ""  # where the report artifact lives (recorded; a remote URI adds job_id to the run id)

    def resolved_run_id(self) -> str:
        return self.run_id or run_id_for(self.job_name, self.job_id, remote="://" in self.report_uri)


def evaluation_scalars(doc: dict[str, Any], model_name: str) -> dict[str, float]:
    """The KFP metric names and values of one Evaluation (``fid_<model>``, ``acc_both_<model>``, training time
    ``train_s_<model>``, ``img_per_s_<model>``, ``peak_mem_mib_<model>``); non-finite and missing values are left
    out (the UI cannot show them)."""
    out = {}
    for key, name in EVAL_SCALARS.items():
        value = finite(doc.get(key))
        if value is not None and not (key.endswith("_psi") and doc.get("psi") == 1.0):
            out[f"{name}_{model_name}"] = value
    train = doc.get("train") or {}
    for key, name in TRAIN_SCALARS.items():
        value = finite(train.get(key))
        if value is not None:
            out[f"{name}_{model_name}"] = value / 2**20 if key == "peak_memory_bytes" else value
    return out


RUN_ID_RE = re.compile(r"[^A-Za-z0-9._-]+")


def write_skipped(branch: str, reason: str, dataset_dir: str | Path, metrics_path: str | Path) -> dict[str, str]:
    """What a branch that a parameter turned off leaves (the pipeline's ``skip`` task): ``{"skipped": reason,
    "branch": branch}`` as its metrics, which run_report lists as skipped, and an empty placeholder dataset folder
    holding the same document as SKIPPED.json (never trained on: every consumer of a branch's dataset sits behind
    the same switch)."""
    doc = {SKIPPED: reason, "branch": branch}
    write_json(Path(dataset_dir) / "SKIPPED.json", doc)
    write_json(metrics_path, doc)
    return doc


def run_id_for(job_name: str, job_id: str, remote: bool) -> str:
    """The registry id of a run: the KFP job name (locally the run folder's name, so ``--from-run`` and the registry
    agree); on a cluster, where run names may repeat, with the first 8 characters of the job id appended."""
    name = RUN_ID_RE.sub("-", job_name or "").strip("-._")[:100]
    short = RUN_ID_RE.sub("", job_id or "")[:8]
    if not name:
        name = RUN_ID_RE.sub("-", job_id or "").strip("-._")[:100] or "run"
    elif remote and short and short not in name:
        name = f"{name}-{short}"
    return name if name[0].isalnum() else f"r{name}"


def _is_skipped(doc: dict[str, Any] | None) -> bool:
    return not doc or SKIPPED in doc


def task_outputs(evaluations: dict[str, dict[str, Any]], cross: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """``{task: {output: URI}}`` of every artifact the evaluations name, by the DAG's task names."""
    tasks: dict[str, dict[str, str]] = {}

    def put(task_output: tuple[str, str], uri: str | None) -> None:
        if uri:
            tasks.setdefault(task_output[0], {})[task_output[1]] = uri

    for name, doc in evaluations.items():
        if _is_skipped(doc) or name not in MODELS:
            continue
        spec, uris = MODELS[name], doc.get("artifacts") or {}
        put(spec.model, uris.get("model"))
        put(spec.dataset, uris.get("dataset"))
        put(TAGGER, uris.get("tagger"))
        for output in ("evaluation", "metrics", "report"):
            put((spec.evaluate, output), uris.get(output))
    if not _is_skipped(cross):
        uris = cross.get("artifacts") or {}
        put(CROSS_FID.a, uris.get("a"))
        put(CROSS_FID.b, uris.get("b"))
        put((CROSS_FID.task, "metrics"), uris.get("metrics"))
    return tasks


def _comparisons(done: dict[str, dict[str, Any]]) -> str:
    """The two papers' comparisons: transfer vs from scratch (same budget), DCGAN vs StyleGAN."""
    parts = []
    rows = []
    for target in ("manga", "character"):
        t, s = done.get(target), done.get(f"{target}_scratch")
        if t and s:
            ft, fs = finite(t.get("fid")), finite(s.get("fid"))
            gain = f"{fs - ft:+.2f}" if ft is not None and fs is not None else "—"
            kimg = (t.get("model") or {}).get("kimg")
            rows.append([esc(target), esc(fmt(ft)), esc(fmt(fs)), esc(gain), esc(fmt(kimg))])
    if rows:
        parts += ["<h2>Transfer learning vs training from scratch (same budget)</h2>",
                  html_table(["target set", "FID transfer", "FID from scratch", "scratch − transfer", "kimg"], rows),
                  '<p class="note">lower FID is better; a positive difference means the transfer helped.</p>']
    rows = []
    for name in ("conditional", "dcgan", "dcgan_conditional"):
        d = done.get(name)
        if d:
            m, t = d.get("model") or {}, d.get("train") or {}
            rows.append([esc(name), esc(f"{m.get('arch', '?')}{' (conditional)' if m.get('conditional') else ''}"),
                         esc(fmt(finite(d.get("fid")))), fmt(d.get("both_accuracy"), "pct"),
                         esc(fmt(t.get("wall_s"), "s")), esc(fmt(t.get("img_per_s"))),
                         esc(fmt(t.get("peak_memory_bytes"), "bytes")), esc(str(t.get("device") or "—"))])
    if len(rows) > 1:
        parts += ["<h2>DCGAN vs StyleGAN (main set)</h2>",
                  html_table(["model", "architecture", "FID", "both colours ✓", "training time", "img/s",
                              "peak memory", "device"], rows, left=2)]
    return "".join(parts)


def _markdown(done: dict[str, dict[str, Any]], skipped: dict[str, str], cross: dict[str, Any] | None,
              run_id: str) -> str:
    lines = [f"# animegen run {run_id}", "",
             "| model | arch | FID | FID ψ | KID | both colours ✓ | kimg | train time | peak memory |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, d in done.items():
        m, t = d.get("model") or {}, d.get("train") or {}
        lines.append(f"| {name} | {m.get('arch', '?')}{' cond.' if m.get('conditional') else ''} | "
                     f"{fmt(finite(d.get('fid')))} | {fmt(finite(d.get('fid_psi')))} (ψ {fmt(d.get('psi'))}) | "
                     f"{fmt(finite(d.get('kid')))} | {fmt(d.get('both_accuracy'), 'pct')} | {fmt(m.get('kimg'))} | "
                     f"{fmt(t.get('wall_s'), 's')} | {fmt(t.get('peak_memory_bytes'), 'bytes')} |")
    if not _is_skipped(cross):
        lines += ["", f"Cross-dataset FID ({cross.get('name')}): {fmt(finite(cross.get('fid')))} "
                      f"({cross['a']['n']} vs {cross['b']['n']} images)"]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items())]
    return "\n".join(lines) + "\n"


def _studio_html(run_id: str, registry: str | None, out: Path) -> str:
    """How to look at this run's models interactively (``animegen studio``): from the registry record, from the
    run's folder when this is a local run, and on the cluster (manifests/studio)."""
    lines = []
    if registry:
        lines.append(f"animegen studio run:{run_id} --registry {registry}")
    run_folder = out.parent.parent  # a local (kfp.local) run: <run>/report/<artifact>
    if (run_folder / "train-conditional").is_dir():
        lines.append(f"animegen studio {run_folder}")
    cmds = "".join(f"<pre>{esc(line)}</pre>" for line in lines)
    return (f"{cmds}<p class=\"note\">then open http://127.0.0.1:8000/: pick a model and its hair and eye colour, "
            "reroll, move psi, keep a face, mix its coarse / middle / fine styles, loop between two faces, and "
            "compare the same seeds across this run's models (transfer vs scratch) with their FID and accuracy. "
            f"On the cluster: <code>kubectl apply -k manifests/studio</code> with STUDIO_MODELS=run:{esc(run_id)} "
            "(manifests/README.md).</p>")


def run_report(cfg: ReportConfig, evaluations: dict[str, dict[str, Any] | None], out_dir: str | Path) -> dict[str, Any]:
    """Write the run's report into ``out_dir`` and, when ``cfg.registry_uri`` is given, its registry record (see the
    module docstring). Returns ``{"run_id", "report", "markdown", "record", "scalars", "registry"}`` (paths, the KFP
    scalars, the registry URI written or the reason none was)."""
    from animegen.eval.compare import CompareConfig, run_compare

    run_id = cfg.resolved_run_id()
    evaluations = dict(evaluations)
    cross_fid = evaluations.pop(CROSS_FID_KEY, None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = {k: v for k, v in evaluations.items() if not _is_skipped(v)}
    skipped = {k: (v or {}).get(SKIPPED, "no evaluation") for k, v in evaluations.items() if _is_skipped(v)}
    if cross_fid is not None and _is_skipped(cross_fid):
        skipped["cross_fid"] = cross_fid.get(SKIPPED, "skipped")
    if not done:
        raise ValueError("the report needs at least one evaluated model; every branch was skipped")

    with tempfile.TemporaryDirectory(prefix="animegen-report-") as tmp:
        root = Path(tmp) / run_id
        for i, (name, doc) in enumerate(done.items()):  # numbered folders keep the DAG's order in the table
            (root / f"{i:02d}-{name}").mkdir(parents=True)
            (root / f"{i:02d}-{name}" / "metrics.json").write_text(json.dumps(doc))
        compare_dir = run_compare(CompareConfig(), [str(root)], out / "compare")
    compare_html = (compare_dir / "compare.html").read_text()
    body = compare_html.split("<body>", 1)[-1].rsplit("</body>", 1)[0]
    body = re.sub(r"<h1>.*?</h1>", "", body, count=1, flags=re.S)

    parts = [f"<h1>animegen pipeline run {esc(run_id)}</h1>",
             f'<p class="sub">{len(done)} models evaluated'
             + (f"; skipped: {esc(', '.join(skipped))}" if skipped else "") + "</p>",
             "<h2>All models</h2>", body, _comparisons(done)]
    if not _is_skipped(cross_fid):
        c = cross_fid
        parts += ["<h2>Cross-dataset FID</h2>",
                  html_table(["sets", "FID", "KID", "images"],
                             [[esc(c.get("name")), esc(fmt(finite(c.get("fid")))), esc(fmt(finite(c.get("kid")))),
                               esc(f"{c['a']['n']} vs {c['b']['n']}")]], left=1),
                  '<p class="note">how far apart the two transfer targets are (FID between their real images).</p>']
    if skipped:
        parts += ["<h2>Skipped</h2>", html_table(["branch", "reason"],
                                                 [[esc(k), esc(v)] for k, v in skipped.items()])]
    from animegen.store.registry import resolve_registry_uri, write_run

    registry, why = resolve_registry_uri(cfg.registry_uri, cfg.report_uri)
    parts += ["<h2>Open these models in the studio</h2>", _studio_html(run_id, registry, out)]
    report = out / "report.html"
    atomic_write_text(report, html_page(f"animegen run {run_id}", "\n".join(parts)))
    markdown = out / "report.md"
    atomic_write_text(markdown, _markdown(done, skipped, cross_fid, run_id))

    scalars: dict[str, float] = {}
    for name, doc in done.items():
        scalars.update(evaluation_scalars(doc, name))
    if not _is_skipped(cross_fid):
        for key in ("fid", "kid"):
            value = finite(cross_fid.get(key))
            if value is not None:
                scalars[f"{key}_{cross_fid.get('name')}"] = value

    config = {"models": {name: {"train": doc.get("train_config"), "evaluate": doc.get("config"),
                                "dataset": doc.get("dataset")} for name, doc in done.items()},
              "cross_fid": None if _is_skipped(cross_fid) else cross_fid.get("config")}
    models = {name: {"metrics": doc, "artifacts": doc.get("artifacts") or {}} for name, doc in done.items()}
    extra = {"pipeline": "animegen", "tasks": task_outputs(evaluations, cross_fid), "skipped": skipped,
             "cross_fid": None if _is_skipped(cross_fid) else
             {k: cross_fid.get(k) for k in ("name", "fid", "kid", "kid_std", "a", "b", "extractor")},
             "kfp": {"job_name": cfg.job_name, "job_id": cfg.job_id},
             "artifacts": {"report": cfg.report_uri} if cfg.report_uri else {}}
    record = {"run_id": run_id, "params": config, "models": models, **extra}
    record_path = out / "run.json"
    write_json(record_path, record)
    if registry:
        written = write_run(registry, run_id, config, models, extra)
        print(f"registry: run {run_id} written to {written} ({why})")
    else:
        written = None
        print(f"registry: skipped ({why}; give s3://BUCKET/runs/ or a folder to record the run)")
    return {"run_id": run_id, "report": report, "markdown": markdown, "record": record_path, "scalars": scalars,
            "registry": written or f"skipped: {why}"}
