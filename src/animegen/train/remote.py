"""Checkpoint upload to the object store, and the restore that lets a retried task resume.

A training run given ``checkpoint_uri`` (TrainConfig; the pipeline's train and transfer tasks compute it from the
checkpoint root, the run's id and the task's name: :func:`task_checkpoint_uri`) uploads its Model directory there
every ``checkpoint_interval_s`` seconds and at the end, as a multi-file artifact of :mod:`animegen.store.artifacts`
(every file first, ``_manifest.json`` last: an upload cut short by a killed pod is never taken for a whole one).
Uploads alternate between two slots, ``<uri>/a`` and ``<uri>/b``: ``put_dir`` removes a slot's manifest before it
rewrites the slot, so with one slot a pod preempted during an upload (seconds for a full-width checkpoint of hundreds
of MB) would leave no complete checkpoint at all; with two, the other slot still holds the previous one.
A run started with an empty output folder first looks there: the newest complete slot is downloaded into the
folder and the run continues it exactly (the ``resume`` path of ``run_train``), at the step it was uploaded at.

The upload does not stall the loop: at an upload point the loop writes ``checkpoint.pt`` (as a snapshot does),
the folder is copied to a staging folder (hard links where the file system allows: every file but
``train_log.jsonl`` is replaced by rename, never rewritten in place, so a link is a stable copy; otherwise a real
copy) and a background thread hashes and uploads the copy. An upload point that comes while the previous upload is
still running is skipped; the final upload waits for it and then runs to completion before the task ends.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from animegen.store.artifacts import (
    MANIFEST,
    IncompleteArtifactError,
    get_dir,
    join,
    put_dir,
    read_manifest,
    read_member_json,
)

CHECKPOINT_ROOT_ENV = "ANIMEGEN_CHECKPOINTS"  # where checkpoints go when a task is given no root
STORE_ENV = "ANIMEGEN_STORE"  # else <ANIMEGEN_STORE>/checkpoints
COPIED = ("train_log.jsonl",)  # files appended in place: copied, never linked
SLOTS = ("a", "b")
MARKER = "upload.json"  # in each upload: {"step": N}, so the newest slot is known without a download


def checkpoint_root(root: str = "") -> str:
    """The checkpoint root a task uses: ``root`` when given, else ``$ANIMEGEN_CHECKPOINTS``, else
    ``$ANIMEGEN_STORE/checkpoints``, else '' (no upload); ``auto`` (as root or store) is the namespace's own
    ``.../animegen/checkpoints`` (animegen.store.namespaces)."""
    from animegen.store.namespaces import AUTO, resolve_store

    root = root or os.environ.get(CHECKPOINT_ROOT_ENV, "")
    if root:
        return resolve_store(root, "checkpoints") or ""  # auto: the namespace's own .../animegen/checkpoints
    store = os.environ.get(STORE_ENV, "")
    if store.strip().lower() == AUTO:
        return resolve_store(store, "checkpoints") or ""
    return join(store, "checkpoints") if store else ""


def task_checkpoint_uri(root: str, run_id: str, task_name: str) -> str:
    """``<root>/<run_id>/<task_name>``: the same for every attempt of one task of one run ('' when ``root`` is
    '' or the run or task is unknown: no upload).

    The pipeline passes ``dsl.PIPELINE_JOB_ID_PLACEHOLDER`` and ``dsl.PIPELINE_TASK_NAME_PLACEHOLDER``. The KFP v2
    driver resolves them as runtime-value input parameters (backend/src/v2/driver, resolveInputParameter:
    ``{{$.pipeline_job_uuid}}`` -> the run's id, ``{{$.pipeline_task_name}}`` -> the task's name in its DAG); the
    driver runs once per task and a retry re-runs the executor pod with the same inputs, so every attempt computes
    the same key (while the pod's output folder, an emptyDir, starts empty: shared/KFP-NOTES.md). kfp.local
    resolves both too (kfp/local/placeholder_utils.py; tests/test_retry_resume.py runs it)."""
    root = checkpoint_root(root)
    if not (root and run_id and task_name) or "{{" in run_id + task_name:  # an unresolved KFP placeholder
        return ""
    return join(root, _segment(run_id), _segment(task_name))


def _segment(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip(".") or "_"


def latest(uri: str) -> tuple[str, dict] | None:
    """The newest complete slot under ``uri`` holding a checkpoint.pt, and its manifest (None: there is none)."""
    found = []
    for slot in SLOTS:
        try:
            manifest = read_manifest(join(uri, slot))
        except IncompleteArtifactError:
            print(f"checkpoint upload: {join(uri, slot)} holds an interrupted upload (no manifest); not used",
                  flush=True)
            continue
        except FileNotFoundError:
            continue
        if {"checkpoint.pt", MARKER} <= {f["path"] for f in manifest["files"]}:
            step = int(read_member_json(join(uri, slot), MARKER)["step"])
            found.append((step, str(manifest.get("created", "")), slot, manifest))
    if not found:
        return None
    *_, slot, manifest = max(found)
    return join(uri, slot), manifest


def restore(uri: str, out: Path) -> str | None:
    """Download the newest complete upload under ``uri`` into ``out`` when ``out`` holds no checkpoint.pt; returns
    the slot it came from (None when there is nothing to restore: no upload, only interrupted ones, or ``out``
    already holds a run)."""
    if (out / "checkpoint.pt").exists():
        return None
    found = latest(uri)
    if found is None:
        return None
    slot_uri, manifest = found
    get_dir(slot_uri, out)
    for name in (MARKER, MANIFEST):  # the Model folder as training left it (its manifest would list MARKER)
        (out / name).unlink(missing_ok=True)
    from animegen.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(out / "checkpoint.pt", mmap=True)
    step, seen = int(ckpt["step"]), int(ckpt["images_seen"])
    print(f"resume: restored {slot_uri} (uploaded {manifest.get('created', '?')}) at step {step}, "
          f"{seen / 1000:g} kimg", flush=True)
    return slot_uri.rsplit("/", 1)[-1]


class CheckpointUploader:
    """Uploads a Model directory to ``uri`` at most every ``interval_s`` seconds, in a background thread, to the
    slots in turn (the first to the one ``restored_from`` is not)."""

    def __init__(self, uri: str, interval_s: float, restored_from: str | None = None):
        self.uri, self.interval_s = uri, float(interval_s)
        self.slot = restored_from or SLOTS[-1]  # the slot last written: the next upload goes to the other
        self.last = time.monotonic()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.uploads: list[dict] = []  # {"step", "stage_s", "upload_s", "bytes"} of each finished upload

    def due(self) -> bool:
        """Time for an upload (the interval has passed) and none is running."""
        if time.monotonic() - self.last < self.interval_s:
            return False
        return self.thread is None or not self.thread.is_alive()

    def upload(self, out: Path, step: int, wait: bool = False) -> None:
        """Stage ``out`` (which holds a checkpoint.pt of ``step``) and upload it; ``wait``: in this thread, after
        any running upload (the final one)."""
        self._join()
        t0 = time.perf_counter()
        staged = _stage(out)
        (staged / MARKER).write_text(json.dumps({"step": step}) + "\n")
        stage_s = time.perf_counter() - t0
        self.last = time.monotonic()
        self.slot = SLOTS[(SLOTS.index(self.slot) + 1) % len(SLOTS)]
        target = join(self.uri, self.slot)
        if wait:
            self._put(staged, target, step, stage_s)
            self._raise()
        else:
            self.thread = threading.Thread(target=self._put, args=(staged, target, step, stage_s), daemon=True,
                                           name="checkpoint-upload")
            self.thread.start()

    def wait(self) -> None:
        """Wait for a running upload (its failure is raised by the next ``upload``)."""
        self._join()

    def _put(self, staged: Path, target: str, step: int, stage_s: float) -> None:
        try:
            t0 = time.perf_counter()
            result = put_dir(staged, target)
            upload_s = time.perf_counter() - t0
            self.uploads.append({"step": step, "stage_s": stage_s, "upload_s": upload_s,
                                 "bytes": result.manifest["total_bytes"], "sent": len(result.uploaded)})
            print(f"checkpoint upload: step {step} to {target} ({result.manifest['total_bytes'] / 1e6:.1f} MB, "
                  f"{len(result.uploaded)} files sent) in {upload_s:.2f} s", flush=True)
        except BaseException as e:  # reported by the next upload or close(): the run must not end without it
            self.error = e
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _join(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"checkpoint upload to {self.uri} failed: {error}") from error


def _stage(out: Path) -> Path:
    """A copy of ``out`` that training no longer writes to: hard links, or copies where links fail."""
    staged = Path(tempfile.mkdtemp(prefix="animegen-ckpt-upload-"))
    for src in sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")):
        dest = staged / src.relative_to(out)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.name in COPIED:
            shutil.copy2(src, dest)
            continue
        try:
            os.link(src, dest)
        except OSError:
            shutil.copy2(src, dest)
    return staged


__all__ = ["CHECKPOINT_ROOT_ENV", "SLOTS", "CheckpointUploader", "checkpoint_root", "latest", "restore",
           "task_checkpoint_uri"]
