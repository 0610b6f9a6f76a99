"""train/losses.py against hand computations: R1 on a D whose input gradient is known in closed form, path length
on a linear G with a known Jacobian (value, pl_mean update, gradient), label smoothing's targets, the hinge loss,
style-mixing cutoffs and the EMA half-life. Every expected value here is computed independently of losses.py
(float64 loops or closed forms), so a wrong constant, reduction or direction in losses.py fails a test."""
from __future__ import annotations

import math

import pytest
import torch

from animegen.train.losses import R1, BCELoss, HingeLoss, PathLength, Regularizer, ema_beta, make_loss, style_mix


# ------------------------------------------------------------------------------------------------------------ R1
def quadratic_d(a: torch.Tensor):
    """D(x) = sum_j a_j x_j^2 per sample: dD/dx = 2 a x."""
    return lambda x: (a * x.square()).sum(dim=[1, 2, 3])


def r1_by_hand(x, a, weight, interval):
    """weight/2 * interval * mean_i sum_j (2 a_j x_ij)^2, with loops in float64."""
    x, a = x.double(), a.double()
    per_sample = []
    for i in range(x.shape[0]):
        total = 0.0
        for j, (xj, aj) in enumerate(zip(x[i].flatten().tolist(), a.flatten().tolist())):
            total += (2 * aj * xj) ** 2
        per_sample.append(total)
    return weight / 2 * interval * sum(per_sample) / len(per_sample)


@pytest.mark.parametrize("weight, interval", [(10.0, 16), (0.5, 1), (2.0, 4)])
def test_r1_value_on_a_quadratic_d(weight, interval):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 3, 3, generator=gen).requires_grad_(True)  # 3 samples: mean and sum differ
    a = torch.randn(2, 3, 3, generator=gen)
    r1 = R1(weight, interval)
    penalty = r1.penalty({"real": x, "real_logits": quadratic_d(a)(x)})
    assert penalty.ndim == 0
    assert penalty.item() == pytest.approx(r1_by_hand(x.detach(), a, weight, interval), rel=1e-5)


def test_r1_value_on_a_linear_d_and_its_gradient_reaches_d():
    """D(x) = <v, x> + b: the input gradient is v for every sample, so R1 = weight/2 * interval * |v|^2; the penalty
    is differentiable w.r.t. D's parameters (create_graph): d/dv = weight * interval * v."""
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(1, 3, 4, 4, generator=gen).requires_grad_(True)
    b = torch.tensor(0.3, requires_grad=True)
    x = torch.randn(5, 3, 4, 4, generator=gen).requires_grad_(True)
    logits = (x * v).sum(dim=[1, 2, 3]) + b
    weight, interval = 10.0, 16
    penalty = R1(weight, interval).penalty({"real": x, "real_logits": logits})
    norm2 = sum(t * t for t in v.detach().double().flatten().tolist())
    assert penalty.item() == pytest.approx(weight / 2 * interval * norm2, rel=1e-5)
    (grad_v,) = torch.autograd.grad(penalty, v)
    torch.testing.assert_close(grad_v, weight * interval * v.detach(), rtol=1e-5, atol=1e-5)


def test_r1_gradient_through_a_quadratic_d():
    """d/da_j of weight/2 * interval * mean_i sum_j (2 a_j x_ij)^2 = 4 * weight * interval * a_j * mean_i x_ij^2."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 1, 2, 2, generator=gen).requires_grad_(True)
    a = torch.randn(1, 2, 2, generator=gen).requires_grad_(True)
    penalty = R1(3.0, 2).penalty({"real": x, "real_logits": quadratic_d(a)(x)})
    (grad_a,) = torch.autograd.grad(penalty, a)
    expected = 4 * 3.0 * 2 * a.detach() * x.detach().square().mean(dim=0)
    torch.testing.assert_close(grad_a, expected, rtol=1e-5, atol=1e-6)


def test_regularizer_due_steps():
    r = Regularizer(1.0, 4)
    assert [s for s in range(10) if r.due(s)] == [0, 4, 8]
    assert not any(Regularizer(0.0, 4).due(s) for s in range(10))  # weight 0: never
    assert not any(Regularizer(1.0, 0).due(s) for s in range(10))  # interval 0: never
    assert all(Regularizer(1.0, 1).due(s) for s in range(5))


# --------------------------------------------------------------------------------------------------- path length
class LinearG:
    """img = A @ ws.flatten(), reshaped to [N, C, H, W]: the Jacobian d img / d ws is A for every sample."""

    def __init__(self, num_ws=3, w_dim=4, shape=(2, 4, 4), seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.shape, self.num_ws, self.w_dim = shape, num_ws, w_dim
        self.A = torch.randn(math.prod(shape), num_ws * w_dim, generator=gen).requires_grad_(True)

    def __call__(self, ws):
        return (ws.reshape(len(ws), -1) @ self.A.t()).reshape(len(ws), *self.shape)


def pl_by_hand(A, noise, num_ws, w_dim):
    """Per-sample path lengths sqrt(mean_layers sum_w (A^T y)^2), y the noise, with loops in float64."""
    A = A.detach().double()
    lengths = []
    for y in noise.double().reshape(len(noise), -1):
        g = (A.t() @ y).reshape(num_ws, w_dim)  # d (img . y) / d ws = A^T y
        per_layer = [sum(v * v for v in g[k].tolist()) for k in range(num_ws)]
        lengths.append(math.sqrt(sum(per_layer) / num_ws))
    return lengths


def noise_for(img, seed):
    """The noise PathLength draws after torch.manual_seed(seed): N(0, 1) / sqrt(H * W)."""
    torch.manual_seed(seed)
    return torch.randn(img.shape) / math.sqrt(img.shape[2] * img.shape[3])


def test_path_length_value_and_pl_mean_update():
    G = LinearG()
    weight, interval, decay = 2.0, 16, 0.01
    pl = PathLength(weight, interval, decay)
    assert float(pl.pl_mean) == 0.0
    pl_mean = 0.0
    for call, seed in enumerate((11, 12, 13)):
        ws = torch.randn(5, G.num_ws, G.w_dim).requires_grad_(True)
        img = G(ws)
        torch.manual_seed(seed)
        penalty = pl.penalty({"fake": img, "ws": ws})
        lengths = pl_by_hand(G.A, noise_for(img, seed), G.num_ws, G.w_dim)
        mean = sum(lengths) / len(lengths)
        pl_mean = pl_mean + decay * (mean - pl_mean)  # moves by `decay` towards this batch's mean length
        expected = sum((length - pl_mean) ** 2 for length in lengths) / len(lengths) * weight * interval
        assert float(pl.pl_mean) == pytest.approx(pl_mean, rel=1e-5), f"call {call}"
        assert penalty.item() == pytest.approx(expected, rel=1e-4), f"call {call}"
    # the running mean is the state a resumed run continues from
    state = pl.state_dict()
    other = PathLength(weight, interval, decay)
    other.load_state_dict(state)
    assert float(other.pl_mean) == pytest.approx(pl_mean, rel=1e-6)


def test_path_length_gradient_reaches_g():
    """The penalty is differentiable w.r.t. G's weights (create_graph) and its gradient equals the gradient of
    the same formula written directly in A."""
    G = LinearG(seed=3)
    ws = torch.randn(4, G.num_ws, G.w_dim).requires_grad_(True)
    pl = PathLength(2.0, 4, 0.01)
    pl.pl_mean = torch.tensor(0.7)
    img = G(ws)
    torch.manual_seed(5)
    penalty = pl.penalty({"fake": img, "ws": ws})
    (grad_A,) = torch.autograd.grad(penalty, G.A)
    y = noise_for(img, 5).reshape(len(ws), -1)
    grads = (y @ G.A).reshape(len(ws), G.num_ws, G.w_dim)  # A^T y per sample
    lengths = grads.square().sum(dim=2).mean(dim=1).sqrt()
    pl_mean = 0.7 + 0.01 * (lengths.detach().mean() - 0.7)
    direct = (lengths - pl_mean).square().mean() * 2.0 * 4
    assert penalty.item() == pytest.approx(direct.item(), rel=1e-5)
    (expected,) = torch.autograd.grad(direct, G.A)
    torch.testing.assert_close(grad_A, expected, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------------- losses
def test_bce_label_smoothing_draws_each_real_target_in_range():
    """The targets are recovered from the loss's gradient (d BCE / d logit_i = (sigmoid(x_i) - t_i) / N), so the
    test does not depend on how losses.py draws them: each within [0.9, 1], spread over the range, and the loss is
    the BCE of exactly those targets."""
    torch.manual_seed(0)
    n = 2000
    real = torch.randn(n, dtype=torch.float64).requires_grad_(True)
    fake = torch.randn(n, dtype=torch.float64)
    loss = BCELoss(real_label=(0.9, 1.0)).d_loss(real, fake)
    (grad,) = torch.autograd.grad(loss, real)
    targets = torch.sigmoid(real.detach()) - n * grad
    assert targets.min() >= 0.9 - 1e-9 and targets.max() <= 1.0 + 1e-9
    assert targets.min() < 0.905 and targets.max() > 0.995  # drawn per sample over the whole range
    assert targets.mean().item() == pytest.approx(0.95, abs=0.005)
    assert targets.std().item() == pytest.approx(0.1 / math.sqrt(12), rel=0.1)  # U[0.9, 1]
    x = real.detach()
    by_hand = sum(-(t * math.log(1 / (1 + math.exp(-xi))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-xi))))
                  for t, xi in zip(targets.tolist(), x.tolist())) / n
    by_hand += sum(math.log(1 + math.exp(f)) for f in fake.tolist()) / n  # fake targets 0
    assert loss.item() == pytest.approx(by_hand, rel=1e-9)
    # and the loss lies between the losses at the range's two ends (BCE is linear in the target)
    lo = BCELoss(real_label=(0.9, 0.9)).d_loss(x, fake).item()
    hi = BCELoss(real_label=(1.0, 1.0)).d_loss(x, fake).item()
    assert min(lo, hi) <= loss.item() <= max(lo, hi)


def test_bce_without_smoothing_is_the_logistic_loss():
    real = torch.tensor([2.0, -1.0, 0.0])
    fake = torch.tensor([-3.0, 0.5])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    d = (sp(-2.0) + sp(1.0) + sp(0.0)) / 3 + (sp(-3.0) + sp(0.5)) / 2
    loss = BCELoss()
    assert loss.d_loss(real, fake).item() == pytest.approx(d, rel=1e-6)
    assert loss.g_loss(fake).item() == pytest.approx((sp(3.0) + sp(-0.5)) / 2, rel=1e-6)  # non-saturating
    assert make_loss("bce", (0.9, 1.0)).lo == 0.9


def test_hinge_loss_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 0.5])
    h = HingeLoss()
    # relu(1 - r) = [0, 0.5, 2]; relu(1 + f) = [0, 1, 1.5]
    assert h.d_loss(real, fake).item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert h.g_loss(fake).item() == pytest.approx(0.5)  # -mean(f)
    assert isinstance(make_loss("hinge"), HingeLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("wgan")


# --------------------------------------------------------------------------------------------------- style mixing
class MixG:
    """A stand-in generator: num_ws layers; mapping returns (and records) the second latent's ws."""

    def __init__(self, num_ws=6, w_dim=3):
        self.num_ws, self.w_dim, self.second = num_ws, w_dim, None

    def mapping(self, z, c=None):
        self.second = 100 + torch.randn(len(z), self.num_ws, self.w_dim)  # never equal to the first ws
        return self.second


def cutoffs(G, ws, out):
    """Per sample: the first layer taken from the second latent (num_ws when none), checking the layout."""
    result = []
    for i in range(len(ws)):
        from_first = [torch.equal(out[i, k], ws[i, k]) for k in range(G.num_ws)]
        from_second = [torch.equal(out[i, k], G.second[i, k]) for k in range(G.num_ws)]
        assert all(a != b for a, b in zip(from_first, from_second))  # each layer is one of the two
        cut = from_first.index(False) if False in from_first else G.num_ws
        assert all(from_first[:cut]) and all(from_second[cut:])  # layers >= cutoff from the second latent
        result.append(cut)
    return result


def test_style_mix_probability_zero_leaves_ws_unchanged():
    G = MixG()
    ws = torch.randn(8, G.num_ws, G.w_dim)
    assert style_mix(G, torch.randn(8, 4), None, ws, 0.0) is ws
    single = MixG(num_ws=1)
    ws1 = torch.randn(8, 1, 3)
    assert style_mix(single, torch.randn(8, 4), None, ws1, 1.0) is ws1  # one layer: nothing to mix


def test_style_mix_probability_one_mixes_every_sample_with_a_cutoff_in_range():
    torch.manual_seed(0)
    G = MixG(num_ws=6)
    n = 600
    ws = torch.randn(n, G.num_ws, G.w_dim)
    out = style_mix(G, torch.randn(n, 4), None, ws, 1.0)
    cuts = cutoffs(G, ws, out)
    assert all(1 <= c < G.num_ws for c in cuts)
    assert set(cuts) == set(range(1, G.num_ws))  # every crossover point occurs
    counts = [cuts.count(k) for k in range(1, G.num_ws)]
    assert max(counts) - min(counts) < 0.1 * n  # uniform-ish: 120 expected each


@pytest.mark.parametrize("prob", [0.3, 0.9])
def test_style_mix_fraction_mixed_follows_the_probability(prob):
    torch.manual_seed(1)
    G = MixG(num_ws=4)
    n = 20000
    ws = torch.randn(n, G.num_ws, G.w_dim)
    out = style_mix(G, torch.randn(n, 4), None, ws, prob)
    mixed = ~(out == ws).flatten(1).all(dim=1)
    assert mixed.float().mean().item() == pytest.approx(prob, abs=4 * math.sqrt(prob * (1 - prob) / n) + 1e-3)
    # every sample is its ws up to a cutoff in [1, num_ws] and the second latent's from there (checked on a few)
    G.second = G.second[:200]
    cuts = cutoffs(G, ws[:200], out[:200])
    assert all(1 <= c <= G.num_ws for c in cuts) and any(c == G.num_ws for c in cuts)


# ---------------------------------------------------------------------------------------------------------- EMA
@pytest.mark.parametrize("batch, ema_kimg", [(64, 10.0), (32, 3.2), (128, 0.5), (8, 0.001)])
def test_ema_beta_half_life(batch, ema_kimg):
    beta = ema_beta(batch, ema_kimg)
    assert 0 < beta < 1
    steps = ema_kimg * 1000 / batch  # steps in which ema_kimg thousand images are shown
    assert beta ** steps == pytest.approx(0.5, rel=1e-9)
    if steps == int(steps):  # simulate the training loop's update ema.lerp_(param, 1 - beta)
        ema, target = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
        for _ in range(int(steps)):
            ema = ema.lerp(target, 1 - beta)
        assert ema.item() == pytest.approx(0.5, rel=1e-6)  # the start's weight is one half


def test_ema_beta_grows_with_the_half_life_and_is_zero_without_one():
    assert ema_beta(64, 0.0) == 0.0 and ema_beta(64, -1.0) == 0.0  # G_ema copies G
    assert ema_beta(64, 1.0) < ema_beta(64, 10.0) < ema_beta(64, 100.0) < 1
    assert ema_beta(128, 10.0) < ema_beta(64, 10.0)  # a larger batch moves further per step
    assert ema_beta(64, 10.0) == pytest.approx(math.exp(math.log(0.5) * 64 / 10_000))

