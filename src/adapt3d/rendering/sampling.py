"""Depth samples along rays: stratified coarse samples and importance samples from coarse weights.

Both have a stochastic mode (training: uniform jitter within each coarse interval, random importance quantiles,
drawn in the same order as EG3D so a seeded run matches it) and a deterministic mode (videos, meshes, inversion,
exact comparisons: no jitter, importance samples at evenly spaced quantiles u = linspace(0, 1, K)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def stratified_depths(n: int, m: int, ray_start: float | torch.Tensor, ray_end: float | torch.Tensor,
                      depth_resolution: int, stochastic: bool, disparity_space: bool = False,
                      device: torch.device | None = None) -> torch.Tensor:
    """Coarse depths (N, M, D, 1) between ``ray_start`` and ``ray_end`` (floats, or tensors (N, M, 1) per ray)."""
    if depth_resolution < 2:
        raise ValueError(f"depth_resolution must be >= 2, got {depth_resolution}")
    steps = torch.linspace(0, 1, depth_resolution, device=device).reshape(1, 1, depth_resolution, 1)
    if disparity_space:
        t = steps.repeat(n, m, 1, 1)
        if stochastic:
            t = t + torch.rand_like(t) / (depth_resolution - 1)
        return 1.0 / (1.0 / ray_start * (1.0 - t) + 1.0 / ray_end * t)
    if isinstance(ray_start, torch.Tensor):
        start, end = ray_start.unsqueeze(-2), ray_end.unsqueeze(-2)  # (N, M, 1, 1)
        depths = start + steps * (end - start)  # (N, M, D, 1)
        delta = (end - start) / (depth_resolution - 1)
    else:
        depths = torch.linspace(ray_start, ray_end, depth_resolution, device=device)
        depths = depths.reshape(1, 1, depth_resolution, 1).repeat(n, m, 1, 1)
        delta = (ray_end - ray_start) / (depth_resolution - 1)
    if stochastic:
        depths = depths + torch.rand_like(depths) * delta
    return depths


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, num_samples: int, stochastic: bool,
               eps: float = 1e-5) -> torch.Tensor:
    """Inverse-CDF samples of a piecewise-linear CDF.

    bins: (R, B) bin edges; weights: (R, W) with W <= B - 1 (EG3D passes fewer weights than bins; only the first
    W + 1 edges are reachable). Returns (R, num_samples) depths.
    """
    r, n_w = weights.shape
    weights = weights + eps
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # (R, W + 1)
    if stochastic:
        u = torch.rand(r, num_samples, device=bins.device)
    else:
        u = torch.linspace(0, 1, num_samples, device=bins.device).expand(r, num_samples).contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp_min(0)
    above = idx.clamp_max(n_w)
    both = torch.stack([below, above], -1).view(r, 2 * num_samples)
    cdf_g = torch.gather(cdf, 1, both).view(r, num_samples, 2)
    bins_g = torch.gather(bins, 1, both).view(r, num_samples, 2)
    denom = cdf_g[..., 1] - cdf_g[..., 0]
    denom = torch.where(denom < eps, torch.ones_like(denom), denom)
    return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])


@torch.no_grad()
def importance_depths(depths: torch.Tensor, weights: torch.Tensor, num_samples: int, stochastic: bool) -> torch.Tensor:
    """Importance depths (N, M, K, 1) from coarse depths (N, M, D, 1) and their interval weights (N, M, D-1, 1).

    The weights are smoothed as EG3D does (max-pool then average-pool, width 2, + 0.01) and the first and last are
    dropped; the bins are the midpoints of the coarse depths.
    """
    n, m, d, _ = depths.shape
    z = depths.reshape(n * m, d)
    w = weights.reshape(n * m, -1).unsqueeze(1).float()  # (R, 1, D-1)
    w = F.avg_pool1d(F.max_pool1d(w, 2, 1, padding=1), 2, 1).squeeze(1) + 0.01  # (R, D-1)
    mids = 0.5 * (z[:, :-1] + z[:, 1:])  # (R, D-1)
    samples = sample_pdf(mids, w[:, 1:-1], num_samples, stochastic)
    return samples.reshape(n, m, num_samples, 1)
