"""Evaluation: Inception features (two back-ends), FID and KID, cached reference statistics, generated-sample
features; per-class accuracy, reports and comparison across runs live in the sibling modules."""
from animegen.eval.fid import (
    Stats,
    StatsCache,
    dataset_stats,
    fid_between,
    fid_from_stats,
    frechet_distance,
    generator_features,
    kid,
)
from animegen.eval.inception import (
    BACKENDS,
    Extractor,
    InceptionWeights,
    InceptionWeightsError,
    find_weights,
    resolve_extractor,
)

__all__ = [
    "BACKENDS", "Extractor", "InceptionWeights", "InceptionWeightsError", "Stats", "StatsCache", "dataset_stats",
    "fid_between", "fid_from_stats", "find_weights", "frechet_distance", "generator_features", "kid",
    "resolve_extractor",
]
