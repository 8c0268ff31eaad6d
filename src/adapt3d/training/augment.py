"""Discriminator augmentation: x-flip with camera mirroring, translation, colour; ADA-style adaptive probability.

Every image the discriminator sees (real and generated, in every phase) passes through the same random
transformations (Karras et al. 2020, "ADA"); as long as the probability ``p`` stays below about 0.8 the
augmentations do not leak into the generator. The dual discriminator's two inputs (``image`` (N, 3, R, R) and
``image_raw`` (N, 3, r, r)) get the *same* transformation per sample, each at its own resolution.

Operations (each applied to a sample with probability ``p``, independently):

- ``xflip``: mirror left-right, and mirror the camera label across x = 0 (:func:`adapt3d.cameras.mirror_label`),
  so a flipped real image with its mirrored camera is itself a valid real sample (no leak at any ``p``);
- ``xint``: translate by an integer number of pixels of the full image, up to ``xint_max`` of the size on each
  axis, with reflection padding (ADA's ``xint``); the raw image moves by the same fraction of its size;
- ``color``: brightness ``x + b``, ``b ~ N(0, 0.2)``; contrast ``x * 2^N(0, 0.5)``; saturation
  ``luma + (x - luma) * 2^N(0, 1)`` with ``luma`` the channel mean (ADA's defaults, on [-1, 1] images).

Adaptive ``p`` (ADA): the loop accumulates ``sign(D(real))``; every ``interval`` steps ``r_t = mean sign`` and
``p += sign(r_t - target) * batch * interval / (ada_kimg * 1000)``, clamped to [0, 1].
Every operation is differentiable w.r.t. the images, so R1 can be taken through the augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from adapt3d.cameras import mirror_label

__all__ = ["AUGMENT_OPS", "augment_pair", "AdaptiveAugment", "blur_images"]

AUGMENT_OPS = ("xflip", "xint", "color")


def _translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift images (n, C, H, W) by ``shift`` (n, 2) in fractions of the size (x, y), reflection padding."""
    n, _, h, w = x.shape
    ys = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None] - 2 * shift.to(x)[:, None, None, :]  # (n, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _color(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
           saturation: torch.Tensor) -> torch.Tensor:
    """Per-sample colour transform of (n, 3, H, W) images in [-1, 1]; parameters (n,)."""
    x = x + brightness[:, None, None, None]
    x = x * contrast[:, None, None, None]
    luma = x.mean(1, keepdim=True)
    return luma + (x - luma) * saturation[:, None, None, None]


def augment_pair(image: torch.Tensor, image_raw: torch.Tensor, labels: torch.Tensor, p: float,
                 ops: Sequence[str] = AUGMENT_OPS, xint_max: float = 0.125,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a dual-discriminator input; returns new ``(image, image_raw, labels)``.

    Args:
        image: (N, 3, R, R) in [-1, 1]; image_raw: (N, 3, r, r); labels: (N, 25) EG3D cameras.
        p: probability of each operation per sample, in [0, 1]. ``p == 0`` returns the inputs unchanged.
        ops: subset of ``AUGMENT_OPS``.
        xint_max: largest translation, as a fraction of the image size.
        generator: RNG for the random draws (CPU); the global RNG when None.
    """
    unknown = sorted(set(ops) - set(AUGMENT_OPS))
    if unknown:
        raise ValueError(f"augment ops {unknown} are unknown; choose from {AUGMENT_OPS}")
    if not 0 <= p <= 1:
        raise ValueError(f"augment p must be in [0, 1], got {p}")
    if p == 0 or not ops:
        return image, image_raw, labels
    n, res = image.shape[0], image.shape[-1]
    dev = image.device

    def draw(shape) -> torch.Tensor:  # uniform draws, always consumed so the stream does not depend on p
        return torch.rand(shape, generator=generator).to(dev)

    def normal(shape) -> torch.Tensor:
        return torch.randn(shape, generator=generator).to(dev)

    if "xflip" in ops:
        m = draw(n) < p
        if m.any():
            image = torch.where(m[:, None, None, None], image.flip(-1), image)
            image_raw = torch.where(m[:, None, None, None], image_raw.flip(-1), image_raw)
            labels = torch.where(m[:, None], mirror_label(labels), labels)
    if "xint" in ops:
        m = draw(n) < p
        pixels = torch.round((draw((n, 2)) * 2 - 1) * xint_max * res)  # (n, 2) whole pixels of the image
        idx = m.nonzero()[:, 0]
        if len(idx):
            shift = pixels[idx] / res
            image = image.index_put((idx,), _translate(image[idx], shift))
            image_raw = image_raw.index_put((idx,), _translate(image_raw[idx], shift))
    if "color" in ops:
        ones = torch.ones(n, device=dev)
        b = torch.where(draw(n) < p, normal(n) * 0.2, 0 * ones)
        c = torch.where(draw(n) < p, torch.exp2(normal(n) * 0.5), ones)
        s = torch.where(draw(n) < p, torch.exp2(normal(n) * 1.0), ones)
        image = _color(image, b, c, s)
        image_raw = _color(image_raw, b, c, s)
    return image, image_raw, labels


def blur_images(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (N, C, H, W) with std ``sigma`` pixels (kernel radius 3 sigma, reflect padding).

    EG3D blurs the discriminator's inputs early in training from scratch (``blur_sigma`` fading to 0); it is off
    by default for fine-tuning.
    """
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1)
    x = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad > 0 else x
    if pad < radius:
        x = F.pad(x, (radius - pad,) * 4, mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@dataclass
class AdaptiveAugment:
    """Augmentation probability and its ADA controller.

    ``mode``: 'ada' (adaptive ``p``, starting at ``p``), 'fixed' (constant ``p``) or 'none'. ``target`` is the
    wanted ``E[sign(D(real))]``; ``ada_kimg`` how many kimg it takes ``p`` to move from 0 to 1; ``interval`` how
    many steps between adjustments. ``state_dict()`` holds plain floats for checkpoints.
    """

    mode: Literal["ada", "fixed", "none"] = "ada"
    p: float = 0.0
    ops: tuple[str, ...] = AUGMENT_OPS
    target: float = 0.6
    ada_kimg: float = 100.0
    interval: int = 4
    batch_size: int = 1
    sign_sum: float = 0.0
    sign_count: float = 0.0

    def __post_init__(self):
        if self.mode not in ("ada", "fixed", "none"):
            raise ValueError(f"--augment must be 'ada', 'fixed' or 'none', got {self.mode!r}")
        if not 0 <= self.p <= 1:
            raise ValueError(f"--augment-p must be in [0, 1], got {self.p}")
        if self.mode == "none":
            self.p = 0.0
        self.ops = tuple(self.ops)

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.ops)

    def __call__(self, image, image_raw, labels, generator=None):
        if not self.active:
            return image, image_raw, labels
        return augment_pair(image, image_raw, labels, self.p, self.ops, generator=generator)

    def record(self, sign_sum: float, count: float) -> None:
        """Add ``sum(sign(D(real)))`` over ``count`` real images (already summed over processes)."""
        if self.mode == "ada":
            self.sign_sum += float(sign_sum)
            self.sign_count += float(count)

    def adjust(self, step: int) -> None:
        """After step ``step`` (1-based): every ``interval`` steps update ``p`` from the recorded signs."""
        if self.mode != "ada" or step % self.interval != 0:
            return
        if self.sign_count > 0:
            rt = self.sign_sum / self.sign_count
            delta = math.copysign(1.0, rt - self.target) if rt != self.target else 0.0
            self.p = min(max(self.p + delta * self.batch_size * self.interval / (self.ada_kimg * 1000), 0.0), 1.0)
        self.sign_sum, self.sign_count = 0.0, 0.0

    def state_dict(self) -> dict:
        return {"p": float(self.p), "sign_sum": float(self.sign_sum), "sign_count": float(self.sign_count)}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self.sign_sum = float(state["sign_sum"])
        self.sign_count = float(state["sign_count"])
