"""Run the pipeline on this machine with ``kfp.local`` (``animegen pipeline run --local``), and rerun parts of a run.

Each component runs as a subprocess of this Python (``SubprocessRunner(use_venv=False)``: the installed package and
its dependencies, no image). Artifacts land under ``<pipeline_root>/<run_id>/<task>/<output>`` where ``run_id`` is
``animegen-<timestamp>``; when the run ends (or fails) ``<pipeline_root>/<run_id>/animegen_run.json`` records its
parameters and every task's artifact paths. ``--only STAGE --from-run RUN_ID`` reads that record and runs a variant
of the DAG in which the selected tasks and every task downstream of them run again, and the artifacts they read from
the other tasks are imported (``dsl.importer``) from the earlier run's folders, which stay where they are.

The run reads like a progress report: one line per task (``[ 7/23] train-conditional ... ok  41.2 s``), written
as the task starts and finished when it ends; each task's full output (kfp.local's executor JSON, the stage's own
lines) goes to ``<run_dir>/<task>/log.txt`` beside its artifacts, and a failing task's last lines and that path are
printed; at the end a table of the models (FID, KID, accuracy, training time) and ``report: <path>.html`` (the
report folder's report.html, the same file as the report task's HTML artifact). ``verbose=True`` prints kfp.local's
own output instead.

kfp.local (2.17) resolves a ``dsl.OneOf`` over parameters but not over artifacts (the report reads each optional
branch's Metrics through a OneOf): :func:`_patch_oneof_artifacts` adds the same rule for artifacts (take the one
branch that produced the output) while the pipeline runs here. On a cluster the KFP backend does this itself.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from animegen.pipelines.pipeline import (
    PIPELINE_NAME,
    TASKS,
    PipelineOptions,
    branches,
    check_params,
    downstream,
    make_pipeline,
    select,
)

RECORD = "animegen_run.json"
TASK_LOG = "log.txt"  # each task's full output, in its folder beside its artifacts
FAILED_TAIL = 20  # lines of a failed task's log printed
RECORD_FORMAT = "animegen-local-run/1"
DEFAULT_ROOT = "runs/pipeline"


@dataclass
class LocalRun:
    run_id: str
    run_dir: Path
    report: Path | None
    record: dict[str, Any]


def _patch_oneof_artifacts() -> None:
    """Let kfp.local resolve a dsl.OneOf over artifacts: of the branches' artifact selectors, exactly one produced
    the output. (Its parameter counterpart already does this; a single selector goes through kfp's own code.)"""
    from kfp.local.orchestrator import orchestrator_utils as ou

    cls = ou.OrchestratorUtils
    if getattr(cls, "_animegen_oneof", False):
        return
    original = cls.get_dag_output_artifacts.__func__

    def get_dag_output_artifacts(cls_, dag_outputs_spec, io_store):
        if all(len(s.artifact_selectors) == 1 for s in dag_outputs_spec.artifacts.values()):
            return original(cls_, dag_outputs_spec, io_store)
        outputs = {}
        for key, spec in dag_outputs_spec.artifacts.items():
            found = []
            for selector in spec.artifact_selectors:
                try:
                    found.append(io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key))
                except (KeyError, ValueError):
                    continue  # that branch did not run
            if len(found) != 1:
                raise ValueError(f"dsl.OneOf output {key!r}: {len(found)} branches produced it; expected exactly one")
            outputs[key] = found[0]
        return outputs

    cls.get_dag_output_artifacts = classmethod(get_dag_output_artifacts)
    cls._animegen_oneof = True


class TaskReporter:
    """Runs each kfp.local task subprocess with its output in ``<task folder>/log.txt`` and one line per task on
    ``stream``: ``[ i/n] name`` when it starts, `` ok  12.3 s`` (or ``FAILED``) appended when it ends."""

    def __init__(self, stream: TextIO, total: int):
        self.stream, self.total, self.count = stream, total, 0
        self.seconds: dict[str, float] = {}  # wall time of each task that ran

    @staticmethod
    def task_dir(command: list[str]) -> Path | None:
        """The task's folder: where its executor input says executor_output.json goes."""
        for i, arg in enumerate(command[:-1]):
            if arg == "--executor_input":
                try:
                    return Path(json.loads(command[i + 1])["outputs"]["outputFile"]).parent
                except (ValueError, KeyError, TypeError):
                    return None
        return None

    def __call__(self, full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
        import subprocess

        folder = self.task_dir(full_command)
        name = folder.name if folder is not None else "task"
        log = (folder or Path.cwd()) / TASK_LOG
        log.parent.mkdir(parents=True, exist_ok=True)
        self.count += 1
        width = len(str(max(self.total, self.count)))
        self._write(f"[{self.count:>{width}}/{max(self.total, self.count)}] {name:<28} ")
        t0 = time.perf_counter()
        with log.open("w") as f:
            code = subprocess.run(full_command, stdout=f, stderr=subprocess.STDOUT, text=True,
                                  env={**os.environ, **(env_vars or {})}).returncode
        self.seconds[name] = time.perf_counter() - t0
        self._write(f"{'ok' if code == 0 else 'FAILED':<6} {self.seconds[name]:6.1f} s\n")
        if code != 0:
            lines = log.read_text(errors="replace").splitlines()[-FAILED_TAIL:]
            self._write(f"--- the last {len(lines)} lines of {name}'s log:\n"
                        + "".join(f"    {line}\n" for line in lines) + f"--- full log: {log}\n")
        return code

    def _write(self, text: str) -> None:  # not print(): kfp.local indents prints while a task runs
        self.stream.write(text)
        self.stream.flush()

    @contextlib.contextmanager
    def installed(self):
        """kfp.local runs its task subprocesses through this reporter, and its own output goes nowhere."""
        from kfp.local import subprocess_task_handler as handler

        original = handler.run_local_subprocess
        handler.run_local_subprocess = self
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield self
        finally:
            handler.run_local_subprocess = original


def expected_tasks(values: dict[str, Any], rerun: set[str] | None) -> int:
    """How many tasks the run executes: the tasks of the branches that are on (or of the rerun), one ``skip-*``
    placeholder per branch that is off, and the ``plan`` task of a full run."""
    on = branches(**{k: values[k] for k in ("run_manga", "run_character", "run_baselines", "run_dcgan")})
    real = rerun if rerun is not None else {t for t, spec in TASKS.items() if spec.branch == "main" or on[spec.branch]}
    return len(real) + sum(not v for v in on.values()) + (rerun is None)


def summary_lines(run_dir: Path) -> list[str]:
    """The models of a finished run as a short table (from the report's compare.json)."""
    from animegen.eval.html import fmt

    found = sorted(run_dir.glob("report/*/compare/compare.json"))
    rows = json.loads(found[0].read_text()).get("rows", []) if found else []
    if not rows:
        return []
    table = [["model", "FID", "KID", "both ✓", "train time"]]
    table += [[str(r["model"]), fmt(r.get("fid")), fmt(r.get("kid")), fmt(r.get("both_accuracy"), "pct"),
               fmt(r.get("train_wall_s"), "s")] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
            for row in table]


def init_local(pipeline_root: str | os.PathLike) -> Path:
    """``kfp.local`` set up for this package: subprocesses of this Python, artifacts under ``pipeline_root``."""
    import logging
    import warnings

    from kfp import local

    import animegen

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    _patch_oneof_artifacts()
    # The components import animegen in subprocesses: make sure they find this very copy (an editable install
    # does already; a source checkout on sys.path would not be inherited otherwise).
    here = str(Path(animegen.__file__).resolve().parents[1])
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep) if os.environ.get("PYTHONPATH") else []
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *paths])
    # kfp.local warns for every task that its image has no "python" in the name; the images are ours.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    # ... and that resources, accelerators and node placement mean nothing here (they are for the cluster).
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    logging.getLogger("kfp").setLevel(logging.WARNING)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return root


def load_record(pipeline_root: str | os.PathLike, run_id: str) -> dict[str, Any]:
    """The record of local run ``run_id`` (a folder name under ``pipeline_root``, or a run folder's path)."""
    run_dir = Path(run_id) if Path(run_id).is_dir() and (Path(run_id) / RECORD).is_file() else \
        Path(pipeline_root) / run_id
    path = run_dir / RECORD
    if not path.is_file():
        runs = sorted(p.name for p in Path(pipeline_root).glob(f"{PIPELINE_NAME}-*") if (p / RECORD).is_file())
        raise FileNotFoundError(f"--from-run {run_id}: no {RECORD} in {run_dir}; runs under {pipeline_root}: "
                                f"{', '.join(runs[-5:]) or 'none'}")
    return json.loads(path.read_text())


def record_from_registry(registry_uri: str, run_id: str) -> dict[str, Any]:
    """The task outputs of run ``run_id`` as its registry record lists them (``tasks``: written by the report)."""
    from animegen.store.registry import read_run

    run = read_run(registry_uri, run_id)
    return {"run_id": run_id, "tasks": run.get("tasks") or {}, "params": None, "source": run.get("uri")}


def rerun_plan(only: list[str], params: dict[str, Any]) -> set[str]:
    """The tasks a rerun runs: those ``only`` names, everything downstream of them, in branches that are on."""
    on = {"main": True, **branches(**{k: params[k] for k in ("run_manga", "run_character", "run_baselines",
                                                             "run_dcgan")})}
    chosen = select(only)
    rerun = {t for t in downstream(chosen) if on[TASKS[t].branch]}
    if not chosen & rerun:
        raise ValueError(f"--only {' '.join(only)}: {', '.join(sorted(chosen))} sit in a branch that is off for these "
                         "parameters (run_manga, run_character, run_baselines, run_dcgan)")
    return rerun


def _task_outputs(run_dir: Path) -> dict[str, dict[str, str]]:
    tasks: dict[str, dict[str, str]] = {}
    for name in TASKS:
        folder = run_dir / name
        if folder.is_dir():
            outputs = {p.name: str(p) for p in sorted(folder.iterdir())
                       if p.name not in ("executor_output.json", TASK_LOG)}
            if outputs and (folder / "executor_output.json").is_file():  # written when the task succeeded
                tasks[name] = outputs
    return tasks


def report_html(artifact: Path) -> Path:
    """The run report as an .html file: report.html of the report task's folder output (the same page as its
    HTML artifact, which KFP names without a suffix); the artifact itself when that is missing."""
    page = artifact.parent / "report_dir" / "report.html"
    return page if page.is_file() else artifact


def set_threads(threads: int | None) -> None:
    """Torch threads of every stage subprocess (they inherit this environment): ``None`` keeps an OMP_NUM_THREADS
    already set, else 1; 0 leaves torch's default (one per core). One thread is the fastest for the tiny default
    models, and the one setting that does not collapse when other jobs share the cores."""
    if threads is None:
        if "OMP_NUM_THREADS" in os.environ:
            return
        threads = 1
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if threads > 0:
            os.environ[var] = str(threads)
        else:
            os.environ.pop(var, None)


def run_local(params: dict[str, Any] | None = None, pipeline_root: str | os.PathLike = DEFAULT_ROOT, *,
              only: list[str] | None = None, from_run: str | None = None, registry: str | None = None,
              options: PipelineOptions | None = None, threads: int | None = None, verbose: bool = False,
              stream: TextIO | None = None) -> LocalRun:
    """Run the whole DAG locally with ``params`` (defaults for the rest), or with ``only`` + ``from_run`` rerun the
    selected stages/tasks (and what they feed) reusing the other tasks' artifacts of that run (its local record, or
    with ``registry`` the run registry's record). ``registry_uri`` ``auto`` (the default) becomes the local
    registry folder ``<pipeline_root>/registry``; '' records nothing. ``s3_endpoint``, unless given, is '' (this
    machine's S3_ENDPOINT_URL). ``threads``: see :func:`set_threads`. Returns the run's folder, report path and
    record. Progress goes to ``stream`` (default stdout) as the module docstring says; ``verbose`` prints
    kfp.local's own output instead."""
    root = init_local(pipeline_root)
    set_threads(threads)
    given = dict(params or {})
    source = None
    if only:
        if not from_run:
            raise ValueError("--only needs --from-run RUN_ID: the run whose other artifacts are reused")
        prior = record_from_registry(registry, from_run) if registry else load_record(root, from_run)
        base = prior.get("params") or {}
        values = check_params({**base, **given})
        rerun = rerun_plan(only, values)
        reuse = {t: outs for t, outs in (prior.get("tasks") or {}).items() if t not in rerun}
        source = f"run {from_run}" + (f" (registry {registry})" if registry else "")
    else:
        values = check_params(given)
        rerun, reuse = None, {}
    if values["registry_uri"] == "auto":  # what the report would derive from its artifact's path, made explicit
        values["registry_uri"] = str(root / "registry")
    if values["store_uri"] == "auto":  # the namespace's prefix in KFP's bucket: nothing here (no cache, no upload)
        values["store_uri"] = ""
    if "s3_endpoint" not in given:  # the default (the cluster's seaweedfs.kubeflow) means nothing here: '' = this
        values["s3_endpoint"] = ""  # machine's S3_ENDPOINT_URL for s3:// URIs
    pipeline = make_pipeline(options, static=values, reuse=reuse, rerun=rerun, source=source or "") if only \
        else make_pipeline(options)

    before = {p.name for p in root.glob(f"{PIPELINE_NAME}-*")}
    t0 = time.perf_counter()
    status, error = "succeeded", None
    task = None
    reporter = TaskReporter(stream or sys.stdout, expected_tasks(values, rerun))
    try:
        with contextlib.nullcontext() if verbose else reporter.installed():
            task = pipeline(**values)
    except BaseException as e:  # record what exists, then re-raise (with the way to go on from there)
        status, error = "failed", f"{type(e).__name__}: {e}"
        new = sorted(p for p in root.glob(f"{PIPELINE_NAME}-*") if p.name not in before and p.is_dir())
        if isinstance(e, RuntimeError) and new:
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # kfp colours its message for a terminal
            raise RuntimeError(f"{plain}\nThe artifacts so far are in {new[-1]}; once fixed, rerun from the failed "
                               f"stage with: animegen pipeline run --local --pipeline-root {root} --only STAGE "
                               f"--from-run {new[-1].name}") from None
        raise
    finally:
        new = sorted(p for p in root.glob(f"{PIPELINE_NAME}-*") if p.name not in before and p.is_dir())
        if new:
            run_dir = new[-1]
            tasks = _task_outputs(run_dir)
            for name, outs in reuse.items():
                tasks.setdefault(name, outs)  # imported from the earlier run: recorded where they live
            report = report_html(Path(task.outputs["Output"].path)) if task is not None else None
            record = {"format": RECORD_FORMAT, "run_id": run_dir.name, "pipeline_root": str(root),
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "status": status,
                      "error": error, "wall_s": round(time.perf_counter() - t0, 1), "params": values,
                      "only": list(only or []), "from_run": from_run, "registry": registry,
                      "rerun": sorted(rerun) if rerun is not None else "all",
                      "reused": list(getattr(pipeline, "imported", [])), "tasks": tasks,
                      "task_s": {k: round(v, 1) for k, v in reporter.seconds.items()},
                      "report": str(report) if report else None}
            (run_dir / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return LocalRun(run_dir.name, run_dir, report, record)
