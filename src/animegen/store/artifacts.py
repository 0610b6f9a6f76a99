"""One API for artifacts on local paths and in the object store (``s3://bucket/prefix``).

A **URI** is a local path (``str`` or ``PathLike``; ``file:///abs/path`` too) or ``s3://bucket/key`` (``minio://``, as
KFP names artifacts in its store, is read as ``s3://``; other schemes are refused). S3 endpoint,
region and keys come from the environment only (:mod:`animegen.store.s3`); no function here takes or prints a key.

Single files (``put_file``/``get_file``, ``write_json``/``read_json``) are written atomically: an S3 PUT becomes
visible only when complete, a local file is written to a temporary name and renamed. Uploads store the content's
sha256 in the object's metadata and downloads verify it.

A **multi-file artifact** is a folder (local) or a prefix (S3) that holds its files plus ``_manifest.json``::

    {"format": "animegen-artifact/1", "created": "...Z", "animegen_version": "...",
     "count": 3, "total_bytes": 123, "files": [{"path": "a/b.png", "size": 61, "sha256": "..."}, ...]}

:func:`put_dir` writes every file first and ``_manifest.json`` last (after removing a previous manifest), so an
artifact whose upload was interrupted has no manifest. :func:`get_dir`, :func:`get_member`,
:func:`read_member_json` and :func:`read_manifest` refuse such a folder with :class:`IncompleteArtifactError`, and
verify the size and sha256 of every file they fetch (:class:`~animegen.store.ChecksumError` on a mismatch). A
local copy made by :func:`get_dir` is itself a complete artifact (its ``_manifest.json`` is written last too).

Retries: every S3 request that fails because the endpoint cannot be reached or answers 5xx
(:class:`~animegen.store.s3.S3UnavailableError`) is retried with exponential backoff and jitter, bounded by a
:class:`RetryPolicy` (attempts per request and seconds per request; defaults from ``ANIMEGEN_STORE_RETRIES`` and
``ANIMEGEN_STORE_RETRY_MAX_S``). Refused credentials (:class:`~animegen.store.s3.S3AccessError`), missing buckets
and checksum mismatches are never retried. A failed :func:`put_dir` can simply be run again: files already
uploaded with the same size and sha256 are skipped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from animegen.store import sha256_file
from animegen.store.backend import Store, walk
from animegen.store.retry import RetryPolicy, retrying  # noqa: F401  (re-exported: part of this module's API)
from animegen.store.uris import UriLike, as_s3, clean_key, is_s3, join, local_path  # noqa: F401  (is_s3, join: API)
from animegen.utils import atomic_write_bytes

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
MANIFEST_FORMAT = "animegen-artifact/1"
MAX_JSON_BYTES = 64 << 20  # read_json / manifests: refuse anything larger (a JSON document, not a data file)


class IncompleteArtifactError(FileNotFoundError):
    """A folder/prefix holds files but no ``_manifest.json``: its upload never finished (or it is no artifact)."""


class ManifestError(ValueError):
    """A ``_manifest.json`` that cannot be trusted: not JSON, wrong format, or a path outside the artifact."""


def _safe_rel(rel: str, where: str) -> str:
    """A relative path inside an artifact: posix, no '..', not absolute, not empty."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or "\\" in rel or any(s in ("", ".", "..") for s in rel.split("/")) or \
            (len(rel) > 1 and rel[1] == ":"):
        raise ManifestError(f"{where}: unsafe path {rel!r} in the manifest (must be relative, inside the artifact)")
    return rel


# ----------------------------------------------------------------------------------------------- single files
def put_file(local: UriLike, uri: UriLike, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
    """Copy one local file to ``uri`` (atomically); returns ``{"uri", "size", "sha256"}``."""
    src = Path(local)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file to upload")
    sha, size = sha256_file(src), src.stat().st_size
    store = Store(uri)
    store.put_file("", src, sha, retry)
    return {"uri": store.name(), "size": size, "sha256": sha}


def get_file(uri: UriLike, local: UriLike, *, sha256: str | None = None, retry: RetryPolicy | None = None) -> Path:
    """Copy the file at ``uri`` to ``local`` (temp file + rename), verifying ``sha256`` if given, else the sha256
    stored with the object at upload. A folder/prefix is refused: use :func:`get_dir`."""
    store = Store(uri)
    if not store.s3 and store.path.is_dir():
        raise IsADirectoryError(f"{uri} is a folder; use get_dir() for a multi-file artifact")
    try:
        store.get_file("", Path(local), sha256, None, retry)
    except FileNotFoundError:
        if store.s3 and store.listing(retry):
            raise IsADirectoryError(f"{uri} is a prefix, not an object; use get_dir() for a multi-file "
                                    "artifact") from None
        raise FileNotFoundError(f"{uri}: no such file or object") from None
    return Path(local)


def write_json(uri: UriLike, obj: Any, *, retry: RetryPolicy | None = None) -> str:
    """Write ``obj`` as indented JSON to ``uri`` (atomically); returns the URI written."""
    data = (json.dumps(obj, indent=2, default=_json_default) + "\n").encode()
    store = Store(uri)
    store.put_bytes("", data, retry, "application/json")
    return store.name()


def read_json(uri: UriLike, *, max_bytes: int = MAX_JSON_BYTES, retry: RetryPolicy | None = None) -> Any:
    """The JSON document at ``uri`` (a single file/object; its stored sha256 is verified)."""
    store = Store(uri)
    try:
        data = store.get_bytes("", max_bytes, retry)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file or object") from None
    try:
        return json.loads(data)
    except ValueError as e:
        raise ValueError(f"{uri} is not valid JSON: {e}") from None


def exists(uri: UriLike, *, retry: RetryPolicy | None = None) -> bool:
    """True when ``uri`` is a file/object, or a **complete** multi-file artifact (it has ``_manifest.json``).

    An interrupted upload (files, no manifest) is False. Refused credentials raise, never read as False."""
    store = Store(uri)
    if not store.s3:
        return store.path.is_file() or (store.path / MANIFEST).is_file()
    if store.key and store.stat("", retry) is not None:
        return True
    return store.stat(MANIFEST, retry) is not None


def list_uris(prefix_uri: UriLike, *, retry: RetryPolicy | None = None) -> list[str]:
    """The URI of every file under the folder/prefix ``prefix_uri`` (recursively, sorted; ``_manifest.json``
    files included). A raw listing: it says nothing about completeness (see :func:`exists`)."""
    store = Store(prefix_uri)
    return [store.name(rel) for rel in sorted(store.listing(retry))]


# --------------------------------------------------------------------------------------- multi-file artifacts
@dataclass
class PutDirResult:
    """What :func:`put_dir` did: the artifact's URI, its manifest, and which files went up or were already there."""

    uri: str
    manifest: dict[str, Any]
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def build_manifest(local_dir: UriLike) -> dict[str, Any]:
    """The manifest of a local folder (sizes and sha256 of every file but ``_manifest.json``)."""
    from animegen import __version__

    root = Path(local_dir)
    files = [{"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)}
             for rel, p in walk(root) if rel != MANIFEST]
    return {"format": MANIFEST_FORMAT, "created": _now(), "animegen_version": __version__, "count": len(files),
            "total_bytes": sum(f["size"] for f in files), "files": files}


def put_dir(
    local_dir: UriLike,
    uri: UriLike,
    *,
    retry: RetryPolicy | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> PutDirResult:
    """Upload every file of ``local_dir`` under ``uri``, then write ``uri/_manifest.json`` last.

    Order: a previous manifest at ``uri`` is deleted first (readers then see an incomplete artifact, never a mix of
    old and new files); each file is uploaded (skipped when an identical one, same size and sha256, is already
    there: a rerun after a failure resumes); files that only the previous manifest listed are deleted; the new
    manifest goes up. A local ``_manifest.json`` in ``local_dir`` is ignored and rebuilt. A file that changes
    while the folder is uploaded stops the upload (RuntimeError) before the manifest is written. ``progress(path, done,
    total)`` is called after each file is in place. Local destinations get the same steps (atomic renames)."""
    root = Path(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder (use put_file for a single file)")
    store = Store(uri)
    if not store.s3:
        dest = store.path.resolve()
        if dest == root.resolve():  # sealing a folder in place: only the manifest is (re)written
            manifest = build_manifest(root)
            store.put_bytes(MANIFEST, _manifest_bytes(manifest), retry, "application/json")
            return PutDirResult(store.name(), manifest, skipped=[f["path"] for f in manifest["files"]])
        if root.resolve() in dest.parents:
            raise ValueError(f"cannot upload {root} into its own subfolder {dest}")
    elif not store.key:
        raise ValueError(f"{uri}: give a prefix inside the bucket (s3://bucket/some/prefix), not the bucket root")

    stamps = {rel: _stamp(p) for rel, p in walk(root)}  # taken before hashing: a later change is caught below
    manifest = build_manifest(root)
    previous = _previous_files(store, retry)
    store.delete(MANIFEST, retry)
    existing = store.listing(retry)
    result = PutDirResult(store.name(), manifest)
    total = len(manifest["files"])
    for i, entry in enumerate(manifest["files"], 1):
        rel = entry["path"]
        if existing.get(rel) == entry["size"] and _same_content(store, rel, entry, retry):
            result.skipped.append(rel)
        else:
            store.put_file(rel, root / rel, entry["sha256"], retry)
            result.uploaded.append(rel)
        if _stamp(root / rel) != stamps.get(rel):
            raise RuntimeError(f"{root / rel} changed while {root} was being uploaded; {result.uri} was left "
                               "incomplete (no manifest): upload it again once the folder is no longer written to")
        if progress is not None:
            progress(rel, i, total)
    for rel in sorted(previous - {f["path"] for f in manifest["files"]}):
        store.delete(rel, retry)
    store.put_bytes(MANIFEST, _manifest_bytes(manifest), retry, "application/json")
    log.info("put %s: %d files uploaded, %d already there, %d bytes", result.uri, len(result.uploaded),
             len(result.skipped), manifest["total_bytes"])
    return result


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _previous_files(store: Store, retry: RetryPolicy | None) -> set[str]:
    """Paths the artifact's current manifest lists (empty when there is none or it is unreadable)."""
    try:
        return {f["path"] for f in _load_manifest(store, retry)["files"]}
    except (FileNotFoundError, ManifestError):
        return set()


def _same_content(store: Store, rel: str, entry: dict[str, Any], retry: RetryPolicy | None) -> bool:
    if not store.s3:
        return sha256_file(store._path(rel)) == entry["sha256"]
    st = store.stat(rel, retry)
    return st is not None and st[1] == entry["sha256"]


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2) + "\n").encode()


def _load_manifest(store: Store, retry: RetryPolicy | None) -> dict[str, Any]:
    where = store.name()
    try:
        data = store.get_bytes(MANIFEST, MAX_JSON_BYTES, retry)
    except FileNotFoundError:
        present = len(store.listing(retry))
        if present:
            raise IncompleteArtifactError(
                f"incomplete artifact: no {MANIFEST} at {where} (an interrupted upload?); {present} file"
                f"{'s' * (present != 1)} there but the manifest, written last, is missing: run the upload again"
            ) from None
        raise FileNotFoundError(f"no artifact at {where}: nothing is stored there") from None
    try:
        manifest = json.loads(data)
    except ValueError as e:
        raise ManifestError(f"{store.name(MANIFEST)} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or \
            not isinstance(manifest.get("files"), list):
        raise ManifestError(f"{store.name(MANIFEST)} is not an artifact manifest (format {MANIFEST_FORMAT})")
    seen = set()
    for f in manifest["files"]:
        if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not isinstance(f.get("size"), int) \
                or not isinstance(f.get("sha256"), str):
            raise ManifestError(f"{store.name(MANIFEST)}: malformed file entry {f!r}")
        _safe_rel(f["path"], store.name(MANIFEST))
        if f["path"] == MANIFEST or f["path"] in seen:
            raise ManifestError(f"{store.name(MANIFEST)}: duplicate or reserved path {f['path']!r}")
        seen.add(f["path"])
    return manifest


def read_manifest(uri: UriLike, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
    """The manifest of the artifact at ``uri``; :class:`IncompleteArtifactError` when it has none."""
    return _load_manifest(Store(uri), retry)


def is_complete(uri: UriLike, *, retry: RetryPolicy | None = None) -> bool:
    """True when ``uri`` holds a readable ``_manifest.json``."""
    try:
        read_manifest(uri, retry=retry)
    except (FileNotFoundError, ManifestError):
        return False
    return True


def get_dir(uri: UriLike, local_dir: UriLike, *, only: list[str] | None = None,
            retry: RetryPolicy | None = None) -> Path:
    """Download the complete artifact at ``uri`` into ``local_dir``, verifying every file's size and sha256.

    Refuses an artifact without ``_manifest.json`` (:class:`IncompleteArtifactError`). A new or empty
    ``local_dir`` is filled in a temporary sibling folder and renamed into place; an existing non-empty one (an older
    copy) has its ``_manifest.json`` and the files only that manifest listed removed first, the files overwritten,
    and the manifest written last. ``only`` restricts the
    download to those paths (no manifest is written locally then). Returns ``local_dir``."""
    store = Store(uri)
    manifest = _load_manifest(store, retry)
    dest = Path(local_dir)
    if not store.s3 and dest.resolve() == store.path.resolve():
        raise ValueError(f"get_dir: source and destination are the same folder ({dest})")
    files = manifest["files"]
    if only is not None:
        wanted = set(only)
        missing = wanted - {f["path"] for f in files}
        if missing:
            raise FileNotFoundError(f"{store.name()}: not in the artifact's manifest: {sorted(missing)}")
        files = [f for f in files if f["path"] in wanted]

    fresh = not dest.exists() or (dest.is_dir() and not any(dest.iterdir()))
    if fresh and only is None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent))
    else:
        work = dest
        work.mkdir(parents=True, exist_ok=True)
        if only is None:  # an older copy: forget its manifest first, and the files only it listed
            stale = _previous_files(Store(work), retry) - {f["path"] for f in files}
            (work / MANIFEST).unlink(missing_ok=True)
            for rel in stale:
                (work / rel).unlink(missing_ok=True)
    try:
        for f in files:
            target = work / f["path"]
            store.get_file(f["path"], target, f["sha256"], f["size"], retry)
        if only is None:
            atomic_write_bytes(work / MANIFEST, _manifest_bytes(manifest))
        if work != dest:
            if dest.exists():
                dest.rmdir()
            os.replace(work, dest)
    except BaseException:
        if work != dest:
            shutil.rmtree(work, ignore_errors=True)
        raise
    return dest


def get_member(uri: UriLike, rel: str, local: UriLike, *, retry: RetryPolicy | None = None) -> Path:
    """Download one file of the complete artifact at ``uri`` to ``local``, verified against the manifest."""
    store = Store(uri)
    entry = _member(store, rel, retry)
    store.get_file(rel, Path(local), entry["sha256"], entry["size"], retry)
    return Path(local)


def read_member_json(uri: UriLike, rel: str, *, retry: RetryPolicy | None = None) -> Any:
    """One JSON file of the complete artifact at ``uri``, verified against the manifest."""
    store = Store(uri)
    entry = _member(store, rel, retry)
    if entry["size"] > MAX_JSON_BYTES:
        raise ValueError(f"{store.name(rel)} is larger than {MAX_JSON_BYTES} bytes; not read as JSON")
    with tempfile.TemporaryDirectory(prefix="animegen-store-") as tmp:
        path = Path(tmp) / "member.json"
        store.get_file(rel, path, entry["sha256"], entry["size"], retry)
        try:
            return json.loads(path.read_bytes())
        except ValueError as e:
            raise ValueError(f"{store.name(rel)} is not valid JSON: {e}") from None


def _member(store: Store, rel: str, retry: RetryPolicy | None) -> dict[str, Any]:
    manifest = _load_manifest(store, retry)
    for f in manifest["files"]:
        if f["path"] == rel:
            return f
    raise FileNotFoundError(f"{store.name(rel)}: not in the artifact's manifest "
                            f"({', '.join(f['path'] for f in manifest['files'][:10]) or 'empty'})")


# -------------------------------------------------------------------------------------------------- helpers
def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(obj: Any) -> Any:
    """JSON for the odd values configs carry: paths, sets, tuples, numpy scalars/arrays, dataclasses."""
    import dataclasses

    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable: {obj!r}")
