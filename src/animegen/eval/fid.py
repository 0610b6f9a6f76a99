"""FID and KID: statistics, the Frechet distance, the kernel inception distance, cached reference statistics,
features streamed from a generator, and FID/KID between any two datasets.

- FID follows pytorch-fid's formula, ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), in float64. The
  square-root term is computed from eigenvalues instead of scipy's ``sqrtm``: S1 = F F^T (pivoted Cholesky,
  exact for the rank-deficient covariances that fewer than 2048 samples give), and S1 S2 = F F^T S2 has the
  same non-zero eigenvalues as the symmetric PSD matrix F^T S2 F, so tr sqrt(S1 S2) = sum sqrt(eigvalsh(F^T S2 F)).
  2048-d on 2 cores: ~3-5 s instead of sqrtm's 20-30 s (scipy 1.17; older scipy ~100 s), equal to 1e-6 relative.
- KID is the unbiased MMD^2 estimate with the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over random
  subsets (as in Binkowski et al. 2018 and StyleGAN2-ADA's metrics); it is unbiased for small sets, where FID is not.
- Reference statistics are cached by (dataset content hash, resolution, split, sample count, extractor id): in
  the object store when ``ANIMEGEN_STORE=s3://bucket/prefix`` is set (``auto``: the namespace's own prefix,
  ``animegen.store.namespaces``) (``<prefix>/fid-stats/<key>.npz`` and ``<key>.features.npy``), and always in a
  local folder (``$ANIMEGEN_CACHE/fid-stats``, else ``~/.cache/animegen/fid-stats``), so a second request runs
  no Inception at all.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from animegen.data.dataset import ImageSet
from animegen.eval.fid_images import FidImages, open_fid_images
from animegen.eval.inception import Extractor
from animegen.models.batchnorm import ensure_recalibrated
from animegen.progress import Progress, note
from animegen.utils import atomic_replace

CACHE_VERSION = "fid-stats-v1"  # bump when what a cached entry means changes
SUBSET_SEED = 0  # max_images < N takes a random subset drawn with this seed (kept in id order)
KID_GRAM_LIMIT = 4096  # KID precomputes the full kernel matrices when both sets together have at most this many rows
STORE_ENV = "ANIMEGEN_STORE"


# --------------------------------------------------------------------------------------------------- statistics

@dataclass
class Stats:
    """Mean and covariance (float64) of ``n`` feature vectors from the extractor ``extractor_id``.

    ``features`` (float32 [n, 2048]) rides along when known (KID needs them); ``save`` stores only the statistics.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor_id: str
    features: np.ndarray | None = None

    @classmethod
    def from_features(cls, features: np.ndarray, extractor_id: str) -> Stats:
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise ValueError(f"FID statistics need at least 2 feature vectors [N, D], got shape {list(feats.shape)}")
        return cls(feats.mean(axis=0), np.cov(feats, rowvar=False), len(feats), extractor_id,
                   feats.astype(np.float32))

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        """An .npz of mu, sigma, n, extractor_id (and ``meta`` as JSON), written atomically."""
        def write(f) -> None:
            np.savez(f, mu=self.mu, sigma=self.sigma, n=np.int64(self.n), extractor_id=np.str_(self.extractor_id),
                     meta=np.str_(json.dumps(meta or {}, sort_keys=True)))
        atomic_replace(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Stats:
        with np.load(path, allow_pickle=False) as f:
            return cls(f["mu"].astype(np.float64), f["sigma"].astype(np.float64), int(f["n"]), str(f["extractor_id"]))

    @staticmethod
    def load_meta(path: str | os.PathLike) -> dict[str, Any]:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["meta"])) if "meta" in f.files else {}


# ----------------------------------------------------------------------------------------------------- FID, KID

def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(sigma1 @ sigma2) for symmetric positive semi-definite matrices, through eigenvalues (module doc)."""
    from scipy.linalg import lapack

    s1 = np.asarray(sigma1, dtype=np.float64)
    s2 = np.asarray(sigma2, dtype=np.float64)
    if not (np.isfinite(s1).all() and np.isfinite(s2).all()):
        raise ValueError("covariance matrices contain NaN or Inf")
    d = len(s1)
    u, piv, rank, info = lapack.dpstrf(s1, lower=0)  # P^T s1 P = U^T U, U upper [rank rows used]
    if info < 0:
        raise ValueError(f"pivoted Cholesky failed (LAPACK dpstrf info={info})")
    if rank == 0:
        return 0.0
    factor = np.zeros((d, rank))
    factor[piv - 1] = np.triu(u)[:rank].T  # s1 = factor @ factor.T
    f = torch.from_numpy(factor)
    m = f.T @ torch.from_numpy(s2) @ f
    eig = torch.linalg.eigvalsh((m + m.T) / 2)
    return float(eig.clamp(min=0).sqrt().sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), as pytorch-fid's
    ``calculate_frechet_distance`` defines it, in float64 with the fast square-root term."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2))


def fid_from_stats(a: Stats, b: Stats) -> float:
    """FID between two sets' statistics; refuses statistics from different extractors."""
    if a.extractor_id != b.extractor_id:
        raise ValueError(f"these statistics come from different Inception extractors ({a.extractor_id} vs "
                         f"{b.extractor_id}); FIDs are only comparable with one extractor: recompute one side")
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def fid_bootstrap(features: np.ndarray, ref: Stats, resamples: int, seed: int = 0, level: float = 0.9,
                  fid: float | None = None) -> tuple[float, float]:
    """A ``level`` interval of FID from ``resamples`` bootstrap draws of the generated ``features`` (rows drawn with
    replacement, the reference statistics fixed): the spread FID has from the finite sample alone. A resample repeats
    rows, which biases its FID upwards, so the percentile interval is shifted by that bias (mean of the draws minus
    the sample's own FID) and sits around the sample's FID. ``fid``: that FID when the caller has it already."""
    if resamples < 2:
        raise ValueError(f"resamples={resamples}: a bootstrap interval needs at least 2 resamples")
    feats = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        x = feats[rng.integers(0, len(feats), len(feats))]
        draws.append(frechet_distance(x.mean(axis=0), np.cov(x, rowvar=False), ref.mu, ref.sigma))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    if fid is None:
        fid = frechet_distance(feats.mean(axis=0), np.cov(feats, rowvar=False), ref.mu, ref.sigma)
    bias = float(np.mean(draws)) - fid
    return float(lo) - bias, float(hi) - bias


def kid(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance: (mean, std) over ``num_subsets`` random subsets of the unbiased MMD^2 estimate
    with k(x, y) = (x.y / d + 1)^3. Each subset takes m = min(n1, n2, max_subset_size) rows of each set
    (without replacement); MMD^2 = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j)."""
    x = torch.as_tensor(np.asarray(feats1), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(feats2), dtype=torch.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"KID needs two feature matrices [N, D] of the same D, got {list(x.shape)}, {list(y.shape)}")
    d = x.shape[1]
    m = min(len(x), len(y), max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side (got {len(x)} and {len(y)})")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1 (got {num_subsets})")

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / d + 1) ** 3

    full = len(x) + len(y) <= KID_GRAM_LIMIT
    if full:  # every subset's kernel matrices are submatrices of these
        kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets)
    for s in range(num_subsets):
        i = torch.from_numpy(rng.choice(len(x), m, replace=False))
        j = torch.from_numpy(rng.choice(len(y), m, replace=False))
        if full:
            a, b, c = kxx[i][:, i], kyy[j][:, j], kxy[i][:, j]
        else:
            xs, ys = x[i], y[j]
            a, b, c = kernel(xs, xs), kernel(ys, ys), kernel(xs, ys)
        within = (a.sum() - a.diagonal().sum() + b.sum() - b.diagonal().sum()) / (m * (m - 1))
        values[s] = float(within - 2 * c.sum() / (m * m))
    return float(values.mean()), float(values.std())


# ------------------------------------------------------------------------------------------- reference statistics

def _select(source: FidImages, max_images: int | None, split: str | None) -> tuple[np.ndarray, str]:
    """Indices of the images to measure: the split's (all when None), then a seeded random subset if capped;
    and how the subset was taken ("all" or "random<seed>")."""
    idx = np.arange(len(source.images))
    if split is not None:
        if source.split_of is None:
            raise ValueError(f"split={split!r} asked for, but {source.name} records no splits "
                             "(a packed Dataset from `animegen ingest` has them in index.jsonl)")
        idx = idx[np.array([s == split for s in source.split_of], dtype=bool)]
        if len(idx) == 0:
            names = sorted(set(source.split_of))
            raise ValueError(f"{source.name} has no images in split {split!r}; its splits: {', '.join(names)}")
    if max_images is not None and max_images < len(idx):
        if max_images < 2:
            raise ValueError(f"max_images={max_images}: FID statistics need at least 2 images")
        return np.sort(np.random.default_rng(SUBSET_SEED).choice(idx, max_images, replace=False)), \
            f"random{SUBSET_SEED}"
    return idx, "all"


def _cache_key(parts: dict[str, Any]) -> str:
    """A readable key; the full parts are stored in the entry and checked on load."""
    content = parts["content"].split(":", 1)[1][:20]
    weights = parts["extractor_id"].split(":", 1)[1][:16]
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    return (f"{content}-r{parts['resolution']}-{parts['split'] or 'all'}-n{parts['count']}-"
            f"{parts['extractor_id'].split(':', 1)[0]}-{weights}-{digest}")


def default_cache_root() -> Path:
    from animegen.data.sources import default_cache_dir

    return default_cache_dir() / "fid-stats"


class StatsCache:
    """Where cached statistics live: a local folder, plus the object store when ``store`` (s3://bucket/prefix)
    is given. ``get`` tries the folder, then the store (copying down); ``put`` writes the folder, then uploads.
    An unreachable store is retried with backoff, then only warned about: the cache never fails a computation."""

    ATTEMPTS, BACKOFF_S = 3, 0.5

    def __init__(self, root: str | os.PathLike | None = None, store: str | None = None):
        self.root = Path(root) if root is not None else default_cache_root()
        self.store = store

    @classmethod
    def from_env(cls) -> StatsCache:
        from animegen.store.namespaces import resolve_store

        # ANIMEGEN_STORE=auto: the namespace's own prefix (animegen.store.namespaces), known only in the pod
        return cls(None, resolve_store(os.environ.get(STORE_ENV) or None, "cache"))

    def paths(self, key: str) -> tuple[Path, Path]:
        """(statistics .npz, features .npy) of an entry in the local folder."""
        return self.root / f"{key}.npz", self.root / f"{key}.features.npy"

    def _remote(self, path: Path) -> tuple[str, str]:
        from animegen.store.s3 import parse_s3_uri

        bucket, prefix = parse_s3_uri(self.store)
        prefix = prefix.strip("/")
        return bucket, f"{prefix + '/' if prefix else ''}fid-stats/{path.name}"

    def _retry(self, what: str, action) -> bool:
        """Run ``action(client)`` with retries on an unavailable store; False (after a warning) if it never works."""
        from animegen.store.s3 import S3UnavailableError, s3_client

        for attempt in range(self.ATTEMPTS):
            try:
                action(s3_client())
                return True
            except S3UnavailableError as e:
                if attempt + 1 == self.ATTEMPTS:
                    warnings.warn(f"FID statistics cache: {what} failed ({e}); going on without the object store",
                                  stacklevel=3)
                    return False
                time.sleep(self.BACKOFF_S * 2 ** attempt)
        return False

    def get(self, key: str, parts: dict[str, Any]) -> Stats | None:
        stats_path, feats_path = self.paths(key)
        if not (stats_path.is_file() and feats_path.is_file()) and self.store:
            from animegen.store.s3 import download_object

            def fetch(client) -> None:
                for path in (feats_path, stats_path):  # statistics last: they mark a complete entry
                    download_object(client, *self._remote(path), path, verify_metadata=True)

            try:
                if not self._retry(f"reading {self.store}", fetch):
                    return None
            except FileNotFoundError:
                return None
        if not (stats_path.is_file() and feats_path.is_file()):
            return None
        try:
            if Stats.load_meta(stats_path).get("key_parts") != parts:
                return None  # another entry under a colliding name: recompute
            stats = Stats.load(stats_path)
            stats.features = np.load(feats_path, allow_pickle=False)
        except (OSError, ValueError, KeyError):
            return None  # an unreadable entry is recomputed and overwritten
        return stats if stats.features.shape == (stats.n, len(stats.mu)) else None

    def put(self, key: str, parts: dict[str, Any], stats: Stats) -> None:
        stats_path, feats_path = self.paths(key)
        features = np.asarray(stats.features, dtype=np.float32)
        atomic_replace(feats_path, lambda f: np.save(f, features))
        stats.save(stats_path, {"key_parts": parts})  # written last: marks the entry complete
        if self.store:
            from animegen.store import sha256_file
            from animegen.store.s3 import upload_file

            def send(client) -> None:
                for path in (feats_path, stats_path):  # statistics last, as locally
                    upload_file(client, *self._remote(path), path, sha256=sha256_file(path))

            self._retry(f"uploading to {self.store}", send)


def dataset_stats(data: str | os.PathLike | ImageSet | FidImages, extractor: Extractor, max_images: int | None = None,
                  split: str | None = None, cache: bool | StatsCache = True, batch: int | None = None,
                  progress: bool = True) -> Stats:
    """Statistics (and float32 features) of a dataset's images under ``extractor``, cached.

    ``data``: a packed Dataset directory, an image folder, ``synthetic:...``, an ImageSet or a FidImages (see
    :func:`open_fid_images`). ``split`` picks the
    train/heldout side recorded in a packed Dataset's index.jsonl; ``max_images`` caps the count (a seeded random
    subset). ``cache``: True = local cache plus the object store when ANIMEGEN_STORE is set; False = none; or a
    StatsCache. The cache key: content hash, resolution, split, sample count, extractor id. ``progress``: a line
    (or bar) while features are computed, and a note when cached statistics are reused.
    """
    source = open_fid_images(data)
    idx, subset = _select(source, max_images, split)
    parts = {"version": CACHE_VERSION, "content": source.content, "resolution": int(source.images.shape[1]),
             "split": split, "count": len(idx), "subset": subset, "extractor_id": extractor.id}
    store = StatsCache.from_env() if cache is True else (cache or None)
    key = _cache_key(parts)
    if store is not None:
        hit = store.get(key, parts)
        if hit is not None:
            note(f"reusing cached statistics of {source.name} ({store.paths(key)[0]})", progress)
            return hit
    b = batch or extractor.batch_size
    whole = len(idx) == len(source.images)  # contiguous slices; else rows by index (a memmap reads only those)
    batches = (source.images[i:i + b] if whole else source.images[idx[i:i + b]] for i in range(0, len(idx), b))
    what = f"{source.name}" + (f" ({split} split)" if split else "") + \
        (f", {len(idx)} of {len(source.images)} images" if len(idx) < len(source.images) else "")
    features = extractor.features(batches, progress=what if progress else False, total=len(idx))
    stats = Stats.from_features(features, extractor.id)
    if store is not None:
        store.put(key, parts, stats)
    return stats


# ------------------------------------------------------------------------------------------------- generators

def generator_features(G: nn.Module, extractor: Extractor, n: int, truncation_psi: float = 1.0,
                       classes: np.ndarray | torch.Tensor | None = None, batch: int | None = None,
                       device: str | torch.device | None = None, seed: int = 0,
                       progress: bool | str = False) -> np.ndarray:
    """Features [n, 2048] (float64) of ``n`` samples of ``G``, streamed batch by batch into the extractor.

    No image is written: each batch goes from ``G`` (on ``device``, default G's own) to the extractor and is
    dropped. Latents come from a CPU generator seeded with ``seed`` and the synthesis noise from the seeded torch
    RNG, so a run is repeatable. Conditional G: each sample's condition row is drawn uniformly from ``classes``
    (a condition matrix [M, c_dim], e.g. ``ImageSet.conditions()`` so the class mix follows the data), or, when
    ``classes`` is None, a one-hot row of a uniformly drawn class. ``truncation_psi`` is passed to G.mapping.
    ``progress``: show it (:mod:`animegen.progress`), a string naming what is sampled.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    dev = torch.device(device) if device is not None else next(G.parameters()).device
    c_dim = int(getattr(G, "c_dim", 0))
    gen = torch.Generator().manual_seed(seed)
    rows: torch.Tensor | None = None
    if c_dim:
        rows = torch.eye(c_dim) if classes is None else torch.as_tensor(np.asarray(classes), dtype=torch.float32)
        if rows.ndim != 2 or rows.shape[1] != c_dim or len(rows) == 0:
            raise ValueError(f"classes must be a condition matrix [M, {c_dim}] for this conditional generator, "
                             f"got shape {list(rows.shape)}")
    elif classes is not None:
        raise ValueError("classes were given but the generator is unconditional")
    b = batch or extractor.batch_size
    ensure_recalibrated(G)  # BatchNorm samples with recalibrated statistics (a no-op after load_generator)
    was_training = G.training
    G.eval()
    out = []
    what = progress if isinstance(progress, str) else f"sampling and Inception features (ψ = {truncation_psi:g})"
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.inference_mode(), \
                Progress(what, n, "img", enabled=bool(progress)) as bar:
            torch.manual_seed(seed)
            for i in range(0, n, b):
                k = min(b, n - i)
                z = torch.randn(k, G.z_dim, generator=gen)
                c = None if rows is None else rows[torch.randint(len(rows), (k,), generator=gen)].to(dev)
                out.append(extractor(G(z.to(dev), c, truncation_psi=truncation_psi)))
                bar.update(k)
    finally:
        G.train(was_training)
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------- two data sets

def fid_between(a: str | os.PathLike | ImageSet, b: str | os.PathLike | ImageSet, extractor: Extractor,
                max_images: int | None = None, split: str | None = None, cache: bool | StatsCache = True,
                kid_subsets: int = 100, kid_subset_size: int = 1000, progress: bool = True) -> dict[str, Any]:
    """FID and KID between two datasets or image folders (cross-dataset), each side's statistics cached.

    Returns a JSON-ready dict: fid, kid, kid_std, n_a, n_b, content_a, content_b (each side's cache identity, see
    :func:`open_fid_images`), extractor (id).
    """
    src_a, src_b = open_fid_images(a), open_fid_images(b)
    sa = dataset_stats(src_a, extractor, max_images, split, cache, progress=progress)
    sb = dataset_stats(src_b, extractor, max_images, split, cache, progress=progress)
    kid_mean, kid_std = kid(sa.features, sb.features, kid_subsets, kid_subset_size)
    return {"fid": fid_from_stats(sa, sb), "kid": kid_mean, "kid_std": kid_std, "n_a": sa.n, "n_b": sb.n,
            "content_a": src_a.content, "content_b": src_b.content, "extractor": extractor.id}
