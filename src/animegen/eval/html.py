"""report.html: one self-contained page per evaluation.

Every image is embedded as a base64 ``data:`` URI and the only style is an inline ``<style>`` block, so the file
opens in any browser offline and can be mailed or attached as a KFP ``HTML`` artifact on its own. The page is
plain string templates; every piece of text from the metrics (class names, paths, URIs) goes through
``html.escape``.

Sections: headline metrics (FID and KID at ψ = 1 and at the configured ψ, extractor id, sample counts, training
time and memory), the per-class accuracy table and confusion matrices (HTML tables), then the figures the caller
passes (sample grids per class, truncation grid, style-mixing grids, interpolation GIF, loss curve, FID over kimg),
and the whole metrics.json at the end.
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from animegen.utils import atomic_write_text, human_bytes

LEFT = ' class="l"'
MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".svg": "image/svg+xml", ".webp": "image/webp"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em;
     border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.cm td { min-width: 2.6em; text-align: center; } .cm th { text-align: center; }
.figs { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; max-width: 420px; }
img { max-width: 100%; height: auto; } img.px { image-rendering: pixelated; }
.warn { background: #fff3cd; border: 1px solid #e0c36c; padding: 0.5em 0.8em; }
.note { color: #666; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
"""


@dataclass
class Figure:
    """An image file to embed, with its caption. ``scale`` enlarges small pixel images (nearest neighbour)."""

    path: Path
    caption: str = ""
    scale: float = 1.0


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def data_uri(path: str | Path) -> str:
    """``data:<mime>;base64,...`` of an image file."""
    path = Path(path)
    mime = MIME.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: cannot embed a {path.suffix or 'suffix-less'} file; use PNG, GIF or JPEG")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def fmt(value: Any, kind: str = "num") -> str:
    """A metric for display: '—' for missing, percentages, 2-decimal FIDs, KID with its std."""
    if value is None:
        return "—"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if kind == "bytes":
        return human_bytes(value)
    if kind == "s":
        return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def figure_html(fig: Figure) -> str:
    from PIL import Image

    with Image.open(fig.path) as im:
        w, h = im.size
    style = f' width="{round(w * fig.scale)}" height="{round(h * fig.scale)}" class="px"' if fig.scale != 1 else ""
    cap = f"<figcaption>{esc(fig.caption)}</figcaption>" if fig.caption else ""
    return f'<figure><img src="{data_uri(fig.path)}" alt="{esc(fig.caption or fig.path.name)}"{style}>{cap}</figure>'


def html_table(header: list[str], rows: list[list[str]], cls: str = "", left: int = 1) -> str:
    """An HTML table; cells are already escaped/formatted strings; the first ``left`` columns align left."""
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f"<{tag}{LEFT if i < left else ''}>{v}</{tag}>" for i, v in enumerate(values))
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    attr = f' class="{cls}"' if cls else ""
    return f'<table{attr}><tr>{cells("th", header)}</tr>{body}</table>'


def confusion_table(conf: dict[str, Any], title: str) -> str:
    """Requested (rows) vs predicted (columns) counts, each cell shaded by its share of the row."""
    names, matrix = conf["categories"], conf["matrix"]
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    rows = []
    for name, row in zip(names, matrix):
        total = sum(row)
        if not total:
            continue
        tds = []
        for j, v in enumerate(row):
            share = v / total
            colour = "#fff" if share > 0.55 else "#222"
            tds.append(f'<td style="background: rgba(33, 102, 172, {share:.2f}); color: {colour}"'
                       f' title="{100 * share:.0f} %">{v}</td>')
        rows.append(f'<tr><th class="l">{esc(name)}</th>{"".join(tds)}</tr>')
    return (f'<figure><table class="cm"><tr><th class="l">requested ↓ / predicted →</th>{head}</tr>'
            f'{"".join(rows)}</table><figcaption>{esc(title)}</figcaption></figure>')


def accuracy_section(accs: list[tuple[float, dict[str, Any]]]) -> str:
    """Per-class table (the second paper's Table II) with one column group per ψ, overall rows, confusions."""
    accs = [(psi, a) for psi, a in accs if a]
    if not accs:
        return ""
    header = ["requested class", "n"]
    for psi, _ in accs:
        header += [f"hair ✓ (ψ={psi:g})", f"eye ✓ (ψ={psi:g})", f"both ✓ (ψ={psi:g})"]
    first = accs[0][1]
    rows = []
    for i, row in enumerate(first["classes"]):
        cells = [esc(row["class"]), str(row["n"])]
        for _, a in accs:
            r = a["classes"][i]
            cells += [fmt(r["hair_correct"], "pct"), fmt(r["eye_correct"], "pct"), fmt(r["both_correct"], "pct")]
        rows.append(cells)
    overall = ["<b>all classes</b>", str(first["images"])]
    chance = ["chance (uniform guess)", ""]
    for _, a in accs:
        overall += [f"<b>{fmt(a[k], 'pct')}</b>" for k in ("hair_accuracy", "eye_accuracy", "both_accuracy")]
        ch = a.get("chance", {})
        both = ch["hair"] * ch["eye"] if "hair" in ch and "eye" in ch else None
        chance += [fmt(ch.get("hair"), "pct"), fmt(ch.get("eye"), "pct"), fmt(both, "pct")]
    parts = [html_table(header, rows + [overall, chance])]
    notes = []
    if first.get("skipped_classes"):
        notes.append("classes naming no colour (not scored): " + ", ".join(first["skipped_classes"]))
    if first.get("unscorable"):
        notes.append("requested colours the tagger does not know (not scored): " + ", ".join(first["unscorable"]))
    parts += [f'<p class="note">{esc(n)}</p>' for n in notes]
    figs = [confusion_table(a["confusion"][key], f"{key} colour, ψ = {psi:g}")
            for psi, a in accs for key in ("hair", "eye") if key in a.get("confusion", {})]
    parts.append(f'<div class="figs">{"".join(figs)}</div>')
    return "".join(parts)


def headline_section(m: dict[str, Any]) -> str:
    psi = m.get("psi")
    ext = m.get("extractor") or {}
    model, data, train = m.get("model") or {}, m.get("dataset") or {}, m.get("train") or {}
    kid = (f"{fmt(m.get('kid'))} ± {fmt(m.get('kid_std'))}" if m.get("kid") is not None else "—")
    kid_psi = (f"{fmt(m.get('kid_psi'))} ± {fmt(m.get('kid_psi_std'))}" if m.get("kid_psi") is not None else "—")
    rows = [
        ["FID", esc(fmt(m.get("fid"))), esc(fmt(m.get("fid_psi")))],
        ["KID", esc(kid), esc(kid_psi)],
        ["hair accuracy", fmt(m.get("hair_accuracy"), "pct"), fmt(m.get("hair_accuracy_psi"), "pct")],
        ["eye accuracy", fmt(m.get("eye_accuracy"), "pct"), fmt(m.get("eye_accuracy_psi"), "pct")],
        ["both correct", fmt(m.get("both_accuracy"), "pct"), fmt(m.get("both_accuracy_psi"), "pct")],
    ]
    psi_head = f"ψ = {psi:g}" if isinstance(psi, (int, float)) else "ψ"
    main = html_table(["", "ψ = 1", esc(psi_head)], rows)
    facts = [
        ["feature extractor", esc(ext.get("id", "—"))],
        ["generated images per FID", esc(fmt(m.get("n_fid")))],
        ["reference images", esc(f"{fmt(m.get('n_reference'))} ({data.get('split', 'all')} split)")],
        ["images per class (accuracy)", esc(fmt((m.get("accuracy") or {}).get("k")))],
        ["model", esc(f"{model.get('name', '—')} ({model.get('arch', '?')}, {model.get('resolution', '?')} px, "
                      f"{fmt(model.get('kimg'))} kimg)")],
        ["checkpoint sha256", esc(str(model.get("checkpoint_sha256", "—"))[:16])],
        ["dataset", esc(data.get("uri", "—"))],
        ["dataset content hash", esc(str(data.get("content_hash", "—"))[:16])],
        ["training time", esc(fmt(train.get("wall_s"), "s"))],
        ["training peak memory", esc(fmt(train.get("peak_memory_bytes"), "bytes"))
         + (f" ({esc(train['device'])})" if train.get("device") else "")],
        ["evaluation time", esc(fmt((m.get("timing") or {}).get("wall_s"), "s"))],
    ]
    notes = "".join(f'<p class="warn">{esc(n)}</p>' for n in m.get("notes", []))
    return f'<div class="figs">{main}{html_table(["", ""], facts)}</div>{notes}'


def html_page(title: str, body: str) -> str:
    """A complete HTML document around ``body`` (already HTML) with the inline style sheet; no external links."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def render_report(metrics: dict[str, Any], sections: list[tuple[str, list[Figure]]], title: str | None = None
                  ) -> str:
    """The report page as a string. ``sections``: (heading, figures) in display order; empty ones are skipped."""
    model = (metrics.get("model") or {}).get("name", "model")
    title = title or f"Evaluation of {model}"
    parts = [f"<h1>{esc(title)}</h1>",
             f'<p class="sub">{esc(metrics.get("created", ""))} · animegen {esc(metrics.get("version", ""))}</p>',
             "<h2>Headline</h2>", headline_section(metrics)]
    acc = accuracy_section([(1.0, metrics.get("accuracy")), (metrics.get("psi"), metrics.get("accuracy_psi"))]
                           if metrics.get("accuracy_psi") else [(1.0, metrics.get("accuracy"))])
    if acc:
        parts += ["<h2>Per-class accuracy (colour tagger)</h2>", acc]
    elif metrics.get("accuracy_skipped"):
        parts += ["<h2>Per-class accuracy</h2>", f'<p class="note">skipped: {esc(metrics["accuracy_skipped"])}</p>']
    for heading, figures in sections:
        if figures:
            parts += [f"<h2>{esc(heading)}</h2>", f'<div class="figs">{"".join(figure_html(f) for f in figures)}</div>']
    parts += ["<h2>metrics.json</h2>",
              f"<details><summary>show</summary><pre>{esc(json.dumps(metrics, indent=2))}</pre></details>"]
    return html_page(title, "\n".join(parts))


def write_report(path: str | Path, metrics: dict[str, Any], sections: list[tuple[str, list[Figure]]],
                 title: str | None = None) -> Path:
    """Render and write report.html atomically; returns its path."""
    path = Path(path)
    atomic_write_text(path, render_report(metrics, sections, title))
    return path
