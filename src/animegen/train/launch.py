"""Training in N data-parallel processes: one way to start them, used by ``animegen train --nproc N``, the
pipeline's train and transfer tasks on all of a pod's GPUs, and the multi-node TrainJob.

:func:`train_processes` with ``nproc`` 1 is the in-process call (``run_train`` / ``run_transfer``). With more, it
starts ``python -m torch.distributed.run ... -m animegen.train.launch JOB`` (:func:`torchrun_command`), where
``JOB`` is the call itself as JSON (config, data, output, resume, source model, the options kept over the
source's): every rank makes exactly the call one process would make (animegen.parallel splits the batch), so a
run does not depend on how it was launched. The job travels on the command line, not in a file, so the same
command runs on every node of a multi-node job with nothing shared but the data and the object store.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from animegen.train.config import TrainConfig
from animegen.train.loop import TrainResult, run_train, run_transfer


class TrainingProcessesFailed(RuntimeError):
    """The torchrun job exited non-zero (a rank failed or was killed); its output is above in the log."""


def job(cfg: TrainConfig, data: str | Path, out: str | Path, resume: bool = False,
        init_model: str | Path | None = None, keep: Iterable[str] = ()) -> dict[str, Any]:
    """The training call as a JSON-able dict (what every rank runs)."""
    return {"config": cfg.to_dict(), "data": str(data), "out": str(out), "resume": bool(resume),
            "init_model": str(init_model) if init_model else None, "keep": sorted(keep)}


def torchrun_command(job_doc: dict[str, Any], nproc: int, nnodes: int = 1, python: str = sys.executable
                     ) -> list[str]:
    """The command that runs ``job_doc`` in ``nproc`` processes per node on ``nnodes`` nodes. One node: torchrun's
    ``--standalone`` rendezvous. More: the rendezvous comes from the environment a Kubeflow Trainer / Training
    Operator pod is given (torchrun reads ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
    ``PET_MASTER_PORT``; ``MASTER_ADDR`` / ``MASTER_PORT`` / ``RANK`` on the older operator's pods)."""
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc {nproc} and nnodes {nnodes}: both must be >= 1")
    run = [python, "-m", "torch.distributed.run"]
    run += ["--standalone"] if nnodes == 1 else [f"--nnodes={nnodes}"]
    return run + [f"--nproc_per_node={nproc}", "-m", "animegen.train.launch",
                  json.dumps(job_doc, separators=(",", ":"))]


def local_data(uri: str) -> str:
    """A Dataset URI training can open: an ``s3://`` / ``minio://`` Dataset (a multi-node job's data, which every
    node reads from the object store) is mirrored into the local cache first, one process of a node at a time
    (the first downloads, the others find it cached); anything else is returned as it is."""
    from animegen.store.uris import as_s3, is_s3

    if not is_s3(uri):
        return uri
    import fcntl

    from animegen.data.sources import default_cache_dir, materialize

    cache = default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".s3-dataset.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return str(materialize(as_s3(uri).rstrip("/") + "/", cache / "work").root)


def run_job(job_doc: dict[str, Any]) -> TrainResult:
    """The call ``job_doc`` describes, in this process (a rank of the job, or the only process)."""
    cfg = TrainConfig.from_dict(job_doc["config"])
    data = local_data(job_doc["data"])
    if job_doc.get("init_model"):
        return run_transfer(cfg, job_doc["init_model"], data, job_doc["out"], resume=job_doc["resume"],
                            keep=job_doc.get("keep") or ())
    return run_train(cfg, data, job_doc["out"], resume=job_doc["resume"])


def train_processes(cfg: TrainConfig, data: str | Path, out: str | Path, resume: bool = False, nproc: int = 1,
                    init_model: str | Path | None = None, keep: Iterable[str] = ()) -> TrainResult:
    """``run_train`` (or ``run_transfer`` from ``init_model``) in ``nproc`` data-parallel processes on this
    machine; ``cfg.batch`` is the global batch. Raises :class:`TrainingProcessesFailed` when a process fails (the
    Model directory then holds the last complete checkpoint: resume it)."""
    doc = job(cfg, data, out, resume, init_model, keep)
    if nproc <= 1:
        return run_job(doc)
    cmd = torchrun_command(doc, nproc)
    print(f"launching {nproc} training processes: {' '.join(cmd[1:-1])} JOB", flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise TrainingProcessesFailed(f"{nproc} training processes exited with status {code} (a rank failed or "
                                      f"was killed; its error is above); the last complete checkpoint is in {out}: "
                                      f"rerun with resume to continue")
    summary = json.loads((Path(out) / "summary.json").read_text())
    return TrainResult(**{k: summary[k] for k in TrainResult.__dataclass_fields__} | {"out": Path(out)})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m animegen.train.launch JOB_JSON (one rank of a torchrun job; see "
              "animegen.train.launch)", file=sys.stderr)
        return 2
    from animegen import parallel

    try:
        run_job(json.loads(args[0]))
    finally:
        parallel.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
