"""Tri-plane feature lookup.

Three axis-aligned feature planes span the cube [-box_warp/2, box_warp/2]^3. A point q = p * 2 / box_warp is
projected to plane 0 as (x, y), to plane 1 as (x, z) and to plane 2 as (z, x) (EG3D's layout: its third plane is a
cyclic permutation, not (y, z)), then bilinearly sampled (align_corners=False, zero outside).
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
