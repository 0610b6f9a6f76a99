"""The studio's HTTP API and page (FastAPI): generate, vary, interpolate and compare faces of the loaded models.

FastAPI because it is the standard Python way to serve a typed JSON API: the request models below are validated
before any handler runs (a bad field is a 422 naming it), the OpenAPI document (``/openapi.json``, ``/docs``) is
generated from the same models, and its TestClient drives the app in-process in the tests. The generation itself
is ``animegen.studio.engine``.

Bounds: at most ``MAX_GRID`` faces a request, ``MAX_FRAMES`` interpolation frames, ``MAX_MODELS`` models
compared; at most ``max_concurrent`` generations at once, a request that finds them all busy for ``QUEUE_S``
seconds gets 503; nothing is read from disk on request (the models are loaded at start, the API takes names, never
paths).
"""
from __future__ import annotations

import io
import json
import threading
import time
from contextlib import contextmanager
from importlib.resources import files
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from animegen.studio.engine import BANDS, RECIPE_CHUNK, Mix, Recipe, StudioModel, interpolation, render

MAX_GRID = 64
MAX_FRAMES = 32
MAX_MODELS = 8
MAX_SEED = 2**31 - 1
QUEUE_S = 10.0


class MixIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seed: int = Field(ge=0, le=MAX_SEED)
    band: str = Field(pattern="^(coarse|middle|fine)$")
    classes: list[str] | None = Field(default=None, max_length=8)


class RecipeIn(BaseModel):
    """One face: model, classes (names of the model's own classes; several for a multi-hot model), seed, noise
    seed, psi, and optionally styles mixed in from another face."""
    model_config = ConfigDict(extra="forbid")
    version: int = Field(default=1, ge=1, le=1)  # a recipe as the API writes it can be posted back as it is
    model: str = Field(max_length=200)
    seed: int = Field(ge=0, le=MAX_SEED)
    classes: list[str] = Field(default_factory=list, max_length=8)
    psi: float = Field(default=1.0, ge=0.0, le=1.0)
    noise_seed: int = Field(default=0, ge=0, le=MAX_SEED)
    mix: MixIn | None = None

    def recipe(self) -> Recipe:
        mix = None if self.mix is None else Mix(self.mix.seed, self.mix.band,
                                                None if self.mix.classes is None else tuple(self.mix.classes))
        return Recipe(self.model, self.seed, tuple(self.classes), self.psi, self.noise_seed, mix)


class GridIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(max_length=200)
    classes: list[str] = Field(default_factory=list, max_length=8)
    seed: int = Field(default=0, ge=0, le=MAX_SEED - MAX_GRID)
    n: int = Field(default=16, ge=1, le=MAX_GRID)
    psi: float = Field(default=1.0, ge=0.0, le=1.0)
    noise_seed: int = Field(default=0, ge=0, le=MAX_SEED)


class VaryIn(BaseModel):
    """Variations of a kept face: ``n`` new noise seeds, or its ``band`` styles taken from ``n`` other faces."""
    model_config = ConfigDict(extra="forbid")
    recipe: RecipeIn
    n: int = Field(default=8, ge=1, le=MAX_GRID)
    band: str | None = Field(default=None, pattern="^(coarse|middle|fine)$")
    seed: int = Field(default=0, ge=0, le=MAX_SEED - MAX_GRID)


class InterpolateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: RecipeIn
    b: RecipeIn
    steps: int = Field(default=12, ge=2, le=MAX_FRAMES // 2)
    method: str = Field(default="slerp", pattern="^(lerp|slerp)$")
    space: str = Field(default="w", pattern="^(z|w)$")
    fps: int = Field(default=12, ge=1, le=50)


class CompareIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[str] = Field(min_length=1, max_length=MAX_MODELS)
    classes: list[str] = Field(default_factory=list, max_length=8)
    seeds: list[int] = Field(min_length=1, max_length=16)
    psi: float = Field(default=1.0, ge=0.0, le=1.0)
    noise_seed: int = Field(default=0, ge=0, le=MAX_SEED)


def png_bytes(image, recipe: Recipe | None = None) -> bytes:
    """A PNG of uint8 [H, W, C] with the recipe as JSON in its ``animegen-recipe`` text chunk."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if recipe is not None:
        info.add_text(RECIPE_CHUNK, json.dumps(recipe.to_dict(), sort_keys=True))
    img = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def data_uri(image) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode()


def gif_bytes(frames, fps: int) -> bytes:
    from PIL import Image

    imgs = [Image.fromarray(f[:, :, 0] if f.shape[2] == 1 else f) for f in frames]
    buf = io.BytesIO()
    imgs[0].save(buf, format="GIF", save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def create_app(models: dict[str, StudioModel], max_concurrent: int = 2) -> FastAPI:
    """The studio over ``models`` (name -> loaded model)."""
    app = FastAPI(title="animegen studio", version="1",
                  description="Generate, vary, interpolate and compare anime faces of trained animegen models.")
    slots = threading.BoundedSemaphore(max_concurrent)

    @contextmanager
    def generating():
        if not slots.acquire(timeout=QUEUE_S):
            raise HTTPException(503, f"all {max_concurrent} generation slots are busy; retry shortly")
        try:
            yield
        finally:
            slots.release()

    def model_of(name: str) -> StudioModel:
        if name not in models:
            raise HTTPException(404, f"unknown model {name!r}; models: {', '.join(models)}")
        return models[name]

    def face(recipe: Recipe):
        try:
            return render(model_of(recipe.model), recipe)
        except ValueError as e:  # unknown class, a class on an unconditional model, no styles to mix ...
            raise HTTPException(422, str(e)) from None

    def face_json(recipe: Recipe, image) -> dict[str, Any]:
        return {"recipe": recipe.to_dict(), "image": data_uri(image)}

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # never a bare 500 page; the reason in one line
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return files("animegen.studio").joinpath("page.html").read_text()

    @app.get("/api/models", summary="the loaded models: classes, mixing bands, evaluation figures")
    def list_models() -> list[dict[str, Any]]:
        return [m.describe() for m in models.values()]

    @app.post("/api/grid", summary="n faces of one model and class, seeds seed .. seed + n - 1")
    def grid(body: GridIn) -> dict[str, Any]:
        model_of(body.model)
        t0 = time.perf_counter()
        with generating():
            out = []
            for k in range(body.n):
                r = Recipe(body.model, body.seed + k, tuple(body.classes), body.psi, body.noise_seed)
                out.append(face_json(r, face(r)))
        return {"faces": out, "server_ms": round(1000 * (time.perf_counter() - t0), 1)}

    @app.post("/api/face", summary="one face as JSON (recipe + PNG data URI)")
    def one(body: RecipeIn) -> dict[str, Any]:
        r = body.recipe()
        with generating():
            return face_json(r, face(r))

    @app.get("/api/face.png", summary="one face as a PNG download, its recipe in the PNG's text chunk",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def one_png(model: str, seed: Annotated[int, Query(ge=0, le=MAX_SEED)],
                classes: Annotated[list[str], Query(max_length=8)] = [],  # noqa: B006 (FastAPI's list query)
                psi: Annotated[float, Query(ge=0.0, le=1.0)] = 1.0,
                noise_seed: Annotated[int, Query(ge=0, le=MAX_SEED)] = 0,
                mix_seed: Annotated[int | None, Query(ge=0, le=MAX_SEED)] = None,
                mix_band: Annotated[str | None, Query(pattern="^(coarse|middle|fine)$")] = None) -> Response:
        if (mix_seed is None) != (mix_band is None):
            raise HTTPException(422, "mix_seed and mix_band go together")
        r = Recipe(model, seed, tuple(classes), psi, noise_seed,
                   None if mix_seed is None else Mix(mix_seed, mix_band))
        with generating():
            image = face(r)
        name = f"{model}-{seed}-{noise_seed}.png"
        return Response(png_bytes(image, r), media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.post("/api/vary", summary="variations of a face: new noise, or one style band from other faces")
    def vary(body: VaryIn) -> dict[str, Any]:
        base = body.recipe.recipe()
        model_of(base.model)
        if body.band is not None and body.band not in BANDS:
            raise HTTPException(422, f"band {body.band!r}")
        with generating():
            out = []
            for k in range(body.n):
                if body.band is None:
                    r = Recipe(base.model, base.seed, base.classes, base.psi, body.seed + k, base.mix)
                else:
                    r = Recipe(base.model, base.seed, base.classes, base.psi, base.noise_seed,
                               Mix(body.seed + k, body.band))
                out.append(face_json(r, face(r)))
        return {"faces": out}

    @app.post("/api/interpolate", summary="a looping interpolation between two faces, as an animated GIF",
              response_class=Response, responses={200: {"content": {"image/gif": {}}}})
    def interpolate(body: InterpolateIn) -> Response:
        a, b = body.a.recipe(), body.b.recipe()
        if a.model != b.model:
            raise HTTPException(422, "interpolate between two faces of one model")
        if a.mix is not None or b.mix is not None:
            raise HTTPException(422, "interpolate between unmixed faces")
        model = model_of(a.model)
        with generating():
            try:
                frames = interpolation(model, a, b, body.steps, body.method, body.space)
            except ValueError as e:
                raise HTTPException(422, str(e)) from None
        return Response(gif_bytes(frames, body.fps), media_type="image/gif",
                        headers={"Content-Disposition": 'attachment; filename="interpolation.gif"'})

    @app.post("/api/compare", summary="the same seeds and class across models, with their evaluation figures")
    def compare(body: CompareIn) -> dict[str, Any]:
        rows = []
        chosen = [model_of(name) for name in body.models]
        with generating():
            for m in chosen:  # a model without the class (another set's classes, unconditional): said in its row
                classes = tuple(body.classes) if m.class_names else ()
                try:
                    faces = [face_json(r, render(m, r)) for r in (Recipe(m.name, s, classes, body.psi,
                                                                         body.noise_seed) for s in body.seeds)]
                    rows.append({"model": m.name, "metrics": m.metrics, "faces": faces})
                except ValueError as e:
                    rows.append({"model": m.name, "metrics": m.metrics, "faces": [], "error": str(e)})
        return {"rows": rows}

    return app
