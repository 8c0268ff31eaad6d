"""The generator's own depth and mask, turned into the depth inputs that depth-conditioned diffusion models expect.

adapt3d renders the exact depth (distance along the unit ray, world units) and accumulated opacity (the foreground
mask) of every pixel; the depth-conditioned Stable Diffusion models were trained on *estimated* relative depth from
MiDaS / DPT (inverse depth: near = large). Both conversions below start from the generator's disparity ``1 / depth``
normalised over the foreground (pixels with mask >= ``mask_threshold``)::

    disp = 1 / max(depth, eps)
    t    = (disp - min_fg disp) / (max_fg disp - min_fg disp)       clipped to [0, 1]; background t = 0 (farthest)

- :func:`depth2img_depth_map`: SD 2 depth (``StableDiffusionDepth2ImgPipeline``) conditions its UNet on the depth
  map resized to the latent size and scaled per image to [-1, 1] from its min/max (diffusers' ``prepare_depth_map``;
  near = +1). Here: ``2 t - 1`` at the latent size (``t`` area-averaged when shrinking, bilinear when enlarging).
  A flat foreground (no depth range) gives t = 1 on the foreground, 0 on the background; no foreground at all gives
  0 everywhere (diffusers' own min/max scaling would divide by zero there).
- :func:`controlnet_depth_image`: the SD 1.5 / SDXL depth ControlNets take a MiDaS-like image in [0, 1] (near =
  bright), 3 identical channels, at the generation size: ``t`` resized and repeated.

The normalisation over the foreground (not the whole image) matters: EG3D's background is rendered at the far end of
the ray range, and including it would squeeze the face's depth range into a few grey levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["normalized_disparity", "depth2img_depth_map", "controlnet_depth_image", "check_depth_inputs"]


def check_depth_inputs(depth: torch.Tensor, mask: torch.Tensor | None, batch: int | None = None) -> None:
    """Raise ValueError unless depth is (B, 1, H, W) (and mask None or the same shape)."""
    if not isinstance(depth, torch.Tensor) or depth.ndim != 4 or depth.shape[1] != 1:
        shape = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__
        raise ValueError(f"depth: expected a (B, 1, H, W) tensor of ray distances, got {shape}")
    if batch is not None and depth.shape[0] != batch:
        raise ValueError(f"depth: {depth.shape[0]} depth maps for {batch} images; give one per image")
    if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(depth.shape)):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected {tuple(depth.shape)} like depth, got {shape}")


def normalized_disparity(depth: torch.Tensor, mask: torch.Tensor | None = None, mask_threshold: float = 0.5,
                         eps: float = 1e-6) -> torch.Tensor:
    """Disparity ``1 / depth`` scaled to [0, 1] over the foreground, background 0 (see the module docstring).

    depth (B, 1, H, W) in world units (> 0); mask (B, 1, H, W) accumulated opacity in [0, 1] (None: all foreground).
    Returns (B, 1, H, W) float32 in [0, 1], 1 = nearest foreground point.
    """
    check_depth_inputs(depth, mask)
    disp = 1.0 / depth.detach().float().clamp_min(eps)  # (B, 1, H, W)
    fg = torch.ones_like(disp, dtype=torch.bool) if mask is None else mask.detach().float() >= mask_threshold
    big = torch.finfo(disp.dtype).max
    lo = torch.where(fg, disp, torch.full_like(disp, big)).amin(dim=(1, 2, 3), keepdim=True)
    hi = torch.where(fg, disp, torch.full_like(disp, -big)).amax(dim=(1, 2, 3), keepdim=True)
    span = hi - lo
    flat = span <= eps  # no range (or no foreground: lo = big > hi)
    t = ((disp - lo) / torch.where(flat, torch.ones_like(span), span)).clamp(0, 1)
    t = torch.where(flat, torch.ones_like(t), t)  # flat foreground: all "near"
    return torch.where(fg, t, torch.zeros_like(t))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Area averaging when shrinking (a 2x2 block -> its mean), bilinear when enlarging; values stay in [0, 1]."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    if size < x.shape[-1]:
        return F.interpolate(x, size=(size, size), mode="area").clamp(0, 1)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def depth2img_depth_map(depth: torch.Tensor, mask: torch.Tensor | None, latent_size: int,
                        mask_threshold: float = 0.5) -> torch.Tensor:
    """The depth channel an SD 2 depth UNet sees: (B, 1, latent_size, latent_size) in [-1, 1], near = +1."""
    return 2.0 * _resize(normalized_disparity(depth, mask, mask_threshold), latent_size) - 1.0


def controlnet_depth_image(depth: torch.Tensor, mask: torch.Tensor | None, size: int,
                           mask_threshold: float = 0.5) -> torch.Tensor:
    """A depth ControlNet's control image: (B, 3, size, size) in [0, 1], near = bright (MiDaS-like)."""
    return _resize(normalized_disparity(depth, mask, mask_threshold), size).expand(-1, 3, -1, -1).contiguous()
