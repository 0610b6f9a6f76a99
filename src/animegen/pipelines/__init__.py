"""The animegen Kubeflow pipeline: the DAG (pipeline.py), its compiled YAML (animegen_pipeline.yaml), local runs
through kfp.local (local.py) and the report step (report.py). See README.md in this folder."""
from animegen.pipelines.pipeline import (
    COMPILED,
    PARAMETERS,
    PIPELINE_NAME,
    STAGES,
    TASKS,
    PipelineOptions,
    compile_pipeline,
    make_pipeline,
)

__all__ = ["COMPILED", "PARAMETERS", "PIPELINE_NAME", "STAGES", "TASKS", "PipelineOptions", "compile_pipeline",
           "make_pipeline"]
