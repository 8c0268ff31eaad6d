"""UV textures in the rasteriser and in CAD loading: an analytic checkerboard at a known camera (edge positions),
perspective-correct UVs, mip-mapping against aliasing, orientation through real GLB/OBJ files, broken textures."""

import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from adapt3d.cameras import fov_to_intrinsics, orbit_camera, project_points
from adapt3d.data.cad import load_cad_mesh
from adapt3d.dst.annotations import project_px
from adapt3d.dst.render import canny_edges, render_view
from adapt3d.dst.viewpoints import Viewpoint
from adapt3d.rendering.mesh_raster import MeshRasterConfig, rasterize_mesh
from adapt3d.rendering.texture import MeshTextures, build_mipmaps, sample_bilinear_wrap

F64 = torch.float64
GREY_BG = MeshRasterConfig(background=(0.5, 0.5, 0.5))
UNSHADED = MeshRasterConfig(background=(0.5, 0.5, 0.5), ambient=1.0, diffuse=0.0)  # albedo shown as is


def _plane(tilt_deg=0.0):
    """The square [-0.5, 0.5]^2 in the z = 0 plane (tilted about x), UV (x + 0.5, y + 0.5): v up = +y."""
    xy = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    t = math.radians(tilt_deg)
    v = np.stack([xy[:, 0], xy[:, 1] * math.cos(t), xy[:, 1] * math.sin(t)], 1)
    return torch.tensor(v, dtype=F64), torch.tensor([[0, 1, 2], [0, 2, 3]]), torch.tensor(xy + 0.5, dtype=F64)


def _checker(n_squares, texels, marker=False):
    """(3, H, W) texture: n x n black/white squares, white at the top-left; optionally that square red."""
    idx = np.arange(texels) * n_squares // texels
    board = ((idx[:, None] + idx[None, :]) % 2 == 0).astype(np.float64)
    img = np.repeat(board[None], 3, 0)
    if marker:
        s = texels // n_squares
        img[:, :s, :s] = np.array([1.0, 0.0, 0.0])[:, None, None]
    return torch.tensor(img, dtype=F64)


def _camera(d=2.0, fov=40.0):
    c2w = orbit_camera(math.pi / 2, math.pi / 2, radius=d, pivot=(0, 0, 0), dtype=F64)[0]  # on +z, looking at 0
    return c2w, fov_to_intrinsics(fov, exact=True, dtype=F64)[0]


def _textures(uv, image, mip=True):
    return MeshTextures(uv=uv, face_material=torch.zeros(2, dtype=torch.long),
                        base_colors=torch.ones(1, 3, dtype=F64), images=[image], mip=mip)


def _px(points, c2w, k, res):
    """Independent reference: adapt3d.cameras.project_points -> pixel coordinates."""
    uv, _ = project_points(torch.tensor(points, dtype=F64)[None], c2w[None], k[None])
    return uv[0].numpy() * res


def test_checkerboard_edges_land_where_the_square_boundaries_project():
    res = 96
    v, f, uv = _plane()
    c2w, k = _camera()
    tex = _checker(4, 64)
    out = rasterize_mesh(v, f, c2w, k, res, config=GREY_BG, textures=_textures(uv, tex))
    rgb = np.round(out.rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    # fronto-parallel plane under the head light: nearly black or white away from the square boundaries
    plane = rgb[out.mask[0].numpy() > 0][:, 0].astype(int)
    assert np.mean((plane < 20) | (plane > 230)) > 0.8
    # the boundaries x = -0.5, -0.25, 0, 0.25, 0.5 on the row through the middle of a square row (y = 0.125)
    expect_x = _px([[x, 0.125, 0.0] for x in (-0.5, -0.25, 0.0, 0.25, 0.5)], c2w, k, res)[:, 0]
    row = int(_px([[0.0, 0.125, 0.0]], c2w, k, res)[0, 1])
    edges = canny_edges(rgb)[row]
    cols = np.flatnonzero(edges)
    clusters = np.split(cols, np.flatnonzero(np.diff(cols) > 1) + 1)
    centres = np.array([c.mean() + 0.5 for c in clusters])  # + 0.5: pixel centre
    assert len(centres) == 5, centres  # 3 texture edges + 2 plane borders (grey background)
    assert np.abs(centres - expect_x).max() <= 1.5, (centres, expect_x)
    # the same plane with its texture baked to 4 vertex colours (the old behaviour) has no inner edges
    flat = rasterize_mesh(v, f, c2w, k, res, colors=torch.ones(4, 3, dtype=F64) * 0.5, config=GREY_BG)
    assert not canny_edges(np.round(flat.rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8))[row].any()


def test_texture_orientation_v_up_and_base_colour():
    res = 64
    v, f, uv = _plane()
    c2w, k = _camera()
    textures = _textures(uv, _checker(4, 32, marker=True))
    textures.base_colors = torch.tensor([[1.0, 1.0, 0.5]], dtype=F64)  # multiplies the texture
    out = rasterize_mesh(v, f, c2w, k, res, config=UNSHADED, textures=textures)
    # texture row 0 = v near 1 = world +y (top of the image); column 0 = u near 0 = world -x
    x, y = _px([[-0.375, 0.375, 0.0]], c2w, k, res)[0]
    assert out.rgb[:, int(y), int(x)].tolist() == pytest.approx([1.0, 0.0, 0.0])
    x, y = _px([[0.375, 0.375, 0.0]], c2w, k, res)[0]  # top-right square: black
    assert out.rgb[:, int(y), int(x)].tolist() == pytest.approx([0.0, 0.0, 0.0])
    x, y = _px([[0.125, 0.375, 0.0]], c2w, k, res)[0]  # white square times the base colour
    assert out.rgb[:, int(y), int(x)].tolist() == pytest.approx([1.0, 1.0, 0.5])


def test_uvs_are_interpolated_perspective_correctly():
    """A plane tilted 70 deg, seen close: the v = 0.5 boundary lands where its 3D line projects (affine screen-space
    interpolation would put it several pixels off)."""
    res = 128
    v, f, uv = _plane(tilt_deg=70.0)
    c2w, k = _camera(d=1.2, fov=60.0)
    out = rasterize_mesh(v, f, c2w, k, res, config=UNSHADED, textures=_textures(uv, _checker(2, 64)))
    t = math.radians(70.0)
    mid = _px([[0.25, 0.0, 0.0]], c2w, k, res)[0]  # the boundary y = 0 at x = 0.25 (a white/black change)
    col = int(mid[0])
    column = out.rgb[0, :, col].numpy() - 0.5
    inside = out.mask[0, :, col].numpy() > 0
    rows = np.flatnonzero(inside)
    crossing = [r for r in rows[:-1] if inside[r + 1] and column[r] * column[r + 1] < 0]
    assert len(crossing) == 1, crossing
    r = crossing[0]  # sub-pixel crossing of the 0.5 level between the centres of rows r and r + 1
    y = r + 0.5 + column[r] / (column[r] - column[r + 1])
    assert abs(y - mid[1]) <= 1.0, (y, mid)
    # what affine interpolation would give: the midpoint of the projected top and bottom edges
    top, bottom = _px([[0.25, 0.5 * math.cos(t), 0.5 * math.sin(t)], [0.25, -0.5 * math.cos(t), -0.5 * math.sin(t)]],
                      c2w, k, res)[:, 1]
    assert abs((top + bottom) / 2 - mid[1]) > 3  # the check above could tell the two apart


def test_mipmapping_removes_aliasing_of_a_fine_checkerboard():
    res = 48
    v, f, uv = _plane()
    c2w, k = _camera(d=4.0, fov=30.0)  # the plane covers ~28 px; the texture has 256 checks per side
    fine = _checker(256, 256)
    mip = rasterize_mesh(v, f, c2w, k, res, textures=_textures(uv, fine, mip=True))
    plain = rasterize_mesh(v, f, c2w, k, res, textures=_textures(uv, fine, mip=False))
    hit = mip.mask[0] > 0
    assert abs(float(mip.rgb[0][hit].mean()) - 0.5) < 0.02 and float(mip.rgb[0][hit].std()) < 0.03
    assert float(plain.rgb[0][hit].std()) > 0.1  # bilinear sampling of a minified texture aliases


def test_mip_pyramid_and_bilinear_wrap():
    img = torch.arange(16, dtype=F64).reshape(1, 4, 4).repeat(3, 1, 1)
    levels = build_mipmaps(img)
    assert [tuple(lv.shape[1:]) for lv in levels] == [(4, 4), (2, 2), (1, 1)]
    assert torch.allclose(levels[2][0, 0, 0], img[0].mean())
    # texel centres read exactly; u = 1 wraps to u = 0; halfway between two texels is their mean
    centre = sample_bilinear_wrap(img, torch.tensor([[0.125, 1 - 0.125], [1.125, 1 - 0.125], [0.25, 1 - 0.125]],
                                                    dtype=F64))
    assert centre[:, 0].tolist() == pytest.approx([0.0, 0.0, 0.5])


def _textured_plane_file(path, marker_rgb=(255, 0, 0)):
    """A real-format file (GLB or OBJ+MTL+PNG) of the y-up plane x, y in [-0.5, 0.5] with a 4 x 4 checkerboard
    texture whose top-left square (u < 0.25, v > 0.75) is coloured."""
    tex = np.zeros((64, 64, 3), np.uint8)
    idx = np.arange(64) // 16
    tex[(idx[:, None] + idx[None, :]) % 2 == 0] = 255
    tex[:16, :16] = marker_rgb
    verts = np.array([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    uv = verts[:, :2] + 0.5
    if path.suffix == ".glb":
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(tex),
                                                       baseColorFactor=[255, 255, 255, 255])
    else:
        material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(tex))
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    mesh = trimesh.Trimesh(verts, [[0, 1, 2], [0, 2, 3]], visual=visual, process=False)
    mesh.export(path)
    return path


@pytest.mark.parametrize("ext", [".glb", ".obj"])
def test_real_textured_files_render_their_texture_in_place(tmp_path, ext):
    path = _textured_plane_file(tmp_path / f"plane{ext}")
    mesh = load_cad_mesh(path, up_axis="y")  # file (x, y, z) -> object (x, -z, y): the plane stands up, facing -y
    assert mesh.textured and mesh.uv.shape == (len(mesh.vertices), 2)
    # camera in front of the plane: azimuth -90 deg puts it on -y, looking along +y at the textured side
    vp = Viewpoint(azimuth=1.5 * math.pi, polar=math.pi / 2, roll=0.0, distance=1.6, strategy=1)
    view = render_view(mesh, vp, 64)
    marker_file = np.array([-0.375, 0.375, 0.0])  # centre of the coloured square in the file frame
    marker_obj = np.array([marker_file[0], -marker_file[2], marker_file[1]]) * mesh.scale + mesh.offset
    uv, _ = project_px(marker_obj[None], view.camera.K, view.camera.R, view.camera.t)
    u, v = uv[0]
    r, g, b = view.rgb[int(v), int(u)].astype(int)
    assert r > 150 and g < 60 and b < 60, (r, g, b)  # red, where the square projects
    edges = canny_edges(view.rgb)
    assert edges[view.mask].sum() / 255 > 40  # the texture's square edges reach the Canny control image


def test_broken_or_missing_textures_make_the_mesh_unreadable(tmp_path):
    glb = _textured_plane_file(tmp_path / "plane.glb")
    data = bytearray(glb.read_bytes())
    start = data.find(b"\x89PNG")
    data[start + 16:start + 80] = b"\x00" * 64  # corrupt the embedded PNG
    (tmp_path / "broken.glb").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="broken.glb declares textures.*none could be read"):
        load_cad_mesh(tmp_path / "broken.glb")
    (tmp_path / "o").mkdir()
    obj = _textured_plane_file(tmp_path / "o" / "plane.obj")
    for png in (tmp_path / "o").glob("*.png"):
        png.unlink()
    with pytest.raises(ValueError, match="plane.obj declares textures.*map_Kd"):
        load_cad_mesh(obj)


def test_synth_textures_switch(tmp_path):
    import json

    from adapt3d.pipelines.synth import SynthConfig, synth

    (tmp_path / "meshes" / "plane").mkdir(parents=True)
    _textured_plane_file(tmp_path / "meshes" / "plane" / "p.glb")
    edges = {}
    for textures in (True, False):
        out = tmp_path / f"run-{textures}"
        synth(SynthConfig(out=out, meshes=str(tmp_path / "meshes"), textures=textures, render_only=True, per_mesh=1,
                          resolution=64, pose_sampling="front", progress=False))
        ann = json.loads((out / "plane/p/annotation/000_00.json").read_text())
        assert ann["appearance"]["textured"] is textures and ann["render_options"]["textures"] is textures
        edges[textures] = (np.asarray(Image.open(out / ann["files"]["control"])) > 0).sum()
    assert edges[True] > edges[False] + 20  # without textures only the silhouette leaves edges
