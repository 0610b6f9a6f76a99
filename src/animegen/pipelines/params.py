"""The pipeline's two schemas: its run parameters (``PipelineParams``) and its compile-time options
(``PipelineOptions``), Config dataclasses of the same kind as the stages' (``animegen.config``).

A stage parameter takes its help and allowed values from the stage option it sets (``_stage``), so the help of,
say, ``sg_channel_base`` is TrainConfig.channel_base's; ``PARAMETERS`` (what KFP, ``animegen pipeline params`` and
the README table show) is read off ``PipelineParams``; the compile and submit flags are ``PipelineOptions``' fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from animegen.config import Config, opt, option, options
from animegen.data.ingest import IngestConfig
from animegen.eval.evaluate import EvalConfig, FidConfig
from animegen.labels.colour_train import TaggerTrainConfig
from animegen.labels.label import LabelConfig
from animegen.train.config import ARCH_DEFAULTS, TrainConfig


# ------------------------------------------------------------------------------------------------ parameters
def _own(default: Any, help: str, **kw: Any) -> Any:
    """A pipeline parameter of its own (not a stage option)."""
    return field(default=default, metadata=opt(help, **kw)) if not isinstance(default, dict) else field(
        default_factory=lambda: dict(default), metadata=opt(help, **kw))


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
    sg_cond_mode: str = _stage(TrainConfig, "cond_mode", "concat", what="conditional StyleGAN ")
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
    # object store and registry
    registry_uri: str = _own("auto", "run registry: s3://BUCKET/PREFIX/runs/ or a folder; auto = KFP's bucket, "
                             "s3://mlpipeline/private/<namespace>/animegen/runs/ (multi-user) or "
                             "s3://mlpipeline/shared/animegen/runs/, locally <pipeline root>/registry; '' = not "
                             "recorded")
    s3_endpoint: str = _own("", "S3 endpoint URL for s3:// sources and the registry (keys: the object-store "
                                "secret), e.g. http://minio-service.kubeflow:9000")
    s3_region: str = _own("", "S3 region ('' = us-east-1)")
    # anything else, per stage: other fields of the stage's Config
    ingest_options: dict = _own({}, "other IngestConfig fields for every ingest (e.g. {\"fit\": \"pad\"})")
    label_options: dict = _own({}, "other LabelConfig fields (e.g. {\"rules\": {\"require\": []}})")
    tagger_options: dict = _own({}, "other TaggerTrainConfig fields")
    train_options: dict = _own({}, "other TrainConfig fields for every training and transfer (e.g. lr_g)")
    eval_options: dict = _own({}, "other EvalConfig fields for every evaluation (e.g. inception_weights)")



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
def _selector(text: str) -> tuple[str, str] | None:
    """``KEY=VALUE`` -> a node selector entry; 'none' -> None (no selector)."""
    if text.lower() == "none":
        return None
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise ValueError(f"--gpu-node-selector {text!r}: expected KEY=VALUE (or none)")
    return key, value


@dataclass
class PipelineOptions(Config):
    """Compile-time options: how the GPU tasks (train, transfer) are placed and sized, CPU task sizes, the secret
    holding the object-store keys, retries. Defaults suit GKE; see pipelines/README.md for EKS and AKS."""

    accelerator: str = field(default="nvidia.com/gpu", metadata=opt("accelerator resource type"))
    gpus: int = field(default=1, metadata=opt("GPUs per training task"))
    gpu_node_selector: dict[str, str] = field(
        default_factory=lambda: {"cloud.google.com/gke-accelerator": "nvidia-l4"}, metadata=opt(
            "node label of the GPU pool (repeatable; EKS e.g. eks.amazonaws.com/nodegroup=gpu; AKS e.g. "
            "agentpool=gpu; 'none' for no selector)", default_text="cloud.google.com/gke-accelerator=nvidia-l4",
            metavar="KEY=VALUE", parse=_selector))
    gpu_tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        metadata=opt("taint the GPU nodes carry (repeatable; GKE and EKS GPU node groups set nvidia.com/gpu; AKS "
                     "e.g. sku=gpu:NoSchedule; 'none' for no toleration)", default_text="nvidia.com/gpu:NoSchedule",
                     flag="gpu-toleration", metavar="KEY[=VALUE]:EFFECT",
                     parse=lambda t: None if t.lower() == "none" else parse_toleration(t)))
    gpu_cpu: str = field(default="8", metadata=opt("CPU request and limit of a training task"))
    gpu_memory: str = field(default="32G", metadata=opt("memory request and limit of a training task"))
    cpu_cpu: str = field(default="2", metadata=opt("CPU request of the other stages"))
    cpu_memory: str = field(default="8G", metadata=opt("memory request of the other stages"))
    cpu_memory_limit: str = field(default="16G", metadata=opt("memory limit of the other stages"))
    object_store_secret: str = field(default="mlpipeline-minio-artifact", metadata=opt(
        "secret with keys accesskey / secretkey for ingest and report"))
    kaggle_secret: str = field(default="", metadata=opt(
        "secret with keys username / key for kaggle: sources, set as KAGGLE_USERNAME / KAGGLE_KEY in the ingest "
        "tasks", default_text="none"))
    retries: int = field(default=2, metadata=opt("retries of a failed training task"))

    def validate(self) -> None:
        if self.gpus < 1:
            raise ValueError("--gpus must be >= 1")


def parse_toleration(text: str) -> dict[str, str]:
    """``KEY[=VALUE]:EFFECT`` -> a toleration (operator Equal with a value, else Exists)."""
    key_value, sep, effect = text.rpartition(":")
    if not sep or not key_value or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"--gpu-toleration {text!r}: expected KEY[=VALUE]:EFFECT with EFFECT NoSchedule, "
                         "PreferNoSchedule or NoExecute (e.g. nvidia.com/gpu:NoSchedule, sku=gpu:NoSchedule)")
    key, eq, value = key_value.partition("=")
    return ({"key": key, "operator": "Equal", "value": value, "effect": effect} if eq
            else {"key": key, "operator": "Exists", "effect": effect})
