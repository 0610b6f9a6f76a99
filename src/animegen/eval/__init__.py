"""Evaluation: Inception features (two back-ends), FID and KID, cached reference statistics, generated-sample
features; per-class accuracy, reports and comparison across runs live in the sibling modules.

The names below are imported from their modules on first use, so importing a light sibling (``eval.report``,
``eval.html``) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Stats": "fid", "StatsCache": "fid", "dataset_stats": "fid", "fid_between": "fid", "fid_from_stats": "fid",
    "frechet_distance": "fid", "generator_features": "fid", "kid": "fid",
    "BACKENDS": "inception", "Extractor": "inception", "InceptionWeights": "inception",
    "InceptionWeightsError": "inception", "find_weights": "inception", "resolve_extractor": "inception",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"animegen.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'animegen.eval' has no attribute {name!r}")
