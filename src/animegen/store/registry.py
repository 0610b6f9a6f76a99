"""The run registry: one record per pipeline run, on a local folder or under an ``s3://`` prefix.

Layout (the report step writes it with :func:`write_run`; ``animegen compare`` reads it)::

    <registry>/runs/<run_id>/run.json                 the run: parameters, models, artifact URIs
    <registry>/runs/<run_id>/metrics/<model>.json     a verbatim copy of each model's Evaluation metrics.json
    <registry>/runs/<run_id>/_manifest.json           written last: a run without it is incomplete and ignored

``<registry>`` is ``s3://BUCKET[/PREFIX]`` or a local folder; a URI that already ends in ``/runs`` is taken as the
``runs`` folder itself (so ``s3://BUCKET/runs/``, as given to ``animegen compare``, works too).

``run.json``::

    {"format": "animegen-run/1", "run_id": "...", "created": "2025-01-01T00:00:00.000000Z",
     "pipeline": "animegen", "status": "succeeded", "animegen_version": "0.1.0",
     "params": {...the run's configuration / pipeline parameters...},
     "models": {"<model>": {"metrics": "metrics/<model>.json" | null, "summary": {"fid": 41.2, ...},
                            "artifacts": {"model": "s3://...", "evaluation": "s3://...", ...}, ...}},
     "artifacts": {"<model>/<name>": "s3://...", ...plus any extra["artifacts"]...},
     ...any other keys of ``extra``}

``summary`` holds the numeric top-level values of the model's metrics (fid, kid, accuracies), so a listing needs no
second read. A run written again with the same id replaces the previous record (its manifest is removed first).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from animegen.store.artifacts import (
    MANIFEST,
    _json_default,
    _now,
    get_dir,
    put_dir,
    read_json,
    read_manifest,
    read_member_json,
)
from animegen.store.backend import Store
from animegen.store.retry import RetryPolicy
from animegen.store.uris import UriLike, as_s3, is_s3, join, local_path

RUN_FORMAT = "animegen-run/1"
RUN_FILE = "run.json"
RESERVED = {"format", "run_id", "params", "models", "animegen_version", "metrics", "uri"}  # not settable by extra
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"invalid {kind} {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return name


def runs_root(registry_uri: UriLike) -> str:
    """The ``runs`` folder of a registry (``registry_uri`` itself when it already ends in ``runs``); ``auto`` is the
    namespace's own registry (``animegen.store.namespaces.registry_uri``: ``s3://mlpipeline/private/<ns>/animegen/
    runs/`` in a pod of namespace ``<ns>``, else ``s3://mlpipeline/shared/animegen/runs/``)."""
    from animegen.store.namespaces import resolve

    registry_uri = resolve(str(registry_uri), "runs")
    if is_s3(registry_uri):
        from animegen.store.s3 import parse_s3_uri

        last = parse_s3_uri(as_s3(str(registry_uri)))[1].strip("/").rsplit("/", 1)[-1]
    else:
        last = local_path(registry_uri).name
    return join(registry_uri) if last == "runs" else join(registry_uri, "runs")


def run_uri(registry_uri: UriLike, run_id: str) -> str:
    """Where run ``run_id`` lives: ``<registry>/runs/<run_id>``."""
    return join(runs_root(registry_uri), _check_name("run id", run_id))


AUTO = "auto"  # the pipeline's default registry_uri: resolved by resolve_registry_uri where the report runs
_NAMESPACE_IN_ROOT = re.compile(r"^private-artifacts/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)/")


def resolve_registry_uri(value: str, artifact_uri: str) -> tuple[str, str]:
    """The registry a run records itself in, and how it was chosen: ``(uri, why)``; ``uri`` '' = not recorded.

    ``value`` is the pipeline's ``registry_uri``: '' = not recorded; any other value but ``auto`` is taken as is;
    ``auto`` (the default, so that every default run leaves a record to rerun from) is derived from
    ``artifact_uri``, the URI KFP gave one of the run's own output artifacts (the report's):

    - in KFP's object store (``minio://BUCKET/...`` or ``s3://``): ``s3://BUCKET/private/<ns>/animegen/runs/``
      when the pipeline root is a multi-user namespace's (``BUCKET/private-artifacts/<ns>/...``, the root the
      profile controller gives each namespace; ``$ANIMEGEN_NAMESPACE`` overrides), else
      ``s3://BUCKET/shared/animegen/runs/``: both are prefixes a namespace's key may write (the profile controller's
      policy allows ``artifacts/``, ``private-artifacts/<ns>/``, ``private/<ns>/``, ``shared/``);
    - a local path (kfp.local: ``<pipeline_root>/<run>/report/report``): ``<pipeline_root>/registry``;
    - anything else (gs://, an empty URI): not recorded, and ``why`` says to set ``registry_uri``."""
    if value != AUTO:
        return value, ("registry_uri is empty" if not value else "registry_uri")
    uri = str(artifact_uri or "")
    if is_s3(uri):
        from animegen.store.namespaces import NAMESPACE_ENV, namespace_prefix
        from animegen.store.s3 import parse_s3_uri

        bucket, key = parse_s3_uri(as_s3(uri))
        found = _NAMESPACE_IN_ROOT.match(key.lstrip("/"))
        namespace = os.environ.get(NAMESPACE_ENV, "").strip() or (found.group(1) if found else None)
        return (f"{namespace_prefix(namespace, bucket)}/runs/",
                f"registry_uri auto: the run's artifacts are in bucket {bucket}" +
                (f", namespace {namespace}" if namespace else " (single-user)"))
    if uri and ("://" not in uri or uri.startswith("file://")):
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if len(path.parents) >= 3:
            return str(path.parents[2] / "registry"), "registry_uri auto: beside the local run folders"
    return "", (f"registry_uri auto: cannot derive a registry from the artifact URI {uri!r} (not KFP's S3/MinIO "
                "store nor a local path); set registry_uri to s3://BUCKET/PREFIX/runs/ or a folder")


def _summary(metrics: dict[str, Any]) -> dict[str, float | int]:
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and (isinstance(v, int) or math.isfinite(v))}


def write_run(
    registry_uri: UriLike,
    run_id: str,
    config: dict[str, Any],
    models: dict[str, dict[str, Any]],
    extra: dict[str, Any] | None = None,
    *,
    retry: RetryPolicy | None = None,
) -> str:
    """Record one run in the registry; returns the run's URI (``<registry>/runs/<run_id>``).

    - ``config``: the run's parameters (stored as ``params``).
    - ``models``: per model name, a dict with ``metrics`` (the Evaluation's metrics.json content as a dict, or the
      path/URI of that file; None for a model that was not evaluated) and ``artifacts`` (name -> URI); any other
      keys are kept in ``run.json``'s entry for the model.
    - ``extra``: more top-level keys of ``run.json`` (``pipeline``, ``status``, ``created``, ``kfp_run_id``, ...);
      ``extra["artifacts"]`` (name -> URI: datasets, the report) is merged into the run's flat artifact map.

    Every file goes up first and the run's ``_manifest.json`` last: a reader never sees half a record."""
    _check_name("run id", run_id)
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict of the run's parameters, not {type(config).__name__}")
    extra = dict(extra or {})
    clash = RESERVED & set(extra)
    if clash:
        raise ValueError(f"extra may not set {sorted(clash)}: they are written by write_run itself")
    artifacts: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    metrics_docs: dict[str, dict[str, Any]] = {}
    for name, spec in models.items():
        _check_name("model name", name)
        spec = dict(spec or {})
        metrics = spec.pop("metrics", None)
        if isinstance(metrics, (str, os.PathLike)):
            metrics = read_json(metrics, retry=retry)
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"models[{name!r}]['metrics'] must be a dict, a path/URI of a metrics.json, or None")
        model_artifacts = {str(k): str(v) for k, v in (spec.pop("artifacts", None) or {}).items()}
        entry: dict[str, Any] = {"metrics": f"metrics/{name}.json" if metrics is not None else None,
                                 "summary": _summary(metrics) if metrics is not None else {},
                                 "artifacts": model_artifacts, **spec}
        entries[name] = entry
        if metrics is not None:
            metrics_docs[name] = metrics
        artifacts.update({f"{name}/{k}": v for k, v in model_artifacts.items()})
    artifacts.update({str(k): str(v) for k, v in (extra.pop("artifacts", None) or {}).items()})

    from animegen import __version__

    record = {"format": RUN_FORMAT, "run_id": run_id, "created": extra.pop("created", None) or _now(),
              "pipeline": extra.pop("pipeline", "animegen"), "status": extra.pop("status", "succeeded"),
              "animegen_version": __version__, "params": config, "models": entries, "artifacts": artifacts, **extra}
    dest = run_uri(registry_uri, run_id)
    with tempfile.TemporaryDirectory(prefix="animegen-run-") as tmp:
        root = Path(tmp)
        (root / RUN_FILE).write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        if metrics_docs:
            (root / "metrics").mkdir()
        for name, doc in metrics_docs.items():
            (root / "metrics" / f"{name}.json").write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
        put_dir(root, dest, retry=retry)
    return dest


def list_runs(registry_uri: UriLike, *, retry: RetryPolicy | None = None) -> list[str]:
    """Ids of the complete runs (those with ``_manifest.json``) in the registry, sorted; [] when there is none."""
    listing = Store(runs_root(registry_uri)).listing(retry)
    ids = {rel.split("/")[0] for rel in listing if rel.count("/") == 1 and rel.endswith(f"/{MANIFEST}")}
    return sorted(i for i in ids if NAME_RE.match(i))


def read_run(registry_uri: UriLike, run_id: str, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
    """``run.json`` of a complete run, plus ``metrics`` (model -> its metrics.json) and ``uri``, every file
    verified against the run's manifest. An incomplete run raises IncompleteArtifactError."""
    uri = run_uri(registry_uri, run_id)
    manifest = read_manifest(uri, retry=retry)
    record = read_member_json(uri, RUN_FILE, retry=retry)
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        raise ValueError(f"{join(uri, RUN_FILE)} is not a run record (format {RUN_FORMAT})")
    paths = {f["path"] for f in manifest["files"]}
    record["metrics"] = {}
    for name, entry in (record.get("models") or {}).items():
        rel = (entry or {}).get("metrics")
        if rel and rel in paths:
            record["metrics"][name] = read_member_json(uri, rel, retry=retry)
    record["uri"] = uri
    return record


def download_runs(registry_uri: UriLike, local_dir: UriLike, run_ids: list[str] | None = None, *,
                  retry: RetryPolicy | None = None) -> list[str]:
    """Copy complete runs (all of them, or ``run_ids``) to ``local_dir/runs/<run_id>/``, verified; returns the ids.

    The local copy has the registry's layout, so ``animegen compare LOCAL_DIR`` (or a second registry) reads it."""
    ids = list_runs(registry_uri, retry=retry) if run_ids is None else list(run_ids)
    for run_id in ids:
        get_dir(run_uri(registry_uri, run_id), Path(local_dir) / "runs" / _check_name("run id", run_id), retry=retry)
    return ids
