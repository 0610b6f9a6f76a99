"""Single-stage pipelines: rerun one stage from the KFP UI on an earlier run's artifacts, without the CLI.

``animegen pipeline compile --only STAGE --from-run RUN`` compiles a variant of the whole DAG with the old run's
artifact URIs baked in: it needs the CLI for every rerun. The pipelines here are compiled once and committed
(``evaluate_only.yaml``, ``transfer_only.yaml`` beside ``animegen_pipeline.yaml``); their inputs are artifact URIs
given as RUN parameters (``dsl.importer(artifact_uri=<a pipeline parameter>)`` compiles to ``artifactUri:
{runtimeParameter: uri}`` with the task input ``uri`` fed by the pipeline parameter; the backend's importer launcher
reads that value at run time and refuses an empty one: kubeflow/pipelines backend/src/v2/component/
importer_launcher.go, ``ImportSpecToArtifact``, case "Runtime Parameter"), so a UI user uploads the YAML once and,
per rerun, pastes the URIs that the earlier run's registry record (``run.json``: ``tasks``) or its task pages list.

- ``evaluate`` (``animegen-evaluate-only``): one ``evaluate`` task on ``model_uri``, ``dataset_uri``, ``tagger_uri``
  under ``model_name`` (its metrics keep the full pipeline's names, ``fid_<model_name>``, so the Compare page lines
  the rerun up with the original run's row).
- ``transfer`` (``animegen-transfer-only``): one ``transfer`` task from ``init_model_uri`` onto ``dataset_uri``;
  its ``model`` output is what an evaluate-only run then takes as ``model_uri``.

The other parameters are the full pipeline's own (``PipelineParams``: same names, defaults, help), limited to those
the stage's task reads, and the tasks are created by the full pipeline's ``_Dag`` (same component, caching, retries,
placement, images and secrets as the stage's tasks in ``animegen_pipeline.yaml``). Which parameters a stage reads is
found by building it once with every parameter and recording the ones read (:class:`_Reads`), so a placement or
store parameter the full pipeline's ``_Dag`` reads is offered here too, with no second list to keep in step; a
component input named like a pipeline parameter (``s3_endpoint``, ...) is fed from it (:func:`_task`).

:func:`stage_arguments` turns a registry record into the run parameters (``animegen pipeline stage-args``).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animegen.config import Config, opt
from animegen.config import options as config_options
from animegen.pipelines.params import PARAMETERS, Param, check_params
from animegen.pipelines.pipeline import MODELS, TAGGER, TASKS, PipelineOptions, _Dag, write_yaml

HERE = Path(__file__).parent


# ------------------------------------------------------------------------------------------------ the URI inputs
@dataclass
class EvaluateInputs(Config):
    """Run parameters of the evaluate-only pipeline that the full pipeline does not have."""

    model_uri: str = field(default="", metadata=opt(
        "URI of the Model to evaluate (registry run.json: tasks.<train or transfer task>.model)"))
    dataset_uri: str = field(default="", metadata=opt(
        "URI of the Dataset it is evaluated against (registry run.json: tasks.label.labelled, "
        "tasks.ingest-manga.dataset, ...)"))
    tagger_uri: str = field(default="", metadata=opt(
        "URI of the colour tagger Model that scores per-class accuracy (registry run.json: tasks.tagger.tagger)"))
    model_name: str = field(default="conditional", metadata=opt(
        "the model's name in the metrics (fid_<model_name>, ...): conditional, manga, manga_scratch, character, "
        "character_scratch, dcgan or dcgan_conditional to line up with a full run's row"))


@dataclass
class TransferInputs(Config):
    """Run parameters of the transfer-only pipeline that the full pipeline does not have."""

    init_model_uri: str = field(default="", metadata=opt(
        "URI of the Model to start from (registry run.json: tasks.train-conditional.model)"))
    dataset_uri: str = field(default="", metadata=opt(
        "URI of the Dataset to transfer to (registry run.json: tasks.ingest-manga.dataset or "
        "tasks.ingest-character.dataset)"))
    init_class: str = field(default="black hair", metadata=opt(
        "source class (or partial name) that the new set starts from: see manga_init_class / character_init_class"))
    kimg: float = field(default=0.2, metadata=opt("training length of the transfer (thousands of images): see "
                                                  "kimg_manga / kimg_character"))


# ------------------------------------------------------------------------------------------------ the stages
@dataclass(frozen=True)
class Stage:
    name: str                    # what --stage takes
    pipeline: str                # the KFP pipeline name
    file: Path                   # the committed YAML
    inputs: type[Config]         # its own run parameters
    like: str                    # a task of the full DAG whose placement, caching and retries it takes
    description: str
    build: Callable[[dict[str, Any], _Dag], Any] = field(repr=False, compare=False)


def _importer(uri: Any, cls_name: str, what: str) -> Any:
    from kfp import dsl
    from kfp.dsl import types

    imp = dsl.importer(artifact_uri=uri, artifact_class=getattr(types.artifact_types, cls_name), reimport=False)
    imp.set_display_name(f"{what} (imported)")
    return imp.output


def _task(dag: _Dag, name: str, component: str, p: dict[str, Any], **args: Any) -> Callable[[str], Any]:
    """``dag.task`` with ``args``, plus every other input of the component that is named like a pipeline parameter
    (the object-store settings, the GPU count, ...: what the full DAG passes to every task of the kind) from ``p``:
    the single-stage task gets the same wiring as the full pipeline's without a second list of names."""
    inputs = dag.comp[component].component_spec.inputs or {}
    extra = {k: p[k] for k in inputs if k not in args and k in PARAMETERS and k in p}
    return dag.task(name, component, **args, **extra)


def _build_evaluate(p: dict[str, Any], dag: _Dag) -> Any:
    task = _task(dag, "evaluate", "evaluate", p, model=_importer(p["model_uri"], "Model", "model"),
                    dataset=_importer(p["dataset_uri"], "Dataset", "dataset"),
                    tagger=_importer(p["tagger_uri"], "Model", "tagger"), model_name=p["model_name"],
                    n_fid=p["n_fid"], psi=p["psi"], k_per_class=p["k_per_class"], max_reference=p["max_reference"],
                    snapshots=p["eval_snapshots"], grids=p["eval_grids"], batch=p["eval_batch"], seed=p["seed"],
                    device=p["device"], options=p["eval_options"])
    return task("metrics")


def _build_transfer(p: dict[str, Any], dag: _Dag) -> Any:
    task = _task(dag, "transfer", "transfer", p, init_model=_importer(p["init_model_uri"], "Model", "init_model"),
                    dataset=_importer(p["dataset_uri"], "Dataset", "dataset"), init_class=p["init_class"],
                    kimg=p["kimg"], batch=p["sg_batch"], r1_gamma=p["sg_r1_gamma"], freeze_d=p["freeze_d"],
                    conditional=False, snapshot_kimg=p["snapshot_kimg"], seed=p["seed"], device=p["device"],
                    options=p["train_options"])
    return task("model")


STAGES: dict[str, Stage] = {
    "evaluate": Stage("evaluate", "animegen-evaluate-only", HERE / "evaluate_only.yaml", EvaluateInputs,
                      "evaluate-conditional",
                      "animegen, one stage: evaluate a Model of an earlier run (FID, KID, per-class accuracy) from "
                      "the artifact URIs given as run parameters.", _build_evaluate),
    "transfer": Stage("transfer", "animegen-transfer-only", HERE / "transfer_only.yaml", TransferInputs,
                      "transfer-manga",
                      "animegen, one stage: transfer (fine-tune) a Model of an earlier run onto a Dataset, from the "
                      "artifact URIs given as run parameters; evaluate the result with animegen-evaluate-only.",
                      _build_transfer),
}


def stage_parameters(stage: str) -> dict[str, Param]:
    """The run parameters of a single-stage pipeline, in signature order: its own inputs, then the full
    pipeline's parameters that its task reads."""
    spec = _stage(stage)
    own = {o.name: Param(o.base, o.default, o.explained()) for o in config_options(spec.inputs)}
    reads = _Reads({**{k: v.default for k, v in PARAMETERS.items()}, **{k: v.default for k, v in own.items()}})
    _trace(spec, reads, {**own, **PARAMETERS})
    return {**own, **{k: v for k, v in PARAMETERS.items() if k in reads.read and k not in own}}


class _Reads(dict):
    """The parameters mapping given to a stage's builder (and the _Dag): records which names are read."""

    def __init__(self, *a: Any, **kw: Any):
        super().__init__(*a, **kw)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)


class _StageDag(_Dag):
    """The full pipeline's task factory for a task named after the stage: it takes the placement, caching,
    retries, image and secrets of the full DAG's task ``like`` (same stage)."""

    def __init__(self, options: PipelineOptions, like: str):
        super().__init__(options, None, None, None, "")
        self.like = like

    def _configure(self, name: str, component: str, t: Any) -> None:
        super()._configure(self.like, component, t)


def _stage(stage: str) -> Stage:
    if stage not in STAGES:
        raise ValueError(f"--stage {stage!r}: one of {', '.join(STAGES)}")
    return STAGES[stage]


def _trace(spec: Stage, values: dict[str, Any], params: dict[str, Param], options: PipelineOptions | None = None
           ) -> Any:
    """The stage as a KFP pipeline whose parameters are ``params`` (defaults from ``values``)."""
    from kfp import dsl

    names = list(params)
    options = options or PipelineOptions()

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        channels = {**dict(zip(names, args)), **kwargs}
        if isinstance(values, _Reads):  # tracing: every read goes through the recording mapping
            values.update(channels)
            channels = values
        dag = _StageDag(options, spec.like)
        dag.p = channels  # the full pipeline's _Dag reads run-time placement parameters from here
        return spec.build(channels, dag)

    pipeline.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=dict.get(values, n),
                           annotation=params[n].type) for n in names],
        return_annotation=_output_type(spec))
    pipeline.__name__ = spec.pipeline.replace("-", "_")
    pipeline.__doc__ = spec.description + "\n\nArgs:\n" + "".join(f"    {n}: {params[n].help}\n" for n in names)
    return dsl.pipeline(name=spec.pipeline, description=spec.description)(pipeline)


def _output_type(spec: Stage) -> Any:
    from kfp.dsl import Metrics, Model

    return Metrics if spec.name == "evaluate" else Model


def make_stage_pipeline(stage: str, options: PipelineOptions | None = None,
                        defaults: dict[str, Any] | None = None) -> Any:
    """The single-stage pipeline ``stage`` (a KFP GraphComponent); ``defaults`` override parameter defaults."""
    spec = _stage(stage)
    params = stage_parameters(stage)
    defaults = dict(defaults or {})
    unknown = sorted(set(defaults) - set(params))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} of the {stage}-only pipeline; it takes "
                         f"{', '.join(params)}")
    own = {o.name for o in config_options(spec.inputs)}
    values = {**{k: v.default for k, v in params.items()},
              **spec.inputs.from_dict({k: v for k, v in defaults.items() if k in own}).to_dict(),
              **{k: v for k, v in check_params({k: v for k, v in defaults.items() if k not in own}).items()
                 if k in params and k not in own}}
    return _trace(spec, values, params, options)


def compile_stage(stage: str, path: str | Path | None = None, options: PipelineOptions | None = None,
                  defaults: dict[str, Any] | None = None) -> Path:
    """Write the single-stage pipeline's YAML (default: the committed file beside this module)."""
    return write_yaml(make_stage_pipeline(stage, options, defaults), Path(path) if path else _stage(stage).file)


# ------------------------------------------------------------------------------------------------ from a record
def stage_arguments(record: dict[str, Any], stage: str, model: str) -> dict[str, Any]:
    """The URI run parameters of single-stage pipeline ``stage`` for ``model`` (a model name of the full run:
    conditional, manga, ...), read from a registry record's ``tasks`` (``read_run``'s result or run.json).
    ``transfer`` takes a transfer model's name (manga or character): its source Model and target Dataset."""
    tasks = record.get("tasks") or {}

    def uri(task_output: tuple[str, str]) -> str:
        task, output = task_output
        found = (tasks.get(task) or {}).get(output)
        if not found:
            raise ValueError(f"run {record.get('run_id', '?')} records no {output!r} artifact of task {task} (that "
                             f"branch did not run, or failed); its tasks: {', '.join(sorted(tasks)) or 'none'}")
        return found

    if model not in MODELS:
        raise ValueError(f"model {model!r}: one of {', '.join(MODELS)}")
    spec = MODELS[model]
    if stage == "evaluate":
        return {"model_uri": uri(spec.model), "dataset_uri": uri(spec.dataset), "tagger_uri": uri(TAGGER),
                "model_name": model}
    if stage == "transfer":
        if TASKS[spec.model[0]].stage != "transfer":
            raise ValueError(f"model {model!r} is not a transfer; transfer-only reruns manga or character")
        source = next(u for u in TASKS[spec.model[0]].upstream if TASKS[u].stage == "train")
        return {"init_model_uri": uri((source, "model")), "dataset_uri": uri(spec.dataset)}
    _stage(stage)
    raise AssertionError(stage)


__all__ = ["STAGES", "compile_stage", "make_stage_pipeline", "stage_arguments", "stage_parameters"]
