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
