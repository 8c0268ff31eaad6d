"""Reconstruction losses for inversion and pivotal tuning, and PSNR.

For a rendering x and the target y, both (B, 3, H, W) in [-1, 1]::

    lpips     LPIPS-VGG16 v0.1 (adapt3d.metrics.lpips) at min(H, 256) px, as EG3D's projector
    mse       mean((x - y)^2)
    clip      1 - cos(E(x), E(y)), E = CLIP image embedding (adapt3d.clip.CLIPScorer)
    loss      = sum of the chosen terms, each times its weight (mse_weight, clip_weight; LPIPS weight 1)

``make_reconstruction_loss('auto')`` uses LPIPS when its two weight files are present, and otherwise falls back to
MSE (plus the CLIP term when a CLIP model is available) with a note saying so: MSE alone reconstructs colours and
layout but gives blurrier detail than a perceptual loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["ReconstructionLoss", "make_reconstruction_loss", "psnr", "LOSS_KINDS"]

LossKind = Literal["auto", "lpips", "mse", "clip", "lpips+mse", "mse+clip"]
LOSS_KINDS = ("auto", "lpips", "mse", "clip", "lpips+mse", "mse+clip")


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB (B,) between images in [-1, 1] (both clamped to [-1, 1]; peak = 2, i.e. 255 levels)."""
    err = ((x.detach().float().clamp(-1, 1) - y.detach().float().clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / err.clamp_min(1e-12))


class ReconstructionLoss(nn.Module):
    """Weighted sum of LPIPS / MSE / CLIP-image distances; ``forward(x, y) -> (B,)``, y (B or 1, 3, H, W).
    Differentiable in x; the target's features are computed once and reused while y is the same tensor.

    Args:
        lpips: an :class:`adapt3d.metrics.lpips.LPIPS` (or None to leave the term out).
        mse_weight: weight of the pixel MSE term (0 = off).
        clip: an :class:`adapt3d.clip.CLIPScorer` for the CLIP-image term (or None).
        clip_weight: weight of the CLIP term.
    """

    def __init__(self, lpips: nn.Module | None = None, mse_weight: float = 0.0, clip=None, clip_weight: float = 0.0):
        super().__init__()
        if lpips is None and mse_weight <= 0 and (clip is None or clip_weight <= 0):
            raise ValueError("ReconstructionLoss: give at least one term (lpips, mse_weight > 0, or clip with "
                             "clip_weight > 0)")
        self.lpips = lpips
        self.mse_weight = float(mse_weight)
        self.clip = clip
        self.clip_weight = float(clip_weight) if clip is not None else 0.0
        self._target_key = None
        self._target_cache: dict = {}

    @property
    def terms(self) -> list[str]:
        out = []
        if self.lpips is not None:
            out.append("lpips")
        if self.mse_weight > 0:
            out.append("mse")
        if self.clip_weight > 0:
            out.append("clip")
        return out

    def describe(self) -> str:
        parts = []
        if self.lpips is not None:
            parts.append("lpips" + (" (random weights)" if getattr(self.lpips, "random_weights", False) else ""))
        if self.mse_weight > 0:
            parts.append(f"{self.mse_weight:g} * mse")
        if self.clip_weight > 0:
            parts.append(f"{self.clip_weight:g} * clip")
        return " + ".join(parts)

    def _target_features(self, y: torch.Tensor) -> dict:
        """Target features are computed once per target tensor (the target is fixed during an inversion)."""
        key = (y.data_ptr(), tuple(y.shape), y._version)
        if key != self._target_key:
            with torch.no_grad():
                self._target_cache = {
                    "lpips": self.lpips.features(y) if self.lpips is not None else None,
                    "clip": self.clip.encode_images(y) if self.clip_weight > 0 else None}
            self._target_key = key
        return self._target_cache

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != y.shape[1:] or y.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must have the same shape (or y a batch "
                             "of 1, compared with every x)")
        feats = self._target_features(y)
        total = x.new_zeros(x.shape[0])
        if self.lpips is not None:
            total = total + self.lpips.distance_from_features(self.lpips.features(x), feats["lpips"])
        if self.mse_weight > 0:
            total = total + self.mse_weight * (x - y).pow(2).flatten(1).mean(1)
        if self.clip_weight > 0:
            e = self.clip.encode_images(x)
            total = total + self.clip_weight * (1 - (e * feats["clip"].to(e.device)).sum(-1))
        return total


@dataclass
class LossChoice:
    loss: ReconstructionLoss
    kind: str
    notes: list[str]


def make_reconstruction_loss(kind: LossKind = "auto", *, resolution: int = 256, device: torch.device | str = "cpu",
                             lpips_vgg_weights: str | None = None, lpips_heads_weights: str | None = None,
                             clip_model: str | None = None, mse_weight: float = 1.0,
                             clip_weight: float = 0.25) -> LossChoice:
    """Build the loss ``kind`` (see the module docstring). ``resolution``: the image size LPIPS works at (images
    larger than 256 px are downsampled to 256, as EG3D's projector does). ``clip_model``: a CLIP name or folder for
    the clip terms (None = no CLIP; 'auto' fallback then uses MSE alone)."""
    from adapt3d.metrics.lpips import (LPIPS_HEADS_WEIGHTS, VGG16_WEIGHTS, LPIPSWeightsNotFoundError,
                                       known_weight_path, load_lpips)

    if kind not in LOSS_KINDS:
        raise ValueError(f"--loss: {kind!r} is not one of {', '.join(LOSS_KINDS)}")
    notes: list[str] = []
    lpips_res = min(int(resolution), 256)
    lpips = None
    if kind in ("auto", "lpips", "lpips+mse"):
        try:
            lpips = load_lpips(lpips_vgg_weights, lpips_heads_weights, resolution=lpips_res).to(device)
        except LPIPSWeightsNotFoundError:
            if kind != "auto":
                raise
            fallback = "mse+clip" if clip_model else "mse"
            notes.append(f"LPIPS weights not found ({known_weight_path(VGG16_WEIGHTS)}, "
                         f"{known_weight_path(LPIPS_HEADS_WEIGHTS)}): the inversion loss falls back to {fallback}, "
                         "which gives blurrier detail; give --lpips-vgg-weights and --lpips-heads-weights (see "
                         "adapt3d.metrics.lpips for the two public files) to use LPIPS")
            kind = fallback
        else:
            kind = "lpips" if kind == "auto" else kind
    clip = None
    if "clip" in kind:
        if not clip_model:
            raise ValueError(f"--loss {kind}: the CLIP term needs a CLIP model (--clip-model)")
        from adapt3d.clip.model import CLIPScorer
        clip = CLIPScorer.from_pretrained(clip_model, device=device)
    use_mse = kind in ("mse", "lpips+mse", "mse+clip")
    if use_mse and not (mse_weight > 0 and math.isfinite(mse_weight)):
        raise ValueError(f"--mse-weight: must be > 0 for --loss {kind}, got {mse_weight}")
    loss = ReconstructionLoss(lpips=lpips, mse_weight=mse_weight if use_mse else 0.0, clip=clip,
                              clip_weight=clip_weight if clip is not None else 0.0)
    return LossChoice(loss=loss, kind=kind, notes=notes)
