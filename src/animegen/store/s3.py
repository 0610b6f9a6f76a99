"""S3 access through the minio SDK; endpoint and credentials come from the environment only.

- endpoint: ``S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``
  (a URL such as ``http://127.0.0.1:8333``; its scheme decides TLS)
- keys: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (and ``AWS_SESSION_TOKEN`` if set)
- region: ``AWS_REGION`` (default ``us-east-1``)
- TLS trust: ``SSL_CERT_FILE`` or ``AWS_CA_BUNDLE``, else certifi's bundle

Errors name the variables and the endpoint, never a secret value.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

from animegen.store import CHUNK, write_stream

CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 10, 120
ENDPOINT_VARS = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CREDENTIAL_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "InvalidSecurity", "AuthorizationHeaderMalformed",
}
MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"}
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout",
                   "XMinioServerNotInitialized", "OperationAborted"}
SHA256_META = "sha256"  # user metadata (x-amz-meta-sha256) that upload_file sets: the content's sha256 hex


class S3ConfigError(ValueError):
    """The environment does not say which S3 endpoint to use or with which keys."""


class S3AccessError(RuntimeError):
    """The S3 endpoint refused the credentials or could not be reached."""


class S3UnavailableError(S3AccessError):
    """The S3 endpoint could not be reached, or answered with a server error (5xx): worth retrying.

    Credential and permission refusals are plain :class:`S3AccessError`, never this: retrying them is useless."""


@dataclass(frozen=True)
class S3Object:
    key: str
    size: int
    etag: str
    sha256: str | None = None  # from the object's x-amz-meta-sha256 (stat_object only; listings do not carry it)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; the key may be empty or end in ``/`` (a prefix)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI (expected s3://bucket/key)")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket (expected s3://bucket/key)")
    return bucket, key


def endpoint_url() -> str:
    """The endpoint URL from the first of ENDPOINT_VARS that is set."""
    for var in ENDPOINT_VARS:
        if os.environ.get(var):
            return os.environ[var]
    raise S3ConfigError(
        "no S3 endpoint configured: set S3_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL) "
        "to a URL such as http://127.0.0.1:8333, plus AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )


def s3_client() -> Minio:
    """A minio client built from the environment only (see the module docstring)."""
    url = endpoint_url()
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise S3ConfigError(
            f"S3 endpoint {url!r} is not of the form http(s)://host[:port] (no path); fix S3_ENDPOINT_URL"
        )
    missing = [v for v in KEY_VARS if not os.environ.get(v)]
    if missing:
        raise S3ConfigError(
            f"S3 credentials missing: set {' and '.join(missing)} in the environment "
            f"(endpoint {parts.scheme}://{parts.netloc})"
        )
    http = urllib3.PoolManager(  # minio's default, with a short connect timeout and fewer retries
        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or os.environ.get("AWS_CA_BUNDLE") or certifi.where(),
        retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
    return Minio(
        parts.netloc,
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        secure=parts.scheme == "https",
        region=os.environ.get("AWS_REGION") or "us-east-1",
        http_client=http,
    )


def endpoint_of(client: Minio) -> str:
    """The client's endpoint as a URL, for messages (minio keeps it on a private attribute)."""
    base = getattr(client, "_base_url", None)
    if base is None:
        return "the S3 endpoint"
    return f"{'https' if base.is_https else 'http'}://{base.host}"


def _status(e: Exception) -> int:
    """The HTTP status of a minio error, 0 when unknown."""
    if isinstance(e, S3Error):
        return int(getattr(e.response, "status", 0) or 0)
    if isinstance(e, ServerError):
        return int(e.status_code or 0)
    if isinstance(e, InvalidResponseError):
        return int(getattr(e, "_code", 0) or 0)
    return 0


def _uri_in(what: str) -> str:
    """The s3:// URI named in an s3_errors ``what`` (the whole text when none)."""
    return next((w for w in what.split() if w.startswith("s3://")), what)


@contextlib.contextmanager
def s3_errors(client: Minio, what: str) -> Iterator[None]:
    """Turn minio/urllib3 failures while doing ``what`` into errors that say what to fix.

    Refused credentials -> S3AccessError; a missing bucket/key -> FileNotFoundError; an unreachable endpoint or a
    server error (5xx, SlowDown) -> S3UnavailableError (the retryable kind); anything else -> S3AccessError."""
    endpoint = endpoint_of(client)
    try:
        yield
    except S3Error as e:
        if e.code in CREDENTIAL_CODES:
            hint = ""
            if e.code == "AccessDenied":  # right keys, wrong place: the likely cause in a multi-user install
                from animegen.store.namespaces import access_denied_hint

                verb = "write" if what.startswith(("uploading", "deleting")) else "read"
                hint = f"; if they are right, the key may not {verb} there: {access_denied_hint(_uri_in(what))}"
            raise S3AccessError(
                f"S3 refused the credentials for {endpoint}: {e.code} while {what}; check "
                f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and that the key may read this bucket{hint}"
            ) from None
        if e.code in MISSING_CODES:
            hint = " (to fetch every object under a prefix, end the URI with '/')" if e.code == "NoSuchKey" else ""
            raise FileNotFoundError(f"{what}: {e.code} at {endpoint}{hint}") from None
        if e.code in TRANSIENT_CODES or _status(e) >= 500:
            raise S3UnavailableError(f"S3 server error at {endpoint} while {what}: {e.code}: {e.message}") from None
        raise S3AccessError(f"S3 error at {endpoint} while {what}: {e.code}: {e.message}") from None
    except (ServerError, InvalidResponseError) as e:
        kind = S3UnavailableError if _status(e) >= 500 or _status(e) == 429 else S3AccessError
        raise kind(f"S3 server error at {endpoint} while {what}: HTTP {_status(e) or '?'}") from None
    except (urllib3.exceptions.HTTPError, MinioException, ConnectionError, TimeoutError) as e:
        raise S3UnavailableError(
            f"cannot reach the S3 endpoint {endpoint} while {what}: {type(e).__name__}: {e}; "
            "check S3_ENDPOINT_URL and that the server is running"
        ) from None


def _bucket_exists(client: Minio, bucket: str) -> bool:
    """HEAD bucket; a key limited to prefixes of the bucket (a multi-user Kubeflow namespace's key) may be refused
    that (SeaweedFS checks it as a bucket-wide Read): then the listing itself tells whether the bucket exists."""
    try:
        return client.bucket_exists(bucket)
    except S3Error as e:
        if e.code != "AccessDenied":
            raise
        return True


def list_prefix(client: Minio, bucket: str, prefix: str) -> list[S3Object]:
    """Every object under ``prefix`` (recursively), sorted by key; folder markers are left out."""
    with s3_errors(client, f"listing s3://{bucket}/{prefix}"):
        if not _bucket_exists(client, bucket):
            raise FileNotFoundError(f"s3://{bucket}/: no such bucket at {endpoint_of(client)}")
        objects = [
            S3Object(o.object_name, int(o.size or 0), (o.etag or "").strip('"'))
            for o in client.list_objects(bucket, prefix=prefix, recursive=True)
            if o.object_name and not o.is_dir and not o.object_name.endswith("/")
        ]
    return sorted(objects, key=lambda o: o.key)


def download_object(
    client: Minio,
    bucket: str,
    key: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    max_bytes: int | None = None,
    fsync: bool = True,
    verify_metadata: bool = False,
) -> tuple[str, int]:
    """Stream one object to ``dest`` (temp file + rename); returns ``(sha256 hex, size)``.

    ``sha256``/``max_bytes`` are enforced as in :func:`animegen.store.write_stream`. With ``verify_metadata`` and
    no ``sha256``, the sha256 that :func:`upload_file` stored in the object's metadata is checked (when present).
    """
    uri = f"s3://{bucket}/{key}"
    with s3_errors(client, f"downloading {uri}"):
        response = client.get_object(bucket, key)
        try:
            if sha256 is None and verify_metadata:
                sha256 = _meta_sha256(response.headers)
            return write_stream(
                Path(dest), response.stream(CHUNK), sha256=sha256, max_bytes=max_bytes, label=uri, fsync=fsync
            )
        finally:
            response.close()
            response.release_conn()


def _meta_sha256(headers) -> str | None:
    """The x-amz-meta-sha256 value of a response's headers (any case), if it looks like a sha256 hex."""
    for name, value in (headers or {}).items():
        if name.lower() == f"x-amz-meta-{SHA256_META}":
            value = str(value).strip().lower()
            return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None
    return None


def upload_file(
    client: Minio,
    bucket: str,
    key: str,
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    content_type: str = "application/octet-stream",
) -> None:
    """Upload one local file as ``s3://bucket/key`` (a single PUT, or a multipart upload for large files).

    S3 makes the object visible only once the upload completes: an interrupted upload leaves no object (or the
    previous one). ``sha256`` (the file's sha256 hex, when the caller has it) is stored as the object's
    ``x-amz-meta-sha256`` so that downloads can verify it. One attempt: callers retry
    (:class:`S3UnavailableError`) as they see fit."""
    path = Path(path)
    metadata = {SHA256_META: sha256} if sha256 else None
    with s3_errors(client, f"uploading {path.name} to s3://{bucket}/{key}"):
        client.fput_object(bucket, key, str(path), content_type=content_type, metadata=metadata)


def upload_bytes(
    client: Minio,
    bucket: str,
    key: str,
    data: bytes,
    *,
    sha256: str | None = None,
    content_type: str = "application/octet-stream",
) -> None:
    """Upload ``data`` as ``s3://bucket/key`` in one PUT (see :func:`upload_file`)."""
    import io

    metadata = {SHA256_META: sha256} if sha256 else None
    with s3_errors(client, f"uploading s3://{bucket}/{key}"):
        client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type, metadata=metadata)


def stat_object(client: Minio, bucket: str, key: str) -> S3Object | None:
    """The object's size, etag and stored sha256, or None when there is no such object (or bucket)."""
    try:
        with s3_errors(client, f"reading the metadata of s3://{bucket}/{key}"):
            st = client.stat_object(bucket, key)
    except FileNotFoundError:
        return None
    return S3Object(key, int(st.size or 0), (st.etag or "").strip('"'), _meta_sha256(st.metadata))


def remove_object(client: Minio, bucket: str, key: str) -> None:
    """Delete one object; deleting a missing object is not an error (S3 semantics)."""
    with s3_errors(client, f"deleting s3://{bucket}/{key}"):
        client.remove_object(bucket, key)

