"""Low-level StyleGAN2/EG3D ops against independent naive implementations (eg3d-facts.md §4)."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from adapt3d.models import ops

# ----------------------------------------------------------------------------------------------------------------
# Naive references (explicit loops over samples; nothing shared with the library code path).


def naive_upfirdn2d(x, f, up=1, down=1, pad=(0, 0, 0, 0), flip_filter=False, gain=1.0):
    """x (N, C, H, W) numpy; f 2D (kh, kw) or 1D (k,) numpy (1D == separable outer(f, f)); pad = (x0, x1, y0, y1)."""
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    if f.ndim == 1:
        f = np.outer(f, f)
    f = f * gain
    n, c, h, w = x.shape
    x0, x1, y0, y1 = pad
    # 1. zero insertion: sample (i, j) goes to (i * up, j * up), up - 1 zeros after each.
    hu, wu = h * up, w * up
    u = np.zeros((n, c, hu, wu))
    for i in range(h):
        for j in range(w):
            u[:, :, i * up, j * up] = x[:, :, i, j]
    # 2. pad with zeros / crop (negative): padded[i, j] = u[i - y0, j - x0] when inside.
    hp, wp = hu + y0 + y1, wu + x0 + x1
    p = np.zeros((n, c, hp, wp))
    for i in range(hp):
        for j in range(wp):
            si, sj = i - y0, j - x0
            if 0 <= si < hu and 0 <= sj < wu:
                p[:, :, i, j] = u[:, :, si, sj]
    # 3. 'valid' true convolution (or correlation with flip_filter).
    kh, kw = f.shape
    ho, wo = hp - kh + 1, wp - kw + 1
    out = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            acc = np.zeros((n, c))
            for a in range(kh):
                for b in range(kw):
                    if flip_filter:  # correlation
                        acc += p[:, :, i + a, j + b] * f[a, b]
                    else:  # convolution: out[i] = sum_a p[i + kh - 1 - a] f[a]
                        acc += p[:, :, i + kh - 1 - a, j + kw - 1 - b] * f[a, b]
            out[:, :, i, j] = acc
    # 4. decimation from index 0.
    return out[:, :, ::down, ::down]


def naive_correlate(x, w, stride=1):
    """Plain 'valid' cross-correlation, x (N, I, H, W), w (O, I, kh, kw)."""
    n, ci, h, wd = x.shape
    co, _, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, co, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = x[:, :, i * stride: i * stride + kh, j * stride: j * stride + kw]  # (N, I, kh, kw)
            out[:, :, i, j] = np.einsum("nihw,oihw->no", patch, w)
    return out


def naive_transposed_conv(x, w, stride):
    """Scatter form of a transposed convolution with w (I, O, kh, kw) (PyTorch layout, no flip, padding 0)."""
    n, ci, h, wd = x.shape
    _, co, kh, kw = w.shape
    out = np.zeros((n, co, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for m in range(h):
        for q in range(wd):
            for a in range(kh):
                for b in range(kw):
                    out[:, :, m * stride + a, q * stride + b] += np.einsum("ni,io->no", x[:, :, m, q], w[:, :, a, b])
    return out


def _t(a):
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------------------
# setup_filter / upfirdn2d


def test_setup_filter_is_normalised_outer_product():
    f = ops.setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4)
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    assert torch.equal(f, expected)
    g = ops.setup_filter([2.0, 5.0, 1.0])
    assert torch.allclose(g.sum(), torch.tensor(1.0), atol=1e-7)
    assert torch.allclose(g, torch.outer(torch.tensor([2.0, 5, 1]), torch.tensor([2.0, 5, 1])) / 64)
    with pytest.raises(ValueError):
        ops.setup_filter([])


UPFIRDN_CASES = [
    # up, down, pad (x0, x1, y0, y1), flip_filter, gain
    (1, 1, (0, 0, 0, 0), False, 1.0),
    (2, 1, (2, 1, 2, 1), False, 4.0),  # upsample2d's convention
    (1, 2, (1, 1, 1, 1), False, 1.0),  # downsample2d's convention
    (2, 1, (3, 0, 1, 2), False, 1.0),  # asymmetric padding catches x/y or x0/x1 mix-ups
    (1, 2, (2, 1, 0, 3), True, 1.0),
    (2, 2, (1, 2, 2, 1), False, 2.0),
    (3, 1, (1, 1, 2, 0), True, 1.0),
    (1, 3, (0, 2, 1, 1), False, 1.0),
    (1, 1, (-1, 2, 1, -2), False, 1.0),  # mixed crop / pad
    (2, 1, (-2, -1, -1, -3), False, 1.0),  # crop after upsampling
    (2, 3, (3, 3, 3, 3), True, 0.5),
]


@pytest.mark.parametrize("up,down,pad,flip,gain", UPFIRDN_CASES)
@pytest.mark.parametrize("separable", [False, True])
def test_upfirdn2d_matches_naive(up, down, pad, flip, gain, separable):
    rng = _rng(up * 100 + down * 10 + sum(pad) + 7 * separable)
    x = rng.standard_normal((2, 3, 5, 7))  # non-square, odd sizes
    if separable:
        f = rng.uniform(0.1, 1.0, size=4)  # asymmetric taps: flipping matters
    else:
        f = rng.uniform(0.1, 1.0, size=(4, 3))  # non-square, asymmetric 2D filter
    ref = naive_upfirdn2d(x, f, up, down, pad, flip, gain)
    out = ops.upfirdn2d(_t(x), _t(f), up=up, down=down, padding=list(pad), flip_filter=flip, gain=gain)
    assert out.shape == ref.shape
    assert torch.allclose(out, _t(ref), atol=1e-12), float((out - _t(ref)).abs().max())


def test_upfirdn2d_flip_matters_and_padding_forms():
    rng = _rng(1)
    x = _t(rng.standard_normal((1, 1, 6, 6)))
    f = _t([[1.0, 2.0], [0.0, 0.0]])
    a = ops.upfirdn2d(x, f, padding=1, flip_filter=False)
    b = ops.upfirdn2d(x, f, padding=1, flip_filter=True)
    assert not torch.allclose(a, b)
    # int padding == all four sides; (px, py) == (px, px, py, py)
    assert torch.equal(ops.upfirdn2d(x, f, padding=2), ops.upfirdn2d(x, f, padding=[2, 2, 2, 2]))
    assert torch.equal(ops.upfirdn2d(x, f, padding=[1, 3]), ops.upfirdn2d(x, f, padding=[1, 1, 3, 3]))
    with pytest.raises(ValueError):
        ops.upfirdn2d(x, f, padding=[1, 2, 3])
    # no filter == identity filter
    assert torch.equal(ops.upfirdn2d(x, None, padding=0), x)


def test_upsample2d_constant_interior_and_shape():
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.full((2, 3, 8, 8), 0.7)
    y = ops.upsample2d(x, f)
    assert y.shape == (2, 3, 16, 16)
    interior = y[:, :, 2:-2, 2:-2]
    assert torch.allclose(interior, torch.full_like(interior, 0.7), atol=1e-6)  # gain up**2 is right
    # border is darker (zero padding), proving the test looks at a non-trivial region
    assert y[0, 0, 0, 0] < 0.7
    z = ops.downsample2d(x, f)
    assert z.shape == (2, 3, 4, 4)
    assert torch.allclose(z[:, :, 1:-1, 1:-1], torch.full((2, 3, 2, 2), 0.7), atol=1e-6)


def test_downsample_of_upsample_recovers_smooth_image():
    f = ops.setup_filter([1, 3, 3, 1])
    i = torch.arange(16, dtype=torch.float64)
    yy, xx = torch.meshgrid(i, i, indexing="ij")
    ramp = (0.3 * xx - 0.2 * yy + 1.0)[None, None]
    back = ops.downsample2d(ops.upsample2d(ramp, f.double()), f.double())
    assert back.shape == ramp.shape
    # centred conventions: a linear ramp is reproduced exactly away from the border
    assert torch.allclose(back[..., 3:-3, 3:-3], ramp[..., 3:-3, 3:-3], atol=1e-10)
    smooth = torch.sin(xx * 2 * math.pi / 16) * torch.cos(yy * 2 * math.pi / 16)
    back = ops.downsample2d(ops.upsample2d(smooth[None, None], f.double()), f.double())[0, 0]
    err = (back - smooth)[3:-3, 3:-3].abs().max()
    assert err < 0.1
    # a half-pixel shift would be much worse: the comparison is sensitive to the centring
    assert (back[3:-3, 3:-3] - smooth[3:-3, 4:-2]).abs().max() > 3 * err


def test_upsample_downsample_match_upfirdn2d_conventions():
    rng = _rng(3)
    x = rng.standard_normal((1, 2, 5, 6))
    f1 = np.array([1.0, 3, 3, 1])
    f = np.outer(f1, f1) / 64
    up = ops.upsample2d(_t(x), _t(f))
    assert torch.allclose(up, _t(naive_upfirdn2d(x, f, up=2, pad=(2, 1, 2, 1), gain=4)), atol=1e-12)
    down = ops.downsample2d(_t(x[..., :4, :6]), _t(f))
    assert torch.allclose(down, _t(naive_upfirdn2d(x[..., :4, :6], f, down=2, pad=(1, 1, 1, 1))), atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# bias_act


def test_bias_act_values():
    x = torch.tensor([[-1.0, 2.0], [3.0, -4.0]])  # (N=2, C=2)
    b = torch.tensor([0.5, -1.0])
    s2 = math.sqrt(2)
    y = ops.bias_act(x, b, act="lrelu")
    expected = torch.tensor([[-0.5 * 0.2 * s2, 1.0 * s2], [3.5 * s2, -5.0 * 0.2 * s2]])
    assert torch.allclose(y, expected, atol=1e-6)
    # relu gain sqrt 2; linear gain 1
    assert torch.allclose(ops.bias_act(x, b, act="relu"), torch.tensor([[0.0, s2], [3.5 * s2, 0.0]]), atol=1e-6)
    assert torch.allclose(ops.bias_act(x, b), x + b)
    # custom alpha and gain
    y = ops.bias_act(x, None, act="lrelu", alpha=0.5, gain=3.0)
    assert torch.allclose(y, torch.tensor([[-1.5, 6.0], [9.0, -6.0]]))
    # clamp applies after the gain
    y = ops.bias_act(x, b, act="lrelu", clamp=2.0)
    assert torch.allclose(y, expected.clamp(-2, 2))
    assert y.max() == 2.0
    # bias broadcast along another dim
    x3 = torch.zeros(2, 3, 4)
    y = ops.bias_act(x3, torch.tensor([1.0, 2.0, 3.0, 4.0]), dim=2)
    assert torch.equal(y[1, 2], torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert torch.allclose(ops.bias_act(x, act="sigmoid"), torch.sigmoid(x))
    assert torch.allclose(ops.bias_act(x, act="softplus"), F.softplus(x))
    with pytest.raises(ValueError):
        ops.bias_act(x, act="swish-ish")


# ----------------------------------------------------------------------------------------------------------------
# conv2d_resample

F1 = np.array([1.0, 3, 3, 1])
FIR = np.outer(F1, F1) / 64


@pytest.mark.parametrize("flip_weight", [False, True])
def test_conv2d_resample_up2_is_transposed_conv_then_filter(flip_weight):
    rng = _rng(11)
    x = rng.standard_normal((2, 3, 5, 4))
    w = rng.standard_normal((4, 3, 3, 3))  # (O, I, k, k)
    out = ops.conv2d_resample(_t(x), _t(w), f=_t(FIR), up=2, padding=1, flip_weight=flip_weight)
    wt = w.transpose(1, 0, 2, 3)  # (I, O, k, k), no spatial flip for flip_weight=False (EG3D's conv0)
    if flip_weight:
        wt = wt[:, :, ::-1, ::-1]
    ref = naive_transposed_conv(x, wt, stride=2)
    ref = naive_upfirdn2d(ref, FIR, pad=(1, 1, 1, 1), gain=4)
    assert out.shape == (2, 4, 10, 8) == ref.shape
    assert torch.allclose(out, _t(ref), atol=1e-10)


def test_conv2d_resample_down2_is_filter_then_strided_conv():
    rng = _rng(12)
    x = rng.standard_normal((2, 3, 8, 6))
    w = rng.standard_normal((5, 3, 3, 3))
    out = ops.conv2d_resample(_t(x), _t(w), f=_t(FIR), down=2, padding=1, flip_weight=True)
    ref = naive_correlate(naive_upfirdn2d(x, FIR, pad=(2, 2, 2, 2)), w, stride=2)
    assert out.shape == (2, 5, 4, 3) == ref.shape
    assert torch.allclose(out, _t(ref), atol=1e-10)


def test_conv2d_resample_1x1_down_and_plain_3x3():
    rng = _rng(13)
    x = rng.standard_normal((1, 3, 8, 8))
    w1 = rng.standard_normal((2, 3, 1, 1))
    out = ops.conv2d_resample(_t(x), _t(w1), f=_t(FIR), down=2)
    ref = naive_correlate(naive_upfirdn2d(x, FIR, down=2, pad=(1, 1, 1, 1)), w1)
    assert torch.allclose(out, _t(ref), atol=1e-10)
    w3 = rng.standard_normal((2, 3, 3, 3))
    out = ops.conv2d_resample(_t(x), _t(w3), padding=1, flip_weight=True)
    ref = naive_correlate(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), w3)
    assert torch.allclose(out, _t(ref), atol=1e-10)
    # flip_weight=False is a true convolution
    out = ops.conv2d_resample(_t(x), _t(w3), padding=1, flip_weight=False)
    ref = naive_correlate(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), w3[:, :, ::-1, ::-1])
    assert torch.allclose(out, _t(ref), atol=1e-10)


def test_conv2d_resample_grouped_up2_equals_per_group():
    rng = _rng(14)
    x = rng.standard_normal((1, 4, 4, 4))  # 2 groups of 2 channels
    w = rng.standard_normal((6, 2, 3, 3))  # 2 groups of 3 outputs
    out = ops.conv2d_resample(_t(x), _t(w), f=_t(FIR), up=2, padding=1, groups=2, flip_weight=False)
    parts = [ops.conv2d_resample(_t(x[:, 2 * g: 2 * g + 2]), _t(w[3 * g: 3 * g + 3]), f=_t(FIR), up=2, padding=1,
                                 flip_weight=False) for g in range(2)]
    assert torch.allclose(out, torch.cat(parts, 1), atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# modulated_conv2d


def naive_modconv(x, weight, styles, noise, up, padding, f, demodulate, flip_weight):
    """Per-sample loop: scale weight by styles, demodulate, run an ordinary conv2d_resample."""
    outs = []
    for n in range(x.shape[0]):
        w = weight * styles[n].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / torch.sqrt(w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        outs.append(ops.conv2d_resample(x[n:n + 1], w, f=f, up=up, padding=padding, flip_weight=flip_weight))
    y = torch.cat(outs)
    return y + noise if noise is not None else y


@pytest.mark.parametrize("demodulate,use_noise,up", list(itertools.product([True, False], [False, True], [1, 2])))
def test_modulated_conv2d_fused_equals_nonfused(demodulate, use_noise, up):
    g = torch.Generator().manual_seed(up * 4 + 2 * demodulate + use_noise)
    n, i, o, h = 3, 5, 4, 6
    x = torch.randn(n, i, h, h, generator=g)
    weight = torch.randn(o, i, 3, 3, generator=g)
    styles = torch.randn(n, i, generator=g) + 1
    noise = torch.randn(n, 1, h * up, h * up, generator=g) if use_noise else None
    f = ops.setup_filter([1, 3, 3, 1])
    kw = dict(noise=noise, up=up, padding=1, resample_filter=f, demodulate=demodulate, flip_weight=(up == 1))
    fused = ops.modulated_conv2d(x, weight, styles, fused_modconv=True, **kw)
    nonfused = ops.modulated_conv2d(x, weight, styles, fused_modconv=False, **kw)
    assert fused.shape == (n, o, h * up, h * up)
    scale = fused.abs().max().item()
    assert torch.allclose(fused, nonfused, atol=1e-5 * max(scale, 1)), float((fused - nonfused).abs().max())
    ref = naive_modconv(x.double(), weight.double(), styles.double(), None if noise is None else noise.double(),
                        up, 1, f.double(), demodulate, up == 1)
    assert torch.allclose(fused.double(), ref, atol=1e-4 * max(scale, 1))


def test_modulated_conv2d_demodulation_gives_unit_norm_weights():
    # Constructed weight: output channel o is constant (o + 1) everywhere, so its modulated norm is known analytically.
    o, i, k = 3, 4, 3
    weight = torch.arange(1, o + 1, dtype=torch.float64).reshape(o, 1, 1, 1).expand(o, i, k, k).contiguous()
    s = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    styles = s.expand(i, i).contiguous()  # one sample per input channel, all with the same styles
    # Probe the effective weight: input sample n is a delta at the centre of a 3x3 image in channel n.
    x = torch.zeros(i, i, k, k, dtype=torch.float64)
    for n in range(i):
        x[n, n, 1, 1] = 1.0
    for fused in (True, False):
        y = ops.modulated_conv2d(x, weight, styles, padding=1, demodulate=True, fused_modconv=fused)  # (I, O, 3, 3)
        eff = y.permute(1, 0, 2, 3)  # (O, I, 3, 3): every tap of the effective weight
        norms = eff.square().sum(dim=[1, 2, 3])
        assert torch.allclose(norms, torch.ones(o, dtype=torch.float64), atol=1e-7)
        for oo in range(o):
            expected = (oo + 1) * s / math.sqrt((oo + 1) ** 2 * float(s.square().sum()) * k * k + 1e-8)
            assert torch.allclose(eff[oo, :, 1, 1], expected, atol=1e-12)
        # without demodulation the probe returns weight * styles exactly
        y = ops.modulated_conv2d(x, weight, styles, padding=1, demodulate=False, fused_modconv=fused)
        assert torch.allclose(y.permute(1, 0, 2, 3), weight * s.reshape(1, -1, 1, 1), atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# gradients


def test_gradcheck_upfirdn2d():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    f = torch.rand(3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.upfirdn2d(a, b, up=2, down=1, padding=[1, 2, 0, 1]), (x, f))
    assert torch.autograd.gradcheck(lambda a, b: ops.upfirdn2d(a, b, down=2, padding=[2, 1, 1, 2],
                                                               flip_filter=True), (x, f))
    f1 = torch.rand(3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.upfirdn2d(a, b, up=2, padding=1, gain=2.0), (x, f1))


@pytest.mark.parametrize("fused,up,demod", [(True, 1, True), (False, 1, True), (True, 2, True), (False, 2, False)])
def test_gradcheck_modulated_conv2d(fused, up, demod):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    s = (torch.randn(2, 2, dtype=torch.float64, generator=g) + 1).requires_grad_()
    noise = torch.randn(2, 1, 3 * up, 3 * up, dtype=torch.float64, generator=g, requires_grad=True)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    fn = lambda a, b, c, d: ops.modulated_conv2d(a, b, c, noise=d, up=up, padding=1, resample_filter=f,  # noqa: E731
                                                 demodulate=demod, flip_weight=(up == 1), fused_modconv=fused)
    assert torch.autograd.gradcheck(fn, (x, w, s, noise))


def test_gradcheck_other_ops():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    # lrelu is non-differentiable only at 0, which random inputs avoid; clamp large enough not to bind
    assert torch.autograd.gradcheck(lambda a, c: ops.bias_act(a, c, act="lrelu", clamp=100.0), (x, b))
    assert torch.autograd.gradcheck(lambda a: ops.upsample2d(a, f), (x,))
    assert torch.autograd.gradcheck(lambda a: ops.downsample2d(a, f), (x,))
    assert torch.autograd.gradcheck(lambda a, c: ops.conv2d_resample(a, c, f=f, up=2, padding=1, flip_weight=False),
                                    (x, w))
    assert torch.autograd.gradcheck(lambda a, c: ops.conv2d_resample(a, c, f=f, down=2, padding=1), (x, w))
    assert torch.autograd.gradcheck(lambda a: ops.normalize_2nd_moment(a.reshape(2, -1)), (x,))


def test_clamped_bias_act_blocks_gradient():
    x = torch.tensor([10.0, 0.5], requires_grad=True)
    ops.bias_act(x, act="lrelu", clamp=1.0).sum().backward()
    assert x.grad[0] == 0 and torch.isclose(x.grad[1], torch.tensor(math.sqrt(2)))
