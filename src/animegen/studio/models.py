"""Which models a studio serves: Model folders, a pipeline run's folder (every model it trained), ``s3://``
(``minio://``) Model artifacts, or a run of the registry (``run:RUN_ID``: every model of that run)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from animegen.run_layout import MODELS
from animegen.studio.engine import METRICS, StudioModel, evaluation_metrics, load_model


def _name(path: Path) -> str:
    folder = path.parent.name if path.name == "model" else path.name
    return re.sub(r"[^a-z0-9_]+", "_", folder.lower()).strip("_") or "model"


def _metrics(doc: dict[str, Any] | None) -> dict[str, Any]:
    return {k: doc[k] for k in METRICS if doc and doc.get(k) is not None}


def _local(uri: str) -> Path:
    """A local folder for ``uri`` (an ``s3://`` / ``minio://`` prefix is mirrored into the cache first)."""
    from animegen.store.uris import as_s3, is_s3, local_path

    if is_s3(uri):
        from animegen.data.sources import default_cache_dir, materialize

        return materialize(as_s3(uri).rstrip("/") + "/", default_cache_dir() / "work").root
    path = local_path(uri)
    if not path.exists():
        raise FileNotFoundError(f"{uri}: no such Model folder, pipeline run or artifact")
    return path


def _is_model(path: Path) -> bool:
    return (path / "checkpoint.pt").is_file() or path.suffix == ".pt" and path.is_file()


def discover(sources: list[str], registry: str = "") -> list[tuple[str, str, dict[str, Any]]]:
    """(name, local path, metrics) of every model the sources name, in order; names made unique."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for source in sources:
        if source.startswith("run:"):
            from animegen.store.registry import read_run

            if not registry:
                raise ValueError(f"{source}: give --registry (the run registry's URI) to find the run")
            record = read_run(registry, source[len("run:"):])
            for name, entry in (record.get("models") or {}).items():
                uri = (entry.get("artifacts") or {}).get("model")
                if uri:
                    found.append((name, str(_local(uri)), _metrics(record.get("metrics", {}).get(name))))
            continue
        path = _local(source)
        if _is_model(path):
            found.append((_name(path), str(path), evaluation_metrics(path)))
            continue
        run = [(name, path / spec.model[0] / spec.model[1], path / spec.evaluate / "evaluation" / "metrics.json")
               for name, spec in MODELS.items()]
        run = [(n, m, e) for n, m, e in run if _is_model(m)]
        if not run:
            raise ValueError(f"{source}: neither a Model folder (checkpoint.pt) nor a pipeline run's folder")
        for name, model, metrics in run:
            found.append((name, str(model), _metrics(json.loads(metrics.read_text())) if metrics.is_file() else {}))
    seen: dict[str, int] = {}
    unique = []
    for name, path, metrics in found:
        seen[name] = seen.get(name, 0) + 1
        unique.append((name if seen[name] == 1 else f"{name}_{seen[name]}", path, metrics))
    return unique


def load_models(sources: list[str], registry: str = "", device: str = "cpu") -> dict[str, StudioModel]:
    models = {}
    for name, path, metrics in discover(sources, registry):
        m = load_model(name, path, device)
        m.metrics = metrics or m.metrics
        models[name] = m
    if not models:
        raise ValueError("no models to serve")
    return models
