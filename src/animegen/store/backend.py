"""The storage backend under :mod:`animegen.store.artifacts`: one location, an S3 prefix or a local folder, with
the same operations on both (put, get with size and sha256 checks, stat, list, delete). S3 requests go through
:func:`animegen.store.retry.retrying`; a local copy goes through the store's one streamed atomic writer."""
from __future__ import annotations

import contextlib
import mimetypes
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from animegen.store import CHUNK, ChecksumError, SizeLimitError, write_stream
from animegen.store.retry import RetryPolicy, retrying
from animegen.store.uris import UriLike, as_s3, clean_key, is_s3, local_path
from animegen.utils import atomic_write_bytes


def content_type(name: str) -> str:
    """The Content-Type an upload of file ``name`` gets."""
    if name.endswith((".json", ".jsonl")):
        return "application/json"
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


class Store:
    """One location: an S3 prefix (bucket + key) or a local folder/file. ``rel`` "" is the location itself."""

    def __init__(self, uri: UriLike):
        self.uri = str(uri)
        self.s3 = is_s3(uri)
        if self.s3:
            from animegen.store.s3 import parse_s3_uri, s3_client

            self.bucket, key = parse_s3_uri(as_s3(self.uri))
            self.key = clean_key(key, self.uri)
            self.client = s3_client()
            self.uri = f"s3://{self.bucket}/{self.key}"
        else:
            self.path = local_path(uri)

    # names
    def _key(self, rel: str) -> str:
        return "/".join(p for p in (self.key, rel) if p)

    def _path(self, rel: str) -> Path:
        return self.path / rel if rel else self.path

    def name(self, rel: str = "") -> str:
        if self.s3:
            return f"s3://{self.bucket}/{self._key(rel)}"
        return str(self._path(rel))

    @contextlib.contextmanager
    def _bucket_hint(self) -> Iterator[None]:
        """An upload's NoSuchBucket becomes a message that says to create the bucket."""
        try:
            yield
        except FileNotFoundError as e:
            if "NoSuchBucket" not in str(e):
                raise
            from animegen.store.s3 import endpoint_of

            raise FileNotFoundError(
                f"s3://{self.bucket}/: no such bucket at {endpoint_of(self.client)}; create it first "
                f"(e.g. `mc mb ALIAS/{self.bucket}` or `weed shell` s3.bucket.create -name {self.bucket})") from None

    # operations (S3 requests are retried through retrying())
    def put_file(self, rel: str, src: Path, sha256: str, policy: RetryPolicy | None) -> None:
        if self.s3:
            from animegen.store.s3 import upload_file

            with self._bucket_hint():
                retrying(lambda: upload_file(self.client, self.bucket, self._key(rel), src, sha256=sha256,
                                             content_type=content_type(src.name)),
                         f"uploading {self.name(rel)}", policy)
            return
        dest = self._path(rel)
        try:
            with open(src, "rb") as f:
                write_stream(dest, iter(lambda: f.read(CHUNK), b""), sha256=sha256, label=str(src))
        except ChecksumError:
            raise RuntimeError(f"{src} changed while it was being copied to {dest}; nothing was written there: "
                               "copy it again once it is no longer written to") from None

    def put_bytes(self, rel: str, data: bytes, policy: RetryPolicy | None, content_type: str) -> None:
        if self.s3:
            import hashlib

            from animegen.store.s3 import upload_bytes

            digest = hashlib.sha256(data).hexdigest()
            with self._bucket_hint():
                retrying(lambda: upload_bytes(self.client, self.bucket, self._key(rel), data, sha256=digest,
                                              content_type=content_type),
                         f"uploading {self.name(rel)}", policy)
            return
        atomic_write_bytes(self._path(rel), data)

    def get_file(self, rel: str, dest: Path, sha256: str | None, size: int | None,
                 policy: RetryPolicy | None) -> tuple[str, int]:
        try:
            got = self._get_file(rel, dest, sha256, size, policy)
        except SizeLimitError:
            raise ChecksumError(f"size mismatch for {self.name(rel)}: larger than the {size} bytes expected; "
                                "the download was deleted") from None
        if size is not None and got[1] != size:
            Path(dest).unlink(missing_ok=True)
            raise ChecksumError(f"size mismatch for {self.name(rel)}: expected {size} bytes, got {got[1]}; "
                                "the download was deleted")
        return got

    def _get_file(self, rel: str, dest: Path, sha256: str | None, size: int | None,
                  policy: RetryPolicy | None) -> tuple[str, int]:
        if self.s3:
            from animegen.store.s3 import download_object

            got = retrying(lambda: download_object(self.client, self.bucket, self._key(rel), dest, sha256=sha256,
                                                   max_bytes=size, verify_metadata=True),
                           f"downloading {self.name(rel)}", policy)
        else:
            src = self._path(rel)
            if not src.is_file():
                raise FileNotFoundError(f"{src}: no such file")
            with open(src, "rb") as f:
                got = write_stream(dest, iter(lambda: f.read(CHUNK), b""), sha256=sha256, max_bytes=size,
                                   label=str(src))
        return got

    def get_bytes(self, rel: str, max_bytes: int, policy: RetryPolicy | None) -> bytes:
        if not self.s3:
            p = self._path(rel)
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such file")
            if p.stat().st_size > max_bytes:
                raise ValueError(f"{p} is larger than {max_bytes} bytes; not read")
            return p.read_bytes()
        from animegen.store.s3 import download_object

        with tempfile.TemporaryDirectory(prefix="animegen-store-") as tmp:
            dest = Path(tmp) / "object"
            retrying(lambda: download_object(self.client, self.bucket, self._key(rel), dest, max_bytes=max_bytes,
                                             verify_metadata=True, fsync=False),
                     f"downloading {self.name(rel)}", policy)
            return dest.read_bytes()

    def stat(self, rel: str, policy: RetryPolicy | None) -> tuple[int, str | None] | None:
        """(size, sha256 or None) of one file/object, or None when absent."""
        if self.s3:
            from animegen.store.s3 import stat_object

            obj = retrying(lambda: stat_object(self.client, self.bucket, self._key(rel)),
                           f"reading {self.name(rel)}", policy)
            return None if obj is None else (obj.size, obj.sha256)
        p = self._path(rel)
        return (p.stat().st_size, None) if p.is_file() else None

    def listing(self, policy: RetryPolicy | None) -> dict[str, int]:
        """Every file under the location as a folder: {relative posix path: size}."""
        if self.s3:
            from animegen.store.s3 import list_prefix

            prefix = f"{self.key}/" if self.key else ""
            try:
                objects = retrying(lambda: list_prefix(self.client, self.bucket, prefix),
                                   f"listing {self.name()}", policy)
            except FileNotFoundError:
                return {}
            return {o.key[len(prefix):]: o.size for o in objects}
        return {rel: p.stat().st_size for rel, p in walk(self.path)} if self.path.is_dir() else {}

    def delete(self, rel: str, policy: RetryPolicy | None) -> None:
        if self.s3:
            from animegen.store.s3 import remove_object

            try:
                retrying(lambda: remove_object(self.client, self.bucket, self._key(rel)),
                         f"deleting {self.name(rel)}", policy)
            except FileNotFoundError:  # no bucket: nothing to delete
                pass
            return
        self._path(rel).unlink(missing_ok=True)


def is_temp(name: str) -> bool:
    """Temporary files of this package's atomic writers (``.NAME.XXXX.tmp`` / ``.part``)."""
    return name.startswith(".") and name.endswith((".tmp", ".part"))


def walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative posix path, path) of every regular file under ``root`` (symlinked files followed, symlinked
    folders not), sorted; temporary files of atomic writers are left out."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in files:
            p = Path(folder) / name
            if not is_temp(name) and p.is_file():
                found.append((p.relative_to(root).as_posix(), p))
    return iter(sorted(found))
