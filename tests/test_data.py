"""Tests for animegen.data: synthetic faces, opening datasets, the packed Dataset artifact."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from animegen.data import ImageSet, open_dataset, synthetic_faces, write_packed
from animegen.data.synthetic import EYE_COLOURS, EYE_RGB, HAIR_COLOURS, HAIR_RGB


def test_generate_is_deterministic_and_prefix_stable():
    a = synthetic_faces(6, seed=1, resolution=32)
    b = synthetic_faces(6, seed=1, resolution=32)
    prefix = synthetic_faces(3, seed=1, resolution=32)
    other = synthetic_faces(6, seed=2, resolution=32)
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a[:3], prefix[:3]):
        np.testing.assert_array_equal(x[:3], y)
    assert not np.array_equal(a[0], other[0])


@pytest.mark.parametrize("res", [16, 32, 64])
def test_generate_shapes(res):
    images, hair, eyes, hair_names, eye_names = synthetic_faces(20, seed=0, resolution=res)
    assert images.shape == (20, res, res, 3) and images.dtype == np.uint8
    assert hair.dtype == eyes.dtype == np.int64
    assert hair_names == HAIR_COLOURS and eye_names == EYE_COLOURS
    assert 0 <= hair.min() and hair.max() < 12 and 0 <= eyes.min() and eyes.max() < 10
    assert images.std() > 20  # an actual drawing, not a flat fill


def _nearest(pixel: np.ndarray, palette: np.ndarray) -> int:
    """Index of the palette colour closest to ``pixel``, allowing the drawing's shading (x0.75..1.1)."""
    scale = np.clip(palette @ pixel / (palette**2).sum(1), 0.75, 1.1)
    return int(np.linalg.norm(pixel - scale[:, None] * palette, axis=1).argmin())


@pytest.mark.parametrize(
    "kind, vocab, rgb", [("hair", HAIR_COLOURS, HAIR_RGB), ("eyes", EYE_COLOURS, EYE_RGB)]
)
def test_colour_labels_match_pixels(kind, vocab, rgb):
    """Render each face once per colour: the pixels that change are the hair (or irises); their commonest
    value must be the labelled colour."""
    palette = np.array([rgb[c] for c in vocab], float)
    for seed in range(3):
        renders = np.stack([synthetic_faces(1, seed, 128, **{kind: [c]})[0][0] for c in vocab]).astype(int)
        region = (renders.max(0) - renders.min(0)).sum(-1) > 60
        assert region.sum() > 100
        for j, render in enumerate(renders):
            values, counts = np.unique(render[region], axis=0, return_counts=True)
            assert vocab[_nearest(values[counts.argmax()], palette)] == vocab[j]


def test_labels_index_the_drawn_colours():
    images, hair, eyes, hair_names, eye_names = synthetic_faces(5, seed=4, resolution=32)
    for i in range(5):
        alone = synthetic_faces(i + 1, 4, 32, hair=[hair_names[hair[i]]], eyes=[eye_names[eyes[i]]])[0][i]
        np.testing.assert_array_equal(images[i], alone)


def test_colour_subsets_and_unknown_colour():
    _, hair, eyes, hair_names, eye_names = synthetic_faces(60, hair=["blue", "blonde"], eyes=["red"])
    assert hair_names == ["blonde", "blue"] and eye_names == ["red"]
    assert set(hair.tolist()) == {0, 1} and set(eyes.tolist()) == {0}
    with pytest.raises(ValueError, match="valid: aqua, black"):
        synthetic_faces(2, hair=["teal"])


def test_synthetic_uri_label_modes():
    base = "synthetic:?n=40&seed=3&resolution=32&hair=blonde,blue,black&eyes=red,blue"
    pair = open_dataset(base)
    assert pair.resolution == 32 and len(pair) == 40 and pair.num_classes == 6
    assert pair.class_names == [
        "black hair blue eyes", "black hair red eyes", "blonde hair blue eyes",
        "blonde hair red eyes", "blue hair blue eyes", "blue hair red eyes",
    ]
    for label, meta in zip(pair.labels, pair.meta):
        assert pair.class_names[label] == f"{meta['hair']} hair {meta['eye']} eyes"
    cond = pair.conditions()
    assert cond.dtype == np.float32 and cond.shape == (40, 6) and (cond.argmax(1) == pair.labels).all()

    multi = open_dataset(base + "&labels=multi_hot")
    assert multi.class_names == ["black hair", "blonde hair", "blue hair", "blue eyes", "red eyes"]
    assert multi.labels.dtype == np.float32 and (multi.labels.sum(1) == 2).all()
    assert (multi.labels[:, :3].sum(1) == 1).all()
    np.testing.assert_array_equal(multi.conditions(), multi.labels)

    hair = open_dataset(base + "&labels=hair")
    assert hair.class_names == ["black hair", "blonde hair", "blue hair"]
    np.testing.assert_array_equal(hair.labels, pair.labels // 2)
    eyes = open_dataset(base + "&labels=eyes")
    assert eyes.class_names == ["blue eyes", "red eyes"]
    np.testing.assert_array_equal(eyes.labels, pair.labels % 2)
    none = open_dataset(base + "&labels=none")
    assert none.labels is None and none.class_names == [] and none.conditions() is None
    np.testing.assert_array_equal(none.images, pair.images)


def test_synthetic_uri_defaults_and_errors():
    small = open_dataset("synthetic:?n=3", resolution=48)
    assert small.images.shape == (3, 48, 48, 3) and small.num_classes == 120
    with pytest.raises(ValueError, match="valid: n, seed, resolution, hair, eyes, labels"):
        open_dataset("synthetic:?count=3")
    with pytest.raises(ValueError, match="no images"):
        open_dataset("synthetic:?n=0")


def test_imageset_subset():
    ds = open_dataset("synthetic:?n=10&resolution=16&labels=hair")
    sub = ds.subset([1, 3])
    np.testing.assert_array_equal(sub.images, ds.images[[1, 3]])
    np.testing.assert_array_equal(sub.labels, ds.labels[[1, 3]])
    assert sub.meta == [ds.meta[1], ds.meta[3]] and sub.class_names == ds.class_names


def test_folder_of_images(tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    Image.new("RGBA", (20, 20), (0, 0, 255, 0)).save(tmp_path / "b.png")  # fully transparent
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match="c.jpg"):
        ds = open_dataset(str(tmp_path), resolution=16)
    assert ds.images.shape == (2, 16, 16, 3) and ds.labels is None
    assert (np.abs(ds.images[0].astype(int) - (200, 10, 10)) <= 2).all()
    assert (ds.images[1] == 255).all()
    assert [m["source"] for m in ds.meta] == ["a.png", "b.png"]
    with pytest.warns(UserWarning, match="c.jpg"):
        assert open_dataset(f"file://{tmp_path}", resolution=16).resolution == 16


def test_image_folder_classes(tmp_path):
    for name in ["dogs/x.png", "cats/y.png", "dogs/z.png"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    ds = open_dataset(str(tmp_path))
    assert ds.resolution == 64 and ds.class_names == ["cats", "dogs"] and ds.labels.tolist() == [0, 1, 1]
    Image.new("RGB", (8, 8)).save(tmp_path / "loose.png")
    assert open_dataset(str(tmp_path)).labels is None


@pytest.mark.parametrize("labels", ["pair", "multi_hot", "none"])
def test_packed_round_trip(tmp_path, labels):
    ds = open_dataset(f"synthetic:?n=12&resolution=16&hair=red,blue&labels={labels}")
    split = [{"split": "train"}] * 12
    out = write_packed(ds, tmp_path / "ds", extra_index=split, manifest_extra={"mode": "test"})
    back = open_dataset(str(out))
    np.testing.assert_array_equal(back.images, ds.images)
    assert back.class_names == ds.class_names
    if ds.labels is None:
        assert back.labels is None
    else:
        np.testing.assert_array_equal(back.labels, ds.labels)
        assert back.labels.dtype == ds.labels.dtype
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 12 and manifest["resolution"] == 16 and manifest["mode"] == "test"
    assert manifest["content_hash"] == hashlib.sha256((out / "images.npy").read_bytes()).hexdigest()
    rows = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert rows[5]["id"] == 5 and rows[5]["split"] == "train" and rows[5]["hair"] == ds.meta[5]["hair"]
    assert not list(out.glob("*.tmp"))
    with pytest.raises(ValueError, match="re-ingest"):
        open_dataset(str(out), resolution=32)
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="incomplete dataset"):
        open_dataset(str(out))


@pytest.mark.parametrize("uri", ["https://example.com/faces.zip", "s3://bucket/faces", "kaggle:user/faces"])
def test_unsupported_uri(uri):
    with pytest.raises(ValueError, match="animegen ingest.*supported now"):
        open_dataset(uri)


def test_missing_archive_and_empty_folder(tmp_path):
    (tmp_path / "faces.zip").write_bytes(b"PK")
    with pytest.raises(ValueError, match="animegen ingest"):
        open_dataset(str(tmp_path / "faces.zip"))
    with pytest.raises(ValueError, match="no such directory"):
        open_dataset(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"no images found in '{tmp_path / 'empty'}'"):
        open_dataset(str(tmp_path / "empty"))


def test_imageset_rejects_inconsistent_labels():
    with pytest.raises(AssertionError):
        ImageSet(np.zeros((2, 8, 8, 3), np.uint8), np.zeros(3, np.int64), ["a"], "test")
