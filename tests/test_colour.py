"""Tests for the colour tagger (animegen.labels.colour, its training in animegen.labels.colour_train) and embedding
clustering (animegen.labels.cluster)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from animegen.data import ImageSet, open_dataset, read_packed, write_packed
from animegen.labels.cluster import ClusterConfig, run_cluster
from animegen.labels.colour import (
    ColourTagger,
    TaggerPredictConfig,
    colour_tag_names,
    hair_eye_targets,
    load_colour_tagger,
    predict_colours,
    run_tagger_predict,
)
from animegen.labels.colour_train import TaggerTrainConfig, holdout_mask, train_colour_tagger
from animegen.labels.label import LabelConfig, run_label
from animegen.labels.tags import TagTable, read_tag_csv, write_prob_table

SYN = "synthetic:?n=480&resolution=32&hair=blonde,blue,black,red&eyes=red,green,blue"
TINY = dict(epochs=8, batch=16, width=16, resolution=32, block=16, holdout=0.25, lr=3e-3, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny tagger trained on 480 synthetic faces (4 hair x 3 eye colours): (imageset, out_dir, metrics)."""
    out = tmp_path_factory.mktemp("tagger")
    imageset = open_dataset(SYN + "&labels=pair")
    return imageset, out, train_colour_tagger(imageset, out, **TINY)


def test_targets_from_pair_multi_hot_hair_and_eye_classes():
    pair = open_dataset("synthetic:?n=40&resolution=16&hair=blonde,blue&eyes=red,green,blue&labels=pair")
    truth_hair = np.array([["blonde", "blue"].index(m["hair"]) for m in pair.meta])
    truth_eye = np.array([["blue", "green", "red"].index(m["eye"]) for m in pair.meta])
    h, e, hn, en = hair_eye_targets(pair)
    assert (hn, en) == (["blonde", "blue"], ["blue", "green", "red"])  # first mention in the class list
    np.testing.assert_array_equal(h, truth_hair)
    np.testing.assert_array_equal(e, truth_eye)
    assert h.dtype == e.dtype == np.int64

    multi = open_dataset("synthetic:?n=40&resolution=16&hair=blonde,blue&eyes=red,green,blue&labels=multi_hot")
    h2, e2, hn2, en2 = hair_eye_targets(multi)
    assert (hn2, en2) == (hn, en)
    np.testing.assert_array_equal(h2, truth_hair)
    np.testing.assert_array_equal(e2, truth_eye)

    hair_only = hair_eye_targets(open_dataset("synthetic:?n=40&resolution=16&hair=blonde,blue&labels=hair"))
    np.testing.assert_array_equal(hair_only[0], truth_hair)
    assert (hair_only[1] == -1).all() and hair_only[3] == []
    eye_only = hair_eye_targets(open_dataset("synthetic:?n=40&resolution=16&eyes=red,green,blue&labels=eyes"))
    np.testing.assert_array_equal(eye_only[1], truth_eye)
    assert (eye_only[0] == -1).all() and eye_only[2] == []


def test_targets_unknowns_underscores_and_refusals():
    images = np.zeros((5, 8, 8, 3), np.uint8)
    names = ["light_brown_hair blue_eyes", "red hair", "smile", "green eyes"]
    s = ImageSet(images, np.array([0, 1, 2, 3, -1]), names, "hand-made")
    h, e, hn, en = hair_eye_targets(s)
    assert (hn, en) == (["light_brown", "red"], ["blue", "green"])
    np.testing.assert_array_equal(h, [0, 1, -1, -1, -1])
    np.testing.assert_array_equal(e, [0, -1, -1, 1, -1])

    # multi-hot: none or two hair columns set -> unknown hair
    cols = ["blonde hair", "red hair", "blue eyes", "smile"]
    rows = np.array([[1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1], [0, 1, 0, 1]], np.float32)
    h, e, _, _ = hair_eye_targets(ImageSet(images[:4], rows, cols, "multi"))
    np.testing.assert_array_equal(h, [0, -1, -1, 1])
    np.testing.assert_array_equal(e, [0, 0, -1, -1])

    with pytest.raises(ValueError, match="no labels"):
        hair_eye_targets(ImageSet(images, None, [], "bare"))
    with pytest.raises(ValueError, match="names a hair or eye colour"):
        hair_eye_targets(ImageSet(images[:2], np.array([0, 1]), ["cat", "dog"], "pets"))


def test_holdout_from_index_split_field_else_blocks():
    images = np.zeros((200, 8, 8, 3), np.uint8)
    meta = [{"id": i, "split": "heldout" if i % 10 == 0 else "train"} for i in range(200)]
    mask, info = holdout_mask(ImageSet(images, None, [], "x", meta), 0.2, 16, 0)
    assert info["method"] == "index split field"
    np.testing.assert_array_equal(mask, [i % 10 == 0 for i in range(200)])

    mask, info = holdout_mask(ImageSet(images, None, [], "x"), 0.2, 16, seed=3)
    assert info["method"] == "block" and abs(mask.mean() - 0.2) < 0.05
    blocks = np.arange(200) // 16
    for b in np.unique(blocks):  # whole blocks on one side
        assert len(set(mask[blocks == b])) == 1
    again, _ = holdout_mask(ImageSet(images, None, [], "x"), 0.2, 16, seed=3)
    np.testing.assert_array_equal(mask, again)


def test_tagger_trains_well_above_chance_and_writes_its_artifacts(trained):
    _, out, metrics = trained
    assert metrics["hair_accuracy"] >= 0.9, metrics["hair_accuracy"]  # chance 0.25
    assert metrics["eye_accuracy"] >= 0.6, metrics["eye_accuracy"]  # chance 0.33
    assert metrics["split"]["method"] == "block" and metrics["split"]["held_out"] == 128
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["hair_accuracy"] == metrics["hair_accuracy"]
    hair = on_disk["held_out"]["hair"]
    assert list(hair["per_colour"]) == ["black", "blonde", "blue", "red"]
    cm = np.array(hair["confusion"]["rows_true_cols_pred"])
    assert cm.shape == (4, 4) and cm.sum() == 128
    assert np.trace(cm) / cm.sum() == pytest.approx(metrics["hair_accuracy"])
    assert on_disk["train_time_s"] > 0 and on_disk["train_img_per_s"] > 0 and on_disk["params"] < 300_000
    for name in ("confusion_hair.png", "confusion_eye.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100
    ckpt = torch.load(out / "colour_tagger.pt", weights_only=True)
    assert ckpt["config"]["hair_names"] == ["black", "blonde", "blue", "red"]
    assert ckpt["config"]["eye_names"] == ["blue", "green", "red"]


def test_training_is_deterministic_from_the_seed(tmp_path):
    s = open_dataset(SYN.replace("n=480", "n=96") + "&labels=pair")
    kw = dict(TINY, epochs=1, batch=16, block=8)
    train_colour_tagger(s, tmp_path / "a", **kw)
    train_colour_tagger(s, tmp_path / "b", **kw)
    train_colour_tagger(s, tmp_path / "c", **dict(kw, seed=1))
    a, b, c = (torch.load(tmp_path / n / "colour_tagger.pt", weights_only=True)["state_dict"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_save_load_round_trip_and_both_input_kinds(trained):
    imageset, out, _ = trained
    images = imageset.images[:40]
    model = load_colour_tagger(out)
    again = load_colour_tagger(out / "colour_tagger.pt")
    h1, e1 = predict_colours(model, images, batch=16)
    h2, e2 = predict_colours(again, images, batch=7)
    assert h1.shape == (40, 4) and e1.shape == (40, 3)
    np.testing.assert_allclose(h1.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(h1, h2, atol=1e-6)
    np.testing.assert_allclose(e1, e2, atol=1e-6)

    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # generator output range
    h3, e3 = predict_colours(model, as_float, batch=16)
    np.testing.assert_allclose(h1, h3, atol=1e-5)
    np.testing.assert_allclose(e1, e3, atol=1e-5)
    bigger = torch.nn.functional.interpolate(as_float, scale_factor=2, mode="nearest")  # 64 px -> resized
    h4, _ = predict_colours(model, bigger)
    assert (h4.argmax(1) == h1.argmax(1)).mean() >= 0.9
    grey, _ = predict_colours(model, images[:, :, :, :1])
    assert grey.shape == (40, 4)
    with pytest.raises(AssertionError):
        predict_colours(model, as_float.permute(0, 2, 3, 1))  # float NHWC is ambiguous: refused


def test_probability_table_round_trip_and_label_stage_reads_it(trained, tmp_path):
    imageset, out, _ = trained
    model = load_colour_tagger(out)
    names = colour_tag_names(model)
    assert names == ["black_hair", "blonde_hair", "blue_hair", "red_hair", "blue_eyes", "green_eyes", "red_eyes"]
    probs = np.random.default_rng(0).random((5, len(names))).astype(np.float32)
    path = write_prob_table(TagTable(["3", "1", "4", "15", "9"], names, probs, "colour tagger"), tmp_path / "t.csv")
    table = read_tag_csv(path, "table")
    assert table.keys == ["3", "1", "4", "15", "9"] and table.tags == names
    np.testing.assert_allclose(table.probs, probs, rtol=1e-5)
    with pytest.raises(ValueError, match=r"probs \(5, 7\) != \(2, 7\)"):
        TagTable(["1", "2"], names, probs, "colour tagger")

    # the tagger labels an untagged dataset: predict -> table -> label stage -> pair classes
    stems = [{"stem": f"face{i:03d}"} for i in range(64)]
    untagged = write_packed(ImageSet(imageset.images[:64], None, [], "untagged", stems), tmp_path / "untagged")
    table_path = run_tagger_predict(TaggerPredictConfig(batch=32, device="cpu"), out, str(untagged),
                                    tmp_path / "pred")
    manifest = json.loads((tmp_path / "pred" / "manifest.json").read_text())
    assert manifest["count"] == 64 and manifest["key"] == "stem"
    assert table_path.read_text().startswith("stem,black_hair,") and "\nface007," in table_path.read_text()
    labelled = run_label(LabelConfig(tags=f"table:{table_path}", device="cpu"), untagged, tmp_path / "labelled")
    result = open_dataset(str(labelled))
    assert result.label_kind == "class" and len(result) > 32
    h, _, hn, _ = hair_eye_targets(result)
    kept = [json.loads(line)["dataset_id"] for line in (labelled / "index.jsonl").read_text().splitlines()]
    truth = np.array([hn.index(imageset.meta[i]["hair"]) for i in kept])
    assert (h == truth).mean() >= 0.9


def test_clustering_finds_three_hair_colours(tmp_path):
    uri = "synthetic:?n=180&resolution=32&hair=blonde,blue,red&labels=hair"
    s = open_dataset(uri)
    train_colour_tagger(s, tmp_path / "tagger", **dict(TINY, epochs=4))
    dataset = write_packed(s, tmp_path / "faces")
    cfg = ClusterConfig(embedder="auto", tagger=str(tmp_path / "tagger"), k_min=2, k_max=6, grid_k=6,
                        device="cpu")
    summary = run_cluster(cfg, str(dataset), tmp_path / "clusters")
    sil = {int(k): v["silhouette"] for k, v in summary["per_k"].items()}
    assert summary["embedder"] == "colour" and summary["best_k_by_silhouette"] == 3, sil
    assert summary["chosen_k"] == 3 and max(sil, key=sil.get) == 3

    out = tmp_path / "clusters"
    on_disk = json.loads((out / "clusters.json").read_text())
    assert on_disk["chosen_k"] == 3 and set(on_disk["per_k"]) == {"2", "3", "4", "5", "6"}
    assert sum(on_disk["per_k"]["3"]["sizes"]) == 180
    for j in range(3):
        assert (out / "grids" / f"cluster_{j}.png").is_file()
    assert all((out / "grids" / f"overview_k{k}.png").is_file() for k in range(2, 7))
    assert (out / "silhouette.png").is_file() and np.load(out / "embeddings.npy").shape[0] == 180

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "cluster"
    assert manifest["parent"]["content_hash"] == json.loads((dataset / "manifest.json").read_text())["content_hash"]
    packed = read_packed(out)  # the one Dataset reader: index rows carry each image's cluster
    assert [r["label"] for r in packed.rows] == [f"cluster {j}" for j in packed.labels]
    assert [r["hair"] for r in packed.rows] == [m["hair"] for m in s.meta]
    labelled = open_dataset(str(out))  # the Labelled Dataset layout: clusters as classes
    assert labelled.class_names == ["cluster 0", "cluster 1", "cluster 2"]
    hair = np.array([m["hair"] for m in s.meta])
    for j in range(3):  # each cluster is one hair colour
        members = hair[labelled.labels == j]
        assert (members == members[0]).mean() >= 0.95


@pytest.mark.parametrize("layout", ["torchvision", "danbooru"])
def test_clustering_with_resnet50_weights(tmp_path, layout):
    """ResNet50 embeddings from a state dict the test saves itself (none can be downloaded here), either layout."""
    from torchvision.models import resnet50

    from animegen.labels.danbooru import DanbooruResNet50

    torch.manual_seed(0)
    weights = tmp_path / "resnet50.pt"
    net = resnet50(weights=None) if layout == "torchvision" else DanbooruResNet50(input_size=32)
    torch.save(net.state_dict(), weights)
    cfg = ClusterConfig(weights=str(weights), input_size=32, k_min=2, k_max=3, grid_k=4, batch=16, device="cpu")
    uri = "synthetic:?n=24&resolution=16"
    summary = run_cluster(cfg, uri, tmp_path / "out")
    assert summary["embedder"] == "resnet50" and summary["embedding_dim"] == 2048
    assert summary["chosen_k"] in (2, 3) and (tmp_path / "out" / "manifest.json").is_file()

    # the embedding is the body's average-pooled output on the layout's own preprocessing
    x = torch.from_numpy(open_dataset(uri).images[:3])
    with torch.no_grad():
        if layout == "danbooru":
            expect = net.eval()[0](net.preprocess(x)).mean((2, 3))
        else:
            body = torch.nn.Sequential(*list(net.eval().children())[:-2])
            t = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2).float() / 255, size=(32, 32),
                                                mode="bilinear", align_corners=False)
            mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
            expect = body((t - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).mean((2, 3))
    got = np.load(tmp_path / "out" / "embeddings.npy")[:3]
    np.testing.assert_allclose(got, expect.numpy(), rtol=1e-4, atol=1e-4)

    bad = tmp_path / "bad.pt"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="torchvision resnet50"):
        run_cluster(ClusterConfig(weights=str(bad), device="cpu"), "synthetic:?n=24&resolution=16", tmp_path / "x")
    with pytest.raises(ValueError, match="colour tagger"):
        run_cluster(ClusterConfig(device="cpu"), "synthetic:?n=24&resolution=16", tmp_path / "y")
    with pytest.raises(ValueError, match="is the input dataset"):
        run_cluster(cfg, str(tmp_path / "out"), tmp_path / "out")


def test_configs_round_trip_and_refuse_unknown_options():
    cfg = TaggerTrainConfig(epochs=3, width=24)
    assert TaggerTrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    ccfg = ClusterConfig(k=4, tagger="x")
    assert ClusterConfig.from_dict(json.loads(json.dumps(ccfg.to_dict()))) == ccfg
    with pytest.raises(ValueError, match="unknown"):
        TaggerTrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="outside"):
        ClusterConfig(k=12).validate()
    assert sum(p.numel() for p in ColourTagger(["a"] * 12, ["b"] * 10).parameters()) < 300_000
