"""Artifact locations: a local path (``str`` / ``PathLike``, ``file:///abs/path``) or ``s3://bucket/key``
(``minio://``, as KFP names artifacts in its store, is read as ``s3://``); other schemes are refused."""
from __future__ import annotations

import os
import re
from pathlib import Path

UriLike = str | os.PathLike
S3_SCHEMES = ("s3://", "minio://")  # minio://bucket/key (how KFP names artifacts in its store) is read as s3://
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_s3(uri: UriLike) -> bool:
    """True for ``s3://`` (and ``minio://``) URIs."""
    return isinstance(uri, str) and uri.startswith(S3_SCHEMES)


def as_s3(uri: str) -> str:
    """``minio://bucket/key`` read as ``s3://bucket/key``; other URIs unchanged."""
    return "s3://" + uri[len("minio://"):] if uri.startswith("minio://") else uri


def local_path(uri: UriLike) -> Path:
    """The local path a URI names: a path (``~`` expanded) or ``file:///abs/path``; other schemes are refused."""
    if isinstance(uri, str) and uri.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{uri!r}: file:// URIs must name a local path (file:///abs/path); only local file:// "
                             "URIs are supported")
        return Path(unquote(parts.path)).expanduser()
    if isinstance(uri, str) and _SCHEME.match(uri):
        raise ValueError(f"{uri!r}: unsupported URI scheme (use a local path, file:///path or s3://bucket/key)")
    return Path(uri).expanduser()


def clean_key(key: str, uri: str) -> str:
    """Normalise an S3 key: no empty, '.' or '..' segments; no leading/trailing '/'."""
    parts = [p for p in key.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{uri!r}: '.' and '..' are not allowed in an S3 key")
    return "/".join(parts)


def join(uri: UriLike, *parts: str) -> str:
    """``uri`` with path segments appended (``s3://b/p`` + ``x/y`` -> ``s3://b/p/x/y``; local: os.path.join)."""
    if is_s3(uri):
        from animegen.store.s3 import parse_s3_uri

        bucket, key = parse_s3_uri(as_s3(str(uri)))
        key = clean_key("/".join([key, *parts]), str(uri))
        return f"s3://{bucket}/{key}" if key else f"s3://{bucket}/"
    return str(local_path(uri).joinpath(*parts))
