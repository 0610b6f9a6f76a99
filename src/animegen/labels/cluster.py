"""Embedding clustering: image embeddings, k-means for K = 3..9, silhouette scores, clusters as classes.

The conditional StyleGAN anime paper tried this before its tag-based classes: embed every face with a
ResNet, run k-means for several K, look at a grid of each cluster, and use the cluster ids as class labels.

Embedders (``ClusterConfig.embedder``):

- ``resnet50``: a torchvision ResNet50 body (the network without avgpool and fc), average-pooled to 2048
  features, with weights from ``weights`` (a path, https:// or s3:// URI, optional sha256). Either the
  Danbooru tagger's state dict (RF5/danbooru-pretrained layout, keys ``0.0.weight`` ... ``1.8.weight``; its
  body is used, fed as :mod:`animegen.labels.danbooru` feeds it) or a torchvision ``resnet50`` state dict
  (``conv1.weight`` ...; ``fc`` is ignored; ImageNet normalisation). No pretrained weights can be downloaded
  on the project's machines, so there is no default: give the file.
- ``colour``: the fallback when no ResNet weights are at hand: the penultimate features (avg ‖ max pooled
  body output) of a trained colour tagger (``tagger``: ``colour_tagger.pt`` or its directory). These
  features were trained to tell hair and eye colours apart, so the clusters follow colours.
- ``auto``: ``resnet50`` when ``weights`` is given, else ``colour`` when ``tagger`` is given.

Embeddings are L2-normalised and, when wider than ``pca`` dimensions, reduced with PCA before k-means
(scikit-learn, ``n_init`` restarts, seeded); the silhouette score of each K is computed on a seeded sample of
at most ``silhouette_sample`` images. The best K by silhouette is chosen unless ``k`` forces one.

``run_cluster(cfg, dataset, out_dir)`` writes, manifest.json last: ``clusters.json`` (per K: silhouette,
inertia, sizes; the chosen K and why), ``silhouette.png``, ``embeddings.npy`` (float32 [N, D], before PCA),
``grids/cluster_<j>.png`` (``grid_k`` random members of each cluster of the chosen K),
``grids/overview_k<K>.png`` (a row per cluster, for every K), and the Labelled Dataset layout with the
chosen K's clusters as classes "cluster 0", "cluster 1", ...: ``images.npy``, ``labels.npy``,
``classes.json``, ``index.jsonl`` (the dataset's rows with their cluster as ``label``), ``manifest.json``.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from animegen.config import Config, opt
from animegen.data.dataset import ImageSet, begin_packed, index_rows, open_dataset, read_packed, write_packed
from animegen.image_files import save_grid
from animegen.labels.colour import colour_features, load_colour_tagger
from animegen.labels.label import save_verification_grid
from animegen.utils import atomic_replace, atomic_write_bytes, resolve_device, write_json

EMBEDDERS = ("auto", "resnet50", "colour")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class ClusterConfig(Config):
    """Options of `animegen cluster` (round-trips through JSON)."""

    embedder: str = field(default="auto", metadata=opt(
        "what embeds the images: resnet50 (the weights given), colour (the colour tagger's features), auto "
        "(resnet50 when weights are given, else colour)", choices=EMBEDDERS))
    weights: str | None = field(default=None, metadata=opt(
        "resnet50 weights: a state dict path, https:// or s3:// URI (Danbooru tagger or torchvision)"))
    sha256: str | None = field(default=None, metadata=opt("expected sha256 of the weights file"))
    tagger: str | None = field(default=None, metadata=opt("colour embedder: colour_tagger.pt or its directory"))
    k_min: int = field(default=3, metadata=opt("smallest K tried"))
    k_max: int = field(default=9, metadata=opt("largest K tried"))
    k: int | None = field(default=None, metadata=opt(
        "use this K instead of the best silhouette (within k_min..k_max)"))
    pca: int | None = field(default=64, metadata=opt(
        "reduce wider embeddings to this many dimensions before k-means (none: off)", default_text="64"))
    n_init: int = field(default=4, metadata=opt("k-means restarts"))
    silhouette_sample: int = field(default=5000, metadata=opt(
        "images the silhouette score is computed on (a seeded sample)"))
    grid_k: int = field(default=16, metadata=opt("images per cluster grid"))
    input_size: int = field(default=224, metadata=opt("resnet50 input size (images are resized to it)"))
    batch: int = field(default=64, metadata=opt("embedding batch size"))
    seed: int = field(default=0, metadata=opt("seed of k-means and of the samples"))
    device: str = field(default="auto", metadata=opt("device", choices=("auto", "cpu", "cuda")))

    def validate(self) -> None:
        if not 2 <= self.k_min <= self.k_max:
            raise ValueError(f"cluster K range {self.k_min}..{self.k_max}: need 2 <= k_min <= k_max")
        if self.k is not None and not self.k_min <= self.k <= self.k_max:
            raise ValueError(f"cluster k={self.k} is outside k_min..k_max = {self.k_min}..{self.k_max}")


# ------------------------------------------------------------------------------------------------- embedders
def resnet50_embedder(weights: str, sha256: str | None = None, device: str | torch.device = "cpu",
                      input_size: int = 224) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """(ResNet50 body in eval mode, preprocess: uint8 NHWC -> normalised float NCHW) from a state dict URI.

    The Danbooru tagger's layout goes through :func:`animegen.labels.danbooru.load_tagger` (its body and its
    preprocessing); a torchvision ``resnet50`` state dict loads into ``torchvision.models.resnet50`` (fc
    ignored), normalised with the ImageNet statistics.
    """
    from torchvision.models import resnet50

    from animegen.data.sources import fetch_file
    from animegen.labels.danbooru import load_tagger

    dev = resolve_device(str(device))
    path = fetch_file(weights, sha256=sha256)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{weights}: not a state dict; save one with torch.save(model.state_dict(), path)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "1.8.weight" in state:  # the Danbooru tagger: Sequential(body, head)
        tagger = load_tagger(weights, sha256, dev, input_size)
        return tagger[0], tagger.preprocess
    net = resnet50(weights=None)
    body_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(body_state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{weights}: neither a Danbooru ResNet50 state dict (keys '0.0.weight' ... '1.8.weight') "
                         f"nor a torchvision resnet50 one (keys 'conv1.weight', 'layer1.0.conv1.weight', ...): "
                         f"missing {missing[:4]}, unexpected {unexpected[:4]}")
    body = nn.Sequential(*list(net.children())[:-2]).eval().to(dev)
    mean = torch.tensor(IMAGENET_MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=dev).view(1, 3, 1, 1)

    def preprocess(images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255)
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if x.shape[-1] != input_size:
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > input_size)
        return (x - mean) / std

    return body, preprocess


@torch.inference_mode()
def embed_resnet50(images: np.ndarray, body: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                   batch: int = 64) -> np.ndarray:
    """Average-pooled ResNet50 body features, float32 [N, 2048], for uint8 NHWC images (read batch by batch)."""
    dev = next(body.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = preprocess(torch.from_numpy(np.array(images[i:i + batch])).to(dev))
        out.append(body(x).mean((2, 3)).float().cpu())
    return torch.cat(out).numpy()


def embed(imageset: ImageSet, cfg: ClusterConfig) -> tuple[np.ndarray, dict]:
    """(embeddings float32 [N, D], a description of the embedder) as ``cfg`` asks."""
    kind = cfg.embedder
    if kind == "auto":
        kind = "resnet50" if cfg.weights else "colour" if cfg.tagger else ""
    if kind == "resnet50":
        if not cfg.weights:
            raise ValueError("embedder resnet50 needs weights: a state dict of the Danbooru ResNet50 tagger or of "
                             "torchvision's resnet50 (--weights PATH|https://|s3://); none can be downloaded here, "
                             "so without one use the colour tagger's features (--embedder colour --tagger DIR)")
        body, preprocess = resnet50_embedder(cfg.weights, cfg.sha256, cfg.device, cfg.input_size)
        return embed_resnet50(imageset.images, body, preprocess, cfg.batch), {
            "embedder": "resnet50", "weights": cfg.weights, "input_size": cfg.input_size, "features": "avgpool"}
    if kind == "colour":
        if not cfg.tagger:
            raise ValueError("embedder colour needs a trained colour tagger (--tagger DIR|colour_tagger.pt); "
                             "train one with `animegen tagger train`")
        model = load_colour_tagger(cfg.tagger, cfg.device)
        return colour_features(model, imageset.images, cfg.batch, cfg.device), {
            "embedder": "colour", "tagger": str(cfg.tagger), "features": "avg+max pooled body"}
    raise ValueError("no embedder: give ResNet50 weights (--weights, the Danbooru tagger's or torchvision's) or, "
                     "as the fallback, a trained colour tagger (--tagger)")


# --------------------------------------------------------------------------------------------------- k-means
def prepare_embeddings(emb: np.ndarray, pca: int | None, seed: int) -> np.ndarray:
    """L2-normalised rows, PCA-reduced to ``pca`` dimensions when wider (and when there are enough rows)."""
    x = emb.astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if pca and x.shape[1] > pca and len(x) > pca:
        from sklearn.decomposition import PCA

        x = PCA(n_components=pca, random_state=seed).fit_transform(x)
    return x


def kmeans_sweep(x: np.ndarray, ks: range, seed: int = 0, n_init: int = 4,
                 silhouette_sample: int = 5000) -> list[dict]:
    """k-means for each K in ``ks``: [{k, silhouette, inertia, sizes, labels (int64 [N])}]."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    if len(x) <= max(ks):
        raise ValueError(f"{len(x)} images cannot form up to {max(ks)} clusters; lower k_max or use more images")
    sample = min(len(x), silhouette_sample)
    results = []
    for k in ks:
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(x)
        labels = km.labels_.astype(np.int64)
        score = silhouette_score(x, labels, sample_size=sample, random_state=seed) if len(set(labels)) > 1 else -1.0
        results.append({"k": k, "silhouette": float(score), "inertia": float(km.inertia_),
                        "sizes": np.bincount(labels, minlength=k).tolist(), "labels": labels})
    return results


def _plot_silhouette(sweep: list[dict], chosen: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks = [r["k"] for r in sweep]
    ax.plot(ks, [r["silhouette"] for r in sweep], "o-")
    ax.axvline(chosen, color="tab:red", ls="--", lw=1, label=f"chosen K = {chosen}")
    ax.set_xlabel("K (clusters)")
    ax.set_ylabel("silhouette score")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------------- stage
def run_cluster(cfg: ClusterConfig, dataset: str, out_dir: str | Path) -> dict:
    """Cluster ``dataset`` (any open_dataset URI) and write the outputs listed in the module docstring.

    Returns the content of clusters.json.
    """
    cfg.validate()
    out = Path(out_dir)
    src = Path(dataset.removeprefix("file://"))
    if src.is_dir() and src.resolve() == out.resolve():
        raise ValueError(f"out_dir {out} is the input dataset; write the clustered dataset to another directory")
    begin_packed(out)  # incomplete until write_packed writes its manifest
    imageset = open_dataset(dataset)
    parent_hash = read_packed(src).manifest.get("content_hash") if (src / "images.npy").is_file() else None
    emb, embedder = embed(imageset, cfg)
    atomic_replace(out / "embeddings.npy", lambda f: np.save(f, emb.astype(np.float32)))

    x = prepare_embeddings(emb, cfg.pca, cfg.seed)
    sweep = kmeans_sweep(x, range(cfg.k_min, cfg.k_max + 1), cfg.seed, cfg.n_init, cfg.silhouette_sample)
    best = max(sweep, key=lambda r: r["silhouette"])
    chosen = next(r for r in sweep if r["k"] == cfg.k) if cfg.k is not None else best
    labels = chosen["labels"]
    names = [f"cluster {j}" for j in range(chosen["k"])]

    summary = {
        "dataset": dataset,
        "count": len(imageset),
        **embedder,
        "embedding_dim": int(emb.shape[1]),
        "kmeans_dim": int(x.shape[1]),
        "per_k": {str(r["k"]): {"silhouette": r["silhouette"], "inertia": r["inertia"], "sizes": r["sizes"]}
                  for r in sweep},
        "best_k_by_silhouette": best["k"],
        "chosen_k": chosen["k"],
        "chosen_by": "silhouette" if cfg.k is None else "config k",
        "config": cfg.to_dict(),
    }
    rng = np.random.default_rng(cfg.seed)
    for j in range(chosen["k"]):
        members = np.flatnonzero(labels == j)
        pick = np.sort(rng.choice(members, size=min(cfg.grid_k, len(members)), replace=False))
        save_grid(np.asarray(imageset.images[pick]), out / "grids" / f"cluster_{j}.png",
                  ncol=min(8, len(pick)))
    for r in sweep:
        save_verification_grid(imageset.images, r["labels"], [f"cluster {j}" for j in range(r["k"])],
                               out / "grids" / f"overview_k{r['k']}.png", k=8, seed=cfg.seed)
    _plot_silhouette(sweep, chosen["k"], out / "silhouette.png")
    write_json(out / "clusters.json", summary)

    rows = index_rows(imageset) or [{"id": i} for i in range(len(imageset))]
    meta = [{k: v for k, v in r.items() if k not in ("label", "labels")} for r in rows]
    labelled = ImageSet(np.asarray(imageset.images), labels, names, imageset.source, meta)
    write_packed(labelled, out, manifest_extra={
        "stage": "cluster", "parent": {"source": dataset, "content_hash": parent_hash},
        "cluster": {"chosen_k": chosen["k"], "silhouette": chosen["silhouette"], "embedder": embedder["embedder"]},
        "cluster_config": cfg.to_dict(),
    })
    return summary
