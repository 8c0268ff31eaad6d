"""EG3D's ADA 'bgc' operations against independent computations, and camera labels that stay consistent with the
augmented images (the discriminator is conditioned on the camera)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from adapt3d.cameras import camera_label, matrices_from_label, warp_label
from adapt3d.models.triplane import build_generator
from adapt3d.rendering.rays import sample_rays
from adapt3d.training.augment import (AUGMENT_OPS, AdaptiveAugment, augment_pair, color_matrix, expand_ops,
                                      warp_images)


def labels(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return camera_label(1.3 + 0.6 * torch.rand(n, generator=g), 1.4 + 0.3 * torch.rand(n, generator=g),
                        radius=2.7, pivot=[0, 0, 0.2], fov_deg=18.837)


def affine(theta=0.0, sx=1.0, sy=1.0, tx=0.0, ty=0.0) -> torch.Tensor:
    """[A | t] with A = R(theta) @ diag(sx, sy), as (1, 2, 3) float64."""
    c, s = math.cos(theta), math.sin(theta)
    A = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) @ torch.diag(torch.tensor([sx, sy], dtype=torch.float64))
    return torch.cat([A, torch.tensor([[tx], [ty]], dtype=torch.float64)], 1)[None]


def test_op_names_and_groups():
    assert expand_ops(["bgc"]) == AUGMENT_OPS == ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac",
                                                  "brightness", "contrast", "lumaflip", "hue", "saturation")
    assert expand_ops(["color", "xflip"]) == ("xflip", "brightness", "contrast", "saturation")
    with pytest.raises(ValueError, match="'shear' is unknown"):
        expand_ops(["shear"])
    assert AdaptiveAugment(ops=("bgc",)).ops == AUGMENT_OPS


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rotate90_is_torch_rot90(k):
    x = torch.rand(2, 3, 10, 10)
    M = affine(theta=k * math.pi / 2).expand(2, -1, -1)
    assert torch.equal(warp_images(x, M.float()), torch.rot90(x, k, dims=(-2, -1)))


def test_integer_translation_is_a_shift_with_reflection():
    x = torch.rand(1, 3, 16, 16)
    out = warp_images(x, affine(tx=-3 / 16, ty=2 / 16).float())  # new(p) = old(p + t): content moves by (+3, -2)
    expected = F.pad(x, [3, 3, 3, 3], mode="reflect")[:, :, 3 + 2: 3 + 2 + 16, 3 - 3: 3 - 3 + 16]
    assert torch.equal(out, expected)


def test_filtered_warp_follows_the_same_map_on_a_smooth_image():
    # general maps go through EG3D's filtered resampling: compare with the analytic warped function in the interior
    n = 96
    coords = (torch.arange(n, dtype=torch.float64) + 0.5) / n - 0.5

    def f(u, v):
        return torch.sin(4 * u + 1) * torch.cos(3 * v) + 0.5 * u

    v, u = torch.meshgrid(coords, coords, indexing="ij")
    img = f(u, v)[None, None].repeat(1, 3, 1, 1).float()
    M = affine(theta=0.4, sx=1.2, sy=0.9, tx=0.03, ty=-0.05)
    out = warp_images(img, M.float())
    uv = torch.einsum("ij,hwj->hwi", M[0, :, :2], torch.stack([u, v], -1)) + M[0, :, 2]
    expected = f(uv[..., 0], uv[..., 1]).float()
    assert (out[0, 0, 20:-20, 20:-20] - expected[20:-20, 20:-20]).abs().max() < 0.01
    wrong = f(uv[..., 0] + 2 / n, uv[..., 1]).float()  # a convention error of 2 pixels would show
    assert (out[0, 0, 20:-20, 20:-20] - wrong[20:-20, 20:-20]).abs().max() > 0.02


@pytest.mark.parametrize("M", [affine(theta=0.7), affine(sx=1.3, sy=1.3), affine(tx=0.1, ty=-0.2),
                               affine(theta=-2.0, sx=1.25, sy=0.8, tx=0.05), affine(theta=math.pi / 2)])
def test_warped_label_gives_every_pixel_the_ray_it_reads(M):
    lab = labels()
    new = warp_label(lab.double(), M.expand(len(lab), -1, -1))
    res = 8
    o_new, d_new = sample_rays(*[t.double() for t in matrices_from_label(new)], res)  # (B, res*res, 3)
    # old camera's rays at the points the new pixels read: p -> A p + t, via a one-pixel ray sampler
    cam2world, K = matrices_from_label(lab.double())
    j, i = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="xy")
    p = torch.stack([(j.flatten() + 0.5) / res - 0.5, (i.flatten() + 0.5) / res - 0.5], -1).double()
    q = p @ M[0, :, :2].T + M[0, :, 2] + 0.5  # (res*res, 2) old normalised coordinates
    d_cam = torch.linalg.solve(K[:, None], torch.cat([q, torch.ones(len(q), 1, dtype=q.dtype)], 1)[None, :, :, None])
    d_old = (cam2world[:, None, :3, :3] @ d_cam)[..., 0]
    d_old = d_old / d_old.norm(dim=-1, keepdim=True)
    assert (d_new - d_old).abs().max() < 1e-6
    assert (o_new - cam2world[:, None, :3, 3]).abs().max() < 1e-12  # same camera centre
    R = matrices_from_label(new)[0][:, :3, :3]
    assert (R @ R.transpose(1, 2) - torch.eye(3, dtype=R.dtype)).abs().max() < 1e-6  # still a rotation


def test_warp_label_refuses_a_mirror_map():
    with pytest.raises(ValueError, match="mirror_label"):
        warp_label(labels(1), affine(sx=-1.0))


def test_augmented_render_equals_render_from_the_augmented_camera():
    # Render a generator, rotate (90 deg) and shift the raw render, and render again from the new label: the
    # interior pixels agree, so D sees image and camera that belong together.
    G = build_generator("tiny", seed=0).eval()
    c = labels(2)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)), c)
    r = G.neural_rendering_resolution  # 32
    M = (affine(theta=math.pi / 2) @ torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
         ).expand(2, -1, -1).clone()
    M[:, :, 2] = torch.tensor([2 / r, -4 / r], dtype=torch.float64)
    with torch.no_grad():
        before = G.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        after = G.synthesis(ws, warp_label(c.double(), M).float(), noise_mode="const", sampling="deterministic")
    for key in ("features", "image_depth"):
        warped = warp_images(before[key], M.float())
        diff = (warped - after[key])[..., 5:-5, 5:-5].abs().max()
        assert diff < 1e-4, (key, float(diff))
    stale = (warp_images(before["features"], M.float()) - G.synthesis(
        ws, c, noise_mode="const", sampling="deterministic")["features"])[..., 5:-5, 5:-5].abs().max()
    assert stale > 1e-2  # with the old label the pair would not match


def test_color_matrices_equal_hand_built_transforms():
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64) * 2 - 1
    one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)

    def apply(C):
        return (C[0, :3, :3] @ x.reshape(3, -1) + C[0, :3, 3:]).reshape(x.shape)

    mean = x.mean(1, keepdim=True)
    assert torch.allclose(apply(color_matrix(one * 0.3, one, zero, zero, one)), x + 0.3)
    assert torch.allclose(apply(color_matrix(zero, one * 1.7, zero, zero, one)), x * 1.7)
    assert torch.allclose(apply(color_matrix(zero, one, one, zero, one)), x - 2 * mean)
    assert torch.allclose(apply(color_matrix(zero, one, zero, zero, one * 0.4)), mean + 0.4 * (x - mean))
    hue = Rotation.from_rotvec(np.ones(3) / np.sqrt(3) * 0.9).as_matrix()
    expected = torch.einsum("ij,njhw->nihw", torch.from_numpy(hue), x)
    assert torch.allclose(apply(color_matrix(zero, one, zero, one * 0.9, one)), expected)
    # EG3D's order: brightness, then contrast, luma flip, hue, saturation
    C = color_matrix(one * 0.1, one * 2.0, one, one * 0.5, one * 0.3)
    y = 2.0 * (x + 0.1)
    y = y - 2 * y.mean(1, keepdim=True)
    y = torch.einsum("ij,njhw->nihw", torch.from_numpy(Rotation.from_rotvec(np.ones(3) / np.sqrt(3) * 0.5)
                                                       .as_matrix()), y)
    y = y.mean(1, keepdim=True) + 0.3 * (y - y.mean(1, keepdim=True))
    assert torch.allclose(apply(C), y)


def test_bgc_pipeline_labels_and_both_images_move_together():
    # the same random transform for image (64 px) and raw (32 px), and a label that matches it
    g = torch.Generator().manual_seed(0)
    img = F.interpolate(torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, size=(64, 64), mode="bicubic",
                        align_corners=False)  # smooth, so that 64 px and 32 px versions agree
    raw = F.interpolate(img, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    lab = labels(4)
    i2, r2, l2 = augment_pair(img, raw, lab, p=1.0, ops=("rotate90", "xint"), generator=torch.Generator()
                              .manual_seed(3))
    assert not torch.equal(l2, lab) and not torch.equal(i2, img)
    small = F.interpolate(i2, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert (small - r2)[..., 6:-6, 6:-6].abs().mean() < 0.1 * (raw - r2)[..., 6:-6, 6:-6].abs().mean()


def test_draws_do_not_depend_on_p_and_p0_is_identity():
    img, raw, lab = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 8, 8), labels()
    states = []
    for p in (0.1, 0.9):
        g = torch.Generator().manual_seed(0)
        augment_pair(img, raw, lab, p=p, ops=("bgc",), generator=g)
        states.append(g.get_state())
    assert torch.equal(*states)
    out = augment_pair(img, raw, lab, p=0.0, ops=("bgc",))
    assert out[0] is img and out[2] is lab


def test_bgc_is_differentiable_for_r1():
    img = torch.rand(4, 3, 16, 16, requires_grad=True)
    raw = torch.rand(4, 3, 8, 8, requires_grad=True)
    i2, r2, _ = augment_pair(img, raw, labels(4), p=1.0, ops=("bgc",), generator=torch.Generator().manual_seed(0))
    grads = torch.autograd.grad(i2.sum() + r2.sum(), [img, raw])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
