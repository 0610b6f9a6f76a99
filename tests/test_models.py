import math

import pytest
import torch

from animegen.models import DCGANDiscriminator, DCGANGenerator, StyleGANDiscriminator, StyleGANGenerator, build_models
from animegen.models.layers import minibatch_stddev


def count(m):
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------- DCGAN
def test_dcgan_shapes_and_parameter_count():
    G, D = DCGANGenerator(), DCGANDiscriminator()
    z = torch.randn(3, 100)
    x = G(z)
    assert x.shape == (3, 3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1  # tanh
    assert D(x).shape == (3,)
    # G: FC 100 -> 512*4*4 (+bias), BN(512), ConvT 512->256->128->64 (no bias) + BN, ConvT 64->3 (+bias)
    g = (100 * 8192 + 8192) + 2 * 512 + 512 * 256 * 16 + 2 * 256 + 256 * 128 * 16 + 2 * 128 + 128 * 64 * 16 \
        + 2 * 64 + 64 * 3 * 16 + 3
    assert count(G) == g == 3_584_899
    # D: Conv 3->64 (+bias, no BN), 64->128->256->512 (no bias) + BN, FC 512*4*4 -> 1
    d = (3 * 64 * 16 + 64) + 64 * 128 * 16 + 2 * 128 + 128 * 256 * 16 + 2 * 256 + 256 * 512 * 16 + 2 * 512 \
        + 8192 + 1
    assert count(D) == d == 2_765_633
    convs = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (512, 256, (4, 4), (2, 2)), (256, 128, (4, 4), (2, 2)), (128, 64, (4, 4), (2, 2)), (64, 3, (4, 4), (2, 2))]
    dconvs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in dconvs] == [(3, 64), (64, 128), (128, 256), (256, 512)]
    assert not isinstance(D.blocks[0][1], torch.nn.BatchNorm2d)  # no BN on the first D layer
    assert all(isinstance(b[1], torch.nn.BatchNorm2d) for b in D.blocks[1:])


@pytest.mark.parametrize("res", [128, 256])
def test_dcgan_larger_resolutions_add_blocks(res):
    G, D = DCGANGenerator(resolution=res), DCGANDiscriminator(resolution=res)
    extra = int(math.log2(res // 64))
    assert len(G.blocks) == 3 + extra and len(D.blocks) == 4 + extra
    x = G(torch.randn(2, 100))
    assert x.shape == (2, 3, res, res) and D(x).shape == (2,)


def test_dcgan_initialisation_statistics():
    torch.manual_seed(0)
    G, D = DCGANGenerator(), DCGANDiscriminator()
    for m in list(G.modules()) + list(D.modules()):
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.weight.numel() > 10000:
            assert abs(m.weight.mean().item()) < 2e-3
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.05)
        if isinstance(m, torch.nn.BatchNorm2d) and m.num_features >= 128:
            assert m.weight.mean().item() == pytest.approx(1.0, abs=0.01)
            assert m.weight.std().item() == pytest.approx(0.02, rel=0.3)
            assert torch.all(m.bias == 0)


def test_conditional_dcgan_class_input():
    G, D = DCGANGenerator(c_dim=5), DCGANDiscriminator(c_dim=5)
    assert G.project.in_features == 105  # class vector concatenated to z
    assert D.blocks[0][0].in_channels == 3 + 5  # broadcast as extra input channels
    assert count(G) - count(DCGANGenerator()) == 5 * 8192
    G.eval()
    z = torch.randn(2, 100)
    a, b = G(z, torch.eye(5)[[0, 0]]), G(z, torch.eye(5)[[3, 3]])
    assert not torch.allclose(a, b)
    multi = torch.tensor([[1.0, 0, 1, 0, 0], [0, 1, 0, 0, 1]])  # multi-hot works too
    assert D(G(z, multi), multi).shape == (2,)
    with pytest.raises(ValueError, match="class vector"):
        G(z)


# ---------------------------------------------------------------- StyleGAN
def test_stylegan_shapes_and_parameter_count():
    G, D = StyleGANGenerator(), StyleGANDiscriminator()
    assert G.num_ws == 10 and G.w_dim == 512
    chans = [layer.adain.channels for layer in G.layers]
    assert chans == [512, 512, 512, 512, 256, 256, 128, 128, 64, 64]  # 4, 8, 16, 32, 64 px, two layers each
    assert [layer.up for layer in G.layers] == [False, False, True, False] * 1 + [False] * 0 + [True, False] * 3
    assert G.layers[0].conv is None  # 4x4: learned constant, no conv before the first AdaIN
    mapping = 8 * (512 * 512 + 512)
    assert count(G.mapping_net) == mapping
    assert tuple(G.const.shape) == (1, 512, 4, 4)
    z = torch.randn(4, 512)
    ws = G.mapping(z)
    assert ws.shape == (4, 10, 512)
    x = G.synthesis(ws)
    assert x.shape == (4, 3, 64, 64)
    assert D(x).shape == (4,)
    assert count(G) == 14_536_387 and count(D) == 14_037_569
    with pytest.raises(ValueError, match="ws must be"):
        G.synthesis(ws[:, :3])


def test_stylegan_128_adds_a_block():
    G, D = StyleGANGenerator(resolution=128), StyleGANDiscriminator(resolution=128)
    assert G.num_ws == 12
    x = G(torch.randn(2, 512))
    assert x.shape == (2, 3, 128, 128) and D(x).shape == (2,)


def test_stylegan_equalised_lr_initialisation():
    torch.manual_seed(0)
    G = StyleGANGenerator()
    conv = G.layers[3].conv
    assert conv.weight.std().item() == pytest.approx(1.0, rel=0.02)  # raw weights N(0, 1)
    assert conv.weight_gain == pytest.approx(1 / math.sqrt(512 * 9))  # scaled at run time
    fc = G.mapping_net.layers[0]
    assert fc.weight.std().item() == pytest.approx(100.0, rel=0.02)  # N(0, 1/lr_mul), lr_mul 0.01
    assert fc.weight_gain == pytest.approx(0.01 / math.sqrt(512))
    assert all(torch.all(layer.noise.weight == 0) for layer in G.layers)  # noise strengths start at 0
    assert torch.all(G.layers[0].adain.affine.bias[:512] == 1)  # AdaIN scale starts at 1


def test_stylegan_noise_injection_changes_output():
    G = StyleGANGenerator(resolution=16, z_dim=32, w_dim=32, mapping_layers=2, channel_base=256, channel_max=32)
    for layer in G.layers:
        torch.nn.init.ones_(layer.noise.weight)
    ws = G.mapping(torch.randn(1, 32))
    a, b = G.synthesis(ws, noise_mode="random"), G.synthesis(ws, noise_mode="random")
    assert not torch.allclose(a, b)
    assert torch.equal(G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const"))


@pytest.mark.parametrize("cond_mode", ["concat", "projection"])
def test_conditional_stylegan(cond_mode):
    G, D = build_models("stylegan", c_dim=4, resolution=16, z_dim=32, w_dim=32, mapping_layers=2,
                        channel_base=256, channel_max=32, cond_mode=cond_mode)
    z = torch.randn(3, 32)
    if cond_mode == "concat":  # the class's columns of the first mapping layer / fromRGB, at gain 1
        assert G.mapping_net.class_in.weight.shape == (32, 4) and G.mapping_net.layers[0].weight.shape[1] == 32
        rgb = D.blocks[0].conv.weight
        assert D.blocks[0].class_in.weight.shape == (rgb.shape[0], 4) and rgb.shape[1] == 3
    else:
        assert D.cmap is not None and G.mapping_net.embed is not None
    c1, c2 = torch.eye(4)[[0, 1, 2]], torch.eye(4)[[3, 3, 3]]
    assert not torch.allclose(G(z, c1, noise_mode="const"), G(z, c2, noise_mode="const"))
    multi = torch.tensor([[1.0, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 1]])
    x = G(z, multi, noise_mode="const")
    assert not torch.allclose(x, G(z, c1, noise_mode="const"))
    assert D(x, multi).shape == (3,)
    d1, d2 = D(x, c1), D(x, c2)
    assert not torch.allclose(d1, d2)  # D sees the class


def test_minibatch_stddev_adds_one_channel_for_any_batch():
    for n in (1, 3, 4, 6, 8):
        x = torch.randn(n, 5, 4, 4)
        y = minibatch_stddev(x, 4)
        assert y.shape == (n, 6, 4, 4)
        assert torch.equal(y[:, :5], x)
    same = torch.ones(4, 2, 4, 4)
    assert torch.allclose(minibatch_stddev(same)[:, 2], torch.full((4, 4, 4), 1e-4), atol=1e-4)


def stddev_by_hand(x: torch.Tensor, group_size: int) -> list[float]:
    """The StyleGAN2 minibatch-stddev feature written out with loops (float64): the group size is the largest
    divisor of n not above ``group_size``; as in StyleGAN2's ``x.reshape(G, -1, ...)``, sample i belongs to group
    i % (n / G); per group, the (biased) stddev over its members of every feature and pixel, + 1e-8 under the root,
    averaged over features and pixels; every member gets its group's value."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group_size, n) + 1) if n % d == 0)
    groups = n // g
    x = x.double()
    value = {}
    for j in range(groups):
        members = [j + k * groups for k in range(g)]
        total = 0.0
        for ch in range(c):
            for yy in range(h):
                for xx in range(w):
                    vals = [x[i, ch, yy, xx].item() for i in members]
                    mean = sum(vals) / g
                    total += math.sqrt(sum((v - mean) ** 2 for v in vals) / g + 1e-8)
        value[j] = total / (c * h * w)
    return [value[i % groups] for i in range(n)]


@pytest.mark.parametrize("n, group, expected_g", [(8, 4, 4), (6, 4, 3), (4, 4, 4), (2, 4, 2), (7, 4, 1), (12, 4, 4)])
def test_minibatch_stddev_matches_an_explicit_computation(n, group, expected_g):
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3, 2, 2, generator=gen) * torch.arange(1, n + 1).float()[:, None, None, None]
    y = minibatch_stddev(x, group)
    assert torch.equal(y[:, :3], x)
    feature = y[:, 3]
    for i in range(n):  # one constant map per sample
        assert torch.all(feature[i] == feature[i, 0, 0])
    expected = stddev_by_hand(x, group)
    torch.testing.assert_close(feature[:, 0, 0].double(), torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-5, atol=1e-6)
    groups = n // expected_g
    for i in range(n):  # members of a group share the value: i and i + n/G
        assert feature[i, 0, 0] == feature[(i + groups) % n, 0, 0]
    if 1 < expected_g < n:  # contiguous groups (samples 0..G-1, ...) would give other values
        contiguous = []
        for j in range(groups):
            block = x[j * expected_g:(j + 1) * expected_g].double()
            std = (block.var(dim=0, unbiased=False) + 1e-8).sqrt().mean().item()
            contiguous += [std] * expected_g
        assert not torch.allclose(feature[:, 0, 0].double(), torch.tensor(contiguous, dtype=torch.float64),
                                  rtol=1e-3)
    if expected_g == 1:  # a lone sample has no spread: sqrt(1e-8)
        assert torch.allclose(feature, torch.full_like(feature, 1e-4))


def psi_generator(cond_mode: str, c_dim: int = 4, seed: int = 0, arch: str = "stylegan"):
    torch.manual_seed(seed)
    G, _ = build_models(arch, c_dim=c_dim, resolution=16, z_dim=16, w_dim=16, mapping_layers=2,
                        channel_base=128, channel_max=32, cond_mode=cond_mode)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # known, distinct rows (all zero at initialisation would hide a wrong row)
        G.w_avg.copy_(torch.randn(G.w_dim, generator=gen))
        if c_dim:
            G.w_avg_class.copy_(torch.randn(c_dim, G.w_dim, generator=gen) * 3)
    return G.eval()


@pytest.mark.parametrize("arch", ["stylegan", "stylegan2"])
@pytest.mark.parametrize("cond_mode", ["concat", "projection"])
def test_psi_zero_is_the_class_mean_w(cond_mode, arch):
    G = psi_generator(cond_mode, arch=arch)
    z = torch.randn(5, 16)
    for k in range(4):
        c = torch.eye(4)[[k] * 5]
        ws = G.mapping(z, c, truncation_psi=0)
        assert ws.shape == (5, G.num_ws, G.w_dim)
        for i in range(5):
            for layer in range(G.num_ws):
                torch.testing.assert_close(ws[i, layer], G.w_avg_class[k], rtol=0, atol=1e-6)
    multi = torch.tensor([[1.0, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 1], [1, 1, 1, 1], [0, 0, 1, 0]])
    ws = G.mapping(z, multi, truncation_psi=0)
    for i, row in enumerate(multi):
        rows = [G.w_avg_class[k] for k in range(4) if row[k] > 0]
        mean = sum(rows) / len(rows)
        for layer in range(G.num_ws):
            torch.testing.assert_close(ws[i, layer], mean, rtol=1e-6, atol=1e-6)
    # no class set: the overall tracked mean
    torch.testing.assert_close(G.mapping(z, torch.zeros(5, 4), truncation_psi=0),
                               G.w_avg.expand(5, G.num_ws, -1), rtol=0, atol=1e-6)


def test_psi_between_and_the_truncation_cutoff():
    G = psi_generator("concat")
    z, c = torch.randn(3, 16), torch.eye(4)[[2, 0, 3]]
    full = G.mapping(z, c)
    half = G.mapping(z, c, truncation_psi=0.5)
    centre = G.w_avg_class[[2, 0, 3]][:, None, :]
    torch.testing.assert_close(half, centre + 0.5 * (full - centre), rtol=1e-5, atol=1e-6)
    cut = G.mapping(z, c, truncation_psi=0, truncation_cutoff=2)
    torch.testing.assert_close(cut[:, :2], centre.expand(-1, 2, -1), rtol=0, atol=1e-6)
    assert torch.equal(cut[:, 2:], full[:, 2:])  # layers from the cutoff on are not truncated
    unconditional = psi_generator("concat", c_dim=0)
    ws = unconditional.mapping(torch.randn(3, 16), truncation_psi=0)
    torch.testing.assert_close(ws, unconditional.w_avg.expand(3, unconditional.num_ws, -1), rtol=0, atol=1e-6)


def test_bad_resolution_and_arch_are_refused():
    with pytest.raises(ValueError, match="power of two"):
        DCGANGenerator(resolution=48)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_models("vae", z_dim=8, channel_base=64)


@pytest.mark.parametrize("arch", ["stylegan", "stylegan2"])
def test_a_fresh_conditional_mapping_reads_the_class_as_strongly_as_z(arch):
    """The class's weights take gain 1 (a one-hot vector's fan-in): with the dense gain 1/sqrt(z_dim + c_dim)
    and the mapping's lr multiplier, a 117-class model's w moved 8x less with the class than with z and sampled
    every class alike. At init, changing the class moves w about as far as changing z, and D's logit too."""
    torch.manual_seed(0)
    G, D = build_models(arch, c_dim=117, resolution=16, z_dim=128, w_dim=128, mapping_layers=4,
                        channel_base=256, channel_max=32, cond_mode="concat")
    n = 256
    z, z2 = torch.randn(n, 128), torch.randn(n, 128)
    c1, c2 = torch.eye(117)[torch.randint(0, 117, (n,))], torch.eye(117)[torch.randint(0, 117, (n,))]
    w = G.mapping(z, c1)
    by_class = (w - G.mapping(z, c2)).norm(dim=-1).mean()
    by_z = (w - G.mapping(z2, c1)).norm(dim=-1).mean()
    assert 0.5 < by_class / by_z < 2, (by_class, by_z)
    x = torch.randn(n, 3, 16, 16)
    d = D(x, c1)
    assert (d - D(x, c2)).std() > 0.25 * (d - D(torch.randn_like(x), c1)).std()


@pytest.mark.parametrize("cond_mode", ["concat", "projection"])
def test_checkpoints_with_the_old_class_weights_load_as_the_same_function(cond_mode):
    """A conditional StyleGAN saved before ClassWeight (class columns inside the first mapping layer and fromRGB
    at their dense gains; D's projection embedding at gain 1/sqrt(c_dim)) loads into today's model and computes
    what it computed then (the old layers written out here with their old gains)."""
    import math

    import torch.nn.functional as F

    from animegen.models.layers import pixel_norm

    torch.manual_seed(1)
    c_dim, z_dim = 5, 16
    G, D = build_models("stylegan", c_dim=c_dim, resolution=16, z_dim=z_dim, w_dim=16, mapping_layers=2,
                        channel_base=256, channel_max=32, cond_mode=cond_mode)
    g_old, d_old = dict(G.state_dict()), dict(D.state_dict())
    if cond_mode == "concat":
        for k in ("mapping_net.class_in.weight", "blocks.0.class_in.weight"):
            g_old.pop(k, None), d_old.pop(k, None)
        g_old["mapping_net.layers.0.weight"] = torch.randn(16, z_dim + c_dim) * 100  # lr_mul 0.01's init
        d_old["blocks.0.conv.weight"] = torch.randn(D.blocks[0].conv.weight.shape[0], 3 + c_dim, 1, 1)
    else:
        d_old["embed.weight"] = torch.randn(D.cmap.weight.shape[0], c_dim)
        d_old.pop("cmap.weight")
    G.load_state_dict(g_old)
    D.load_state_dict(d_old)
    z, c = torch.randn(4, z_dim), torch.eye(c_dim)[[0, 3, 4, 1]]
    img = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        if cond_mode == "concat":
            w_old = g_old["mapping_net.layers.0.weight"]
            b = g_old["mapping_net.layers.0.bias"]
            x = torch.cat([pixel_norm(z), c], dim=1)
            old_first = F.linear(x, w_old * 0.01 / math.sqrt(z_dim + c_dim), b * 0.01)
            mapping = G.mapping_net
            new_first = mapping.layers[0](pixel_norm(z)) + mapping.class_in(c)
            torch.testing.assert_close(new_first, old_first, rtol=1e-5, atol=1e-5)
            maps = c[:, :, None, None].expand(-1, -1, 16, 16)
            old_rgb = F.conv2d(torch.cat([img, maps], 1), d_old["blocks.0.conv.weight"] / math.sqrt(3 + c_dim),
                               d_old["blocks.0.conv.bias"])
            new_rgb = D.blocks[0].conv(img) + D.blocks[0].class_in(c)[:, :, None, None]
            torch.testing.assert_close(new_rgb, old_rgb, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(D.cmap(c), F.linear(c, d_old["embed.weight"] / math.sqrt(c_dim)))
