"""The models of one pipeline run and the tasks that make them, by name.

The pipeline (``animegen.pipelines``) builds its DAG from these names, the report stage (``animegen.eval.report``)
records the run's artifacts under them, and the ``plan`` component decides the optional branches with
:func:`branches`. They live here, below all three, so that none of them imports another (``pipelines.pipeline``
re-exports them).
"""
from __future__ import annotations

from dataclasses import dataclass


def branches(run_manga: bool, run_character: bool, run_baselines: bool, run_dcgan: bool) -> dict[str, bool]:
    """Which optional branches run (the ``plan`` component returns exactly this)."""
    return {"manga": bool(run_manga), "manga_scratch": bool(run_manga and run_baselines),
            "character": bool(run_character), "character_scratch": bool(run_character and run_baselines),
            "cross_fid": bool(run_manga and run_character), "dcgan": bool(run_dcgan)}


@dataclass(frozen=True)
class ModelSpec:
    evaluate: str
    model: tuple[str, str]    # (task, output) of the model
    dataset: tuple[str, str]  # (task, output) of the set it trains on and is evaluated against


@dataclass(frozen=True)
class CrossSpec:
    task: str
    name: str
    a: tuple[str, str]
    b: tuple[str, str]


MODELS: dict[str, ModelSpec] = {
    "conditional": ModelSpec("evaluate-conditional", ("train-conditional", "model"), ("label", "labelled")),
    "manga": ModelSpec("evaluate-manga", ("transfer-manga", "model"), ("ingest-manga", "dataset")),
    "manga_scratch": ModelSpec("evaluate-manga-scratch", ("train-manga-scratch", "model"),
                               ("ingest-manga", "dataset")),
    "character": ModelSpec("evaluate-character", ("transfer-character", "model"), ("ingest-character", "dataset")),
    "character_scratch": ModelSpec("evaluate-character-scratch", ("train-character-scratch", "model"),
                                   ("ingest-character", "dataset")),
    "dcgan": ModelSpec("evaluate-dcgan", ("train-dcgan", "model"), ("label", "labelled")),
    "dcgan_conditional": ModelSpec("evaluate-dcgan-conditional", ("train-dcgan-conditional", "model"),
                                   ("label", "labelled")),
}
TAGGER = ("tagger", "tagger")
CROSS_FID = CrossSpec("fid-manga-character", "manga_vs_character", ("ingest-manga", "dataset"),
                      ("ingest-character", "dataset"))
