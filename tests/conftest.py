"""Fixtures for every test module: tests run against the working tree; the S3 server fixture is registered here,
once (``s3_server``: a real SeaweedFS S3 server per module, see s3server.py). Helpers live in helpers.py."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the working tree even without an install
torch.set_num_threads(1)  # tiny models: one thread is fastest and does not fight parallel jobs

from s3server import s3_server  # noqa: E402, F401  (the fixture, registered for every module)


@pytest.fixture
def tiny():
    """helpers.tiny_config, as a fixture."""
    from helpers import tiny_config

    return tiny_config


@pytest.fixture(autouse=True)
def _restore_environment():
    """Component functions called in-process set the task environment (S3_ENDPOINT_URL, ANIMEGEN_STORE,
    ANIMEGEN_GPUS, ...) as they do in their pod: give every test the environment it started with."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def stage_env(tmp_path_factory):
    """Pipeline stages run under kfp.local with one torch thread (tiny models; no fight with other jobs) and a fresh
    FID cache (the modules that run the pipeline locally)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.setenv("MKL_NUM_THREADS", "1")
    mp.setenv("ANIMEGEN_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
