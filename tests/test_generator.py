"""TriPlaneGenerator end to end on the 'tiny' preset (EG3D semantics: eg3d-facts.md §1.3)."""

import copy
import json
import math
import re

import pytest
import torch

from adapt3d.cameras import camera_label, frontal_label
from adapt3d.models import ops
from adapt3d.models.triplane import (PRESETS, OSGDecoder, SynthesisOutput, TriPlaneGeneratorConfig, build_generator,
                                     preset_config)
from adapt3d.rendering.renderer import RenderingConfig
from conftest import shared_path



@pytest.fixture(scope="module")
def G():
    return build_generator("tiny", seed=0).eval()


def _cams(G, n=1, yaw0=0.3):
    cfg = G.config
    yaw = math.pi / 2 + torch.linspace(-yaw0, yaw0, n) if n > 1 else torch.tensor([math.pi / 2 + yaw0])
    pitch = torch.full((n,), math.pi / 2 - 0.1)
    return camera_label(yaw, pitch, radius=cfg.rendering.avg_camera_radius, pivot=cfg.rendering.avg_camera_pivot,
                        fov_deg=cfg.camera_fov_deg)


def _cond(G, n=1):
    r = G.config.rendering
    return frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg, batch_size=n)


def _z(G, n=1, seed=0):
    return torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))


def _equal_outputs(a: SynthesisOutput, b: SynthesisOutput) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("image", "image_raw", "image_depth", "features"))


# ----------------------------------------------------------------------------------------------------------------
# shapes, mapping, truncation


def test_output_shapes_and_ranges(G):
    n = 2
    with torch.no_grad():
        ws = G.mapping(_z(G, n), _cond(G, n))
        out = G.synthesis(ws, _cams(G, n), noise_mode="const")
    assert G.num_ws == 10  # backbone to 64^2: b4 (1 conv) + 4 blocks x 2 convs + the last toRGB
    assert ws.shape == (n, G.num_ws, 64)
    assert out.image.shape == (n, 3, 64, 64)
    assert out.image_raw.shape == (n, 3, 32, 32)
    assert out.image_depth.shape == (n, 1, 32, 32)
    assert out.features.shape == (n, 32, 32, 32)
    assert out.weights.shape == (n, 1, 32, 32)
    assert out["image"] is out.image  # EG3D-style dict access
    for t in (out.image, out.image_raw, out.image_depth, out.features, out.weights):
        assert torch.isfinite(t).all()
    r = G.config.rendering
    # deterministic (eval) sampling: every sample lies in [ray_start, ray_end], and so does the expected depth
    assert out.image_depth.min() >= r.ray_start - 1e-5 and out.image_depth.max() <= r.ray_end + 1e-5
    # features come from the widened sigmoid [-0.001, 1.001], composited with sum(w) <= 1, then mapped to [-1, 1]
    assert out.features.min() >= -1.002 and out.features.max() <= 1.002
    assert (out.weights >= 0).all() and (out.weights <= 1 + 1e-6).all()
    # the two samples differ (different z, different cameras)
    assert not torch.allclose(out.image[0], out.image[1])


def test_image_raw_reproduces_eg3d_inplace_superresolution_quirk(G):
    # tiny uses SuperresolutionHybrid2X: when the 32^2 rendering is not resized, EG3D's in-place toRGB add makes
    # image_raw = rgb + toRGB(block0); when it is resized, image_raw is the raw rgb (features[:, :3]).
    with torch.no_grad():
        ws = G.mapping(_z(G), _cond(G))
        out = G.synthesis(ws, _cams(G), noise_mode="const")
        ws_sr = ws[:, -1:].repeat(1, 3, 1)
        _, img0 = G.superresolution.block0(out.features, out.features[:, :3], ws_sr, noise_mode="none")
        assert torch.allclose(out.image_raw, img0, atol=1e-6)
        assert not torch.allclose(out.image_raw, out.features[:, :3], atol=1e-3)
        small = G.synthesis(ws, _cams(G), noise_mode="const", neural_rendering_resolution=16)
    assert torch.equal(small.image_raw, small.features[:, :3])
    assert small.image_raw.min() >= -1.002 and small.image_raw.max() <= 1.002


def test_truncation():
    g = build_generator("tiny", seed=1)
    w_avg = torch.randn(g.w_dim, generator=torch.Generator().manual_seed(5))
    g.backbone.mapping.w_avg.copy_(w_avg)  # the default zeros would make psi = 0 trivially "exact"
    z, c = _z(g, 3), _cond(g, 3)
    with torch.no_grad():
        ws = g.mapping(z, c)
        assert ws.shape == (3, g.num_ws, g.w_dim)
        assert torch.equal(ws[:, 0], ws[:, -1])  # one w broadcast to every layer
        w0 = g.mapping(z, c, truncation_psi=0.0)
        assert torch.equal(w0, w_avg.expand_as(w0))
        half = g.mapping(z, c, truncation_psi=0.5)
        assert torch.allclose(half, w_avg + 0.5 * (ws - w_avg), atol=1e-5)
        k = 4
        cut = g.mapping(z, c, truncation_psi=0.0, truncation_cutoff=k)
        assert torch.equal(cut[:, :k], w_avg.expand(3, k, -1))
        assert torch.equal(cut[:, k:], ws[:, k:])
        # psi = 1 ignores the cutoff
        assert torch.equal(g.mapping(z, c, truncation_psi=1.0, truncation_cutoff=k), ws)


def test_c_gen_conditioning_zero_makes_mapping_independent_of_c():
    c1 = camera_label(torch.tensor([1.2]), torch.tensor([1.4]), radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837)
    c2 = camera_label(torch.tensor([2.0]), torch.tensor([1.7]), radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837)
    cfg = preset_config("tiny")
    g = build_generator(cfg)
    z = _z(g)
    with torch.no_grad():
        assert not torch.allclose(g.mapping(z, c1), g.mapping(z, c2))  # control: c matters by default
        cfg.rendering.c_gen_conditioning_zero = True
        g0 = build_generator(cfg)
        assert torch.equal(g0.mapping(z, c1), g0.mapping(z, c2))
        assert torch.equal(g0.mapping(z, c1), g0.mapping(z, torch.zeros_like(c1)))
        # c_scale = 0 (EG3D's default when the key is missing) has the same effect
        cfg.rendering.c_gen_conditioning_zero = False
        cfg.rendering.c_scale = 0.0
        gs = build_generator(cfg)
        assert torch.equal(gs.mapping(z, c1), gs.mapping(z, c2))


def test_osg_decoder_by_hand():
    torch.manual_seed(0)
    dec = OSGDecoder(4, hidden_dim=5, output_dim=3)
    feats = torch.randn(2, 3, 6, 4)  # (N, planes, M, C)
    out = dec(feats)
    assert out["rgb"].shape == (2, 6, 3) and out["sigma"].shape == (2, 6, 1)
    fc0, fc2 = dec.net[0], dec.net[2]
    h = torch.nn.functional.softplus(feats.mean(1) @ (fc0.weight / 2).T + fc0.bias)  # 1/sqrt(4) weight gain
    y = h @ (fc2.weight / math.sqrt(5)).T + fc2.bias
    assert torch.allclose(out["sigma"], y[..., :1], atol=1e-6)
    assert torch.allclose(out["rgb"], torch.sigmoid(y[..., 1:]) * 1.002 - 0.001, atol=1e-6)
    with torch.no_grad():  # the in-place inference path computes the same values bit for bit
        assert torch.equal(dec(feats)["rgb"], out["rgb"].detach())
    with torch.no_grad():  # saturate: the widened sigmoid spans exactly [-0.001, 1.001]
        fc2.bias.copy_(torch.tensor([0.0, 1e4, -1e4, 0.0]))
        rgb = dec(feats)["rgb"]
    assert torch.allclose(rgb[..., 0], torch.full((2, 6), 1.001)) and torch.allclose(rgb[..., 1], torch.full((2, 6),
                                                                                                              -0.001))


# ----------------------------------------------------------------------------------------------------------------
# randomness and determinism


def test_deterministic_const_is_bit_reproducible(G):
    ws = G.mapping(_z(G), _cond(G)).detach()
    c = _cams(G)
    with torch.no_grad():
        torch.manual_seed(0)
        a = G.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        torch.manual_seed(123)  # the global RNG must not matter
        b = G.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        d = G.synthesis(ws, c, noise_mode="const")  # eval mode defaults to deterministic
    assert _equal_outputs(a, b) and _equal_outputs(a, d)


def test_stochastic_sampling_is_seeded(G):
    ws = G.mapping(_z(G), _cond(G)).detach()
    c = _cams(G)
    with torch.no_grad():
        det = G.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        torch.manual_seed(0)
        a = G.synthesis(ws, c, noise_mode="const", sampling="stochastic")
        torch.manual_seed(0)
        b = G.synthesis(ws, c, noise_mode="const", sampling="stochastic")
        torch.manual_seed(1)
        d = G.synthesis(ws, c, noise_mode="const", sampling="stochastic")
    assert _equal_outputs(a, b)
    assert not torch.equal(a.image, d.image) and not torch.equal(a.image, det.image)
    assert not torch.equal(a.image_depth, d.image_depth)
    # backbone noise: noise_strength is initialised to 0, so give it a value to make the noise visible
    noisy = copy.deepcopy(G)
    for name, p in noisy.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)
    with torch.no_grad():
        torch.manual_seed(1)
        e = noisy.synthesis(ws, c, noise_mode="random", sampling="deterministic")
        torch.manual_seed(1)
        e2 = noisy.synthesis(ws, c, noise_mode="random", sampling="deterministic")
        torch.manual_seed(2)
        f = noisy.synthesis(ws, c, noise_mode="random", sampling="deterministic")
        k1 = noisy.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        k2 = noisy.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        none = noisy.synthesis(ws, c, noise_mode="none", sampling="deterministic")
    assert _equal_outputs(e, e2) and not torch.equal(e.image, f.image)
    assert _equal_outputs(k1, k2) and not torch.equal(k1.image, none.image)
    assert _equal_outputs(none, det)  # 'none' == zero noise strength
    with pytest.raises(ValueError):
        G.synthesis(ws, c, sampling="jittered")


def test_train_mode_defaults_to_stochastic_sampling(G):
    ws = G.mapping(_z(G), _cond(G)).detach()
    c = _cams(G)
    try:
        G.train()
        with torch.no_grad():
            torch.manual_seed(0)
            a = G.synthesis(ws, c, noise_mode="const")
            torch.manual_seed(1)
            b = G.synthesis(ws, c, noise_mode="const")
    finally:
        G.eval()
    assert not torch.equal(a.image_depth, b.image_depth)


def test_train_mode_uses_nonfused_modconv_and_matches_eval(G, monkeypatch):
    ws = G.mapping(_z(G, 2), _cond(G, 2)).detach()
    c = _cams(G, 2)
    seen = []
    real = ops.modulated_conv2d

    def spy(*args, **kwargs):
        seen.append(kwargs.get("fused_modconv", True))
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "modulated_conv2d", spy)
    with torch.no_grad():
        ev = G.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        fused_eval = set(seen)
        seen.clear()
        try:
            G.train()
            tr = G.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        finally:
            G.eval()
        fused_train = set(seen)
    assert fused_eval == {True} and fused_train == {False}
    assert len(seen) == 9 + 5 + 2 * 3  # backbone: 9 convs + 5 toRGBs; SR: 2 blocks x (2 convs + toRGB)
    for k in ("image", "image_raw", "image_depth", "features"):
        diff = (getattr(ev, k) - getattr(tr, k)).abs().max()
        assert diff < 1e-4, (k, float(diff))


def test_neural_rendering_resolution_override(G):
    with torch.no_grad():
        ws = G.mapping(_z(G), _cond(G))
        out = G.synthesis(ws, _cams(G), noise_mode="const", neural_rendering_resolution=24)
    assert out.image_raw.shape == (1, 3, 24, 24)
    assert out.image_depth.shape == (1, 1, 24, 24)
    assert out.image.shape == (1, 3, 64, 64)
    assert torch.isfinite(out.image).all()
    assert G.neural_rendering_resolution == 32  # the override is for this call only


def test_planes_reuse_equals_recomputation(G):
    with torch.no_grad():
        ws = G.mapping(_z(G), _cond(G))
        planes = G.planes(ws, noise_mode="const")
        assert planes.shape == (1, 3, 32, 64, 64)
        a = G.synthesis(ws, _cams(G), noise_mode="const", planes=planes)
        b = G.synthesis(ws, _cams(G), noise_mode="const")
        other = G.synthesis(ws, _cams(G), noise_mode="const", planes=torch.zeros_like(planes))
        dens = G.sample_density(torch.zeros(1, 5, 3), planes=planes)
        dens_ws = G.sample_density(torch.zeros(1, 5, 3), ws=ws)
    assert _equal_outputs(a, b)
    assert not torch.equal(a.image, other.image)  # the passed planes are really used
    assert dens["rgb"].shape == (1, 5, 32) and dens["sigma"].shape == (1, 5, 1)
    assert torch.equal(dens["sigma"], dens_ws["sigma"])


def test_forward_maps_with_c_cond_and_renders_from_c(G):
    z, c = _z(G), _cams(G)
    cc = _cond(G)
    with torch.no_grad():
        out = G(z, c, c_cond=cc, noise_mode="const", truncation_psi=0.7)
        ref = G.synthesis(G.mapping(z, cc, truncation_psi=0.7), c, noise_mode="const")
        own = G(z, c, noise_mode="const", truncation_psi=0.7)
    assert _equal_outputs(out, ref)
    assert not torch.equal(own.image, out.image)


# ----------------------------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("noise_mode", ["none", "const"])
def test_gradients_reach_ws_and_parameters(G, noise_mode):
    G.zero_grad(set_to_none=True)
    z = _z(G)
    ws = G.mapping(z, _cond(G))
    ws.retain_grad()
    out = G.synthesis(ws, _cams(G), noise_mode=noise_mode, sampling="deterministic")
    out.image.square().mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all() and ws.grad.abs().sum() > 0
    missing = {n for n, p in G.named_parameters() if p.grad is None}
    sr_noise = {n for n in dict(G.named_parameters()) if n.startswith("superresolution.") and
                n.endswith("noise_strength")}  # SR noise mode is rendering.superresolution_noise_mode = 'none'
    all_noise = {n for n in dict(G.named_parameters()) if n.endswith("noise_strength")}
    assert len(sr_noise) == 4 and len(all_noise) == 13
    assert missing == (all_noise if noise_mode == "none" else sr_noise)
    for n, p in G.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n
    # every parameter family really gets signal (not just a zero tensor)
    for prefix in ("backbone.mapping.fc0.", "backbone.mapping.embed.", "backbone.synthesis.b4.const",
                   "backbone.synthesis.b64.torgb.", "decoder.net.0.", "decoder.net.2.", "superresolution.block0.",
                   "superresolution.block1.torgb."):
        grads = [p.grad.abs().sum() for n, p in G.named_parameters() if n.startswith(prefix) and p.grad is not None]
        assert grads and sum(grads) > 0, prefix
    G.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------------------------
# official layout, configs, input validation


def _appendix_a():
    text = shared_path("docs/eg3d-facts.md", "EG3D facts").read_text()
    section = text.split("## Appendix A", 1)[1].split("## Appendix B", 1)[0]
    rows = re.findall(r"^(\S+) \[([0-9, ]*)\] float32$", section, flags=re.M)
    return [(name, tuple(int(v) for v in dims.split(",") if v.strip())) for name, dims in rows]


def test_ffhq512_state_dict_matches_official_listing():
    official = _appendix_a()
    assert len(official) > 150
    with torch.device("meta"):
        g = build_generator("ffhq512")
    assert next(g.parameters()).device.type == "meta"
    ours = [(k, tuple(v.shape)) for k, v in g.state_dict().items()]
    assert set(dict(ours)) == set(dict(official)), (sorted(set(dict(ours)) - set(dict(official)))[:5],
                                                    sorted(set(dict(official)) - set(dict(ours)))[:5])
    assert dict(ours) == dict(official)  # shapes
    assert ours == official  # same order, too
    assert all(v.dtype == torch.float32 for v in g.state_dict().values())


def test_config_round_trip_and_errors():
    for name in PRESETS:
        cfg = preset_config(name)
        d = cfg.to_dict()
        json.dumps(d)  # plain JSON
        assert isinstance(d["rendering"], dict)
        back = TriPlaneGeneratorConfig.from_dict(json.loads(json.dumps(d)))
        assert back == cfg
        assert isinstance(back.rendering, RenderingConfig)
    assert preset_config("tiny") is not PRESETS["tiny"]  # a fresh copy each time
    cfg = preset_config("tiny")
    cfg.rendering.ray_end = 4.0
    assert PRESETS["tiny"].rendering.ray_end == 3.3
    with pytest.raises(ValueError, match="unknown"):
        TriPlaneGeneratorConfig.from_dict({**preset_config("tiny").to_dict(), "bogus_key": 1})
    with pytest.raises(ValueError):
        preset_config("ffhq1024")
    with pytest.raises(ValueError):
        TriPlaneGeneratorConfig(z_dim=0)
    with pytest.raises(ValueError):
        TriPlaneGeneratorConfig(c_dim=16)
    with pytest.raises(ValueError):
        TriPlaneGeneratorConfig.from_dict({**preset_config("tiny").to_dict(),
                                           "rendering": {"ray_start": 3.0, "ray_end": 2.0}})


def test_build_generator_is_seeded():
    a, b, c = build_generator("tiny", seed=3), build_generator("tiny", seed=3), build_generator("tiny", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["backbone.synthesis.b4.const"], sc["backbone.synthesis.b4.const"])
    state = torch.random.get_rng_state()
    build_generator("tiny", seed=5)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone


def test_bad_inputs_raise(G):
    c = _cams(G)
    with pytest.raises(ValueError, match="z must have shape"):
        G.mapping(torch.randn(1, G.z_dim + 1), c)
    with pytest.raises(ValueError):
        G.mapping(torch.randn(G.z_dim), c)
    with pytest.raises(ValueError, match="25"):
        G.mapping(_z(G), torch.zeros(1, 24))
    ws = G.mapping(_z(G), c).detach()
    with pytest.raises(ValueError, match="25"):
        G.synthesis(ws, torch.zeros(1, 16))
    with pytest.raises(ValueError, match="25"):
        G(_z(G), c.reshape(1, 1, 25))
    with pytest.raises(ValueError):
        G.synthesis(ws, c, noise_mode="gaussian")


# ----------------------------------------------------------------------------------------------------------------
# autocast and CUDA


def test_cpu_bf16_autocast_runs_and_stays_close(G):
    ws = G.mapping(_z(G), _cond(G)).detach()
    c = _cams(G)
    with torch.no_grad():
        ref = G.synthesis(ws, c, noise_mode="const")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = G.synthesis(ws, c, noise_mode="const")
    # measured (torch 2.13 CPU): max |d| ~0.025 image, ~0.025 image_raw, ~0.007 depth, ~0.013 features
    tol = {"image": 0.15, "image_raw": 0.15, "image_depth": 0.05, "features": 0.08}
    for k, t in tol.items():
        a, b = getattr(ref, k), getattr(out, k).float()
        assert torch.isfinite(b).all(), k
        assert (a - b).abs().max() < t, (k, float((a - b).abs().max()))
        assert (a - b).abs().mean() < t / 5, k


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_fp16_path_runs():
    g = build_generator("tiny", seed=0).eval()
    z, c, cc = _z(g, 2), _cams(g, 2), _cond(g, 2)
    with torch.no_grad():
        ref = g(z, c, c_cond=cc, noise_mode="const")
        gc = copy.deepcopy(g).cuda()
        prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            out = gc(z.cuda(), c.cuda(), c_cond=cc.cuda(), noise_mode="const")
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev
        for k in ("image", "image_raw", "image_depth", "features"):
            a, b = getattr(ref, k), getattr(out, k)
            assert b.is_cuda
            assert torch.allclose(a, b.cpu(), atol=1e-3), (k, float((a - b.cpu()).abs().max()))
        # fp16 blocks (only active on CUDA), as the official GPU path
        cfg = preset_config("tiny")
        cfg.num_fp16_res, cfg.sr_num_fp16_res = 2, 4
        g16 = build_generator(cfg, seed=0).eval()
        ref16 = g16(z, c, c_cond=cc, noise_mode="const")
        out16 = g16.cuda()(z.cuda(), c.cuda(), c_cond=cc.cuda(), noise_mode="const")
        for k in ("image", "image_raw", "image_depth"):
            b = getattr(out16, k)
            assert b.dtype == torch.float32 and torch.isfinite(b).all(), k
            assert (getattr(ref16, k) - b.cpu()).abs().max() < 0.1, k
