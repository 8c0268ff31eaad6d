"""Discriminator augmentation (ADA, Karras et al. 2020) with camera labels kept consistent; the adaptive probability.

Every image the discriminator sees (real and generated, in every phase) passes through the same random
transformations; as long as the probability ``p`` stays below about 0.8 they do not leak into the generator. The
dual discriminator's two inputs (``image`` (N, 3, R, R) and ``image_raw`` (N, 3, r, r)) get the *same*
transformation per sample, each at its own resolution (EG3D resizes ``image_raw`` to R, augments the 6-channel
stack and resizes back).

Operations: EG3D's ADA pipeline 'bgc' (``training/augment.py``: blit, geometric, colour), each applied to a sample
with probability ``p`` and EG3D's parameter distributions, in EG3D's order (``--augment-ops bgc`` selects all 12):

- ``xflip``: mirror left-right (probability p; EG3D flips with p/2) and mirror the camera across x = 0
  (:func:`adapt3d.cameras.mirror_label`), so the pair is itself a valid real sample;
- geometric, composed into one affine map of the image plane per sample: ``rotate90`` (k * 90 degrees, k uniform in
  0..3), ``xint`` (whole-pixel translation, uniform up to ``xint_max`` of the size), ``scale`` (isotropic,
  2^N(0, 0.2)), ``rotate`` (uniform angle, before and after ``aniso``, each with probability 1 - sqrt(1 - p)),
  ``aniso`` (2^N(0, 0.2) along x, its inverse along y), ``xfrac`` (translation N(0, 0.125) of the size);
- colour, one 4x4 matrix per sample applied to RGB in [-1, 1]: ``brightness`` (+N(0, 0.2)), ``contrast``
  (x 2^N(0, 0.5)), ``lumaflip`` (reflect along the grey axis, k in {0, 1}), ``hue`` (rotation about the grey axis,
  uniform angle), ``saturation`` (chroma x 2^N(0, 1)); ``color`` = brightness, contrast, saturation.

Camera labels (the discriminator is conditioned on the camera): EG3D leaves them unchanged under its geometric ops,
so an augmented real image comes with a camera that did not take it. Here every geometric op moves the camera with
the image (:func:`adapt3d.cameras.warp_label`): a rotation is a roll about the optical axis, a scaling a change of
focal length, a translation one of the principal point, an anisotropic scaling (between rotations) fx, fy and skew.
Every pixel of the augmented image then carries exactly the ray that the new label gives it, except in the border
that the reflection padding fills. Resampling: maps that send pixel centres to pixel centres (rotate90, xint, at
the resolution at hand) are exact gathers; others use EG3D's recipe (reflect padding, 2x upsampling with the
sym6 wavelet low-pass, bilinear sampling, 2x downsampling), written with :mod:`adapt3d.models.ops`.

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

from adapt3d.cameras import mirror_label, warp_label
from adapt3d.models import ops as fir

__all__ = ["AUGMENT_OPS", "GEOMETRIC_OPS", "COLOR_OPS", "OP_GROUPS", "expand_ops", "augment_pair",
           "AdaptiveAugment", "blur_images", "warp_images", "color_matrix"]

GEOMETRIC_OPS = ("rotate90", "xint", "scale", "rotate", "aniso", "xfrac")
COLOR_OPS = ("brightness", "contrast", "lumaflip", "hue", "saturation")
AUGMENT_OPS = ("xflip",) + GEOMETRIC_OPS + COLOR_OPS  # EG3D's 'bgc', in its order
OP_GROUPS = {"bgc": AUGMENT_OPS, "color": ("brightness", "contrast", "saturation")}
DEFAULT_OPS = ("xflip", "xint", "color")

# EG3D's AugmentPipe defaults.
SCALE_STD, ROTATE_MAX, ANISO_STD, XFRAC_STD = 0.2, 1.0, 0.2, 0.125
BRIGHTNESS_STD, CONTRAST_STD, HUE_MAX, SATURATION_STD = 0.2, 0.5, 1.0, 1.0
# sym6 wavelet low-pass (Daubechies symlet, 12 taps), normalised to sum 1 like EG3D's setup_filter.
_SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
         0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252, -0.021060292512300564,
         0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)


def expand_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """Operation names with the groups ('bgc', 'color') expanded, in EG3D's order; ValueError on unknown names."""
    names: set[str] = set()
    for op in ops:
        if op in OP_GROUPS:
            names.update(OP_GROUPS[op])
        elif op in AUGMENT_OPS:
            names.add(op)
        else:
            raise ValueError(f"augment op {op!r} is unknown; choose from {', '.join(AUGMENT_OPS)} or the groups "
                             f"{', '.join(OP_GROUPS)}")
    return tuple(op for op in AUGMENT_OPS if op in names)


# -- geometry ---------------------------------------------------------------------------------------------------
def _rotation(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (n, 2, 2)


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices mirrored into [0, size) without repeating the edge (torch's 'reflect' padding)."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * size - 2
    i = torch.remainder(i, period)
    return torch.where(i >= size, period - i, i)


def _exact_gather(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Warp by maps that send pixel centres to pixel centres (``matrix`` (n, 2, 3), see :func:`warp_images`)."""
    n, c, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    p = torch.stack([(xs + 0.5) / w - 0.5, (ys + 0.5) / h - 0.5], -1).to(matrix)  # (h, w, 2) centred, normalised
    q = torch.einsum("nij,hwj->nhwi", matrix[:, :, :2], p) + matrix[:, None, None, :, 2]  # (n, h, w, 2)
    col = _reflect(torch.round((q[..., 0] + 0.5) * w - 0.5).long(), w)
    row = _reflect(torch.round((q[..., 1] + 0.5) * h - 0.5).long(), h)
    batch = torch.arange(n, device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[batch, row, col].permute(0, 3, 1, 2)  # (n, c, h, w)


def _filtered_warp(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """EG3D's resampling: reflect padding, 2x sym6 upsampling, bilinear sampling, 2x sym6 downsampling."""
    n, c, h, w = x.shape
    f = torch.tensor(_SYM6, dtype=x.dtype, device=x.device)
    f = f / f.sum()
    pad = f.numel() // 4
    # out -> in map in pixel units, centred at ((w - 1) / 2, (h - 1) / 2)
    size = torch.tensor([w, h], dtype=x.dtype, device=x.device)
    G = torch.zeros(n, 3, 3, dtype=x.dtype, device=x.device)
    G[:, :2, :2] = size[:, None] * matrix[:, :, :2].to(x.dtype) / size[None, :]  # diag(w, h) A diag(w, h)^-1
    G[:, :2, 2], G[:, 2, 2] = matrix[:, :, 2].to(x.dtype) * size, 1.0
    # reflect-pad enough for every output corner (plus the filter support)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=x.dtype, device=x.device)
    reach = (G @ corners.T)[:, :2, :].permute(1, 0, 2).flatten(1)  # (2, n * 4)
    margin = torch.cat([-reach, reach]).max(dim=1).values  # x0, y0, x1, y1
    margin = margin + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, dtype=x.dtype, device=x.device)
    margin = margin.clamp(min=0).minimum(torch.tensor([w - 1, h - 1] * 2, dtype=x.dtype, device=x.device))
    mx0, my0, mx1, my1 = (int(v) for v in margin.ceil())
    x = F.pad(x, [mx0, mx1, my0, my1], mode="reflect")
    shift = torch.eye(3, dtype=x.dtype, device=x.device)
    shift[0, 2], shift[1, 2] = (mx0 - mx1) / 2, (my0 - my1) / 2
    G = shift @ G
    x = fir.upsample2d(x, f, up=2)
    # pixel coordinates of the 2x image (centre of the top-left pixel moves by -0.5), then [-1, 1] for affine_grid
    s2, t05 = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=x.dtype, device=x.device)), torch.eye(3, dtype=x.dtype,
                                                                                                   device=x.device)
    t05[0, 2] = t05[1, 2] = -0.5
    G = t05 @ s2 @ G @ torch.linalg.inv(s2) @ torch.linalg.inv(t05)
    out_h, out_w = (h + pad * 2) * 2, (w + pad * 2) * 2
    to_unit_in = torch.diag(torch.tensor([2 / x.shape[3], 2 / x.shape[2], 1.0], dtype=x.dtype, device=x.device))
    to_unit_out = torch.diag(torch.tensor([2 / out_w, 2 / out_h, 1.0], dtype=x.dtype, device=x.device))
    G = to_unit_in @ G @ torch.linalg.inv(to_unit_out)
    grid = F.affine_grid(G[:, :2, :], [n, c, out_h, out_w], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return fir.downsample2d(x, f, down=2, padding=-pad * 2, flip_filter=True)


def warp_images(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``new(p) = old(A @ p + t)`` for images (n, C, H, W) and ``matrix = [A | t]`` (n, 2, 3) in centred normalised
    coordinates (pixel (i, j) at ``((j + 0.5) / W - 0.5, (i + 0.5) / H - 0.5)``), reflection outside the image.

    Samples whose map sends pixel centres to pixel centres (A a multiple of 90 degrees, t whole pixels) are
    gathered exactly; the others resampled as EG3D's ADA does. The same ``matrix`` works at any resolution.
    """
    n, _, h, w = x.shape
    A, t = matrix[:, :, :2], matrix[:, :, 2]
    exact = ((A - A.round()).abs().amax((1, 2)) < 1e-6) & (A.round().abs().sum(2) == 1).all(1)
    px = t * torch.tensor([w, h], dtype=t.dtype, device=t.device)
    exact &= ((px - px.round()).abs().amax(1) < 1e-4)
    out = torch.empty_like(x)
    for mask, fn in ((exact, _exact_gather), (~exact, _filtered_warp)):
        idx = mask.nonzero()[:, 0]
        if len(idx):
            out = out.index_put((idx,), fn(x[idx], matrix[idx]))
    return out


# -- colour -----------------------------------------------------------------------------------------------------
def color_matrix(brightness: torch.Tensor, contrast: torch.Tensor, lumaflip: torch.Tensor, hue: torch.Tensor,
                 saturation: torch.Tensor) -> torch.Tensor:
    """Per-sample 4x4 colour transforms (n, 4, 4) in EG3D's order: brightness (add), contrast (multiply), luma
    flip (0 or 1), hue (radians about the grey axis), saturation (chroma factor); all parameters (n,)."""
    n = brightness.shape[0]
    dt, dev = brightness.dtype, brightness.device
    eye = torch.eye(4, dtype=dt, device=dev).repeat(n, 1, 1)
    v = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=dt, device=dev) / math.sqrt(3)  # grey (luma) axis
    vv = torch.outer(v, v)
    C = eye.clone()
    C[:, :3, 3] = brightness[:, None]
    C = torch.diag_embed(torch.stack([contrast] * 3 + [torch.ones_like(contrast)], -1)) @ C
    C = (eye - 2 * vv * lumaflip[:, None, None]) @ C
    cos, sin = torch.cos(hue)[:, None, None], torch.sin(hue)[:, None, None]
    cross = torch.zeros(4, 4, dtype=dt, device=dev)  # [v]_x in the 3x3 block
    cross[0, 1], cross[0, 2], cross[1, 0], cross[1, 2], cross[2, 0], cross[2, 1] = -v[2], v[1], v[2], -v[0], -v[1], v[0]
    rot = eye.clone()
    rot[:, :3, :3] = cos * torch.eye(3, dtype=dt, device=dev) + sin * cross[:3, :3] + (1 - cos) * vv[:3, :3]
    C = rot @ C
    C = (vv + (eye - vv) * saturation[:, None, None]) @ C
    return C


def _apply_color(x: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    y = C[:, :3, :3].to(x) @ x.reshape(n, c, h * w) + C[:, :3, 3:].to(x)
    return y.reshape(n, c, h, w)


# -- the pipeline -----------------------------------------------------------------------------------------------
def augment_pair(image: torch.Tensor, image_raw: torch.Tensor, labels: torch.Tensor, p: float,
                 ops: Sequence[str] = DEFAULT_OPS, xint_max: float = 0.125,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment a dual-discriminator input; returns new ``(image, image_raw, labels)``.

    Args:
        image: (N, 3, R, R) in [-1, 1]; image_raw: (N, 3, r, r); labels: (N, 25) EG3D cameras.
        p: probability of each operation per sample, in [0, 1]. ``p == 0`` returns the inputs unchanged.
        ops: operation names and groups (see the module docstring), e.g. ``("bgc",)``.
        xint_max: largest whole-pixel translation, as a fraction of the image size.
        generator: RNG for the random draws (CPU); the global RNG when None. Every enabled operation consumes its
            draws whatever ``p`` is, so the stream does not depend on ``p``.
    """
    names = expand_ops(ops)
    if not 0 <= p <= 1:
        raise ValueError(f"augment p must be in [0, 1], got {p}")
    if p == 0 or not names:
        return image, image_raw, labels
    n, res = image.shape[0], image.shape[-1]
    dev = image.device

    def uniform(*shape) -> torch.Tensor:  # float32 draws (the stream of earlier versions), float64 maths
        return torch.rand(shape, generator=generator).double()

    def normal(*shape) -> torch.Tensor:
        return torch.randn(shape, generator=generator).double()

    def gate(prob: float = p) -> torch.Tensor:
        return uniform(n) < prob

    if "xflip" in names:
        m = gate().to(dev)
        if m.any():
            image = torch.where(m[:, None, None, None], image.flip(-1), image)
            image_raw = torch.where(m[:, None, None, None], image_raw.flip(-1), image_raw)
            labels = torch.where(m[:, None], mirror_label(labels), labels)

    T = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)  # new -> old pixel map, centred normalised coordinates

    def then(linear: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> None:
        nonlocal T
        step = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
        if linear is not None:
            step[:, :2, :2] = linear
        if shift is not None:
            step[:, :2, 2] = shift
        T = T @ step

    if "rotate90" in names:
        k = torch.floor(uniform(n) * 4)
        then(_rotation(torch.where(gate(), k, 0.0) * math.pi / 2))
    if "xint" in names:
        on = gate()
        t = torch.round((uniform(n, 2) * 2 - 1) * xint_max * res) / res  # whole pixels of the image
        then(shift=torch.where(on[:, None], -t, 0.0))
    if "scale" in names:
        s = torch.where(gate(), torch.exp2(normal(n) * SCALE_STD), 1.0)
        then(torch.diag_embed(torch.stack([1 / s, 1 / s], -1)))
    p_rot = 1 - math.sqrt(min(max(1 - p, 0.0), 1.0))  # P(pre or post rotation) = p
    if "rotate" in names:
        theta = (uniform(n) * 2 - 1) * math.pi * ROTATE_MAX
        then(_rotation(torch.where(gate(p_rot), theta, 0.0)))
    if "aniso" in names:
        s = torch.where(gate(), torch.exp2(normal(n) * ANISO_STD), 1.0)
        then(torch.diag_embed(torch.stack([1 / s, s], -1)))
    if "rotate" in names:
        theta = (uniform(n) * 2 - 1) * math.pi * ROTATE_MAX
        then(_rotation(torch.where(gate(p_rot), theta, 0.0)))
    if "xfrac" in names:
        on = gate()
        t = normal(n, 2) * XFRAC_STD
        then(shift=torch.where(on[:, None], -t, 0.0))

    moved = (T - torch.eye(3, dtype=torch.float64)).abs().amax((1, 2)) > 0
    idx = moved.nonzero()[:, 0].to(dev)
    if len(idx):
        M = T[moved][:, :2, :].to(dev)
        image = image.index_put((idx,), warp_images(image[idx], M.to(image.dtype)))
        image_raw = image_raw.index_put((idx,), warp_images(image_raw[idx], M.to(image_raw.dtype)))
        labels = labels.index_put((idx,), warp_label(labels[idx].double(), M).to(labels.dtype))

    if any(op in names for op in COLOR_OPS):
        zeros, ones = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
        b = torch.where(gate(), normal(n) * BRIGHTNESS_STD, 0.0) if "brightness" in names else zeros
        c = torch.where(gate(), torch.exp2(normal(n) * CONTRAST_STD), 1.0) if "contrast" in names else ones
        flip = torch.where(gate(), torch.floor(uniform(n) * 2), 0.0) if "lumaflip" in names else zeros
        hue = torch.where(gate(), (uniform(n) * 2 - 1) * math.pi * HUE_MAX, 0.0) if "hue" in names else zeros
        sat = torch.where(gate(), torch.exp2(normal(n) * SATURATION_STD), 1.0) if "saturation" in names else ones
        C = color_matrix(b, c, flip, hue, sat).to(dev)
        image, image_raw = _apply_color(image, C), _apply_color(image_raw, C)
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
    ops: tuple[str, ...] = DEFAULT_OPS
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
        self.ops = expand_ops(self.ops)

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
