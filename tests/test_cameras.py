"""Tests of adapt3d.cameras: conventions, look-at/orbit cameras, samplers, and parity with EG3D's cameras."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from adapt3d.cameras import (
    FixedPoseSampler,
    GaussianPoseSampler,
    GaussianPoseSamplerConfig,
    PoseBatch,
    PoseSampler,
    SinusoidalPoseSampler,
    UniformPoseSampler,
    UniformPoseSamplerConfig,
    camera_label,
    elevation_to_pitch,
    fov_to_intrinsics,
    frontal_label,
    intrinsics_from_pixels,
    intrinsics_to_fov,
    intrinsics_to_pixels,
    label_from_matrices,
    look_at,
    make_pose_sampler,
    matrices_from_label,
    mirror_label,
    opencv_to_opengl,
    opengl_to_opencv,
    orbit_angles,
    orbit_camera,
    orbit_trajectory,
    pitch_to_elevation,
    project_points,
    world_to_camera,
    yaw_sweep,
)

F64 = torch.float64
HALF_PI = math.pi / 2
FFHQ = dict(radius=2.7, pivot=(0.0, 0.0, 0.2))


def _random_cameras(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yaw = HALF_PI + 0.8 * (torch.rand(batch, generator=g, dtype=F64) - 0.5)
    pitch = HALF_PI + 0.6 * (torch.rand(batch, generator=g, dtype=F64) - 0.5)
    return orbit_camera(yaw, pitch, **FFHQ)  # float64 (B, 4, 4)


def _random_intrinsics(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = torch.zeros(batch, 3, 3, dtype=F64)
    k[:, 0, 0] = 3 + torch.rand(batch, generator=g, dtype=F64)
    k[:, 1, 1] = 3 + torch.rand(batch, generator=g, dtype=F64)
    k[:, 0, 1] = 0.1 * torch.randn(batch, generator=g, dtype=F64)
    k[:, :2, 2] = 0.4 + 0.2 * torch.rand(batch, 2, generator=g, dtype=F64)
    k[:, 2, 2] = 1
    return k


# ---------------------------------------------------------------- conventions


def test_label_matrices_round_trip():
    c2w, k = _random_cameras(5), _random_intrinsics(5)
    label = label_from_matrices(c2w, k)
    assert label.shape == (5, 25) and label.dtype == F64
    assert torch.equal(label[:, :16], c2w.reshape(5, 16))  # row-major
    assert label[0, 3] == c2w[0, 0, 3] and label[0, 18] == k[0, 0, 2]
    c2w2, k2 = matrices_from_label(label)
    assert torch.equal(c2w2, c2w) and torch.equal(k2, k)
    c2w1, k1 = matrices_from_label(label[2])  # (25,) -> batch of one
    assert c2w1.shape == (1, 4, 4) and torch.equal(k1[0], k[2])
    # one set of intrinsics broadcasts over the batch
    shared = label_from_matrices(c2w, k[0])
    assert torch.equal(shared[:, 16:], k[0].reshape(1, 9).expand(5, 9))


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"cam2world must have shape \(B, 4, 4\), got \(4, 4\)"):
        label_from_matrices(torch.eye(4), torch.eye(3))
    with pytest.raises(ValueError, match="label must have shape"):
        matrices_from_label(torch.zeros(2, 24))
    with pytest.raises(ValueError, match="width must be a positive number"):
        intrinsics_to_pixels(torch.eye(3), 0, 10)
    with pytest.raises(ValueError, match="batch sizes"):
        label_from_matrices(_random_cameras(3), _random_intrinsics(2))


def test_opencv_opengl_round_trip_and_frontal_case():
    c2w = _random_cameras(4)
    gl = opencv_to_opengl(c2w)
    assert torch.equal(opengl_to_opencv(gl), c2w)
    assert torch.equal(gl[:, :, 3], c2w[:, :, 3])  # same camera centre
    # frontal OpenCV camera (R = diag(1, -1, -1)) is the identity rotation in OpenGL (+y up, looking down -z)
    frontal = orbit_camera(HALF_PI, HALF_PI, radius=2.7, pivot=(0, 0, 0), dtype=F64)
    assert torch.allclose(opencv_to_opengl(frontal)[0, :3, :3], torch.eye(3, dtype=F64), atol=1e-7)


def test_world_to_camera_is_inverse():
    c2w = _random_cameras(6)
    eye = torch.eye(4, dtype=F64).expand(6, 4, 4)
    assert torch.allclose(world_to_camera(c2w) @ c2w, eye, atol=1e-12)
    assert torch.allclose(c2w @ world_to_camera(c2w), eye, atol=1e-12)
    assert torch.allclose(world_to_camera(c2w), torch.linalg.inv(c2w), atol=1e-12)


def test_intrinsics_pixel_round_trip():
    k = fov_to_intrinsics(18.837, dtype=F64)
    kp = intrinsics_to_pixels(k, 512, 256)
    assert kp[0, 0, 2] == 256 and kp[0, 1, 2] == 128  # centred principal point at W/2, H/2
    assert kp[0, 0, 0] == pytest.approx(4.26339094949286 * 512) and kp[0, 1, 1] == pytest.approx(4.26339094949286 * 256)
    rnd = _random_intrinsics(3)
    assert torch.allclose(intrinsics_from_pixels(intrinsics_to_pixels(rnd, 640, 480), 640, 480), rnd, atol=1e-14)


# ---------------------------------------------------------------- look-at / orbit


def test_frontal_camera():
    c2w = orbit_camera(HALF_PI, HALF_PI, radius=2.7, pivot=(0, 0, 0.2))
    assert c2w.shape == (1, 4, 4) and c2w.dtype == torch.float32
    assert torch.allclose(c2w[0, :3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-6)
    assert torch.allclose(c2w[0, :3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6)
    assert torch.allclose(c2w[0, :3, 2], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)  # looks down -z
    assert torch.equal(c2w[0, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_orbit_geometry():
    # sphere around the world origin (not the pivot); larger yaw -> +x, smaller pitch -> +y (camera higher)
    yaw = torch.tensor([HALF_PI + 0.4, HALF_PI, HALF_PI], dtype=F64)
    pitch = torch.tensor([HALF_PI, HALF_PI - 0.4, 1e-9], dtype=F64)
    c2w = orbit_camera(yaw, pitch, radius=2.7, pivot=(0, 0, 0.2))
    centres = c2w[:, :3, 3]
    assert torch.allclose(centres.norm(dim=-1), torch.full((3,), 2.7, dtype=F64))
    assert centres[0, 0] > 0 and centres[1, 1] > 0
    # pitch clamped to 1e-5: phi = arccos(1 - 2e-5/pi), camera almost straight above, still finite
    phi = math.acos(1 - 2e-5 / math.pi)
    assert centres[2, 1].item() == pytest.approx(2.7 * math.cos(phi), abs=1e-12)
    assert torch.isfinite(c2w).all()
    rot = c2w[:, :3, :3]
    assert torch.allclose(rot.transpose(1, 2) @ rot, torch.eye(3, dtype=F64).expand(3, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(3, dtype=F64), atol=1e-12)
    # pitch is cosine-uniform: pi/2 - 0.3 is 0.192 rad above the equator, not 0.3
    assert pitch_to_elevation(HALF_PI - 0.3).item() == pytest.approx(math.asin(0.6 / math.pi))
    assert elevation_to_pitch(pitch_to_elevation(torch.tensor(1.2, dtype=F64))).item() == pytest.approx(1.2)


def test_orbit_angles_round_trip():
    yaw = torch.tensor([0.3, HALF_PI, 2.5, 4.0], dtype=F64)
    pitch = torch.tensor([0.2, HALF_PI, 2.9, 1.0], dtype=F64)
    y, p, r = orbit_angles(orbit_camera(yaw, pitch, radius=1.7, pivot=(0, 0, 0)))
    assert torch.allclose(y, yaw) and torch.allclose(p, pitch) and torch.allclose(r, torch.full_like(r, 1.7))


def test_look_at_matches_orbit_and_rejects_vertical():
    c2w = _random_cameras(3)
    target = torch.tensor([[0.0, 0.0, 0.2]], dtype=F64)
    assert torch.allclose(look_at(c2w[:, :3, 3], target), c2w, atol=1e-12)
    with pytest.raises(ValueError, match="parallel to world up"):
        look_at(torch.tensor([[0.0, 3.0, 0.0]]), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="coincide"):
        look_at(torch.ones(1, 3), torch.ones(1, 3))


@pytest.mark.parametrize("pivot", [(0.0, 0.0, 0.2), (0.1, -0.05, 0.3)])
def test_pivot_projects_to_image_centre(pivot):
    yaw = torch.linspace(0.6, 2.5, 7, dtype=F64)
    pitch = torch.linspace(0.5, 2.6, 7, dtype=F64)
    c2w = orbit_camera(yaw, pitch, radius=2.7, pivot=pivot)
    k = fov_to_intrinsics(18.837, dtype=F64)
    points = torch.tensor(pivot, dtype=F64).expand(7, 1, 3)
    uv, depth = project_points(points, c2w, k)
    assert torch.allclose(uv, torch.full_like(uv, 0.5), atol=1e-12)
    assert torch.allclose(depth[:, 0], (c2w[:, :3, 3] - points[:, 0]).norm(dim=-1))


def test_projection_matches_analytic_pinhole():
    c2w = orbit_camera(HALF_PI, HALF_PI, radius=2.7, pivot=(0, 0, 0), dtype=F64)
    k = torch.tensor([[[4.0, 0.0, 0.45], [0.0, 3.5, 0.55], [0.0, 0.0, 1.0]]], dtype=F64)
    pts = torch.tensor([[[0.3, 0.2, 0.1], [-0.2, -0.4, -0.5], [0.0, 0.0, 0.0]]], dtype=F64)
    uv, depth = project_points(pts, c2w, k)
    x, y, z = pts[0].unbind(-1)
    d = 2.7 - z  # camera at (0, 0, 2.7) looking down -z; camera x = world x, camera y = -world y
    assert torch.allclose(depth[0], d, atol=1e-12)
    assert torch.allclose(uv[0, :, 0], 4.0 * x / d + 0.45, atol=1e-12)
    assert torch.allclose(uv[0, :, 1], 3.5 * (-y) / d + 0.55, atol=1e-12)
    assert uv[0, 0, 0] > 0.45 and uv[0, 0, 1] < 0.55  # world +x is image right, world +y is image top


def test_mirror_label_flips_the_image():
    c2w, k = _random_cameras(4, seed=3), _random_intrinsics(4, seed=4)  # skew and off-centre principal point
    label = label_from_matrices(c2w, k)
    g = torch.Generator().manual_seed(5)
    pts = 0.3 * torch.randn(4, 50, 3, generator=g, dtype=F64)
    uv, depth = project_points(pts, c2w, k)
    mirrored = mirror_label(label)
    m_c2w, m_k = matrices_from_label(mirrored)
    uv_m, depth_m = project_points(pts * torch.tensor([-1.0, 1.0, 1.0], dtype=F64), m_c2w, m_k)
    assert torch.allclose(uv_m[..., 0], 1 - uv[..., 0], atol=1e-12)
    assert torch.allclose(uv_m[..., 1], uv[..., 1], atol=1e-12)
    assert torch.allclose(depth_m, depth, atol=1e-12)
    assert torch.allclose(torch.linalg.det(m_c2w[:, :3, :3]), torch.ones(4, dtype=F64), atol=1e-12)
    assert torch.allclose(mirror_label(mirrored), label, atol=1e-15, rtol=0)  # an involution
    assert mirror_label(label[0]).shape == (25,)
    # with the pivot on the x = 0 plane, mirroring yaw pi/2 + a gives yaw pi/2 - a
    a = camera_label(HALF_PI + 0.3, 1.4, fov_deg=18.837, dtype=F64, **FFHQ)
    b = camera_label(HALF_PI - 0.3, 1.4, fov_deg=18.837, dtype=F64, **FFHQ)
    assert torch.allclose(mirror_label(a), b, atol=1e-12)


def test_fov_to_intrinsics():
    k = fov_to_intrinsics(18.837)
    assert k.shape == (1, 3, 3) and k.dtype == torch.float32
    assert k[0, 0, 0].item() == pytest.approx(4.2634, abs=1e-4)
    assert fov_to_intrinsics(18.837, dtype=F64)[0, 0, 0].item() == pytest.approx(4.26339094949286, rel=1e-14)
    exact = fov_to_intrinsics(18.837, exact=True, dtype=F64)[0, 0, 0].item()
    assert exact == pytest.approx(1 / (math.tan(math.radians(18.837) / 2) * math.sqrt(2)), rel=1e-14)
    assert exact == pytest.approx(4.26274, abs=1e-5)
    assert torch.equal(k[0, :2, 2], torch.tensor([0.5, 0.5])) and k[0, 2, 2] == 1 and k[0, 0, 1] == 0
    # fov_deg is the diagonal field of view of a square image: horizontal fov = 2 atan(0.5 / f)
    assert math.degrees(2 * math.atan(0.5 / exact)) == pytest.approx(13.3799, abs=1e-4)
    fovs = torch.tensor([12.0, 18.837, 49.134, 90.0], dtype=F64)
    for flag in (False, True):
        back = intrinsics_to_fov(fov_to_intrinsics(fovs, exact=flag), exact=flag)
        assert torch.allclose(back, fovs, atol=1e-10)
    with pytest.raises(ValueError, match="fov_deg must be in"):
        fov_to_intrinsics(180.0)


# ---------------------------------------------------------------- samplers and trajectories


@pytest.mark.parametrize("name", ["fixed", "gaussian", "uniform", "sinusoidal"])
def test_samplers_shapes_and_determinism(name):
    kwargs = {"gaussian": dict(yaw_std=0.3, pitch_std=0.2)}.get(name, {})
    sampler = make_pose_sampler(name, **kwargs)
    assert isinstance(sampler, PoseSampler)
    a = sampler.sample(64, torch.Generator().manual_seed(7))
    b = sampler.sample(64, torch.Generator().manual_seed(7))
    assert isinstance(a, PoseBatch) and len(a) == 64
    assert a.yaw.shape == a.pitch.shape == (64,) and a.yaw.dtype == torch.float32
    assert torch.equal(a.yaw, b.yaw) and torch.equal(a.pitch, b.pitch)
    if name != "fixed":
        c = sampler.sample(64, torch.Generator().manual_seed(8))
        assert not torch.equal(a.yaw, c.yaw)
    labels = a.labels(2.7, (0, 0, 0.2), 18.837)
    assert labels.shape == (64, 25) and torch.isfinite(labels).all()
    assert a.cam2world(2.7, (0, 0, 0.2)).shape == (64, 4, 4)


def test_gaussian_and_uniform_values():
    g = torch.Generator().manual_seed(3)
    cfg = GaussianPoseSamplerConfig(yaw_mean=1.0, pitch_mean=2.0, yaw_std=0.1, pitch_std=0.2)
    poses = GaussianPoseSampler(cfg).sample(5, g)
    g.manual_seed(3)
    assert torch.allclose(poses.yaw, 1.0 + 0.1 * torch.randn(5, generator=g))  # yaw noise drawn first
    assert torch.allclose(poses.pitch, 2.0 + 0.2 * torch.randn(5, generator=g))
    zero = GaussianPoseSampler().sample(3, g)  # zero std: the mean (and the generator still advances)
    assert torch.equal(zero.yaw, torch.full((3,), HALF_PI)) and torch.equal(zero.pitch, torch.full((3,), HALF_PI))
    uni = UniformPoseSampler(UniformPoseSamplerConfig(yaw_range=(0.5, 1.0), pitch_range=(1.0, 1.2))).sample(2000, g)
    assert 0.5 <= uni.yaw.min() and uni.yaw.max() <= 1.0 and 1.0 <= uni.pitch.min() and uni.pitch.max() <= 1.2
    assert uni.yaw.max() - uni.yaw.min() > 0.45
    clamped = GaussianPoseSampler(GaussianPoseSamplerConfig(pitch_mean=-1.0)).sample(2, g)
    assert torch.allclose(clamped.pitch, torch.full((2,), 1e-5))
    fixed = FixedPoseSampler().sample(2)
    assert torch.equal(fixed.yaw, torch.full((2,), HALF_PI))


def test_sinusoidal_sampler_values():
    sampler = SinusoidalPoseSampler()
    poses = sampler.sample(4000, torch.Generator().manual_seed(0))
    eps = 1e-6
    assert poses.yaw.min() >= HALF_PI - 0.3 - eps and poses.yaw.max() <= HALF_PI + 0.3 + eps
    assert poses.pitch.min() >= HALF_PI - 0.35 - eps and poses.pitch.max() <= HALF_PI + 0.25 + eps
    # every value is on the 240-step grid, and the extremes are reached
    grid = HALF_PI + 0.3 * torch.sin(2 * math.pi * torch.arange(240, dtype=F64) / 240)
    assert ((poses.yaw.double()[:, None] - grid[None]).abs().min(dim=1).values < 1e-6).all()
    assert poses.yaw.max() > HALF_PI + 0.3 - 1e-6 and poses.pitch.min() < HALF_PI - 0.35 + 1e-6
    known = sampler.poses_from_indices(torch.tensor([0, 60, 180]), torch.tensor([0, 120, 60]))
    assert torch.allclose(known.yaw.double(), torch.tensor([HALF_PI, HALF_PI + 0.3, HALF_PI - 0.3], dtype=F64))
    expected_pitch = torch.tensor([HALF_PI + 0.25, HALF_PI - 0.35, HALF_PI - 0.05], dtype=F64)
    assert torch.allclose(known.pitch.double(), expected_pitch)


def test_make_pose_sampler_errors():
    with pytest.raises(ValueError, match="valid names: fixed, gaussian, sinusoidal, uniform, yaw_bins"):
        make_pose_sampler("spiral")
    with pytest.raises(ValueError, match="unknown option"):
        make_pose_sampler("gaussian", sigma=1.0)
    with pytest.raises(ValueError, match="yaw_std must be >= 0"):
        make_pose_sampler("gaussian", yaw_std=-1.0)
    with pytest.raises(ValueError, match="min <= max"):
        make_pose_sampler("uniform", yaw_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="n must be a positive int"):
        FixedPoseSampler().sample(0)


def test_trajectories():
    orbit = orbit_trajectory(240)
    assert len(orbit) == 240
    assert orbit.yaw[0].item() == pytest.approx(HALF_PI) and orbit.pitch[0].item() == pytest.approx(HALF_PI + 0.2)
    t = 239 / 240
    assert orbit.yaw[-1].item() == pytest.approx(HALF_PI + 0.35 * math.sin(2 * math.pi * t), abs=1e-6)
    assert orbit.pitch[-1].item() == pytest.approx(HALF_PI - 0.05 + 0.25 * math.cos(2 * math.pi * t), abs=1e-6)
    assert orbit.yaw[60].item() == pytest.approx(HALF_PI + 0.35)  # quarter period
    legacy = orbit_trajectory(4, exact=False)  # gen_videos.py writes pi as 3.14
    assert legacy.yaw[0].item() == pytest.approx(1.57)
    assert legacy.yaw[1].item() == pytest.approx(1.57 + 0.35 * math.sin(1.57))
    sweep = yaw_sweep(5, 1.0, 2.0, pitch=1.4)
    assert len(sweep) == 5 and sweep.yaw[0].item() == 1.0 and sweep.yaw[-1].item() == 2.0
    assert torch.allclose(sweep.yaw, torch.tensor([1.0, 1.25, 1.5, 1.75, 2.0]))
    assert torch.equal(sweep.pitch, torch.full((5,), 1.4))
    assert len(yaw_sweep(1, 1.0, 2.0)) == 1


# ---------------------------------------------------------------- golden: the official EG3D implementation

SHARED = Path(os.environ.get("ADAPT3D_SHARED_DIR", Path(__file__).resolve().parents[1].parent / "shared"))
# The reference files store only the config name; avg_camera_radius / avg_camera_pivot are the rendering_kwargs of
# the train.py configs (eg3d-facts.md §1.4): ffhq 2.7 / [0, 0, 0.2], shapenet 1.7 / [0, 0, 0].
GOLDEN = {
    "ffhq512_tiny": dict(radius=2.7, pivot=(0.0, 0.0, 0.2)),
    "shapenet128_tiny": dict(radius=1.7, pivot=(0.0, 0.0, 0.0)),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_labels_match_official_eg3d(name):
    path = SHARED / "fixtures" / "eg3d" / f"{name}.reference.pt"
    if not path.is_file():
        pytest.skip(f"EG3D reference fixture not found at {path} (set ADAPT3D_SHARED_DIR)")
    ref = torch.load(path, weights_only=True)
    assert ref["config"] == name
    fov = ref["fov_deg"]
    for sample in ref["samples"]:
        c = camera_label(sample["yaw"], sample["pitch"], fov_deg=fov, **GOLDEN[name])
        assert c.shape == sample["c"].shape == (1, 25) and c.dtype == sample["c"].dtype
        torch.testing.assert_close(c, sample["c"], atol=1e-6, rtol=0)
        c_cond = frontal_label(fov_deg=fov, **GOLDEN[name])
        torch.testing.assert_close(c_cond, sample["c_cond"], atol=1e-6, rtol=0)
        _, k = matrices_from_label(sample["c"])
        assert intrinsics_to_fov(k).item() == pytest.approx(fov, abs=1e-4)
