"""Winograd F(m x m, 3 x 3) convolution: transforms, exactness in float64, float32 error, batch independence, and the
``conv3x3_algorithm`` switch of the modulated convolution (inference only, 'direct' unchanged)."""

import math

import pytest
import torch
import torch.nn.functional as F

from adapt3d.cameras import camera_label, frontal_label
from adapt3d.models import ops
from adapt3d.models.triplane import build_generator
from adapt3d.models.winograd import conv3x3_winograd, transform_weight, winograd_matrices


def test_f4x3_matrices_are_the_published_ones():
    # Lavin & Gray (2016), F(4x4, 3x3) with points 0, +-1, +-2 and infinity.
    at, g, bt = winograd_matrices(4, 3)
    assert torch.equal(bt, torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                                        dtype=torch.float64))
    assert torch.allclose(g, torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                                           [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
                                          dtype=torch.float64), atol=1e-15)
    assert torch.equal(at, torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                                         [0, 1, -1, 8, -8, 1]], dtype=torch.float64))


@pytest.mark.parametrize("tile,kernel", [(2, 3), (4, 3), (6, 3), (3, 2), (4, 5)])
def test_1d_transforms_compute_a_valid_correlation(tile, kernel):
    at, g, bt = winograd_matrices(tile, kernel)
    gen = torch.Generator().manual_seed(tile * 10 + kernel)
    d = torch.randn(tile + kernel - 1, dtype=torch.float64, generator=gen)
    k = torch.randn(kernel, dtype=torch.float64, generator=gen)
    y = at @ ((g @ k) * (bt @ d))
    ref = torch.stack([(d[i:i + kernel] * k).sum() for i in range(tile)])
    assert torch.allclose(y, ref, atol=1e-12)


def test_bad_tile_is_refused():
    with pytest.raises(ValueError, match="tile"):
        winograd_matrices(0)
    with pytest.raises(ValueError, match="interpolation points"):
        winograd_matrices(20)
    with pytest.raises(ValueError, match="weight"):
        conv3x3_winograd(torch.zeros(1, 4, 8, 8), torch.zeros(2, 3, 3, 3))


@pytest.mark.parametrize("tile", [2, 4, 6])
@pytest.mark.parametrize("h,w", [(6, 6), (13, 7), (1, 1), (25, 12)])
def test_float64_result_equals_conv2d(tile, h, w):
    # In float64 the algorithm is exact up to rounding: any indexing, padding or border mistake would show.
    gen = torch.Generator().manual_seed(h * 31 + w + tile)
    x = torch.randn(2, 5, h, w, dtype=torch.float64, generator=gen)
    weight = torch.randn(4, 5, 3, 3, dtype=torch.float64, generator=gen)
    y = conv3x3_winograd(x, weight, tile)
    assert y.shape == (2, 4, h, w)
    assert torch.allclose(y, F.conv2d(x, weight, padding=1), atol=1e-11)


def test_per_sample_weights_equal_grouped_convolution():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 6, 14, 9, dtype=torch.float64, generator=gen)
    weight = torch.randn(3, 2, 6, 3, 3, dtype=torch.float64, generator=gen)  # (N, O, C, 3, 3)
    ref = F.conv2d(x.reshape(1, 18, 14, 9), weight.reshape(6, 6, 3, 3), padding=1, groups=3).reshape(3, 2, 14, 9)
    assert torch.allclose(conv3x3_winograd(x, weight), ref, atol=1e-11)


def test_float32_error_is_small_relative_to_the_output():
    gen = torch.Generator().manual_seed(2)
    c = 128
    x = torch.randn(1, c, 40, 40, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c, c, 3, 3, generator=gen) / math.sqrt(9 * c)  # unit-variance outputs
    ref = F.conv2d(x.double(), weight.double(), padding=1)
    err = (conv3x3_winograd(x, weight) - ref).abs().max().item()
    direct_err = (F.conv2d(x, weight, padding=1) - ref).abs().max().item()
    assert err < 2e-4  # measured ~7e-5 (outputs reach ~5); direct: ~1e-5
    assert err < 50 * max(direct_err, 1e-7)
    assert conv3x3_winograd(x, weight).is_contiguous(memory_format=torch.channels_last)


def test_a_sample_does_not_depend_on_its_batch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 8, 20, 20, generator=gen)
    weight = torch.randn(3, 8, 8, 3, 3, generator=gen)
    full = conv3x3_winograd(x, weight)
    for s in range(3):
        assert torch.equal(full[s:s + 1], conv3x3_winograd(x[s:s + 1], weight[s:s + 1]))


def test_weight_transform_shape_and_centre_tap():
    # A kernel with only the centre tap is the identity scaled: G g G^T = outer(G[:, 1], G[:, 1]) * value.
    weight = torch.zeros(2, 3, 3, 3, dtype=torch.float64)
    weight[1, 2, 1, 1] = 2.0
    u = transform_weight(weight, tile=4)  # (36, C, O)
    _, g, _ = winograd_matrices(4)
    assert u.shape == (36, 3, 2)
    assert torch.allclose(u[:, 2, 1], 2.0 * torch.outer(g[:, 1], g[:, 1]).reshape(36))
    assert u[:, :2].abs().sum() == 0 and u[:, :, 0].abs().sum() == 0


def _modconv_inputs(seed=0, n=2, i=16, o=12, h=10):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, i, h, h, generator=gen), torch.randn(o, i, 3, 3, generator=gen),
            torch.randn(n, i, generator=gen) + 1, torch.randn(n, 1, h, h, generator=gen))


def test_modulated_conv2d_winograd_matches_direct_and_direct_is_unchanged():
    x, weight, styles, noise = _modconv_inputs()
    kw = dict(noise=noise, padding=1, demodulate=True, fused_modconv=True)
    with torch.no_grad():
        with ops.conv3x3_algorithm("direct"):
            direct = ops.modulated_conv2d(x, weight, styles, **kw)
        with ops.conv3x3_algorithm("winograd"):
            wino = ops.modulated_conv2d(x, weight, styles, **kw)
        with ops.conv3x3_algorithm("auto"):  # 16 channels: below the auto threshold, so direct
            auto = ops.modulated_conv2d(x, weight, styles, **kw)
    assert not torch.equal(wino, direct)  # really a different algorithm
    assert torch.allclose(wino, direct, atol=1e-5 * direct.abs().max().item())
    assert torch.equal(auto, direct)
    # flip_weight=False (a true convolution) must flip the kernel in the Winograd path too.
    with torch.no_grad():
        with ops.conv3x3_algorithm("direct"):
            d2 = ops.modulated_conv2d(x, weight, styles, flip_weight=False, **kw)
        with ops.conv3x3_algorithm("winograd"):
            w2 = ops.modulated_conv2d(x, weight, styles, flip_weight=False, **kw)
    assert torch.allclose(w2, d2, atol=1e-5 * d2.abs().max().item())


def test_autograd_always_uses_the_direct_convolution():
    x, weight, styles, noise = _modconv_inputs(seed=1)
    outs, grads = [], []
    for algorithm in ("direct", "winograd"):
        w = weight.clone().requires_grad_(True)
        with ops.conv3x3_algorithm(algorithm):
            y = ops.modulated_conv2d(x, w, styles, noise=noise, padding=1, fused_modconv=True)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append(w.grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])


def test_algorithm_switch_validates_and_restores():
    with pytest.raises(ValueError, match="'fast'"):
        ops.set_conv3x3_algorithm("fast")
    before = ops.set_conv3x3_algorithm("auto")
    ops.set_conv3x3_algorithm(before)
    with ops.conv3x3_algorithm("winograd"):
        assert ops._conv3x3["algorithm"] == "winograd"
    assert ops._conv3x3["algorithm"] == before


def test_tiny_generator_render_with_winograd_everywhere_is_close_to_direct():
    g = build_generator("tiny", seed=0).eval()
    cfg = g.config
    r = cfg.rendering
    z = torch.randn(2, cfg.z_dim, generator=torch.Generator().manual_seed(0))
    c_cond = frontal_label(r.avg_camera_radius, r.avg_camera_pivot, cfg.camera_fov_deg, batch_size=2)
    c = camera_label(math.pi / 2 + 0.2, math.pi / 2, radius=r.avg_camera_radius, pivot=r.avg_camera_pivot,
                     fov_deg=cfg.camera_fov_deg).expand(2, -1)
    out = {}
    with torch.no_grad():
        ws = g.mapping(z, c_cond, truncation_psi=0.7)
        for algorithm in ("direct", "winograd"):
            with ops.conv3x3_algorithm(algorithm):
                out[algorithm] = g.synthesis(ws, c, noise_mode="const", sampling="deterministic")
    for key in ("image", "image_raw", "image_depth"):
        a, b = out["direct"][key], out["winograd"][key]
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-4, key
    assert not torch.equal(out["direct"]["image"], out["winograd"]["image"])


def test_environment_variable_sets_the_default_and_is_validated():
    import subprocess
    import sys

    code = ("from adapt3d.models import ops; import torch\n"
            "print(ops._conv3x3['algorithm'])\n"
            "x = torch.zeros(1, 4, 8, 8); w = torch.zeros(4, 4, 3, 3); s = torch.ones(1, 4)\n"
            "with torch.no_grad(): ops.modulated_conv2d(x, w, s, padding=1)\n")
    env = dict(__import__("os").environ, ADAPT3D_CONV3X3="direct")
    ok = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "direct", ok.stderr
    env["ADAPT3D_CONV3X3"] = "fastest"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "ADAPT3D_CONV3X3" in bad.stderr and "'fastest'" in bad.stderr


@pytest.mark.parametrize("noise_kind", ["none", "const", "per_sample"])
@pytest.mark.parametrize("algorithm", ["direct", "winograd"])
def test_epilogue_in_blocks_equals_epilogue_afterwards(noise_kind, algorithm):
    # The Winograd path runs noise + bias + lrelu + gain + clamp on each block of rows while it is in cache; the
    # result must be bit-identical to running them on the whole output afterwards.
    gen = torch.Generator().manual_seed(4)
    n, i, o, h = 2, 16, 12, 20
    x = torch.randn(n, i, h, h, generator=gen)
    weight = torch.randn(o, i, 3, 3, generator=gen)
    styles = torch.randn(n, i, generator=gen) + 1
    bias = torch.randn(o, generator=gen)
    noise = {"none": None, "const": torch.randn(h, h, generator=gen) * 0.3,
             "per_sample": torch.randn(n, 1, h, h, generator=gen) * 0.3}[noise_kind]

    def epilogue(y):
        return ops._bias_act_(y, bias, act="lrelu", gain=1.5, clamp=0.8)

    with torch.no_grad(), ops.conv3x3_algorithm(algorithm):
        fused = ops.modulated_conv2d(x, weight, styles, noise=noise, padding=1, epilogue=epilogue)
        plain = epilogue(ops.modulated_conv2d(x, weight, styles, noise=noise, padding=1))
    assert torch.equal(fused, plain)
    assert fused.abs().max() <= 0.8 and (fused < 0).any() and (fused > 0).any()  # clamp and lrelu really ran
    with pytest.raises(ValueError, match="epilogue"):
        ops.modulated_conv2d(x, weight.requires_grad_(True), styles, padding=1, epilogue=epilogue)


def test_winograd_epilogue_sees_every_row_block_once():
    x = torch.randn(2, 4, 25, 9)
    weight = torch.randn(3, 4, 3, 3)
    seen = []
    y = conv3x3_winograd(x, weight, epilogue=lambda blk, s, h0, h1: seen.append((s, h0, h1, tuple(blk.shape))))
    rows = {s: sorted((h0, h1) for t, h0, h1, _ in seen if t == s) for s in range(2)}
    for s in range(2):
        covered = [r for h0, h1 in rows[s] for r in range(h0, h1)]
        assert covered == list(range(25))  # every row exactly once, in order
    assert all(shape == (1, 3, h1 - h0, 9) for _, h0, h1, shape in seen)
    assert y.shape == (2, 3, 25, 9)
