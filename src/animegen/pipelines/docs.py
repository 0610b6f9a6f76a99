"""The parameter tables of pipelines/README.md and of each component's README.md, generated from the schema.

Each table sits between ``<!-- BEGIN parameters -->`` and ``<!-- END parameters -->``; ``animegen pipeline params
--write-readmes`` rewrites them and tests/test_schema.py fails when a committed table differs from a fresh one. A
component parameter's meaning is the stage option of the same name (``options``: the stage's other fields), else the
pipeline parameter of the same name, else the few glue parameters named in GLUE.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

from animegen.config import markdown_table, option, options, replace_generated
from animegen.pipelines.params import PARAMETERS, PipelineParams

MARKER = "parameters"
PACKAGE = Path(__file__).resolve().parents[1]
GLUE = {
    "source": "the images to ingest: folder, .zip/.tar, https://, s3://, kaggle:OWNER/DATASET or synthetic:?...",
    "model_name": "the model's name in the report and in KFP metric names (fid_<name>, acc_both_<name>)",
    "name": "the comparison's name in the report",
    "job_name": "the KFP run's name (set by the pipeline), recorded in the run registry",
    "job_id": "the KFP run's id (set by the pipeline), recorded in the run registry",
    "run_id": "the KFP run's id (set by the pipeline): with task_name, the checkpoint upload's key, the same "
              "for every retry of the task",
    "task_name": "the task's name in the pipeline (set by the pipeline), part of the checkpoint upload's key",
    "credentials_secret": "the Kubernetes secret with the object store's key pair (keys accesskey, secretkey), "
                          "named in the training pods' environment (the compile option --object-store-secret)",
    "branch": "the skipped branch",
    "reason": "why it is skipped (shown in the report)",
}


def _stage_configs() -> dict[str, tuple[str, type | None]]:
    """component function -> (its folder under components/, the Config of the stage it runs)."""
    from animegen.data.ingest import IngestConfig
    from animegen.eval.evaluate import EvalConfig, FidConfig
    from animegen.labels.colour_train import TaggerTrainConfig
    from animegen.labels.label import LabelConfig
    from animegen.train.config import TrainConfig

    return {"ingest": ("ingest", IngestConfig), "label": ("label", LabelConfig),
            "tagger": ("tagger", TaggerTrainConfig), "train": ("train", TrainConfig),
            "train_nodes": ("train", TrainConfig),
            "transfer": ("transfer", TrainConfig), "evaluate": ("evaluate", EvalConfig),
            "cross_fid": ("evaluate", FidConfig), "report": ("report", None), "plan": ("control", None),
            "skip": ("control", None)}


def parameter_table() -> str:
    """The pipeline's parameters (PipelineParams), as in pipelines/README.md."""
    return markdown_table([(o.name, o.type_name, o.default, o.help) for o in options(PipelineParams)])


def _meaning(name: str, cls: type | None) -> str:
    if cls is not None:
        if name == "options":
            return f"other {cls.__name__} fields (a JSON object; the parameters above win)"
        for candidate in (name, f"rules.{name}"):
            try:
                o = option(cls, candidate)
            except KeyError:
                continue
            text = o.explained() + (", comma-separated" if o.base is list else "")
            unset = o.unset if o.unset is not None else ("" if o.base is list else None)
            if unset is not None:
                means = o.default_text or o.default
                text += f"; {'< 0' if unset == -1 else repr(unset) if unset == '' else unset} = {means}"
            return text
    if name in PARAMETERS:
        return PARAMETERS[name].help
    return GLUE[name]


def component_table(function: str) -> str:
    """The parameters (not the artifacts) of the component ``function``, with their meaning from the schema."""
    from animegen.pipelines.pipeline import _components

    component = _components()[function]
    cls = _stage_configs()[function][1]
    rows = []
    for p in inspect.signature(component.python_func).parameters.values():
        if p.annotation not in (str, int, float, bool, dict, list):
            continue  # an input or output artifact
        default = dataclasses.MISSING if p.default is inspect.Parameter.empty else p.default
        rows.append((p.name, p.annotation.__name__, default, _meaning(p.name, cls)))
    return markdown_table(rows)


def _component_block(folder: str) -> str:
    functions = [f for f, (d, _) in _stage_configs().items() if d == folder]
    if len(functions) == 1:
        return component_table(functions[0])
    return "".join(f"`{f}`:\n\n{component_table(f)}\n" for f in functions)


def generated() -> dict[Path, str]:
    """README path -> its text with the generated tables brought up to date."""
    out: dict[Path, str] = {}
    readme = PACKAGE / "pipelines" / "README.md"
    out[readme] = replace_generated(readme.read_text(), MARKER, parameter_table())
    for folder in dict.fromkeys(d for d, _ in _stage_configs().values()):
        readme = PACKAGE / "components" / folder / "README.md"
        out[readme] = replace_generated(readme.read_text(), MARKER, _component_block(folder))
    return out


def stale() -> list[Path]:
    """The READMEs whose committed tables differ from the schema's."""
    return [path for path, text in generated().items() if path.read_text() != text]


def write_readmes() -> list[Path]:
    """Rewrite the stale READMEs' tables; returns their paths."""
    changed = stale()
    texts = generated()
    for path in changed:
        path.write_text(texts[path])
    return changed
