"""Tests for animegen.labels: tag sources, the class rules, the Danbooru ResNet50 tagger, the label stage."""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, tiny_config
from torch.nn import functional as F

from animegen.data import ImageSet, open_dataset, read_packed, synthetic_faces, write_packed
from animegen.labels.danbooru import DanbooruResNet50, load_tagger, predict_tags, tag_names
from animegen.labels.label import LabelConfig, run_label
from animegen.labels.rules import BELOW_MIN, EYE_TAGS, HAIR_TAGS, ClassRules, apply_rules
from animegen.labels.tags import TagTable, join, read_tag_csv, write_prob_table

RESOURCES = ROOT / "src" / "animegen" / "labels" / "resources"
MLDS_ZIP = ROOT.parent / "shared" / "datasets" / "mlds-anime-faces-64.zip"
SIZE = 32  # tagger input size in tests: ResNet50 runs on 32 px in milliseconds

# The engineered tagger's fixed outputs: these tags get constant probabilities whatever the image.
FIXED = {"solo": 0.9, "1girl": 0.9, "age_rating_s": 0.85, "blonde_hair": 0.95, "red_eyes": 0.75,
         "third_eye": 0.1, "eyes_visible_through_hair": 0.2, "grey_hair": 0.3}


def _dataset(path: Path, n: int, rows: list[dict] | None = None, seed: int = 0) -> Path:
    """A packed Dataset of n synthetic 16 px faces with the given extra index fields."""
    images = synthetic_faces(n, seed=seed, resolution=16)[0]
    return write_packed(ImageSet(images, None, [], "test"), path, extra_index=rows)


# ------------------------------------------------------------------------------------------------ tagger
@pytest.fixture(scope="module")
def tagger_file(tmp_path_factory) -> tuple[Path, str, dict]:
    """A Danbooru ResNet50 state dict saved the way upstream publishes it, with engineered outputs:
    every colour tag and the rule tags have zero weights and a fixed bias (FIXED, else p = 0.05)."""
    torch.manual_seed(0)
    model = DanbooruResNet50(input_size=SIZE).eval()
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["1.6.running_var"].uniform_(0.5, 2.0)  # non-trivial statistics, so eval-mode BN matters
    names = tag_names()
    for tag in {*FIXED, *HAIR_TAGS, *EYE_TAGS, "grey_hair"}:
        if tag in names:
            j, p = names.index(tag), FIXED.get(tag, 0.05)
            state["1.8.weight"][j] = 0
            state["1.8.bias"][j] = math.log(p / (1 - p))
    path = tmp_path_factory.mktemp("tagger") / "danbooru-resnet50.pth"
    torch.save(state, path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), state


def test_tagger_architecture_and_upstream_key_layout():
    model = DanbooruResNet50(input_size=SIZE).eval()
    seen = {}
    model[1][2].register_forward_hook(lambda m, i, o: seen.update(head_in=i[0].shape))
    with torch.no_grad():
        out = model(torch.randn(2, 3, SIZE, SIZE))
    assert out.shape == (2, 6000) and seen["head_in"] == (2, 4096)
    assert [type(m).__name__ for m in model[1]] == ["AdaptiveConcatPool2d", "Flatten", "BatchNorm1d", "Dropout",
                                                    "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert (model[1][3].p, model[1][7].p) == (0.25, 0.5)
    state = model.state_dict()
    # RF5/danbooru-pretrained's resnet50 layout: Sequential(body = resnet50 children[:-2], head)
    assert state["0.0.weight"].shape == (64, 3, 7, 7) and "0.7.2.conv3.weight" in state
    assert state["1.4.weight"].shape == (512, 4096) and state["1.8.weight"].shape == (6000, 512)
    assert {k.split(".")[1] for k in state if k.startswith("1.")} == {"2", "4", "6", "8"}
    assert not any(k.startswith(("mean", "std")) for k in state)  # input statistics are not in the state dict
    x = torch.randn(1, 2048, 3, 3)  # fastai order: max pool first, then average pool
    pooled = model[1][0](x).flatten(1)
    assert torch.equal(pooled[:, :2048], x.amax((2, 3))) and torch.allclose(pooled[:, 2048:], x.mean((2, 3)))
    assert len(tag_names()) == 6000 and tag_names()[:3] == ("age_rating_s", "1girl", "solo")


def test_load_tagger_checks_sha256_and_layout(tagger_file, tmp_path):
    path, digest, state = tagger_file
    model = load_tagger(str(path), sha256=digest, input_size=SIZE)
    assert not model.training
    loaded = model.state_dict()
    for key in ("0.0.weight", "1.6.running_var", "1.8.bias"):
        assert torch.equal(loaded[key], state[key])
    with pytest.raises(Exception, match="(?i)sha256"):
        load_tagger(str(path), sha256="0" * 64, input_size=SIZE)
    wrong = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match="no Danbooru ResNet50 state dict"):
        load_tagger(str(wrong))
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable state dict"):
        load_tagger(str(tmp_path / "junk.pth"))


def test_predict_tags_matches_a_reference_forward_pass(tagger_file):
    path, digest, _ = tagger_file
    model = load_tagger(str(path), sha256=digest, input_size=SIZE)
    images = synthetic_faces(3, seed=3, resolution=16)[0]
    keep = ["long_hair", "smile", "blonde_hair", "not_a_danbooru_tag"]
    table = predict_tags(model, images, batch=2, keep=keep, keys=["a", "b", "c"])
    assert table.tags == keep[:3] and table.keys == ["a", "b", "c"] and table.probs.shape == (3, 3)
    stats = json.loads((RESOURCES / "danbooru_stats.json").read_text())
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    x = (x - torch.tensor(stats["mean"]).view(1, 3, 1, 1)) / torch.tensor(stats["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = torch.sigmoid(model(x))[:, [tag_names().index(t) for t in keep[:3]]].numpy()
    np.testing.assert_allclose(table.probs, ref, atol=1e-5)
    assert np.ptp(table.probs[:, 0]) > 1e-4  # an image-dependent output really depends on the image
    np.testing.assert_allclose(table.probs[:, 2], 0.95, atol=1e-6)  # an engineered constant output
    single = predict_tags(model, images, batch=1, keep=keep[:2])
    np.testing.assert_allclose(single.probs, table.probs[:, :2], atol=1e-5)
    gray = predict_tags(model, images[..., :1], batch=3, keep=keep[:1])  # grayscale input is accepted
    assert gray.probs.shape == (3, 1)


# ------------------------------------------------------------------------------------------------- rules
TAGS = ["solo", "1girl", "age_rating_s", "third_eye", "blonde_hair", "grey_hair", "blue_hair", "red_eyes",
        "green_eyes"]
ROWS = {  # key: probabilities in TAGS order, and the class (or drop reason) the paper's rules give
    "a": ([.9, .9, .9, 0, .8, 0, 0, .7, 0], "blonde hair red eyes"),  # 0.7 is >= threshold
    "b": ([.9, .9, .9, 0, .69, 0, .9, 0, .95], "blue hair green eyes"),
    "c": ([.5, .9, .9, 0, .9, 0, 0, .9, 0], "missing required tag solo"),
    "d": ([.9, .9, .9, .8, .9, 0, 0, .9, 0], "excluded tag third_eye"),
    "e": ([.9, .9, .9, 0, .9, 0, .8, .9, 0], "more than one hair colour"),
    "f": ([.9, .9, .9, 0, .1, .2, .3, .9, 0], "no hair colour"),
    "g": ([.9, .9, .9, 0, 0, .9, 0, .9, 0], "gray hair red eyes"),  # Danbooru's grey -> MLDS's gray
    "h": ([.9, .9, .9, 0, .9, 0, 0, .2, 0], "no eye colour"),
    "i": ([.9, .9, .9, 0, .9, 0, 0, .9, .9], "more than one eye colour"),
    "j": ([.9, .9, .71, 0, .9, 0, 0, .9, 0], "blonde hair red eyes"),
}


def _table(tags=TAGS, rows=ROWS) -> TagTable:
    return TagTable(list(rows), list(tags), np.array([p for p, _ in rows.values()], np.float32), "hand-made")


def _outcome(result, i):
    return result.names_of(i) if result.reasons[i] is None else result.reasons[i]


def test_pair_rules_on_a_hand_made_table():
    result = apply_rules(_table(), ClassRules())
    assert result.rules["require"] == ["solo", "1girl", "age_rating_s"]  # the tagger vocabulary has all three
    assert [_outcome(result, i) for i in range(len(ROWS))] == [c for _, c in ROWS.values()]
    assert result.class_names == ["blonde hair red eyes", "blue hair green eyes", "gray hair red eyes"]
    assert result.counts == [2, 1, 1] and result.labels.tolist() == [0, 1, -1, -1, -1, -1, 2, -1, -1, 0]
    assert result.reason_counts()["no hair colour"] == 1 and sum(result.reason_counts().values()) == 6
    assert result.empty_classes == ["blonde hair green eyes", "blue hair red eyes", "gray hair green eyes"]

    strict = apply_rules(_table(), ClassRules(threshold=0.75))
    assert _outcome(strict, 0) == "no eye colour"  # red 0.7 < 0.75
    assert _outcome(strict, 9) == "missing required tag age_rating_s"  # 0.71 < 0.75
    assert strict.class_names == ["blue hair green eyes", "gray hair red eyes"]

    at_least_two = apply_rules(_table(), ClassRules(min_per_class=2))
    assert at_least_two.class_names == ["blonde hair red eyes"] and at_least_two.counts == [2]
    assert at_least_two.dropped_classes == {"blue hair green eyes": 1, "gray hair red eyes": 1}
    assert at_least_two.reasons[1] == at_least_two.reasons[6] == BELOW_MIN

    relaxed = apply_rules(_table(), ClassRules(require=[], exclude=[]))
    assert _outcome(relaxed, 2) == _outcome(relaxed, 3) == "blonde hair red eyes"
    with pytest.raises(ValueError, match="never occur"):
        apply_rules(_table(), ClassRules(require=["highres"]))


def test_hair_eye_and_multi_hot_modes():
    hair = apply_rules(_table(), ClassRules(mode="hair"))
    assert hair.class_names == ["blonde hair", "blue hair", "gray hair"]
    assert _outcome(hair, 7) == "blonde hair" and _outcome(hair, 4) == "more than one hair colour"
    eye = apply_rules(_table(), ClassRules(mode="eye"))
    assert eye.class_names == ["green eyes", "red eyes"] and _outcome(eye, 5) == "red eyes"

    multi = apply_rules(_table(), ClassRules(mode="multi_hot"))
    assert multi.label_kind == "multi_hot" and multi.labels.dtype == np.float32
    assert multi.class_names == ["blonde hair", "blue hair", "gray hair", "green eyes", "red eyes"]
    assert _outcome(multi, 4) == ["blonde hair", "blue hair", "red eyes"]  # several colours are fine here
    assert _outcome(multi, 8) == ["blonde hair", "green eyes", "red eyes"]
    assert multi.counts == [5, 2, 1, 2, 6]
    multi = apply_rules(_table(), ClassRules(mode="multi_hot", min_per_class=3))
    assert multi.class_names == ["blonde hair", "red eyes"]
    assert multi.dropped_classes == {"blue hair": 2, "gray hair": 1, "green eyes": 2}
    assert _outcome(multi, 8) == ["blonde hair", "red eyes"]  # its green eyes went with their class
    assert _outcome(multi, 1) == BELOW_MIN  # blue hair, green eyes: nothing left
    assert _outcome(multi, 2) == "missing required tag solo" and not multi.labels[2].any()
    assert multi.counts == multi.labels.sum(0).astype(int).tolist()


def test_require_resolves_per_source_vocabulary():
    """A colour-only source (MLDS CSV, synthetic index) requires nothing by default; explicit tags it lacks
    are refused rather than dropping every image."""
    colours = TagTable(["x", "y"], ["blonde_hair", "red_eyes"], np.ones((2, 2), np.float32), "colours")
    result = apply_rules(colours, ClassRules())
    assert result.rules["require"] == [] and result.kept.all()
    with pytest.raises(ValueError, match="never occur"):
        apply_rules(colours, ClassRules(require=["solo"]))
    with pytest.raises(ValueError, match="none of the eye-colour tags"):
        apply_rules(TagTable(["x"], ["blonde_hair"], np.ones((1, 1)), "hair only"), ClassRules())
    with pytest.raises(ValueError, match="unknown label mode"):
        apply_rules(colours, ClassRules(mode="faces"))
    assert "grey_hair" in ClassRules().needed_tags() and "solo" in ClassRules().needed_tags()


# ------------------------------------------------------------------------------------------- tag sources
def test_mlds_general_and_table_formats(tmp_path):
    mlds = tmp_path / "tags.csv"
    mlds.write_text("0,aqua hair aqua eyes\n1,blonde hair red eyes\n\n2,gray hair red eyes\n")
    t = read_tag_csv(mlds)
    assert t.source.startswith("mlds:") and t.keys == ["0", "1", "2"]
    assert t.tags == ["aqua_eyes", "aqua_hair", "blonde_hair", "gray_hair", "red_eyes"]
    assert t.column("blonde_hair").tolist() == [0, 1, 0] and t.column("red_eyes").tolist() == [0, 1, 1]
    mlds.write_text("0,aqua hair aqua eyes\n1,blonde hair\n")
    with pytest.raises(ValueError, match=r"tags.csv:2: expected '<id>,<hair> hair <eye> eyes'"):
        read_tag_csv(mlds)

    general = tmp_path / "general.csv"
    general.write_text("id,tags\n10,1girl solo blonde_hair red_eyes\n11,Blonde_Hair\n12,\n11,smile\n")
    g = read_tag_csv(general)
    assert g.source.startswith("csv:") and g.keys == ["10", "11", "12"] and g.merged_duplicates == 1
    assert g.column("blonde_hair").tolist() == [1, 1, 0] and g.column("smile").tolist() == [0, 1, 0]
    assert g.column("third_eye").tolist() == [0, 0, 0] and not g.has("third_eye")
    assert read_tag_csv(general, keep=["solo", "smile"]).tags == ["smile", "solo"]

    table = TagTable(["a", "b"], ["solo", "blue_eyes"], np.array([[0.25, 1.0], [0.123456789, 0.0]]), "t")
    out = write_prob_table(table, tmp_path / "probs.csv")
    assert out.read_text().splitlines()[0] == "id,solo,blue_eyes"
    back = read_tag_csv(out)
    assert back.source.startswith("table:") and back.keys == ["a", "b"] and back.tags == ["solo", "blue_eyes"]
    np.testing.assert_allclose(back.probs, table.probs, rtol=1e-5)
    (tmp_path / "bad.csv").write_text("id,solo,blue_eyes\na,0.5,1.5\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: a probability outside"):
        read_tag_csv(tmp_path / "bad.csv")


def test_join_reports_unlabelled_images_and_orphan_tags(tmp_path):
    table = read_tag_csv(_write(tmp_path / "t.csv", "0,aqua hair aqua eyes\n1,red hair red eyes\n"
                                "2,red hair red eyes\n3,red hair blue eyes\n99,red hair red eyes\n"))
    rows = [{"id": i, "source": f"images/{i}.jpg", "stem": str(i)} for i in range(6)]
    j = join(table, rows, "stem")
    assert j.table_row.tolist() == [0, 1, 2, 3, -1, -1] and j.unlabelled == [4, 5]
    assert j.orphans == 1 and j.orphan_examples == ["99"]
    report = j.report(rows)
    assert report["unlabelled_count"] == 2 and report["unlabelled"][0] == {"row": 4, "id": 4, "key": "4"}
    assert join(table, [{"source": "x/3.png"}], "stem").table_row.tolist() == [3]  # stem from the source path
    with pytest.raises(ValueError, match="share the stem '1'"):
        join(table, [{"stem": "1"}, {"stem": "1"}], "stem")
    grown = [{"id": 0, "stem": "2"}, {"id": 1, "stem": "9"}, {"id": 2, "stem": "2", "augmented_from": 0},
             {"id": 3, "stem": "2", "augmented_from": 1}]  # an augmented copy takes its source's tags
    assert join(table, grown, "stem").table_row.tolist() == [2, -1, 2, -1]
    with pytest.raises(ValueError, match="no 'source' field"):
        join(table, [{"id": 0}], "source")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------- label stage
def test_run_label_from_index_tags_trains_conditionally(tmp_path):
    n = 24
    _, hair, eyes, hair_names, eye_names = synthetic_faces(n, seed=0, resolution=16, hair=["blonde", "blue"],
                                                           eyes=["red", "green"])
    rows = [{"tags": [f"{hair_names[h]}_hair", f"{eye_names[e]}_eyes"]} for h, e in zip(hair, eyes)]
    rows[3] = {}                                                       # no tags at all
    rows[5] = {"tags": ["blonde_hair", "blue_hair", "red_eyes"]}       # two hair colours
    src = _dataset(tmp_path / "ds", n, rows)
    src_images = np.load(src / "images.npy")
    out = run_label(LabelConfig(grid_k=4), src, tmp_path / "labelled")

    for name in ("images.npy", "labels.npy", "classes.json", "index.jsonl", "label_report.json",
                 "class_histogram.png", "verification_grid.png", "manifest.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "label_report.json").read_text())
    assert report["tags_source"] == "index" and report["rules"]["require"] == []
    assert report["reasons"] == {"no tags in the source": 1, "more than one hair colour": 1}
    assert report["kept"] == n - 2 and report["join"]["unlabelled"] == [{"row": 3, "id": 3, "key": "3"}]
    ds = open_dataset(str(out))
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    kept = [i for i in range(n) if i not in (3, 5)]
    assert len(ds) == n - 2 and ds.label_kind == "class" and ds.labels.dtype == np.int64
    assert [r["dataset_id"] for r in index] == kept
    np.testing.assert_array_equal(ds.images, src_images[kept])
    for r, label in zip(index, ds.labels):
        h, e = hair[r["dataset_id"]], eyes[r["dataset_id"]]
        assert r["label"] == ds.class_names[label] == f"{hair_names[h]} hair {eye_names[e]} eyes"
    classes = json.loads((out / "classes.json").read_text())
    assert classes["counts"] == np.bincount(ds.labels).tolist() and sum(classes["counts"]) == n - 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == n - 2 and manifest["parent"]["count"] == n
    # written by the one Dataset writer, read back by the one reader: the facts agree with the files
    packed = read_packed(out)
    assert packed.manifest == manifest and packed.rows == index and packed.classes["label_kind"] == "class"
    assert manifest["content_hash"] == hashlib.sha256((out / "images.npy").read_bytes()).hexdigest()
    assert manifest["resolution"] == 16 and manifest["channels"] == 3 and manifest["stage"] == "label"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert LabelConfig.from_dict(json.loads(json.dumps(manifest["label_config"]))) == LabelConfig(grid_k=4)

    from animegen.train import run_train

    run_train(tiny_config("dcgan", conditional=True, kimg=0.032, snapshot_kimg=0.032), out, tmp_path / "cond")
    saved = torch.load(tmp_path / "cond" / "checkpoint.pt", weights_only=True)
    assert saved["class_names"] == ds.class_names


def test_run_label_with_an_mlds_tag_file(tmp_path):
    n = 10
    rows = [{"source": f"images/{i}.jpg", "stem": str(i)} for i in range(n)]
    src = _dataset(tmp_path / "ds", n, rows, seed=1)
    colours = ["aqua hair aqua eyes", "blonde hair red eyes", "blonde hair red eyes", "gray hair blue eyes",
               "blonde hair red eyes", "aqua hair aqua eyes"]
    (src / "tags").mkdir()
    _write(src / "tags" / "tags.csv", "".join(f"{i},{c}\n" for i, c in enumerate(colours)) + "42,red hair red eyes\n")
    out = run_label(LabelConfig(rules=ClassRules(min_per_class=2)), src, tmp_path / "labelled")
    report = json.loads((out / "label_report.json").read_text())
    assert report["tags_source"] == "tagfile:tags.csv"
    assert report["join"]["unlabelled_count"] == 4 and [u["key"] for u in report["join"]["unlabelled"]] == \
        ["6", "7", "8", "9"]
    assert report["join"]["orphan_tag_rows"] == 1
    assert report["dropped_classes"] == {"gray hair blue eyes": 1}
    assert report["reasons"] == {"no tags in the source": 4, BELOW_MIN: 1}
    ds = open_dataset(str(out))
    assert ds.class_names == ["aqua hair aqua eyes", "blonde hair red eyes"] and ds.labels.tolist() == [0, 1, 1, 1, 0]
    assert json.loads((out / "classes.json").read_text())["counts"] == [2, 3]

    multi = run_label(LabelConfig(tags="csv:" + str(src / "tags" / "tags.csv"), rules=ClassRules(mode="multi_hot")),
                      src, tmp_path / "multi")
    mh = open_dataset(str(multi))
    assert mh.label_kind == "multi_hot" and mh.labels.shape == (6, len(mh.class_names))
    assert mh.labels.sum(1).tolist() == [2] * 6


def test_run_label_with_the_danbooru_tagger_and_its_table(tagger_file, tmp_path):
    path, digest, _ = tagger_file
    n = 5
    src = _dataset(tmp_path / "ds", n, [{"stem": f"img{i}"} for i in range(n)], seed=2)
    cfg = LabelConfig(tags=f"danbooru:{path}", sha256=digest, device="cpu", batch=2, input_size=SIZE, grid_k=2)
    out = run_label(cfg, src, tmp_path / "labelled")
    ds = open_dataset(str(out))
    assert ds.class_names == ["blonde hair red eyes"] and len(ds) == n  # the engineered outputs, whatever the image
    report = json.loads((out / "label_report.json").read_text())
    assert report["rules"]["require"] == ["solo", "1girl", "age_rating_s"]
    table = read_tag_csv(out / "tag_table.csv")
    assert table.keys == [f"img{i}" for i in range(n)] and {"solo", "grey_hair", "third_eye"} <= set(table.tags)
    np.testing.assert_allclose(table.column("red_eyes"), 0.75, atol=1e-5)

    # The same probabilities under a stricter threshold: red_eyes (0.75) no longer counts, nothing survives.
    strict = LabelConfig(tags=f"table:{out / 'tag_table.csv'}", rules=ClassRules(threshold=0.8))
    with pytest.raises(ValueError, match="no image .* survives"):
        run_label(strict, src, tmp_path / "strict")
    assert json.loads((tmp_path / "strict" / "label_report.json").read_text())["reasons"] == {"no eye colour": n}
    assert not (tmp_path / "strict" / "manifest.json").exists()
    with pytest.raises(ValueError, match="(?i)sha256"):
        run_label(LabelConfig(tags=f"danbooru:{path}", sha256="1" * 64, input_size=SIZE), src, tmp_path / "bad")


def test_run_label_refuses_bad_requests(tmp_path):
    src = _dataset(tmp_path / "ds", 4, [{"stem": str(i)} for i in range(4)])
    with pytest.raises(ValueError, match="no tag file"):
        run_label(LabelConfig(), src, tmp_path / "out")
    (tmp_path / "ids.csv").write_text("a,blonde hair red eyes\n")
    with pytest.raises(ValueError, match="no tag row .* matches an image"):
        run_label(LabelConfig(tags=f"csv:{tmp_path / 'ids.csv'}"), src, tmp_path / "out")
    with pytest.raises(ValueError, match="unknown tag source"):
        run_label(LabelConfig(tags="magic:x"), src, tmp_path / "out")
    with pytest.raises(ValueError, match="is the input dataset"):
        run_label(LabelConfig(tags="index"), src, src)
    with pytest.raises(ValueError, match="not a complete Dataset"):
        run_label(LabelConfig(), tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown LabelConfig option"):
        LabelConfig.from_dict({"treshold": 0.5})


# ------------------------------------------------------------------------------------ the real MLDS tags
def test_real_mlds_tags_csv(tmp_path):
    if not MLDS_ZIP.is_file():
        pytest.skip(f"{MLDS_ZIP} not present")
    with zipfile.ZipFile(MLDS_ZIP) as z:
        name = next(n for n in z.namelist() if n.endswith("/tags.csv"))
        (tmp_path / "tags.csv").write_bytes(z.read(name))
    table = read_tag_csv(tmp_path / "tags.csv")
    assert len(table) == 36736 and table.keys[0] == "0" and table.keys[-1] == "36735"
    assert sum(t.endswith("_hair") for t in table.tags) == 12 and sum(t.endswith("_eyes") for t in table.tags) == 10
    result = apply_rules(table, ClassRules())
    assert result.kept.all() and len(result.class_names) == 119 and sum(result.counts) == 36736
    assert len(result.empty_classes) == 1  # 119 of the 120 pairs occur
    hair = apply_rules(table, ClassRules(mode="hair"))
    assert len(hair.class_names) == 12 and dict(zip(hair.class_names, hair.counts))["pink hair"] == 4006


def test_label_an_ingested_synthetic_dataset_with_grown_rows(tmp_path):
    """The index written by the real ingest stage (its synthetic tags, augmented rows sharing a stem)."""
    from animegen.data.ingest import IngestConfig, run_ingest

    ds = run_ingest(IngestConfig(resolution=16, holdout=0.0, grow_to=20),
                    "synthetic:?n=12&hair=blonde,blue&eyes=red,green", tmp_path / "ds")
    rows = [json.loads(line) for line in (ds / "index.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and sum("augmented_from" in r for r in rows) == 8
    out = run_label(LabelConfig(), ds, tmp_path / "labelled")
    labelled = open_dataset(str(out))
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(labelled) == 20 and json.loads((out / "label_report.json").read_text())["tags_source"] == "index"
    for r in index:  # an augmented copy carries its source's class
        source = rows[r.get("augmented_from", r["dataset_id"])]
        hair, eye = (t.rsplit("_", 1)[0] for t in source["tags"])
        assert r["label"] == f"{hair} hair {eye} eyes"
    by_stem = run_label(LabelConfig(tags="table:" + str(_table_for(rows, tmp_path)), join="stem"), ds,
                        tmp_path / "by_stem")
    assert len(open_dataset(str(by_stem))) == 20  # grown rows share their source's stem and its tags


def _table_for(rows: list[dict], tmp_path: Path) -> Path:
    """A probability table keyed by stem for the non-augmented rows (as the colour tagger writes one)."""
    base = [r for r in rows if "augmented_from" not in r]
    tags = sorted({t for r in base for t in r["tags"]})
    probs = np.array([[float(t in r["tags"]) for t in tags] for r in base], np.float32)
    return write_prob_table(TagTable([r["stem"] for r in base], tags, probs, "t"), tmp_path / "t.csv", "stem")


def test_a_table_keyed_by_another_field_than_the_join_is_refused(tmp_path):
    from animegen.data import open_dataset, write_packed
    from animegen.labels.label import LabelConfig, run_label

    ds = write_packed(open_dataset("synthetic:?n=8&resolution=16&labels=none"), tmp_path / "ds")
    table = tmp_path / "t.csv"
    table.write_text("id,blonde_hair,red_eyes\n" + "".join(f"{i},1,1\n" for i in range(8)))
    with pytest.raises(ValueError, match="pass --join id"):
        run_label(LabelConfig(tags=f"table:{table}", join="stem"), ds, tmp_path / "out")
