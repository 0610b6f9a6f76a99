"""Training images that do not fit on the device: streamed from the packed set's memory-mapped ``images.npy``.

Training holds its set on the device as uint8 when it fits ``data_memory_fraction`` of the device's memory (CUDA:
the GPU's total memory; CPU: the memory available now), and streams it otherwise (``data_placement``: auto,
device, stream). A streamed batch is the same rows as the device-resident one: the sampler draws the same indices
(each rank of a data-parallel run reads only its own share of them), the rows are gathered from the memory map in
file order into a pinned host buffer and copied to the device, so losses and weights are those of the in-memory
path bit for bit, and resume stays exact. The batch of the next step is known one step ahead
(``BatchSampler.peek``): a background thread gathers it while the current step runs, and on CUDA its copy to the
GPU is issued on a side stream that the training stream waits for only when it uses the batch.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

PLACEMENTS = ("auto", "device", "stream")


def device_memory_bytes(device: torch.device) -> int:
    """What the set competes for: the GPU's total memory, or the host memory available now (MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def should_stream(nbytes: int, device: torch.device, placement: str, fraction: float) -> bool:
    """Stream when told to, or (auto) when the set is larger than ``fraction`` of the device's memory."""
    if placement not in PLACEMENTS:
        raise ValueError(f"data_placement {placement!r}: one of {', '.join(PLACEMENTS)}")
    if placement != "auto":
        return placement == "stream"
    return nbytes > fraction * device_memory_bytes(device)


class StreamedImages:
    """uint8 images [N, H, W, C] on the host (a read-only memory map, or an array) served as device batches
    [B, C, H, W]: ``images[idx]`` (a CPU index tensor) or ``images[a:b]``, like the device-resident tensor."""

    def __init__(self, arr: np.ndarray, device: torch.device, channels_last: bool):
        self.arr, self.device, self.channels_last = arr, device, channels_last
        n, h, w, c = arr.shape
        self.shape = torch.Size((n, c, h, w))
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="animegen-stream")
        self._pending: tuple[torch.Tensor, Future] | None = None
        self._lock = threading.Lock()
        self._side = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.hits = self.misses = 0  # batches served from a prefetch / gathered on demand

    def __len__(self) -> int:
        return self.shape[0]

    def _gather(self, idx: np.ndarray) -> torch.Tensor:
        """Rows ``idx`` read in file order (one pass over the map), put back in ``idx``'s order, on the device."""
        order = np.argsort(idx, kind="stable")
        rows = np.empty((len(idx), *self.arr.shape[1:]), dtype=np.uint8)
        rows[order] = self.arr[idx[order]]
        host = torch.from_numpy(rows).permute(0, 3, 1, 2)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.device.type != "cuda":
            return host.contiguous(memory_format=fmt)
        host = host.contiguous(memory_format=fmt).pin_memory()
        with torch.cuda.stream(self._side):
            out = host.to(self.device, non_blocking=True)
        out.ready = torch.cuda.Event()  # the copy's completion, waited on by the stream that uses it
        out.ready.record(self._side)
        return out

    def prefetch(self, idx: torch.Tensor) -> None:
        """Start gathering the batch ``idx`` (the next step's) in the background."""
        with self._lock:
            self._pending = (idx.clone(), self._pool.submit(self._gather, idx.numpy()))

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, slice):
            return self._ready(self._gather(np.arange(len(self))[idx]))
        idx = torch.as_tensor(idx).cpu()
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None and torch.equal(pending[0], idx):
            self.hits += 1
            return self._ready(pending[1].result())
        self.misses += 1
        return self._ready(self._gather(idx.numpy()))

    def _ready(self, out: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).wait_event(out.ready)
            out.record_stream(torch.cuda.current_stream(self.device))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=True)
