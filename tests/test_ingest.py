"""Tests for the ingest stage: validation, conversion, preprocessing, packing, splits, growth, run_ingest."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT
from PIL import Image

from animegen.data import open_dataset
from animegen.data.augment import Growth, apply_transform, plan_growth
from animegen.data.dataset import open_synthetic
from animegen.data.ingest import IngestConfig, run_ingest
from animegen.data.pack import PackWriter
from animegen.data.preprocess import XDoG, fit_square, preprocess
from animegen.data.splits import HELDOUT, TRAIN, assign_splits, class_mix_distance
from animegen.data.validate import load_image, reason_code

MLDS = ROOT.parent / "shared" / "datasets" / "mlds-anime-faces-64.zip"
RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------ fixtures
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height pixels (valid CRCs), with almost no data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _noise(h: int, w: int, c: int = 3) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


def fixture_files() -> tuple[dict[str, bytes], dict[str, str]]:
    """The issue's planted files: (name -> bytes, bad name -> expected reason code).

    Good: two plain RGB images, a 16-bit PNG, an RGBA PNG, a CMYK JPEG (converted, kept).
    Bad: zero bytes, a truncated JPEG, text named .png, a 1x1 image, a header claiming 100000x100000 pixels.
    """
    jpeg = _encode(Image.fromarray(_noise(96, 96)), "JPEG", quality=90)
    grey16 = Image.fromarray((np.arange(48 * 48).reshape(48, 48) * 28).astype(np.uint16))
    files = {
        "good/a.jpg": _encode(Image.fromarray(_noise(80, 64)), "JPEG", quality=90),
        "good/b.png": _encode(Image.fromarray(_noise(40, 40)), "PNG"),
        "grey16.png": _encode(grey16, "PNG"),
        "rgba.png": _encode(Image.new("RGBA", (40, 40), (255, 0, 0, 128)), "PNG"),
        "cmyk.jpg": _encode(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"),
        "empty.jpg": b"",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "text.png": b"this is not a PNG\n",
        "tiny.png": _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        "bomb.png": _png_header_only(100_000, 100_000),
    }
    bad = {"empty.jpg": "empty_file", "truncated.jpg": "truncated_or_corrupt", "text.png": "not_an_image",
           "tiny.png": "too_small", "bomb.png": "decompression_bomb"}
    return files, bad


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def index_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


CFG = {"resolution": 16, "min_side": 8, "holdout": 0.0}


# ------------------------------------------------------------------------------------------------ validate
def test_load_image_on_the_fixture(tmp_path):
    files, bad = fixture_files()
    write_tree(tmp_path, files)
    for name in files:
        img, reason = load_image(tmp_path / name, min_side=8)
        if name in bad:
            assert img is None and reason_code(reason) == bad[name], (name, reason)
        else:
            assert reason is None and img.mode in ("RGB", "L"), (name, reason)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the global limit is restored
    Image.new("RGB", (40, 40)).save(tmp_path / "page.eps")  # EPS would run Ghostscript: never opened
    assert reason_code(load_image(tmp_path / "page.eps")[1]) == "not_an_image"


def test_conversions(tmp_path):
    def load(name: str, img: Image.Image, fmt: str = "PNG", **kw) -> np.ndarray:
        (tmp_path / name).write_bytes(_encode(img, fmt, **kw))
        out, reason = load_image(tmp_path / name, min_side=4)
        assert reason is None, reason
        return np.asarray(out)

    rgba = load("rgba.png", Image.new("RGBA", (8, 8), (255, 0, 0, 128)))
    assert rgba.shape == (8, 8, 3) and np.abs(rgba[0, 0].astype(int) - (255, 127, 127)).max() <= 1  # on white
    la = load("la.png", Image.new("LA", (8, 8), (0, 0)))
    assert la.shape == (8, 8) and (la == 255).all()  # fully transparent black -> white, still grey
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.info["transparency"] = 0
    assert (load("p.png", p)[0, 0] == (10, 200, 30)).all()
    p_transparent = Image.new("P", (8, 8), 0)
    p_transparent.putpalette([0, 0, 0] * 256)
    assert (load("pt.png", p_transparent, transparency=0) == 255).all()
    cmyk = load("cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    assert cmyk.shape == (8, 8, 3) and np.abs(cmyk.astype(int) - (255, 0, 0)).max() <= 8
    values = np.array([[0, 1000, 257 * 100, 32896, 65535, 65535, 65535, 65535]] * 8, np.uint16)
    grey16 = load("g16.png", Image.fromarray(values))
    assert grey16.dtype == np.uint8 and grey16[0].tolist() == [0, 4, 100, 128, 255, 255, 255, 255]  # scaled
    one = load("one.png", Image.new("1", (8, 8), 1))
    assert one.shape == (8, 8) and (one == 255).all()
    floats = load("f.tiff", Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF")
    assert (floats == 128).all()
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * 759)
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first, _ = load_image(tmp_path / "anim.gif", min_side=4)
    assert tuple(np.asarray(first)[0, 0]) == (255, 0, 0)


# ------------------------------------------------------------------------------------------------ preprocess
def test_crop_and_pad():
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = (255, 0, 0)
    a[:, 10:30] = (0, 255, 0)
    a[:, 30:] = (0, 0, 255)
    img = Image.fromarray(a)
    crop = np.asarray(fit_square(img, "center_crop"))
    assert crop.shape == (20, 20, 3) and (crop == (0, 255, 0)).all()
    pad = np.asarray(fit_square(img, "pad", "white"))
    assert pad.shape == (40, 40, 3) and (pad[:10] == 255).all() and (pad[10:30] == a).all() and (pad[30:] == 255).all()
    edge = np.asarray(fit_square(img, "pad", "edge"))
    assert (edge[:10] == a[0]).all() and (edge[30:] == a[-1]).all()
    tall = np.asarray(fit_square(Image.fromarray(a.transpose(1, 0, 2)), "center_crop"))
    assert tall.shape == (20, 20, 3) and (tall == (0, 255, 0)).all()
    with pytest.raises(ValueError, match="valid: center_crop, pad"):
        fit_square(img, "stretch")


def test_filters_modes_and_lineart():
    img = Image.fromarray(_noise(64, 64))
    outs = {f: preprocess(img, 16, filter=f) for f in ("bilinear", "lanczos", "box", "bicubic")}
    assert all(o.shape == (16, 16, 3) and o.dtype == np.uint8 for o in outs.values())
    assert len({o.tobytes() for o in outs.values()}) == 4  # every filter gives a different result
    box = np.asarray(img, float).reshape(16, 4, 16, 4, 3).mean((1, 3))
    assert np.abs(outs["box"] - box).max() <= 1  # box = the mean of each 4x4 cell
    grey = preprocess(img, 16, mode="grayscale")
    assert grey.shape == (16, 16, 1)
    face = Image.fromarray(open_synthetic("synthetic:?n=1&seed=3", 64).images[0])
    lines = preprocess(face, 64, mode="lineart")
    assert lines.shape == (64, 64, 1) and lines.dtype == np.uint8
    white, black = (lines >= 230).mean(), (lines <= 25).mean()
    assert white > 0.5 and 0.03 < black < 0.45 and white + black > 0.85  # mostly white paper, inked lines
    flat = preprocess(Image.new("RGB", (32, 32), (200, 180, 170)), 32, mode="lineart")
    assert (flat == 255).all()  # no edges, light: no ink
    heavier = preprocess(face, 64, mode="lineart", xdog=XDoG(epsilon=0.7))
    assert (heavier <= 25).mean() > black  # a higher threshold inks more


# ------------------------------------------------------------------------------------------------ packing
def test_pack_writer_round_trip(tmp_path):
    images = _noise(7 * 8, 8, 1).reshape(7, 8, 8, 1)
    with PackWriter(tmp_path, capacity=50, resolution=8, channels=1, window_bytes=3 * 64) as w:
        for im in images:
            w.append(im)
        assert (w.read(5) == images[5]).all()
        path = w.close()
    assert path == tmp_path / "images.npy" and not (tmp_path / "images.npy.tmp").exists()
    for mmap_mode in (None, "r"):
        back = np.load(path, mmap_mode=mmap_mode)
        assert back.shape == (7, 8, 8, 1) and back.dtype == np.uint8 and (back == images).all()
    ref = io.BytesIO()
    np.save(ref, images)
    assert path.read_bytes() == ref.getvalue()  # the fixed header is np.save's own; file truncated
    with PackWriter(tmp_path / "b", capacity=4, resolution=8, channels=1) as w:
        for im in images[:3]:
            w.append(im)
        w.close(count=2)
    assert np.load(tmp_path / "b" / "images.npy").shape == (2, 8, 8, 1)
    with pytest.raises(RuntimeError), PackWriter(tmp_path / "c", 4, 8, 1) as w:
        w.append(images[0])
        raise RuntimeError("killed")
    assert list((tmp_path / "c").iterdir()) == []
    with pytest.raises(ValueError, match="expected uint8"):
        PackWriter(tmp_path / "d", 4, 8, 3).append(images[0])


# ------------------------------------------------------------------------------------------------ splits
def test_block_split_is_deterministic_and_keeps_blocks_whole():
    rows = [{"id": i} for i in range(1000)]
    counts = assign_splits(rows, 0.1, block=32, seed=5)
    first = [r["split"] for r in rows]
    assert counts == {TRAIN: first.count(TRAIN), HELDOUT: first.count(HELDOUT)}
    assert abs(counts[HELDOUT] - 100) <= 32
    assign_splits(rows, 0.1, block=32, seed=5)
    assert [r["split"] for r in rows] == first
    assign_splits(rows, 0.1, block=32, seed=6)
    assert [r["split"] for r in rows] != first
    for b in range(0, 1000, 32):
        assert len(set(first[b:b + 32])) == 1
    assert assign_splits(rows, 0.0)[HELDOUT] == 0


def test_block_split_keeps_the_class_mix_unlike_an_id_range_split():
    """ids sorted by class (like MLDS): 12 classes x 97 ids, blocks of 4, 20 % held out."""
    classes = [i // 97 for i in range(12 * 97)]
    rows = [{"id": i} for i in range(len(classes))]
    by_range = [TRAIN if i < 0.8 * len(rows) else HELDOUT for i in range(len(rows))]
    assert class_mix_distance(classes, by_range) > 0.7  # the last ids: 3 of 12 classes
    for seed in range(3):
        assign_splits(rows, 0.2, block=4, seed=seed)
        splits = [r["split"] for r in rows]
        assert class_mix_distance(classes, splits) < 0.12
        for c in range(12):
            held = sum(s == HELDOUT for k, s in zip(classes, splits) if k == c)
            assert 0.12 <= held / 97 <= 0.28


def test_group_split():
    rows = [{"id": i, "character": f"c{i % 37}"} for i in range(740)]
    counts = assign_splits(rows, 0.25, group="character", seed=1)
    assert abs(counts[HELDOUT] - 185) <= 20
    sides: dict[str, set] = {}
    for r in rows:
        sides.setdefault(r["character"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    with pytest.raises(ValueError, match="'artist' is not a field"):
        assign_splits(rows, 0.1, group="artist")


# ------------------------------------------------------------------------------------------------ growth
def test_growth_plan_and_transform():
    plan = plan_growth([3, 5, 8], 10, seed=1)
    assert len(plan) == 7 and plan == plan_growth([3, 5, 8], 10, seed=1)
    assert {src for src, _ in plan} == {3, 5, 8}
    assert all(abs(p["angle"]) <= 10 and 1 <= p["zoom"] <= 1.2 for _, p in plan)
    assert plan_growth([1, 2], 2) == []
    img = Image.fromarray(_noise(32, 32))
    same = apply_transform(img, {"angle": 0.0, "zoom": 1.0, "shift_x": 0.0, "shift_y": 0.0})
    assert (np.asarray(same) == np.asarray(img)).all()
    white = Image.new("RGB", (32, 32), (250, 250, 250))
    turned = np.asarray(apply_transform(white, {"angle": 9.0, "zoom": 1.1, "shift_x": 1.0, "shift_y": -1.0}))
    assert turned.shape == (32, 32, 3) and (turned >= 245).all()  # corners filled by reflection, not black
    with pytest.raises(ValueError, match="valid: reflect, edge"):
        Growth(fill="black")


# ------------------------------------------------------------------------------------------------ run_ingest
def test_ingest_fixture_directory(tmp_path):
    files, bad = fixture_files()
    src = write_tree(tmp_path / "src", files)
    (tmp_path / "outside.png").write_bytes(files["good/b.png"])
    os.symlink(tmp_path / "outside.png", src / "escape.png")
    (src / "notes.txt").write_text("ignored")
    out = run_ingest(IngestConfig(**CFG), str(src), tmp_path / "out")
    m, rows = manifest_of(out), index_of(out)
    good = sorted(set(files) - set(bad), key=str.lower)
    assert sorted((r["source"] for r in rows), key=str.lower) == good
    assert {s["path"]: reason_code(s["reason"]) for s in m["skipped"]} == {**bad, "escape.png": "unsafe_link"}
    assert m["kept"] == m["count"] == len(good) == 5 and m["ignored"][0]["path"] == "notes.txt"
    ds = open_dataset(str(out))
    assert ds.images.shape == (5, 16, 16, 3)
    by_source = {r["source"]: r["id"] for r in rows}
    assert (ds.images[by_source["rgba.png"]].astype(int) - (255, 127, 127)).__abs__().max() <= 2
    assert rows[by_source["good/b.png"]]["sha256"] == hashlib.sha256(files["good/b.png"]).hexdigest()


def test_ingest_fixture_zip_acceptance(tmp_path):
    """The acceptance case: a zip with unsafe entries and the bad files yields exactly the good images, lists
    every bad entry with its reason, and writes nothing outside its target."""
    files, bad = fixture_files()
    escape_abs = tmp_path / "abs_escape.png"
    archive = tmp_path / "fixture.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in files.items():
            zf.writestr(f"faces/{name}", data)
        zf.writestr("faces/../../dotdot.png", files["good/b.png"])
        zf.writestr(str(escape_abs), files["good/b.png"])
        link = zipfile.ZipInfo("faces/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
        zf.writestr("faces/tags.csv", "0,blonde_hair red_eyes\n")
    assert str(escape_abs) in zipfile.ZipFile(archive).namelist()
    before = tree(tmp_path)
    out = run_ingest(IngestConfig(**CFG), str(archive), tmp_path / "out")
    m, rows = manifest_of(out), index_of(out)
    good = {f"faces/{n}" for n in set(files) - set(bad)}
    assert {r["source"] for r in rows} == good and m["count"] == 5
    assert {s["path"]: reason_code(s["reason"]) for s in m["skipped"]} == {f"faces/{n}": r for n, r in bad.items()}
    refused = {r["path"]: r["reason"] for r in m["refused"]}
    assert set(refused) == {"faces/../../dotdot.png", str(escape_abs), "faces/link.png"}
    assert "symbolic link" in refused["faces/link.png"] and ".." in refused["faces/../../dotdot.png"]
    assert "absolute" in refused[str(escape_abs)]
    assert m["refused_count"] == 3 and m["skipped_by_reason"] == {r: 1 for r in bad.values()}
    assert m["source_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert m["tag_files"][0]["file"] == "tags/tags.csv" and (out / "tags" / "tags.csv").is_file()
    assert not escape_abs.exists() and not (tmp_path.parent / "dotdot.png").exists()
    assert {p for p in tree(tmp_path) - before if not p.startswith("out/")} == {"out"}
    assert tree(out) == {"images.npy", "index.jsonl", "manifest.json", "tags", "tags/tags.csv"}
    assert open_dataset(str(out)).images.shape == (5, 16, 16, 3)


def test_duplicates_are_counted_and_dropped(tmp_path):
    a = _encode(Image.fromarray(_noise(16, 16)), "PNG")
    src = write_tree(tmp_path / "src", {"1.png": a, "2.png": _encode(Image.fromarray(_noise(16, 16)), "PNG"),
                                        "10.png": a})
    m = manifest_of(run_ingest(IngestConfig(**CFG), str(src), tmp_path / "dedupe"))
    assert m["count"] == 2 and m["duplicates_count"] == 1
    assert m["duplicates"] == [{"path": "10.png", "duplicate_of": "1.png"}]  # natural order: 1, 2, 10
    m = manifest_of(run_ingest(IngestConfig(dedupe=False, **CFG), str(src), tmp_path / "keep"))
    assert m["count"] == 3 and m["duplicates_count"] == 1 and not m["duplicates_dropped"]
    (src / "tags.csv").write_text("1,x\n")
    for _ in range(2):  # an output inside the source is not read back as source files
        m = manifest_of(run_ingest(IngestConfig(**CFG), str(src), src / "packed", overwrite=True))
        assert m["count"] == 2 and m["ignored_count"] == 0 and len(m["tag_files"]) == 1


def test_synthetic_ingest_carries_tags_and_modes(tmp_path):
    uri = "synthetic:?n=40&seed=2&hair=blonde,blue&eyes=red,green"
    out = run_ingest(IngestConfig(resolution=16, holdout=0.25, split_block=4), uri, tmp_path / "rgb")
    faces = open_synthetic(uri, 16)
    rows, m = index_of(out), manifest_of(out)
    assert [r["tags"] for r in rows] == [[f"{x['hair']}_hair", f"{x['eye']}_eyes"] for x in faces.meta]
    assert [r["stem"] for r in rows] == [str(i) for i in range(40)]
    ds = open_dataset(str(out), resolution=16)
    assert (ds.images == faces.images).all() and ds.labels is None
    assert m["splits"] == {HELDOUT: 8, TRAIN: 32} and m["mode"] == "rgb" and m["source"] == uri
    assert [r["split"] for r in rows] == [r["split"] for r in index_of(
        run_ingest(IngestConfig(resolution=16, holdout=0.25, split_block=4, mode="grayscale"), uri,
                   tmp_path / "grey"))]
    grey = open_dataset(str(tmp_path / "grey"))
    assert grey.images.shape == (40, 16, 16, 1) and manifest_of(tmp_path / "grey")["channels"] == 1


def test_growth_in_ingest_uses_train_only(tmp_path):
    cfg = IngestConfig(resolution=16, holdout=0.25, split_block=3, grow_to=20)
    out = run_ingest(cfg, "synthetic:?n=12&seed=1", tmp_path / "a")
    rows, m = index_of(out), manifest_of(out)
    originals = [r for r in rows if "augmented_from" not in r]
    grown = [r for r in rows if "augmented_from" in r]
    train_ids = {r["id"] for r in originals if r["split"] == TRAIN}
    assert len(originals) == 12 and len(train_ids) == 9 and len(grown) == 11 and m["grown"] == 11
    assert m["count"] == 23 and m["splits"] == {HELDOUT: 3, TRAIN: 20}
    for r in grown:
        src = rows[r["augmented_from"]]
        assert src["id"] in train_ids and r["split"] == TRAIN and r["tags"] == src["tags"]
        assert set(r["augment"]) == {"angle", "zoom", "shift_x", "shift_y", "fill"}
    again = run_ingest(cfg, "synthetic:?n=12&seed=1", tmp_path / "b")
    assert (np.load(out / "images.npy") == np.load(again / "images.npy")).all()
    assert index_of(again) == rows


def test_refuses_complete_output_and_killed_run_leaves_no_manifest(tmp_path):
    cfg, source = IngestConfig(resolution=16, holdout=0.0), "synthetic:?n=4"
    out = run_ingest(cfg, source, tmp_path / "out")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run_ingest(cfg, source, out)
    bad_src = write_tree(tmp_path / "bad", {"x.png": b"not an image"})
    with pytest.raises(ValueError, match="no images kept"):
        run_ingest(IngestConfig(**CFG), str(bad_src), out, overwrite=True)
    assert not (out / "manifest.json").exists()  # the old dataset is no longer taken as complete
    assert not list(out.glob("*.tmp")) and not (out / ".work").exists() and not (out / "images.npy").exists()
    assert run_ingest(cfg, source, out) == out  # an incomplete directory is simply rebuilt
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="not an ingest output"):
        run_ingest(cfg, source, tmp_path / "other")


def test_config_round_trip_and_errors():
    cfg = IngestConfig(mode="lineart", fit="pad", grow_to=400, split_group="stem")
    assert IngestConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="valid: rgb, grayscale, lineart"):
        IngestConfig(mode="sepia")
    with pytest.raises(ValueError, match="unknown IngestConfig option"):
        IngestConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="holdout"):
        IngestConfig(holdout=1.0)
    # the source is the stage's input, not an option: an old config that names it is refused, saying so
    with pytest.raises(ValueError, match="'source' .* is no longer an ingest option.*animegen ingest SOURCE"):
        IngestConfig.from_dict({"source": "x.zip", "resolution": 32})


def test_cli_refuses_an_old_config_that_names_the_source(tmp_path, capsys):
    from animegen.cli import main

    (tmp_path / "old.yaml").write_text("source: synthetic:?n=4\nresolution: 16\n")
    assert main(["ingest", "synthetic:?n=4", "--out", str(tmp_path / "ds"), "--config", str(tmp_path / "old.yaml"),
                 "--no-progress"]) == 2
    assert "'source' ('synthetic:?n=4') is no longer an ingest option" in capsys.readouterr().err
    assert not (tmp_path / "ds" / "manifest.json").exists()
    assert main(["ingest", "synthetic:?n=4", "--out", str(tmp_path / "ds"), "--resolution", "16",
                 "--no-progress"]) == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["source"] == "synthetic:?n=4" and "source" not in manifest["config"]


@pytest.mark.skipif(not MLDS.is_file(), reason=f"{MLDS} not present")
def test_mlds_first_500(tmp_path):
    out = run_ingest(IngestConfig(limit=500, split_block=8), str(MLDS), tmp_path / "mlds")
    m, rows = manifest_of(out), index_of(out)
    assert m["candidates"] == 36_740 and m["count"] == m["kept"] == 500 - m["duplicates_count"]
    assert m["skipped_count"] == 0 and m["refused_count"] == 0
    assert [r["stem"] for r in rows[:3]] == ["0", "1", "2"]  # natural order keeps the MLDS id order
    with open(out / "tags" / "tags.csv") as f:
        tags = {row[0]: row[1] for row in csv.reader(f)}
    assert all(r["stem"] in tags for r in rows)
    assert open_dataset(str(out), resolution=64).images.shape == (m["count"], 64, 64, 3)
