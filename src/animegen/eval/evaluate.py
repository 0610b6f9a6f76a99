"""The evaluate stage: FID / KID, per-class accuracy, pictures and report.html for one Model; cross-dataset FID.

``run_evaluate(cfg, model, dataset, out_dir)`` writes the Evaluation artifact of DESIGN.md into ``out_dir``:

- FID and KID of ``cfg.n_fid`` generated images against the dataset's reference statistics (cached by content
  hash, see :mod:`animegen.eval.fid`), at ψ = 1 and at ψ = ``cfg.psi``. A conditional model draws its class rows
  from the reference images' own labels (so the class mix matches the reference set);
- per-class accuracy (:mod:`animegen.eval.accuracy`) at both ψ when the model is conditional and ``cfg.tagger``
  names a colour tagger (else the reason it was skipped is recorded);
- pictures through the latent tools (:mod:`animegen.latent.tools`): per-class sample grids (``samples/``), a
  truncation grid (``truncation/``), style-mixing grids (``mixing/``, StyleGAN) and a looping interpolation GIF
  (``interpolation/``);
- with ``cfg.snapshots``: FID and KID of every ``snapshots/G_ema-*.pt`` of the model (``fid_over_kimg`` in
  metrics.json and ``fid_over_kimg.png``), the curve the transfer-learning comparison needs;
- ``report.html`` (self-contained), then ``metrics.json`` LAST: its presence marks a complete Evaluation.

metrics.json (format ``animegen-evaluation/1``): ``fid``, ``kid``, ``kid_std`` (ψ = 1) and ``fid_psi``, ``kid_psi``,
``kid_psi_std`` (ψ = ``psi``); ``psi`` and ``psi_values``; ``hair_accuracy``, ``eye_accuracy``, ``both_accuracy``
(ψ = 1) and their ``*_psi`` twins, the full tables under ``accuracy`` / ``accuracy_psi`` (or ``accuracy_skipped``);
``n_fid``, ``n_reference``; ``extractor`` (id, backend); ``model`` (name, path, arch, resolution, classes, kimg,
checkpoint sha256); ``dataset`` (uri, content hash, count, split); ``train`` (wall_s, img_per_s, peak memory, device
from the model's summary.json); ``fid_over_kimg``; ``timing`` (wall_s of this evaluation); ``config``; ``notes``.

``run_fid(cfg, a, b, out_dir)`` is the cross-dataset FID / KID between two datasets or image folders (e.g. a manga
set against a single-character set); it writes ``fid.json``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animegen import __version__
from animegen.config import Config, opt
from animegen.data.dataset import ImageSet, open_dataset
from animegen.data.splits import HELDOUT, TRAIN
from animegen.eval import fid as fidlib
from animegen.eval.accuracy import class_accuracy, requested_classes
from animegen.eval.compare import EVAL_FORMAT, plot_fid_curves
from animegen.eval.html import Figure, write_report
from animegen.eval.inception import Extractor, resolve_extractor
from animegen.models.batchnorm import recalibration_info
from animegen.progress import note
from animegen.store import sha256_file
from animegen.utils import finite, read_json, resolve_device, write_json

FID_FORMAT = "animegen-fid/1"
SPLITS = ("all", TRAIN, HELDOUT)
ACCURACY_KEYS = ("hair_accuracy", "eye_accuracy", "both_accuracy")
GEN_BATCH = 64  # generator batch of the accuracy and picture steps when cfg.batch is None


DEVICES = ("auto", "cpu", "cuda")
EXTRACTORS = ("auto", "pytorch-fid", "torchscript")


@dataclass
class EvalConfig(Config):
    n_fid: int = field(default=10000, metadata=opt("generated images per FID / KID (papers: 10000 or more)"))
    psi: float = field(default=0.6, metadata=opt(
        "truncation psi of the second FID and accuracy, reported beside psi 1 (1 = none)"))
    k_per_class: int = field(default=100, metadata=opt("generated images per class for the per-class accuracy"))
    tagger: str | None = field(default=None, metadata=opt(
        "colour tagger (colour_tagger.pt or its folder)", default_text="none: accuracy skipped"))
    inception_weights: str | None = field(default=None, metadata=opt(
        "Inception weights path or URI", default_text="the usual resolution order"))
    inception_backend: str = field(default="auto", metadata=opt("Inception feature extractor back-end",
                                                                choices=EXTRACTORS))
    class_mix: str | None = field(default=None, metadata=opt(
        "a dataset labelled with the model's classes (e.g. its training set) whose class mix a conditional model's "
        "FID samples follow when the reference set has no such labels", default_text="the reference's own labels, "
        "else classes drawn uniformly"))
    reference_split: str = field(default="all", metadata=opt("which reference images", choices=SPLITS))
    max_reference: int | None = field(default=None, metadata=opt(
        "reference images per FID", default_text="every image of the split", unset=0))
    batch: int | None = field(default=None, metadata=opt(
        "images per batch", default_text="16 on CPU, 200 on CUDA", unset=0))
    device: str = field(default="auto", metadata=opt("device", choices=DEVICES))
    seed: int = field(default=0, metadata=opt("seed of the generated images"))
    progress: bool = field(default=True, metadata=opt(
        "progress of features and sampling (a bar on a terminal, else a line per phase)"))
    snapshots: bool = field(default=False, metadata=opt(
        "also the FID of every snapshots/G_ema-*.pt (FID over kimg curves)"))
    n_fid_snapshots: int | None = field(default=None, metadata=opt(
        "generated images per snapshot FID", default_text="n_fid", unset=0))
    fid_bootstrap: int = field(default=0, metadata=opt(
        "bootstrap resamples of the generated features for a 90 % interval of the ψ = 1 FID (0: none)"))
    grids: bool = field(default=True, metadata=opt(
        "sample, truncation, mixing grids and the interpolation GIF in the report"))
    grid_n: int = field(default=8, metadata=opt("images per class in the sample grids; rows of the truncation grid"))
    truncation_psis: list[float] = field(default_factory=lambda: [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],
                                         metadata=opt("the columns of the truncation grid"))
    interp_method: str = field(default="circular", metadata=opt("interpolation path",
                                                                choices=("linear", "slerp", "circular")))
    interp_steps: int = field(default=8, metadata=opt("frames per segment (per quarter turn for circular)"))

    def validate(self) -> None:
        if self.n_fid < 2 or (self.n_fid_snapshots is not None and self.n_fid_snapshots < 2):
            raise ValueError("n_fid (and n_fid_snapshots) must be >= 2: FID needs a covariance")
        if self.fid_bootstrap == 1 or self.fid_bootstrap < 0:
            raise ValueError(f"fid_bootstrap={self.fid_bootstrap}: 0 (none) or at least 2 resamples")
        if self.k_per_class < 1 or self.grid_n < 1 or (self.batch is not None and self.batch < 1):
            raise ValueError("k_per_class, batch and grid_n must be >= 1")


@dataclass
class FidConfig(Config):
    max_images: int | None = field(default=None, metadata=opt(
        "at most this many images of each side (a seeded subset)", default_text="all", unset=0))
    split: str = field(default="all", metadata=opt("which images of a Dataset directory with splits",
                                                   choices=SPLITS))
    inception_weights: str | None = field(default=None, metadata=opt(
        "Inception weights path or URI", default_text="the usual resolution order"))
    inception_backend: str = field(default="auto", metadata=opt("Inception feature extractor back-end",
                                                                choices=EXTRACTORS))
    kid_subsets: int = field(default=100, metadata=opt("KID: subsets averaged"))
    kid_subset_size: int = field(default=1000, metadata=opt("KID: images per subset (fewer when a side is smaller)"))
    device: str = field(default="auto", metadata=opt("device", choices=DEVICES))
    progress: bool = field(default=True, metadata=opt(
        "progress of the feature extraction (a bar on a terminal, else a line per phase)"))


# ------------------------------------------------------------------------------------------------ helpers
def _model_paths(model: str | Path) -> tuple[Path, Path]:
    """(Model directory, checkpoint file) of a Model directory, its checkpoint.pt or a snapshot file."""
    from animegen.train.checkpoint import checkpoint_path

    ckpt = checkpoint_path(model)
    if not ckpt.is_file():
        raise FileNotFoundError(f"{model}: no checkpoint here (give a Model directory from `animegen train`, its "
                                "checkpoint.pt or a snapshots/G_ema-*.pt file)")
    model_dir = ckpt.parent.parent if ckpt.parent.name == "snapshots" else ckpt.parent
    return model_dir, ckpt


def reference_classes(imageset: ImageSet, class_names: list[str]) -> np.ndarray | None:
    """Condition rows the generated FID images draw from: the dataset's own label rows when it has the model's
    classes (so the class mix follows the data; the train and held-out splits keep the same mix), else None
    (a uniformly drawn one-hot class)."""
    if not class_names or imageset.class_names != class_names:
        return None
    return imageset.conditions()


def sample_classes(imageset: ImageSet | None, class_names: list[str], class_mix: str | None
                   ) -> tuple[np.ndarray | None, bool | None, str | None]:
    """(condition rows, multi-hot, note) of a conditional model's FID samples: the reference's own label rows,
    else ``class_mix``'s (a dataset with the model's classes: the reference has none, so its class mix is the
    training set's), else None: uniform classes (a uniform mix is not the reference's, so FID also measures that:
    noted)."""
    classes = reference_classes(imageset, class_names) if imageset is not None else None
    if classes is not None or not class_names:
        return classes, (imageset.label_kind == "multi_hot" if classes is not None else None), None
    if class_mix:
        mix = open_dataset(str(class_mix))
        classes = reference_classes(mix, class_names)
        if classes is None:
            raise ValueError(f"--class-mix {class_mix}: its classes ({len(mix.class_names)}) are not the model's "
                             f"{len(class_names)} classes")
        return classes, mix.label_kind == "multi_hot", (f"the reference set has no labels of the model's classes: "
                                                        f"FID samples follow the class mix of {class_mix}")
    return None, None, ("the dataset's classes differ from the model's: FID samples draw the model's classes "
                        "uniformly (--class-mix DATASET gives them a dataset's class mix)")


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric headline values of a metrics.json, flat (for a KFP Metrics artifact's log_metric)."""
    keys = ("fid", "fid_psi", "kid", "kid_std", "kid_psi", "kid_psi_std", "psi", "n_fid", "n_reference",
            *ACCURACY_KEYS, *(f"{k}_psi" for k in ACCURACY_KEYS))
    return {k: float(metrics[k]) for k in keys if isinstance(metrics.get(k), (int, float))}


# ---------------------------------------------------------------------------------------------- FID parts
def feature_metrics(feats: np.ndarray, ref: fidlib.Stats, seed: int = 0, bootstrap: int = 0) -> dict[str, Any]:
    """FID and KID of generated Inception features against the reference statistics (features from the same
    extractor); with ``bootstrap`` resamples, FID's 90 % bootstrap interval over the samples too."""
    fid = fidlib.fid_from_stats(fidlib.Stats.from_features(feats, ref.extractor_id), ref)
    kid_mean, kid_std = fidlib.kid(feats, ref.features, seed=seed)
    out = {"fid": finite(fid), "kid": finite(kid_mean), "kid_std": finite(kid_std)}
    if bootstrap:
        out["fid_interval"] = [finite(v) for v in fidlib.fid_bootstrap(feats, ref, bootstrap, seed, fid=fid)]
    return out


def _fid_kid(G, extractor: Extractor, ref: fidlib.Stats, n: int, psi: float, classes: np.ndarray | None,
             cfg: EvalConfig, device: torch.device, what: str = "", bootstrap: bool = False) -> dict[str, Any]:
    """FID and KID of ``n`` samples of G (streamed into the extractor) against the reference statistics; with
    ``bootstrap`` (and cfg.fid_bootstrap resamples), FID's 90 % bootstrap interval over the samples too."""
    label = f"FID samples of {what or 'the model'} (ψ = {psi:g}): sampling + Inception features"
    feats = fidlib.generator_features(G, extractor, n, truncation_psi=psi, classes=classes, batch=cfg.batch,
                                      device=device, seed=cfg.seed, progress=label if cfg.progress else False)
    return feature_metrics(feats, ref, cfg.seed, cfg.fid_bootstrap if bootstrap else 0)


def _snapshot_files(model_dir: Path) -> list[Path]:
    files = sorted((model_dir / "snapshots").glob("G_ema-*.pt"))
    if not files:
        raise FileNotFoundError(f"--snapshots: {model_dir / 'snapshots'} holds no G_ema-*.pt files (they are "
                                "written at every --snapshot-kimg by `animegen train`)")
    return files


def _snapshot_curve(files: list[Path], extractor: Extractor, ref: fidlib.Stats, imageset: ImageSet, cfg: EvalConfig,
                    device: torch.device) -> list[dict[str, Any]]:
    """FID / KID (ψ = 1) of each snapshot file, by kimg."""
    from animegen.train.checkpoint import load_generator

    n = cfg.n_fid_snapshots or cfg.n_fid
    curve = []
    for path in files:
        G, meta = load_generator(path, device)
        classes = sample_classes(imageset, meta["class_names"], cfg.class_mix)[0]
        point = _fid_kid(G, extractor, ref, n, 1.0, classes, cfg, device, f"snapshot {path.name}")
        curve.append({"kimg": meta["images_seen"] / 1000, "snapshot": path.name, "n": n, **point})
        del G
    return sorted(curve, key=lambda p: p["kimg"])


def model_accuracy(G, class_names: list[str], multi_hot: bool | None, cfg: EvalConfig, device: torch.device
                   ) -> tuple[dict | None, dict | None, str | None]:
    """(accuracy at ψ = 1, at ψ = cfg.psi, or the reason it was skipped)."""
    if not class_names:
        return None, None, "the model is unconditional: there is no requested class to check"
    if cfg.tagger is None:
        return None, None, "no colour tagger given (--tagger PATH: colour_tagger.pt from `animegen tagger train`)"
    try:
        requested_classes(class_names, multi_hot)
    except ValueError as e:  # no class names a hair or eye colour
        return None, None, str(e)
    from animegen.labels.colour import load_colour_tagger

    note(f"per-class accuracy: {cfg.k_per_class} images per class, scored by the colour tagger", cfg.progress)
    tagger = load_colour_tagger(cfg.tagger, device)
    kw: dict[str, Any] = {"k": cfg.k_per_class, "seed": cfg.seed, "batch": cfg.batch or GEN_BATCH,
                          "device": device, "multi_hot": multi_hot}
    at_1 = class_accuracy(G, class_names, tagger, truncation_psi=1.0, **kw)
    at_psi = class_accuracy(G, class_names, tagger, truncation_psi=cfg.psi, **kw) if cfg.psi != 1.0 else None
    return at_1, at_psi, None


def _class_spec(class_names: list[str], multi_hot: bool | None) -> list[str] | None:
    """The classes the pictures show: None (every class) for one-hot models; for multi-hot models every
    hair x eye combination as a latent-tools class spec 'blonde hair+red eyes'."""
    if not class_names:
        return None
    try:
        requested, _ = requested_classes(class_names, multi_hot)
    except ValueError:
        return None
    if all(r.condition.sum() <= 1 for r in requested):
        return None
    return ["+".join(class_names[i] for i in r.condition.nonzero().flatten().tolist()) for r in requested]


def pictures(G, class_names: list[str], multi_hot: bool | None, cfg: EvalConfig, out: Path, device: torch.device
             ) -> list[tuple[str, list[Figure]]]:
    """Sample grids, truncation grid, style mixing (StyleGAN) and the interpolation GIF via the latent tools."""
    from animegen.latent import interpolate, mix, sample, truncate

    note("pictures: sample, truncation and style-mixing grids, interpolation GIF", cfg.progress)
    scale = max(1.0, 64 / G.resolution)  # small images are shown enlarged, pixelated
    psi = cfg.psi
    spec = _class_spec(class_names, multi_hot)
    kw: dict[str, Any] = {"seed": cfg.seed, "device": device, "batch": cfg.batch or GEN_BATCH}
    s = sample(G, class_names, out / "samples", n=cfg.grid_n, truncation_psi=psi, classes=spec, **kw)
    samples = ([Figure(p, f"{label} (ψ = {psi:g})", scale) for label, p in s["class_grids"].items()]
               or [Figure(s["grid"], f"ψ = {psi:g}", scale)])
    t = truncate(G, class_names, out / "truncation", psis=list(cfg.truncation_psis), n=cfg.grid_n, class_name=spec,
                 **kw)
    trunc = [Figure(t["grid"], "columns: ψ = " + ", ".join(f"{p:g}" for p in cfg.truncation_psis)
                    + "; rows: one latent each" + (" (classes in turn)" if class_names else ""), scale)]
    mixing = []
    if G.arch != "dcgan":  # StyleGAN, StyleGAN2: a w space
        m = mix(G, class_names, out / "mixing", truncation_psi=psi, class_name=spec, **kw)
        mixing = [Figure(m[band], f"{band} styles from the top row (ψ = {psi:g})", scale)
                  for band in ("coarse", "middle", "fine") if band in m]
    space = "z" if G.arch == "dcgan" else "w"
    i = interpolate(G, class_names, out / "interpolation", method=cfg.interp_method, space=space,
                    steps=cfg.interp_steps, truncation_psi=psi, class_name=spec, **kw)
    interp = [Figure(i["gif"], f"looping {cfg.interp_method} interpolation in {space} (ψ = {psi:g})", scale),
              Figure(i["grid"], "frames of each loop", scale)]
    return [("Samples per class" if class_names else "Samples", samples), ("Truncation", trunc),
            ("Style mixing", mixing), ("Interpolation", interp)]


# --------------------------------------------------------------------------------------------------- stage
def run_evaluate(cfg: EvalConfig, model: str | Path, dataset: str, out_dir: str | Path) -> Path:
    """Evaluate ``model`` (Model directory, checkpoint.pt or snapshot file) against ``dataset`` (a Dataset
    directory, an image folder or ``synthetic:``) into ``out_dir``; returns ``out_dir``. See the module docstring.
    """
    from animegen.train.checkpoint import load_checkpoint, load_generator

    t0 = time.perf_counter()
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").unlink(missing_ok=True)  # metrics.json is written last: gone until then
    device = resolve_device(cfg.device)
    model_dir, ckpt = _model_paths(model)
    snapshots = _snapshot_files(model_dir) if cfg.snapshots else []  # fail before any slow step
    for path in snapshots:
        load_checkpoint(path, mmap=True)  # a damaged or foreign snapshot too (mapped, not read: cheap)
    G, meta = load_generator(ckpt, device)
    class_names = meta["class_names"]
    imageset = open_dataset(str(dataset))
    notes = []
    if imageset.resolution != G.resolution:
        notes.append(f"the model generates {G.resolution} px images but the reference set is {imageset.resolution} "
                     "px; both are resized to Inception's 299 px, yet FID also measures that difference")
    classes, multi_hot, note = sample_classes(imageset, class_names, cfg.class_mix)  # multi_hot None: guessed
    if note:
        notes.append(note)

    extractor = resolve_extractor(cfg.inception_weights, cfg.inception_backend, device)
    split = None if cfg.reference_split == "all" else cfg.reference_split
    reference = fidlib.open_fid_images(imageset)
    ref = fidlib.dataset_stats(reference, extractor, max_images=cfg.max_reference, split=split, batch=cfg.batch,
                               progress=cfg.progress)
    at_1 = _fid_kid(G, extractor, ref, cfg.n_fid, 1.0, classes, cfg, device, model_dir.name,
                    bootstrap=cfg.fid_bootstrap > 0)
    at_psi = at_1 if cfg.psi == 1.0 else _fid_kid(G, extractor, ref, cfg.n_fid, cfg.psi, classes, cfg, device,
                                                  model_dir.name)
    acc_1, acc_psi, acc_skipped = model_accuracy(G, class_names, multi_hot, cfg, device)

    curve: list[dict[str, Any]] = []
    sections: list[tuple[str, list[Figure]]] = []
    (out / "fid_over_kimg.png").unlink(missing_ok=True)
    if cfg.snapshots:
        curve = _snapshot_curve(snapshots, extractor, ref, imageset, cfg, device)
        plot = plot_fid_curves([{"run": "", "model": model_dir.name, "fid_over_kimg": curve}],
                               out / "fid_over_kimg.png", title=f"FID over training: {model_dir.name}")
        if plot is not None:
            caption = f"FID (ψ = 1, {curve[0]['n']} generated images) of each snapshot"
            sections.append(("FID over training", [Figure(plot, caption)]))
    if cfg.grids:
        sections += pictures(G, class_names, multi_hot, cfg, out, device)
    if (model_dir / "loss.png").is_file():
        sections.append(("Training losses", [Figure(model_dir / "loss.png", f"{model_dir.name}/loss.png")]))

    summary = read_json(model_dir / "summary.json", {})
    metrics: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        "fid": at_1["fid"], "kid": at_1["kid"], "kid_std": at_1["kid_std"], "fid_interval": at_1.get("fid_interval"),
        "fid_psi": at_psi["fid"], "kid_psi": at_psi["kid"], "kid_psi_std": at_psi["kid_std"],
        "psi": float(cfg.psi), "psi_values": sorted({1.0, float(cfg.psi)}, reverse=True),
        "n_fid": cfg.n_fid, "n_reference": int(ref.n),
        **{k: (acc_1 or {}).get(k) for k in ACCURACY_KEYS},
        **{f"{k}_psi": (acc_psi or acc_1 or {}).get(k) for k in ACCURACY_KEYS},
        "accuracy": acc_1, "accuracy_psi": acc_psi, "accuracy_skipped": acc_skipped,
        "extractor": {"id": extractor.id, "backend": extractor.backend, "source": extractor.weights.source},
        "model": {"name": model_dir.name, "path": str(ckpt), "arch": meta["config"].arch, "resolution": G.resolution,
                  "conditional": bool(class_names), "class_names": class_names,
                  "kimg": meta["images_seen"] / 1000, "checkpoint_sha256": sha256_file(ckpt),
                  "batchnorm": recalibration_info(G)},  # None (no BatchNorm) or its sampling statistics
        "dataset": {"uri": str(dataset), "content_hash": reference.content, "count": len(imageset),
                    "resolution": imageset.resolution, "label_kind": imageset.label_kind,
                    "split": cfg.reference_split},
        "train": {k: summary.get(k) for k in ("wall_s", "img_per_s", "peak_memory_bytes", "device", "kimg")},
        "fid_over_kimg": curve,
        "notes": notes,
        "config": cfg.to_dict(),
    }
    metrics["timing"] = {"wall_s": round(time.perf_counter() - t0, 2), "device": str(device),
                         "torch_threads": torch.get_num_threads(), "inception_images": extractor.images_seen}
    write_report(out / "report.html", metrics, sections)
    write_json(out / "metrics.json", metrics)
    return out


def run_fid(cfg: FidConfig, a: str, b: str, out_dir: str | Path) -> Path:
    """FID and KID between two datasets or image folders (Dataset directories, folders, ``synthetic:``); writes
    ``out_dir/fid.json`` (fid, kid, kid_std, each side's uri, content id and image count, extractor id, wall time)
    and returns its path. Each side's statistics are cached.

    A folder is a set of same-sized images, read at that size: its most common image size is scored and files of
    another size are skipped with a warning naming them (so the output folder of ``animegen sample`` scores its
    samples, not grid.png); a folder where no size holds more than half of the images is refused (ValueError).
    See :func:`animegen.eval.fid.folder_image_size`."""
    if cfg.split not in SPLITS:
        raise ValueError(f"split={cfg.split!r}; choose one of {', '.join(SPLITS)}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid.json").unlink(missing_ok=True)
    extractor = resolve_extractor(cfg.inception_weights, cfg.inception_backend, resolve_device(cfg.device))
    result = fidlib.fid_between(a, b, extractor, max_images=cfg.max_images,
                                split=None if cfg.split == "all" else cfg.split, kid_subsets=cfg.kid_subsets,
                                kid_subset_size=cfg.kid_subset_size, progress=cfg.progress)
    doc = {"format": FID_FORMAT, "fid": finite(result["fid"]), "kid": finite(result["kid"]),
           "kid_std": finite(result["kid_std"]),
           "a": {"uri": str(a), "content_hash": result["content_a"], "n": int(result["n_a"])},
           "b": {"uri": str(b), "content_hash": result["content_b"], "n": int(result["n_b"])},
           "split": cfg.split, "extractor": {"id": extractor.id, "backend": extractor.backend},
           "inception_images": extractor.images_seen, "wall_s": round(time.perf_counter() - t0, 2),
           "device": str(extractor.device), "config": cfg.to_dict(), "version": __version__}
    path = out / "fid.json"
    write_json(path, doc)
    return path


__all__ = ["EvalConfig", "FidConfig", "feature_metrics", "model_accuracy", "pictures", "reference_classes",
           "run_evaluate", "run_fid", "scalar_metrics"]
