"""Sources: safe extraction, https with cache and sha256, s3 against a real server, kaggle credentials."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import socket
import stat
import sys
import tarfile
import threading
import warnings
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image
from s3server import use_server_env

from animegen.data.extract import ArchiveError, ExtractionLimitError, safe_extract
from animegen.data.sources import (
    ChecksumError,
    DownloadError,
    KaggleCredentialsError,
    fetch_file,
    materialize,
)
from animegen.store.s3 import ENDPOINT_VARS, S3AccessError, S3ConfigError

MiB = 1 << 20


def png(color=(200, 40, 40), size=8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


GOOD = {"faces/a.png": png((255, 0, 0)), "faces/sub/b.png": png((0, 255, 0)), "./c.png": png((0, 0, 255))}
GOOD_ON_DISK = {"faces/a.png", "faces/sub/b.png", "c.png"}
ABS_NAME = f"/animegen-test-{secrets.token_hex(6)}.png"  # unique, so its absence proves nothing was written


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def listing(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def make_tar(path: Path, bad: bool = True, compression: str = "") -> dict[str, str]:
    """A tar with the GOOD files and, when ``bad``, planted entries; returns {bad name: reason keyword}."""
    planted: dict[str, str] = {}
    with tarfile.open(path, f"w:{compression}") as tf:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.size = kind, link, len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        for name, data in GOOD.items():
            add(name, data)
        if bad:
            planted = {"../evil.png": "..", ABS_NAME: "absolute", "a/../../x.png": "..",
                       "..\\win.png": "..", "C:\\drive.png": "drive", "passwd-link.png": "symbolic link",
                       "hard.png": "hard link", "fifo.png": "fifo", "dev.png": "device"}
            for name in ("../evil.png", ABS_NAME, "a/../../x.png", "..\\win.png", "C:\\drive.png"):
                add(name, png())
            add("passwd-link.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
            add("hard.png", kind=tarfile.LNKTYPE, link="faces/a.png")
            add("fifo.png", kind=tarfile.FIFOTYPE)
            add("dev.png", kind=tarfile.CHRTYPE)
    return planted


def make_zip(path: Path, bad: bool = True) -> dict[str, str]:
    planted: dict[str, str] = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in GOOD.items():
            zf.writestr(name, data)
        if bad:
            planted = {"../evil.png": "..", ABS_NAME: "absolute", "a/../../x.png": "..",
                       "..\\win.png": "..", "C:/drive.png": "drive", "link.png": "symbolic link",
                       "fifo.png": "fifo", "faces/a.png": "duplicate"}
            for name in ("../evil.png", ABS_NAME, "a/../../x.png", "..\\win.png", "C:/drive.png"):
                zf.writestr(zipfile.ZipInfo(name), png())
            for name, mode, data in (("link.png", stat.S_IFLNK | 0o777, b"/etc/passwd"),
                                     ("fifo.png", stat.S_IFIFO | 0o644, b"")):
                info = zipfile.ZipInfo(name)
                info.create_system, info.external_attr = 3, mode << 16
                zf.writestr(info, data)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns about the duplicate we plant on purpose
                zf.writestr("faces/a.png", png((1, 2, 3)))
    return planted


ARCHIVES = {
    "tar": lambda p: make_tar(p.with_suffix(".tar")),
    "tar.gz": lambda p: make_tar(p.with_suffix(".tar.gz"), compression="gz"),
    "zip": lambda p: make_zip(p.with_suffix(".zip")),
}


# --- extraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_extract_refuses_planted_entries_and_writes_only_inside_target(tmp_path, kind):
    archive = tmp_path / f"fixture.{kind}"
    planted = ARCHIVES[kind](tmp_path / "fixture")
    sandbox = tmp_path / "sandbox"
    (sandbox / "neighbour").mkdir(parents=True)
    before = listing(tmp_path)
    target = sandbox / "out"

    refused = safe_extract(archive, target, max_total_bytes=MiB, max_entries=100)

    got = files_under(target)
    assert set(got) == GOOD_ON_DISK
    assert got["faces/a.png"] == GOOD["faces/a.png"]  # the first one wins over the duplicate
    assert got["c.png"] == GOOD["./c.png"]
    reasons = {r["path"]: r["reason"] for r in refused}
    assert set(reasons) == set(planted), refused
    for name, keyword in planted.items():
        assert keyword in reasons[name], (name, reasons[name])
    assert listing(tmp_path) - {p for p in listing(tmp_path) if p.startswith("sandbox/out")} == before
    assert not Path(ABS_NAME).exists()
    assert not any(name.endswith(".part") for name in listing(target))


def test_extract_never_follows_an_existing_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"keep")
    target = tmp_path / "out"
    (target / "elsewhere").mkdir(parents=True)
    (target / "faces").symlink_to(target / "elsewhere", target_is_directory=True)  # a link inside target
    (target / "c.png").symlink_to(outside / "victim.png")  # a link out, at an entry's own path
    archive = tmp_path / "a.tar"
    make_tar(archive, bad=False)

    refused = safe_extract(archive, target, max_total_bytes=MiB, max_entries=100)

    reasons = {r["path"]: r["reason"] for r in refused}
    assert set(reasons) == {"faces/a.png", "faces/sub/b.png", "./c.png"}
    assert "passes through an existing symlink" in reasons["faces/a.png"]
    assert "existing symlink" in reasons["./c.png"]
    assert list((target / "elsewhere").iterdir()) == []
    assert sorted(p.name for p in outside.iterdir()) == ["victim.png"]
    assert (outside / "victim.png").read_bytes() == b"keep"


@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_extract_limits_raise(tmp_path, kind):
    archive = tmp_path / f"fixture.{kind}"
    ARCHIVES[kind](tmp_path / "fixture")
    with pytest.raises(ExtractionLimitError, match="max_entries=4"):
        safe_extract(archive, tmp_path / "n", max_total_bytes=MiB, max_entries=4)
    total = sum(len(v) for v in GOOD.values())
    with pytest.raises(ExtractionLimitError, match="max_total_bytes"):
        safe_extract(archive, tmp_path / "b", max_total_bytes=total - 1, max_entries=100)


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_bomb_stops_at_the_byte_limit(tmp_path, kind):
    archive = tmp_path / f"bomb.{kind}"
    zeros = bytes(32 * MiB)
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("bomb.png", zeros)
    else:
        with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
            info = tarfile.TarInfo("bomb.png")
            info.size = len(zeros)
            tf.addfile(info, io.BytesIO(zeros))
    assert archive.stat().st_size < MiB  # highly compressible
    target = tmp_path / "out"
    with pytest.raises(ExtractionLimitError, match="max_total_bytes=1048576"):
        safe_extract(archive, target, max_total_bytes=MiB, max_entries=10)
    written = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    assert written == 0  # the partial file is removed, never renamed into place


def test_corrupt_archives_raise_naming_the_file(tmp_path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(ArchiveError, match="junk.zip"):
        safe_extract(junk, tmp_path / "o1", max_total_bytes=MiB, max_entries=10)
    good = tmp_path / "t.tar.gz"
    make_tar(good, bad=False, compression="gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="cut.tar.gz"):
        safe_extract(cut, tmp_path / "o2", max_total_bytes=MiB, max_entries=10)


# --- local sources -------------------------------------------------------------------------------


def test_local_folder_archive_and_file(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.png").write_bytes(png())
    src = materialize(str(folder), tmp_path / "work")
    assert src.root == folder and src.refused == [] and src.content_sha256 is None

    archive = tmp_path / "set.zip"
    planted = make_zip(archive)
    src = materialize(f"file://{archive}", tmp_path / "work")
    assert set(files_under(src.root)) == GOOD_ON_DISK and len(src.refused) == len(planted)
    assert src.root.parent == tmp_path / "work"
    assert src.content_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()

    src = materialize(str(folder / "x.png"), tmp_path / "work")
    assert files_under(src.root) == {"x.png": png()}
    with pytest.raises(ChecksumError, match="expected 0{64}"):
        fetch_file(str(archive), sha256="0" * 64)
    with pytest.raises(ValueError, match="ingest stage"):
        materialize("synthetic:?n=4", tmp_path / "work")
    with pytest.raises(FileNotFoundError):
        materialize(str(tmp_path / "missing.zip"), tmp_path / "work")


# --- https (a local http server) -----------------------------------------------------------------


@contextlib.contextmanager
def serve(directory: Path):
    """Serve ``directory`` on 127.0.0.1; yields (base URL, list of request paths)."""
    requests: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(directory), **kwargs)

        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", "http://example.invalid/faces.zip")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def no_remote_hosts(monkeypatch):
    """Fail any name lookup or connection to a host other than the loopback server."""
    real = socket.getaddrinfo

    def guarded(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"network access to {host!r} attempted")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)


def test_https_download_sha256_and_cache(tmp_path, no_remote_hosts):
    site = tmp_path / "site"
    site.mkdir()
    make_zip(site / "faces.zip", bad=False)
    (site / "one.png").write_bytes(png())
    digest = hashlib.sha256((site / "faces.zip").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    with serve(site) as (base, requests):
        with pytest.raises(ChecksumError) as err:
            materialize(f"{base}/faces.zip", tmp_path / "w", sha256="ab" * 32, cache_dir=cache)
        assert "ab" * 32 in str(err.value) and digest in str(err.value)
        assert [p for p in cache.rglob("*") if p.is_file()] == []  # the bad download is gone
        assert len(requests) == 1

        first = materialize(f"{base}/faces.zip", tmp_path / "w", sha256=digest, cache_dir=cache)
        assert set(files_under(first.root)) == GOOD_ON_DISK
        assert (first.content_sha256, first.cached, len(requests)) == (digest, False, 2)
        again = materialize(f"{base}/faces.zip", tmp_path / "w", cache_dir=cache)
        assert (again.cached, again.content_sha256, len(requests)) == (True, digest, 2)
        assert files_under(again.root) == files_under(first.root) and again.root != first.root
        fresh = fetch_file(f"{base}/faces.zip", cache_dir=cache, refresh=True)
        assert len(requests) == 3 and fresh.read_bytes() == (site / "faces.zip").read_bytes()

        single = materialize(f"{base}/one.png?sig=SECRET123", tmp_path / "w", cache_dir=cache)
        assert files_under(single.root) == {"one.png": png()}
        assert not any("SECRET123" in p.read_text() for p in cache.rglob("meta.json"))  # signatures stay out
        with pytest.raises(DownloadError, match="404"):
            fetch_file(f"{base}/missing.zip", cache_dir=cache)
        with pytest.raises(ValueError, match="use https://"):
            fetch_file(f"{base}/redirect", cache_dir=cache)  # loopback http redirecting to a remote http
        count = len(requests)
        with pytest.raises(ValueError, match="use https://"):
            materialize("http://example.invalid/faces.zip", tmp_path / "w", cache_dir=cache)
        assert len(requests) == count


# --- s3 (a real SeaweedFS server) ----------------------------------------------------------------


BUCKET = "animegen-test"


@pytest.fixture
def s3_env(s3_server, monkeypatch):  # noqa: F811 (the imported fixture)
    return use_server_env(s3_server, monkeypatch, BUCKET)


def put(client, key: str, data: bytes) -> None:
    client.put_object(BUCKET, key, io.BytesIO(data), len(data))


def test_s3_object_and_prefix(tmp_path, s3_env, monkeypatch):
    client = s3_env.client()
    archive = tmp_path / "faces.zip"
    make_zip(archive, bad=False)
    put(client, "sets/faces.zip", archive.read_bytes())
    images = {"a.png": png((1, 1, 1)), "sub/b.png": png((2, 2, 2))}
    for name, data in images.items():
        put(client, f"imgs/{name}", data)
    put(client, "imgsother/not-me.png", png())
    cache = tmp_path / "cache"

    src = materialize(f"s3://{BUCKET}/sets/faces.zip", tmp_path / "w", cache_dir=cache)
    assert set(files_under(src.root)) == GOOD_ON_DISK and not src.cached
    assert src.content_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")  # a cached object needs no S3 access at all
    assert materialize(f"s3://{BUCKET}/sets/faces.zip", tmp_path / "w", cache_dir=cache).cached
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)

    prefix = materialize(f"s3://{BUCKET}/imgs/", tmp_path / "w", cache_dir=cache)
    assert files_under(prefix.root) == images and not prefix.cached and prefix.refused == []
    assert materialize(f"s3://{BUCKET}/imgs/", tmp_path / "w", cache_dir=cache).cached

    put(client, "imgs/c.png", png((3, 3, 3)))  # the prefix changes: only the difference is fetched
    client.remove_object(BUCKET, "imgs/a.png")
    changed = materialize(f"s3://{BUCKET}/imgs/", tmp_path / "w", cache_dir=cache)
    assert set(files_under(changed.root)) == {"sub/b.png", "c.png"} and not changed.cached

    with pytest.raises(FileNotFoundError, match="end the URI with '/'"):
        fetch_file(f"s3://{BUCKET}/imgs", cache_dir=cache)


def test_s3_wrong_credentials_and_missing_env(tmp_path, s3_env, monkeypatch):
    put(s3_env.client(), "one.png", png())
    uri = f"s3://{BUCKET}/one.png"
    wrong = "wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(S3AccessError, match=f"S3 refused the credentials for {s3_env.endpoint}") as err:
        fetch_file(uri, cache_dir=tmp_path / "c1")
    assert wrong not in str(err.value) and s3_env.secret_key not in str(err.value)
    with pytest.raises(S3AccessError, match="refused the credentials"):
        materialize(f"s3://{BUCKET}/", tmp_path / "w", cache_dir=tmp_path / "c1")

    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3ConfigError, match="AWS_SECRET_ACCESS_KEY"):
        fetch_file(uri, cache_dir=tmp_path / "c2")
    for var in ENDPOINT_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(S3ConfigError, match="S3_ENDPOINT_URL.*AWS_ENDPOINT_URL_S3.*AWS_ENDPOINT_URL"):
        fetch_file(uri, cache_dir=tmp_path / "c2")


def test_s3_server_down_then_back(tmp_path, s3_env):
    client = s3_env.client()
    for name in ("a.png", "b.png"):
        put(client, f"down/{name}", png())
    cache, prefix, single = tmp_path / "cache", f"s3://{BUCKET}/down/", f"s3://{BUCKET}/down/a.png"
    materialize(prefix, tmp_path / "w", cache_dir=cache)
    materialize(single, tmp_path / "w", cache_dir=cache)
    s3_env.stop()
    try:
        assert materialize(single, tmp_path / "w", cache_dir=cache).cached  # no server needed
        with pytest.raises(S3AccessError, match=f"cannot reach the S3 endpoint {s3_env.endpoint}"):
            materialize(prefix, tmp_path / "w", cache_dir=cache)  # a prefix is listed again
    finally:
        s3_env.start()
    back = materialize(prefix, tmp_path / "w", cache_dir=cache)
    assert back.cached and set(files_under(back.root)) == {"a.png", "b.png"}


# --- kaggle --------------------------------------------------------------------------------------


def test_kaggle_without_credentials_is_a_clear_error(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_USERNAME", "only-the-name")  # half a key pair is not credentials
    # The Kaggle client prints and authenticates when imported: it must not be imported at all here.
    monkeypatch.setitem(sys.modules, "kaggle", None)
    with pytest.raises(KaggleCredentialsError) as err:
        materialize("kaggle:splcher/animefacedataset", tmp_path / "w", cache_dir=tmp_path / "cache")
    message = str(err.value)
    for needle in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "kaggle.json", "splcher/animefacedataset"):
        assert needle in message
    assert not os.path.exists(tmp_path / ".kaggle")
