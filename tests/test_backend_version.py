"""`animegen pipeline submit` asks the KFP API server for its version and mode first (GET /apis/v2beta1/healthz,
the JSON KFP 2.17.0's backend/src/apiserver/main.go writes) and refuses a backend older than 2.17.0, one that
reports no version, and a multi-user one without --namespace, before compiling or sending anything. Tested against
a small fake of that endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from animegen.cli import main
from animegen.pipelines.backend import (
    HEALTHZ_PATH,
    MIN_BACKEND,
    BackendError,
    BackendInfo,
    check_backend,
    fetch_backend_info,
    parse_version,
)


@pytest.fixture(autouse=True)
def no_ambient_token(monkeypatch, tmp_path):
    """No service-account token from the machine running the tests."""
    import animegen.pipelines.backend as backend

    monkeypatch.delenv(backend.SA_TOKEN_ENV, raising=False)
    monkeypatch.setattr(backend, "SA_TOKEN_PATH", str(tmp_path / "no-token"))


class _Healthz(BaseHTTPRequestHandler):
    """Serves one healthz document (or an HTTP status) and records every request; any other call is a 404 (so a
    submit that got past the check would fail loudly)."""

    doc: dict | bytes = {}
    status = 200
    calls: list[tuple[str, str, str | None]] = []

    def log_message(self, *args) -> None:
        pass

    def _send(self, body: bytes, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        type(self).calls.append(("GET", self.path, self.headers.get("Authorization")))
        if self.path.split("?")[0].endswith(HEALTHZ_PATH):
            doc = type(self).doc
            return self._send(doc if isinstance(doc, bytes) else json.dumps(doc).encode(), type(self).status)
        return self._send(b'{"error": "not found"}', 404)

    def do_POST(self) -> None:  # noqa: N802
        type(self).calls.append(("POST", self.path, self.headers.get("Authorization")))
        return self._send(b'{"error": "not found"}', 404)


@contextmanager
def fake_kfp(doc: dict | bytes, status: int = 200) -> Iterator[str]:
    _Healthz.doc, _Healthz.status, _Healthz.calls = doc, status, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def healthz(tag: str, multi_user: bool = False) -> dict:
    """What KFP's API server answers (main.go: commit_sha, tag_name, multi_user, pipeline_store)."""
    return {"commit_sha": "0123abc", "tag_name": tag, "multi_user": multi_user, "pipeline_store": "database"}


def test_minimum_is_2_17_0():
    assert MIN_BACKEND == (2, 17, 0)
    assert HEALTHZ_PATH == "/apis/v2beta1/healthz"


@pytest.mark.parametrize("tag, parsed", [("2.17.0", (2, 17, 0)), ("v2.17.1", (2, 17, 1)), ("2.16.1", (2, 16, 1)),
                                         ("2.17.0-rc.1", (2, 17, 0)), ("10.0.0", (10, 0, 0)), ("unknown", None),
                                         ("", None), ("2.17", None)])
def test_parse_version(tag, parsed):
    assert parse_version(tag) == parsed


def test_fetch_reads_version_mode_and_sends_the_token():
    with fake_kfp(healthz("2.17.0", multi_user=True)) as host:
        info = fetch_backend_info(host + "/pipeline/", token="tok-123")  # a gateway prefix is kept
    assert info == BackendInfo("2.17.0", "0123abc", True, "database")
    assert _Healthz.calls == [("GET", "/pipeline/apis/v2beta1/healthz", "Bearer tok-123")]


@pytest.mark.parametrize("tag", ["2.17.0", "2.17.1", "2.18.0", "3.0.0"])
@pytest.mark.parametrize("multi_user", [False, True])
def test_supported_backends_pass(tag, multi_user):
    info = BackendInfo(tag, "x", multi_user)
    assert check_backend(info, namespace="kubeflow-user-example-com" if multi_user else None) is info


@pytest.mark.parametrize("tag", ["2.16.1", "2.16.0", "2.15.0", "2.0.5", "1.8.5"])
def test_older_backends_are_refused_with_the_reason(tag):
    with pytest.raises(BackendError) as e:
        check_backend(BackendInfo(tag, "x", False))
    msg = str(e.value)
    assert tag in msg and ">= 2.17.0" in msg and "OneOf" in msg and "#13436" in msg


@pytest.mark.parametrize("tag", ["unknown", "", "dev"])
def test_a_backend_without_a_version_is_refused(tag):
    with pytest.raises(BackendError, match="reports no release version.*--skip-backend-check"):
        check_backend(BackendInfo(tag, "x", False))


def test_multi_user_needs_a_namespace():
    with pytest.raises(BackendError, match="multi-user mode: pass --namespace"):
        check_backend(BackendInfo("2.17.0", "x", True))


@pytest.mark.parametrize("tag", ["2.16.1", "2.15.0"])
def test_submit_refuses_an_old_backend_before_sending_anything(tag, capsys):
    with fake_kfp(healthz(tag)) as host:
        assert main(["pipeline", "submit", "--host", host]) == 2
    err = capsys.readouterr().err
    assert f"the KFP backend is {tag} (single-user)" in err and ">= 2.17.0" in err and "Traceback" not in err
    assert _Healthz.calls == [("GET", HEALTHZ_PATH, None)]  # nothing but the healthz request was made


def test_submit_refuses_multi_user_without_namespace(capsys):
    with fake_kfp(healthz("2.17.0", multi_user=True)) as host:
        assert main(["pipeline", "submit", "--host", host, "--token", "t"]) == 2
    assert "pass --namespace" in capsys.readouterr().err
    assert [c[:2] for c in _Healthz.calls] == [("GET", HEALTHZ_PATH)]


def test_submit_refuses_a_registry_outside_the_namespace_prefixes(capsys):
    with fake_kfp(healthz("2.17.0", multi_user=True)) as host:
        assert main(["pipeline", "submit", "--host", host, "--namespace", "team-a", "--token", "t",
                     "--param", "registry_uri=s3://mlpipeline/animegen/runs/"]) == 2
    err = capsys.readouterr().err
    assert "s3://mlpipeline/animegen/runs/ is outside" in err and "s3://mlpipeline/private/team-a/animegen" in err
    assert [c[:2] for c in _Healthz.calls] == [("GET", HEALTHZ_PATH)]


@pytest.mark.parametrize("doc, status, needle", [
    (b"<html>login</html>", 200, "did not answer with KFP's healthz JSON"),
    (b'{"error": "denied"}', 403, "HTTP 403"),
    (healthz("unknown"), 200, "reports no release version"),
])
def test_submit_explains_an_unusable_answer(doc, status, needle, capsys):
    with fake_kfp(doc, status) as host:
        assert main(["pipeline", "submit", "--host", host]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_skip_backend_check_goes_straight_to_kfp(capsys):
    """With --skip-backend-check no healthz request is made by animegen itself: kfp.Client's own calls reach the
    fake (which answers 404 to everything but healthz), so the submit fails there, naming the host."""
    with fake_kfp(healthz("2.16.1")) as host:
        assert main(["pipeline", "submit", "--host", host, "--skip-backend-check"]) == 2
    captured = capsys.readouterr()
    assert "not checking the KFP backend's version" in captured.out
    assert f"cannot submit to KFP at {host}" in captured.err
    assert any(method == "POST" or not path.endswith(HEALTHZ_PATH) for method, path, _ in _Healthz.calls)


def test_submit_sends_the_notebook_service_account_token(tmp_path, monkeypatch, capsys):
    """Without --token, the token kfp.Client itself would use in a Kubeflow notebook ($KF_PIPELINES_SA_TOKEN_PATH)
    goes with the healthz request (multi-user installs refuse anonymous API calls)."""
    token = tmp_path / "token"
    token.write_text("sa-token-1\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    with fake_kfp(healthz("2.16.1", multi_user=True)) as host:
        assert main(["pipeline", "submit", "--host", host, "--namespace", "team-a"]) == 2
    assert _Healthz.calls == [("GET", HEALTHZ_PATH, "Bearer sa-token-1")]
    assert "the KFP backend is 2.16.1 (multi-user)" in capsys.readouterr().err
