"""Write images.npy incrementally, a bounded window of it mapped at a time.

``PackWriter`` creates ``images.npy.tmp`` as an .npy memmap sized for ``capacity`` images (a sparse file),
writes appended images through a moving memory-mapped window, and on ``close(count)`` rewrites the .npy
header for the final count (same header length, so the data never moves), truncates the file and renames
it to ``images.npy``. The index and the manifest are then written by ``dataset.finish_packed`` (manifest
last), so the result opens with ``open_dataset(dir)``.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np

IMAGES = "images.npy"
DEFAULT_WINDOW_BYTES = 64 << 20
_HEADER_IO = {
    (1, 0): (np.lib.format.read_array_header_1_0, np.lib.format.write_array_header_1_0),
    (2, 0): (np.lib.format.read_array_header_2_0, np.lib.format.write_array_header_2_0),
}


class PackWriter:
    """Append uint8 HxWxC images to ``out_dir/images.npy`` without holding them all in memory."""

    def __init__(self, out_dir: str | os.PathLike, capacity: int, resolution: int, channels: int,
                 window_bytes: int = DEFAULT_WINDOW_BYTES):
        if capacity < 0 or resolution < 1 or channels not in (1, 3):
            raise ValueError(f"bad pack shape: capacity={capacity}, resolution={resolution}, channels={channels}")
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.path, self.tmp = self.out / IMAGES, self.out / (IMAGES + ".tmp")
        self.capacity, self.shape = capacity, (resolution, resolution, channels)
        self.item_bytes = resolution * resolution * channels
        self.window_images = max(1, window_bytes // self.item_bytes)
        mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.uint8, shape=(capacity, *self.shape))
        self.data_offset = int(mm.offset)
        del mm
        self.count = 0
        self._window: np.memmap | None = None
        self._window_start = 0

    def append(self, image: np.ndarray) -> int:
        """Write one image; return its index."""
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"expected uint8 {self.shape}, got {image.dtype} {image.shape}")
        if self.count >= self.capacity:
            raise ValueError(f"PackWriter is full (capacity {self.capacity})")
        i = self.count
        if self._window is None or i >= self._window_start + len(self._window):
            self._map_window(i)
        self._window[i - self._window_start] = image
        self.count += 1
        return i

    def _map_window(self, start: int) -> None:
        self._flush_window()
        n = min(self.window_images, self.capacity - start)
        self._window = np.memmap(self.tmp, dtype=np.uint8, mode="r+", shape=(n, *self.shape),
                                 offset=self.data_offset + start * self.item_bytes)
        self._window_start = start

    def _flush_window(self) -> None:
        if self._window is not None:
            self._window.flush()
            self._window = None  # unmapped once the last reference goes

    def read(self, i: int) -> np.ndarray:
        """A copy of image ``i`` (already appended)."""
        if not 0 <= i < self.count:
            raise IndexError(i)
        self._flush_window()
        with open(self.tmp, "rb") as f:
            f.seek(self.data_offset + i * self.item_bytes)
            return np.frombuffer(f.read(self.item_bytes), np.uint8).reshape(self.shape)

    def close(self, count: int | None = None) -> Path:
        """Fix the header to ``count`` images (default: all appended), truncate, rename to images.npy."""
        count = self.count if count is None else count
        if not 0 <= count <= self.count:
            raise ValueError(f"count {count} not in 0..{self.count} (images appended)")
        self._flush_window()
        set_npy_count(self.tmp, count)
        with open(self.tmp, "r+b") as f:
            f.truncate(self.data_offset + count * self.item_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the partial file."""
        self._window = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.abort()


def set_npy_count(path: str | os.PathLike, count: int) -> None:
    """Rewrite an .npy file's header so its first axis is ``count``, keeping the header's exact length.

    NumPy pads headers so the first axis can grow in place; the new header is NumPy's own for the new shape
    (byte-identical to what ``np.save`` writes) when it has that length, else the same dict padded by hand.
    """
    with open(path, "r+b") as f:
        version = np.lib.format.read_magic(f)
        if version not in _HEADER_IO:
            raise ValueError(f"{path}: .npy format version {version} is not supported here (1.0 and 2.0 are)")
        read_header, write_header = _HEADER_IO[version]
        shape, fortran, dtype = read_header(f)
        data_offset = f.tell()
        new = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran,
               "shape": (count, *shape[1:])}
        buf = io.BytesIO()
        write_header(buf, new)
        header = buf.getvalue()
        if len(header) != data_offset:
            prefix = np.lib.format.magic(*version)
            size_fmt = "<H" if version == (1, 0) else "<I"
            head_len = data_offset - len(prefix) - struct.calcsize(size_fmt)
            text = repr(new).encode("latin1")
            if len(text) + 1 > head_len:
                raise ValueError(f"{path}: new header does not fit the old one ({len(text) + 1} > {head_len})")
            header = prefix + struct.pack(size_fmt, head_len) + text.ljust(head_len - 1) + b"\n"
        f.seek(0)
        f.write(header)
