"""Where the project writes in KFP's object store, per Kubeflow namespace (multi-user installs).

A multi-user Kubeflow install gives each profile namespace its own object-store key, which may only write under
these prefixes of the ``mlpipeline`` bucket (the profile controller's namespace isolation policy: kubeflow/pipelines
``manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/sync.py``, ``upsert_iam_policy``)::

    mlpipeline/artifacts/*            old shared artifacts (backwards compatibility)
    mlpipeline/private-artifacts/<ns>/*   the namespace's KFP artifacts (its kfp-launcher root
                                      ``minio://mlpipeline/private-artifacts/<ns>/v2/artifacts``); a lifecycle rule
                                      may expire this prefix (31 days in the controller that sets one)
    mlpipeline/private/<ns>/*         the namespace's private storage (no lifecycle rule)
    mlpipeline/shared/*               storage shared by every namespace

Everything animegen writes itself (the run registry, the FID reference-statistics cache, uploaded checkpoints)
therefore goes under :func:`namespace_prefix` (``s3://mlpipeline/private/<ns>/animegen``), which the other parts
build their keys from; a single-user install (no namespace) uses ``s3://mlpipeline/shared/animegen``, which is
allowed in both modes. :func:`check_writable` refuses a URI outside a namespace's prefixes before anything is sent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

BUCKET = "mlpipeline"  # KFP's bucket (the kfp-launcher root minio://mlpipeline/...)
PROJECT = "animegen"  # the folder under an allowed prefix that holds everything the project writes
NAMESPACE_ENV = "ANIMEGEN_NAMESPACE"  # overrides the pod's own namespace
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")  # in every KFP pod
# A Kubernetes namespace name (RFC 1123 label).
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace):
        raise ValueError(f"invalid Kubernetes namespace {namespace!r}: lower-case letters, digits and '-', "
                         "at most 63, starting and ending with a letter or digit")
    return namespace


def allowed_prefixes(namespace: str, bucket: str = BUCKET) -> tuple[str, ...]:
    """The ``s3://`` prefixes (each ending in '/') that a namespace's key may write in a multi-user install."""
    ns = _check_namespace(namespace)
    return (f"s3://{bucket}/artifacts/", f"s3://{bucket}/private-artifacts/{ns}/", f"s3://{bucket}/private/{ns}/",
            f"s3://{bucket}/shared/")


def namespace_prefix(namespace: str | None = None, bucket: str = BUCKET) -> str:
    """The ``s3://`` prefix (no trailing '/') under which animegen writes for ``namespace``:
    ``s3://mlpipeline/private/<ns>/animegen``; without a namespace (single-user KFP) ``s3://mlpipeline/shared/animegen``.
    Build every key the project writes from it, e.g. ``f"{namespace_prefix(ns)}/runs/"`` for the registry."""
    if not namespace:
        return f"s3://{bucket}/shared/{PROJECT}"
    return f"s3://{bucket}/private/{_check_namespace(namespace)}/{PROJECT}"


def registry_uri(namespace: str | None = None, bucket: str = BUCKET) -> str:
    """The run registry of ``namespace``: ``<namespace_prefix>/runs/``."""
    return f"{namespace_prefix(namespace, bucket)}/runs/"


def fid_cache_uri(namespace: str | None = None, bucket: str = BUCKET) -> str:
    """The FID reference-statistics cache (``ANIMEGEN_STORE``) of ``namespace``: ``<namespace_prefix>/cache``."""
    return f"{namespace_prefix(namespace, bucket)}/cache"


def checkpoints_uri(namespace: str | None = None, bucket: str = BUCKET) -> str:
    """Where uploaded training checkpoints of ``namespace`` go: ``<namespace_prefix>/checkpoints``."""
    return f"{namespace_prefix(namespace, bucket)}/checkpoints"


def current_namespace() -> str | None:
    """The namespace this process runs in: ``$ANIMEGEN_NAMESPACE``, else the pod's service-account namespace file
    (mounted in KFP's task pods), else None (not in a pod: single-user or local)."""
    value = os.environ.get(NAMESPACE_ENV, "").strip()
    if value:
        return _check_namespace(value)
    try:
        value = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError:
        return None
    return _check_namespace(value) if value else None


def check_writable(uri: str, namespace: str, bucket: str = BUCKET) -> str:
    """``uri`` (``s3://`` or ``minio://``) when a multi-user key of ``namespace`` may write there; else ValueError
    naming the URI, the allowed prefixes and where to write instead. Other buckets are the user's own (not
    governed by the profile controller) and pass; so do local paths."""
    from animegen.store.uris import as_s3, is_s3

    if not is_s3(uri):
        return uri
    s3 = as_s3(str(uri))
    if not s3.startswith(f"s3://{bucket}/") and s3 != f"s3://{bucket}":
        return uri
    allowed = allowed_prefixes(namespace, bucket)
    if not any((s3.rstrip("/") + "/").startswith(p) for p in allowed):
        raise ValueError(
            f"{uri} is outside what namespace {namespace}'s object-store key may write in a multi-user Kubeflow "
            f"install ({', '.join(allowed)}); the write would be refused with AccessDenied. Use "
            f"{namespace_prefix(namespace, bucket)}/... (animegen.store.namespaces.namespace_prefix)")
    return uri


def access_denied_hint(uri: str) -> str:
    """The likely cause of an AccessDenied on ``uri``, for error messages."""
    ns = None
    try:
        ns = current_namespace()
    except ValueError:
        pass
    where = namespace_prefix(ns) if ns else f"s3://{BUCKET}/private/<namespace>/{PROJECT}"
    return (f"in a multi-user Kubeflow install each namespace's key may write only under "
            f"s3://{BUCKET}/{{artifacts, private-artifacts/<ns>, private/<ns>, shared}}/; write under {where}/ "
            f"instead of {uri}")


AUTO = "auto"  # a store URI setting that means "this namespace's own prefix", resolved in the task at run time
KINDS = {"runs": registry_uri, "cache": fid_cache_uri, "checkpoints": checkpoints_uri}


def resolve(uri: str | None, kind: str) -> str | None:
    """A store URI setting as given, except ``auto``: the ``kind`` URI ("runs", "cache" or "checkpoints") under
    :func:`namespace_prefix` of :func:`current_namespace` (the namespace is known only inside the task's pod, not
    when the pipeline is compiled, so settings such as ``ANIMEGEN_STORE=auto`` are resolved here)."""
    if uri is None or uri.strip().lower() != AUTO:
        return uri
    return KINDS[kind](current_namespace())


def resolve_store(uri: str | None, kind: str) -> str | None:
    """:func:`resolve` for the optional stores a task may use (the FID cache, checkpoint uploads): ``auto`` means
    "this namespace's prefix in KFP's store when the task has the object-store keys", so where it has none (a
    ``kfp.local`` run of the pipeline at its defaults, a laptop) it is None (no store) with a warning, not an
    error; an explicit URI is used as given (and a missing key is the store's clear error)."""
    if uri is not None and uri.strip().lower() == AUTO and not all(os.environ.get(k) for k in
                                                                    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")):
        import warnings

        warnings.warn(f"{kind}: the store setting is 'auto' but this task has no object-store keys "
                      "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): not used", stacklevel=2)
        return None
    return resolve(uri, kind)
