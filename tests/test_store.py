"""store.artifacts and store.registry: local folders and a real S3 server (SeaweedFS on 127.0.0.1).

Covers: multi-file artifacts (manifest last, verified reads, resume, replacement), single files and JSON, the run
registry, refused credentials (fast, no secret in messages or logs), and an upload interrupted by stopping the
server: readers refuse the half-written artifact, and after a restart the retried upload completes.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path

import pytest
from s3server import use_server_env

from animegen.store import ChecksumError
from animegen.store.artifacts import (
    MANIFEST,
    IncompleteArtifactError,
    ManifestError,
    RetryPolicy,
    exists,
    get_dir,
    get_file,
    get_member,
    is_complete,
    join,
    list_uris,
    put_dir,
    put_file,
    read_json,
    read_manifest,
    read_member_json,
    retrying,
    write_json,
)
from animegen.store.registry import download_runs, list_runs, read_run, run_uri, runs_root, write_run
from animegen.store.s3 import S3AccessError, S3UnavailableError

BUCKET = "animegen-artifacts"
FAST = RetryPolicy(attempts=2, initial_delay_s=0.05, max_delay_s=0.1, max_total_s=2.0)
MiB = 1 << 20


@pytest.fixture
def s3_env(s3_server, monkeypatch):  # noqa: F811 (the fixture imported above)
    return use_server_env(s3_server, monkeypatch, BUCKET)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path) -> str:
    """A fresh place to store things: a local folder, or a fresh prefix in the test bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    request.getfixturevalue("s3_env")
    return f"s3://{BUCKET}/t-{secrets.token_hex(4)}"


def make_artifact(folder: Path, n_extra: int = 0, big: bool = False, tag: bytes = b"v1") -> dict[str, bytes]:
    """A Dataset-like folder; returns {relative path: bytes} of what an artifact of it must hold."""
    files = {
        "images.npy": os.urandom(64 * 1024) + tag,
        "index.jsonl": b'{"id": 0}\n{"id": 1}\n' + tag,
        "manifest.json": json.dumps({"count": 2, "tag": tag.decode()}).encode(),
        "samples/fakes-00000.png": b"\x89PNG fake " + tag,
        "samples/deep/nested.bin": bytes(range(256)) * 4,
        "empty.txt": b"",
        **{f"extra/{i:03d}.bin": os.urandom(2048) + tag for i in range(n_extra)},
    }
    if big:
        files["checkpoint.pt"] = os.urandom(6 * MiB)  # > 5 MiB: a multipart upload
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a write")  # an atomic writer's leftover: skipped
    (folder / MANIFEST).write_text('{"stale": true}')  # a local manifest is ignored and rebuilt
    return files


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------------- multi-file artifacts
def test_put_get_dir_roundtrip(root, tmp_path):
    src = tmp_path / "src"
    files = make_artifact(src, big=root.startswith("s3://"))
    uri = join(root, "datasets", "main")
    landed = []

    def progress(rel, done, total):  # the manifest is written last: never complete while files are going up
        assert not exists(uri) and not is_complete(uri)
        landed.append((rel, done, total))

    result = put_dir(src, uri, progress=progress)

    assert result.uri == uri and sorted(result.uploaded) == sorted(files) and result.skipped == []
    assert [r for r, _, _ in landed] == sorted(files) and landed[-1][1:] == (len(files), len(files))
    manifest = result.manifest
    assert {f["path"]: f["size"] for f in manifest["files"]} == {k: len(v) for k, v in files.items()}
    assert manifest["count"] == len(files) and manifest["total_bytes"] == sum(map(len, files.values()))
    assert read_manifest(uri) == manifest
    assert exists(uri) and is_complete(uri)
    assert list_uris(uri) == sorted(join(uri, rel) for rel in [*files, MANIFEST])

    out = get_dir(uri, tmp_path / "copy")
    got = files_under(out)
    assert json.loads(got.pop(MANIFEST)) == manifest  # the local copy is itself a complete artifact
    assert got == files
    assert read_manifest(out) == manifest
    assert get_member(uri, "samples/fakes-00000.png", tmp_path / "one.png").read_bytes() == \
        files["samples/fakes-00000.png"]
    assert read_member_json(uri, "manifest.json") == {"count": 2, "tag": "v1"}
    with pytest.raises(FileNotFoundError, match="not in the artifact's manifest"):
        get_member(uri, "nope.bin", tmp_path / "nope")

    again = put_dir(src, uri)  # a rerun uploads nothing that is already there
    assert again.uploaded == [] and sorted(again.skipped) == sorted(files)

    (src / "index.jsonl").write_bytes(b"changed\n")  # a new version: one file changed, one gone, one new
    (src / "samples/deep/nested.bin").unlink()
    (src / "new.txt").write_bytes(b"new")
    third = put_dir(src, uri)
    assert sorted(third.uploaded) == ["index.jsonl", "new.txt"]
    assert join(uri, "samples/deep/nested.bin") not in list_uris(uri)  # what only the old manifest listed is gone
    want = {**files, "index.jsonl": b"changed\n", "new.txt": b"new"}
    del want["samples/deep/nested.bin"]
    for dest in (tmp_path / "copy3", tmp_path / "copy"):  # a fresh folder, and the older copy refreshed in place
        got = files_under(get_dir(uri, dest))
        assert json.loads(got.pop(MANIFEST))["files"] == third.manifest["files"]
        assert got == want


def test_uris(tmp_path, monkeypatch):
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:1")
    assert join("s3://b/p/", "x", "y.json") == "s3://b/p/x/y.json" and join("s3://b", "runs") == "s3://b/runs"
    assert join("minio://mlpipeline/v2", "a") == "s3://mlpipeline/v2/a"  # KFP's name for its store
    assert join(tmp_path, "a", "b") == str(tmp_path / "a" / "b")
    with pytest.raises(ValueError, match=r"'\.' and '\.\.' are not allowed"):
        join("s3://b/p", "../q")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        exists("gs://bucket/x")
    (tmp_path / "f.json").write_text('{"a": 1}')
    assert read_json(f"file://{tmp_path}/f.json") == {"a": 1}
    assert runs_root("s3://b") == "s3://b/runs" and runs_root("s3://b/runs/") == "s3://b/runs"
    assert runs_root(tmp_path) == str(tmp_path / "runs") and run_uri("s3://b/x", "r1") == "s3://b/x/runs/r1"


def test_one_local_path_for_artifacts_and_sources(tmp_path, monkeypatch):
    """store.uris.local_path is the one reading of a local URI: the artifact store and data.sources both use it."""
    from animegen.data import sources
    from animegen.store import artifacts, backend, registry
    from animegen.store.uris import local_path

    monkeypatch.setenv("HOME", str(tmp_path))
    assert local_path("file:///a/b%20c") == Path("/a/b c") and local_path("file://localhost/x") == Path("/x")
    assert local_path("~/faces") == tmp_path / "faces" == local_path(Path("~/faces"))
    with pytest.raises(ValueError, match="must name a local path"):
        local_path("file://host/x")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        local_path("gs://bucket/x")
    assert sources.local_path is artifacts.local_path is backend.local_path is registry.local_path is local_path
    (tmp_path / "w.bin").write_bytes(b"w")
    assert sources.fetch_file("~/w.bin") == tmp_path / "w.bin"


def test_single_files_and_json(root, tmp_path):
    src = tmp_path / "weights.bin"
    src.write_bytes(os.urandom(10_000))
    uri = join(root, "weights", "w.bin")
    info = put_file(src, uri)
    assert info["size"] == 10_000 and info["uri"] == uri and exists(uri)
    assert get_file(uri, tmp_path / "back.bin").read_bytes() == src.read_bytes()
    with pytest.raises(ChecksumError):
        get_file(uri, tmp_path / "bad.bin", sha256="0" * 64)
    assert not (tmp_path / "bad.bin").exists()

    doc = {"fid": 12.5, "classes": ["blonde hair", "blue eyes"], "path": Path("/x/y"), "tags": {"b", "a"}}
    assert write_json(join(root, "doc.json"), doc) == join(root, "doc.json")
    assert read_json(join(root, "doc.json")) == {"fid": 12.5, "classes": ["blonde hair", "blue eyes"],
                                                  "path": "/x/y", "tags": ["a", "b"]}
    assert list_uris(root) == sorted([uri, join(root, "doc.json")])
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_json(join(root, "missing.json"))
    assert not exists(join(root, "missing.json"))
    with pytest.raises(IsADirectoryError, match="get_dir"):
        get_file(join(root, "weights"), tmp_path / "dir")


def test_incomplete_artifact_is_refused(root, tmp_path):
    uri = join(root, "models", "half")
    with pytest.raises(FileNotFoundError, match="no artifact at .*nothing is stored there"):
        get_dir(uri, tmp_path / "x")
    # files without a manifest: what an interrupted upload leaves
    src = tmp_path / "src"
    make_artifact(src)
    (src / MANIFEST).unlink()
    for rel in ("images.npy", "index.jsonl"):
        put_file(src / rel, join(uri, rel))
    assert not exists(uri) and not is_complete(uri)
    pattern = r"incomplete artifact: no _manifest\.json at .*half \(an interrupted upload\?\)"
    with pytest.raises(IncompleteArtifactError, match=pattern):
        get_dir(uri, tmp_path / "x")
    with pytest.raises(IncompleteArtifactError, match=pattern):
        read_member_json(uri, "index.jsonl")
    with pytest.raises(IncompleteArtifactError, match=pattern):
        read_manifest(uri)
    assert not (tmp_path / "x").exists()


def test_interrupted_local_upload_leaves_no_complete_artifact(tmp_path):
    src = tmp_path / "src"
    files = make_artifact(src, n_extra=6)
    uri = tmp_path / "store" / "model"

    def crash(rel, done, total):
        if done == 3:
            raise KeyboardInterrupt  # a killed process

    with pytest.raises(KeyboardInterrupt):
        put_dir(src, uri, progress=crash)
    assert len(list_uris(uri)) == 3 and not (uri / MANIFEST).exists()
    assert not any(p.name.endswith((".tmp", ".part")) for p in uri.rglob("*"))
    with pytest.raises(IncompleteArtifactError, match="incomplete artifact"):
        get_dir(uri, tmp_path / "copy")
    result = put_dir(src, uri)
    assert len(result.skipped) == 3 and len(result.uploaded) == len(files) - 3
    got = files_under(get_dir(uri, tmp_path / "copy"))
    got.pop(MANIFEST)
    assert got == files


def test_a_file_changing_during_upload_stops_before_the_manifest(root, tmp_path):
    src = tmp_path / "src"
    make_artifact(src)
    uri = join(root, "live")

    def touch(rel, done, total):
        if done == 2:
            with open(src / "index.jsonl", "ab") as f:  # a writer still at work on the folder
                f.write(b"more\n")

    with pytest.raises(RuntimeError, match="changed while"):
        put_dir(src, uri, progress=touch)
    assert not exists(uri)


def test_tampered_member_is_refused(root, s3_server, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    files = make_artifact(src)
    uri = join(root, "eval")
    put_dir(src, uri)
    forged = bytes(b ^ 1 for b in files["index.jsonl"])  # same size, other bytes
    if uri.startswith("s3://"):
        import io

        key = uri[len(f"s3://{BUCKET}/"):] + "/index.jsonl"
        s3_server.client().put_object(BUCKET, key, io.BytesIO(forged), len(forged))
    else:
        Path(uri, "index.jsonl").write_bytes(forged)
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        get_dir(uri, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_manifest_paths_must_stay_inside(tmp_path):
    art = tmp_path / "art"
    art.mkdir()
    (art / "a.bin").write_bytes(b"x")
    evil = {"format": "animegen-artifact/1", "files": [{"path": "../escape.bin", "size": 1, "sha256": "0" * 64}]}
    (art / MANIFEST).write_text(json.dumps(evil))
    with pytest.raises(ManifestError, match="unsafe path"):
        get_dir(art, tmp_path / "out" / "copy")
    assert not (tmp_path / "out" / "escape.bin").exists()
    (art / MANIFEST).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        get_dir(art, tmp_path / "copy")


# ----------------------------------------------------------------------------------------------- registry
def eval_metrics(model: str, fid: float, run: str) -> dict:
    """An Evaluation metrics.json as animegen evaluate writes it (the fields compare reads)."""
    return {"format": "animegen-evaluation/1", "run_id": run, "model": {"name": model, "kimg": 1.0},
            "fid": fid, "kid": 0.01, "hair_accuracy": 0.5, "eye_accuracy": 0.25, "psi": 0.7,
            "extractor": {"id": "pytorch-fid:abc"}, "train": {"wall_s": 10.0, "device": "cpu"},
            "created": "2025-01-01T00:00:00Z"}


def test_registry_write_list_read(root, tmp_path):
    assert list_runs(root) == []
    m_path = tmp_path / "metrics.json"
    m_path.write_text(json.dumps(eval_metrics("dcgan", 80.0, "run-b")))
    config = {"kimg": 2, "data": "synthetic:", "out": Path("/tmp/x")}
    uri_a = write_run(root, "run-a", config, {
        "conditional": {"metrics": eval_metrics("conditional", 41.5, "run-a"),
                        "artifacts": {"model": "s3://b/m/cond", "evaluation": "s3://b/e/cond"}, "wall_s": 12.0},
        "manga": {"metrics": eval_metrics("manga", 55.0, "run-a"), "artifacts": {"model": "s3://b/m/manga"}},
        "skipped": {"metrics": None},
    }, extra={"pipeline": "animegen-papers", "kfp_run_id": "123", "artifacts": {"report": "s3://b/report"}})
    assert uri_a == run_uri(root, "run-a") == join(root, "runs", "run-a")
    write_run(root, "run-b", {"kimg": 4}, {"dcgan": {"metrics": str(m_path)}})
    # a run whose upload died before its manifest: never listed
    half = tmp_path / "half"
    (half / "metrics").mkdir(parents=True)
    (half / "run.json").write_text("{}")
    (half / "metrics" / "x.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        put_dir(half, run_uri(root, "run-c"), progress=lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))

    assert list_runs(root) == ["run-a", "run-b"]
    assert list_runs(runs_root(root)) == ["run-a", "run-b"]  # the runs/ folder itself works too
    a = read_run(root, "run-a")
    assert a["run_id"] == "run-a" and a["params"] == {"kimg": 2, "data": "synthetic:", "out": "/tmp/x"}
    assert a["pipeline"] == "animegen-papers" and a["status"] == "succeeded" and a["kfp_run_id"] == "123"
    assert a["models"]["conditional"]["summary"]["fid"] == 41.5 and a["models"]["conditional"]["wall_s"] == 12.0
    assert a["models"]["skipped"]["metrics"] is None
    assert a["artifacts"] == {"conditional/model": "s3://b/m/cond", "conditional/evaluation": "s3://b/e/cond",
                              "manga/model": "s3://b/m/manga", "report": "s3://b/report"}
    assert a["metrics"] == {"conditional": eval_metrics("conditional", 41.5, "run-a"),
                            "manga": eval_metrics("manga", 55.0, "run-a")}
    assert read_run(root, "run-b")["metrics"]["dcgan"]["fid"] == 80.0
    with pytest.raises(IncompleteArtifactError, match="incomplete artifact"):
        read_run(root, "run-c")

    write_run(root, "run-b", {"kimg": 8}, {"dcgan": {"metrics": eval_metrics("dcgan", 70.0, "run-b")}})
    assert read_run(root, "run-b")["params"] == {"kimg": 8} and read_run(root, "run-b")["metrics"]["dcgan"]["fid"] == 70

    local = tmp_path / "copy"
    assert download_runs(root, local) == ["run-a", "run-b"]
    assert sorted(p.relative_to(local).as_posix() for p in local.rglob("*.json")) == [
        f"runs/run-a/{MANIFEST}", "runs/run-a/metrics/conditional.json", "runs/run-a/metrics/manga.json",
        "runs/run-a/run.json", f"runs/run-b/{MANIFEST}", "runs/run-b/metrics/dcgan.json", "runs/run-b/run.json"]
    assert list_runs(local) == ["run-a", "run-b"]

    try:  # the layout is what `animegen compare` reads
        from animegen.eval.compare import local_rows
    except ImportError:
        return
    rows = {(r["run"], r["model"]): r["fid"] for r in local_rows(local)}
    assert rows == {("run-a", "conditional"): 41.5, ("run-a", "manga"): 55.0, ("run-b", "dcgan"): 70.0}


def test_registry_refuses_bad_names(tmp_path):
    for bad in ("", "../x", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ValueError, match="invalid run id"):
            write_run(tmp_path, bad, {}, {})
    with pytest.raises(ValueError, match="invalid model name"):
        write_run(tmp_path, "r1", {}, {"a/b": {}})
    with pytest.raises(ValueError, match="extra may not set"):
        write_run(tmp_path, "r1", {}, {}, extra={"params": {}})
    assert list_runs(tmp_path) == []


# ------------------------------------------------------------------------------------- credentials, retries
def test_wrong_credentials_fail_fast_without_leaking(s3_env, monkeypatch, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    src = tmp_path / "src"
    make_artifact(src)
    real_secret = s3_env.secret_key
    wrong_secret = "WRONG" + secrets.token_urlsafe(18)
    put_dir(src, f"s3://{BUCKET}/creds/art")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    for action in (lambda: put_dir(src, f"s3://{BUCKET}/creds/other"),
                   lambda: get_dir(f"s3://{BUCKET}/creds/art", tmp_path / "copy"),
                   lambda: list_runs(f"s3://{BUCKET}"),
                   lambda: exists(f"s3://{BUCKET}/creds/art")):
        t0 = time.monotonic()
        with pytest.raises(S3AccessError) as err:
            action()
        assert time.monotonic() - t0 < 5  # refused, not retried with backoff
        assert not isinstance(err.value, S3UnavailableError)
        message = str(err.value)
        assert "refused the credentials" in message and "AWS_SECRET_ACCESS_KEY" in message, message
        assert wrong_secret not in message and real_secret not in message
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", real_secret)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKNOSUCHKEY0000")
    with pytest.raises(S3AccessError, match="refused the credentials"):
        read_manifest(f"s3://{BUCKET}/creds/art")
    assert real_secret not in caplog.text and wrong_secret not in caplog.text
    assert not (tmp_path / "copy").exists()


def test_retry_policy_backs_off_and_gives_up():
    sleeps: list[float] = []
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 4:
            raise S3UnavailableError("cannot reach the S3 endpoint http://x")
        return "ok"

    policy = RetryPolicy(attempts=5, initial_delay_s=1.0, max_delay_s=3.0, max_total_s=60)
    assert retrying(flaky, "uploading x", policy, sleep=sleeps.append) == "ok"
    assert len(calls) == 4 and len(sleeps) == 3
    assert 0.5 <= sleeps[0] <= 1.0 and 1.0 <= sleeps[1] <= 2.0 and 1.5 <= sleeps[2] <= 3.0  # doubled, capped
    calls.clear()
    with pytest.raises(S3UnavailableError, match="gave up uploading x after 2 attempts"):
        retrying(flaky, "uploading x", RetryPolicy(attempts=2, initial_delay_s=0), sleep=sleeps.append)
    calls.clear()
    with pytest.raises(S3UnavailableError, match="after 1 attempt "):  # the next wait would pass max_total_s
        retrying(flaky, "uploading x", RetryPolicy(attempts=9, initial_delay_s=10, max_total_s=1), sleep=sleeps.append)

    def refused():
        calls.append(1)
        raise S3AccessError("S3 refused the credentials")

    calls.clear()
    with pytest.raises(S3AccessError):
        retrying(refused, "uploading x", policy, sleep=sleeps.append)
    assert len(calls) == 1


def test_retry_policy_from_env(monkeypatch):
    monkeypatch.setenv("ANIMEGEN_STORE_RETRIES", "3")
    monkeypatch.setenv("ANIMEGEN_STORE_RETRY_MAX_S", "7.5")
    assert RetryPolicy.from_env() == RetryPolicy(attempts=3, max_total_s=7.5)
    monkeypatch.setenv("ANIMEGEN_STORE_RETRIES", "many")
    with pytest.raises(ValueError, match="ANIMEGEN_STORE_RETRIES"):
        RetryPolicy.from_env()


# ------------------------------------------------------------------------ stopping the server mid-upload
def test_upload_interrupted_by_server_stop_then_retried(s3_env, tmp_path):
    uri = f"s3://{BUCKET}/interrupt/model"
    v1 = tmp_path / "v1"
    make_artifact(v1, n_extra=8, tag=b"v1")
    put_dir(v1, uri)  # a complete previous version is there
    v2 = tmp_path / "v2"
    files = make_artifact(v2, n_extra=8, tag=b"v2")

    def stop_after_three(rel, done, total):
        if done == 3:
            s3_env.stop()

    try:
        with pytest.raises(S3UnavailableError, match="gave up"):
            put_dir(v2, uri, retry=FAST, progress=stop_after_three)
    finally:
        s3_env.start()
    # three new files landed, the old manifest is gone, no new one: readers refuse (never a mix of v1 and v2)
    assert not exists(uri)
    with pytest.raises(IncompleteArtifactError, match=r"incomplete artifact: no _manifest\.json at s3://"):
        get_dir(uri, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()

    result = put_dir(v2, uri, retry=FAST)  # the retry resumes: what landed (or was identical in v1) is kept
    landed = set(sorted(files)[:3]) | {"samples/deep/nested.bin"}  # nested.bin: the same bytes in v1 and v2
    assert set(result.skipped) == landed and set(result.uploaded) == set(files) - landed
    got = files_under(get_dir(uri, tmp_path / "copy"))
    got.pop(MANIFEST)
    assert got == files


def test_short_outage_is_ridden_out_by_backoff(s3_env, tmp_path):
    uri = f"s3://{BUCKET}/outage/model"
    src = tmp_path / "src"
    files = make_artifact(src, n_extra=4)
    restarter: list[threading.Thread] = []

    def outage(rel, done, total):
        if done == 2:
            s3_env.stop()
            t = threading.Thread(target=lambda: (time.sleep(0.5), s3_env.start()))
            t.start()
            restarter.append(t)

    patient = RetryPolicy(attempts=30, initial_delay_s=0.2, max_delay_s=1.0, max_total_s=30)
    try:
        result = put_dir(src, uri, retry=patient, progress=outage)
    finally:
        for t in restarter:
            t.join(timeout=60)
        if s3_env.process is None:
            s3_env.start()
    assert sorted(result.uploaded) == sorted(files)
    got = files_under(get_dir(uri, tmp_path / "copy"))
    got.pop(MANIFEST)
    assert got == files
