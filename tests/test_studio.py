"""The studio's API (animegen.studio) over tiny trained models: faces from recipes (reproducible, independent of
the grid they are drawn in), variation, mixing, interpolation, comparison, the PNG recipe and
``animegen sample --recipe``, and bad input answered with a 4xx and its reason."""
from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import SYN, tiny_config
from PIL import Image

from animegen.cli import main
from animegen.studio import server as studio_server
from animegen.studio.engine import Recipe, load_model, render
from animegen.studio.models import discover, load_models
from animegen.studio.server import create_app
from animegen.train import run_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("studio")
    run_train(tiny_config("stylegan", conditional=True, kimg=0.032, snapshot_kimg=0), SYN, root / "cond")
    run_train(tiny_config("stylegan2", kimg=0.016, snapshot_kimg=0), SYN, root / "sg2")
    run_train(tiny_config("dcgan", kimg=0.016, snapshot_kimg=0), SYN, root / "dc")
    run_train(tiny_config("stylegan", conditional=True, kimg=0.016, snapshot_kimg=0), SYN + "&labels=multi_hot",
              root / "multi")
    (root / "cond" / "eval").mkdir()
    (root / "cond" / "eval" / "metrics.json").write_text(json.dumps({"fid": 123.4, "hair_accuracy": 0.5}))
    return root


@pytest.fixture(scope="module")
def client(trained):
    models = load_models([str(trained / "cond"), str(trained / "sg2"), str(trained / "dc")])
    return TestClient(create_app(models))


def image_of(data_uri: str) -> np.ndarray:
    import base64

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_uri.split(",", 1)[1]))))


def test_models_are_listed_with_classes_bands_and_evaluation(client):
    models = {m["name"]: m for m in client.get("/api/models").json()}
    assert set(models) == {"cond", "sg2", "dc"}
    assert models["cond"]["conditional"] and len(models["cond"]["classes"]) > 1
    assert models["cond"]["metrics"] == {"fid": 123.4, "hair_accuracy": 0.5}
    assert models["cond"]["mixing_bands"] and models["dc"]["mixing_bands"] == []
    assert not models["sg2"]["conditional"] and models["dc"]["arch"] == "dcgan"


def test_a_grid_is_reproducible_and_each_face_is_its_recipe(client, trained):
    cls = client.get("/api/models").json()[0]["classes"][3]
    body = {"model": "cond", "classes": [cls], "seed": 10, "n": 4, "psi": 0.8}
    a, b = client.post("/api/grid", json=body).json(), client.post("/api/grid", json=body).json()
    faces = [image_of(f["image"]) for f in a["faces"]]
    assert len(faces) == 4 and faces[0].shape == (16, 16, 3)
    assert all(np.array_equal(x, image_of(f["image"])) for x, f in zip(faces, b["faces"]))
    assert not np.array_equal(faces[0], faces[1])  # other seeds, other faces
    assert [f["recipe"]["seed"] for f in a["faces"]] == [10, 11, 12, 13]
    # a face does not depend on the grid it is shown in: the third face alone is the same image
    alone = client.post("/api/face", json=a["faces"][2]["recipe"]).json()  # a recipe as the API wrote it
    assert np.array_equal(image_of(alone["image"]), faces[2])
    # psi moves it; psi 0 is the class's mean face, the same for every seed
    moved = image_of(client.post("/api/grid", json=body | {"psi": 0.2}).json()["faces"][0]["image"])
    assert not np.array_equal(moved, faces[0])
    mean = [image_of(f["image"]) for f in client.post("/api/grid", json=body | {"psi": 0.0}).json()["faces"]]
    assert all(np.array_equal(mean[0], m) for m in mean)


def test_the_png_carries_its_recipe_and_sample_recipe_reproduces_it_bit_for_bit(client, trained, tmp_path):
    cls = client.get("/api/models").json()[0]["classes"][0]
    res = client.get("/api/face.png", params={"model": "cond", "seed": 7, "classes": [cls], "psi": 0.7,
                                              "noise_seed": 3, "mix_seed": 9, "mix_band": "coarse"})
    assert res.status_code == 200 and res.headers["content-type"] == "image/png"
    assert "attachment" in res.headers["content-disposition"]
    png = Image.open(io.BytesIO(res.content))
    recipe = json.loads(png.text["animegen-recipe"])
    assert recipe == {"version": 1, "model": "cond", "seed": 7, "classes": [cls], "psi": 0.7, "noise_seed": 3,
                      "mix": {"seed": 9, "band": "coarse", "classes": None}}
    (tmp_path / "face.png").write_bytes(res.content)
    assert main(["sample", str(trained / "cond"), "--recipe", str(tmp_path / "face.png"), "--out",
                 str(tmp_path / "again"), "--device", "cpu"]) == 0
    again = np.asarray(Image.open(tmp_path / "again" / "face.png"))
    assert np.array_equal(again, np.asarray(png))
    assert json.loads((tmp_path / "again" / "face.json").read_text()) == recipe  # the sidecar
    (tmp_path / "r.json").write_text(json.dumps(recipe))  # the JSON sidecar works as the recipe too
    assert main(["sample", str(trained / "cond"), "--recipe", str(tmp_path / "r.json"), "--out",
                 str(tmp_path / "three"), "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "three" / "r.png")), np.asarray(png))


def test_variations_new_noise_and_mixed_styles(client):
    cls = client.get("/api/models").json()[0]["classes"][1]
    kept = {"model": "cond", "seed": 5, "classes": [cls], "psi": 1.0, "noise_seed": 0}
    base = image_of(client.post("/api/face", json=kept).json()["image"])
    noise = client.post("/api/vary", json={"recipe": kept, "n": 3, "seed": 100}).json()["faces"]
    assert [f["recipe"]["noise_seed"] for f in noise] == [100, 101, 102]
    assert all(f["recipe"]["seed"] == 5 for f in noise)
    assert not any(np.array_equal(base, image_of(f["image"])) for f in noise)
    for band in ("coarse", "middle"):
        mixed = client.post("/api/vary", json={"recipe": kept, "n": 2, "band": band, "seed": 40}).json()["faces"]
        assert [f["recipe"]["mix"] for f in mixed] == [{"seed": 40, "band": band, "classes": None},
                                                        {"seed": 41, "band": band, "classes": None}]
        assert not np.array_equal(base, image_of(mixed[0]["image"]))


def test_the_interpolation_loops_from_a_to_b_and_back_as_a_gif(client):
    a = {"model": "sg2", "seed": 1}
    b = {"model": "sg2", "seed": 2}
    for space, method in (("w", "lerp"), ("z", "slerp")):
        res = client.post("/api/interpolate", json={"a": a, "b": b, "steps": 4, "space": space, "method": method})
        assert res.status_code == 200 and res.headers["content-type"] == "image/gif"
        gif = Image.open(io.BytesIO(res.content))
        assert gif.n_frames == 8
        gif.seek(0)
        first = np.asarray(gif.convert("RGB"))
        face_a = image_of(client.post("/api/face", json=a).json()["image"])
        assert np.abs(first.astype(int) - face_a.astype(int)).mean() < 8  # GIF's palette quantises


def test_compare_draws_the_same_seeds_across_models_with_their_figures(client):
    body = {"models": ["cond", "sg2", "dc"], "seeds": [1, 2, 3], "psi": 1.0,
            "classes": [client.get("/api/models").json()[0]["classes"][0]]}
    rows = {r["model"]: r for r in client.post("/api/compare", json=body).json()["rows"]}
    assert [len(rows[m]["faces"]) for m in ("cond", "sg2", "dc")] == [3, 3, 3]  # unconditional: class not used
    assert rows["cond"]["metrics"]["fid"] == 123.4
    assert [f["recipe"]["seed"] for f in rows["dc"]["faces"]] == [1, 2, 3]


@pytest.mark.parametrize("path,body,code,says", [
    ("/api/grid", {"model": "nope", "n": 2}, 404, "unknown model 'nope'"),
    ("/api/grid", {"model": "cond", "classes": ["purple unicorn"], "n": 2}, 422, "unknown class 'purple unicorn'"),
    ("/api/grid", {"model": "cond", "n": 2}, 422, "conditional: choose one of its classes"),
    ("/api/grid", {"model": "sg2", "classes": ["x"], "n": 2}, 422, "unconditional"),
    ("/api/grid", {"model": "sg2", "n": 100000}, 422, "less than or equal to 64"),
    ("/api/grid", {"model": "sg2", "psi": 1.5}, 422, "less than or equal to 1"),
    ("/api/grid", {"model": "sg2", "n": 2, "path": "/etc/passwd"}, 422, "Extra inputs are not permitted"),
    ("/api/face", {"model": "sg2", "seed": -1}, 422, "greater than or equal to 0"),
    ("/api/face", {"model": "dc", "seed": 1, "mix": {"seed": 2, "band": "coarse"}}, 422, "no per-layer styles"),
    ("/api/face", {"model": "sg2", "seed": 1, "mix": {"seed": 2, "band": "all"}}, 422, "pattern"),
    ("/api/interpolate", {"a": {"model": "sg2", "seed": 1}, "b": {"model": "dc", "seed": 1}}, 422, "one model"),
    ("/api/interpolate", {"a": {"model": "sg2", "seed": 1}, "b": {"model": "sg2", "seed": 2}, "steps": 1000}, 422,
     "less than or equal to 16"),
    ("/api/compare", {"models": ["sg2"] * 9, "seeds": [1]}, 422, "at most 8"),
])
def test_bad_input_gets_a_4xx_with_the_reason(client, path, body, code, says):
    res = client.post(path, json=body)
    assert res.status_code == code, res.text
    assert says in res.text


def test_no_path_outside_the_models_is_readable(client):
    for url in ("/../../etc/passwd", "/api/face.png?model=../../etc/passwd&seed=1", "/static/../../etc/passwd",
                "/api/models/../../../etc/passwd"):
        res = client.get(url)
        assert res.status_code == 404 and "root:" not in res.text


def test_generations_are_bounded_and_a_busy_studio_answers_503(trained, monkeypatch):
    models = load_models([str(trained / "sg2")])
    monkeypatch.setattr(studio_server, "QUEUE_S", 0.2)
    slow = studio_server.render

    def render_slowly(model, recipe):
        time.sleep(1.0)
        return slow(model, recipe)

    monkeypatch.setattr(studio_server, "render", render_slowly)
    client = TestClient(create_app(models, max_concurrent=1))
    results = []
    first = threading.Thread(target=lambda: results.append(client.post("/api/face", json={"model": "sg2",
                                                                                             "seed": 1})))
    first.start()
    time.sleep(0.3)
    busy = client.post("/api/face", json={"model": "sg2", "seed": 2})
    first.join()
    assert busy.status_code == 503 and "busy" in busy.json()["detail"]
    assert results[0].status_code == 200


def test_the_openapi_document_and_the_page(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/models", "/api/grid", "/api/face", "/api/face.png", "/api/vary", "/api/interpolate",
            "/api/compare"} <= set(spec["paths"])
    page = client.get("/")
    assert page.status_code == 200 and "animegen studio" in page.text and 'id="grid"' in page.text


def test_a_pipeline_run_folder_serves_every_model_it_trained(tmp_path, trained):
    import shutil

    run = tmp_path / "animegen-2026-01-01"
    shutil.copytree(trained / "cond", run / "train-conditional" / "model")
    shutil.copytree(trained / "dc", run / "train-dcgan" / "model")
    (run / "evaluate-dcgan" / "evaluation").mkdir(parents=True)
    (run / "evaluate-dcgan" / "evaluation" / "metrics.json").write_text(json.dumps({"fid": 99.0}))
    found = {name: metrics for name, _, metrics in discover([str(run)])}
    assert found == {"conditional": {}, "dcgan": {"fid": 99.0}}
    with pytest.raises(ValueError, match="neither a Model folder"):
        discover([str(tmp_path)])


def test_a_run_of_the_registry_serves_its_models_with_their_figures(tmp_path, trained):
    from animegen.store.registry import write_run

    write_run(tmp_path / "reg", "run-7", {}, {
        "conditional": {"metrics": {"fid": 41.5, "hair_accuracy": 0.9}, "artifacts": {"model": str(trained / "cond")}},
        "dcgan": {"metrics": {"fid": 77.0}, "artifacts": {"model": str(trained / "dc")}}})
    found = {name: (path, metrics) for name, path, metrics in discover(["run:run-7"], str(tmp_path / "reg"))}
    assert found == {"conditional": (str(trained / "cond"), {"fid": 41.5, "hair_accuracy": 0.9}),
                     "dcgan": (str(trained / "dc"), {"fid": 77.0})}
    with pytest.raises(ValueError, match="--registry"):
        discover(["run:run-7"])


def test_a_multi_hot_model_takes_several_tags_and_a_one_hot_model_one_class(trained):
    client = TestClient(create_app(load_models([str(trained / "multi"), str(trained / "cond")])))
    multi = {m["name"]: m for m in client.get("/api/models").json()}["multi"]
    assert multi["multi_hot"] and not {m["name"]: m for m in client.get("/api/models").json()}["cond"]["multi_hot"]
    hair = next(c for c in multi["classes"] if c.endswith("hair"))
    eyes = next(c for c in multi["classes"] if c.endswith("eyes"))
    both = client.post("/api/face", json={"model": "multi", "seed": 3, "classes": [hair, eyes]})
    hair_only = client.post("/api/face", json={"model": "multi", "seed": 3, "classes": [hair]})
    assert both.status_code == hair_only.status_code == 200
    assert both.json()["image"] != hair_only.json()["image"]
    one_hot = client.get("/api/models").json()[1]["classes"]
    res = client.post("/api/face", json={"model": "cond", "seed": 3, "classes": one_hot[:2]})
    assert res.status_code == 422 and "takes one class" in res.text


def test_the_studio_binds_this_machine_only_by_default():
    from animegen.cli import build_parser

    args = build_parser().parse_args(["studio", "some/model"])
    assert args.host == "127.0.0.1" and args.port == 8000


def test_a_recipe_reproduces_on_the_library_side(trained):
    model = load_model("cond", trained / "cond")
    r = Recipe("cond", 4, (model.class_names[2],), 0.9, 1)
    assert np.array_equal(render(model, r), render(model, Recipe.from_dict(json.loads(json.dumps(r.to_dict())))))
    with pytest.raises(ValueError, match="unknown field"):
        Recipe.from_dict({"model": "cond", "seed": 1, "path": "/etc"})
