"""The pure-PyTorch mesh rasteriser: analytic silhouettes, exact depth, sub-pixel projection, z-buffer, errors."""

import math

import numpy as np
import pytest
import torch
import trimesh

from adapt3d.cameras import fov_to_intrinsics, orbit_camera, project_points
from adapt3d.dst.annotations import dst_camera, project_px
from adapt3d.rendering.mesh_raster import MeshRasterConfig, face_normals, rasterize_mesh, vertex_normals

F64 = torch.float64


def _mesh(m):
    return torch.tensor(m.vertices, dtype=F64), torch.tensor(m.faces)


def _front_camera(distance, fov_deg=30.0):
    """A camera on +z looking at the origin (EG3D frontal convention), float64."""
    c2w = orbit_camera(math.pi / 2, math.pi / 2, radius=distance, pivot=(0, 0, 0), dtype=F64)[0]
    k = fov_to_intrinsics(fov_deg, exact=True, dtype=F64)[0]
    return c2w, k


def test_sphere_silhouette_matches_analytic_area():
    r, d, res = 0.5, 5.0, 256
    v, f = _mesh(trimesh.creation.icosphere(subdivisions=5, radius=r))
    c2w, k = _front_camera(d)
    out = rasterize_mesh(v, f, c2w, k, res)
    # a centred sphere's silhouette is a disc of radius f * tan(asin(r / d)) pixels
    f_px = float(k[0, 0]) * res
    expected = math.pi * (f_px * math.tan(math.asin(r / d))) ** 2
    area = float(out.mask.sum())
    assert abs(area - expected) / expected < 0.01, (area, expected)
    # the nearest surface point is on the optical axis at depth d - r
    hit = out.depth[out.mask > 0]
    assert abs(float(hit.min()) - (d - r)) < 1e-3
    assert float(hit.max()) < d


def test_cube_face_on_area_depth_and_normals():
    s, d, res = 0.6, 4.0, 128
    v, f = _mesh(trimesh.creation.box(extents=(s, s, s)))
    c2w, k = _front_camera(d)
    out = rasterize_mesh(v, f, c2w, k, res)
    z_front = d - s / 2
    side_px = float(k[0, 0]) * res * s / z_front  # the front face is parallel to the image plane
    area = float(out.mask.sum())
    assert abs(area - side_px ** 2) <= 4 * side_px + 4  # at most one pixel row/column per side
    hit = out.mask[0] > 0
    # only the front face is visible: depth is exactly z_front, normals point at the camera (+z)
    assert torch.allclose(out.depth[0][hit], torch.full_like(out.depth[0][hit], z_front), atol=1e-9)
    assert torch.allclose(out.normals[:, hit].T, torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand(int(hit.sum()), 3))
    assert torch.all(out.depth[0][~hit] == 0) and torch.all(out.face_index[~hit] == -1)
    assert torch.all(out.rgb[:, ~hit] == 1.0)  # white background


def _disc(centre, radius, normal_frame, segments=96):
    """A flat disc (triangle fan) around ``centre`` in the plane spanned by the first two columns of the frame."""
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    ring = centre + radius * (np.cos(ang)[:, None] * normal_frame[:, 0] + np.sin(ang)[:, None] * normal_frame[:, 1])
    verts = np.vstack([centre, ring])
    faces = np.array([[0, 1 + i, 1 + (i + 1) % segments] for i in range(segments)])
    return verts, faces


def test_annotation_projection_lands_on_rendered_pixels_subpixel():
    """Discs facing an annotation camera (3D-DST angles with in-plane rotation) are rendered; the centroid of each
    disc's pixels equals the K, R, t projection of its centre to a small fraction of a pixel, and the rendered
    depth equals the camera-frame depth of the disc plane."""
    res = 512
    cam = dst_camera(azimuth=1.1, polar=1.2, roll=0.4, distance=3.0, width=res, height=res)
    c2w = cam.cam2world
    rng = np.random.default_rng(3)
    # six disc centres on a 3 x 2 grid of image directions at different depths (they never overlap)
    cam_pts = np.array([[x * zz, y * zz, zz] for (x, y), zz in
                        zip([(-0.2, -0.12), (0.0, -0.12), (0.2, -0.12), (-0.2, 0.12), (0.0, 0.12), (0.2, 0.12)],
                            rng.uniform(2.6, 3.4, 6))])
    centres = cam_pts @ c2w[:3, :3].T + c2w[:3, 3]  # object frame
    verts, faces, owner = [], [], []
    for i, c in enumerate(centres):
        v, f = _disc(c, 0.1, c2w[:3, :3])  # in the camera's x-y plane: parallel to the image
        faces.append(f + sum(len(x) for x in verts))
        verts.append(v)
        owner += [i] * len(f)
    verts, faces, owner = np.vstack(verts), np.vstack(faces), np.array(owner)
    out = rasterize_mesh(torch.from_numpy(verts), torch.from_numpy(faces), torch.from_numpy(c2w),
                         torch.from_numpy(cam.intrinsics), res)
    uv, z = project_px(centres, cam.K, cam.R, cam.t)
    face_index = out.face_index.numpy()
    rows, cols = np.mgrid[0:res, 0:res]
    errors = []
    for i in range(len(centres)):
        pix = (face_index >= 0) & (owner[np.maximum(face_index, 0)] == i)
        assert pix.sum() > 800  # about pi * (17 to 21)^2 pixels
        centroid = np.array([(cols[pix] + 0.5).mean(), (rows[pix] + 0.5).mean()])
        errors.append(np.abs(centroid - uv[i]).max())
        # depth at the disc's pixels is the plane's camera depth (all points of the disc share it)
        assert np.allclose(out.depth[0].numpy()[pix], z[i], atol=1e-9)
    # pixel sampling of a ~20 px disc moves its centroid by a few hundredths of a pixel; a half-pixel convention
    # error (pixel centres at j instead of j + 0.5) would show as 0.5
    assert max(errors) < 0.1 and np.mean(errors) < 0.05, errors


def test_mesh_vertices_project_onto_silhouette_with_annotation_camera():
    """Every vertex of a convex mesh projects (K, R, t) into the silhouette; visible ones match the depth map."""
    res = 128
    m = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    cam = dst_camera(azimuth=2.0, polar=0.9, roll=-0.3, distance=2.2, width=res, height=res)
    out = rasterize_mesh(*_mesh(m), torch.from_numpy(cam.cam2world), torch.from_numpy(cam.intrinsics), res)
    uv, z = project_px(m.vertices, cam.K, cam.R, cam.t)
    mask = out.mask[0].numpy() > 0
    depth = out.depth[0].numpy()
    j, i = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    # vertices on the rim may fall just outside the sampled silhouette; allow the 1-pixel neighbourhood
    near = np.array([mask[max(a - 1, 0):a + 2, max(b - 1, 0):b + 2].any() for a, b in zip(i, j)])
    assert near.all()
    # vertices whose normal is within 45 deg of the viewing direction: the surface seen at the vertex's pixel centre
    # (at most 0.71 px away) is at most 0.71 pixel footprints deeper or nearer than the vertex
    facing = (m.vertex_normals @ cam.R.T @ np.array([0, 0, -1.0])) > math.cos(math.pi / 4)
    assert facing.sum() > 40
    gap = np.abs(depth[i[facing], j[facing]] - z[facing])
    pixel_footprint = z[facing] / cam.K[0, 0]  # world size of one pixel at that depth
    assert np.all(gap < 0.75 * pixel_footprint), (gap / pixel_footprint).max()


def test_zbuffer_nearest_wins_and_chunking_does_not_matter():
    near = trimesh.creation.box(extents=(0.4, 0.4, 0.1))
    near.apply_translation((0.1, 0, 0.5))
    far = trimesh.creation.box(extents=(1.0, 1.0, 0.1))
    both = trimesh.util.concatenate([far, near])
    c2w, k = _front_camera(3.0)
    full = rasterize_mesh(*_mesh(both), c2w, k, 96)
    small = rasterize_mesh(*_mesh(both), c2w, k, 96, config=MeshRasterConfig(max_pairs=500))
    for a, b in ((full.depth, small.depth), (full.face_index, small.face_index), (full.rgb, small.rgb)):
        assert torch.equal(a, b)
    centre = full.depth[0, 48, 52]  # inside the near box's footprint
    assert abs(float(centre) - (3.0 - 0.55)) < 1e-9
    assert int(full.face_index[48, 52]) >= len(far.faces)  # a face of the near box


def test_colors_per_face_and_vertex_and_shading():
    m = trimesh.creation.box(extents=(0.5, 0.5, 0.5))
    v, f = _mesh(m)
    c2w, k = _front_camera(3.0)
    red = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64).expand(len(f), 3)
    cfg = MeshRasterConfig(ambient=0.5, diffuse=0.5)
    out = rasterize_mesh(v, f, c2w, k, 64, colors=red, config=cfg)
    hit = out.mask[0] > 0
    # centre pixel looks straight at the front face: |n . l| ~ 1 -> full red
    assert torch.allclose(out.rgb[:, 32, 32], torch.tensor([1.0, 0.0, 0.0], dtype=F64), atol=1e-3)
    assert torch.all(out.rgb[1:, hit] == 0)
    green = torch.tensor([[0.0, 1.0, 0.0]], dtype=F64).expand(len(v), 3)
    out_v = rasterize_mesh(v, f, c2w, k, 64, colors=green, config=cfg)
    assert torch.all(out_v.rgb[0, hit] == 0) and float(out_v.rgb[1, 32, 32]) > 0.99


def test_normals_helpers():
    m = trimesh.creation.icosphere(subdivisions=2)
    v, f = _mesh(m)
    fn = face_normals(v, f)
    assert torch.allclose(fn, torch.tensor(m.face_normals), atol=1e-9)
    vn = vertex_normals(v, f)
    assert torch.allclose(vn, v / v.norm(dim=1, keepdim=True), atol=0.05)  # a sphere's normals are radial


def test_matches_cameras_project_points_convention():
    """A single big triangle: pixels whose centre projects inside it (adapt3d.cameras) are exactly the covered ones."""
    v = torch.tensor([[-0.3, -0.2, 0.0], [0.35, -0.25, 0.1], [0.0, 0.4, -0.1]], dtype=F64)
    f = torch.tensor([[0, 1, 2]])
    c2w, k = _front_camera(2.0, fov_deg=20.0)
    res = 48
    out = rasterize_mesh(v, f, c2w, k, res)
    uv, _ = project_points(v[None], c2w[None], k[None])
    p = (uv[0] * res).numpy()  # pixel coordinates of the corners
    jj, ii = np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5)
    def edge(a, b):
        return (b[0] - a[0]) * (ii - a[1]) - (b[1] - a[1]) * (jj - a[0])
    e = np.stack([edge(p[0], p[1]), edge(p[1], p[2]), edge(p[2], p[0])])
    inside = (e >= 0).all(0) | (e <= 0).all(0)
    assert np.array_equal(out.mask[0].numpy() > 0, inside)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(vertices=torch.zeros(3, 2)), "vertices"),
    (dict(faces=torch.zeros(1, 3)), "faces"),
    (dict(faces=torch.tensor([[0, 1, 9]])), "outside"),
    (dict(cam2world=torch.eye(3)), "cam2world"),
    (dict(intrinsics=torch.eye(4)), "intrinsics"),
    (dict(resolution=0), "resolution"),
    (dict(colors=torch.zeros(5, 3)), "colors"),
])
def test_errors_name_the_argument(kwargs, needle):
    args = dict(vertices=torch.zeros(3, 3), faces=torch.tensor([[0, 1, 2]]), cam2world=torch.eye(4),
                intrinsics=torch.eye(3), resolution=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        rasterize_mesh(**args)


def test_faces_behind_the_camera_are_skipped():
    v = torch.tensor([[-1.0, -1.0, 5.0], [1.0, -1.0, 5.0], [0.0, 1.0, 5.0]], dtype=F64)  # behind a +z camera
    c2w, k = _front_camera(2.0)
    out = rasterize_mesh(v, torch.tensor([[0, 1, 2]]), c2w, k, 16)
    assert float(out.mask.sum()) == 0
