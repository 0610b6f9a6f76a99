"""Retries that resume (issue 11, problem 5): training and transfer upload their checkpoint to the object store on
an interval (manifest last); a new attempt with an empty output folder restores the last complete upload and
continues it exactly. Against a real S3 server (SeaweedFS, the ``s3_server`` fixture): the process is SIGKILLed
after an upload, started again with a fresh --out and the same key, and its log and weights equal an uninterrupted
run's (the CPU run is bit-exact)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, SYN, tiny_config
from s3server import use_server_env

from animegen.cli import main as cli_main
from animegen.store import artifacts
from animegen.store.backend import Store
from animegen.train import run_train
from animegen.train.checkpoint import load_checkpoint
from animegen.train.remote import (
    CHECKPOINT_ROOT_ENV,
    STORE_ENV,
    CheckpointUploader,
    latest,
    restore,
    task_checkpoint_uri,
)

BUCKET = "ckpt"
TINY_SG = ["--arch", "stylegan", "--resolution", "16", "--batch", "8", "--log-every", "5", "--no-progress",
           "--z-dim", "16", "--w-dim", "16", "--mapping-layers", "2", "--channel-base", "128", "--channel-max", "32"]
KIMG = 1.6  # 200 steps of batch 8: a few seconds on a CPU
INTERVAL_S = 0.5


def losses(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "img_s"} for r in rows]


def same_weights(a: Path, b: Path) -> None:
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert x["step"] == y["step"]
    for key in ("G", "D", "G_ema"):
        for name in x[key]:
            assert torch.equal(x[key][name], y[key][name]), (key, name)


def uploaded_step(uri: str, tmp: Path) -> int:
    """The step of the newest complete upload under ``uri`` (read from its checkpoint)."""
    slot_uri, _ = latest(uri)
    artifacts.get_member(slot_uri, "checkpoint.pt", tmp / "uploaded.pt")
    return int(load_checkpoint(tmp / "uploaded.pt")["step"])


def kill_after_first_upload(cmd: list[str], uri: str, env: dict) -> subprocess.Popen:
    """Run ``cmd``; SIGKILL it as soon as a complete upload is at ``uri``."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while latest(uri) is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it was killed:\n{proc.stdout.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


def child_env(server) -> dict:
    # same thread count as this process: CPU float reductions are bit-reproducible per thread count
    return dict(os.environ, **server.env(), PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(torch.get_num_threads()))


@pytest.fixture
def store(s3_server, monkeypatch):
    return use_server_env(s3_server, monkeypatch, BUCKET)


def test_killed_training_resumes_from_its_last_upload(store, tmp_path, capsys):
    full = tmp_path / "full"
    run_train(tiny_config("stylegan", kimg=KIMG, snapshot_kimg=KIMG, log_every=5), SYN, full)

    uri = f"s3://{BUCKET}/runs/run-1/train-conditional"
    cmd = [sys.executable, "-m", "animegen.cli", "train", "--data", SYN, "--kimg", str(KIMG), "--snapshot-kimg",
           str(KIMG), *TINY_SG, "--checkpoint-uri", uri, "--checkpoint-interval-s", str(INTERVAL_S)]
    kill_after_first_upload(cmd + ["--out", str(tmp_path / "attempt-1")], uri, child_env(store))
    step, (slot_uri, _) = uploaded_step(uri, tmp_path), latest(uri)
    assert 0 < step < 200, "the upload is of a step mid-run"
    # the first attempt checkpointed only for the upload (snapshot_kimg is the whole run): the retry's state is
    # the store's, not a file the dead attempt left behind
    capsys.readouterr()
    retry = tmp_path / "attempt-2"  # a fresh output folder, as a retried pod gets
    assert cli_main(["train", "--data", SYN, "--out", str(retry), "--kimg", str(KIMG), "--snapshot-kimg",
                     str(KIMG), *TINY_SG, "--checkpoint-uri", uri, "--checkpoint-interval-s", "600"]) == 0
    out = capsys.readouterr().out
    assert f"resume: restored {slot_uri} " in out and f"at step {step}, {step * 8 / 1000:g} kimg" in out
    assert not (retry / "_manifest.json").exists() and not (retry / "upload.json").exists()
    assert losses(retry) == losses(full)
    same_weights(full, retry)
    # the end was uploaded too (manifest last), to the other slot: a retry after a later failure trains no more
    assert uploaded_step(uri, tmp_path) == 200
    other = f"{uri}/{'b' if slot_uri.endswith('/a') else 'a'}"
    assert latest(uri)[0] == other and artifacts.read_member_json(other, "summary.json")["steps"] == 200


def test_killed_transfer_resumes_from_its_last_upload(store, tmp_path, capsys):
    source = tmp_path / "source"
    run_train(tiny_config("stylegan", kimg=0.08, snapshot_kimg=0.08, conditional=True), SYN, source)
    target = "synthetic:?n=64&resolution=16&seed=5&labels=none"
    common = ["--init-from", str(source), "--data", target, "--kimg", str(KIMG), "--snapshot-kimg", str(KIMG),
              "--log-every", "5", "--no-progress", "--seed", "3"]
    full = tmp_path / "full"
    assert cli_main(["train", *common, "--out", str(full)]) == 0

    uri = f"s3://{BUCKET}/runs/run-1/transfer-manga"
    cmd = [sys.executable, "-m", "animegen.cli", "train", *common, "--checkpoint-uri", uri,
           "--checkpoint-interval-s", str(INTERVAL_S)]
    kill_after_first_upload(cmd + ["--out", str(tmp_path / "attempt-1")], uri, child_env(store))
    step, (slot_uri, _) = uploaded_step(uri, tmp_path), latest(uri)
    assert 0 < step < 200
    capsys.readouterr()
    retry = tmp_path / "attempt-2"
    assert cli_main(["train", *common, "--out", str(retry), "--checkpoint-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"resume: restored {slot_uri} " in out and f"at step {step}," in out
    assert losses(retry) == losses(full)
    same_weights(full, retry)
    assert (retry / "init_report.json").is_file()  # the transfer's report came back with the checkpoint


def test_an_interrupted_upload_is_never_restored_and_never_costs_the_previous_one(store, tmp_path, capsys):
    """Files without a manifest (a pod killed mid-upload) are not taken for a checkpoint; the upload before it, in
    the other slot, is still there and is restored (put_dir removes a slot's manifest before rewriting it, so a
    single slot would have lost it); with no complete slot the run starts over."""
    uri = f"s3://{BUCKET}/runs/run-2/train-dcgan"
    first = tmp_path / "first"
    run_train(tiny_config("dcgan", kimg=0.16, snapshot_kimg=0.08, checkpoint_uri=uri), SYN, first)  # slot a: 20
    later = tmp_path / "later"
    run_train(tiny_config("dcgan", kimg=0.24, snapshot_kimg=0.08), SYN, later)
    artifacts.put_file(later / "checkpoint.pt", f"{uri}/b/checkpoint.pt")  # slot b cut short: no _manifest.json
    capsys.readouterr()
    assert restore(uri, tmp_path / "fresh") == "a"
    printed = capsys.readouterr().out
    assert f"{uri}/b holds an interrupted upload (no manifest); not used" in printed
    assert f"restored {uri}/a " in printed and "at step 20," in printed
    assert load_checkpoint(tmp_path / "fresh")["step"] == 20

    artifacts.put_file(later / "checkpoint.pt", f"{uri}/a/checkpoint.pt")
    Store(f"{uri}/a").delete("_manifest.json", None)  # both slots cut short
    assert restore(uri, tmp_path / "fresh-2") is None
    assert not (tmp_path / "fresh-2" / "checkpoint.pt").exists()
    assert restore(f"s3://{BUCKET}/runs/none/train", tmp_path / "fresh-3") is None  # nothing there: a first attempt


def test_a_run_with_a_checkpoint_in_out_is_not_overwritten_by_the_store(store, tmp_path):
    """The store is read only for an empty --out: a local run stays as it is (and --resume continues it)."""
    uri = f"s3://{BUCKET}/runs/run-3/train"
    a = tmp_path / "a"
    run_train(tiny_config("dcgan", kimg=0.16, snapshot_kimg=0.08, checkpoint_uri=uri), SYN, a)
    assert uploaded_step(uri, tmp_path) == 20
    b = tmp_path / "b"
    run_train(tiny_config("dcgan", kimg=0.08, snapshot_kimg=0.08), SYN, b)
    assert restore(uri, b) is None
    assert load_checkpoint(b)["step"] == 10


def test_refused_credentials_stop_the_run_before_it_trains(store, tmp_path, monkeypatch):
    """The restore check runs first: a key the store refuses fails the task at once, not after a day of training."""
    from animegen.store.s3 import S3AccessError

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-key")
    with pytest.raises(S3AccessError, match="refused the credentials") as e:
        run_train(tiny_config("dcgan", kimg=0.08, snapshot_kimg=0.08, checkpoint_uri=f"s3://{BUCKET}/runs/r/t"),
                  SYN, tmp_path / "run")
    assert "not-the-key" not in str(e.value)
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


def test_a_failed_upload_stops_the_run_with_the_reason(store, tmp_path, monkeypatch):
    """An upload that fails (after the store's own retries) is not silently dropped: the run stops, naming it."""
    from animegen.store.s3 import S3AccessError
    from animegen.train import remote

    def refused(*a, **k):
        raise S3AccessError("S3 refused the credentials (AccessDenied)")

    monkeypatch.setattr(remote, "put_dir", refused)
    uri = f"s3://{BUCKET}/runs/run-4/train"
    with pytest.raises(RuntimeError, match=f"checkpoint upload to {uri} failed: .*AccessDenied"):
        run_train(tiny_config("dcgan", kimg=0.08, snapshot_kimg=0.08, checkpoint_uri=uri), SYN, tmp_path / "run")


def test_the_key_a_retry_computes(monkeypatch):
    for var in (CHECKPOINT_ROOT_ENV, STORE_ENV):
        monkeypatch.delenv(var, raising=False)
    assert task_checkpoint_uri("s3://b/ckpt", "1f0c-uuid", "train-conditional") == \
        "s3://b/ckpt/1f0c-uuid/train-conditional"
    assert task_checkpoint_uri("", "1f0c", "train") == ""  # no root anywhere: no upload
    assert task_checkpoint_uri("s3://b/c", "{{$.pipeline_job_uuid}}", "train") == ""  # unresolved placeholder
    assert task_checkpoint_uri("s3://b/c", "run 1/x", "t") == "s3://b/c/run_1_x/t"  # one key segment each
    monkeypatch.setenv(STORE_ENV, "s3://mlpipeline/private/ns1/animegen")
    assert task_checkpoint_uri("", "r", "t") == "s3://mlpipeline/private/ns1/animegen/checkpoints/r/t"
    monkeypatch.setenv(CHECKPOINT_ROOT_ENV, "s3://other/ck")
    assert task_checkpoint_uri("", "r", "t") == "s3://other/ck/r/t"
    assert task_checkpoint_uri("s3://given/x", "r", "t") == "s3://given/x/r/t"


def test_the_train_component_uploads_under_the_run_and_task(store, tmp_path, capsys):
    """The component's own function (as the pod runs it) uploads to <checkpoint_root>/<run_id>/<task_name>, and a
    second attempt with an empty model folder resumes from there."""
    from animegen.components.train.component import train

    class Art:
        def __init__(self, path):
            self.path, self.metadata = str(path), {}

    def attempt(name: str) -> Path:
        model = tmp_path / name / "model"
        train.python_func(dataset=Art(SYN), model=Art(model), summary=Art(tmp_path / name / "summary.html"),
                          arch="dcgan", resolution=16, kimg=0.16, batch=8, z_dim=16, channel_base=128,
                          channel_max=64, snapshot_kimg=0.08, options={"log_every": 10},
                          checkpoint_root=f"s3://{BUCKET}/ck", run_id="run-9", task_name="train-dcgan",
                          s3_endpoint=store.endpoint)
        return model

    first = attempt("one")
    uri = f"s3://{BUCKET}/ck/run-9/train-dcgan"
    assert uploaded_step(uri, tmp_path) == 20
    capsys.readouterr()
    second = attempt("two")
    assert f"resume: restored {uri}/a " in capsys.readouterr().out
    assert losses(second) == losses(first)


def test_upload_does_not_stall_the_loop(store, tmp_path):
    """Staging a checkpoint for upload (hard links / copies) is what the loop waits for; the upload itself runs in
    a background thread. For a tiny model both are far below a training step budget of seconds."""
    out = tmp_path / "run"
    run_train(tiny_config("stylegan", kimg=0.08, snapshot_kimg=0.08), SYN, out)
    up = CheckpointUploader(f"s3://{BUCKET}/runs/overhead/train", 0.0)
    t0 = time.perf_counter()
    up.upload(out, 10)
    returned_s = time.perf_counter() - t0
    up.wait()
    up.upload(out, 10, wait=True)  # raises when the background upload failed
    up.upload(out, 10, wait=True)
    (first, second, third) = up.uploads
    assert returned_s < 1.0 and first["stage_s"] < 1.0
    assert first["sent"] > 0 and second["sent"] > 0  # a then b
    assert third["sent"] == 0  # slot a again, nothing changed: identical files are not sent again
    print(f"upload of {first['bytes'] / 1e6:.2f} MB: loop blocked {returned_s * 1000:.1f} ms, background upload "
          f"{first['upload_s'] * 1000:.0f} ms")


def test_under_kfp_local_the_task_uploads_under_its_run_id_and_task_name(tmp_path, monkeypatch):
    """kfp.local resolves dsl.PIPELINE_JOB_ID_PLACEHOLDER / PIPELINE_TASK_NAME_PLACEHOLDER as the pipeline passes
    them (the cluster's driver does the same: the run's uuid and the task's name); the checkpoint root may also be
    a folder."""
    from kfp import dsl, local

    from animegen.components.ingest.component import ingest
    from animegen.components.train.component import train

    for var in (CHECKPOINT_ROOT_ENV, STORE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "src"))
    root = tmp_path / "checkpoints"

    @dsl.pipeline(name="resume-probe")
    def probe():
        data = ingest(source="synthetic:?n=32&resolution=16&labels=none", resolution=16, holdout=0.0)
        train(dataset=data.outputs["dataset"], arch="dcgan", resolution=16, kimg=0.08, batch=8, z_dim=16,
              channel_base=128, channel_max=64, snapshot_kimg=0.08, device="cpu", checkpoint_root=str(root),
              run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
              task_name=dsl.PIPELINE_TASK_NAME_PLACEHOLDER)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    probe()
    (run,) = [p for p in root.iterdir()]
    (task,) = [p for p in run.iterdir()]
    assert task.name == "train" and "{{" not in run.name and run.name
    assert artifacts.is_complete(task / "a") and load_checkpoint(task / "a" / "checkpoint.pt")["step"] == 10


def test_the_compiled_pipeline_gives_every_training_task_its_checkpoint_key():
    """In the committed YAML each train and transfer task (and only those) gets the run's id and its own task name
    as placeholders the driver resolves, the checkpoint_root run parameter and the S3 endpoint."""
    import yaml

    from animegen.pipelines.pipeline import NODES_TASK, TASKS

    spec = next(yaml.safe_load_all((ROOT / "src/animegen/pipelines/animegen_pipeline.yaml").read_text()))

    def tasks(dag):
        for name, task in dag["tasks"].items():
            yield name, task
            comp = spec["components"][task["componentRef"]["name"]]
            if "dag" in comp:
                yield from tasks(comp["dag"])

    seen = {}
    for name, task in tasks(spec["root"]["dag"]):
        params = task.get("inputs", {}).get("parameters", {})
        if "task_name" in params:
            seen[name] = params
    training = {n for n, t in TASKS.items() if t.stage in ("train", "transfer")} | {NODES_TASK}
    assert set(seen) == training
    for params in seen.values():
        assert params["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
        assert params["task_name"]["runtimeValue"]["constant"] == "{{$.pipeline_task_name}}"
        assert params["checkpoint_root"]["componentInputParameter"].endswith("checkpoint_root")
        assert params["s3_endpoint"]["componentInputParameter"].endswith("s3_endpoint")
    assert spec["root"]["inputDefinitions"]["parameters"]["checkpoint_root"]["defaultValue"] == ""
