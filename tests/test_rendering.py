"""Rays, depth sampling, compositing, tri-plane lookup and the importance renderer (eg3d-facts.md §1.3)."""

import math

import pytest
import torch

from adapt3d.models.triplane import OSGDecoder
from adapt3d.rendering.compositing import composite
from adapt3d.rendering.rays import RaySampler, pixel_grid, ray_box_limits, sample_rays
from adapt3d.rendering.renderer import ImportanceRenderer, RenderingConfig
from adapt3d.rendering.sampling import importance_depths, sample_pdf, stratified_depths
from adapt3d.rendering.triplane import PLANE_AXES, project_to_planes, sample_triplane

# ----------------------------------------------------------------------------------------------------------------
# rays


def _analytic_camera(origin=(0.0, 0.0, -2.0), f=1.0, cx=0.5, cy=0.5, skew=0.0, rot=None):
    cam2world = torch.eye(4)
    if rot is not None:
        cam2world[:3, :3] = rot
    cam2world[:3, 3] = torch.tensor(origin)
    k = torch.tensor([[f, skew, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])
    return cam2world[None], k[None]


def test_pixel_grid_row_major():
    uv = pixel_grid(3)
    assert uv.shape == (9, 2)
    # ray index m = i * R + j, (u, v) = ((j + .5) / R, (i + .5) / R)
    assert torch.allclose(uv[1], torch.tensor([1.5 / 3, 0.5 / 3]))
    assert torch.allclose(uv[3], torch.tensor([0.5 / 3, 1.5 / 3]))


def test_sample_rays_analytic_camera():
    c2w, k = _analytic_camera()
    origins, dirs = sample_rays(c2w, k, 3)
    assert origins.shape == dirs.shape == (1, 9, 3)
    assert torch.allclose(origins, torch.tensor([0.0, 0.0, -2.0]).expand(1, 9, 3))
    assert torch.allclose(dirs.norm(dim=-1), torch.ones(1, 9), atol=1e-6)
    assert torch.allclose(dirs[0, 4], torch.tensor([0.0, 0.0, 1.0]), atol=1e-7)  # centre pixel (1, 1)
    third = 1 / 3  # pixel centres at u = 1/6 and 5/6, offset +-1/3 from the principal point at focal length 1
    corners = {0: (-third, -third), 2: (third, -third), 6: (-third, third), 8: (third, third)}  # m -> (x, y)
    for m, (x, y) in corners.items():
        expected = torch.tensor([x, y, 1.0]) / math.sqrt(x * x + y * y + 1)
        assert torch.allclose(dirs[0, m], expected, atol=1e-6), m
    # the nn.Module wrapper is the same function
    o2, d2 = RaySampler()(c2w, k, 3)
    assert torch.equal(o2, origins) and torch.equal(d2, dirs)


def test_sample_rays_rotation_skew_and_focal_reproject_to_pixels():
    a = 0.7
    rot = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
    c2w, k = _analytic_camera(origin=(0.3, -0.1, 2.0), f=2.0, cx=0.45, cy=0.55, skew=0.1, rot=rot)
    k[0, 1, 1] = 1.7  # fy != fx
    r = 4
    origins, dirs = sample_rays(c2w, k, r)
    assert torch.allclose(origins[0], torch.tensor([0.3, -0.1, 2.0]).expand(r * r, 3))
    # project the direction back with K R^T: must land on the pixel centre (u, v)
    d_cam = dirs[0] @ rot  # (M, 3) == (R^T d)^T
    proj = d_cam @ k[0].T
    uv = proj[:, :2] / proj[:, 2:]
    assert torch.allclose(uv, pixel_grid(r), atol=1e-5)
    assert (d_cam[:, 2] > 0).all()  # camera looks along +z
    with pytest.raises(ValueError):
        sample_rays(c2w[0], k, r)
    with pytest.raises(ValueError):
        sample_rays(c2w, k[:, :2], r)


def test_ray_box_limits_axis_aligned_diagonal_and_misses():
    origins = torch.tensor([[[0.0, 0.0, -2.0], [0.3, -0.2, -2.0], [0.0, 0.0, 2.0], [2.0, 0.0, -2.0],
                             [-2.0, -2.0, -2.0], [0.0, 0.5, -2.0], [0.0, 0.0, 0.0]]])
    s3 = 1 / math.sqrt(3)
    dirs = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0],
                          [s3, s3, s3], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    t0, t1 = ray_box_limits(origins, dirs, box_side=1.0)
    assert t0.shape == t1.shape == (1, 7, 1)
    t0, t1 = t0[0, :, 0], t1[0, :, 0]
    for i in (0, 1, 2):
        assert t0[i] == pytest.approx(1.5) and t1[i] == pytest.approx(2.5)
    assert t1[3] <= t0[3]  # passes beside the cube
    assert t0[4] == pytest.approx(1.5 * math.sqrt(3), rel=1e-5)
    assert t1[4] == pytest.approx(2.5 * math.sqrt(3), rel=1e-5)
    assert t0[5] == pytest.approx(1.5) and t1[5] == pytest.approx(2.5)  # grazing the face y = 0.5 (0 * inf case)
    assert t0[6] == pytest.approx(-0.5) and t1[6] == pytest.approx(0.5)  # starts inside
    # a bigger box widens the interval
    t0b, t1b = ray_box_limits(origins[:, :1], dirs[:, :1], box_side=1.6)
    assert float(t0b) == pytest.approx(1.2) and float(t1b) == pytest.approx(2.8)


# ----------------------------------------------------------------------------------------------------------------
# depth sampling


def test_stratified_depths_deterministic_is_linspace():
    d = stratified_depths(2, 3, 2.25, 3.3, 8, stochastic=False)
    assert d.shape == (2, 3, 8, 1)
    assert torch.allclose(d, torch.linspace(2.25, 3.3, 8).reshape(1, 1, 8, 1).expand(2, 3, 8, 1))
    # per-ray tensor limits
    start = torch.tensor([[[1.0], [2.0]]])
    end = torch.tensor([[[2.0], [5.0]]])
    d = stratified_depths(1, 2, start, end, 4, stochastic=False)
    assert torch.allclose(d[0, 0, :, 0], torch.tensor([1.0, 4 / 3, 5 / 3, 2.0]))
    assert torch.allclose(d[0, 1, :, 0], torch.tensor([2.0, 3.0, 4.0, 5.0]))
    # disparity space: linear in 1/depth
    d = stratified_depths(1, 1, 1.0, 4.0, 4, stochastic=False, disparity_space=True)
    assert torch.allclose(1 / d[0, 0, :, 0], torch.linspace(1.0, 0.25, 4))
    with pytest.raises(ValueError):
        stratified_depths(1, 1, 1.0, 2.0, 1, stochastic=False)


def test_stratified_depths_stochastic_within_intervals_and_seeded():
    base = torch.linspace(2.0, 3.0, 6).reshape(1, 1, 6, 1)
    delta = 1.0 / 5
    torch.manual_seed(0)
    a = stratified_depths(4, 50, 2.0, 3.0, 6, stochastic=True)
    torch.manual_seed(0)
    a2 = stratified_depths(4, 50, 2.0, 3.0, 6, stochastic=True)
    torch.manual_seed(1)
    b = stratified_depths(4, 50, 2.0, 3.0, 6, stochastic=True)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)
    off = a - base
    assert (off >= 0).all() and (off < delta + 1e-6).all()
    assert off.std() > 0.03  # actually jittered across the interval
    # per-ray tensor limits jitter by each ray's own interval
    start = torch.full((1, 2, 1), 1.0)
    end = torch.tensor([[[1.5], [4.0]]])
    torch.manual_seed(2)
    t = stratified_depths(1, 2, start, end, 5, stochastic=True)
    det = stratified_depths(1, 2, start, end, 5, stochastic=False)
    widths = ((end - start) / 4).unsqueeze(-2)
    assert ((t - det) >= 0).all() and ((t - det) < widths).all()


def test_sample_pdf_uniform_deterministic_is_evenly_spaced():
    bins = torch.linspace(0.0, 1.0, 11).expand(3, 11)
    w = torch.ones(3, 10)
    s = sample_pdf(bins, w, 21, stochastic=False)
    assert s.shape == (3, 21)
    assert torch.allclose(s, torch.linspace(0.0, 1.0, 21).expand(3, 21), atol=1e-5)
    # fewer weights than bins - 1 (EG3D): only the first W + 1 edges are reachable
    s = sample_pdf(torch.linspace(0.0, 1.0, 11).expand(1, 11), torch.ones(1, 5), 11, stochastic=False)
    assert torch.allclose(s, torch.linspace(0.0, 0.5, 11)[None], atol=1e-5)


def test_sample_pdf_one_hot_concentrates_in_bin():
    bins = torch.linspace(0.0, 5.0, 6)[None]  # bins [0,1], [1,2], ...
    w = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]])
    s = sample_pdf(bins, w, 33, stochastic=False)[0]
    inner = s[1:-1]  # u = 0 and u = 1 map to the outermost edges
    assert ((inner >= 2.0) & (inner <= 3.0)).all()
    assert torch.allclose(inner, 2.0 + torch.linspace(0, 1, 33)[1:-1], atol=1e-3)  # linear inside the bin
    torch.manual_seed(0)
    s = sample_pdf(bins.expand(10, 6), w.expand(10, 5), 100, stochastic=True)
    assert ((s >= 2.0) & (s <= 3.0)).float().mean() > 0.99
    torch.manual_seed(0)
    assert torch.equal(s, sample_pdf(bins.expand(10, 6), w.expand(10, 5), 100, stochastic=True))


def test_importance_depths_shapes_determinism_and_focus():
    n, m, d, k = 2, 3, 12, 16
    depths = stratified_depths(n, m, 2.0, 3.0, d, stochastic=False)
    weights = torch.zeros(n, m, d - 1, 1)
    weights[..., 5, 0] = 1.0  # all coarse mass in interval [t5, t6]
    a = importance_depths(depths, weights, k, stochastic=False)
    b = importance_depths(depths, weights, k, stochastic=False)
    assert a.shape == (n, m, k, 1)
    assert torch.equal(a, b)
    assert not a.requires_grad
    t = depths[0, 0, :, 0]
    # EG3D smooths the weights (max-pool then avg-pool, width 2) and pairs weight k + 1 with the bin between
    # midpoints k and k + 1, so the mass of [t5, t6] is spread over [(t3 + t4) / 2, (t6 + t7) / 2].
    inner = a[..., 1:-1, 0]
    assert torch.all(inner >= t[3]) and torch.all(inner <= t[7])
    assert torch.all((inner.median(dim=-1).values >= t[4]) & (inner.median(dim=-1).values <= t[6]))
    torch.manual_seed(0)
    s1 = importance_depths(depths, weights, k, stochastic=True)
    torch.manual_seed(1)
    s2 = importance_depths(depths, weights, k, stochastic=True)
    assert s1.shape == (n, m, k, 1) and not torch.equal(s1, s2)
    mids = 0.5 * (t[:-1] + t[1:])
    assert s1.min() >= mids[0] - 1e-6 and s1.max() <= mids[-1] + 1e-6


# ----------------------------------------------------------------------------------------------------------------
# compositing


def _hand_composite(colors, densities, depths, white):
    """Plain-Python MipRayMarcher2 for one ray: lists of per-sample values."""
    s = len(depths)
    ws, rgb, dep = [], [0.0] * len(colors[0]), 0.0
    trans = 1.0
    for k in range(s - 1):
        delta = depths[k + 1] - depths[k]
        dens = math.log1p(math.exp((densities[k] + densities[k + 1]) / 2 - 1))
        alpha = 1 - math.exp(-dens * delta)
        w = alpha * trans
        trans *= 1 - alpha + 1e-10
        ws.append(w)
        for c in range(len(rgb)):
            rgb[c] += w * (colors[k][c] + colors[k + 1][c]) / 2
        dep += w * (depths[k] + depths[k + 1]) / 2
    total = sum(ws)
    dep /= total
    if white:
        rgb = [v + 1 - total for v in rgb]
    return [2 * v - 1 for v in rgb], dep, ws


@pytest.mark.parametrize("white", [False, True])
def test_composite_matches_hand_computation(white):
    colors = [[[0.1, 0.9], [0.5, 0.2], [0.8, 0.4]], [[0.3, 0.3], [0.6, 0.0], [1.0, 0.7]]]  # 2 rays x 3 samples x 2
    densities = [[0.5, 2.0, 4.0], [-1.0, 0.0, 3.0]]
    depths = [[2.0, 2.4, 3.0], [2.1, 2.2, 2.9]]
    c = torch.tensor(colors, dtype=torch.float64)[None]
    s = torch.tensor(densities, dtype=torch.float64)[None, ..., None]
    t = torch.tensor(depths, dtype=torch.float64)[None, ..., None]
    rgb, depth, weights = composite(c, s, t, white_background=white)
    assert rgb.shape == (1, 2, 2) and depth.shape == (1, 2, 1) and weights.shape == (1, 2, 2, 1)
    for r in range(2):
        e_rgb, e_depth, e_w = _hand_composite(colors[r], densities[r], depths[r], white)
        assert torch.allclose(rgb[0, r], torch.tensor(e_rgb, dtype=torch.float64), atol=1e-12)
        assert float(depth[0, r, 0]) == pytest.approx(e_depth, abs=1e-12)
        assert torch.allclose(weights[0, r, :, 0], torch.tensor(e_w, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError):
        composite(c, s, t, clamp_mode="relu")


def test_composite_homogeneous_medium_analytic_opacity():
    s_raw, a, b, n_s = 1.7, 2.0, 2.6, 64
    sigma = math.log1p(math.exp(s_raw - 1))
    length = b - a
    depths = torch.linspace(a, b, n_s, dtype=torch.float64).reshape(1, 1, n_s, 1)
    dens = torch.full_like(depths, s_raw)
    col = torch.full((1, 1, n_s, 3), 0.25, dtype=torch.float64)
    rgb, depth, w = composite(col, dens, depths)
    opacity = 1 - math.exp(-sigma * length)
    assert float(w.sum()) == pytest.approx(opacity, abs=1e-8)
    assert torch.allclose(rgb, torch.full_like(rgb, 2 * 0.25 * opacity - 1), atol=1e-8)
    # expected depth of an exponential distribution truncated to [a, b] (midpoint quadrature: O(dt^2))
    e_depth = a + 1 / sigma - length * math.exp(-sigma * length) / opacity
    assert float(depth) == pytest.approx(e_depth, abs=1e-3)
    # white background: feature = 2 * (0.25 * opacity + 1 - opacity) - 1
    rgb_w, _, _ = composite(col, dens, depths, white_background=True)
    assert torch.allclose(rgb_w, torch.full_like(rgb, 2 * (0.25 * opacity + 1 - opacity) - 1), atol=1e-8)


def test_composite_empty_ray_depth_is_clamped_to_sample_range():
    depths = torch.tensor([[[2.0], [2.5], [3.0]], [[2.2], [2.7], [3.3]]])[None]  # (1, 2, 3, 1)
    dens = torch.tensor([[[-1e4]] * 3, [[5.0]] * 3])[None]
    col = torch.full((1, 2, 3, 3), 0.5)
    rgb, depth, w = composite(col, dens, depths)
    assert float(w[0, 0].sum()) == 0.0
    assert float(depth[0, 0]) == pytest.approx(3.3)  # NaN -> inf -> max of all sample depths
    assert torch.allclose(rgb[0, 0], torch.full((3,), -1.0))  # black (-1) with no background
    assert 2.0 <= float(depth[0, 1]) <= 3.3
    _, depth_nc, _ = composite(col, dens, depths, clamp_depth=False)
    assert math.isinf(float(depth_nc[0, 0]))
    rgb_w, _, _ = composite(col, dens, depths, white_background=True)
    assert torch.allclose(rgb_w[0, 0], torch.ones(3))


# ----------------------------------------------------------------------------------------------------------------
# tri-plane lookup


def test_project_to_planes_layout_and_scale():
    pts = torch.tensor([[[0.1, 0.2, 0.3], [-0.4, 0.25, -0.05]]])
    for box_warp in (1.0, 1.6):
        g = project_to_planes(pts, box_warp)
        assert g.shape == (1, 3, 2, 2)
        q = pts * 2 / box_warp
        x, y, z = q[0, :, 0], q[0, :, 1], q[0, :, 2]
        assert torch.allclose(g[0, 0], torch.stack([x, y], -1))
        assert torch.allclose(g[0, 1], torch.stack([x, z], -1))
        assert torch.allclose(g[0, 2], torch.stack([z, x], -1))  # EG3D's cyclic third plane, not (y, z)
    assert PLANE_AXES == ((0, 1), (0, 2), (2, 0))


def test_sample_triplane_is_exact_on_linear_planes():
    n, c, h, w = 2, 3, 10, 14  # H != W catches transposed grid axes
    box_warp = 1.6
    # pixel centres in grid coordinates with align_corners=False: (2j + 1) / W - 1
    gx = (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1
    gy = (2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1
    coef = torch.randn(n, 3, c, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    planes = (coef[..., 0, None, None] * gx[None, :] + coef[..., 1, None, None] * gy[:, None]
              + coef[..., 2, None, None])  # (N, 3, C, H, W): feature = a * u + b * v + d
    g = torch.Generator().manual_seed(1)
    # inside the region of pixel centres (|u| <= 1 - 1/W): bilinear interpolation of a linear function is exact
    lim = (1 - 1 / w) * box_warp / 2 * 0.99
    lim_y = (1 - 1 / h) * box_warp / 2 * 0.99
    pts = (torch.rand(n, 50, 3, dtype=torch.float64, generator=g) * 2 - 1) * min(lim, lim_y)
    feats = sample_triplane(planes, pts, box_warp)
    assert feats.shape == (n, 3, 50, c)
    q = pts * 2 / box_warp
    for p, (ax_u, ax_v) in enumerate(PLANE_AXES):
        u, v = q[..., ax_u], q[..., ax_v]  # (N, M)
        expected = (coef[:, p, None, :, 0] * u[..., None] + coef[:, p, None, :, 1] * v[..., None]
                    + coef[:, p, None, :, 2])  # (N, M, C)
        assert torch.allclose(feats[:, p], expected, atol=1e-10), p
    # well outside the box: zero padding
    far = torch.full((n, 1, 3), box_warp)
    assert torch.equal(sample_triplane(planes, far.double(), box_warp), torch.zeros(n, 3, 1, c, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------------
# renderer and its config


def _renderer_inputs(cfg, res=6, n=2):
    g = torch.Generator().manual_seed(3)
    planes = torch.randn(n, 3, 8, 16, 16, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        decoder = OSGDecoder(8)
    c2w, k = _analytic_camera(origin=(0.0, 0.0, 2.7), f=2.0, rot=torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    origins, dirs = sample_rays(c2w.expand(n, 4, 4), k.expand(n, 3, 3), res)
    return planes, decoder, origins, dirs


@pytest.mark.parametrize("auto", [False, True])
def test_importance_renderer_chunking_is_invariant(auto):
    cfg = RenderingConfig(depth_resolution=8, depth_resolution_importance=6)
    if auto:
        cfg = RenderingConfig(depth_resolution=8, depth_resolution_importance=6, ray_start="auto", ray_end="auto")
    planes, decoder, origins, dirs = _renderer_inputs(cfg)
    r = ImportanceRenderer()
    with torch.no_grad():
        full = r(planes, decoder, origins, dirs, cfg, stochastic=False)
        chunked = r(planes, decoder, origins, dirs, cfg, stochastic=False, ray_chunk=7)  # not a divisor of 36
        single = r(planes, decoder, origins, dirs, cfg, stochastic=False, ray_chunk=1)
        halves = r(planes, decoder, origins, dirs, cfg, stochastic=False, ray_chunk=18)
    assert full[0].shape == (2, 36, 32) and full[1].shape == (2, 36, 1) and full[2].shape == (2, 36, 1)
    # Same maths per ray; only float32 rounding of differently sized matmuls/SIMD tails may differ (measured: at
    # most 1-2 ulp, 2.4e-7), so the comparison is at 1e-6 rather than bitwise.
    for other in (chunked, single, halves):
        for a, b in zip(full, other):
            assert torch.allclose(a, b, rtol=0, atol=1e-6), float((a - b).abs().max())
    feats, depth, weight = full
    assert feats.min() >= -1.002 and feats.max() <= 1.002
    lo, hi = (2.25, 3.3) if not auto else (2.7 - 0.5 * math.sqrt(3), 2.7 + 0.5 * math.sqrt(3))
    assert depth.min() >= lo - 1e-5 and depth.max() <= hi + 1e-5
    assert (weight >= 0).all() and (weight <= 1 + 1e-6).all()


def test_importance_renderer_stochastic_is_seeded_and_differs_from_deterministic():
    cfg = RenderingConfig(depth_resolution=6, depth_resolution_importance=4)
    planes, decoder, origins, dirs = _renderer_inputs(cfg, res=4, n=1)
    r = ImportanceRenderer()
    with torch.no_grad():
        torch.manual_seed(0)
        a = r(planes, decoder, origins, dirs, cfg, stochastic=True)
        torch.manual_seed(0)
        b = r(planes, decoder, origins, dirs, cfg, stochastic=True)
        torch.manual_seed(1)
        c = r(planes, decoder, origins, dirs, cfg, stochastic=True)
        d = r(planes, decoder, origins, dirs, cfg, stochastic=False)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0]) and not torch.equal(a[0], d[0])


@pytest.mark.parametrize("kwargs", [
    dict(ray_start="near"),
    dict(ray_start="auto"),  # only one 'auto'
    dict(ray_end="auto"),
    dict(ray_start=3.3, ray_end=2.25),
    dict(ray_start=2.0, ray_end=2.0),
    dict(ray_start=-1.0),
    dict(depth_resolution=-4),
    dict(depth_resolution=1),
    dict(depth_resolution_importance=-1),
    dict(box_warp=0.0),
])
def test_rendering_config_validation(kwargs):
    with pytest.raises(ValueError):
        RenderingConfig(**kwargs)


def test_rendering_config_valid_values_and_round_trip():
    cfg = RenderingConfig(ray_start="auto", ray_end="auto", depth_resolution_importance=0)
    assert RenderingConfig(**cfg.to_dict()) == cfg
    assert RenderingConfig.from_dict(cfg.to_dict()) == cfg


def test_rendering_config_from_official_dict():
    official = {  # rendering_kwargs of train.py --cfg=ffhq (as stored in the pickle), minus c_scale
        "image_resolution": 512, "disparity_space_sampling": False, "clamp_mode": "softplus",
        "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
        "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.8, "superresolution_noise_mode": "none",
        "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0,
        "sr_antialias": True, "depth_resolution": 48, "depth_resolution_importance": 48, "ray_start": 2.25,
        "ray_end": 3.3, "box_warp": 1, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2],
    }
    cfg = RenderingConfig.from_dict(official)
    assert cfg.superresolution_module == "SuperresolutionHybrid8XDC"
    assert cfg.c_scale == 0.0  # EG3D's rendering_kwargs.get('c_scale', 0)
    assert cfg.avg_camera_pivot == [0.0, 0.0, 0.2] and all(isinstance(v, float) for v in cfg.avg_camera_pivot)
    assert cfg.gpc_reg_prob == 0.8 and cfg.depth_resolution == 48 and cfg.ray_end == 3.3
    cfg = RenderingConfig.from_dict({**official, "c_scale": 1.0})
    assert cfg.c_scale == 1.0
    # a bare class name is kept as is
    assert RenderingConfig.from_dict({"superresolution_module": "SuperresolutionHybrid2X"}).superresolution_module \
        == "SuperresolutionHybrid2X"
    # validation still applies to official dicts
    with pytest.raises(ValueError):
        RenderingConfig.from_dict({**official, "ray_start": "auto"})


def test_importance_renderer_empty_rays_clamp_to_global_depth_range_across_chunks():
    # Density only where x < 0 (plane 0 channel 0): rays looking to +x are empty (zero weight, depth NaN -> inf),
    # and must be clamped to the max depth over the whole batch, not over their chunk.
    res = 6
    cfg = RenderingConfig(depth_resolution=8, depth_resolution_importance=4, ray_start="auto", ray_end="auto")
    planes = torch.zeros(1, 3, 4, 8, 8)
    planes[:, 0, 0, :, :4] = 3.0  # columns with u < 0, i.e. x < 0

    def decoder(feats):
        f = feats.mean(1)  # (N, M, C)
        sigma = torch.where(f[..., :1] > 0.5, torch.full_like(f[..., :1], 10.0), torch.full_like(f[..., :1], -1e4))
        return {"rgb": torch.sigmoid(f[..., 1:4]), "sigma": sigma}

    c2w, k = _analytic_camera(origin=(0.0, 0.0, 2.7), f=3.0, rot=torch.diag(torch.tensor([1.0, -1.0, -1.0])))
    origins, dirs = sample_rays(c2w, k, res)
    t0, t1 = ray_box_limits(origins, dirs, cfg.box_warp)
    assert torch.all(t1 > t0)  # every ray hits the box: t1 is each ray's last sample depth
    row_max = t1.reshape(res, res).amax(dim=1)
    assert row_max.min() < row_max.max() - 1e-3  # per-row (per-chunk) clamping would give another answer
    r = ImportanceRenderer()
    feats, depth, weight = r(planes, decoder, origins, dirs, cfg, stochastic=False)
    empty = dirs[0, :, 0] > 0
    assert torch.all(weight[0, empty] == 0) and torch.all(weight[0, ~empty] > 0.5)
    assert torch.allclose(depth[0, empty], t1.max().expand(int(empty.sum()), 1), atol=1e-5)
    assert torch.all(depth[0, ~empty] < t1.max() - 1e-3)
    by_rows = r(planes, decoder, origins, dirs, cfg, stochastic=False, ray_chunk=res)
    for a, b in zip((feats, depth, weight), by_rows):
        assert torch.allclose(a, b, rtol=0, atol=1e-6)


def test_importance_depths_match_eg3d_recipe_by_hand():
    # EG3D: weights -> max_pool1d(2, 1, pad 1) -> avg_pool1d(2, 1) -> + 0.01 -> drop first/last -> + 1e-5, normalise;
    # bins = midpoints of the coarse depths; deterministic quantiles u = linspace(0, 1, K); linear inverse CDF.
    import numpy as np

    d, k = 10, 7
    depths = stratified_depths(1, 1, 2.0, 3.0, d, stochastic=False)
    raw = torch.rand(d - 1, generator=torch.Generator().manual_seed(0)) ** 3
    got = importance_depths(depths, raw.reshape(1, 1, d - 1, 1), k, stochastic=False)[0, 0, :, 0].double().numpy()
    r = raw.double().numpy()
    padded = np.concatenate([[-np.inf], r, [-np.inf]])
    mx = np.maximum(padded[:-1], padded[1:])  # length d
    avg = 0.5 * (mx[:-1] + mx[1:]) + 0.01  # length d - 1
    p = avg[1:-1] + 1e-5
    cdf = np.concatenate([[0.0], np.cumsum(p / p.sum())])
    t = depths[0, 0, :, 0].double().numpy()
    mids = 0.5 * (t[:-1] + t[1:])
    expected = np.interp(np.linspace(0, 1, k), cdf, mids[: len(cdf)])
    assert np.allclose(got, expected, atol=1e-5), (got, expected)
