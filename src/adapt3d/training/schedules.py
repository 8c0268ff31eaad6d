"""EMA generator and the per-step schedules of EG3D training (neural rendering resolution, blur).

- EMA (StyleGAN2/EG3D): ``ema_nimg = ema_kimg * 1000`` (capped at ``cur_nimg * ema_rampup`` when a ramp-up is
  given), ``beta = 0.5 ** (batch / ema_nimg)``, and after every step ``p_ema = p + beta * (p_ema - p)``; buffers are
  copied. DATID-3D fine-tuning uses ``ema_kimg = batch * 10 / 32`` and no ramp-up.
- Neural rendering resolution: ``rint(initial * (1 - a) + final * a)`` with ``a = min(cur_nimg / (fade_kimg *
  1000), 1)``; constant ``initial`` when no final value is set (EG3D ``training/loss.py``, ``np.rint``: halves round
  to even, as Python's ``round``). DATID-3D fine-tunes with EG3D's ``train.py`` defaults ``initial = 64``,
  ``fade_kimg = 1000`` and passes ``final = 128``; its ``cur_nimg`` starts at 0 when it resumes an EG3D model, so a
  200-kimg run renders at 64 to 77 px (:func:`resolve_rendering_schedule`, mode 'datid3d').
- Discriminator blur: ``sigma = init_sigma * max(1 - cur_nimg / (fade_kimg * 1000), 0)`` (0 when fade is 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["ema_beta", "update_ema", "neural_rendering_resolution_at", "blur_sigma_at", "RenderingSchedule",
           "resolve_rendering_schedule", "uses_official_weights", "DATID3D_NEURAL_RENDERING"]

DATID3D_NEURAL_RENDERING = (64, 128)  # EG3D train.py --neural_rendering_resolution_initial default, DATID-3D's final


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


@dataclass(frozen=True)
class RenderingSchedule:
    """A resolved neural rendering resolution schedule: ``mode`` 'datid3d' or 'fixed', resolutions in px."""

    mode: str
    initial: int
    final: int | None
    fade_kimg: float

    def at(self, cur_nimg: int) -> int:
        """Resolution of the step that starts at ``cur_nimg`` images."""
        return neural_rendering_resolution_at(self.initial, self.final, self.fade_kimg, cur_nimg)

    def to_dict(self) -> dict:
        return asdict(self)


def uses_official_weights(G, from_checkpoint: bool) -> bool:
    """True for a 512 px FFHQ/AFHQ-type EG3D generator loaded from a checkpoint (not a built-in preset): the
    models DATID-3D fine-tunes."""
    from adapt3d.models.known_models import model_family
    return bool(from_checkpoint) and int(G.img_resolution) == 512 and model_family(G.rendering) in ("ffhq", "cat")


def resolve_rendering_schedule(mode: str, initial: int | None, final: int | None, fade_kimg: float,
                               generator_resolution: int, official: bool) -> RenderingSchedule:
    """The schedule a run uses: 'auto' is 'datid3d' for official weights, 'fixed' otherwise; explicit initial/final
    values override the mode's (datid3d: 64 -> 128; fixed: the generator's resolution, constant)."""
    if mode not in ("auto", "datid3d", "fixed"):
        raise ValueError(f"--neural-rendering-schedule: expected auto, datid3d or fixed, got {mode!r}")
    resolved = ("datid3d" if official else "fixed") if mode == "auto" else mode
    if resolved == "datid3d":
        start, end = DATID3D_NEURAL_RENDERING
    else:
        start, end = int(generator_resolution), None
    return RenderingSchedule(resolved, int(initial) if initial is not None else start,
                             int(final) if final is not None else end, float(fade_kimg))


def blur_sigma_at(init_sigma: float, fade_kimg: float, cur_nimg: int) -> float:
    """Std (pixels) of the blur applied to the discriminator's inputs."""
    if fade_kimg <= 0 or init_sigma <= 0:
        return 0.0
    return init_sigma * max(1.0 - cur_nimg / (fade_kimg * 1000), 0.0)
