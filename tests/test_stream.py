"""Training on a set streamed from its memory map (animegen.train.stream) instead of held on the device: the same
batches, so the same losses and weights bit for bit, and an exact resume; the next batch is prefetched."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import tiny_config

from animegen.train import run_train
from animegen.train.checkpoint import load_checkpoint
from animegen.train.state import BatchSampler
from animegen.train.stream import StreamedImages, should_stream


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    from animegen.data.ingest import IngestConfig, run_ingest

    return str(run_ingest(IngestConfig(resolution=16, holdout=0.0), "synthetic:?n=40&resolution=16&labels=pair",
                          tmp_path_factory.mktemp("packed") / "ds"))


def losses(out) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k.startswith(("loss", "d_", "r1", "pl"))}
            for line in (out / "train_log.jsonl").read_text().splitlines()]


def same_weights(a, b) -> None:
    for key in ("G", "D", "G_ema"):
        for name, value in a[key].items():
            assert torch.equal(b[key][name], value), f"{key}.{name}"


@pytest.mark.parametrize("arch", ["dcgan", "stylegan2"])
def test_a_streamed_set_trains_exactly_as_the_device_resident_one(packed, tmp_path, capsys, arch):
    cfg = tiny_config(arch, kimg=0.096, snapshot_kimg=0, log_every=2, batch=8)
    run_train(cfg, packed, tmp_path / "device")
    streamed = tiny_config(arch, kimg=0.096, snapshot_kimg=0, log_every=2, batch=8, data_memory_fraction=1e-12)
    run_train(streamed, packed, tmp_path / "stream")  # auto placement, forced by the threshold
    assert "streamed from the memory map (placement auto" in capsys.readouterr().out
    assert losses(tmp_path / "stream") == losses(tmp_path / "device")
    same_weights(load_checkpoint(tmp_path / "device"), load_checkpoint(tmp_path / "stream"))


def test_a_streamed_run_resumes_exactly(packed, tmp_path):
    opts = dict(snapshot_kimg=0.048, log_every=2, batch=8, data_placement="stream")
    run_train(tiny_config("stylegan", kimg=0.096, **opts), packed, tmp_path / "whole")
    run_train(tiny_config("stylegan", kimg=0.048, **opts), packed, tmp_path / "cut")
    run_train(tiny_config("stylegan", kimg=0.096, **opts), packed, tmp_path / "cut", resume=True)
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    same_weights(load_checkpoint(tmp_path / "whole"), load_checkpoint(tmp_path / "cut"))


def test_streamed_batches_are_the_rows_in_order_and_the_next_one_is_prefetched(packed):
    arr = np.load(f"{packed}/images.npy", mmap_mode="r")
    images = StreamedImages(arr, torch.device("cpu"), channels_last=False)
    sampler = BatchSampler(len(arr), seed=3)
    for _ in range(5):
        idx = sampler.next(8)
        batch = images[idx]
        assert batch.dtype == torch.uint8 and batch.shape == (8, 3, 16, 16)
        assert np.array_equal(batch.permute(0, 2, 3, 1).numpy(), arr[idx.numpy()])  # idx's order, duplicates too
        images.prefetch(sampler.peek(8))
    assert images.hits == 4 and images.misses == 1  # the first batch was not prefetched
    images.prefetch(torch.tensor([1, 2]))
    assert torch.equal(images[torch.tensor([3, 1])], torch.from_numpy(arr[[3, 1]]).permute(0, 3, 1, 2))
    assert images.misses == 2  # a prefetch of other rows is not used
    assert torch.equal(images[0:4], torch.from_numpy(arr[:4]).permute(0, 3, 1, 2))
    images.close()


def test_peek_leaves_the_sampler_where_it_was():
    a, b = BatchSampler(10, seed=1), BatchSampler(10, seed=1)
    for _ in range(7):  # across permutation boundaries
        peeked = a.peek(4)
        assert torch.equal(peeked, a.next(4)) and torch.equal(peeked, b.next(4))


def test_auto_placement_streams_what_does_not_fit():
    cpu = torch.device("cpu")
    assert not should_stream(1000, cpu, "auto", 0.3) and should_stream(1000, cpu, "auto", 1e-12)
    assert should_stream(1, cpu, "stream", 0.3) and not should_stream(10**15, cpu, "device", 0.3)
    with pytest.raises(ValueError, match="data_placement"):
        should_stream(1, cpu, "disk", 0.3)
