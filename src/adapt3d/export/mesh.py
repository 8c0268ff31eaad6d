"""Mesh export: sample a density field on a grid, run marching cubes, colour and save the surface.

Axis convention (used by :func:`density_grid` and :func:`extract_mesh` alike): for a grid of shape
``(D, H, W)`` over ``bounds = ((xmin, ymin, zmin), (xmax, ymax, zmax))``, ``density[i, j, k]`` is the value at
``(x_i, y_j, z_k)`` with ``x = linspace(xmin, xmax, D)``, ``y = linspace(ymin, ymax, H)``,
``z = linspace(zmin, zmax, W)`` (bounds inclusive). Density is *higher inside* the object; for a signed distance
function (negative inside) pass ``-sdf`` and ``level=0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from adapt3d.utils.io import atomic_path

__all__ = ["extract_mesh", "density_grid", "save_mesh", "grid_coordinates", "generator_mesh", "MESH_EXTENSIONS"]

MESH_EXTENSIONS = (".ply", ".obj", ".glb", ".stl", ".off")
Bounds = Sequence[Sequence[float]]


def _check_bounds(bounds: Bounds) -> tuple[np.ndarray, np.ndarray]:
    try:
        lo = np.asarray(bounds[0], dtype=np.float64)
        hi = np.asarray(bounds[1], dtype=np.float64)
        ok = len(bounds) == 2 and lo.shape == (3,) and hi.shape == (3,)
    except (TypeError, IndexError, ValueError):
        ok = False
    if not ok or not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)):
        raise ValueError(f"bounds must be ((xmin, ymin, zmin), (xmax, ymax, zmax)) with finite min < max per axis, "
                         f"got {bounds!r}")
    return lo, hi


def _check_resolution(resolution: int | Sequence[int]) -> tuple[int, int, int]:
    res = (resolution,) * 3 if isinstance(resolution, (int, np.integer)) else tuple(resolution)
    if len(res) != 3 or not all(isinstance(r, (int, np.integer)) and r >= 2 for r in res):
        raise ValueError(f"resolution must be an int >= 2 or three such ints (D, H, W), got {resolution!r}")
    return tuple(int(r) for r in res)  # type: ignore[return-value]


def grid_coordinates(bounds: Bounds, resolution: int | Sequence[int]) -> list[np.ndarray]:
    """The per-axis sample coordinates ``[x (D,), y (H,), z (W,)]`` (``linspace`` over bounds, inclusive)."""
    lo, hi = _check_bounds(bounds)
    res = _check_resolution(resolution)
    return [np.linspace(lo[a], hi[a], res[a]) for a in range(3)]


@torch.no_grad()
def density_grid(query_fn: Callable[[torch.Tensor], torch.Tensor], bounds: Bounds,
                 resolution: int | Sequence[int], chunk: int = 2 ** 18, progress: bool = False,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Evaluate ``query_fn`` on a regular grid and return the densities as a CPU float32 tensor ``(D, H, W)``.

    ``query_fn(points)`` receives float32 world points ``(N, 3)`` with ``N <= chunk`` (on ``device``, default
    CPU) and must return densities ``(N,)`` or ``(N, 1)``. Points are generated chunk by chunk from flat
    indices in C order, so memory stays ``O(chunk)`` beyond the output grid. ``resolution`` is ``R`` (a cube
    ``(R, R, R)``) or ``(D, H, W)``; see the module docstring for the axis order. Runs under ``no_grad``.
    """
    if not callable(query_fn):
        raise ValueError(f"query_fn must be callable, got {type(query_fn).__name__}")
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    axes = [torch.as_tensor(a, dtype=torch.float32) for a in grid_coordinates(bounds, resolution)]
    d, h, w = (len(a) for a in axes)
    total = d * h * w
    out = torch.empty(total, dtype=torch.float32)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    axes = [a.to(dev) for a in axes]
    starts = range(0, total, int(chunk))
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="density grid", unit="chunk")
    for start in starts:
        idx = torch.arange(start, min(start + int(chunk), total), device=dev)
        i, rem = idx // (h * w), idx % (h * w)
        pts = torch.stack([axes[0][i], axes[1][rem // w], axes[2][rem % w]], dim=-1)  # (N, 3)
        sigma = query_fn(pts)
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.as_tensor(np.asarray(sigma))
        if sigma.ndim == 2 and sigma.shape[1] == 1:
            sigma = sigma[:, 0]
        if sigma.shape != (len(idx),):
            raise ValueError(f"query_fn must return densities of shape (N,) or (N, 1) for N={len(idx)} points, "
                             f"got shape {tuple(sigma.shape)}")
        out[start:start + len(idx)] = sigma.detach().to("cpu", torch.float32)
    return out.view(d, h, w)


def _marching_cubes(vol: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices in index coordinates ``(N, 3)`` (axis order of ``vol``) and faces ``(F, 3)``."""
    try:
        import mcubes

        verts, faces = mcubes.marching_cubes(vol, level)
        return np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    except ImportError:
        pass
    try:
        from skimage import measure
    except ImportError as err:  # pragma: no cover - PyMCubes is a hard dependency
        raise ImportError("extract_mesh needs PyMCubes (pip install PyMCubes) or scikit-image") from err
    verts, faces, _, _ = measure.marching_cubes(vol, level, gradient_direction="ascent")
    return np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)


def extract_mesh(density: torch.Tensor | np.ndarray, level: float, bounds: Bounds,
                 colors_fn: Callable[[torch.Tensor], torch.Tensor | np.ndarray] | None = None,
                 largest_component_only: bool = False, close_boundary: bool = False, color_chunk: int = 2 ** 18):
    """Extract the ``density == level`` surface of a grid ``(D, H, W)`` as a ``trimesh.Trimesh`` in world units.

    Vertices are mapped from voxel indices to world coordinates in ``bounds`` (index ``i`` along axis 0 ->
    ``x = xmin + i * (xmax - xmin) / (D - 1)``, likewise y/axis 1 and z/axis 2). Faces are oriented outward for
    density higher inside: the signed volume is checked and the faces flipped if it is negative, so
    ``mesh.volume > 0`` for a closed surface. Duplicate vertices are merged and degenerate faces dropped.

    * ``colors_fn(vertices)`` gets world vertices ``(N, 3)`` float32 (CPU, in chunks of ``color_chunk``) and
      returns RGB ``(N, 3)`` in ``[0, 1]``; stored as uint8 per-vertex colours (alpha 255).
    * ``largest_component_only`` keeps only the connected component with the most faces.
    * ``close_boundary`` pads the grid with one layer of "outside" so surfaces cut by the grid border are closed
      (those vertices are clipped onto the bounds).

    Raises ``ValueError`` if the density is not a finite 3-D grid or the level set is empty.
    """
    import trimesh

    if isinstance(density, torch.Tensor):
        density = density.detach().cpu().to(torch.float64).numpy()
    vol = np.ascontiguousarray(density, dtype=np.float64)
    if vol.ndim != 3 or min(vol.shape) < 2:
        raise ValueError(f"density must be a 3-D grid (D, H, W) with every size >= 2, got shape {vol.shape}")
    bad = int(np.size(vol) - np.count_nonzero(np.isfinite(vol)))
    if bad:
        raise ValueError(f"density has {bad} non-finite values (nan/inf); clean it before extract_mesh")
    level = float(level)
    lo, hi = _check_bounds(bounds)
    vmin, vmax = float(vol.min()), float(vol.max())
    empty_msg = (f"empty level set: density range [{vmin:.6g}, {vmax:.6g}] does not cross level={level:.6g} "
                 f"(density must be higher than level inside the object); no surface to extract")
    if not (vmin < level < vmax or (close_boundary and level < vmax)):
        raise ValueError(empty_msg)
    shape = np.asarray(vol.shape, dtype=np.float64)
    offset = 0.0
    if close_boundary:
        vol = np.pad(vol, 1, mode="constant", constant_values=min(vmin, level) - 1.0)
        offset = 1.0
    verts, faces = _marching_cubes(vol, level)
    if len(faces) == 0:
        raise ValueError(empty_msg)
    verts = lo + (verts - offset) * ((hi - lo) / (shape - 1.0))  # index -> world, (N, 3)
    if close_boundary:
        verts = np.clip(verts, lo, hi)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) == 0:
        raise ValueError(empty_msg)
    if largest_component_only:
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            mesh = max(parts, key=lambda m: len(m.faces))
    # Orientation: the linear index->world map has positive scales, so the orientation of mcubes is kept; still
    # verify with the signed volume (sum over faces of v0 . (v1 x v2) / 6) and flip if inward.
    tri = mesh.vertices[mesh.faces]  # (F, 3, 3)
    signed_volume = float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)
    if signed_volume < 0:
        mesh.invert()
    if colors_fn is not None:
        mesh.visual.vertex_colors = _vertex_colors(colors_fn, np.asarray(mesh.vertices), color_chunk)
    return mesh


@torch.no_grad()
def _vertex_colors(colors_fn: Callable, vertices: np.ndarray, chunk: int) -> np.ndarray:
    """Call ``colors_fn`` in chunks and return RGBA uint8 ``(N, 4)``."""
    v = torch.from_numpy(vertices.astype(np.float32))  # (N, 3)
    cols = []
    for s in range(0, len(v), int(chunk)):
        c = colors_fn(v[s:s + int(chunk)])
        c = c.detach().cpu().to(torch.float64).numpy() if isinstance(c, torch.Tensor) else np.asarray(c, np.float64)
        if c.shape != (min(len(v) - s, int(chunk)), 3):
            raise ValueError(f"colors_fn must return RGB of shape (N, 3) in [0, 1] for N="
                             f"{min(len(v) - s, int(chunk))} vertices, got shape {c.shape}")
        cols.append(c)
    rgb = np.nan_to_num(np.concatenate(cols), nan=0.0).clip(0.0, 1.0)  # (N, 3)
    rgba = np.empty((len(v), 4), dtype=np.uint8)
    rgba[:, :3] = (rgb * 255.0 + 0.5).astype(np.uint8)
    rgba[:, 3] = 255
    return rgba


def save_mesh(path: str | os.PathLike, mesh) -> Path:
    """Atomically save a ``trimesh.Trimesh`` as ``.ply``, ``.obj``, ``.glb``, ``.stl`` or ``.off`` (by extension).

    Vertex colours are kept in ply, obj and glb. Returns ``path``.
    """
    import trimesh

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise ValueError(f"path {str(path)!r} has unsupported mesh extension {path.suffix!r}; "
                         f"supported: {', '.join(MESH_EXTENSIONS)}")
    if not isinstance(mesh, trimesh.Trimesh):
        raise ValueError(f"mesh must be a trimesh.Trimesh, got {type(mesh).__name__}")
    with atomic_path(path) as tmp:
        data = mesh.export(file_type=ext[1:])
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    return path


def generator_mesh(G, planes: torch.Tensor, resolution: int, level: float | None = None,
                   notes: list[str] | None = None, label: str = "", progress: bool = False):
    """The coloured mesh of one tri-plane scene: marching cubes of ``G``'s density over its box at ``resolution``
    per axis, coloured by its rgb features.

    ``G`` is a tri-plane generator (its ``sample_density`` and ``rendering.box_warp``), ``planes`` (1, 3, C, P, P)
    the scene. ``level`` is the density (raw sigma) iso-level; None = 10 as in EG3D's shape export, or the field's
    midpoint when the field never crosses 10 (as for untrained models), which appends a note (prefixed ``label``)
    to ``notes``.
    """
    half = G.rendering.box_warp / 2
    bounds = ((-half,) * 3, (half,) * 3)
    device = planes.device

    def sigma(points: torch.Tensor) -> torch.Tensor:
        return G.sample_density(points[None].to(device), planes=planes)["sigma"][0, :, 0]

    def colors(points: torch.Tensor) -> torch.Tensor:
        return G.sample_density(points[None].to(device), planes=planes)["rgb"][0, :, :3].clamp(0, 1)

    with torch.no_grad():
        grid = density_grid(sigma, bounds, resolution, progress=progress, device=device)
        iso = 10.0 if level is None else float(level)
        lo, hi = float(grid.min()), float(grid.max())
        if level is None and not lo < iso < hi:
            iso = (lo + hi) / 2
            if notes is not None:
                notes.append(f"{label}density range [{lo:.3g}, {hi:.3g}] never crosses 10; mesh at the midpoint "
                             f"{iso:.3g} instead")
        return extract_mesh(grid, iso, bounds, colors_fn=colors)
