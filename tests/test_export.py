"""Tests for adapt3d.export: images, videos, meshes (all CPU, a few seconds)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.export import (
    contact_sheet,
    density_grid,
    depth_to_image,
    extract_mesh,
    grid_coordinates,
    label_images,
    make_grid,
    read_video,
    read_video_frame_count,
    save_grid,
    save_image,
    save_mesh,
    to_uint8,
    write_video,
)

# ----------------------------------------------------------------------------------------------- images


def test_to_uint8_exact_values_and_clamping():
    x = torch.tensor([-1.0, 0.0, 1.0, -3.0, 5.0, float("nan"), 0.5]).view(1, 1, 1, 7)  # (B, C, H, W)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 7, 1)
    # EG3D: clamp(x * 127.5 + 128, 0, 255) then truncate
    assert out[0, 0, :, 0].tolist() == [0, 128, 255, 0, 255, 0, int(0.5 * 127.5 + 128)]
    y = to_uint8(torch.tensor([0.0, 0.5, 1.0, 1.5, -0.2]).view(1, 1, 5), value_range=(0, 1))  # (C, H, W)
    assert y.shape == (1, 5, 1)
    assert y[0, :, 0].tolist() == [0, 128, 255, 255, 0]


def test_to_uint8_layout_and_errors():
    x = torch.zeros(2, 3, 4, 5)
    x[1, 2, 3, 4] = 1.0
    out = to_uint8(x)
    assert out.shape == (2, 4, 5, 3) and out[1, 3, 4, 2] == 255 and out[0, 3, 4, 2] == 128
    with pytest.raises(ValueError, match="images"):
        to_uint8(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="value_range"):
        to_uint8(x, value_range=(1, -1))


def test_make_grid_layout():
    b, h, w = 5, 4, 6
    imgs = np.stack([np.full((h, w, 3), 10 * (k + 1), np.uint8) for k in range(b)])  # (B, H, W, C)
    grid = make_grid(imgs, nrow=3, padding=2, pad_value=255)
    assert grid.shape == (2 * (h + 2) + 2, 3 * (w + 2) + 2, 3)
    for k in range(b):
        y, x = 2 + (k // 3) * (h + 2), 2 + (k % 3) * (w + 2)
        assert np.all(grid[y:y + h, x:x + w] == 10 * (k + 1)), k
        assert np.all(grid[y - 1, x:x + w] == 255)  # padding above the tile
    assert np.all(grid[2 + h + 2:, 2 + 2 * (w + 2):2 + 2 * (w + 2) + w] == 255)  # empty 6th cell
    g0 = make_grid(imgs[:4])  # default nrow = ceil(sqrt(4)) = 2, no padding
    assert g0.shape == (2 * h, 2 * w, 3) and g0[h, w, 0] == 40 and g0[0, w, 0] == 20
    with pytest.raises(ValueError, match="uint8"):
        make_grid(imgs.astype(np.float32))


def test_save_image_and_grid_roundtrip(tmp_path):
    imgs = torch.linspace(-1, 1, 2 * 3 * 8 * 8).view(2, 3, 8, 8)
    grid = save_grid(tmp_path / "g.png", imgs, nrow=2)
    back = np.asarray(Image.open(tmp_path / "g.png"))
    assert back.shape == (8, 16, 3) and np.array_equal(back, grid)
    assert np.array_equal(grid[:, 8:], to_uint8(imgs)[1])
    save_image(tmp_path / "a.jpg", grid)
    assert Image.open(tmp_path / "a.jpg").format == "JPEG"
    with pytest.raises(ValueError, match=r"\.bmp"):
        save_image(tmp_path / "a.bmp", grid)
    with pytest.raises(ValueError, match="uint8"):
        save_image(tmp_path / "b.png", grid.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg", "g.png"]


def test_depth_to_image_normalisation():
    d = torch.tensor([[1.0, 2.0, 3.0], [float("inf"), float("nan"), 2.5]]).view(1, 1, 2, 3)
    img = depth_to_image(d, background=(0, 255, 0))
    assert img.shape == (1, 2, 3, 3) and img.dtype == np.uint8
    assert img[0, 0, 0].tolist() == [255] * 3  # nearest -> white
    assert img[0, 0, 2].tolist() == [0] * 3  # farthest -> black
    assert img[0, 0, 1, 0] == 128  # middle
    assert img[0, 1, 0].tolist() == [0, 255, 0] and img[0, 1, 1].tolist() == [0, 255, 0]  # inf / nan
    fixed = depth_to_image(d, near=2.0, far=4.0)  # given range, clipped
    assert fixed[0, 0, 0, 0] == 255 and fixed[0, 0, 1, 0] == 255 and fixed[0, 0, 2, 0] == 128
    turbo = depth_to_image(d[0], colormap="turbo")  # (1, H, W) -> (H, W, 3)
    assert turbo.shape == (2, 3, 3)
    near, far = turbo[0, 0].astype(int), turbo[0, 2].astype(int)
    assert near[0] > far[0] + 50 and far[2] > near[2]  # near: warm (red), far: cool (dark blue)
    with pytest.raises(ValueError, match="colormap"):
        depth_to_image(d, colormap="jet")


def test_label_images_and_contact_sheet():
    imgs = np.full((2, 20, 40, 3), 200, np.uint8)
    lab = label_images(imgs, ["src", "rejected"])
    assert lab.shape[0] == 2 and lab.shape[1] > 20 and lab.shape[2:] == (40, 3)
    assert np.array_equal(lab[:, :20], imgs) and lab[1, 20:].min() < 100  # dark text in the strip
    one = label_images(imgs[0], "grid")
    assert one.ndim == 3 and one.shape[1:] == (40, 3)
    red = np.array([255, 0, 0], np.uint8)
    rows = [[imgs[0], imgs[1]], [imgs[0], imgs[1][:10]]]
    sheet = contact_sheet(rows, captions=[["a", "b"], "pair 2"], marks=[False, True])
    plain = contact_sheet(rows, captions=[["a", "b"], "pair 2"])
    assert sheet.shape == plain.shape and sheet.shape[2] == 3
    is_red = np.all(sheet == red, axis=-1)
    assert not np.all(plain == red, axis=-1).any()
    half = sheet.shape[0] // 2
    assert not is_red[:half].any() and is_red[half:].any() and is_red[-1].all()  # frame around the 2nd row
    with pytest.raises(ValueError, match="marks"):
        contact_sheet(rows, marks=[True])


# ----------------------------------------------------------------------------------------------- video


def _frames(t=12, h=32, w=48):
    f = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        f[i, :, : (i + 1) * w // t] = (255, 128, 0)
        f[i, ..., 2] = 20 * i
    return f


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_video_roundtrip(tmp_path, ext):
    frames = _frames()
    p = tmp_path / f"v{ext}"
    assert write_video(p, frames, fps=12) == 12
    assert read_video_frame_count(p) == 12
    back = read_video(p)
    assert back.shape == (12, 32, 48, 3)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 12
    assert [q.name for q in tmp_path.iterdir()] == [p.name]


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_video_odd_size_and_generator(tmp_path, ext):
    frames = _frames(5, 17, 23)
    p = tmp_path / f"odd{ext}"
    assert write_video(p, (f for f in frames), fps=10) == 5  # a generator is streamed
    back = read_video(p)
    assert len(back) == 5
    assert back.shape[1:3] == ((18, 24) if ext == ".mp4" else (17, 23))  # mp4 padded to even
    assert np.abs(back[:, :17, :23].astype(int) - frames.astype(int)).mean() < 12


@pytest.mark.parametrize("ext", [".mp4", ".gif"])
def test_video_atomic_on_failing_iterator(tmp_path, ext):
    def gen():
        for i, f in enumerate(_frames()):
            if i == 6:
                raise RuntimeError("renderer crashed")
            yield f

    p = tmp_path / f"bad{ext}"
    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_video(p, gen())
    assert list(tmp_path.iterdir()) == []  # no file at path, no temp files


def test_video_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\.avi"):
        write_video(tmp_path / "v.avi", _frames())
    with pytest.raises(ValueError, match="empty"):
        write_video(tmp_path / "v.mp4", iter([]))
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "v.mp4", _frames().astype(np.float32))
    mixed = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)]
    with pytest.raises(ValueError, match="frame 1"):
        write_video(tmp_path / "v.gif", mixed)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- mesh

R = 0.6
BOUNDS = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def _sphere_density(points: torch.Tensor) -> torch.Tensor:  # (N, 3) -> (N,), higher inside
    return 1.0 - points.norm(dim=-1) / R


@pytest.fixture(scope="module")
def sphere_mesh():
    density = density_grid(_sphere_density, BOUNDS, 64)
    return extract_mesh(density, 0.0, BOUNDS, colors_fn=lambda v: (v + 1.0) / 2.0)


def test_sphere_mesh_geometry(sphere_mesh):
    m = sphere_mesh
    assert m.is_watertight
    exact = 4.0 / 3.0 * math.pi * R ** 3
    assert m.volume > 0 and abs(m.volume - exact) / exact < 0.03
    voxel = 2.0 / 63
    r = np.linalg.norm(m.vertices, axis=1)
    assert np.all(np.abs(r - R) < voxel)
    # outward faces: normals point away from the centre
    assert np.mean(np.sum(m.face_normals * m.triangles_center, axis=1) > 0) > 0.99
    assert m.visual.vertex_colors.shape == (len(m.vertices), 4)


def test_mesh_axis_order_anisotropic():
    res = (40, 30, 20)
    radii = np.array([0.8, 0.5, 0.3])
    bounds = ((-1.0, -2.0, -0.5), (1.0, 2.0, 0.5))

    def ellipsoid(p):
        return 1.0 - (p / torch.as_tensor(radii, dtype=p.dtype)).norm(dim=-1)

    m = extract_mesh(density_grid(ellipsoid, bounds, res), 0.0, bounds)
    assert np.allclose(m.extents, 2 * radii, rtol=0.08)
    assert m.volume > 0 and m.is_watertight


@pytest.mark.parametrize("ext", [".ply", ".obj", ".glb"])
def test_mesh_save_reload(tmp_path, sphere_mesh, ext):
    import trimesh

    p = save_mesh(tmp_path / f"s{ext}", sphere_mesh)
    back = trimesh.load(p, force="mesh")
    assert len(back.vertices) == len(sphere_mesh.vertices) and len(back.faces) == len(sphere_mesh.faces)
    if ext == ".ply":
        assert np.array_equal(np.asarray(back.visual.vertex_colors), np.asarray(sphere_mesh.visual.vertex_colors))
    assert [q.name for q in tmp_path.iterdir()] == [p.name]


def test_mesh_errors(tmp_path, sphere_mesh):
    d = density_grid(_sphere_density, BOUNDS, 16)
    with pytest.raises(ValueError, match=r"empty level set.*level=5"):
        extract_mesh(d, 5.0, BOUNDS)
    with pytest.raises(ValueError, match="bounds"):
        extract_mesh(d, 0.0, ((1, 1, 1), (-1, -1, -1)))
    with pytest.raises(ValueError, match=r"\.ply.*\.obj"):
        save_mesh(tmp_path / "m.fbx", sphere_mesh)
    d[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        extract_mesh(d, 0.0, BOUNDS)


def test_largest_component_only():
    def two_spheres(p):
        a = 1.0 - (p - torch.tensor([-0.5, 0.0, 0.0])).norm(dim=-1) / 0.3
        b = 1.0 - (p - torch.tensor([0.6, 0.0, 0.0])).norm(dim=-1) / 0.15
        return torch.maximum(a, b)

    d = density_grid(two_spheres, BOUNDS, 48)
    both = extract_mesh(d, 0.0, BOUNDS)
    big = extract_mesh(d, 0.0, BOUNDS, largest_component_only=True)
    assert len(both.split(only_watertight=False)) == 2
    assert len(big.faces) < len(both.faces) and big.vertices[:, 0].max() < 0


def test_density_grid_matches_direct_evaluation_in_chunks():
    calls = []

    def f(p):
        calls.append(len(p))
        return p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2] ** 2

    bounds = ((-1.0, 0.0, -2.0), (1.0, 1.0, 2.0))
    res = (5, 7, 9)
    g = density_grid(f, bounds, res, chunk=50)
    x, y, z = (torch.as_tensor(a, dtype=torch.float32) for a in grid_coordinates(bounds, res))
    direct = x[:, None, None] + 10 * y[None, :, None] + 100 * z[None, None, :] ** 2
    assert g.shape == (5, 7, 9) and g.dtype == torch.float32
    assert torch.allclose(g, direct, atol=1e-4)
    assert max(calls) <= 50 and sum(calls) == 5 * 7 * 9 and len(calls) == math.ceil(315 / 50)
    with pytest.raises(ValueError, match="query_fn must return"):
        density_grid(lambda p: p, bounds, 4)
