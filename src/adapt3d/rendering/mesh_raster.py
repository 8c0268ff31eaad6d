"""A headless triangle-mesh rasteriser in pure PyTorch (CPU or GPU): RGB, silhouette, depth and normals.

No display, OpenGL, EGL, OSMesa or Blender is needed; the same code runs on any torch device.

Camera: an OpenCV ``cam2world`` (4, 4) and normalised intrinsics (3, 3), exactly as in :mod:`adapt3d.cameras`
(pixel (row i, column j) has its centre at ``u = (j + 0.5) / W``, ``v = (i + 0.5) / H``). Every pixel is sampled
once, at its centre, so a vertex that :func:`adapt3d.cameras.project_points` puts at ``(u, v)`` lands in pixel
``(floor(v H), floor(u W))`` and the rendered depth there is the exact camera-frame z of the surface.

Algorithm (vectorised, no per-pixel Python loop):

1. vertices -> camera frame -> pixel coordinates ``x = u W``, ``y = v H``;
2. every face enumerates the pixel centres inside its screen bounding box (in chunks, to bound memory);
3. edge functions give screen-space barycentrics; a centre is covered when all three are >= 0
   (both windings: back faces are not culled, CAD meshes are rarely consistently oriented);
4. depth is interpolated perspective-correctly: ``1 / z = sum_k b_k / z_k`` (exact for a planar triangle);
5. z-buffer: per pixel the smallest depth wins (``scatter_reduce('amin')``), ties go to the lower face index.

Faces with a vertex at or behind ``near`` (camera-frame z) are skipped, not clipped; keep the camera outside the
object. Shading (Lambertian): ``albedo * (ambient + diffuse * max(n . l, 0))`` with flat (face) or smooth (vertex)
normals turned to face the camera, and either a head light (``light_direction=None``: l = direction from the point to
the camera, so every visible face is lit) or a directional light (``light_direction`` = unit vector from the surface
towards the light, in world coordinates). Normals are returned in world coordinates, turned to face the camera.

Albedo: per-vertex or per-face colours, and/or per-face materials with a base colour and an optional UV texture
(:class:`adapt3d.rendering.texture.MeshTextures`), sampled trilinearly from a mip pyramid at the pixel's
perspective-correct UV; the pixel's texel footprint comes from the UVs of the same face's plane at the neighbouring
pixel centres (exact screen-space derivatives, also at silhouettes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from adapt3d.rendering.texture import MeshTextures, sample_trilinear

__all__ = ["MeshRasterConfig", "MeshRenderOutput", "rasterize_mesh", "face_normals", "vertex_normals"]


@dataclass
class MeshRasterConfig:
    """Options of :func:`rasterize_mesh`."""

    near: float = 1e-3
    """Faces with a vertex closer than this camera-frame depth are dropped."""
    ambient: float = 0.35
    """Ambient light term in [0, 1]."""
    diffuse: float = 0.65
    """Lambertian term in [0, 1] (scaled by the light's cosine)."""
    light_direction: tuple[float, float, float] | None = None
    """World-space direction from the surface towards a directional light (normalised here); None = head light."""
    smooth: bool = False
    """Interpolate area-weighted vertex normals (True) or use flat face normals (False)."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """RGB of empty pixels, in [0, 1]."""
    max_pairs: int = 4_000_000
    """Largest number of (face, pixel) candidates handled at once; lower it to save memory."""


@dataclass
class MeshRenderOutput:
    """Rendered maps of one camera. Background pixels: mask 0, depth 0, normals 0, face_index -1."""

    rgb: Tensor  # (3, H, W) in [0, 1]
    mask: Tensor  # (1, H, W) in {0, 1}
    depth: Tensor  # (1, H, W) camera-frame z (world units), 0 on the background
    normals: Tensor  # (3, H, W) unit world-space normals facing the camera, 0 on the background
    face_index: Tensor  # (H, W) int64, -1 on the background


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit face normals (F, 3) from the right-hand rule over (v0, v1, v2); zero for degenerate faces."""
    tri = vertices[faces]  # (F, 3, 3)
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    return n / torch.linalg.vector_norm(n, dim=-1, keepdim=True).clamp_min(1e-12)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals (V, 3)."""
    tri = vertices[faces]
    n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)  # (F, 3), length = 2 area
    acc = torch.zeros_like(vertices).index_add_(0, faces.reshape(-1), n.repeat_interleave(3, dim=0))
    return acc / torch.linalg.vector_norm(acc, dim=-1, keepdim=True).clamp_min(1e-12)


def _check_inputs(vertices, faces, cam2world, intrinsics, resolution, colors, textures=None):
    if not isinstance(vertices, Tensor) or vertices.dim() != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must be a tensor (V, 3), got {getattr(vertices, 'shape', type(vertices))}")
    if not isinstance(faces, Tensor) or faces.dim() != 2 or faces.shape[1] != 3 or faces.is_floating_point():
        raise ValueError(f"faces must be an integer tensor (F, 3), got {getattr(faces, 'shape', type(faces))}")
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= vertices.shape[0]):
        raise ValueError(f"faces index vertices outside [0, {vertices.shape[0]})")
    if tuple(cam2world.shape) != (4, 4):
        raise ValueError(f"cam2world must have shape (4, 4), got {tuple(cam2world.shape)}")
    if tuple(intrinsics.shape) != (3, 3):
        raise ValueError(f"intrinsics must have shape (3, 3) (normalised), got {tuple(intrinsics.shape)}")
    h, w = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ValueError(f"resolution must be a positive int or (height, width), got {resolution!r}")
    if colors is not None and (colors.dim() != 2 or colors.shape[1] != 3 or
                               colors.shape[0] not in (vertices.shape[0], faces.shape[0])):
        raise ValueError(f"colors must be (V, 3) per vertex or (F, 3) per face in [0, 1], got {tuple(colors.shape)}")
    if textures is not None:
        if not isinstance(textures, MeshTextures):
            raise ValueError(f"textures must be a MeshTextures, got {type(textures).__name__}")
        textures.check(vertices.shape[0], faces.shape[0])
    return h, w


def _candidates(bbox: Tensor, face_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """All (face, column, row) pairs inside the integer boxes bbox (n, 4) = (x0, y0, x1, y1) inclusive."""
    widths = bbox[:, 2] - bbox[:, 0] + 1
    heights = bbox[:, 3] - bbox[:, 1] + 1
    counts = widths * heights
    face = torch.repeat_interleave(face_ids, counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum()), device=bbox.device) - torch.repeat_interleave(start, counts)
    w_rep = torch.repeat_interleave(widths, counts)
    col = torch.repeat_interleave(bbox[:, 0], counts) + local % w_rep
    row = torch.repeat_interleave(bbox[:, 1], counts) + local // w_rep
    return face, col, row


def rasterize_mesh(
    vertices: Tensor,
    faces: Tensor,
    cam2world: Tensor,
    intrinsics: Tensor,
    resolution: int | tuple[int, int],
    colors: Tensor | None = None,
    config: MeshRasterConfig | None = None,
    textures: MeshTextures | None = None,
) -> MeshRenderOutput:
    """Render a triangle mesh at one pinhole camera (see the module docstring for conventions).

    vertices (V, 3) world coordinates; faces (F, 3) int; cam2world (4, 4) OpenCV; intrinsics (3, 3) normalised;
    resolution: int (square) or (height, width); colors: (V, 3) or (F, 3) albedo in [0, 1]; textures: per-face
    materials (base colour times UV texture, multiplied with ``colors`` when both are given). Without either the
    albedo is light grey (0.8). Computation runs on ``vertices.device`` in float32 (float64 inputs stay float64).
    """
    cfg = config or MeshRasterConfig()
    h, w = _check_inputs(vertices, faces, cam2world, intrinsics, resolution, colors, textures)
    device = vertices.device
    dtype = vertices.dtype if vertices.dtype == torch.float64 else torch.float32
    verts = vertices.to(dtype)
    faces = faces.to(device=device, dtype=torch.long)
    c2w = cam2world.to(device=device, dtype=dtype)
    k = intrinsics.to(device=device, dtype=dtype)
    rot, centre = c2w[:3, :3], c2w[:3, 3]
    cam = (verts - centre) @ rot  # (V, 3): R^T (X - C), OpenCV camera frame
    z = cam[:, 2]
    safe_z = torch.where(z > cfg.near, z, torch.ones_like(z))
    px = (k[0, 0] * cam[:, 0] / safe_z + k[0, 1] * cam[:, 1] / safe_z + k[0, 2]) * w  # (V,) pixel x, centre j+0.5
    py = (k[1, 1] * cam[:, 1] / safe_z + k[1, 2]) * h

    # Face setup: screen positions, edge-function area, inverse depths and integer pixel boxes.
    fx, fy, fz = px[faces], py[faces], z[faces]  # (F, 3) each
    area = (fx[:, 1] - fx[:, 0]) * (fy[:, 2] - fy[:, 0]) - (fx[:, 2] - fx[:, 0]) * (fy[:, 1] - fy[:, 0])
    ok = (fz > cfg.near).all(1) & (area.abs() > 1e-12)
    # pixel centres at j + 0.5: the first centre >= x is ceil(x - 0.5), the last <= x is floor(x - 0.5)
    x0 = torch.ceil(fx.min(1).values - 0.5).clamp(0, w - 1)
    x1 = torch.floor(fx.max(1).values - 0.5).clamp(-1, w - 1)
    y0 = torch.ceil(fy.min(1).values - 0.5).clamp(0, h - 1)
    y1 = torch.floor(fy.max(1).values - 0.5).clamp(-1, h - 1)
    ok &= (x1 >= x0) & (y1 >= y0) & (fx.max(1).values >= 0.5) & (fy.max(1).values >= 0.5)
    ok &= (fx.min(1).values <= w - 0.5) & (fy.min(1).values <= h - 0.5)
    face_ids = torch.nonzero(ok).flatten()
    bbox = torch.stack([x0, y0, x1, y1], 1)[face_ids].long()  # (n, 4)

    counts = (bbox[:, 2] - bbox[:, 0] + 1) * (bbox[:, 3] - bbox[:, 1] + 1)
    cum = torch.cumsum(counts, 0)
    zbuf = torch.full((h * w,), float("inf"), dtype=dtype, device=device)
    no_face = faces.shape[0]
    winner = torch.full((h * w,), no_face, dtype=torch.long, device=device)
    # pass 1: nearest depth per pixel; pass 2: lowest face index among the faces at that depth
    for pass_ in (1, 2):
        for face, pix, bary in _covered(fx, fy, area, bbox, face_ids, cum, cfg.max_pairs, w, dtype):
            depth = 1.0 / (bary / fz[face]).sum(1)  # perspective-correct: 1/z is affine in screen space
            if pass_ == 1:
                zbuf.scatter_reduce_(0, pix, depth, reduce="amin")
            else:
                at_min = depth == zbuf[pix]
                winner.scatter_reduce_(0, pix[at_min], face[at_min], reduce="amin")
    winner = torch.where(winner < no_face, winner, torch.full_like(winner, -1))
    bary = _winner_barycentrics(fx, fy, fz, area, winner, w, dtype)
    albedo = _albedo(verts, faces, winner, bary, colors, textures, (fx, fy, fz, area), w)
    return _shade(verts, faces, winner, bary, zbuf, c2w, albedo, cfg, h, w)


def _edge_weights(ax: Tensor, ay: Tensor, cx: Tensor, cy: Tensor, area: Tensor) -> Tensor:
    """Screen-space barycentrics (P, 3) of points (cx, cy) in triangles with corners ax, ay (P, 3)."""
    w0 = (ax[:, 1] - cx) * (ay[:, 2] - cy) - (ax[:, 2] - cx) * (ay[:, 1] - cy)
    w1 = (ax[:, 2] - cx) * (ay[:, 0] - cy) - (ax[:, 0] - cx) * (ay[:, 2] - cy)
    w2 = (ax[:, 0] - cx) * (ay[:, 1] - cy) - (ax[:, 1] - cx) * (ay[:, 0] - cy)
    return torch.stack([w0, w1, w2], 1) / area[:, None]  # sums to 1


def _covered(fx, fy, area, bbox, face_ids, cum, max_pairs: int, w: int, dtype):
    """Yield (face, pixel, barycentrics) of every covered pixel centre, in chunks of at most ~max_pairs pairs."""
    start = 0
    while start < face_ids.numel():
        limit = (int(cum[start - 1]) if start else 0) + max_pairs
        stop = max(start + 1, int(torch.searchsorted(cum, torch.tensor(limit, device=cum.device), right=True)))
        face, col, row = _candidates(bbox[start:stop], face_ids[start:stop])
        start = stop
        bary = _edge_weights(fx[face], fy[face], col.to(dtype) + 0.5, row.to(dtype) + 0.5, area[face])
        inside = (bary >= -1e-7).all(1)
        yield face[inside], (row * w + col)[inside], bary[inside].clamp_min(0)


def _winner_barycentrics(fx, fy, fz, area, winner: Tensor, w: int, dtype) -> Tensor:
    """Perspective-correct barycentrics (H*W, 3) of each pixel centre's surface point in its winning face (zeros
    where there is none): b_k / z_k renormalised, so interpolating vertex attributes gives the 3D point's."""
    bary = torch.zeros(winner.shape[0], 3, dtype=dtype, device=winner.device)
    pix = torch.nonzero(winner >= 0).flatten()
    f = winner[pix]
    cx = (pix % w).to(dtype) + 0.5
    cy = torch.div(pix, w, rounding_mode="floor").to(dtype) + 0.5
    screen = _edge_weights(fx[f], fy[f], cx, cy, area[f]).clamp_min(0) / fz[f]
    bary[pix] = screen / screen.sum(1, keepdim=True)
    return bary


def _perspective_barycentrics(fx, fy, fz, area, f: Tensor, cx: Tensor, cy: Tensor) -> Tensor:
    """Perspective-correct barycentrics (P, 3) of screen points (cx, cy) in the planes of faces ``f`` (P,), not
    clamped: points outside a triangle get the coordinates of its plane's extension (for texture derivatives)."""
    screen = _edge_weights(fx[f], fy[f], cx, cy, area[f]) / fz[f]
    return screen / screen.sum(1, keepdim=True)


def _albedo(verts, faces, winner, bary, colors, textures: MeshTextures | None, face_screen, w: int) -> Tensor:
    """Albedo (n, 3) of the covered pixels, in the order of ``winner >= 0``."""
    dtype, device = verts.dtype, verts.device
    hit = winner >= 0
    idx = winner[hit]
    b = bary[hit]  # (n, 3)
    albedo = torch.ones(idx.numel(), 3, dtype=dtype, device=device)
    if colors is None and textures is None:
        return albedo * 0.8
    if colors is not None:
        colors = colors.to(device=device, dtype=dtype)
        if colors.shape[0] == faces.shape[0] and colors.shape[0] != verts.shape[0]:
            albedo = albedo * colors[idx]
        else:
            albedo = albedo * (colors[faces[idx]] * b[..., None]).sum(1)
    if textures is None:
        return albedo
    mat = textures.face_material.to(device)[idx]  # (n,)
    albedo = albedo * textures.base_colors.to(device=device, dtype=dtype)[mat]
    if textures.uv is None or all(img is None for img in textures.images):
        return albedo
    uv = textures.uv.to(device=device, dtype=dtype)
    tri_uv = uv[faces[idx]]  # (n, 3, 2)
    uv_pix = (tri_uv * b[..., None]).sum(1)  # (n, 2) perspective-correct UV at the pixel centre
    fx, fy, fz, area = face_screen
    pix = torch.nonzero(hit).flatten()
    cx = (pix % w).to(dtype) + 0.5
    cy = torch.div(pix, w, rounding_mode="floor").to(dtype) + 0.5
    uv_dx = (tri_uv * _perspective_barycentrics(fx, fy, fz, area, idx, cx + 1, cy)[..., None]).sum(1) - uv_pix
    uv_dy = (tri_uv * _perspective_barycentrics(fx, fy, fz, area, idx, cx, cy + 1)[..., None]).sum(1) - uv_pix
    for m, image in enumerate(textures.images):
        sel = torch.nonzero(mat == m).flatten()
        if image is None or sel.numel() == 0:
            continue
        levels = textures.pyramid(m) if textures.mip else [image]
        levels = [lv.to(device=device) for lv in levels]
        th, tw = image.shape[1:]
        scale = torch.tensor([tw, th], dtype=dtype, device=device)
        rho = torch.maximum(torch.linalg.vector_norm(uv_dx[sel] * scale, dim=-1),
                            torch.linalg.vector_norm(uv_dy[sel] * scale, dim=-1))
        lod = torch.log2(rho.clamp_min(1e-12)).clamp_min(0) if textures.mip else torch.zeros_like(rho)
        albedo[sel] = albedo[sel] * sample_trilinear(levels, uv_pix[sel], torch.nan_to_num(lod, nan=0.0))
    return albedo


def _shade(verts, faces, winner, bary, zbuf, c2w, albedo, cfg: MeshRasterConfig, h: int, w: int) -> MeshRenderOutput:
    dtype, device = verts.dtype, verts.device
    hit = winner >= 0
    idx = winner[hit]
    b = bary[hit]  # (n, 3)
    if cfg.smooth:
        vn = vertex_normals(verts, faces)
        n = (vn[faces[idx]] * b[..., None]).sum(1)
        n = n / torch.linalg.vector_norm(n, dim=-1, keepdim=True).clamp_min(1e-12)
    else:
        n = face_normals(verts, faces)[idx]
    points = (verts[faces[idx]] * b[..., None]).sum(1)  # (n, 3) world points of the pixel centres
    to_cam = c2w[:3, 3] - points
    to_cam = to_cam / torch.linalg.vector_norm(to_cam, dim=-1, keepdim=True).clamp_min(1e-12)
    facing = (n * to_cam).sum(-1, keepdim=True)
    n = torch.where(facing < 0, -n, n)
    if cfg.light_direction is None:
        cosine = facing.abs()
    else:
        light = torch.tensor(cfg.light_direction, dtype=dtype, device=device)
        light = light / torch.linalg.vector_norm(light).clamp_min(1e-12)
        cosine = (n * light).sum(-1, keepdim=True).clamp_min(0)
    shade = cfg.ambient + cfg.diffuse * cosine
    rgb = torch.empty(h * w, 3, dtype=dtype, device=device)
    rgb[:] = torch.tensor(cfg.background, dtype=dtype, device=device)
    rgb[hit] = (albedo * shade).clamp(0, 1)
    normals = torch.zeros(h * w, 3, dtype=dtype, device=device)
    normals[hit] = n
    depth = torch.where(hit, zbuf, torch.zeros_like(zbuf))
    return MeshRenderOutput(
        rgb=rgb.T.reshape(3, h, w),
        mask=hit.to(dtype).reshape(1, h, w),
        depth=depth.reshape(1, h, w),
        normals=normals.T.reshape(3, h, w),
        face_index=winner.reshape(h, w),
    )
