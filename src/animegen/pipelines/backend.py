"""The KFP backend the pipeline needs, and the check `animegen pipeline submit` makes before sending a run.

Requirement: KFP backend (API server) >= 2.17.0, single-user or multi-user. The report's ``dsl.OneOf`` over
artifacts is resolved correctly only from 2.17.0 (kubeflow/pipelines#13436, fixed by #13437); 2.16.x takes the last
selector (the skip branch) and the report fails. 2.15 and older also send ``minio://`` roots to a MinIO Service
which the 2.17 manifests no longer have.

The version comes from the API server's healthz endpoint. In kubeflow/pipelines 2.17.0
``backend/src/apiserver/main.go`` registers ``/apis/v2beta1/healthz`` as a plain HTTP handler that writes
``{"commit_sha": "...", "tag_name": "...", "multi_user": true|false, "pipeline_store": "database"|"kubernetes"}``
(``tag_name`` and ``commit_sha`` from the server's TAG_NAME / COMMIT_SHA settings, "unknown" when unset); the proto
(backend/api/v2beta1/healthz.proto) declares only ``multi_user``, so kfp.Client's typed ``get_kfp_healthz`` drops
the version: it is read here as raw JSON. Behind the KFP UI or a Kubeflow gateway the same path is served under the
host's prefix (e.g. ``https://kubeflow.example.com/pipeline/apis/v2beta1/healthz``).
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

MIN_BACKEND = (2, 17, 0)
MIN_BACKEND_TEXT = ".".join(map(str, MIN_BACKEND))
HEALTHZ_PATH = "/apis/v2beta1/healthz"
WHY = ("the report's dsl.OneOf over artifacts is resolved correctly only from KFP 2.17.0 "
       "(kubeflow/pipelines#13436, fixed by #13437)")
VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(.*)$")


class BackendError(RuntimeError):
    """The KFP backend cannot run this pipeline (too old, unknown version, or the mode needs another option)."""


@dataclass(frozen=True)
class BackendInfo:
    tag_name: str
    commit_sha: str
    multi_user: bool
    pipeline_store: str = ""

    @property
    def version(self) -> tuple[int, int, int] | None:
        return parse_version(self.tag_name)

    @property
    def mode(self) -> str:
        return "multi-user" if self.multi_user else "single-user"


def parse_version(tag: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a KFP tag ('2.17.0', 'v2.17.1', '2.17.0-rc.1'); None when it is not one."""
    m = VERSION_RE.match((tag or "").strip())
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


SA_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"  # as kfp.Client's ServiceAccountTokenVolumeCredentials
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"  # the projected token of the access-ml-pipeline PodDefault


def default_token() -> str | None:
    """The pipelines service-account token kfp.Client would use inside a Kubeflow notebook (multi-user), if any."""
    try:
        return open(os.environ.get(SA_TOKEN_ENV) or SA_TOKEN_PATH).read().strip() or None
    except OSError:
        return None


def healthz_url(host: str) -> str:
    return host.rstrip("/") + HEALTHZ_PATH


def fetch_backend_info(host: str, token: str | None = None, timeout: float = 15.0) -> BackendInfo:
    """GET ``<host>/apis/v2beta1/healthz`` (with ``Authorization: Bearer <token>`` when given) as BackendInfo."""
    url = healthz_url(host)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read(1 << 20)
    except urllib.error.HTTPError as e:
        hint = " (multi-user installs: pass --token, or log in so kfp.Client finds credentials)" \
            if e.code in (401, 403) else ""
        raise BackendError(f"cannot read the KFP version: {url} answered HTTP {e.code}{hint}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BackendError(f"cannot submit to KFP at {host}: cannot reach {url}: {reason}. Check --host (the "
                           "KFP API or UI URL, e.g. http://localhost:8080 after `kubectl port-forward -n kubeflow "
                           "svc/ml-pipeline-ui 8080:80`) and that the server is up") from None
    try:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as e:
        raise BackendError(f"{url} did not answer with KFP's healthz JSON ({e}): is --host a KFP endpoint? "
                           f"first bytes: {body[:120]!r}") from None
    return BackendInfo(tag_name=str(data.get("tag_name", "")), commit_sha=str(data.get("commit_sha", "")),
                       multi_user=bool(data.get("multi_user", False)),
                       pipeline_store=str(data.get("pipeline_store", "")))


def check_backend(info: BackendInfo, namespace: str | None = None) -> BackendInfo:
    """``info`` when the backend can run the pipeline; else BackendError naming the reason."""
    version = info.version
    if version is None:
        raise BackendError(
            f"the KFP backend reports no release version (tag_name {info.tag_name!r}); animegen needs KFP "
            f">= {MIN_BACKEND_TEXT}: {WHY}. If you know it is {MIN_BACKEND_TEXT} or newer, pass "
            "--skip-backend-check")
    if version < MIN_BACKEND:
        raise BackendError(
            f"the KFP backend is {info.tag_name} ({info.mode}); animegen needs KFP >= {MIN_BACKEND_TEXT}: {WHY}; "
            "on older backends the report task fails. Upgrade the KFP installation (manifests/README.md)")
    if info.multi_user and not namespace:
        raise BackendError(
            f"the KFP backend {info.tag_name} runs in multi-user mode: pass --namespace (your Kubeflow profile "
            "namespace, e.g. kubeflow-user-example-com); runs execute there with that namespace's object-store key")
    return info
