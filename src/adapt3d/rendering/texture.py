"""UV textures for the mesh rasteriser: materials, mip pyramids and trilinear sampling with wrap-around.

Conventions (those of OBJ and of trimesh, which flips glTF's v on import): a UV coordinate ``(u, v)`` addresses the
texture image with ``u`` to the right and ``v`` up, ``(0, 0)`` at the bottom-left corner of the image, so texel
``(row i, column j)`` (row 0 at the top, as stored in PNG/JPEG) has its centre at ``u = (j + 0.5) / W``,
``v = 1 - (i + 0.5) / H``. Coordinates outside [0, 1] wrap around (glTF's default ``REPEAT``).

Filtering: bilinear between the four nearest texel centres, plus mip-mapping against aliasing: level ``l`` of the
pyramid is the texture box-filtered down by ``2**l`` (area interpolation), and a pixel whose footprint covers
``rho`` texels (the longer of its two screen-space UV derivatives, measured in texels) reads level
``log2(rho)``, blending the two nearest levels linearly (trilinear filtering, as OpenGL's
``GL_LINEAR_MIPMAP_LINEAR``). A magnified texture (``rho <= 1``) reads level 0 bilinearly.

Colours are used as stored (sRGB values in [0, 1]); shading multiplies them, as the rest of the rasteriser does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["MeshTextures", "build_mipmaps", "sample_bilinear_wrap", "sample_trilinear"]


@dataclass
class MeshTextures:
    """Per-face materials of a mesh: base colours and optional UV textures.

    ``uv`` (V, 2) per vertex (see the module docstring), ``face_material`` (F,) int64 index into the materials,
    ``base_colors`` (M, 3) in [0, 1] (glTF ``baseColorFactor`` / OBJ ``Kd``), ``images`` a list of M entries, each
    a (3, H, W) float tensor in [0, 1] or None (a material without a texture is its base colour). The albedo of a
    surface point is ``base_color * texture(uv)`` (times per-vertex colours when the mesh also has them).
    """

    uv: Tensor | None  # (V, 2)
    face_material: Tensor  # (F,) int64
    base_colors: Tensor  # (M, 3)
    images: list[Tensor | None] = field(default_factory=list)  # M x (3, H, W) or None
    mip: bool = True
    """Trilinear mip-mapping (True) or plain bilinear sampling of the full-resolution texture (False)."""
    _pyramids: dict[int, list[Tensor]] = field(default_factory=dict, repr=False)

    def pyramid(self, material: int) -> list[Tensor]:
        """The mip pyramid of material ``material``'s texture (built once, cached)."""
        if material not in self._pyramids:
            self._pyramids[material] = build_mipmaps(self.images[material])
        return self._pyramids[material]

    def check(self, num_vertices: int, num_faces: int) -> None:
        """Raise ValueError when the shapes do not fit a mesh with that many vertices and faces."""
        m = self.base_colors.shape[0] if self.base_colors.dim() == 2 else -1
        if self.base_colors.dim() != 2 or self.base_colors.shape[1] != 3:
            raise ValueError(f"textures.base_colors must be (M, 3), got {tuple(self.base_colors.shape)}")
        if len(self.images) != m:
            raise ValueError(f"textures.images must hold one entry (image or None) per material ({m}), got "
                             f"{len(self.images)}")
        if tuple(self.face_material.shape) != (num_faces,) or self.face_material.is_floating_point():
            raise ValueError(f"textures.face_material must be an integer tensor ({num_faces},), got "
                             f"{tuple(self.face_material.shape)}")
        if num_faces and (int(self.face_material.min()) < 0 or int(self.face_material.max()) >= m):
            raise ValueError(f"textures.face_material indexes materials outside [0, {m})")
        has_image = any(img is not None for img in self.images)
        if has_image and (self.uv is None or tuple(self.uv.shape) != (num_vertices, 2)):
            raise ValueError(f"textures.uv must be ({num_vertices}, 2) when a material has a texture, got "
                             f"{None if self.uv is None else tuple(self.uv.shape)}")
        for k, img in enumerate(self.images):
            if img is not None and (img.dim() != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 1):
                raise ValueError(f"textures.images[{k}] must be (3, H, W), got {tuple(img.shape)}")


def build_mipmaps(image: Tensor) -> list[Tensor]:
    """Mip pyramid of ``image`` (3, H, W): level 0 is the image, each next level halves both sides (area filter,
    sides rounded up, at least 1 texel) until 1 x 1."""
    levels = [image]
    while max(levels[-1].shape[1:]) > 1:
        h, w = levels[-1].shape[1:]
        size = (max(1, math.ceil(h / 2)), max(1, math.ceil(w / 2)))
        levels.append(F.interpolate(levels[-1][None], size=size, mode="area")[0])
    return levels


def sample_bilinear_wrap(image: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples (N, 3) of ``image`` (3, H, W) at ``uv`` (N, 2) (module conventions, wrap-around)."""
    _, h, w = image.shape
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    xa, xb = torch.remainder(x0, w), torch.remainder(x0 + 1, w)
    ya, yb = torch.remainder(y0, h), torch.remainder(y0 + 1, h)
    flat = image.reshape(3, -1).T  # (H*W, 3)
    c00, c01 = flat[ya * w + xa], flat[ya * w + xb]
    c10, c11 = flat[yb * w + xa], flat[yb * w + xb]
    return (c00 * (1 - fx) + c01 * fx) * (1 - fy) + (c10 * (1 - fx) + c11 * fx) * fy


def sample_trilinear(levels: list[Tensor], uv: Tensor, lod: Tensor) -> Tensor:
    """Trilinear samples (N, 3): bilinear in the two mip levels around ``lod`` (N,) (clamped to the pyramid),
    blended linearly. ``lod`` 0 reads the full-resolution texture."""
    lod = lod.clamp(0, len(levels) - 1)
    lo = torch.floor(lod).long()
    t = (lod - lo.to(lod.dtype))[:, None]
    out = torch.zeros(uv.shape[0], 3, dtype=uv.dtype, device=uv.device)
    for level in range(len(levels)):
        weight = torch.where(lo == level, 1 - t[:, 0], torch.zeros_like(t[:, 0])) + \
            torch.where(lo + 1 == level, t[:, 0], torch.zeros_like(t[:, 0]))
        sel = torch.nonzero(weight > 0).flatten()
        if sel.numel():
            out[sel] += weight[sel, None] * sample_bilinear_wrap(levels[level].to(uv.dtype), uv[sel])
    return out
