"""The two papers' tables on real faces (issue 12): seed 1 (DCGAN vs StyleGAN, conditional DCGAN, a tutorial DCGAN as
reference), seed 2 Table II (per-class hair / eye accuracy of the conditional StyleGAN), Table III and the transfer
claim (fine-tune to a monochrome and a single-character target against training from scratch) and the
cross-dataset FID of the two targets, all on the shared MLDS faces through the project's own stages (run_ingest,
run_label, run_tagger_train, run_train, run_transfer, run_evaluate, run_fid).

    python benchmarks/paper_tables.py                 # CPU scale: 32 px, narrow widths, <= 90 min on 2 cores
    python benchmarks/paper_tables.py --quick         # the same tables at toy budgets (16 px), <= 3 min
    python benchmarks/paper_tables.py --scale gpu     # 64 px, full widths, on CUDA

Resumable: every step keeps its result under --work (default benchmarks/.work/paper_tables-<scale>) and a rerun
skips what is done (a training run cut short continues from its checkpoint). Writes
benchmarks/results/paper_tables-<scale>-<date>.json, generated-image figures beside it, and <work>/report.html
(with the real target sets' grids, so it is not committed: MLDS images stay out of the repository).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import io
import json
import math
import shutil
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import MLDS, ROOT, batchnorm_sampler, environment, print_table, write_json_atomic, write_result
from gpu_check import source_digest
from torch import nn

from animegen.data.dataset import open_dataset
from animegen.data.ingest import IngestConfig, run_ingest
from animegen.eval import fid as fidlib
from animegen.eval.accuracy import class_accuracy
from animegen.eval.compare import plot_fid_curves
from animegen.eval.evaluate import (
    EvalConfig,
    FidConfig,
    feature_metrics,
    model_accuracy,
    pictures,
    run_evaluate,
    run_fid,
    sample_classes,
)
from animegen.eval.html import Figure, figure_html, html_page, html_table
from animegen.eval.inception import CPU_BATCH_MAX, CPU_CHUNK, CUDA_BATCH, resolve_extractor
from animegen.image_files import save_grid, to_uint8
from animegen.labels.colour import load_colour_tagger
from animegen.labels.colour_train import TaggerTrainConfig, run_tagger_train
from animegen.labels.label import LabelConfig, run_label
from animegen.models.layers import channels_for
from animegen.train import run_train, run_transfer
from animegen.train.checkpoint import load_generator
from animegen.train.config import TrainConfig
from animegen.train.transfer import ARCH_FIELDS


@dataclass(frozen=True)
class Scale:
    resolution: int
    device: str
    base_limit: int | None      # training images of the base set (None: every image not held out)
    ref_n: int                  # the held-out real block FIDs are measured against
    mono_n: int                 # the monochrome target
    char_n: int                 # the single-character run, grown to char_grow
    char_grow: int
    min_per_class: int          # smallest (hair, eye) pair class kept
    tagger_epochs: int
    # TrainConfig overrides (widths, batch, regularisation). DCGAN learns with steps more than images: at 24 kimg,
    # batch 16 (1,500 steps) reached FID 316.6 where batch 64 (375 steps) gave 392.5 (400 samples, 32 px).
    # StyleGAN's G_ema half-life: the default 10 kimg would leave a 24 kimg run's G_ema 19 % initial weights
    # (0.5 ** 2.4); StyleGAN2-ADA ramps it up to 5 % of the images seen, so the short scales set about that.
    # StyleGAN's regularisation at 32 px (STYLEGAN_SMALL): the defaults are the papers' 1024 px FFHQ settings
    # (R1 gamma 10, path length 2, mixing 0.9, lr 0.001) and kept a 32 px model in the colour-blob phase for
    # 24 kimg (FID 244 -> 242, 400 samples); with StyleGAN2-ADA's small-resolution settings (its cifar config:
    # gamma ~0.01-0.1, no path length, no mixing, lr 0.0025) it draws faces by 12 kimg.
    # StyleGAN too learns with steps: 24 kimg probes (400-sample FID at 0 / 8 / 16 / 24 kimg, unconditional, Intel
    # Xeon): batch 32 244.1 -> 219.3 at 24 (the 2026-12-04 run; R1 gamma 1 instead of 0.1: 206.4 / 214.3 / 217.4),
    # batch 16 210.2 / 221.7 / 178.9 (1,500 steps, 66 img/s; with G's step on D's batch, g_batch reuse: 217.6 /
    # 219.7 / 198.7 at 77 img/s), batch 16 in bf16 autocast 224.3 / 207.6 / 209.4 at 122 img/s (cpu_bf16).
    dcgan: dict[str, Any]
    stylegan: dict[str, Any]
    kimg: float                 # seed-1 / seed-2 budget in kimg (equal for every model)
    snapshot_kimg: float
    transfer_kimg: float
    transfer_snapshot_kimg: float
    n_fid: int                  # final FID of the base models (and the floor's size)
    n_curve: int                # FID of each snapshot
    n_fid_transfer: int
    n_curve_transfer: int
    k_per_class: int            # accuracy: generated images per class
    k_curve: int                # accuracy over kimg: per class per snapshot
    bootstrap: int              # resamples of the FID interval
    grid_n: int = 8
    # training seeds of the comparisons that decide a claim (ours vs the tutorial DCGAN, transfer vs scratch on
    # both targets): the seeds after the first retrain those models only (StyleGAN vs DCGAN is decided by a gap
    # far wider than either's seed spread and bootstrap interval, and a second StyleGAN would not fit the budget)
    seeds: int = 2
    # StyleGAN (and its transfers) train in bf16 autocast (amp on, channels_last) where the CPU computes bf16
    # natively (AVX512-BF16 or AMX in its flags; float32 elsewhere, where bf16 is emulated and slower): 1.8x the
    # images per second at batch 16 on the Intel Xeon above (122 vs 66 img/s), what brings the CPU scale within its
    # 90 minutes. The choice is recorded in the results' scale (its stylegan options).
    cpu_bf16: bool = False


STYLEGAN_SMALL = dict(lr_g=0.0025, lr_d=0.0025, r1_gamma=0.1, pl_weight=0.0, style_mixing=0.0)
SCALES = {
    "quick": Scale(16, "cpu", 1536, 192, 192, 55, 112, 16, 1,
                   dict(channel_base=128, channel_max=32, batch=32),
                   dict(channel_base=128, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2, batch=16,
                        ema_kimg=0.1, **STYLEGAN_SMALL),
                   0.8, 0.4, 0.4, 0.2, 64, 32, 48, 24, 8, 4, 5, grid_n=4),
    "cpu": Scale(32, "cpu", None, 2000, 2000, 55, 400, 100, 6,
                 dict(channel_base=512, channel_max=128, batch=16),
                 dict(channel_base=1024, channel_max=128, z_dim=128, w_dim=128, mapping_layers=4, batch=16,
                      ema_kimg=1.0, **STYLEGAN_SMALL),
                 72.0, 24.0, 12.0, 4.0, 2000, 400, 1000, 300, 100, 20, 20, cpu_bf16=True),
    # one H200, <= 5 min: a 12,000-image base (what the 64 MiB carry allows beside the targets; the 2k held-out
    # block stays here, where the samples are scored), so the pair classes keep >= 40 images
    "gpu": Scale(64, "cuda", 12_000, 2000, 2000, 55, 400, 40, 10, dict(), dict(**STYLEGAN_SMALL),
                 100.0, 50.0, 25.0, 12.5, 2000, 400, 1000, 400, 100, 20, 20),
}
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def on_this_machine(S: Scale) -> Scale:
    """``S`` with its StyleGAN precision chosen for this CPU (Scale.cpu_bf16): amp on where bf16 is native."""
    if S.device != "cpu" or not S.cpu_bf16:
        return S
    native = bool(set(NATIVE_BF16) & set(environment("cpu")["cpu"].get("flags", [])))
    return dataclasses.replace(S, stylegan={**S.stylegan, "amp": "on" if native else "off"})


PARTS = ROOT / ".papertables"     # --prepare's carried folder (ignored by git): the GPU scale's MLDS parts
CARRY_MAX_BYTES = 56 * 2 ** 20    # beside the ~5 MB repository, under the device tool's 64 MiB
DEVICE_COMMAND = ("set -o pipefail; PYTHONPATH=src PYTHONUNBUFFERED=1 python3 benchmarks/paper_tables.py --scale gpu "
                  "--record --out $OUT 2>&1 | tee $OUT/paper_tables.log")
BLOCK = 32  # MLDS ids come in runs of one character: parts are made of whole blocks of consecutive ids


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


class Steps:
    """Resumable steps: a step's JSON result is kept in work/done/NAME.json and returned on a rerun."""

    def __init__(self, work: Path):
        self.dir = work / "done"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn, *args, **kw) -> Any:
        path = self.dir / f"{name}.json"
        if path.exists():
            doc = json.loads(path.read_text())
            self.seconds[name] = doc["seconds"]
            return doc["result"]
        log(f"{name} ...")
        t = time.perf_counter()
        result = fn(*args, **kw)
        self.seconds[name] = round(time.perf_counter() - t, 1)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"result": result, "seconds": self.seconds[name]}, indent=1))
        tmp.replace(path)
        log(f"{name} done in {self.seconds[name]:.0f} s")
        return result


# ------------------------------------------------------------------------------------------------------ data
def _mlds_tags(zf: zipfile.ZipFile) -> dict[str, str]:
    name = next(n for n in zf.namelist() if n.endswith("tags.csv"))
    rows = (line.split(",", 1) for line in zf.read(name).decode().splitlines() if line.strip())
    return {stem: tag.strip() for stem, tag in rows}


def _write_zip(zf: zipfile.ZipFile, stems: list[str], tags: dict[str, str] | None, path: Path) -> str:
    """A part of MLDS in MLDS's own layout (images/<id>.jpg, tags.csv), the bytes as they are."""
    prefix = next(n for n in zf.namelist() if n.endswith("/images/"))
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
        for s in stems:
            out.writestr(f"{path.stem}/images/{s}.jpg", zf.read(f"{prefix}{s}.jpg"))
        if tags is not None:
            out.writestr(f"{path.stem}/tags.csv", "".join(f"{s},{tags[s]}\n" for s in stems))
    tmp.replace(path)
    return str(path)


def character_run(stems: list[str], tags: dict[str, str], images: np.ndarray, n: int) -> list[str]:
    """The ``n`` consecutive ids (one tag, no gap of more than 2 ids) whose neighbouring images differ least: MLDS
    lists crops of one character one after another, so the most self-similar run is the likeliest single character.
    """
    thumbs = images.reshape(len(images), -1).astype(np.float32) / 255
    step = np.linalg.norm(thumbs[1:] - thumbs[:-1], axis=1) / math.sqrt(thumbs.shape[1])
    ids = np.array([int(s) for s in stems])
    ok = (np.diff(ids) <= 2) & np.array([tags[a] == tags[b] for a, b in zip(stems[:-1], stems[1:])])
    cost = np.where(ok, step, np.inf)
    window = np.convolve(cost, np.ones(n - 1), "valid")  # the n-1 steps of each run of n
    start = int(np.argmin(window))
    if not np.isfinite(window[start]):
        raise RuntimeError(f"no run of {n} consecutive ids with one tag")
    return stems[start:start + n]


def partition(S: Scale, data: Path, seed: int) -> dict[str, Any]:
    """Disjoint parts of MLDS by blocks of ids: a single-character run, the held-out FID block, the monochrome
    block and the base training set, each written as a zip in MLDS's layout (data/mlds-<part>.zip), and
    data/partition.json (what the parts hold)."""
    data.mkdir(parents=True, exist_ok=True)
    full = data / "mlds-all"
    if not (full / "manifest.json").exists():  # one pass over the zip: dedupe (sha256) and small images to compare
        run_ingest(IngestConfig(resolution=8, holdout=0.0), str(MLDS), full, overwrite=True)
    index = [json.loads(line) for line in (full / "index.jsonl").read_text().splitlines()]
    small = np.load(full / "images.npy")
    with zipfile.ZipFile(MLDS) as zf:
        tags = _mlds_tags(zf)
        order = sorted((int(r["stem"]), i) for i, r in enumerate(index) if r["stem"] in tags)
        stems = [str(s) for s, _ in order]  # unique images (byte duplicates dropped by ingest) with tags, id order
        small = small[[i for _, i in order]]
        char = character_run(stems, tags, small, S.char_n)
        taken = {int(s) // BLOCK for s in char}
        blocks: dict[int, list[str]] = {}
        for s in stems:
            if int(s) // BLOCK not in taken:
                blocks.setdefault(int(s) // BLOCK, []).append(s)
        keys = list(blocks)
        np.random.default_rng(seed).shuffle(keys)
        parts: dict[str, list[str]] = {"ref": [], "mono": [], "base": []}
        for k in keys:
            part = "ref" if len(parts["ref"]) < S.ref_n else "mono" if len(parts["mono"]) < S.mono_n else "base"
            parts[part] += blocks[k]
        parts["ref"], parts["mono"] = sorted(parts["ref"][:S.ref_n], key=int), sorted(parts["mono"][:S.mono_n], key=int)
        parts["base"] = sorted(parts["base"], key=int)
        if S.base_limit:  # a sample spread over the id range (ids are grouped by tag)
            keep = set(np.random.default_rng(seed + 1).permutation(len(parts["base"]))[:S.base_limit].tolist())
            parts["base"] = [s for i, s in enumerate(parts["base"]) if i in keep]
        for name, ss in parts.items():
            _write_zip(zf, ss, tags, data / f"mlds-{name}.zip")
        _write_zip(zf, char, None, data / "mlds-character.zip")
    meta = {"character_ids": char, "ref_ids_sha256": hashlib.sha256(",".join(parts["ref"]).encode()).hexdigest(),
            "base_ids_sha256": hashlib.sha256(",".join(parts["base"]).encode()).hexdigest(), "blocks": BLOCK,
            "seed": seed}
    (data / "partition.json").write_text(json.dumps(meta, indent=1))
    return meta


def prepare_data(S: Scale, work: Path, seed: int, parts: Path | None = None) -> dict[str, Any]:
    """The parts of MLDS (:func:`partition`; or, with ``parts``, the zips and partition.json carried there), each
    ingested (and the base labelled) by the project's stages. A part whose zip is absent (the held-out block on
    the lent GPU, which scores nothing) is left out."""
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    if parts is not None:
        for f in sorted(parts.glob("mlds-*.zip")) + [parts / "partition.json"]:
            shutil.copyfile(f, data / f.name)
    elif not (data / "partition.json").exists():
        partition(S, data, seed)
    meta = json.loads((data / "partition.json").read_text())
    r = S.resolution
    ingest = {"base": IngestConfig(resolution=r, holdout=0.05), "ref": IngestConfig(resolution=r, holdout=0.0),
              "mono": IngestConfig(resolution=r, holdout=0.0, mode="grayscale", channels=3),
              "character": IngestConfig(resolution=r, holdout=0.0, grow_to=S.char_grow)}
    out: dict[str, Any] = {}
    for name, cfg in ingest.items():
        src = data / f"mlds-{name}.zip"
        out[name] = str(data / name) if src.exists() else None
        if src.exists():
            run_ingest(cfg, str(src), out[name], overwrite=True)
    out["labelled"] = str(data / "labelled")
    run_label(LabelConfig.from_dict({"rules": {"min_per_class": S.min_per_class}}), out["base"], out["labelled"])
    labelled = open_dataset(out["labelled"])
    sizes = np.bincount(labelled.labels, minlength=len(labelled.class_names)).tolist()
    return {**out, "class_names": list(labelled.class_names), "class_sizes": sizes,
            "counts": {k: len(open_dataset(v)) for k, v in out.items() if v},
            **{k: meta[k] for k in ("character_ids", "ref_ids_sha256", "blocks")},
            "base_ids_sha256": meta.get("base_ids_sha256")}


# ---------------------------------------------------------------------------------------------------- models
def train_model(S: Scale, arch: str, data: str, out: Path, kimg: float, snap: float, seed: int,
                conditional: bool = False, init: str | None = None, extra: dict | None = None) -> dict[str, Any]:
    """run_train (or run_transfer from ``init``), continuing a run cut short; returns its summary.json.
    ``extra``: more TrainConfig options (augmentation)."""
    if (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
        if summary["kimg"] >= kimg:
            return summary
    widths = S.dcgan if arch == "dcgan" else S.stylegan
    opts = dict(arch=arch, resolution=S.resolution, conditional=conditional, kimg=kimg, snapshot_kimg=snap,
                seed=seed, device=S.device, progress=False, log_every=25, **widths, **(extra or {}))
    resume = (out / "checkpoint.pt").exists()
    if init is None:
        run_train(TrainConfig.from_dict(opts), data, out, resume=resume)
    else:  # the source's architecture is inherited; widths and batch are the source's own
        opts = {k: v for k, v in opts.items() if k not in ARCH_FIELDS}
        run_transfer(TrainConfig.from_dict(opts), init, data, out, resume=resume)
    return json.loads((out / "summary.json").read_text())


def evaluate(S: Scale, model: Path, reference: str, out: Path, n_fid: int, n_curve: int,
             tagger: str | None, class_mix: str | None = None) -> dict[str, Any]:
    """run_evaluate (FID + curve, accuracy with ``tagger``, pictures); a conditional model's FID samples follow
    ``class_mix``'s classes (its labelled training set: the held-out block has no pair labels)."""
    if not (out / "metrics.json").exists():
        cfg = EvalConfig(n_fid=n_fid, n_fid_snapshots=n_curve, snapshots=True, psi=1.0, tagger=tagger,
                         k_per_class=S.k_per_class, fid_bootstrap=S.bootstrap, grid_n=S.grid_n, device=S.device,
                         progress=False, seed=0, class_mix=class_mix)
        run_evaluate(cfg, model, reference, out)
    m = json.loads((out / "metrics.json").read_text())
    keep = ("fid", "kid", "kid_std", "fid_interval", "n_fid", "n_reference", "hair_accuracy", "eye_accuracy",
            "both_accuracy", "fid_over_kimg", "train")
    return {k: m.get(k) for k in keep} | {"accuracy": m.get("accuracy"), "eval_dir": str(out)}


class TutorialDCGAN:
    """The seed-1 DCGAN as the PyTorch DCGAN tutorial writes it (the paper's architecture): ConvTranspose / BatchNorm
    / ReLU up from 4x4, Conv / BatchNorm / LeakyReLU down, BCE with labels 1 and 0, Adam 2e-4 (0.5, 0.999), G's step
    on the fake D just saw, no flips, sampled with BatchNorm in train mode (batch statistics), as the tutorial does.
    Widths match the project's DCGAN at the same channel_base / channel_max."""

    def __init__(self, resolution: int, channel_base: int, channel_max: int, z_dim: int = 100):
        up = int(math.log2(resolution)) - 2
        ch = [channels_for(2 ** i, channel_base, channel_max) for i in range(2, 2 + up)]  # 4 .. res/2
        g: list[nn.Module] = [nn.ConvTranspose2d(z_dim, ch[0], 4, 1, 0, bias=False), nn.BatchNorm2d(ch[0]),
                              nn.ReLU(True)]
        for a, b in zip(ch[:-1], ch[1:]):
            g += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        g += [nn.ConvTranspose2d(ch[-1], 3, 4, 2, 1, bias=False), nn.Tanh()]
        dch = ch[::-1]
        d: list[nn.Module] = [nn.Conv2d(3, dch[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for a, b in zip(dch[:-1], dch[1:]):
            d += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        d += [nn.Conv2d(dch[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.G, self.D, self.z_dim = _TutorialG(nn.Sequential(*g), z_dim), nn.Sequential(*d), z_dim
        for m in list(self.G.modules()) + list(self.D.modules()):
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


class _TutorialG(nn.Module):
    """The tutorial's generator (ConvTranspose from a 1x1 map) taking z [N, z_dim], unconditional."""

    def __init__(self, net: nn.Sequential, z_dim: int):
        super().__init__()
        self.net, self.z_dim, self.c_dim = net, z_dim, 0

    def forward(self, z, c=None, truncation_psi=1.0):
        return self.net(z[:, :, None, None])


def reference_dcgan(S: Scale, data: str, ref: str | None, out: Path, kimg: float, seed: int,
                    record: Path | None = None) -> dict[str, Any]:
    """Train the tutorial DCGAN on the same packed images for the same number of images; FID at 0 kimg and at the
    end, 2k / curve-size samples drawn in batches of the training batch (its BatchNorm uses batch statistics).
    With ``record`` (the lent GPU, no Inception there) the samples are saved there for ``--score`` instead."""
    torch.manual_seed(seed)
    widths = {k: S.dcgan.get(k, v) for k, v in (("channel_base", 2048), ("channel_max", 512), ("batch", 128))}
    net = TutorialDCGAN(S.resolution, widths["channel_base"], widths["channel_max"])
    device = torch.device(S.device)
    G, D = net.G.to(device), net.D.to(device)
    images = torch.from_numpy(np.ascontiguousarray(open_dataset(data).images)).permute(0, 3, 1, 2)

    def samples(n: int) -> np.ndarray:  # seeded latents: the first n_curve of n_fid samples are the n_curve ones
        return generated_uint8(batchnorm_sampler(G, batch_stats=True), n, device, widths["batch"])

    sets = {"kimg-0000000.0": samples(S.n_curve)}
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    bce, b, seen = nn.BCELoss(), widths["batch"], 0
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    while seen < kimg * 1000:
        for idx in torch.randperm(len(images), generator=gen).split(b):
            if len(idx) < b or seen >= kimg * 1000:
                continue
            real = images[idx].to(device).float() / 127.5 - 1
            D.zero_grad()
            loss_real = bce(D(real).view(-1), torch.ones(b, device=device))
            fake = G(torch.randn(b, net.z_dim, device=device))
            loss_fake = bce(D(fake.detach()).view(-1), torch.zeros(b, device=device))
            (loss_real + loss_fake).backward()
            opt_d.step()
            G.zero_grad()
            bce(D(fake).view(-1), torch.ones(b, device=device)).backward()
            opt_g.step()
            seen += b
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    sets["final"] = samples(S.n_fid)
    result = {"n_fid": S.n_fid, "kimg": seen / 1000, "train": {"img_per_s": seen / wall, "wall_s": wall,
                                                                  "kimg": seen / 1000},
              "fid_over_kimg": [{"kimg": 0.0, "n": S.n_curve, "set": "kimg-0000000.0"},
                                {"kimg": seen / 1000, "n": S.n_curve, "set": "final"}]}
    if record is not None:
        return result | save_sets(record, sets)
    extractor = resolve_extractor(None, "auto", S.device)
    return result | score_sets(sets, result["fid_over_kimg"], fidlib.dataset_stats(ref, extractor, progress=False),
                               extractor, S.bootstrap)


# ---------------------------------------------------------------------------- samples: recorded there, scored here
class Recorder:
    """Stands in for the Inception extractor where its weights cannot go (the lent GPU): keeps each batch as the
    uint8 images the extractor would quantise it to first, and returns no features."""

    def __init__(self, batch_size: int):
        self.batch_size, self.batches = batch_size, []

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        self.batches.append(to_uint8(images))
        return np.zeros((len(images), 0))


def sample_batch(device: torch.device) -> int:
    """The batch evaluate samples in on ``device`` (Extractor.batch_size's rule)."""
    return CUDA_BATCH if device.type == "cuda" else min(CPU_CHUNK * torch.get_num_threads(), CPU_BATCH_MAX)


def generated_uint8(G, n: int, device: torch.device, batch: int | None = None, classes: np.ndarray | None = None
                    ) -> np.ndarray:
    """``n`` samples of G as uint8 [n, H, W, C]: the images `evaluate` scores (the same latents, noise, classes
    and batches as fidlib.generator_features with seed 0 on this device)."""
    rec = Recorder(batch or sample_batch(device))
    fidlib.generator_features(G, rec, n, classes=classes, batch=batch, device=device, seed=0)
    return np.concatenate(rec.batches)


def save_sets(folder: Path, sets: dict[str, np.ndarray]) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    for key, arr in sets.items():
        np.save(folder / f"samples-{key}.npy", arr)
    return {"eval_dir": str(folder), "sets": {k: len(v) for k, v in sets.items()}}


def score_sets(sets: dict[str, np.ndarray], curve: list[dict], ref: fidlib.Stats, extractor, bootstrap: int
               ) -> dict[str, Any]:
    """FID / KID / bootstrap interval of the final set, and each curve point's FID from its set (a point on the
    final set takes its first n images: the same seeded latents)."""
    final = extractor.features(sets["final"])
    out = feature_metrics(final, ref, 0, bootstrap)
    points = []
    for p in curve:
        feats = final[:p["n"]] if p["set"] == "final" else extractor.features(sets[p["set"]][:p["n"]])
        points.append({k: v for k, v in p.items() if k != "set"} | feature_metrics(feats, ref))
    return out | {"fid_over_kimg": sorted(points, key=lambda q: q["kimg"])}


def record_model(S: Scale, model: Path, reference: str | None, out: Path, n_fid: int, n_curve: int,
                 tagger: str | None, class_mix: str | None = None) -> dict[str, Any]:
    """The lent GPU's `evaluate`: what it measures without Inception (per-class accuracy, the pictures) the same
    way, and the uint8 samples its FIDs are computed from (final and per snapshot), saved for ``--score``."""
    device = torch.device(S.device)
    cfg = EvalConfig(n_fid=n_fid, psi=1.0, tagger=tagger, k_per_class=S.k_per_class, grid_n=S.grid_n,
                     device=S.device, progress=False, seed=0)
    G, meta = load_generator(model / "checkpoint.pt", device)
    names = meta["class_names"]
    # the class mix of the samples as evaluate draws it: the reference's own conditions when it is labelled with
    # the model's classes, else class_mix's (the held-out block, absent there, is not labelled)
    imageset = open_dataset(reference) if reference else None
    classes, multi_hot, _ = sample_classes(imageset, names, class_mix)
    acc, _, skipped = model_accuracy(G, names, multi_hot, cfg, device)
    pictures(G, names, multi_hot, cfg, out, device)
    sets = {"final": generated_uint8(G, n_fid, device, classes=classes)}
    curve = []
    for snap in sorted((model / "snapshots").glob("G_ema-*.pt")):
        Gs, m = load_generator(snap, device)
        kimg = m["images_seen"] / 1000
        # the last snapshot is the final model: its curve samples are the first n_curve final ones when whole
        # batches make them (the noise of a batch depends on its size)
        last = m["images_seen"] == meta["images_seen"] and n_curve <= n_fid and n_curve % sample_batch(device) == 0
        key = "final" if last else f"kimg-{kimg:09.1f}"
        if key != "final":
            sets[key] = generated_uint8(Gs, n_curve, device,
                                        classes=sample_classes(imageset, m["class_names"], class_mix)[0])
        curve.append({"kimg": kimg, "snapshot": snap.name, "n": n_curve, "set": key})
    summary = json.loads((model / "summary.json").read_text())
    return {"n_fid": n_fid, "accuracy": acc, "accuracy_skipped": skipped,
            "hair_accuracy": (acc or {}).get("hair_accuracy"), "eye_accuracy": (acc or {}).get("eye_accuracy"),
            "train": {k: summary.get(k) for k in ("wall_s", "img_per_s", "peak_memory_bytes", "device", "kimg")},
            "fid_over_kimg": curve} | save_sets(out, sets)


PACK_CHUNK_BYTES = 14 * 2 ** 20   # a returned file (the device tool takes files of at most 16 MiB ...)
PACK_CHUNKS_PER_PART = 4          # ... and 64 MiB per call: 4 chunks + the figures + the JSON


def _webp(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, "WEBP", lossless=True, method=2)
    return buf.getvalue()


def pack(work: Path, out: Path, part: int) -> list[str]:
    """Copy part ``part`` (1, 2, ...) of the recorded run into ``out``: device.json, figures.zip and up to
    PACK_CHUNKS_PER_PART zips of samples (each image lossless WebP, ~6.7 KB at 64 px). The chunks are written
    once under work/pack; a part past the last returns device.json alone."""
    pk = work / "pack"
    if not (pk / "chunks.json").exists():
        pk.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(pk / "figures.zip", "w", zipfile.ZIP_STORED) as zf:
            for ev in sorted((work / "evals").iterdir()):
                for f in picture_files(ev):
                    zf.write(f, f"{ev.name}/{f.relative_to(ev).as_posix()}")
        chunks, size, zf = [], 0, None
        for f in sorted((work / "evals").glob("*/samples-*.npy")):
            arr = np.load(f)
            for i, img in enumerate(arr):
                blob = _webp(img)
                if zf is None or size + len(blob) > PACK_CHUNK_BYTES:
                    if zf is not None:
                        zf.close()
                    chunks.append(f"chunk-{len(chunks) + 1:03d}.zip")
                    zf, size = zipfile.ZipFile(pk / chunks[-1], "w", zipfile.ZIP_STORED), 0
                zf.writestr(f"{f.parent.name}/{f.stem[len('samples-'):]}/{i:05d}.webp", blob)
                size += len(blob) + 100
        if zf is not None:
            zf.close()
        (pk / "chunks.json").write_text(json.dumps(chunks))
    chunks = json.loads((pk / "chunks.json").read_text())
    parts = math.ceil(len(chunks) / PACK_CHUNKS_PER_PART)
    doc = json.loads((work / "device.json").read_text()) | {"parts": parts, "part": part}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "device.json", doc)
    mine = chunks[(part - 1) * PACK_CHUNKS_PER_PART:part * PACK_CHUNKS_PER_PART]
    for name in mine + (["figures.zip"] if part == 1 else []):
        shutil.copyfile(pk / name, out / name)
    return mine


def unpack(dirs: list[Path], work: Path) -> dict[str, Any]:
    """The recorded run from the parts fetched into ``dirs``: device.json (one run: the same run_id in every
    part, all parts present), every sample set restored to work/evals/<model>/samples-<set>.npy and checked
    against the count the run recorded, and the figures."""
    from PIL import Image

    docs = [json.loads((d / "device.json").read_text()) for d in dirs]
    if len({d["run_id"] for d in docs}) != 1:
        raise SystemExit("the fetched parts come from different device runs (run_id differs): fetch every part of "
                         "one run (a machine that went cold between calls starts the run afresh)")
    doc = docs[0]
    have = sorted({d["part"] for d in docs})
    if have != list(range(1, doc["parts"] + 1)):
        raise SystemExit(f"parts {have} of {doc['parts']} fetched: run --part K for the missing ones")
    images: dict[tuple[str, str], dict[int, np.ndarray]] = {}
    for d in dirs:
        for z in sorted(d.glob("chunk-*.zip")):
            with zipfile.ZipFile(z) as zf:
                for name in zf.namelist():
                    model, key, idx = name.split("/")
                    img = np.asarray(Image.open(io.BytesIO(zf.read(name))))
                    images.setdefault((model, key), {})[int(idx.split(".")[0])] = img.reshape(*img.shape[:2], -1)
        if (d / "figures.zip").exists():
            with zipfile.ZipFile(d / "figures.zip") as zf:
                zf.extractall(work / "evals")
    for name, rec in doc["models"].items():
        for key, n in rec["sets"].items():
            got = images.get((name, key), {})
            if sorted(got) != list(range(n)):
                raise SystemExit(f"{name}/{key}: {len(got)} of {n} samples in the fetched parts")
            (work / "evals" / name).mkdir(parents=True, exist_ok=True)
            np.save(work / "evals" / name / f"samples-{key}.npy", np.stack([got[i] for i in range(n)]))
    return doc


def score_model(S: Scale, rec: dict[str, Any], folder: Path, reference: str) -> dict[str, Any]:
    """FIDs of a recorded model's samples (``folder``) against ``reference``, on this machine's real Inception."""
    ex = resolve_extractor(None, "auto", "cpu")
    sets = {k: np.load(folder / f"samples-{k}.npy", mmap_mode="r") for k in rec["sets"]}
    return rec | score_sets(sets, rec["fid_over_kimg"], fidlib.dataset_stats(reference, ex, progress=False), ex,
                            S.bootstrap)


# ---------------------------------------------------------------------------------------------------- tables
def floors(S: Scale, base: str, ref: str, mono: str, character: str) -> dict[str, Any]:
    """Real-vs-real FID at each sample size used: a base block against the held-out block, and each target's
    halves against each other."""
    ex = resolve_extractor(None, "auto", S.device)
    a = fidlib.dataset_stats(base, ex, max_images=S.n_fid, progress=False)
    b = fidlib.dataset_stats(ref, ex, progress=False)
    out: dict[str, Any] = {}
    for n in sorted({S.n_fid, S.n_curve}):
        fa = fidlib.Stats.from_features(a.features[:n], ex.id)
        fb = fidlib.Stats.from_features(b.features[:n], ex.id)
        out[f"mlds_{n}"] = fidlib.fid_from_stats(fa, fb)
    out["mlds_kid"] = fidlib.kid(a.features, b.features)[0]
    for name, uri in (("mono", mono), ("character", character)):
        f = fidlib.dataset_stats(uri, ex, progress=False).features
        h = len(f) // 2
        out[f"{name}_halves"] = fidlib.fid_from_stats(fidlib.Stats.from_features(f[:h], ex.id),
                                                      fidlib.Stats.from_features(f[h:2 * h], ex.id))
        out[f"{name}_half_n"] = h
    return out


def fid_at(curve: list[dict], kimg: float) -> float:
    """FID at ``kimg`` read off a curve (linear between snapshots; the last point beyond it)."""
    pts = sorted((p["kimg"], p["fid"]) for p in curve)
    if kimg >= pts[-1][0]:
        return pts[-1][1]
    return float(np.interp(kimg, [k for k, _ in pts], [f for _, f in pts]))


def kimg_to_reach(curve: list[dict], target: float) -> float | None:
    """The first kimg at which a curve reaches ``target`` (linear between snapshots), None if it never does."""
    pts = sorted((p["kimg"], p["fid"]) for p in curve)
    if pts[0][1] <= target:
        return pts[0][0]
    for (k0, f0), (k1, f1) in zip(pts[:-1], pts[1:]):
        if f1 <= target:
            return k0 + (k1 - k0) * (f0 - target) / (f0 - f1)
    return None


def learned(curve: list[dict], floor: float) -> dict[str, Any]:
    """The learning check: final FID below the 0 kimg FID by at least half the gap between that and the floor."""
    pts = sorted((p["kimg"], p["fid"]) for p in curve)
    start, end = pts[0][1], pts[-1][1]
    return {"fid_0": start, "fid_end": end, "floor": floor, "closed": (start - end) / max(start - floor, 1e-9),
            "ok": start - end >= 0.5 * (start - floor)}


def accuracy_curve(S: Scale, model: Path, tagger: str) -> list[dict[str, Any]]:
    """Hair / eye accuracy of every snapshot (k_curve images per class)."""
    t = load_colour_tagger(tagger, S.device)
    out = []
    for snap in sorted((model / "snapshots").glob("G_ema-*.pt")):
        G, meta = load_generator(snap, S.device)
        acc = class_accuracy(G, meta["class_names"], t, k=S.k_curve, seed=1, device=S.device)
        out.append({"kimg": meta["images_seen"] / 1000, "hair": acc["hair_accuracy"], "eye": acc["eye_accuracy"]})
    return out


def budget_for(curve: list[dict], key: str, target: float) -> float | None:
    """kimg at which a log-linear fit (accuracy = a + b log kimg, snapshots after 0) reaches ``target``."""
    pts = [(p["kimg"], p[key]) for p in curve if p["kimg"] > 0 and p[key] is not None]
    if len(pts) < 2:
        return None
    b, a = np.polyfit(np.log([k for k, _ in pts]), [v for _, v in pts], 1)
    kimg = math.exp(min((target - a) / b, 50.0)) if b > 0 else math.inf
    # no trend (flat or falling), or one that needs 100x the budget run: not a budget this curve can suggest
    return float(kimg) if kimg <= 100 * pts[-1][0] else None


def priors(class_names: list[str], sizes: list[int]) -> dict[str, float]:
    """Accuracy of a guess drawn from the training set's colour prior (sum of squared frequencies)."""
    out = {}
    for key, pos in (("hair", 0), ("eye", 2)):
        counts: dict[str, int] = {}
        for name, n in zip(class_names, sizes):
            counts[name.split()[pos]] = counts.get(name.split()[pos], 0) + n
        p = np.array(list(counts.values()), dtype=float) / sum(counts.values())
        out[key] = float((p ** 2).sum())
    return out


def plot_accuracy_vs_size(rows: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, colour in (("hair_correct", "tab:orange"), ("eye_correct", "tab:blue")):
        ax.scatter([r["size"] for r in rows], [r[key] for r in rows], s=12, c=colour, label=key.split("_")[0])
    ax.set_xlabel("training images of the class")
    ax.set_ylabel("accuracy (colour tagger)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    ax.set_title("per-class accuracy vs class size")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def seed_suffix(k: int, seed: int) -> str:
    """Name suffix of the k-th training seed's models (the first keeps the bare name)."""
    return f"-seed{seed + k}" if k else ""


def seed_values(models: dict, name: str) -> list[dict]:
    """``name``'s models over the training seeds run (the bare name first)."""
    return [models[name]] + [v for k, v in sorted(models.items()) if k.startswith(name + "-seed")]


def speedup(tr: dict, sc: dict) -> dict[str, Any]:
    """Transfer speed-up: scratch's kimg (and seconds, at each run's img/s) to reach its own final FID over the
    transfer's kimg to reach the same FID (curve sample size)."""
    goal = sc["fid_over_kimg"][-1]["fid"]
    k_sc, k_tr = kimg_to_reach(sc["fid_over_kimg"], goal), kimg_to_reach(tr["fid_over_kimg"], goal)
    sec = {k: (kk * 1000 / run["train"]["img_per_s"] if kk is not None else None)
           for k, kk, run in (("scratch", k_sc, sc), ("transfer", k_tr, tr))}
    return {"scratch_kimg_to_goal": k_sc, "transfer_kimg_to_goal": k_tr,
            "speedup_kimg": (k_sc / k_tr if k_tr else math.inf) if k_sc is not None and k_tr is not None else None,
            "speedup_seconds": (sec["scratch"] / sec["transfer"] if sec["transfer"] else math.inf)
            if sec["scratch"] is not None and sec["transfer"] is not None else None}


COMPARISONS = (("ours vs the tutorial DCGAN", "dcgan", "dcgan_tutorial"),
               ("StyleGAN vs DCGAN", "stylegan", "dcgan"),
               ("monochrome: transfer vs scratch", "mono_transfer", "mono_scratch"),
               ("single character: transfer vs scratch", "character_transfer", "character_scratch"))


def spread(models: dict) -> list[dict[str, Any]]:
    """The comparisons that decide a claim, with their spread: each side's final FID per training seed (and 90 %
    bootstrap interval). Decided 'beyond the seed spread' when every seed of one side is below every seed of the
    other and both have two seeds or more; with one seed on a side, 'beyond the bootstrap intervals' when the
    intervals do not overlap; otherwise 'inside the spread'."""
    rows = []
    for title, a, b in COMPARISONS:
        va, vb = seed_values(models, a), seed_values(models, b)
        fa, fb = [v["fid"] for v in va], [v["fid"] for v in vb]
        lower = a if np.mean(fa) < np.mean(fb) else b
        if len(fa) > 1 and len(fb) > 1:
            decided = max(fa) < min(fb) or max(fb) < min(fa)
            how = "beyond the seed spread" if decided else "inside the seed spread"
        else:
            ia = [v["fid_interval"] for v in va]
            ib = [v["fid_interval"] for v in vb]
            decided = max(i[1] for i in ia) < min(i[0] for i in ib) or max(i[1] for i in ib) < min(i[0] for i in ia)
            how = "beyond the bootstrap intervals" if decided else "inside the bootstrap intervals"
        row = {"comparison": title, "a": a, "b": b, "fid_a": fa, "fid_b": fb,
               "interval_a": [v["fid_interval"] for v in va], "interval_b": [v["fid_interval"] for v in vb],
               "mean_a": float(np.mean(fa)), "mean_b": float(np.mean(fb)), "lower": lower, "decided": decided,
               "verdict": f"{lower} lower, {how}"}
        if a.endswith("_transfer"):
            row["speedup_kimg"] = [speedup(t, s)["speedup_kimg"] for t, s in zip(va, vb)]
            row["speedup_seconds"] = [speedup(t, s)["speedup_seconds"] for t, s in zip(va, vb)]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------------ main
def run(S: Scale, work: Path, seed: int, record: bool = False, parts: Path | None = None) -> dict[str, Any]:
    """Every step here; with ``record`` (the lent GPU: no Inception weights there) the steps that need Inception
    (floors, FIDs, the cross-dataset FID) are left to ``--score``, the models' samples saved for it, and the
    result is work/device.json."""
    steps = Steps(work)
    d = steps("data", prepare_data, S, work, seed, parts)
    m = work / "models"
    e = work / "evals"
    tagger = str(work / "tagger")
    t = steps("tagger", lambda: run_tagger_train(
        TaggerTrainConfig(epochs=S.tagger_epochs, resolution=S.resolution, device=S.device, progress=False),
        d["labelled"], tagger))
    tagger_acc = {k: t.get(k) for k in ("hair_accuracy", "eye_accuracy", "pair_accuracy")}
    fl = None if record else steps("floors", floors, S, d["base"], d["ref"], d["mono"], d["character"])
    measure = record_model if record else evaluate

    seed1 = {"dcgan": ("dcgan", d["base"], False), "dcgan_conditional": ("dcgan", d["labelled"], True),
             "stylegan": ("stylegan", d["base"], False), "stylegan_conditional": ("stylegan", d["labelled"], True)}
    models: dict[str, dict[str, Any]] = {}
    for name, (arch, data, cond) in seed1.items():
        steps(f"train-{name}", train_model, S, arch, data, m / name, S.kimg, S.snapshot_kimg, seed, cond)
        models[name] = steps(f"eval-{name}", measure, S, m / name, d["ref"], e / name, S.n_fid, S.n_curve,
                             tagger if cond else None, d["labelled"] if cond else None)
    transfers = {"mono_transfer": (d["mono"], True), "mono_scratch": (d["mono"], False),
                 "character_transfer": (d["character"], True), "character_scratch": (d["character"], False)}
    for k in range(S.seeds):  # the first seed: every model; the others: the decisive comparisons (Scale.seeds)
        sfx = seed_suffix(k, seed)
        if k:
            name = "dcgan" + sfx
            steps(f"train-{name}", train_model, S, "dcgan", d["base"], m / name, S.kimg, S.snapshot_kimg, seed + k)
            models[name] = steps(f"eval-{name}", measure, S, m / name, d["ref"], e / name, S.n_fid, S.n_curve, None)
        name = "dcgan_tutorial" + sfx
        models[name] = steps("tutorial-dcgan" + sfx, reference_dcgan, S, d["base"], d["ref"], m / ("tutorial" + sfx),
                             S.kimg, seed + k, e / name if record else None)
        for base, (data, tr) in transfers.items():
            name = base + sfx
            steps(f"train-{name}", train_model, S, "stylegan", data, m / name, S.transfer_kimg,
                  S.transfer_snapshot_kimg, seed + k, init=str(m / "stylegan_conditional") if tr else None)
            models[name] = steps(f"eval-{name}", measure, S, m / name, data, e / name, S.n_fid_transfer,
                                 S.n_curve_transfer, None)
    acc_curve = steps("accuracy-over-kimg", accuracy_curve, S, m / "stylegan_conditional", tagger)
    if record:
        run_id = work / "run_id"
        if not run_id.exists():
            run_id.write_text(uuid.uuid4().hex)
        doc = {"run_id": run_id.read_text(), "scale": dataclasses.asdict(S), "data": d, "tagger": tagger_acc,
               "models": models, "accuracy_over_kimg": acc_curve, "step_seconds": steps.seconds,
               "environment": environment(S.device), "source_sha256": source_digest()}
        write_json_atomic(work / "device.json", doc)
        return doc
    cross = steps("cross-fid", lambda: json.loads(run_fid(FidConfig(device=S.device, progress=False), d["mono"],
                                                          d["character"], e / "cross").read_text()))
    return tables(S, d, fl, models, tagger_acc, cross, acc_curve, steps.seconds, work)


# ------------------------------------------------------------------------------- StyleGAN2 vs StyleGAN (issue 13)
SG2_ADA_KIMG = 10.0  # ADA's p may cross 0 -> 1 in 10 kimg: the transfers run 12 (the reference's 500 suits 1000s)


def stylegan2_section(S: Scale, work: Path, seed: int) -> dict[str, Any]:
    """StyleGAN2 against the main run's StyleGAN (v1) on the same data, budget, widths and regularisation
    (STYLEGAN_SMALL), unconditional and conditional; then the single-character transfer from the conditional
    StyleGAN2 with ADA and without augmentation (r_t logged). Reuses the main run's data, floors, tagger and v1
    models (the same work folder: run the main benchmark first)."""
    steps = Steps(work)
    for need in ("data", "floors", "tagger", "eval-stylegan", "eval-stylegan_conditional"):
        if not (steps.dir / f"{need}.json").exists():
            raise SystemExit(f"--section stylegan2 reuses the main run's '{need}': run the main benchmark first")
    d, fl = steps("data", None), steps("floors", None)
    m, e, tagger = work / "models", work / "evals", str(work / "tagger")
    models: dict[str, dict[str, Any]] = {n: steps(f"eval-{n}", None) for n in ("stylegan", "stylegan_conditional")}
    for name, data, cond in (("stylegan2", d["base"], False), ("stylegan2_conditional", d["labelled"], True)):
        steps(f"train-{name}", train_model, S, "stylegan2", data, m / name, S.kimg, S.snapshot_kimg, seed, cond,
              extra={"augment": "none"})
        models[name] = steps(f"eval-{name}", evaluate, S, m / name, d["ref"], e / name, S.n_fid, S.n_curve,
                             tagger if cond else None, d["labelled"] if cond else None)
    for k in range(1, S.seeds):  # the unconditional pair with the other seeds: the spread of the comparison
        for arch in ("stylegan", "stylegan2"):
            name = arch + seed_suffix(k, seed)
            steps(f"train-{name}", train_model, S, arch, d["base"], m / name, S.kimg, S.snapshot_kimg, seed + k,
                  extra={"augment": "none"})
            models[name] = steps(f"eval-{name}", evaluate, S, m / name, d["ref"], e / name, S.n_fid, S.n_curve, None)
    for aug in ("ada", "none"):
        name = f"character_transfer_sg2_{aug}"
        steps(f"train-{name}", train_model, S, "stylegan2", d["character"], m / name, S.transfer_kimg,
              S.transfer_snapshot_kimg, seed, init=str(m / "stylegan2_conditional"),
              extra={"augment": aug, "ada_kimg": SG2_ADA_KIMG})
        models[name] = steps(f"eval-{name}", evaluate, S, m / name, d["character"], e / name, S.n_fid_transfer,
                             S.n_curve_transfer, None)
        log = [json.loads(x) for x in (m / name / "train_log.jsonl").read_text().splitlines()]
        models[name]["rt"] = [{"kimg": r["kimg"], "rt": r["rt"], "p": r.get("ada_p")} for r in log if "rt" in r]
    floor_curve = fl[f"mlds_{S.n_curve}"]
    rows = []
    for n in ("stylegan", "stylegan2", "stylegan_conditional", "stylegan2_conditional"):
        mm = models[n]
        rows.append({"model": n, "fid": mm["fid"], "fid_seeds": [v["fid"] for v in seed_values(models, n)],
                     "fid_interval": mm["fid_interval"], "kid": mm.get("kid"),
                     "img_per_s": mm["train"]["img_per_s"], "fid_over_kimg": mm["fid_over_kimg"],
                     "learning": learned(mm["fid_over_kimg"], floor_curve),
                     "hair_accuracy": mm.get("hair_accuracy"), "eye_accuracy": mm.get("eye_accuracy")})
    transfer = []
    for aug in ("ada", "none"):
        mm = models[f"character_transfer_sg2_{aug}"]
        late = [r["rt"] for r in mm["rt"] if r["kimg"] > S.transfer_kimg / 2]
        transfer.append({"augment": aug, "fid": mm["fid"], "fid_interval": mm["fid_interval"],
                         "fid_over_kimg": mm["fid_over_kimg"], "rt_late_mean": float(np.mean(late)) if late else None,
                         "rt": mm["rt"], "floor_halves": fl["character_halves"]})
    v1, v2 = rows[0]["fid_seeds"], rows[1]["fid_seeds"]
    spread_verdict = ("stylegan2 lower beyond the seed spread" if max(v2) < min(v1) else
                      "stylegan lower beyond the seed spread" if max(v1) < min(v2) else "inside the seed spread") \
        if len(v1) > 1 and len(v2) > 1 else "one seed: see the bootstrap intervals"
    return {"benchmark": "paper_tables --section stylegan2", "scale": dataclasses.asdict(S), "floors": fl,
            "seed1": rows, "unconditional_over_seeds": {"stylegan": v1, "stylegan2": v2, "verdict": spread_verdict,
                                                         "mean_gap": float(np.mean(v1) - np.mean(v2))},
            "character_transfer": transfer, "ada_kimg": SG2_ADA_KIMG,
            "step_seconds": {k: v for k, v in steps.seconds.items() if "stylegan2" in k or "sg2" in k
                             or k.startswith(("train-stylegan-seed", "eval-stylegan-seed"))}}


def print_stylegan2(doc: dict) -> None:
    n = doc["scale"]["n_fid"]
    print("\nStyleGAN2 vs StyleGAN (same data, budget, widths, regularisation)")
    print_table(["model", f"FID ({n}) [90% bootstrap]", "FID per seed", "KID", "img/s", "gap closed", "hair",
                 "eye"],
                [[r["model"], f"{fmt(r['fid'])} [{fmt(r['fid_interval'][0])}, {fmt(r['fid_interval'][1])}]",
                  " / ".join(fmt(f) for f in r["fid_seeds"]), fmt(r["kid"], 4), fmt(r["img_per_s"], 0),
                  f"{r['learning']['closed']:.2f}",
                  fmt(r["hair_accuracy"], 3), fmt(r["eye_accuracy"], 3)] for r in doc["seed1"]])
    u = doc["unconditional_over_seeds"]
    print(f"unconditional over seeds: StyleGAN {u['stylegan']} vs StyleGAN2 {u['stylegan2']}: {u['verdict']} "
          f"(means {u['mean_gap']:+.1f} apart)")
    print("\nSingle-character transfer from the conditional StyleGAN2: ADA vs no augmentation")
    print_table(["augment", "FID [90% bootstrap]", "floor (halves)", "r_t (second half)"],
                [[r["augment"], f"{fmt(r['fid'])} [{fmt(r['fid_interval'][0])}, {fmt(r['fid_interval'][1])}]",
                  fmt(r["floor_halves"]), fmt(r["rt_late_mean"], 2)] for r in doc["character_transfer"]])


def score(S: Scale, work: Path, dirs: list[Path], seed: int) -> dict[str, Any]:
    """A recorded device run (``dirs``: its fetched parts) scored here: the same partition of MLDS (``--prepare``
    made it; checked against the device's), floors, every FID from the device's samples, the cross-dataset FID,
    then the same tables."""
    dev = unpack(dirs, work)
    steps = Steps(work / "score")
    d = steps("data", prepare_data, S, work, seed)
    for key in ("ref_ids_sha256", "base_ids_sha256", "character_ids", "class_names", "class_sizes"):
        if d.get(key) != dev["data"].get(key):
            raise SystemExit(f"the device run's data differ from this machine's partition ({key}): rerun --prepare "
                             "with the same --seed and carry its folder")
    fl = steps("floors", floors, S, d["base"], d["ref"], d["mono"], d["character"])
    refs = {"mono_transfer": d["mono"], "mono_scratch": d["mono"], "character_transfer": d["character"],
            "character_scratch": d["character"]}
    models = {name: steps(f"score-{name}", score_model, S, rec, work / "evals" / name,
                          refs.get(name.split("-seed")[0], d["ref"]))
              for name, rec in dev["models"].items()}
    cross = steps("cross-fid", lambda: json.loads(run_fid(FidConfig(device="cpu", progress=False), d["mono"],
                                                          d["character"], work / "evals" / "cross").read_text()))
    doc = tables(S, d, fl, models, dev["tagger"], cross, dev["accuracy_over_kimg"],
                 {**dev["step_seconds"], **{f"here:{k}": v for k, v in steps.seconds.items()}}, work)
    doc["device_environment"] = dev["environment"]
    doc["device_source_sha256"] = dev["source_sha256"]
    doc["device_run_id"] = dev["run_id"]
    return doc


def tables(S: Scale, d: dict, fl: dict, models: dict, tagger_acc: dict, cross: dict, acc_curve: list,
           seconds: dict, work: Path) -> dict[str, Any]:
    floor_end, floor_curve = fl[f"mlds_{S.n_fid}"], fl[f"mlds_{S.n_curve}"]
    # ---- seed 1
    seed1_names = ["dcgan", "dcgan_tutorial", "dcgan_conditional", "stylegan", "stylegan_conditional"]
    equal_s = min(models[n]["train"]["kimg"] * 1000 / models[n]["train"]["img_per_s"] for n in seed1_names)
    seed1 = []
    for n in seed1_names:
        mm, tr = models[n], models[n]["train"]
        seed1.append({"model": n, "kimg": tr["kimg"], "fid": mm["fid"], "fid_interval": mm["fid_interval"],
                      "floor": floor_end, "kid": mm.get("kid"), "img_per_s": tr["img_per_s"],
                      "peak_memory_bytes": tr.get("peak_memory_bytes"),
                      "fid_at_equal_time": fid_at(mm["fid_over_kimg"], equal_s * tr["img_per_s"] / 1000),
                      "learning": learned(mm["fid_over_kimg"], floor_curve),
                      "hair_accuracy": mm.get("hair_accuracy"), "eye_accuracy": mm.get("eye_accuracy")})
    # ---- seed 2, Table II
    acc = models["stylegan_conditional"]["accuracy"] or {}
    size = dict(zip(d["class_names"], d["class_sizes"]))
    table2 = [{"class": r["class"], "size": size.get(r["class"]), "n": r["n"], "hair_correct": r["hair_correct"],
               "eye_correct": r["eye_correct"]} for r in acc.get("classes", [])]
    prior = priors(d["class_names"], d["class_sizes"])
    table2_summary = {
        "hair_accuracy": acc.get("hair_accuracy"), "eye_accuracy": acc.get("eye_accuracy"),
        "chance": acc.get("chance"), "prior": prior, "tagger_heldout": tagger_acc, "classes": len(table2),
        "min_class_size": S.min_per_class, "k_per_class": S.k_per_class, "accuracy_over_kimg": acc_curve,
        "kimg_for_hair_90": budget_for(acc_curve, "hair", 0.9), "kimg_for_eye_75": budget_for(acc_curve, "eye", 0.75)}
    # ---- seed 2, Table III: transfer vs scratch
    table3 = []
    for target in ("mono", "character"):
        tr, sc = models[f"{target}_transfer"], models[f"{target}_scratch"]
        table3.append({
            "target": target, "images": d["counts"][target], "floor_halves": fl[f"{target}_halves"],
            "floor_half_n": fl[f"{target}_half_n"],
            "transfer_fid": tr["fid"], "transfer_interval": tr["fid_interval"],
            "scratch_fid": sc["fid"], "scratch_interval": sc["fid_interval"],
            "transfer_fid_0": sorted(tr["fid_over_kimg"], key=lambda p: p["kimg"])[0]["fid"],
            **speedup(tr, sc),
            "first_snapshot_kimg": S.transfer_snapshot_kimg,
            "transfer_learning": learned(tr["fid_over_kimg"], fl[f"{target}_halves"]),
            "scratch_learning": learned(sc["fid_over_kimg"], fl[f"{target}_halves"])})
    doc = {"benchmark": "paper_tables", "scale": dataclasses.asdict(S), "data": {k: d[k] for k in (
        "counts", "class_names", "class_sizes", "character_ids", "ref_ids_sha256", "blocks")},
        "floors": fl, "seed1": seed1, "equal_time_s": equal_s, "table2": table2, "table2_summary": table2_summary,
        "table3": table3, "spread": spread(models),
        "cross_fid": {"mono_vs_character": cross["fid"], "kid": cross.get("kid")},
        "models": {k: {kk: v.get(kk) for kk in ("fid", "fid_interval", "kid", "n_fid", "fid_over_kimg", "train",
                                                 "hair_accuracy", "eye_accuracy")} for k, v in models.items()},
        "step_seconds": seconds, "total_seconds": round(sum(seconds.values()), 1)}
    return doc


def fmt(v: Any, p: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{p}f}"
    return str(v)


def print_tables(doc: dict) -> dict[str, list]:
    """The four tables as printed rows (also the report's)."""
    n = doc["scale"]["n_fid"]
    t1 = [[r["model"], fmt(r["kimg"]), f"{fmt(r['fid'])} [{fmt(r['fid_interval'][0])}, {fmt(r['fid_interval'][1])}]",
           fmt(r["floor"]), fmt(r["kid"], 4), fmt(r["img_per_s"], 0),
           fmt((r["peak_memory_bytes"] or 0) / 2**20, 0) if r["peak_memory_bytes"] else "-",
           fmt(r["fid_at_equal_time"]), f"{r['learning']['closed']:.2f} {'ok' if r['learning']['ok'] else 'NO'}"]
          for r in doc["seed1"]]
    h1 = ["model", "kimg", f"FID ({n}) [90% bootstrap]", f"floor ({n})", "KID", "img/s", "peak MiB",
          f"FID at {doc['equal_time_s']:.0f} s", "gap closed"]
    s = doc["table2_summary"]
    t2 = [[r["class"], fmt(r["size"]), fmt(r["n"]), fmt(r["hair_correct"], 2), fmt(r["eye_correct"], 2)]
          for r in doc["table2"]]
    h2 = ["class", "train images", "samples", "hair acc", "eye acc"]
    t2s = [["conditional StyleGAN", fmt(s["hair_accuracy"], 3), fmt(s["eye_accuracy"], 3)],
           ["chance (1 / colours)", fmt((s["chance"] or {}).get("hair"), 3), fmt((s["chance"] or {}).get("eye"), 3)],
           ["colour prior (sum p^2)", fmt(s["prior"]["hair"], 3), fmt(s["prior"]["eye"], 3)],
           ["tagger on held-out reals", fmt(s["tagger_heldout"]["hair_accuracy"], 3),
            fmt(s["tagger_heldout"]["eye_accuracy"], 3)]]
    t3 = [[r["target"], fmt(r["images"]), fmt(r["floor_halves"]),
           f"{fmt(r['transfer_fid'])} [{fmt(r['transfer_interval'][0])}, {fmt(r['transfer_interval'][1])}]",
           f"{fmt(r['scratch_fid'])} [{fmt(r['scratch_interval'][0])}, {fmt(r['scratch_interval'][1])}]",
           fmt(r["transfer_fid_0"]), fmt(r["transfer_kimg_to_goal"], 2), fmt(r["scratch_kimg_to_goal"], 2),
           fmt(r["speedup_kimg"], 2), fmt(r["speedup_seconds"], 2)] for r in doc["table3"]]
    h3 = ["target", "images", "floor (halves)", "transfer FID", "scratch FID", "transfer FID at 0",
          "transfer kimg to goal", "scratch kimg to goal", "speed-up (kimg)", "speed-up (s)"]
    t4 = [["monochrome vs single character", fmt(doc["cross_fid"]["mono_vs_character"])]]
    t5 = [[r["comparison"], " / ".join(fmt(f) for f in r["fid_a"]), " / ".join(fmt(f) for f in r["fid_b"]),
           " / ".join(fmt(x, 2) for x in r.get("speedup_kimg", [])) or "-", r["verdict"]] for r in doc["spread"]]
    h5 = ["comparison", "FID A (per seed)", "FID B (per seed)", "speed-up (kimg, per seed)", "verdict"]
    for title, h, rows in (("Seed 1: DCGAN vs StyleGAN", h1, t1),
                           ("Seed 2, Table II: summary", ["", "hair", "eye"], t2s),
                           ("Seed 2, Table III: transfer vs scratch", h3, t3), ("Cross-dataset FID", ["", "FID"], t4),
                           ("The decisive comparisons over training seeds (A vs B)", h5, t5)):
        print(f"\n{title}")
        print_table(h, rows)
    return {"t1": [h1, t1], "t2": [h2, t2], "t2s": [["", "hair", "eye"], t2s], "t3": [h3, t3],
            "t4": [["", "FID"], t4], "t5": [h5, t5]}


def picture_files(ev: Path) -> list[Path]:
    """The pictures of an evaluation folder the figures show: the sample grid (a conditional model's: every 8th
    class's row), style mixing (coarse) and the interpolation loop (StyleGAN)."""
    rows = sorted((ev / "samples").glob("grid_*.png"))
    files = rows[::8] if len(rows) > 16 else [ev / "samples" / "grid.png"]
    files += [ev / "mixing" / "mix_coarse.png", ev / "interpolation" / "interp.gif"]
    return [f for f in files if f.is_file()]


def figures(doc: dict, work: Path, fig_dir: Path) -> list[Figure]:
    """Generated-image figures (committed) and the curves; returns them for the report."""
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = []
    first = {k: v for k, v in doc["models"].items() if "-seed" not in k}  # the curves of the first seed
    rows = [{"run": "", "model": k, "fid_over_kimg": v["fid_over_kimg"]} for k, v in first.items()
            if not k.startswith(("mono", "character"))]
    p = plot_fid_curves(rows, fig_dir / "seed1_fid_over_kimg.png", title="Seed 1: FID over kimg (curve samples)")
    if p:
        figs.append(Figure(p, "seed 1: FID over kimg"))
    rows = [{"run": "", "model": k, "fid_over_kimg": v["fid_over_kimg"]} for k, v in first.items()
            if k.startswith(("mono", "character"))]
    p = plot_fid_curves(rows, fig_dir / "transfer_fid_over_kimg.png", title="Transfer vs scratch: FID over kimg")
    if p:
        figs.append(Figure(p, "transfer vs scratch: FID over kimg"))
    if doc["table2"]:
        figs.append(Figure(plot_accuracy_vs_size(doc["table2"], fig_dir / "accuracy_vs_class_size.png"),
                           "per-class accuracy vs class size"))
    # sample grids of every model; style mixing and the interpolation loop of the StyleGANs (kept small: committed)
    for name in ("dcgan", "dcgan_conditional", "stylegan", "stylegan_conditional", "mono_transfer", "mono_scratch",
                 "character_transfer", "character_scratch"):
        ev = work / "evals" / name
        captions = {"grid.png": "samples", "mix_coarse.png": "style mixing (coarse)",
                    "interp.gif": "interpolation loop"}
        files = picture_files(ev)
        rows = [f for f in files if f.name.startswith("grid_")]
        if rows:  # a conditional model: every 8th class's row, stacked (the full grid is megabytes)
            from PIL import Image
            ims = [Image.open(r).convert("RGB") for r in rows]
            sheet = Image.new("RGB", (max(i.width for i in ims), sum(i.height for i in ims)), "white")
            for k, im in enumerate(ims):
                sheet.paste(im, (0, sum(i.height for i in ims[:k])))
            dest = fig_dir / f"{name}-samples-every-8th-class.png"
            sheet.save(dest)
            shown = ", ".join(r.stem[5:] for r in rows)
            figs.append(Figure(dest, f"{name}: every 8th class, one row each ({shown})"))
        for f in files:
            if f.name in captions and not (rows and f.name == "grid.png"):
                dest = fig_dir / f"{name}-{f.parent.name}-{f.name}"
                shutil.copyfile(f, dest)
                figs.append(Figure(dest, f"{name}: {captions[f.name]}"))
    return figs


def report(doc: dict, printed: dict, figs: list[Figure], work: Path) -> Path:
    d = work / "data"
    real: list[Figure] = []
    for name in ("character", "mono"):
        imgs = open_dataset(str(d / name)).images[:64]
        x = torch.from_numpy(np.array(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1
        real.append(Figure(save_grid(x, work / f"{name}-set.png", ncol=8), f"the {name} target set (first 64)"))
    body = [f"<h1>Paper tables ({doc['scale']['resolution']} px, {doc['scale']['device']})</h1>"]
    for key, title in (("t1", "Seed 1: DCGAN vs StyleGAN"), ("t2s", "Seed 2, Table II (summary)"),
                       ("t2", "Seed 2, Table II (per class)"), ("t3", "Seed 2, Table III: transfer vs scratch"),
                       ("t4", "Cross-dataset FID"), ("t5", "The decisive comparisons over training seeds")):
        h, rows = printed[key]
        body.append(f"<h2>{title}</h2>" + html_table(h, rows))
    body += [figure_html(f) for f in figs + real]
    body.append(f"<pre>{json.dumps(doc['environment'], indent=1)}</pre>")
    path = work / "report.html"
    path.write_text(html_page("animegen paper tables", "\n".join(body)))
    return path


def prepare(S: Scale, work: Path, seed: int) -> None:
    """The GPU scale's parts of MLDS, made here (the lent machine has no ../shared) and copied to PARTS: the base
    set, the monochrome block and the character run as zips, and partition.json; the held-out block stays here."""
    meta = partition(S, work / "data", seed)
    shutil.rmtree(PARTS, ignore_errors=True)
    PARTS.mkdir()
    for name in ("base", "mono", "character"):
        shutil.copyfile(work / "data" / f"mlds-{name}.zip", PARTS / f"mlds-{name}.zip")
    shutil.copyfile(work / "data" / "partition.json", PARTS / "partition.json")
    size = sum(f.stat().st_size for f in PARTS.iterdir())
    if size > CARRY_MAX_BYTES:
        raise SystemExit(f"{PARTS} holds {size / 2**20:.1f} MiB, over {CARRY_MAX_BYTES / 2**20:.0f} MiB: lower the "
                         "GPU scale's base_limit")
    print(f"wrote {PARTS} ({size / 2**20:.1f} MiB; {len(meta['character_ids'])} character ids). On the lent GPU:\n"
          f"  run command: {DEVICE_COMMAND}\n  carry: [\".papertables\"]  timeout_s: 540\n"
          "then at once (the samples live on the warm machine), for K = 2 .. the 'parts' device.json names:\n"
          "  PYTHONPATH=src python3 benchmarks/paper_tables.py --scale gpu --record --part K --out $OUT\n"
          "and here: python benchmarks/paper_tables.py --scale gpu --score DIR1 DIR2 ...")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    ap.add_argument("--quick", action="store_true", help="the same tables at toy budgets (--scale quick)")
    ap.add_argument("--work", default=None, help="resumable working folder (default benchmarks/.work/...)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prepare", action="store_true", help="write the carried parts for the lent GPU (PARTS)")
    ap.add_argument("--record", action="store_true",
                    help="on the lent GPU: train and sample everything, no Inception; --out gets part 1")
    ap.add_argument("--part", type=int, default=1, help="with --record: copy part K of a recorded run to --out")
    ap.add_argument("--section", choices=("stylegan2",), default=None,
                    help="stylegan2: StyleGAN2 vs StyleGAN and character transfer with/without ADA (after the main "
                         "run, reusing its data and v1 models)")
    ap.add_argument("--score", nargs="+", default=None, metavar="DIR",
                    help="score a recorded run from its fetched parts, here, then write the tables")
    args = ap.parse_args()
    scale = "quick" if args.quick else args.scale
    S = on_this_machine(SCALES[scale])
    work = Path(args.work or ROOT / "benchmarks" / ".work" / f"paper_tables-{scale}")
    out = Path(args.out)
    if args.record:  # on the lent machine (or a dry run of it): no ../shared, no Inception weights
        if args.part == 1:
            run(S, work, args.seed, record=True, parts=PARTS if PARTS.is_dir() else None)
        elif not (work / "device.json").exists():
            raise SystemExit(f"{work / 'device.json'} is missing: this machine holds no recorded run (it went "
                             "cold?); run part 1 again, then every other part straight after")
        print("part", args.part, "->", out, pack(work, out, args.part))
        return
    if not MLDS.exists():
        raise SystemExit(f"{MLDS} is missing: the paper tables need the shared MLDS faces")
    if args.prepare:
        prepare(S, work, args.seed)
        return
    t0 = time.perf_counter()
    if args.section == "stylegan2":
        doc = stylegan2_section(S, work, args.seed)
        doc["environment"] = environment(S.device)
        doc["command"] = f"python benchmarks/paper_tables.py --scale {scale} --section stylegan2"
        print_stylegan2(doc)
        fig = plot_fid_curves([{"run": "", "model": r["model"], "fid_over_kimg": r["fid_over_kimg"]}
                               for r in doc["seed1"]], out / f"paper_tables-{scale}" / "stylegan2_fid_over_kimg.png",
                              title="StyleGAN vs StyleGAN2: FID over kimg")
        doc["figure"] = str(fig) if fig else None
        for name in ("stylegan2", "stylegan2_conditional", "character_transfer_sg2_ada", "character_transfer_sg2_none"):
            for f in picture_files(work / "evals" / name):
                if f.name in ("grid.png", "mix_coarse.png") or f.name.startswith("grid_"):
                    shutil.copyfile(f, out / f"paper_tables-{scale}" / f"{name}-{f.parent.name}-{f.name}")
        doc["wall_s_this_call"] = round(time.perf_counter() - t0, 1)
        print("wrote", write_result(out, f"paper_tables-stylegan2-{scale}-{dt.date.today().isoformat()}.json", doc))
        return
    if args.score:
        doc = score(S, work, [Path(p) for p in args.score], args.seed)
    else:
        doc = run(S, work, args.seed)
    doc["environment"] = environment("cpu" if args.score else S.device)
    doc["command"] = "python benchmarks/paper_tables.py" + (" --quick" if args.quick else f" --scale {scale}") + (
        " --score ..." if args.score else "")
    printed = print_tables(doc)
    date = dt.date.today().isoformat()
    figs = figures(doc, work, out / f"paper_tables-{scale}")
    doc["report"] = str(report(doc, printed, figs, work))
    doc["wall_s_this_call"] = round(time.perf_counter() - t0, 1)
    print("wrote", write_result(out, f"paper_tables-{scale}-{date}.json", doc), "and", doc["report"])


if __name__ == "__main__":
    main()
