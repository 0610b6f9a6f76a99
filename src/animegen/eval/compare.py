"""Compare evaluations across models and runs: one table of FID, KID, accuracies, training time and memory.

Sources (any mix, each given as a path or URI):

- a local Evaluation directory (its ``metrics.json``, written by ``animegen evaluate``), that metrics.json itself,
  or any folder holding several of them at any depth;
- a local folder or an object-store prefix laid out as the **run registry** below.

Run registry layout (the pipeline writes it; ``compare`` reads it)::

    s3://BUCKET[/PREFIX]/runs/<run_id>/run.json                  one per pipeline run
    s3://BUCKET[/PREFIX]/runs/<run_id>/metrics/<model>.json      one Evaluation metrics.json per evaluated model

``run.json`` is a JSON object: ``run_id`` (str, the folder name), ``created`` (ISO-8601 UTC), ``pipeline`` (name),
``status`` ("succeeded", "failed", ...), ``params`` (the run's parameters), ``artifacts`` (name -> URI of the
Dataset / Model / Evaluation artifacts); only ``run_id`` and ``created`` are read here. ``metrics/<model>.json`` is
a verbatim copy of that model's Evaluation ``metrics.json``. A source ``s3://BUCKET/runs/`` compares every run
under it; ``s3://BUCKET/runs/<run_id>/`` one run. Endpoint and keys come from the environment
(:mod:`animegen.store.s3`); only the ``run.json`` and ``metrics/*.json`` objects are fetched.

Rows are labelled (run, model): the model is the metrics' ``model.name`` (for an Evaluation inside a local pipeline
run, whose Model folder is always called ``model``, the name its evaluate task gave it in the Metrics file beside
it); the run is the metrics' ``run_id``, else the registry's run id, else the local pipeline run folder holding it
(``animegen_run.json``), else the folder between the source and the Evaluation directory (the source's own name
when the Evaluation sits directly in it).

Each evaluation is listed once per run: the same Evaluation is often found twice (a pipeline root holds the task's
metrics.json and the registry's copy of it), so rows are deduplicated by run and the evaluation's identity
(``evaluation`` in compare.csv: a hash of the checkpoint's sha256, the reference set's content hash, the
extractor, the sample count, ψ and the creation time); of two copies the better-named one is kept.

compare.txt and compare.html show a pivot: one row per model, and for each of FID, KID and the both-colours
accuracy one column per run, with the difference to the first run (the first source's run) in the other runs'
columns. When a run holds two evaluations of one model the latest is shown (the others stay in compare.csv, which
keeps the long table: one row per evaluation, every column).

FIDs and KIDs are comparable only when computed with the same feature extractor (back-end + weights sha256,
``extractor.id`` in metrics.json). Rows whose extractor differs from the most common one are flagged everywhere
(a ``!`` in the text table, a warning in compare.html and in the plot titles, ``comparable: false`` in
compare.json and compare.csv); with ``strict`` the comparison is refused instead.

Outputs in ``out_dir``: ``compare.txt`` (the pivot), ``compare.csv`` (the long table), ``compare.html``
(self-contained: the pivot, plots, and the long table folded),
``fid.png`` (FID per model, one bar per run), ``fid_over_kimg.png`` (when snapshot FIDs were evaluated), and
``compare.json`` last.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animegen.config import Config, opt
from animegen.eval.html import Figure, esc, figure_html, fmt, html_page, html_table
from animegen.utils import atomic_write_bytes, atomic_write_text, write_json

EVAL_FORMAT = "animegen-evaluation/1"  # metrics.json "format" of an Evaluation (written by evaluate.py)

COLUMNS = ["run", "model", "fid", "fid_psi", "psi", "kid", "kid_std", "hair_accuracy", "eye_accuracy",
           "both_accuracy", "hair_accuracy_psi", "eye_accuracy_psi", "both_accuracy_psi", "n_fid", "n_reference",
           "kimg", "train_wall_s", "train_peak_memory_bytes", "train_device", "extractor", "comparable",
           "created", "source", "evaluation"]
LOCAL_RUN_RECORD = "animegen_run.json"  # marks a local pipeline run folder (animegen.pipelines.local.RECORD)
PIVOT_METRICS = (("fid", "FID", "num"), ("kid", "KID", "num"), ("both_accuracy", "both ✓", "pct"))


@dataclass
class CompareConfig(Config):
    strict: bool = field(default=False, metadata=opt(
        "refuse evaluations computed with another feature extractor instead of flagging them"))


# --------------------------------------------------------------------------------------------- discovery
def evaluation_id(metrics: dict[str, Any]) -> str:
    """The identity of one evaluation (12 hex digits): the same for every copy of its metrics.json."""
    model, data = metrics.get("model") or {}, metrics.get("dataset") or {}
    parts = [model.get("checkpoint_sha256"), data.get("content_hash"), (metrics.get("extractor") or {}).get("id"),
             metrics.get("n_fid"), metrics.get("psi"), metrics.get("created")]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]


def _row(metrics: dict[str, Any], run: str, source: str, rank: int = 0) -> dict[str, Any]:
    """One evaluation's row; ``rank`` says how well it is named (higher wins when copies are deduplicated)."""
    model, train = metrics.get("model") or {}, metrics.get("train") or {}
    row = {k: metrics.get(k) for k in COLUMNS}
    row.update(run=metrics.get("run_id") or run, model=metrics.get("model_name") or model.get("name") or "?",
               kimg=model.get("kimg"), train_wall_s=train.get("wall_s"),
               train_peak_memory_bytes=train.get("peak_memory_bytes"), train_device=train.get("device"),
               extractor=(metrics.get("extractor") or {}).get("id"), created=metrics.get("created"), source=source,
               evaluation=evaluation_id(metrics))
    row["fid_over_kimg"] = metrics.get("fid_over_kimg") or []
    row["_rank"] = rank
    return row


def _pipeline_names(path: Path, root: Path, metrics: dict[str, Any]) -> tuple[str | None, str | None, int]:
    """(run, model, rank) of an Evaluation inside a local pipeline run (``<run>/<task>/evaluation/metrics.json``
    beside the task's Metrics file ``<run>/<task>/metrics``, which names the model); Nones when it is not one."""
    run = next((d.name for d in path.parents if (d / LOCAL_RUN_RECORD).is_file()), None)
    named = _read_eval(path.parent.parent / "metrics")
    same = named is not None and evaluation_id(named) == evaluation_id(metrics)
    model = (named.get("model_name") or (named.get("model") or {}).get("name")) if same else None
    return run, model, int(run is not None) + int(model is not None)


def dedupe(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each evaluation of a run once (by run and ``evaluation``), at its first place, as its best-named copy.
    (One evaluation can belong to two runs: a rerun of the report alone imports the earlier run's evaluations.)"""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        key = (r["run"], r["evaluation"])
        if key not in best or r["_rank"] > best[key]["_rank"]:
            best[key] = r
    return [best[key] for key in dict.fromkeys((r["run"], r["evaluation"]) for r in rows)]


def _read_eval(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == EVAL_FORMAT else None


def local_rows(source: str | Path, label: str | None = None) -> list[dict[str, Any]]:
    """Rows of every Evaluation (metrics.json) and registry run (run.json + metrics/*.json) under ``source``."""
    root = Path(source).resolve()
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise FileNotFoundError(f"{source}: no such file or folder (give an Evaluation directory, a folder of "
                                "them, a run-registry folder, or s3://BUCKET/runs/)")
    rows = []
    registry: set[Path] = set()
    for run_json in sorted(root.rglob("run.json")):
        run_dir = run_json.parent
        try:
            run_id = json.loads(run_json.read_text()).get("run_id") or run_dir.name
        except (OSError, ValueError, AttributeError):
            run_id = run_dir.name
        for path in sorted((run_dir / "metrics").glob("*.json")):
            registry.add(path)
            metrics = _read_eval(path)
            if metrics is not None:
                where = f"{label}/{path.relative_to(root).as_posix()}" if label else str(path)
                rows.append(_row(metrics, str(run_id), where, rank=3))
    for path in sorted(root.rglob("metrics.json")):
        metrics = None if path in registry else _read_eval(path)
        if metrics is None:
            continue
        rel = path.parent.parent.relative_to(root) if path.parent != root else Path(".")
        run = (label or root.name) if rel == Path(".") else rel.as_posix()
        pipeline_run, model, rank = _pipeline_names(path, root, metrics)
        if model:
            metrics = {**metrics, "model_name": model}
        rows.append(_row(metrics, pipeline_run or run, str(path.parent), rank))
    return rows


def registry_rows(uri: str) -> list[dict[str, Any]]:
    """Rows of every complete run of a run registry (``s3://bucket/runs/`` or a local registry folder): runs are
    copied through the store, which verifies each run's ``_manifest.json`` (half-written runs are left out)."""
    from animegen.store.artifacts import get_dir, is_complete
    from animegen.store.registry import download_runs

    with tempfile.TemporaryDirectory(prefix="animegen-compare-") as tmp:
        if is_complete(uri):  # one run: s3://bucket/runs/<run_id>/
            get_dir(uri, Path(tmp) / "runs" / uri.rstrip("/").rsplit("/", 1)[-1])
        elif not download_runs(uri, tmp):
            raise FileNotFoundError(f"{uri}: no complete run in this registry (expected runs/<run_id>/ with "
                                    "run.json, metrics/<model>.json and _manifest.json)")
        return local_rows(tmp, label=uri.rstrip("/"))


def collect_rows(sources: list[str]) -> list[dict[str, Any]]:
    """Rows from every source (local paths and s3:// registry prefixes), in the order given."""
    if not sources:
        raise ValueError("compare needs at least one source: an Evaluation directory, a folder of them, "
                         "or s3://BUCKET/runs/")
    rows = []
    for src in sources:
        found = registry_rows(src) if str(src).startswith("s3://") else local_rows(src)
        if not found:
            raise FileNotFoundError(f"{src}: no Evaluation metrics.json (format {EVAL_FORMAT}) found; run "
                                    "`animegen evaluate` first")
        rows += found
    return dedupe(rows)


def flag_extractors(rows: list[dict[str, Any]], strict: bool = False) -> tuple[str | None, list[str]]:
    """Mark each row ``comparable`` (its extractor is the most common one); returns (that id, all ids).

    With ``strict``, mixed extractors raise ValueError naming the rows."""
    ids = [r["extractor"] for r in rows if r.get("fid") is not None or r.get("kid") is not None]
    counts = Counter(ids)
    reference = counts.most_common(1)[0][0] if counts else None
    for r in rows:
        r["comparable"] = r["extractor"] == reference or (r.get("fid") is None and r.get("kid") is None)
    if strict and len(counts) > 1:
        odd = [f"{r['run']}/{r['model']} ({r['extractor']})" for r in rows if not r["comparable"]]
        raise ValueError(f"FIDs computed with different feature extractors cannot be compared: {', '.join(odd)} "
                         f"differ from {reference}; re-evaluate them with the same --inception-weights / "
                         "--inception-backend")
    return reference, sorted(counts, key=lambda k: (k is None, str(k)))


# ------------------------------------------------------------------------------------------------ output
def _short(extractor: str | None) -> str:
    return "—" if extractor is None else (extractor if len(extractor) <= 28 else extractor[:25] + "...")


@dataclass
class Pivot:
    """One row per model, one column per (metric, run): ``cells[model][run]`` is that run's row of the model."""

    models: list[str]
    runs: list[str]
    cells: dict[str, dict[str, dict[str, Any]]]
    hidden: int  # evaluations not shown (an older evaluation of the same run and model)

    def value(self, model: str, run: str, key: str) -> float | None:
        row = self.cells[model].get(run)
        return None if row is None else row.get(key)

    def delta(self, model: str, run: str, key: str) -> float | None:
        """The run's value minus the first run's (None for the first run or when either is missing)."""
        first, this = self.value(model, self.runs[0], key), self.value(model, run, key)
        return None if run == self.runs[0] or first is None or this is None else this - first


def pivot(rows: list[dict[str, Any]]) -> Pivot:
    models = list(dict.fromkeys(r["model"] for r in rows))
    runs = list(dict.fromkeys(r["run"] for r in rows))
    cells: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in models}
    hidden = 0
    for r in rows:
        kept = cells[r["model"]].get(r["run"])
        if kept is not None:
            hidden += 1
            if str(kept.get("created") or "") > str(r.get("created") or ""):
                continue
        cells[r["model"]][r["run"]] = r
    return Pivot(models, runs, cells, hidden)


def _cell(p: Pivot, model: str, run: str, key: str, kind: str) -> str:
    value, delta = p.value(model, run, key), p.delta(model, run, key)
    row = p.cells[model].get(run)
    text = fmt(value, kind)
    if delta is not None:
        text += f" ({100 * delta:+.1f})" if kind == "pct" else f" ({delta:+.{2 if key == 'fid' else 4}f})"
    return text + (" !" if row is not None and not row["comparable"] and key != "both_accuracy" else "")


def _run_labels(runs: list[str]) -> tuple[list[str], list[str]]:
    """Short column labels for the runs (the names, or A, B, ... when a name is long) and the legend lines."""
    if all(len(r) <= 16 for r in runs) or len(runs) == 1:
        return list(runs), []
    labels = [chr(ord("A") + i) if i < 26 else f"R{i + 1}" for i in range(len(runs))]
    return labels, [f"{label} = {run}" for label, run in zip(labels, runs)]


def _pivot_header(p: Pivot) -> tuple[list[str], list[str]]:
    labels, legend = _run_labels(p.runs)
    header = ["model"]
    for _, title, _ in PIVOT_METRICS:
        if len(p.runs) == 1:
            header.append(title)
        else:
            header += [f"{title} {label}" + (f" (Δ {labels[0]})" if i else "") for i, label in enumerate(labels)]
    return header, legend


def text_table(rows: list[dict[str, Any]], reference: str | None) -> str:
    """The pivot as fixed-width text: a row per model; FID, KID and both-colours accuracy per run, with the
    difference to the first run in brackets ('!' marks a FID / KID from another feature extractor)."""
    p = pivot(rows)
    header, legend = _pivot_header(p)
    lines = [header]
    for model in p.models:
        lines.append([str(model)] + [_cell(p, model, run, key, kind) for key, _, kind in PIVOT_METRICS
                                     for run in p.runs])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     .rstrip() for line in lines)
    notes = ([f"run{'s' if len(p.runs) > 1 else ''}: " + "; ".join(legend or p.runs)]
             + (["Δ: the difference to the first run (FID / KID: lower is better; accuracy in points)"]
                if len(p.runs) > 1 else [])
             + ([f"{p.hidden} older evaluation(s) of the same run and model not shown (all are in compare.csv)"]
                if p.hidden else []))
    if any(not r["comparable"] for r in rows):
        notes.append(f"! computed with a different feature extractor than {reference}: not comparable with the "
                     "other rows")
    return text + "\n" + "\n".join(notes) + "\n"


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in COLUMNS})
    return buf.getvalue()


def _save_fig(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_fid_bars(rows: list[dict[str, Any]], path: Path, reference: str | None) -> Path | None:
    """Grouped bars: one group per model, one bar per run (hatched: another feature extractor)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = [r for r in rows if r.get("fid") is not None]
    if not have:
        return None
    models = list(dict.fromkeys(r["model"] for r in have))
    runs = list(dict.fromkeys(r["run"] for r in have))
    width = min(0.8 / len(runs), 0.35)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.5 * len(models) * len(runs)), 3.6))
    for j, run in enumerate(runs):
        xs, ys, hatches = [], [], []
        for i, model in enumerate(models):
            for r in (r for r in have if r["run"] == run and r["model"] == model):
                xs.append(i + width * (j - (len(runs) - 1) / 2))
                ys.append(r["fid"])
                hatches.append("" if r["comparable"] else "//")
        bars = ax.bar(xs, ys, width * 0.95, label=str(run))
        for bar, hatch, y in zip(bars, hatches, ys):
            bar.set_hatch(hatch)
            ax.annotate(f"{y:.1f}", (bar.get_x() + bar.get_width() / 2, y), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(models)), models, rotation=20 if len(models) > 3 else 0, ha="right" if len(models) > 3
                  else "center")
    ax.set_ylabel("FID (ψ = 1, lower is better)")
    ax.margins(y=0.2)
    mixed = any(not r["comparable"] for r in have)
    ax.set_title("FID per model and run" + ("\n! hatched bars: another feature extractor, not comparable"
                                              if mixed else ""), fontsize=10, color="darkred" if mixed else "black")
    ax.legend(fontsize=8, title="run", title_fontsize=8)
    return _save_fig(fig, path)


def plot_fid_curves(rows: list[dict[str, Any]], path: Path, title: str = "FID over training") -> Path | None:
    """One line per (run, model) with snapshot FIDs: FID against kimg."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = [r for r in rows if r.get("fid_over_kimg")]
    if not have:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in have:
        pts = sorted((p["kimg"], p["fid"]) for p in r["fid_over_kimg"] if p.get("fid") is not None)
        label = f"{r['run']} / {r['model']}" if len(have) > 1 else str(r["model"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                label=label + ("" if r.get("comparable", True) else " (! other extractor)"),
                linestyle="-" if r.get("comparable", True) else "--")
    ax.set_xlabel("kimg (thousands of real images shown to D)")
    ax.set_ylabel("FID (ψ = 1)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_fig(fig, path)


def _html(rows: list[dict[str, Any]], reference: str | None, extractors: list[str], figures: list[Figure]) -> str:
    header = ["run", "model", "FID", "FID ψ", "ψ", "KID", "hair", "eye", "both", "kimg", "train time", "peak memory",
              "extractor"]
    body = []
    for r in rows:
        mark = "" if r["comparable"] else " ⚠"
        kid = (f"{fmt(r.get('kid'))} ± {fmt(r.get('kid_std'))}" if r.get("kid") is not None else "—")
        body.append([esc(r["run"]), esc(r["model"]), esc(fmt(r.get("fid")) + mark), esc(fmt(r.get("fid_psi")) + mark),
                     esc(fmt(r.get("psi"))), esc(kid), fmt(r.get("hair_accuracy"), "pct"),
                     fmt(r.get("eye_accuracy"), "pct"), fmt(r.get("both_accuracy"), "pct"), esc(fmt(r.get("kimg"))),
                     esc(fmt(r.get("train_wall_s"), "s")), esc(fmt(r.get("train_peak_memory_bytes"), "bytes")),
                     f'<span title="{esc(r.get("extractor"))}">{esc(_short(r.get("extractor")))}</span>'])
    p = pivot(rows)
    pivot_header, legend = _pivot_header(p)
    pivot_body = [[esc(model)] + [esc(_cell(p, model, run, key, kind)).replace(" !", " ⚠")
                                  for key, _, kind in PIVOT_METRICS for run in p.runs] for model in p.models]
    runs = "; ".join(legend or p.runs)
    parts = ["<h1>Comparison of evaluations</h1>",
             f'<p class="sub">{len(rows)} evaluations of {len(p.models)} models in {len(p.runs)} '
             f"run{'s' if len(p.runs) > 1 else ''} ({esc(runs)}); accuracies are at ψ = 1 (see compare.csv for ψ)"
             + ("; in brackets: the difference to the first run" if len(p.runs) > 1 else "") + "</p>"]
    if len(extractors) > 1:
        parts.append(f'<p class="warn">⚠ FIDs from {len(extractors)} different feature extractors: rows marked ⚠ '
                     f"were not computed with {esc(reference)} and cannot be compared with the others.</p>")
    parts.append(html_table([esc(h) for h in pivot_header], pivot_body, left=1))
    if p.hidden:
        parts.append(f'<p class="note">{p.hidden} older evaluation(s) of the same run and model are not in this '
                     "table; every evaluation is listed below and in compare.csv.</p>")
    if figures:
        parts.append(f'<div class="figs">{"".join(figure_html(f) for f in figures)}</div>')
    parts.append(f"<details><summary>every evaluation ({len(rows)})</summary>{html_table(header, body, left=2)}"
                 "</details>")
    parts.append('<p class="note">sources: ' + "; ".join(esc(r["source"]) for r in rows) + "</p>")
    return html_page("animegen compare", "\n".join(parts))


def run_compare(cfg: CompareConfig, sources: list[str], out_dir: str | Path) -> Path:
    """Tabulate the evaluations found in ``sources`` into ``out_dir`` (see the module docstring); returns out_dir.

    The pivot is also ``out_dir/compare.txt`` (the CLI prints it)."""
    rows = collect_rows(list(sources))
    reference, extractors = flag_extractors(rows, cfg.strict)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").unlink(missing_ok=True)
    atomic_write_text(out / "compare.txt", text_table(rows, reference))
    atomic_write_text(out / "compare.csv", _csv(rows))
    for stale in ("fid.png", "fid_over_kimg.png"):
        (out / stale).unlink(missing_ok=True)
    plots = [plot_fid_bars(rows, out / "fid.png", reference), plot_fid_curves(rows, out / "fid_over_kimg.png")]
    figures = [Figure(p, p.stem.replace("_", " ")) for p in plots if p is not None]
    atomic_write_text(out / "compare.html", _html(rows, reference, extractors, figures))
    p = pivot(rows)
    table = {"models": p.models, "runs": p.runs, **{key: {m: {run: p.value(m, run, key) for run in p.runs}
                                                          for m in p.models} for key, _, _ in PIVOT_METRICS}}
    doc = {"rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows], "pivot": table,
           "extractors": extractors, "reference_extractor": reference,
           "extractor_mismatch": len(extractors) > 1, "sources": list(map(str, sources)),
           "files": sorted(p.name for p in plots if p is not None) + ["compare.csv", "compare.html", "compare.txt"]}
    write_json(out / "compare.json", doc)
    return out
