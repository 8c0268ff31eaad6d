"""Volume rendering of samples along rays (EG3D's MipRayMarcher2 quadrature).

Colours, densities and depths are averaged over each pair of neighbouring samples (interval midpoints); the raw
density goes through softplus(sigma - 1); alpha = 1 - exp(-density * delta); transmittance is the cumulative
product of (1 - alpha + 1e-10); weights = alpha * transmittance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def composite(colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, white_background: bool = False,
              clamp_mode: str = "softplus", clamp_depth: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite samples along each ray.

    colors (N, M, S, C) in [0, 1]; densities (N, M, S, 1) raw; depths (N, M, S, 1) sorted along S.
    Returns features (N, M, C) rescaled to [-1, 1], depth (N, M, 1) (expected depth of the weights, NaN -> inf,
    then clamped to the range of all sample depths unless ``clamp_depth=False``), weights (N, M, S-1, 1).
    """
    if clamp_mode != "softplus":
        raise ValueError(f"clamp_mode must be 'softplus' (the only mode EG3D supports), got {clamp_mode!r}")
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
    alpha = 1 - torch.exp(-densities_mid * deltas)  # (N, M, S-1, 1)
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    weights = alpha * torch.cumprod(shifted, -2)[:, :, :-1]
    rgb = torch.sum(weights * colors_mid, -2)
    weight_total = weights.sum(2)
    depth = torch.sum(weights * depths_mid, -2) / weight_total
    depth = torch.nan_to_num(depth, float("inf"))
    if clamp_depth:
        depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
    if white_background:
        rgb = rgb + 1 - weight_total
    return rgb * 2 - 1, depth, weights


def composite_weights(densities: torch.Tensor, depths: torch.Tensor, clamp_mode: str = "softplus") -> torch.Tensor:
    """Only the interval weights (N, M, S-1, 1) of ``composite`` (same formula), for passes that need nothing else."""
    if clamp_mode != "softplus":
        raise ValueError(f"clamp_mode must be 'softplus' (the only mode EG3D supports), got {clamp_mode!r}")
    deltas = depths[:, :, 1:] - depths[:, :, :-1]
    densities_mid = F.softplus((densities[:, :, :-1] + densities[:, :, 1:]) / 2 - 1)
    alpha = 1 - torch.exp(-densities_mid * deltas)
    shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
    return alpha * torch.cumprod(shifted, -2)[:, :, :-1]


def composite_unsorted(colors: list[torch.Tensor], densities: torch.Tensor, depths: torch.Tensor,
                       white_background: bool = False,
                       clamp_mode: str = "softplus") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``composite`` of samples given in several unsorted groups, without sorting or concatenating the colours.

    colors: groups (N, M, S_g, C) whose samples are, in order, those of ``densities`` and ``depths`` (N, M, S, 1)
    (S = sum of S_g; depths need not be sorted). Since sum_s w_s (c_s + c_s+1) / 2 = sum_s c_s (w_s-1 + w_s) / 2,
    each sample's colour weight is computed in depth order, scattered back, and every group is reduced with one
    batched product. Returns features (N, M, C) in [-1, 1], depth (N, M, 1) (NaN -> inf, not clamped), weight
    sum (N, M, 1) and the sorted depths (N, M, S, 1). Equal to sort + ``composite`` to float32 rounding.
    """
    depths, order = torch.sort(depths, dim=-2)
    densities = torch.gather(densities, -2, order)
    weights = composite_weights(densities, depths, clamp_mode)[..., 0]  # (N, M, S-1), sorted intervals
    zero = weights.new_zeros(weights.shape[:-1] + (1,))
    per_sample = (torch.cat([zero, weights], -1) + torch.cat([weights, zero], -1)) / 2  # (N, M, S), sorted
    per_sample = torch.empty_like(per_sample).scatter_(-1, order[..., 0], per_sample)  # back to input order
    rgb = None
    start = 0
    for group in colors:
        part = torch.einsum("nms,nmsc->nmc", per_sample[..., start:start + group.shape[-2]], group)
        rgb = part if rgb is None else rgb.add_(part)
        start += group.shape[-2]
    weight_total = weights.sum(-1, keepdim=True)
    depths_mid = (depths[:, :, :-1, 0] + depths[:, :, 1:, 0]) / 2
    depth = (weights * depths_mid).sum(-1, keepdim=True) / weight_total
    depth = torch.nan_to_num(depth, float("inf"))
    if white_background:
        rgb = rgb + 1 - weight_total
    return rgb * 2 - 1, depth, weight_total, depths
