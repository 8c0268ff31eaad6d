"""EMA generator and the per-step schedules of EG3D training (neural rendering resolution, blur).

- EMA (StyleGAN2/EG3D): ``ema_nimg = ema_kimg * 1000`` (capped at ``cur_nimg * ema_rampup`` when a ramp-up is
  given), ``beta = 0.5 ** (batch / ema_nimg)``, and after every step ``p_ema = p + beta * (p_ema - p)``; buffers are
  copied. DATID-3D fine-tuning uses ``ema_kimg = batch * 10 / 32`` and no ramp-up.
- Neural rendering resolution: ``rint(initial * (1 - a) + final * a)`` with ``a = min(cur_nimg / (fade_kimg *
  1000), 1)``; constant ``initial`` when no final value is set.
- Discriminator blur: ``sigma = init_sigma * max(1 - cur_nimg / (fade_kimg * 1000), 0)`` (0 when fade is 0).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_beta", "update_ema", "neural_rendering_resolution_at", "blur_sigma_at"]


def ema_beta(batch_size: int, ema_kimg: float, cur_nimg: int, ema_rampup: float | None = None) -> float:
    """Decay of the EMA generator for one step of ``batch_size`` images."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """``p_ema <- p + beta * (p_ema - p)`` for every parameter; buffers copied from ``G``."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def neural_rendering_resolution_at(initial: int, final: int | None, fade_kimg: float, cur_nimg: int) -> int:
    """Neural rendering resolution for the step starting at ``cur_nimg`` images."""
    if final is None:
        return int(initial)
    alpha = 1.0 if fade_kimg <= 0 else min(cur_nimg / (fade_kimg * 1000), 1.0)
    return int(round(initial * (1 - alpha) + final * alpha))


def blur_sigma_at(init_sigma: float, fade_kimg: float, cur_nimg: int) -> float:
    """Std (pixels) of the blur applied to the discriminator's inputs."""
    if fade_kimg <= 0 or init_sigma <= 0:
        return 0.0
    return init_sigma * max(1.0 - cur_nimg / (fade_kimg * 1000), 0.0)
