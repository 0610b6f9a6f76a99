"""What the KFP components share at run time, besides the stage functions they call.

A component's Python body is copied into the compiled YAML on its own (``inspect.getsource`` of the function), so
it cannot call helpers defined beside it in component.py; it imports this module instead (the images carry the
package). Everything here is KFP glue: artifact directories, optional values, metric names, the object-store
environment, small HTML pages, and (on import) the report of a damaged or foreign checkpoint: a task given one
fails with the CheckpointError's one line (file, problem, reason), not a traceback. No stage logic lives here.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from animegen.eval.report import SKIPPED, evaluation_scalars  # noqa: F401  (for component bodies)
from animegen.utils import atomic_write_text, finite, read_json, write_json  # noqa: F401  (for component bodies)

if TYPE_CHECKING:
    from animegen.data.dataset import PackedDataset

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def out_dir(artifact: Any) -> Path:
    """The directory of a directory-valued output artifact (``artifact.path``), created."""
    path = Path(artifact.path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def csv_list(text: str) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; '' -> None (the stage's default)."""
    items = [t.strip() for t in str(text or "").split(",") if t.strip()]
    return items or None


def merge(options: dict | None, explicit: dict[str, Any]) -> dict[str, Any]:
    """A stage config's values: the free-form ``options`` (any other field of the stage's Config) under the
    component's explicit parameters, which win; explicit values that are None (unset) leave the Config default."""
    values = dict(options or {})
    values.update({k: v for k, v in explicit.items() if v is not None})
    return values


def build_config(cls: type, options: dict | None, explicit: dict[str, Any]) -> Any:
    """``cls.from_dict`` of :func:`merge`'s values, where an explicit value equal to its option's ``unset`` (the
    schema's "0 / '' / < 0 means the default") leaves the Config default. ``from_dict`` converts the values to the
    fields' types by the one coercion path (``animegen.config.coerce``): a KFP dict parameter arrives as a protobuf
    Struct, whose numbers are all floats (``{"grid_n": 2}`` comes back as 2.0)."""
    from animegen.config import options as schema

    unset = {o.name for o in schema(cls) if o.name in explicit and o.is_unset(explicit[o.name])}
    return cls.from_dict(merge(options, {k: None if k in unset else v for k, v in explicit.items()}))


def check_model_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ValueError(f"model name {name!r}: use lower-case letters, digits and '_' (it names KFP metrics such as "
                         f"fid_<name>, so it must stay stable across runs)")
    return name


def set_object_store_env(endpoint: str = "", region: str = "", store: str = "") -> None:
    """Point the S3 client at ``endpoint`` (and ``region``) and set ``ANIMEGEN_STORE`` to ``store`` (the prefix
    where FID reference statistics are cached across runs) when given. KFP's ``set_env_variable`` cannot take a
    pipeline parameter, so these arrive as component parameters and are set here; the keys come from the
    environment (on the cluster: ``use_secret_as_env`` with the object-store secret)."""
    if endpoint:
        os.environ["S3_ENDPOINT_URL"] = endpoint
    if region:
        os.environ["AWS_REGION"] = region
    if store:
        os.environ["ANIMEGEN_STORE"] = store


GPUS_ENV = "ANIMEGEN_GPUS"


def launch_gpus(gpus: str | int, device: str = "auto") -> tuple[str, int]:
    """The training launcher's view of the GPU count, read at run time (a run parameter, ``gpus``, the same value
    the pod's accelerator limit was given). It is exported as ``ANIMEGEN_GPUS`` and checked against what the
    container sees. Returns ``(device, nproc)``: the device to train on (``device``, unchanged) and the number of
    data-parallel processes (``animegen.train.launch``): one per GPU on CUDA (the visible ones, if fewer than
    asked: warned about in a pod or with device ``cuda``), and on the CPU (a local run, or a pod that sees no GPU)
    ``gpus`` gloo processes that share the cores, the CPU twin of the pod's multi-GPU run."""
    text = str(gpus).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"gpus {gpus!r}: expected a whole number >= 1, e.g. \"1\"")
    count = int(text)
    os.environ[GPUS_ENV] = str(count)
    try:
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # pragma: no cover - the images carry torch
        visible = 0
    on_gpu = device == "cuda" or (device == "auto" and visible > 0)
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))  # on a cluster the pod was given `count` GPUs
    if device in ("auto", "cuda") and visible < count and (in_pod or device == "cuda"):
        print(f"warning: gpus={count} requested but {visible} GPU(s) visible in this container"
              + (" (training on the CPU)" if not visible and device == "auto" else ""), file=sys.stderr, flush=True)
    nproc = max(1, min(count, visible)) if on_gpu else count
    where = (f"{nproc} GPU(s)" if on_gpu else device) + (f", {nproc} processes (torchrun)" if nproc > 1 else "")
    print(f"launcher: gpus={count} requested, {visible} visible, training on {where}", flush=True)
    return device, nproc


def training_task(gpus: str, device: str, s3_endpoint: str, s3_region: str, store_uri: str, checkpoint_root: str,
                  run_id: str, task_name: str) -> tuple[str, int, str | None]:
    """What a train or transfer task sets up before it trains: the object-store environment, the GPU count read at
    run time and the processes to train in (:func:`launch_gpus`), and its checkpoint-upload URI
    ``<root>/<run_id>/<task_name>`` (the same for every attempt, so a retry whose output folder is empty restores the
    last complete upload: ``animegen.train.remote``; root: ``checkpoint_root``, else ``$ANIMEGEN_CHECKPOINTS``, else
    ``$ANIMEGEN_STORE/checkpoints``, else none). Returns ``(device, nproc, checkpoint_uri or None)``."""
    from animegen.train.remote import task_checkpoint_uri

    set_object_store_env(s3_endpoint, s3_region, store_uri)
    device, nproc = launch_gpus(gpus, device)
    return device, nproc, task_checkpoint_uri(checkpoint_root, run_id, task_name) or None


def log_scalars(metrics: Any, scalars: dict[str, float]) -> None:
    for name, value in scalars.items():
        metrics.log_metric(name, float(value))


def log_confusion(artifact: Any, confusion: dict[str, Any] | None, reason: str) -> None:
    """A KFP ClassificationMetrics confusion matrix (requested vs predicted colour), or a note why there is none.
    The JSON is always written to ``artifact.path`` (an output with no file breaks caching and some launchers)."""
    if confusion:
        artifact.log_confusion_matrix(list(confusion["categories"]), [[int(v) for v in row]
                                                                       for row in confusion["matrix"]])
        write_json(artifact.path, confusion)
    else:
        artifact.metadata["note"] = reason
        write_json(artifact.path, {SKIPPED: reason})


def html_page(title: str, body: str) -> str:
    from animegen.eval.html import html_page as page

    return page(title, body)


def figures_html(figures: list[tuple[str, Path]]) -> str:
    """Embedded images (data: URIs) with captions, for the small HTML artifacts of ingest, label and train."""
    from animegen.eval.html import Figure, figure_html

    shown = [figure_html(Figure(Path(p), caption)) for caption, p in figures if Path(p).is_file()]
    return f'<div class="figs">{"".join(shown)}</div>' if shown else ""


def _facts_table(facts: dict[str, Any]) -> str:
    from animegen.eval.html import esc, fmt, html_table

    return html_table(["", ""], [[esc(k), esc(fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v))]
                                 for k, v in facts.items() if v is not None])


def dataset_summary(artifact: Any, dataset: PackedDataset, title: str,
                    figures: list[tuple[str, Path]] | None = None) -> None:
    """An HTML artifact for a Dataset (as ``read_packed`` reads it): its headline facts, the given figures and a
    grid of its first images."""
    import tempfile

    import numpy as np

    from animegen.eval.html import esc
    from animegen.image_files import save_grid

    keys = ("source", "count", "resolution", "channels", "mode", "kept", "grown", "duplicates_count",
            "skipped_count", "skipped_by_reason", "refused_count", "splits", "num_classes", "label_kind",
            "content_hash")
    facts = {k: dataset.manifest[k] for k in keys if k in dataset.manifest}
    with tempfile.TemporaryDirectory(prefix="animegen-summary-") as tmp:
        images = dataset.images
        grid = save_grid(np.asarray(images[:64]), Path(tmp) / "first.png", ncol=16) if len(images) else None
        shown = list(figures or []) + ([(f"the first {min(64, len(images))} images", grid)] if grid else [])
        body = f"<h1>{esc(title)}</h1>{_facts_table(facts)}{figures_html(shown)}"
        atomic_write_text(artifact.path, html_page(title, body))


def model_summary(artifact: Any, model_dir: Path, title: str) -> None:
    """An HTML artifact for a Model: training summary, the loss curve and the last sample grid."""
    from animegen.eval.html import esc

    model_dir = Path(model_dir)
    summary = read_json(model_dir / "summary.json", {})
    init = read_json(model_dir / "init_report.json", {})
    facts = {k: summary.get(k) for k in ("kimg", "steps", "wall_s", "img_per_s", "peak_memory_bytes", "device")}
    if init:
        facts.update({"init_from": init.get("source"), "folded class": init.get("folded_class"),
                      "class init": init.get("class_init") or None})
    grids = sorted((model_dir / "samples").glob("fakes-*.png"))
    figures = [("losses", model_dir / "loss.png")] + ([(f"samples: {grids[-1].stem}", grids[-1])] if grids else [])
    body = f"<h1>{esc(title)}</h1>{_facts_table(facts)}{figures_html(figures)}"
    atomic_write_text(artifact.path, html_page(title, body))



def install_checkpoint_error_hook() -> None:
    """Make an uncaught ``CheckpointError`` (a damaged or foreign checkpoint given to a stage: train's resume or
    init-from, evaluate's model or snapshots) end the process with its one-line message on stderr and no traceback;
    the task still fails (exit status 1). Any other exception keeps Python's own report. Idempotent."""
    previous = sys.excepthook
    if getattr(previous, "animegen_checkpoint_hook", False):
        return

    def hook(kind, value, tb):
        checkpoint = sys.modules.get("animegen.train.checkpoint")
        if checkpoint is not None and isinstance(value, checkpoint.CheckpointError):
            print(f"error: {value}", file=sys.stderr, flush=True)
            return
        previous(kind, value, tb)

    hook.animegen_checkpoint_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook


install_checkpoint_error_hook()  # a component body imports this module before it calls its stage
