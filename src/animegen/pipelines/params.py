"""The pipeline's two schemas: its run parameters (``PipelineParams``) and its compile-time options
(``PipelineOptions``), Config dataclasses of the same kind as the stages' (``animegen.config``).

A stage parameter takes its help and allowed values from the stage option it sets (``_stage``), so the help of,
say, ``sg_channel_base`` is TrainConfig.channel_base's; ``PARAMETERS`` (what KFP, ``animegen pipeline params`` and
the README table show) is read off ``PipelineParams``; the compile and submit flags are ``PipelineOptions``' fields.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from animegen.components.container_images import CPU_IMAGE, GPU_IMAGE
from animegen.config import Config, opt, option, options
from animegen.data.ingest import IngestConfig
from animegen.eval.evaluate import EvalConfig, FidConfig
from animegen.labels.colour_train import TaggerTrainConfig
from animegen.labels.label import LabelConfig
from animegen.train.config import ARCH_DEFAULTS, TrainConfig


# ------------------------------------------------------------------------------------------------ parameters
def _own(default: Any, help: str, **kw: Any) -> Any:
    """A pipeline parameter of its own (not a stage option)."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=opt(help, **kw))
    return field(default=default, metadata=opt(help, **kw))


def _stage(cls: type, name: str, default: Any, *, what: str = "", unset_means: Any = None,
           help: str | None = None) -> Any:
    """A pipeline parameter that sets the stage option ``cls.name``: its help and allowed values are the option's
    (``what`` prefixes the help; ``help`` replaces it); the option's ``unset`` value (0, -1, '': KFP parameters
    cannot be None) is documented as ``(0 = unset_means)``, by default the option's own default."""
    o = option(cls, name)
    text = what + (help or o.explained())
    if o.unset is not None:
        means = unset_means if unset_means is not None else (o.default_text or o.default)
        text += f" ({'< 0' if o.unset == -1 else repr(o.unset) if o.unset == '' else o.unset} = {means})"
    choices = o.choices + (o.unset,) if o.choices and o.unset is not None else o.choices
    return field(default=default, metadata=opt(text, choices=choices, unset=o.unset))


def _csv_help(cls: type, name: str) -> str:
    """The help of a list option set by a comma-separated string parameter."""
    o = option(cls, name)
    return f"{o.help}, comma-separated ('' = {o.default_text})"


_SG, _DC = ARCH_DEFAULTS["stylegan"], ARCH_DEFAULTS["dcgan"]


# Every user-tunable value. The defaults are TINY settings on synthetic: sources (32 px, narrow networks, a few
# hundred images shown per model, FID on 48 images): the whole DAG runs on a laptop CPU in minutes, and its FIDs
# are meaningless. configs/pipeline/mlds.yaml holds the settings of a real run.
@dataclass
class PipelineParams(Config):
    # the main set (conditional StyleGAN, DCGANs) and its labels
    main_source: str = _own("synthetic:?n=384&hair=blonde,black,blue&eyes=red,blue,green",
                            "main set: folder, .zip/.tar, https://, s3://, kaggle:OWNER/DATASET or synthetic:?...")
    main_sha256: str = _stage(IngestConfig, "sha256", "", what="main set: ")
    label_tags: str = _stage(LabelConfig, "tags", "auto")
    label_mode: str = _stage(LabelConfig, "rules.mode", "pair")
    label_threshold: float = _stage(LabelConfig, "rules.threshold", 0.7)
    label_min_per_class: int = _stage(LabelConfig, "rules.min_per_class", 1)
    label_hair: str = _stage(LabelConfig, "rules.hair", "", help=_csv_help(LabelConfig, "rules.hair"))
    label_eyes: str = _stage(LabelConfig, "rules.eyes", "", help=_csv_help(LabelConfig, "rules.eyes"))
    # the monochrome (manga) transfer set
    manga_source: str = _own("synthetic:?n=256&seed=7&labels=none", "monochrome transfer set (any source URI)")
    manga_sha256: str = _stage(IngestConfig, "sha256", "", what="monochrome set: ")
    manga_mode: str = _own("lineart", "how the monochrome set is made: lineart (XDoG) or grayscale",
                           choices=("lineart", "grayscale"))
    manga_channels: int = _stage(IngestConfig, "channels", 3, what="monochrome set: ")
    manga_init_class: str = _stage(TrainConfig, "init_class", "black hair",
                                   what="monochrome transfer, source class: ")
    # the single-character transfer set
    character_source: str = _own("synthetic:?n=55&seed=23&hair=blonde&eyes=blue&labels=none",
                                 "single-character transfer set (any source URI)")
    character_sha256: str = _stage(IngestConfig, "sha256", "", what="character set: ")
    character_grow_to: int = _stage(IngestConfig, "grow_to", 128, what="character set: ")
    character_init_class: str = _stage(TrainConfig, "init_class", "blonde hair",
                                       what="character transfer, source class: ")
    # shared data and training settings
    resolution: int = _own(32, "image size of every set and model (a power of two)")
    holdout: float = _stage(IngestConfig, "holdout", 0.1, what="every set: ")
    seed: int = _own(0, "seed of splits, initialisation, data order, latents")
    device: str = _own("auto", "device of training and evaluation", choices=("auto", "cpu", "cuda"))
    snapshot_kimg: float = _stage(TrainConfig, "snapshot_kimg", 0.0)
    freeze_d: int = _stage(TrainConfig, "freeze_d", 0, what="transfers: ")
    # StyleGAN
    kimg_conditional: float = _own(0.3, "training length of the conditional StyleGAN (thousands of images)")
    kimg_manga: float = _own(0.2, "training length of the monochrome transfer and of its from-scratch baseline")
    kimg_character: float = _own(0.2, "training length of the character transfer and of its from-scratch "
                                      "baseline")
    sg_batch: int = _stage(TrainConfig, "batch", 16, what="StyleGAN ", unset_means=_SG["batch"])
    sg_z_dim: int = _stage(TrainConfig, "z_dim", 32, what="StyleGAN ", unset_means=_SG["z_dim"])
    sg_w_dim: int = _stage(TrainConfig, "w_dim", 32)
    sg_mapping_layers: int = _stage(TrainConfig, "mapping_layers", 2)
    sg_channel_base: int = _stage(TrainConfig, "channel_base", 256, what="StyleGAN ",
                                  unset_means=_SG["channel_base"])
    sg_channel_max: int = _stage(TrainConfig, "channel_max", 64, what="StyleGAN ")
    sg_arch: str = _own("stylegan", "architecture of the conditional model, its transfers and their from-scratch "
                             "baselines: stylegan (the papers') or stylegan2 (StyleGAN2-ADA's)",
                        choices=("stylegan", "stylegan2"))
    sg_cond_mode: str = _stage(TrainConfig, "cond_mode", "", what="conditional StyleGAN ",
                               unset_means="the architecture's: projection")
    sg_augment: str = _stage(TrainConfig, "augment", "", what="StyleGAN models: ")
    sg_r1_gamma: float = _stage(TrainConfig, "r1_gamma", -1.0, what="StyleGAN ", unset_means=_SG["r1_gamma"])
    # DCGAN
    kimg_dcgan: float = _own(0.3, "training length of the DCGAN")
    kimg_dcgan_conditional: float = _own(0.3, "training length of the conditional DCGAN")
    dcgan_batch: int = _stage(TrainConfig, "batch", 32, what="DCGAN ", unset_means=_DC["batch"])
    dcgan_z_dim: int = _stage(TrainConfig, "z_dim", 32, what="DCGAN ", unset_means=_DC["z_dim"])
    dcgan_channel_base: int = _stage(TrainConfig, "channel_base", 256, what="DCGAN ",
                                     unset_means=_DC["channel_base"])
    dcgan_channel_max: int = _stage(TrainConfig, "channel_max", 64, what="DCGAN ")
    # colour tagger
    tagger_epochs: int = _stage(TaggerTrainConfig, "epochs", 4, what="colour tagger: ")
    tagger_width: int = _stage(TaggerTrainConfig, "width", 16, what="colour tagger: ")
    tagger_resolution: int = _stage(TaggerTrainConfig, "resolution", 32, what="colour tagger: ")
    tagger_batch: int = _stage(TaggerTrainConfig, "batch", 32, what="colour tagger: ")
    # evaluation
    n_fid: int = _stage(EvalConfig, "n_fid", 48)
    psi: float = _stage(EvalConfig, "psi", 0.6)
    k_per_class: int = _stage(EvalConfig, "k_per_class", 16)
    max_reference: int = _stage(EvalConfig, "max_reference", 0)
    eval_snapshots: bool = _stage(EvalConfig, "snapshots", False)
    eval_grids: bool = _stage(EvalConfig, "grids", True)
    eval_batch: int = _stage(EvalConfig, "batch", 0, what="evaluation: ")
    cross_fid_max_images: int = _stage(FidConfig, "max_images", 0, what="cross-dataset FID: ")
    # branches
    run_manga: bool = _own(True, "monochrome transfer branch")
    run_character: bool = _own(True, "single-character transfer branch")
    run_baselines: bool = _own(True, "from-scratch baselines of the transfers (same budget)")
    run_dcgan: bool = _own(True, "DCGAN and conditional DCGAN on the main set")
    # placement, sizes and images: run parameters, resolved per task by the KFP >= 2.17 driver (pipelines/README.md,
    # "Placement"). Defaults fit every documented GPU node type (tests/test_placement.py holds their allocatable).
    cpu_image: str = _own(CPU_IMAGE, "container image of ingest, label, tagger and report")
    gpu_image: str = _own(GPU_IMAGE, "container image of train and transfer (CUDA)")
    gpu_accelerator: str = _own("nvidia.com/gpu", "accelerator resource of the GPU tasks (and of evaluate when "
                                                  "eval_gpus > 0)")
    gpus: str = _own("1", "GPUs per train / transfer task, a whole number >= 1 (text: the KFP driver reads resource "
                          "counts only from string parameters); the training launcher reads it at run time")
    nodes: str = _own("1", "nodes of the conditional model's training, a whole number (text): 1 = the "
                           "train-conditional task itself, on its gpus; more = a Kubeflow Trainer job of nodes x gpus "
                           "GPUs submitted and watched by the train-conditional-nodes task (needs the Trainer, its "
                           "RBAC from manifests/trainer and an object store for the checkpoint: README)")
    trainer_kind: str = _own("TrainJob", "the job nodes > 1 submits: TrainJob (Kubeflow Trainer v2) or PyTorchJob "
                                         "(the older Training Operator v1)")
    trainer_runtime: str = _own("torch-distributed", "the ClusterTrainingRuntime a TrainJob runs under")
    gpu_node_selector: dict = _own({"cloud.google.com/gke-accelerator": "nvidia-l4"},
                                   "node labels of the GPU pool ({} = none; EKS e.g. {\"eks.amazonaws.com/nodegroup\": "
                                   "\"gpu\"}; AKS e.g. {\"agentpool\": \"gpu\"})")
    gpu_tolerations: list = _own([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                                 "Kubernetes tolerations of the GPU tasks ([] = none; AKS e.g. [{\"key\": \"sku\", "
                                 "\"operator\": \"Equal\", \"value\": \"gpu\", \"effect\": \"NoSchedule\"}])")
    gpu_cpu_request: str = _own("3", "CPU request of a GPU task (fits 4-vCPU GPU nodes)")
    gpu_cpu_limit: str = _own("4", "CPU limit of a GPU task")
    gpu_memory_request: str = _own("10Gi", "memory request of a GPU task (fits 16 GiB GPU nodes)")
    gpu_memory_limit: str = _own("12Gi", "memory limit of a GPU task")
    cpu_cpu_request: str = _own("1", "CPU request of the other tasks")
    cpu_cpu_limit: str = _own("2", "CPU limit of the other tasks")
    cpu_memory_request: str = _own("6Gi", "memory request of the other tasks")
    cpu_memory_limit: str = _own("12Gi", "memory limit of the other tasks")
    eval_image: str = _own(CPU_IMAGE, "container image of the evaluations (the gpu_image, with eval_gpus 1 and "
                                      "eval_node_selector / eval_tolerations of the GPU pool: FID on a GPU)")
    eval_gpus: str = _own("0", "GPUs per evaluation, a whole number (0 = CPU only)")
    eval_node_selector: dict = _own({}, "node labels for the evaluations ({} = any node)")
    eval_tolerations: list = _own([], "Kubernetes tolerations of the evaluations ([] = none)")
    # object store and registry
    registry_uri: str = _own("auto", "run registry: s3://BUCKET/PREFIX/runs/ or a folder; auto = KFP's bucket, "
                             "s3://mlpipeline/private/<namespace>/animegen/runs/ (multi-user) or "
                             "s3://mlpipeline/shared/animegen/runs/, locally <pipeline root>/registry; '' = not "
                             "recorded")
    s3_endpoint: str = _own("http://seaweedfs.kubeflow:9000", "S3 endpoint URL for s3:// sources, the registry and "
                            "caches (keys: the object-store secret): KFP >= 2.16's SeaweedFS by default; a MinIO or "
                            "other S3 by its URL ('' = the task's S3_ENDPOINT_URL, else AWS)")
    s3_region: str = _own("", "S3 region ('' = us-east-1)")
    store_uri: str = _own("auto", "object-store prefix s3://BUCKET/PREFIX, set as ANIMEGEN_STORE in every task that "
                                  "uses the store: evaluations cache FID reference statistics there across runs and "
                                  "training uploads its checkpoints under it (so a retry resumes); auto = the "
                                  "namespace's own prefix, s3://mlpipeline/private/<namespace>/animegen/cache, or "
                                  "s3://mlpipeline/shared/animegen/cache outside a namespace, resolved in the task; "
                                  "'' = none")
    checkpoint_root: str = _own("", "object-store prefix (s3://BUCKET/PREFIX) where training and transfer upload "
                                    "their checkpoint every checkpoint_interval_s (in train_options; default 600) "
                                    "under <run id>/<task name>, so a retry resumes ('' = $ANIMEGEN_CHECKPOINTS, "
                                    "else $ANIMEGEN_STORE/checkpoints (auto: the namespace's "
                                    ".../animegen/checkpoints), else no upload)")
    # anything else, per stage: other fields of the stage's Config
    ingest_options: dict = _own({}, "other IngestConfig fields for every ingest (e.g. {\"fit\": \"pad\"})")
    label_options: dict = _own({}, "other LabelConfig fields (e.g. {\"rules\": {\"require\": []}})")
    tagger_options: dict = _own({}, "other TaggerTrainConfig fields")
    train_options: dict = _own({}, "other TrainConfig fields for every training and transfer (e.g. lr_g)")
    eval_options: dict = _own({}, "other EvalConfig fields for every evaluation (e.g. inception_weights)")

    def validate(self) -> None:
        check_placement(self)



_CPU_RE = re.compile(r"^([0-9]*[.])?[0-9]+m?$")  # kfp's own check of a CPU quantity (PipelineTask.set_cpu_limit)
_MEMORY_RE = re.compile(r"^([0-9]*[.])?[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki|k)?$")
_UNITS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def cpu_cores(text: str) -> float:
    """A Kubernetes CPU quantity ('3', '0.5', '500m') in cores."""
    if not _CPU_RE.match(str(text)):
        raise ValueError(f"CPU quantity {text!r}: expected e.g. 3, 0.5 or 500m")
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def memory_bytes(text: str) -> float:
    """A Kubernetes memory quantity ('12Gi', '8G', '512Mi') in bytes."""
    m = _MEMORY_RE.match(str(text))
    if not m:
        raise ValueError(f"memory quantity {text!r}: expected e.g. 12Gi, 8G or 512Mi")
    unit = m.group(2) or ""
    return float(text[:len(text) - len(unit)]) * _UNITS[unit]


def check_placement(p: PipelineParams) -> None:
    """The placement parameters must be values the KFP driver can turn into a pod: it parses each quantity with
    Kubernetes' ParseQuantity and fails the task on an empty or malformed one, so they are checked here, before a
    run is submitted (and requests must not exceed limits: Kubernetes refuses such a pod)."""
    for kind in ("gpu", "cpu"):
        req, lim = getattr(p, f"{kind}_cpu_request"), getattr(p, f"{kind}_cpu_limit")
        if cpu_cores(req) > cpu_cores(lim):
            raise ValueError(f"{kind}_cpu_request {req} exceeds {kind}_cpu_limit {lim}")
        req, lim = getattr(p, f"{kind}_memory_request"), getattr(p, f"{kind}_memory_limit")
        if memory_bytes(req) > memory_bytes(lim):
            raise ValueError(f"{kind}_memory_request {req} exceeds {kind}_memory_limit {lim}")
    if p.trainer_kind not in ("TrainJob", "PyTorchJob"):
        raise ValueError(f"trainer_kind {p.trainer_kind!r}: TrainJob or PyTorchJob")
    for name, low in (("gpus", 1), ("eval_gpus", 0), ("nodes", 1)):
        value = str(getattr(p, name))
        if not value.isdigit() or int(value) < low:
            raise ValueError(f"{name} {value!r}: expected a whole number >= {low} (as text, e.g. \"1\")")
    for name in ("cpu_image", "gpu_image", "eval_image", "gpu_accelerator"):
        if not str(getattr(p, name)).strip():
            raise ValueError(f"{name} must not be empty")
    for name in ("gpu_node_selector", "eval_node_selector"):
        bad = {k: v for k, v in getattr(p, name).items() if not isinstance(v, str) or not k}
        if bad:
            raise ValueError(f"{name}: label values must be strings, got {bad}")
    for name in ("gpu_tolerations", "eval_tolerations"):
        for tol in getattr(p, name):
            if not isinstance(tol, dict) or not set(tol) <= _TOLERATION_KEYS or \
                    tol.get("operator", "Equal") not in ("Equal", "Exists") or \
                    tol.get("effect", "NoSchedule") not in ("NoSchedule", "PreferNoSchedule", "NoExecute", ""):
                raise ValueError(f"{name}: {tol!r} is not a Kubernetes toleration ({{\"key\": ..., \"operator\": "
                                 f"Equal|Exists, \"value\": ..., \"effect\": NoSchedule|PreferNoSchedule|NoExecute}})")


@dataclass(frozen=True)
class Param:
    type: type
    default: Any
    help: str


# The pipeline's parameters, in signature order: PipelineParams' fields (what KFP and `animegen pipeline params` see).
PARAMETERS: dict[str, Param] = {o.name: Param(o.base, o.default, o.explained()) for o in options(PipelineParams)}


def default_params() -> dict[str, Any]:
    return PipelineParams().to_dict()


def check_params(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` checked against PipelineParams (unknown names refused, types coerced as everywhere:
    :func:`animegen.config.coerce`, allowed values checked); returns the full dict of parameters."""
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown pipeline parameter(s) {', '.join(unknown)}; see `animegen pipeline params`")
    return PipelineParams.from_dict(values).to_dict()


# ------------------------------------------------------------------------------------------------ options
@dataclass
class PipelineOptions(Config):
    """Compile-time options: what cannot be a run parameter. Placement, sizes and images are run parameters
    (PipelineParams); the retry count stays here (``set_retry`` takes a number, not a pipeline parameter), and so
    do the names of the secrets (one per install, not per run)."""

    object_store_secret: str = field(default="mlpipeline-minio-artifact", metadata=opt(
        "secret with keys accesskey / secretkey, set as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in every task that "
        "reads or writes the object store (ingest, label, train, transfer, evaluate, report)"))
    kaggle_secret: str = field(default="", metadata=opt(
        "secret with keys username / key for kaggle: sources, set as KAGGLE_USERNAME / KAGGLE_KEY in the ingest "
        "tasks", default_text="none"))
    retries: int = field(default=2, metadata=opt("retries of a failed training task"))


def parse_toleration(text: str) -> dict[str, str]:
    """``KEY[=VALUE]:EFFECT`` -> a toleration (operator Equal with a value, else Exists)."""
    key_value, sep, effect = text.rpartition(":")
    if not sep or not key_value or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"--gpu-toleration {text!r}: expected KEY[=VALUE]:EFFECT with EFFECT NoSchedule, "
                         "PreferNoSchedule or NoExecute (e.g. nvidia.com/gpu:NoSchedule, sku=gpu:NoSchedule)")
    key, eq, value = key_value.partition("=")
    return ({"key": key, "operator": "Equal", "value": value, "effect": effect} if eq
            else {"key": key, "operator": "Exists", "effect": effect})
