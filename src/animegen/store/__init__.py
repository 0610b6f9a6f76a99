"""Where artifacts and source data live: local paths, and ``s3://`` through the minio SDK (``store.s3``).

This module holds the one streamed, atomic file writer that every download goes through. The others:
``uris`` (what a location is: local path, file://, s3:// / minio://), ``retry`` (backoff of S3 requests),
``backend`` (one location, local or S3, with the same operations), ``artifacts`` (the API: single files and
multi-file artifacts with their ``_manifest.json`` protocol; it re-exports RetryPolicy, retrying, join and is_s3),
``registry`` (the run registry) and ``s3`` (the minio SDK adapter).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from animegen.utils import sha256_file  # noqa: F401  (re-exported: the store's callers hash with it)

CHUNK = 1 << 20  # bytes per read/write while streaming


class ChecksumError(ValueError):
    """A download's content does not have the sha256 it was declared with."""


class SizeLimitError(ValueError):
    """A download is larger than the limit it was given."""


def write_stream(
    dest: str | os.PathLike,
    chunks: Iterable[bytes],
    *,
    sha256: str | None = None,
    max_bytes: int | None = None,
    label: str = "",
    fsync: bool = True,
) -> tuple[str, int]:
    """Stream ``chunks`` into ``dest`` through a temporary file in the same folder, then rename.

    Returns ``(sha256 hex, size)``. The whole content is never held in memory. When ``sha256`` is
    given and differs, or more than ``max_bytes`` arrive, the temporary file is deleted and
    ``dest`` is left as it was. ``label`` names the source in error messages.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    what = label or str(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:64]}.", suffix=".part", dir=dest.parent)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise SizeLimitError(f"{what} is larger than the limit of {max_bytes} bytes; stopped reading")
                digest.update(chunk)
                f.write(chunk)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise ChecksumError(
                f"sha256 mismatch for {what}: expected {sha256.lower()}, got {actual} ({size} bytes); "
                "the download was deleted; check the URI or the expected hash"
            )
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return actual, size


