"""View consistency (adapt3d.metrics.view_consistency): self-warps are exact, a textured plane rendered by hand
warps onto itself, occlusion is detected, and the generator-level evaluation runs on the tiny preset."""

from __future__ import annotations

import math

import pytest
import torch

from adapt3d.cameras import camera_label, label_from_matrices
from adapt3d.metrics.view_consistency import (
    backproject,
    evaluate_view_consistency,
    reprojection_error,
    warp_to_view,
)

RES = 64
FOV = 18.837


def _texture(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A smooth RGB pattern on the plane z = 0, values in [-1, 1].  # (..., 3)"""
    return torch.stack([torch.sin(3 * x + 1), torch.cos(2 * y) * 0.8, torch.sin(2 * x - 3 * y) * 0.6], -1)


def _render_plane(label: torch.Tensor, res: int = RES):
    """Ray-trace the plane z = 0 by hand (own ray formula): image (1, 3, R, R), ray depth (1, 1, R, R) and the
    world hit points (R*R, 3)."""
    c2w = label[0, :16].view(4, 4).double()
    k = label[0, 16:].view(3, 3).double()
    j = (torch.arange(res, dtype=torch.float64) + 0.5) / res
    v, u = torch.meshgrid(j, j, indexing="ij")
    pix = torch.stack([u.flatten(), v.flatten(), torch.ones(res * res, dtype=torch.float64)], -1)
    d = (pix @ torch.linalg.inv(k).T) @ c2w[:3, :3].T
    d = d / d.norm(dim=-1, keepdim=True)
    o = c2w[:3, 3]
    t = -o[2] / d[:, 2]
    hit = o + t[:, None] * d
    img = _texture(hit[:, 0], hit[:, 1]).T.reshape(1, 3, res, res).float()
    return img, t.reshape(1, 1, res, res).float(), hit


def _plane_camera(yaw: float, pitch: float = math.pi / 2) -> torch.Tensor:
    return camera_label(torch.tensor([yaw]), torch.tensor([pitch]), radius=2.7, pivot=[0.0, 0.0, 0.0], fov_deg=FOV)


def test_warp_into_own_camera_is_identity():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 3, RES, RES, generator=g) * 2 - 1
    depth = 2.5 + 0.3 * torch.rand(2, 1, RES, RES, generator=g)
    label = camera_label(torch.tensor([1.4, 1.8]), torch.tensor([1.5, 1.6]), radius=2.7, pivot=[0, 0, 0.2],
                         fov_deg=FOV)
    r = reprojection_error(img, img, depth, label, label, depth_b=depth)
    assert r.valid_fraction.min() == 1.0
    torch.testing.assert_close(r.warp.warped, img, atol=2e-4, rtol=0)
    assert r.mean_abs.max() < 1e-4 and r.psnr.min() > 70


def test_backproject_hits_the_plane():
    label = _plane_camera(math.pi / 2 + 0.3, math.pi / 2 - 0.2)
    _, depth, hit = _render_plane(label)
    pts = backproject(depth, label)[0]
    torch.testing.assert_close(pts.double(), hit, atol=1e-5, rtol=0)
    assert pts[:, 2].abs().max() < 1e-5


def test_plane_projects_where_geometry_says_and_warps_with_small_error():
    la, lb = _plane_camera(math.pi / 2), _plane_camera(math.pi / 2 + 0.25, math.pi / 2 - 0.15)
    img_a, depth_a, hit = _render_plane(la)
    img_b, depth_b, _ = _render_plane(lb)
    # Where A's hit points land in B, by an independent pinhole projection.
    c2w = lb[0, :16].view(4, 4).double()
    cam = (hit - c2w[:3, 3]) @ c2w[:3, :3]
    uvw = cam @ lb[0, 16:].view(3, 3).double().T
    uv_expected = (uvw[:, :2] / uvw[:, 2:]).reshape(RES, RES, 2)
    wr = warp_to_view(img_b, depth_a, la, lb, depth_b=depth_b)
    inside = wr.valid[0, 0]
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(wr.uv[0].double()[inside], uv_expected[inside], atol=2e-6, rtol=0)
    good = reprojection_error(img_a, img_b, depth_a, la, lb, depth_b=depth_b)
    assert good.mean_abs.item() < 0.01
    bad = reprojection_error(img_a, img_b, depth_a * 1.05, la, lb)  # wrong geometry: clearly worse
    assert bad.mean_abs.item() > 5 * good.mean_abs.item()


def test_integer_pixel_shift_warps_exactly():
    """Camera B = A moved sideways so that the plane z = 0 shifts by exactly 3 pixels: the warp is exact."""
    la = _plane_camera(math.pi / 2)
    c2w_a, k = la[0, :16].view(1, 4, 4), la[0, 16:].view(1, 3, 3)
    dx = 3 / RES * 2.7 / float(k[0, 0, 0])
    c2w_b = c2w_a.clone()
    c2w_b[0, 0, 3] += dx
    lb = label_from_matrices(c2w_b, k)
    img_a, depth_a, _ = _render_plane(la)
    img_b, depth_b, _ = _render_plane(lb)
    r = reprojection_error(img_a, img_b, depth_a, la, lb, depth_b=depth_b)
    assert r.valid_fraction.item() == pytest.approx((RES - 3) / RES, abs=1e-6)
    assert r.mean_abs.item() < 1e-4
    valid = r.warp.valid[0, 0]
    assert not valid[:, :3].any() and valid[:, 3:].all()  # B moved to +x: A's left edge is outside B


def test_occluded_pixels_are_excluded():
    la, lb = _plane_camera(math.pi / 2), _plane_camera(math.pi / 2 + 0.2)
    img_a, depth_a, _ = _render_plane(la)
    img_b, depth_b, _ = _render_plane(lb)
    occluder = depth_b.clone()
    occluder[..., :, : RES // 2] -= 0.5  # something in front of the plane in B's left half
    r = reprojection_error(img_a, img_b, depth_a, la, lb, depth_b=occluder)
    full = reprojection_error(img_a, img_b, depth_a, la, lb, depth_b=depth_b)
    assert 0.2 < r.valid_fraction.item() < full.valid_fraction.item() - 0.2
    none = reprojection_error(img_a, img_b, depth_a, la, lb, depth_b=depth_b + 1.0)
    assert none.valid_fraction.item() == 0 and torch.isnan(none.mean_abs).all()
    with pytest.raises(ValueError, match="depth_tolerance"):
        warp_to_view(img_b, depth_a, la, lb, depth_tolerance=0)


def test_generator_views_and_self_pairs(tmp_path):
    from adapt3d.models.triplane import build_generator
    from adapt3d.pipelines.render import default_cameras, map_seeds

    G = build_generator("tiny").eval()
    ws = map_seeds(G, [0], 0.7, None, torch.device("cpu"))
    yaw = torch.tensor([math.pi / 2, math.pi / 2, math.pi / 2 + 0.3])
    labels = default_cameras(G, yaw, torch.full((3,), math.pi / 2))
    res = evaluate_view_consistency(G, ws, labels, batch_size=1)
    assert res.views.shape == (1, 3, 3, 64, 64)
    assert len(res.per_pair) == 6
    same = [p for p in res.per_pair if {p["from"], p["to"]} == {"view0", "view1"}]
    assert all(p["raw"]["mean_abs"] < 1e-4 and p["raw"]["valid_fraction"] == 1.0 for p in same)
    other = [p for p in res.per_pair if "view2" in (p["from"], p["to"])]
    assert all(p["raw"]["mean_abs"] > same[0]["raw"]["mean_abs"] for p in other)
    assert 0 < res.raw["valid_fraction"] <= 1 and res.final["resolution"] == 64 and res.raw["resolution"] == 32
