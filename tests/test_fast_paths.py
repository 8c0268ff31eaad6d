"""Every fast path agrees with the reference path it replaces (fused bias_act, torch.compile with fallback,
SDPA attention and channels-last diffusers models, TF32 switches). GPU-only agreement tests carry the gpu marker."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from adapt3d.models import ops
from adapt3d.utils.fast import backend_settings, compile_module, compile_status, configure_backends

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


# ------------------------------------------------------------------------------------------------- bias_act
@pytest.mark.parametrize("act,clamp", [("lrelu", None), ("lrelu", 0.6), ("relu", 0.6), ("linear", 0.5),
                                       ("linear", None)])
@pytest.mark.parametrize("dim", [1, -1])
def test_fused_bias_act_matches_the_reference_values_and_gradients(act, clamp, dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 6, generator=g, dtype=torch.float64)
    b = torch.randn(x.shape[dim], generator=g, dtype=torch.float64)
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)  # upstream gradient weights

    def run(impl):
        xi, bi = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        with ops.bias_act_impl(impl):
            y = ops.bias_act(xi, bi, dim=dim, act=act, clamp=clamp)
            # a nonlinear consumer, so that the input gradient depends on x (as in D's R1 penalty)
            gx, gb = torch.autograd.grad((y.square() * w).sum(), (xi, bi), create_graph=True)
            ggx, ggb = torch.autograd.grad(gx.square().sum(), (xi, bi))  # the penalty, differentiated again
        return y.detach(), gx.detach(), gb.detach(), ggx, ggb

    ref, fused = run("ref"), run("fused")
    assert torch.equal(fused[0], ref[0])  # forward: same ops in the same order, bit for bit
    for a, r in zip(fused[1:], ref[1:]):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert float(ref[3].abs().max()) > 0  # the second-order path is exercised


def test_fused_bias_act_is_one_node_saving_only_its_output():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    with ops.bias_act_impl("fused"):
        y = ops.bias_act(x, b, act="lrelu", clamp=256)
    assert type(y.grad_fn).__name__ == "_FusedBiasActBackward"
    assert [t.data_ptr() for t in y.grad_fn.saved_tensors] == [y.data_ptr()]
    with ops.bias_act_impl("ref"):
        r = ops.bias_act(x, b, act="lrelu", clamp=256)
    assert type(r.grad_fn).__name__ != "_FusedBiasActBackward"
    with torch.no_grad():  # no autograd: the reference path (the fused node is for training)
        assert ops.bias_act(x, b, act="lrelu").grad_fn is None


def test_fused_bias_act_passes_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    x = x + 0.1 * torch.sign(x)  # keep away from the kink at 0 (finite differences)
    x.requires_grad_(True)
    b = (0.01 * torch.randn(3, generator=g, dtype=torch.float64)).requires_grad_(True)

    def f(x, b):
        return ops._FusedBiasAct.apply(x, b, 1, 0.2, math.sqrt(2), None)

    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


def test_unknown_bias_act_impl_is_refused():
    with pytest.raises(ValueError, match="bias_act impl must be one of"):
        ops.set_bias_act_impl("cuda")


def test_discriminator_r1_gradients_agree_between_bias_act_impls():
    from adapt3d.models.triplane import build_generator
    from adapt3d.pipelines.finetune import default_discriminator
    G = build_generator("tiny", seed=0)
    D = default_discriminator(G, seed=0)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 64, 64, generator=g)
    raw = torch.randn(2, 3, 32, 32, generator=g)
    c = torch.randn(2, 25, generator=g)

    def r1(impl):
        D.zero_grad(set_to_none=True)
        i, r = img.clone().requires_grad_(True), raw.clone().requires_grad_(True)
        with ops.bias_act_impl(impl):
            logits = D({"image": i, "image_raw": r}, c)
            gi, gr = torch.autograd.grad(logits.sum(), (i, r), create_graph=True)
            (gi.square().sum() + gr.square().sum()).backward()
        return logits.detach(), {n: p.grad.clone() for n, p in D.named_parameters() if p.grad is not None}

    (la, ga), (lb, gb) = r1("ref"), r1("fused")
    assert torch.equal(la, lb)
    assert ga.keys() == gb.keys() and len(ga) > 10
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-6, msg=n)


def test_generator_gradients_agree_between_bias_act_impls():
    from adapt3d.cameras import camera_label
    from adapt3d.models.triplane import build_generator
    G = build_generator("tiny", seed=0).train()
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    c = camera_label(torch.tensor([1.4, 1.7]), torch.tensor([1.5, 1.6]), radius=2.7, pivot=[0, 0, 0.2],
                     fov_deg=18.837)

    def run(impl):
        G.zero_grad(set_to_none=True)
        with ops.bias_act_impl(impl):
            out = G(z, c, noise_mode="const", sampling="deterministic")
            (out.image.square().mean() + out.image_raw.mean()).backward()
        return out.image.detach(), {n: p.grad.clone() for n, p in G.named_parameters() if p.grad is not None}

    (ia, ga), (ib, gb) = run("ref"), run("fused")
    assert torch.equal(ia, ib)
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-7, msg=n)


# ---------------------------------------------------------------------------------------------- torch.compile
def _tiny_mapping():
    from adapt3d.models.stylegan2 import MappingNetwork
    torch.manual_seed(0)
    return MappingNetwork(z_dim=16, c_dim=25, w_dim=16, num_ws=3, num_layers=2)


@pytest.mark.slow
def test_compiled_module_matches_eager_and_keeps_its_state_dict():
    """torch.compile (inductor, the CPU's C++ compiler) of one small layer: forward and gradients as eager."""
    from adapt3d.models.stylegan2 import FullyConnectedLayer
    torch.manual_seed(0)
    m = FullyConnectedLayer(8, 8, activation="lrelu")
    eager = copy.deepcopy(m)
    keys = list(m.state_dict())
    compile_module(m)
    assert compile_status(m) == "pending" and list(m.state_dict()) == keys
    x = torch.randn(4, 8)
    out, ref = m(x), eager(x)
    assert compile_status(m) == "compiled", compile_status(m)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (n, p), q in zip(m.named_parameters(), eager.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
    twin = copy.deepcopy(m)  # a copy runs its own weights, not the original's
    with torch.no_grad():
        twin.weight.mul_(0.5)
        assert not torch.allclose(twin(x), m(x))
        torch.testing.assert_close(twin(x), type(twin).forward(twin, x), rtol=1e-5, atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor: no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    m = compile_module(_tiny_mapping())
    z, c = torch.randn(2, 16), torch.randn(2, 25)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        out = m(z, c)
    assert compile_status(m).startswith("eager: RuntimeError")
    torch.testing.assert_close(out, type(m).forward(m, z, c))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(z, c)  # stays eager, no second warning
    bad = compile_module(_tiny_mapping())
    with pytest.raises(Exception) as e:  # a bad input raises eager's own error, not the compile error
        bad(torch.randn(2, 7), c)
    assert "no C++ compiler" not in str(e.value)


def test_configure_backends_sets_and_reports_the_switches():
    before = backend_settings()
    try:
        assert configure_backends(tf32=True, cudnn_benchmark=True) == {"matmul_tf32": True, "cudnn_tf32": True,
                                                                         "cudnn_benchmark": True}
        assert configure_backends(tf32=False, cudnn_benchmark=False) == {"matmul_tf32": False, "cudnn_tf32": False,
                                                                           "cudnn_benchmark": False}
    finally:
        configure_backends(tf32=before["matmul_tf32"], cudnn_benchmark=before["cudnn_benchmark"])
        torch.backends.cudnn.allow_tf32 = before["cudnn_tf32"]


# ------------------------------------------------------------------------------------------ diffusers models
def _tiny_unet():
    from adapt3d.diffusion.tiny_models import _tiny_unet
    torch.manual_seed(0)
    return _tiny_unet().eval()


def test_sdpa_attention_matches_the_classic_attention():
    from adapt3d.diffusion.speed import attention_impl, set_attention
    unet = _tiny_unet()
    x = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    e = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(1))
    assert set_attention(unet, "classic") == ["UNet2DConditionModel"] and attention_impl(unet) == "classic"
    with torch.no_grad():
        ref = unet(x, 500, encoder_hidden_states=e).sample
        set_attention(unet, "sdpa")
        assert attention_impl(unet) == "sdpa"
        out = unet(x, 500, encoder_hidden_states=e).sample
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="attention: 'flash' is not one of"):
        set_attention(unet, "flash")


def test_channels_last_unet_matches_contiguous(tiny_models):
    from diffusers import StableDiffusionImg2ImgPipeline

    from adapt3d.diffusion.speed import optimize_pipeline
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(tiny_models["stable-diffusion"]))
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    e = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = pipe.unet(x, 10, encoder_hidden_states=e).sample
        info = optimize_pipeline(pipe, attention="sdpa", channels_last=True)
        out = pipe.unet(x, 10, encoder_hidden_states=e).sample
    assert info["channels_last"] == ["UNet2DConditionModel", "AutoencoderKL"]
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


from adapt3d.testing.fixtures import tiny_models  # noqa: E402,F401  (registers the fixture)


# ----------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@needs_cuda
def test_cuda_fused_bias_act_matches_reference_in_fp16_and_fp32():
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(4, 64, 32, 32, device="cuda", dtype=dtype, requires_grad=True)
        b = torch.randn(64, device="cuda", dtype=dtype, requires_grad=True)
        outs = []
        for impl in ("ref", "fused"):
            with ops.bias_act_impl(impl):
                y = ops.bias_act(x, b, act="lrelu", clamp=256)
                gx, gb = torch.autograd.grad(y.float().square().sum(), (x, b))
            outs.append((y, gx, gb))
        assert torch.equal(outs[0][0], outs[1][0])
        for a, r in zip(outs[1][1:], outs[0][1:]):
            torch.testing.assert_close(a.float(), r.float(), rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@needs_cuda
def test_cuda_sdpa_fp16_unet_matches_classic_attention():
    from adapt3d.diffusion.speed import set_attention
    unet = _tiny_unet().to("cuda", torch.float16)
    x = torch.randn(2, 4, 32, 32, device="cuda", dtype=torch.float16)
    e = torch.randn(2, 77, 32, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        set_attention(unet, "classic")
        ref = unet(x, 500, encoder_hidden_states=e).sample.float()
        set_attention(unet, "sdpa")
        out = unet(x, 500, encoder_hidden_states=e).sample.float()
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_low_precision_dtype_switch_is_validated_and_cpu_stays_float32():
    from adapt3d.cameras import camera_label
    from adapt3d.models.triplane import build_generator
    G = build_generator("tiny", seed=0).eval()
    G.superresolution.block0.use_fp16 = True  # as EG3D's SR blocks; only CUDA runs them in low precision
    c = camera_label(1.6, 1.5, radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837)
    z = torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = G(z, c, noise_mode="const", sampling="deterministic").image
        old = ops.set_low_precision_dtype(torch.bfloat16)
        try:
            out = G(z, c, noise_mode="const", sampling="deterministic").image
        finally:
            ops.set_low_precision_dtype(old)
    assert old == torch.float16 and out.dtype == torch.float32 and torch.equal(out, ref)
    with pytest.raises(ValueError, match="low precision dtype must be one of"):
        ops.set_low_precision_dtype(torch.float64)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision_layers_agree_with_float32(dtype):
    """EG3D's reduced-precision layers (SR, D >= 64 px) in fp16 / bf16 against float32 on the same GPU."""
    from adapt3d.cameras import camera_label
    from adapt3d.models.triplane import build_generator
    from adapt3d.pipelines.finetune import default_discriminator
    G = build_generator("ffhq512", seed=0).eval().cuda()
    D = default_discriminator(G, seed=0).eval().cuda()
    c = camera_label(1.6, 1.5, radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837).cuda()
    z = torch.randn(1, 512, generator=torch.Generator().manual_seed(0)).cuda()
    old = ops.set_low_precision_dtype(dtype)
    try:
        with torch.no_grad():
            ref = G(z, c, noise_mode="const", sampling="deterministic", force_fp32=True)
            out = G(z, c, noise_mode="const", sampling="deterministic")
            d_ref = D({"image": ref.image, "image_raw": ref.image_raw}, c, force_fp32=True)
            d_out = D({"image": ref.image, "image_raw": ref.image_raw}, c)
    finally:
        ops.set_low_precision_dtype(old)
    assert torch.isfinite(out.image).all() and torch.isfinite(d_out).all()
    err = (out.image - ref.image).abs()
    assert float(err.max()) < 0.15 and float(err.mean()) < 0.02
    assert float((d_out - d_ref).abs().max()) < 0.05 * (1 + float(d_ref.abs().max()))
