"""Camera rays for a pinhole camera given as EG3D's cam2world matrix and normalised intrinsics.

Pixel (row i, column j) of an R x R image has normalised coordinates u = (j + 0.5) / R, v = (i + 0.5) / R; ray
index m = i * R + j (row-major). Conventions are those of ``adapt3d.cameras`` (OpenCV camera frame).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pixel_grid(resolution: int, device: torch.device | None = None) -> torch.Tensor:
    """Normalised (u, v) of every pixel centre, row-major.  # (R*R, 2)"""
    t = (torch.arange(resolution, dtype=torch.float32, device=device) + 0.5) / resolution
    v, u = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def sample_rays(cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ray origins and unit directions in world space.

    cam2world: (B, 4, 4); intrinsics: (B, 3, 3) normalised by image size (fx/W, fy/H, cx/W, cy/H, skew).
    Returns origins (B, R*R, 3) and directions (B, R*R, 3).
    """
    if cam2world.ndim != 3 or cam2world.shape[1:] != (4, 4):
        raise ValueError(f"cam2world must have shape (B, 4, 4), got {tuple(cam2world.shape)}")
    if intrinsics.ndim != 3 or intrinsics.shape[1:] != (3, 3):
        raise ValueError(f"intrinsics must have shape (B, 3, 3), got {tuple(intrinsics.shape)}")
    b = cam2world.shape[0]
    fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]  # (B, 1)
    cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
    uv = pixel_grid(resolution, cam2world.device)  # (M, 2)
    u, v = uv[None, :, 0], uv[None, :, 1]  # (1, M)
    x_cam = (u - cx + cy * sk / fy - sk * v / fy) / fx  # (B, M) at depth z = 1
    y_cam = ((v - cy) / fy).expand_as(x_cam)
    ones = torch.ones_like(x_cam)
    points_cam = torch.stack([x_cam, y_cam, ones, ones], dim=-1)  # (B, M, 4)
    points_world = torch.bmm(cam2world, points_cam.transpose(1, 2)).transpose(1, 2)[..., :3]  # (B, M, 3)
    origins = cam2world[:, None, :3, 3]  # (B, 1, 3)
    directions = F.normalize(points_world - origins, dim=2)
    return origins.expand(b, directions.shape[1], 3), directions


class RaySampler(nn.Module):
    """Module wrapper of ``sample_rays`` (EG3D's ``ray_sampler`` child; it holds no tensors)."""

    def forward(self, cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int):
        return sample_rays(cam2world, intrinsics, resolution)


def ray_box_limits(origins: torch.Tensor, directions: torch.Tensor, box_side: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit depths of rays through the axis-aligned cube of side ``box_side`` centred at the origin.

    origins, directions: (B, M, 3). Returns t_start, t_end: (B, M, 1); rays that miss get t_end <= t_start.
    """
    half = box_side / 2
    inv = 1.0 / directions
    t0 = (-half - origins) * inv
    t1 = (half - origins) * inv
    t_near = torch.minimum(t0, t1).nan_to_num(float("-inf")).amax(dim=-1, keepdim=True)
    t_far = torch.maximum(t0, t1).nan_to_num(float("inf")).amin(dim=-1, keepdim=True)
    return t_near, t_far
