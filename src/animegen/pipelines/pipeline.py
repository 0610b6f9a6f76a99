"""The animegen KFP pipeline: the DAG that reproduces both source papers' experiments, and its compile-time options.

Tasks (names are stable: they name the artifacts' folders, the KFP Compare page rows and ``--only`` targets)::

    ingest-main -> label -> tagger
                         -> train-conditional -> evaluate-conditional                  (FID, per-class accuracy)
                            (nodes > 1: train-conditional-nodes, a multi-node TrainJob, in its place)
    [run_manga]     ingest-manga (lineart, 3 channels) -> transfer-manga (from train-conditional, init class
                    "black hair") -> evaluate-manga
    [+run_baselines] train-manga-scratch (same budget) -> evaluate-manga-scratch
    [run_character] ingest-character (grown to N) -> transfer-character (init class a parameter) -> evaluate-character
    [+run_baselines] train-character-scratch -> evaluate-character-scratch
    [run_dcgan]     train-dcgan, train-dcgan-conditional (main set) -> evaluate-dcgan, evaluate-dcgan-conditional
    [manga+character] fid-manga-character (cross-dataset FID)
    report (every evaluation; a row per model into the run registry)

A branch that a ``run_*`` parameter turns off is skipped with ``dsl.If``; its ``dsl.Else`` runs a ``skip-<branch>``
placeholder, so the report (fed through ``dsl.OneOf``) lists the branch as skipped. Branches needing two switches
(a baseline needs its transfer set; the cross-dataset FID needs both sets) test the outputs of the ``plan`` task.

``make_pipeline(options)`` builds the pipeline; ``compile_pipeline(path, options)`` writes the YAML users upload
(``animegen pipeline compile``); the committed ``animegen_pipeline.yaml`` is ``compile_pipeline`` with the default
options. ``make_pipeline(options, static=params, reuse=outputs, rerun=tasks)`` builds the variant that reruns some
tasks and imports the other tasks' artifacts from an earlier run (``dsl.importer``): see pipelines/README.md.
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from animegen.pipelines.params import (  # noqa: F401  (the pipeline's schemas, re-exported)
    PARAMETERS,
    Param,
    PipelineOptions,
    PipelineParams,
    check_params,
    default_params,
    parse_toleration,
)
from animegen.run_layout import CROSS_FID, MODELS, TAGGER, CrossSpec, ModelSpec, branches  # noqa: F401  (re-exported)

PIPELINE_NAME = "animegen"
COMPILED = Path(__file__).with_name("animegen_pipeline.yaml")
STAGES = ("ingest", "label", "tagger", "train", "transfer", "evaluate", "report")


# ------------------------------------------------------------------------------------------------ the task graph
@dataclass(frozen=True)
class Task:
    stage: str                # one of STAGES (what --only selects)
    branch: str               # "main" or a key of branches()
    upstream: tuple[str, ...]  # tasks whose artifacts it reads
    outputs: dict[str, str] = field(default_factory=dict)  # artifacts others read: output -> artifact class name


_EVAL = {"metrics": "Metrics"}
TASKS: dict[str, Task] = {
    "ingest-main": Task("ingest", "main", (), {"dataset": "Dataset"}),
    "label": Task("label", "main", ("ingest-main",), {"labelled": "Dataset"}),
    "tagger": Task("tagger", "main", ("label",), {"tagger": "Model"}),
    "train-conditional": Task("train", "main", ("label",), {"model": "Model"}),
    "evaluate-conditional": Task("evaluate", "main", ("train-conditional", "label", "tagger"), _EVAL),
    "ingest-manga": Task("ingest", "manga", (), {"dataset": "Dataset"}),
    "transfer-manga": Task("transfer", "manga", ("train-conditional", "ingest-manga"), {"model": "Model"}),
    "evaluate-manga": Task("evaluate", "manga", ("transfer-manga", "ingest-manga", "tagger"), _EVAL),
    "train-manga-scratch": Task("train", "manga_scratch", ("ingest-manga",), {"model": "Model"}),
    "evaluate-manga-scratch": Task("evaluate", "manga_scratch", ("train-manga-scratch", "ingest-manga", "tagger"),
                                   _EVAL),
    "ingest-character": Task("ingest", "character", (), {"dataset": "Dataset"}),
    "transfer-character": Task("transfer", "character", ("train-conditional", "ingest-character"),
                               {"model": "Model"}),
    "evaluate-character": Task("evaluate", "character", ("transfer-character", "ingest-character", "tagger"), _EVAL),
    "train-character-scratch": Task("train", "character_scratch", ("ingest-character",), {"model": "Model"}),
    "evaluate-character-scratch": Task("evaluate", "character_scratch",
                                       ("train-character-scratch", "ingest-character", "tagger"), _EVAL),
    "train-dcgan": Task("train", "dcgan", ("label",), {"model": "Model"}),
    "train-dcgan-conditional": Task("train", "dcgan", ("label",), {"model": "Model"}),
    "evaluate-dcgan": Task("evaluate", "dcgan", ("train-dcgan", "label", "tagger"), _EVAL),
    "evaluate-dcgan-conditional": Task("evaluate", "dcgan", ("train-dcgan-conditional", "label", "tagger"), _EVAL),
    "fid-manga-character": Task("evaluate", "cross_fid", ("ingest-manga", "ingest-character"), _EVAL),
    "report": Task("report", "main", ("evaluate-conditional", "evaluate-manga", "evaluate-manga-scratch",
                                      "evaluate-character", "evaluate-character-scratch", "evaluate-dcgan",
                                      "evaluate-dcgan-conditional", "fid-manga-character")),
}
GPU_STAGES = ("train", "transfer")
# run parameters that place and size tasks (pipelines/README.md, "Placement, sizes and images")
PLACEMENT_PARAMS = ("cpu_image", "gpu_image", "eval_image", "gpu_accelerator", "gpus", "eval_gpus", "gpu_cpu_request",
                    "gpu_cpu_limit", "gpu_memory_request", "gpu_memory_limit", "cpu_cpu_request", "cpu_cpu_limit",
                    "cpu_memory_request", "cpu_memory_limit", "gpu_node_selector", "gpu_tolerations",
                    "eval_node_selector", "eval_tolerations")
# components that read or write the object store (s3:// sources and weights, checkpoints, FID statistics cache,
# the registry): they get the object-store secret as env, and the endpoint, region and ANIMEGEN_STORE as parameters
STORE_COMPONENTS = ("ingest", "label", "train", "train_nodes", "transfer", "evaluate", "cross_fid", "report")
# the multi-node launcher (nodes > 1): a task of its own beside train-conditional (dsl.If / dsl.Else on ``nodes``,
# its Model through dsl.OneOf); it trains nothing in its pod, so it gets the CPU image and the CPU tasks' sizes
NODES_TASK = "train-conditional-nodes"
CACHED_STAGES = ("ingest", "label", "tagger", "train", "transfer")  # evaluate and report always run


def downstream(tasks: Iterable[str]) -> set[str]:
    """``tasks`` and every task that reads their artifacts, directly or not."""
    out = set(tasks)
    changed = True
    while changed:
        changed = False
        for name, task in TASKS.items():
            if name not in out and out & set(task.upstream):
                out.add(name)
                changed = True
    return out


def select(only: Iterable[str]) -> set[str]:
    """Tasks named by ``--only`` values: a stage (every task of it) or a task name."""
    chosen: set[str] = set()
    for item in only:
        hits = {n for n, t in TASKS.items() if t.stage == item} if item in STAGES else (
            {item} if item in TASKS else set())
        if not hits:
            raise ValueError(f"--only {item!r}: not a stage ({', '.join(STAGES)}) nor a task "
                             f"({', '.join(TASKS)})")
        chosen |= hits
    return chosen


def _named(component: Any, name: str) -> Any:
    """``component`` under the name ``name``: KFP names a task after its component, so every task of the DAG gets
    a stable, readable name (evaluate-manga rather than evaluate-3) in the YAML, the UI and local artifact folders."""
    from kfp.dsl.python_component import PythonComponent

    return PythonComponent(dataclasses.replace(component.component_spec, name=name), component.python_func)


def _components() -> dict[str, Any]:
    from animegen.components.control.component import plan, skip
    from animegen.components.evaluate.component import cross_fid, evaluate
    from animegen.components.ingest.component import ingest
    from animegen.components.label.component import label
    from animegen.components.report.component import report
    from animegen.components.tagger.component import tagger
    from animegen.components.train.component import train, train_nodes
    from animegen.components.transfer.component import transfer

    return {"ingest": ingest, "label": label, "tagger": tagger, "train": train, "train_nodes": train_nodes,
            "transfer": transfer,
            "evaluate": evaluate, "cross_fid": cross_fid, "report": report, "plan": plan, "skip": skip}


# ------------------------------------------------------------------------------------------------ the builder
@dataclass(frozen=True)
class _Ref:
    """An output of a DAG task, resolved when a task that runs consumes it."""
    task: str
    output: str


class _Dag:
    """Creates the tasks: real ones with their placement, caching and retry settings, or (in a rerun) importers of
    an earlier run's artifacts. ``static``: parameter values that decide the branches at build time (a rerun);
    None: branches decided at run time by dsl.If on the pipeline parameters."""

    def __init__(self, options: PipelineOptions, static: dict[str, Any] | None,
                 reuse: dict[str, dict[str, str]] | None, rerun: set[str] | None, source: str):
        self.options, self.static, self.reuse, self.rerun, self.source = options, static, reuse or {}, rerun, source
        self.comp = _components()
        self.p: dict[str, Any] = {}  # the pipeline's parameters (channels), set by _build
        self.created: dict[str, Any] = {}
        self.imported: dict[tuple[str, str], Any] = {}
        self.on = branches(**{k: static[k] for k in ("run_manga", "run_character", "run_baselines", "run_dcgan")}
                           ) if static is not None else None

    # --- resolving outputs
    def resolve(self, value: Any) -> Any:
        if not isinstance(value, _Ref):
            return value
        if value.task in self.created:
            return self.created[value.task].outputs[value.output]
        key = (value.task, value.output)
        if key not in self.imported:
            uri = self.reuse.get(value.task, {}).get(value.output)
            if not uri:
                raise ValueError(f"{self.source} has no {value.output!r} artifact of task {value.task} (it did not "
                                 f"run there, or failed); rerun it too: --only {value.task}")
            from kfp import dsl
            from kfp.dsl import types

            cls = getattr(types.artifact_types, TASKS[value.task].outputs.get(value.output, "Artifact"))
            imp = dsl.importer(artifact_uri=uri, artifact_class=cls, reimport=False)
            imp.set_display_name(f"{value.task}.{value.output} (imported)")
            self.imported[key] = imp
        return self.imported[key].output

    # --- tasks
    def runs(self, name: str) -> bool:
        return self.rerun is None or name in self.rerun or name not in TASKS  # plan and skip-* always run

    def task(self, name: str, component: str, /, **args: Any) -> Callable[[str], Any]:
        """Create task ``name`` (when it runs in this build) and return ``out(output)``: a reference to one of its
        outputs (the task's own, or an importer of the earlier run's artifact)."""
        if self.runs(name):
            t = _named(self.comp[component], name)(**{k: self.resolve(v) for k, v in args.items()})
            self._configure(name, component, t)
            self.created[name] = t
        return lambda output: _Ref(name, output) if name in TASKS else self.created[name].outputs[output]

    def _configure(self, name: str, component: str, t: Any) -> None:
        """Caching, retries, placement, image and secrets of task ``t``. Placement, sizes and images come from the
        run parameters (``self.p``): in the YAML they are ``{{$.inputs.parameters['pipelinechannel--NAME']}}``
        placeholders (resources, image) or componentInputParameter references (nodeSelectorJson, tolerationJson),
        which the KFP >= 2.17 driver resolves per task (backend/src/v2/driver: initPodSpecPatch resolves the
        image, CPU/memory and accelerator placeholders with resolvePodSpecInputRuntimeParameter, which reads only
        a parameter's *string* value, hence gpus / eval_gpus are text; extendPodSpecPatch resolves
        nodeSelectorJson and tolerationJson, skipping empty ones)."""
        from kfp import kubernetes

        o, p = self.options, self.p
        stage = TASKS[name].stage if name in TASKS else "launch" if component == "train_nodes" else "control"
        t.set_caching_options(stage in CACHED_STAGES or stage in ("control", "launch"))
        if stage in GPU_STAGES:
            t.set_container_image(p["gpu_image"])
            t.set_accelerator_type(p["gpu_accelerator"]).set_accelerator_limit(p["gpus"])
            t.set_cpu_request(p["gpu_cpu_request"]).set_cpu_limit(p["gpu_cpu_limit"])
            t.set_memory_request(p["gpu_memory_request"]).set_memory_limit(p["gpu_memory_limit"])
            kubernetes.add_node_selector_json(t, p["gpu_node_selector"])
            kubernetes.add_toleration_json(t, p["gpu_tolerations"])
            t.set_retry(num_retries=o.retries, backoff_duration="60s", backoff_factor=2.0)
        elif stage == "launch":  # submits and watches the multi-node job: retried, it finds that job again
            t.set_container_image(p["cpu_image"])
            t.set_cpu_request(p["cpu_cpu_request"]).set_cpu_limit(p["cpu_cpu_limit"])
            t.set_memory_request(p["cpu_memory_request"]).set_memory_limit(p["cpu_memory_limit"])
            t.set_retry(num_retries=o.retries, backoff_duration="60s", backoff_factor=2.0)
        elif stage != "control":
            t.set_cpu_request(p["cpu_cpu_request"]).set_cpu_limit(p["cpu_cpu_limit"])
            t.set_memory_request(p["cpu_memory_request"]).set_memory_limit(p["cpu_memory_limit"])
            if stage == "evaluate":
                t.set_container_image(p["eval_image"])
                t.set_accelerator_type(p["gpu_accelerator"]).set_accelerator_limit(p["eval_gpus"])
                kubernetes.add_node_selector_json(t, p["eval_node_selector"])
                kubernetes.add_toleration_json(t, p["eval_tolerations"])
            else:
                t.set_container_image(p["cpu_image"])
        else:  # plan, skip-*: tiny, no resources asked; the CPU image a user points elsewhere must serve them too
            t.set_container_image(p["cpu_image"])
        # kfp 2.17.3's set_cpu_*/set_memory_*/set_accelerator_* turn a channel into its placeholder text without
        # registering the channel as a task input (set_container_image does register its own): inside a dsl.If
        # sub-DAG the parameter would then never be passed down, and the task's input would name a DAG input that
        # does not exist (kfp.local: "Parent pipeline input argument 'pipelinechannel--cpu_cpu_limit' not found";
        # the driver would fail alike). Register every placement channel the task uses.
        used = f"{t.container_spec.resources} {t.container_spec.image}"
        t.register_pipeline_channels([p[k] for k in PLACEMENT_PARAMS if p[k].pattern in used])
        if component in STORE_COMPONENTS:
            kubernetes.use_secret_as_env(t, secret_name=o.object_store_secret,
                                         secret_key_to_env={"accesskey": "AWS_ACCESS_KEY_ID",
                                                            "secretkey": "AWS_SECRET_ACCESS_KEY"})
        if component == "ingest" and o.kaggle_secret:
            kubernetes.use_secret_as_env(t, secret_name=o.kaggle_secret,
                                         secret_key_to_env={"username": "KAGGLE_USERNAME", "key": "KAGGLE_KEY"})

    def optional(self, branch: str, condition: Callable[[], Any], body: Callable[[], dict[str, Any]],
                 reason: str) -> dict[str, Any]:
        """The outputs of ``body`` (keys starting with "dataset" or "metrics") when ``branch`` runs, else those of a
        ``skip-<branch>`` placeholder: dsl.If / dsl.Else / dsl.OneOf, or decided now in a static build."""
        from kfp import dsl

        skip_name = f"skip-{branch.replace('_', '-')}"

        def kind(key: str) -> str:
            return "dataset" if key.startswith("dataset") else "metrics"

        if self.on is not None:
            if self.on[branch]:
                return body()
            self.task(skip_name, "skip", branch=branch, reason=reason)
            return {key: self.created[skip_name].outputs[kind(key)] for key in _body_keys(branch)}
        with dsl.If(condition(), name=branch.replace("_", "-")):
            produced = {k: self.resolve(v) for k, v in body().items()}
        with dsl.Else():
            self.task(skip_name, "skip", branch=branch, reason=reason)
        skipped = self.created[skip_name]
        return {k: dsl.OneOf(v, skipped.outputs[kind(k)]) for k, v in produced.items()}


def _body_keys(branch: str) -> tuple[str, ...]:
    return {"manga": ("dataset", "metrics"), "character": ("dataset", "metrics"),
            "dcgan": ("metrics", "metrics_conditional")}.get(branch, ("metrics",))


def train_conditional(dag: _Dag, p: dict[str, Any], args: dict[str, Any]) -> Any:
    """The conditional model: ``train-conditional`` on one node, or (``nodes`` > 1 at run time) the
    ``train-conditional-nodes`` launcher of a multi-node Kubeflow Trainer job, whichever ran (dsl.OneOf). A build
    with its branches decided up front (a rerun) and a build that imports the model train it on one node."""
    from kfp import dsl

    if dag.on is not None or not dag.runs("train-conditional"):
        return dag.task("train-conditional", "train", **args)("model")
    with dsl.If(p["nodes"] == "1", name="one-node"):
        one = dag.resolve(dag.task("train-conditional", "train", **args)("model"))
    with dsl.Else():
        launcher = {k: v for k, v in args.items() if k not in ("device", "gpus")}
        many = dag.task(NODES_TASK, "train_nodes", **launcher, nodes=p["nodes"], gpus=p["gpus"],
                        **{k: p[k] for k in ("gpu_image", "gpu_accelerator", "gpu_cpu_request", "gpu_cpu_limit",
                                             "gpu_memory_request", "gpu_memory_limit", "gpu_node_selector",
                                             "gpu_tolerations", "trainer_kind", "trainer_runtime")},
                        credentials_secret=dag.options.object_store_secret)("model")
    return dsl.OneOf(one, many)


def _build(p: dict[str, Any], dag: _Dag) -> Any:
    """The DAG. ``p``: the pipeline's parameters (channels)."""
    dag.p = p
    seed, device, res = p["seed"], p["device"], p["resolution"]
    store = dict(s3_endpoint=p["s3_endpoint"], s3_region=p["s3_region"], store_uri=p["store_uri"])
    ingest_common = dict(resolution=res, holdout=p["holdout"], seed=seed, s3_endpoint=p["s3_endpoint"],
                         options=p["ingest_options"])
    sg_shape = dict(arch=p["sg_arch"], resolution=res, z_dim=p["sg_z_dim"], w_dim=p["sg_w_dim"],
                    mapping_layers=p["sg_mapping_layers"], channel_base=p["sg_channel_base"],
                    channel_max=p["sg_channel_max"], cond_mode=p["sg_cond_mode"], batch=p["sg_batch"],
                    r1_gamma=p["sg_r1_gamma"], augment=p["sg_augment"])
    from kfp import dsl
    # checkpoint upload: a retried train/transfer task resumes from <checkpoint_root>/<run id>/<task name>
    run_common = dict(snapshot_kimg=p["snapshot_kimg"], seed=seed, device=device, options=p["train_options"],
                      gpus=p["gpus"], checkpoint_root=p["checkpoint_root"], run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                      task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER, **store)
    transfer_common = dict(batch=p["sg_batch"], r1_gamma=p["sg_r1_gamma"], augment=p["sg_augment"],
                           freeze_d=p["freeze_d"],
                           conditional=False, **run_common)
    eval_common = dict(n_fid=p["n_fid"], psi=p["psi"], k_per_class=p["k_per_class"],
                       max_reference=p["max_reference"], snapshots=p["eval_snapshots"], grids=p["eval_grids"],
                       batch=p["eval_batch"], seed=seed, device=device, options=p["eval_options"], **store)

    main = dag.task("ingest-main", "ingest", source=p["main_source"], sha256=p["main_sha256"], mode="rgb",
                    **ingest_common)
    labelled = dag.task("label", "label", dataset=main("dataset"), tags=p["label_tags"], mode=p["label_mode"],
                        threshold=p["label_threshold"], min_per_class=p["label_min_per_class"],
                        hair=p["label_hair"], eyes=p["label_eyes"], options=p["label_options"], **store)("labelled")
    tagger = dag.task("tagger", "tagger", dataset=labelled, epochs=p["tagger_epochs"], width=p["tagger_width"],
                      resolution=p["tagger_resolution"], batch=p["tagger_batch"], seed=seed, device=device,
                      options=p["tagger_options"])("tagger")
    conditional = train_conditional(dag, p, dict(dataset=labelled, conditional=True, kimg=p["kimg_conditional"],
                                                 **sg_shape, **run_common))

    def evaluate(name: str, model: Any, dataset: Any) -> Any:
        return dag.task(MODELS[name].evaluate, "evaluate", model=model, dataset=dataset, tagger=tagger,
                        model_name=name, **eval_common)("metrics")

    plan = None
    if dag.on is None:
        dag.task("plan", "plan", run_manga=p["run_manga"], run_character=p["run_character"],
                 run_baselines=p["run_baselines"], run_dcgan=p["run_dcgan"])
        plan = dag.created["plan"]

    def transfer_branch(target: str, ingest_args: dict[str, Any], init_class: Any, kimg: Any) -> Callable:
        def body() -> dict[str, Any]:
            data = dag.task(f"ingest-{target}", "ingest", **ingest_args, **ingest_common)("dataset")
            model = dag.task(f"transfer-{target}", "transfer", init_model=conditional, dataset=data,
                             init_class=init_class, kimg=kimg, **transfer_common)("model")
            return {"dataset": data, "metrics": evaluate(target, model, data)}
        return body

    def scratch_branch(target: str, data: Any, kimg: Any) -> Callable:
        def body() -> dict[str, Any]:
            model = dag.task(f"train-{target}-scratch", "train", dataset=data, conditional=False, kimg=kimg,
                             **sg_shape, **run_common)("model")
            return {"metrics": evaluate(f"{target}_scratch", model, data)}
        return body

    manga = dag.optional("manga", lambda: p["run_manga"] == True, transfer_branch(  # noqa: E712 (a KFP condition)
        "manga", dict(source=p["manga_source"], sha256=p["manga_sha256"], mode=p["manga_mode"],
                      channels=p["manga_channels"]), p["manga_init_class"], p["kimg_manga"]),
        "run_manga is false")
    manga_scratch = dag.optional("manga_scratch", lambda: plan.outputs["manga_scratch"] == True,  # noqa: E712
                                 scratch_branch("manga", manga["dataset"], p["kimg_manga"]),
                                 "run_baselines or run_manga is false")
    character = dag.optional("character", lambda: p["run_character"] == True, transfer_branch(  # noqa: E712
        "character", dict(source=p["character_source"], sha256=p["character_sha256"], mode="rgb",
                          grow_to=p["character_grow_to"]), p["character_init_class"], p["kimg_character"]),
        "run_character is false")
    character_scratch = dag.optional("character_scratch", lambda: plan.outputs["character_scratch"] == True,  # noqa
                                     scratch_branch("character", character["dataset"], p["kimg_character"]),
                                     "run_baselines or run_character is false")

    def dcgans() -> dict[str, Any]:
        dc = dict(arch="dcgan", resolution=res, z_dim=p["dcgan_z_dim"], channel_base=p["dcgan_channel_base"],
                  channel_max=p["dcgan_channel_max"], batch=p["dcgan_batch"], **run_common)
        plain = dag.task("train-dcgan", "train", dataset=labelled, conditional=False, kimg=p["kimg_dcgan"],
                         **dc)("model")
        cond = dag.task("train-dcgan-conditional", "train", dataset=labelled, conditional=True,
                        kimg=p["kimg_dcgan_conditional"], **dc)("model")
        return {"metrics": evaluate("dcgan", plain, labelled),
                "metrics_conditional": evaluate("dcgan_conditional", cond, labelled)}

    dcgan = dag.optional("dcgan", lambda: p["run_dcgan"] == True, dcgans, "run_dcgan is false")  # noqa: E712

    def cross() -> dict[str, Any]:
        return {"metrics": dag.task(CROSS_FID.task, "cross_fid", a=manga["dataset"], b=character["dataset"],
                                    name=CROSS_FID.name, max_images=p["cross_fid_max_images"],
                                    device=device, **store)("metrics")}

    cross_fid = dag.optional("cross_fid", lambda: plan.outputs["cross_fid"] == True, cross,  # noqa: E712
                             "run_manga or run_character is false")

    dag.task("report", "report", conditional=evaluate("conditional", conditional, labelled),
                      manga=manga["metrics"], manga_scratch=manga_scratch["metrics"], character=character["metrics"],
                      character_scratch=character_scratch["metrics"], dcgan=dcgan["metrics"],
                      dcgan_conditional=dcgan["metrics_conditional"], cross_fid=cross_fid["metrics"],
                      registry_uri=p["registry_uri"], s3_endpoint=p["s3_endpoint"], s3_region=p["s3_region"],
                      job_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER, job_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
    return dag.created["report"].outputs["report"]


DESCRIPTION = ("animegen: anime-face GANs. Conditional StyleGAN on a labelled set (FID, per-class accuracy); "
               "transfer to a monochrome set and to a single character, each against a from-scratch baseline; "
               "DCGAN and conditional DCGAN; cross-dataset FID; a report over every model and a row per model "
               "in the run registry.")


def make_pipeline(options: PipelineOptions | None = None, *, defaults: dict[str, Any] | None = None,
                  static: dict[str, Any] | None = None, reuse: dict[str, dict[str, str]] | None = None,
                  rerun: set[str] | None = None, source: str = "the earlier run") -> Any:
    """The pipeline (a KFP GraphComponent). Its parameters are PARAMETERS, with ``defaults`` (or ``static``)
    overriding their default values when given. ``static`` + ``rerun`` + ``reuse``: a rerun built for those
    parameter values (branches decided now): only the tasks in ``rerun`` run; the artifacts they read from other
    tasks are imported from ``reuse`` ({task: {output: URI}}, from ``source``)."""
    from kfp import dsl

    options = options or PipelineOptions()
    if static is not None and defaults is not None:
        raise ValueError("give defaults or static, not both")
    values = check_params(static if static is not None else (defaults or {}))
    if rerun is not None:
        missing = {t for t in rerun if t not in TASKS}
        if missing:
            raise ValueError(f"unknown task(s) {sorted(missing)}")

    built: list[_Dag] = []

    def pipeline(*args: Any, **kwargs: Any) -> Any:  # KFP passes the parameters' channels in signature order
        channels = {**dict(zip(PARAMETERS, args)), **kwargs}
        built.append(_Dag(options, values if static is not None else None, reuse, rerun, source))
        return _build(channels, built[-1])

    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=values[name],
                                annotation=spec.type) for name, spec in PARAMETERS.items()]
    from kfp.dsl import HTML
    pipeline.__signature__ = inspect.Signature(params, return_annotation=HTML)  # type: ignore[attr-defined]
    pipeline.__name__ = PIPELINE_NAME
    pipeline.__doc__ = DESCRIPTION + "\n\nArgs:\n" + "".join(
        f"    {name}: {spec.help}\n" for name, spec in PARAMETERS.items())
    graph = dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)(pipeline)
    graph.imported = sorted({task for task, _ in built[-1].imported})  # tasks whose artifacts a rerun imports
    return graph


def compile_pipeline(path: str | Path, options: PipelineOptions | None = None, **variant: Any) -> Path:
    """Write the pipeline's YAML (what users upload in the KFP UI) to ``path``."""
    return write_yaml(make_pipeline(options, **variant), path)


def write_yaml(pipeline: Any, path: str | Path) -> Path:
    """Compile ``pipeline`` to ``path`` with a stable header (the one compile path of every pipeline YAML)."""
    from kfp import compiler

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(path))
    _stable_header(path)
    return path


def _stable_header(path: Path) -> None:
    """The compiler's ``# Inputs:`` header prints dict and list defaults through protobuf Structs, whose key order
    changes from process to process (a list of tolerations came out in a different order each compile): print
    those defaults as sorted JSON instead, so the same pipeline always compiles to the same bytes. Comments only:
    the spec itself is untouched."""
    import json
    import re

    import yaml

    text = path.read_text()
    spec = next(yaml.safe_load_all(text))
    defaults = {k: v.get("defaultValue") for k, v in spec["root"].get("inputDefinitions", {})
                .get("parameters", {}).items()}

    def fix(m: re.Match) -> str:
        name = m.group(1)
        return f"{m.group(0).split(' [Default: ')[0]} [Default: {json.dumps(defaults[name], sort_keys=True)}]"

    head, sep, body = text.partition("\ncomponents:")
    head = re.sub(r"^#    (\w+): (?:dict|list) \[Default: .*\]$", fix, head, flags=re.M)
    path.write_text(head + sep + body)
