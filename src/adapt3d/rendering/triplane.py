"""Tri-plane feature lookup.

Three axis-aligned feature planes span the cube [-box_warp/2, box_warp/2]^3. A point q = p * 2 / box_warp is
projected to plane 0 as (x, y), to plane 1 as (x, z) and to plane 2 as (z, x) (EG3D's layout: its third plane is a
cyclic permutation, not (y, z)), then bilinearly sampled (align_corners=False, zero outside).

``sample_triplane`` returns the per-plane features (``F.grid_sample``; differentiable, any device).
``sample_triplane_mean`` returns their mean over the planes, which is all EG3D's decoder uses: on CPU it gathers
the 4 corners x 3 planes of every point in one ``F.embedding_bag`` (weighted sum of rows of a channels-last,
zero-bordered copy of the planes), which avoids grid_sample's per-channel gathers and the (N, 3, M, C) intermediate; elsewhere it falls
back to ``sample_triplane(...).mean(1)`` (also for non-square planes). Both agree to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# For each plane, which world coordinates give the plane's (x-index, y-index) grid coordinates.
PLANE_AXES = ((0, 1), (0, 2), (2, 0))


def project_to_planes(points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """points (N, M, 3) in world units -> grid coordinates (N, 3, M, 2) in [-1, 1] inside the box."""
    q = points * (2.0 / box_warp)
    return torch.stack([q[..., list(axes)] for axes in PLANE_AXES], dim=1)


def sample_triplane(planes: torch.Tensor, points: torch.Tensor, box_warp: float) -> torch.Tensor:
    """Bilinear features of ``points`` on each plane.

    planes: (N, 3, C, H, W); points: (N, M, 3). Returns (N, 3, M, C).
    """
    n, n_planes, c, h, w = planes.shape
    m = points.shape[1]
    grid = project_to_planes(points, box_warp).reshape(n * n_planes, 1, m, 2)  # (N*3, 1, M, 2)
    feats = F.grid_sample(planes.reshape(n * n_planes, c, h, w), grid.to(planes.dtype), mode="bilinear",
                          padding_mode="zeros", align_corners=False)  # (N*3, C, 1, M)
    return feats.permute(0, 3, 2, 1).reshape(n, n_planes, m, c)



_PAD_LO, _PAD_HI = 1, 2  # zero border of the row table: corners at -1 (low) and up to W + 1 (high) stay in it


def triplane_table(planes: torch.Tensor) -> torch.Tensor:
    """(N, 3, C, S, S) -> (N * (S+3) * (S+3) * 3, C): the row table ``sample_triplane_mean`` gathers from.

    Channels-last, with a zero border (1 pixel before, 2 after). Plane 2, whose grid is (z, x), is stored transposed,
    so that every plane's row is (v, u) = (y, x), (z, x), (z, x): two of the three row indices are equal. Build it
    once per set of planes.
    """
    n, n_planes, c, h, w = planes.shape
    if n_planes != 3 or h != w:
        raise ValueError(f"triplane_table needs 3 square planes, got {n_planes} planes of {h} x {w}")
    table = planes.new_zeros(n, h + _PAD_LO + _PAD_HI, w + _PAD_LO + _PAD_HI, n_planes, c)
    inner = table[:, _PAD_LO:_PAD_LO + h, _PAD_LO:_PAD_LO + w]  # (N, S, S, 3, C)
    inner[..., :2, :] = planes[:, :2].permute(0, 3, 4, 1, 2)
    inner[..., 2, :] = planes[:, 2].permute(0, 3, 2, 1)  # transposed: rows indexed by z, columns by x
    return table.view(-1, c)


def _bilinear_taps(planes_shape, points: torch.Tensor, box_warp: float, dtype: torch.dtype):
    """Rows of ``triplane_table`` and bilinear weights (divided by 3) of the 4 corners x 3 planes of every point:
    (N*M, 12) each; per plane the corners are (lower v, lower u), (lower v, upper u), (upper v, lower u),
    (upper v, upper u) with (u, v) = (x, y), (x, z), (x, z) (the table's layout).

    Coordinates are clamped to [-1, S] and NaN counts as -1: every corner then lies in the table, and a corner
    outside the plane reads the zero border, which reproduces grid_sample's zero padding exactly (non-finite
    points give 0 where grid_sample gives NaN).
    """
    n, n_planes, c, h, w = planes_shape
    m = points.shape[1]
    wp = w + _PAD_LO + _PAD_HI
    dev = points.device
    q = points.to(dtype) * (2.0 / box_warp)  # (N, M, 3)
    pix = ((q + 1) * (w / 2) - 0.5).nan_to_num_(-1.0).clamp_(-1.0, float(w))  # grid_sample, align_corners=False
    lo = pix.floor()
    hi_w = pix - lo  # weight of the upper neighbour (exact)
    frac = torch.stack([1 - hi_w, hi_w], -1)  # (N, M, 3, 2): weights of the lower and upper neighbour per axis
    wv = torch.cat([frac[:, :, 1:3], frac[:, :, 2:3]], 2).mul_(1.0 / n_planes)  # v axis of each plane: y, z, z
    wts = wv.unsqueeze(-1) * frac[:, :, 0:1].unsqueeze(-2)  # (N, M, 3, 2, 2), u axis x for every plane
    idx_dtype = torch.int32 if n * wp * wp * n_planes < 2 ** 31 else torch.int64
    li = lo.to(idx_dtype).add_(_PAD_LO)  # (N, M, 3) padded pixel indices of x, y, z
    row = li * (wp * n_planes)
    col = li[:, :, 0:1] * n_planes + torch.arange(n, device=dev, dtype=idx_dtype).view(n, 1, 1) * (wp * wp * n_planes)
    base = torch.cat([row[:, :, 1:3], row[:, :, 2:3]], 2).add_(col)  # (N, M, 3)
    offs = torch.tensor([[p + cy * wp * n_planes + cx * n_planes for cy in (0, 1) for cx in (0, 1)]
                         for p in range(n_planes)], device=dev, dtype=idx_dtype)  # (3, 4): plane + corner
    rows = base.unsqueeze(-1) + offs  # (N, M, 3, 4)
    return rows.view(n * m, -1), wts.view(n * m, -1)


def sample_triplane_mean(planes: torch.Tensor, points: torch.Tensor, box_warp: float,
                         table: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the planes of ``sample_triplane``: planes (N, 3, C, H, W), points (N, M, 3) -> (N, M, C).

    ``table`` may pass ``triplane_table(planes)`` precomputed (the renderer reuses it across passes and chunks).
    """
    n, n_planes, c, h, w = planes.shape
    m = points.shape[1]
    if planes.device.type != "cpu" or h != w or n_planes != 3 or PLANE_AXES != ((0, 1), (0, 2), (2, 0)):
        return sample_triplane(planes, points, box_warp).mean(1)
    if table is None:
        table = triplane_table(planes)
    rows, wts = _bilinear_taps(planes.shape, points, box_warp, planes.dtype)
    return F.embedding_bag(rows, table, per_sample_weights=wts, mode="sum").view(n, m, c)
