"""Read a user's photo into a generator-sized target image.

What happens to an input file, in order:

1. decode with Pillow (PNG, JPEG, WebP, BMP, TIFF, ... anything Pillow reads) and apply the EXIF orientation;
2. colours: RGB is kept; greyscale (L, I;16, I, F) is replicated to three channels (16-bit and float images are
   scaled by their own maximum: 65535 for I;16, the image maximum for I/F); palette images are expanded; images
   with transparency (RGBA, LA, PA, palette + transparency) are alpha-composited over ``background``
   (white by default; EG3D's FFHQ crops have real backgrounds, so a cut-out subject is better on a plain colour
   than on black transparency noise); CMYK / YCbCr / LAB are converted to RGB by Pillow;
3. geometry: the largest centred square is cropped (the longer side loses ``(long - short) / 2`` pixels at each
   end), then resized to ``resolution`` x ``resolution`` with Lanczos filtering (antialiased when shrinking).
   With ``align`` (``adapt3d invert``'s default) the face is found instead and cropped like EG3D's FFHQ images
   (rotation, scale and centre from the eyes and mouth, :mod:`adapt3d.inversion.face_align`); without it nothing is
   aligned: a face must already be roughly centred and framed like the generator's training images;
4. values: uint8 -> float ``x / 127.5 - 1`` in [-1, 1], layout (1, 3, R, R), the generator's image convention.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from adapt3d.inversion.face_align import AlignedFace

__all__ = ["ImageReadError", "read_image", "center_crop_resize", "load_target_image", "TargetImage", "prepare_target",
           "BACKGROUNDS"]

BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}


class ImageReadError(ValueError):
    """The input file is missing, not an image, truncated or in a format Pillow cannot decode."""


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W, 3)."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1e-12)
        grey = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return np.asarray(Image.alpha_composite(canvas, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))  # L, 1, RGB, CMYK, YCbCr, LAB, HSV


def read_image(path: str | os.PathLike, background: str | tuple[int, int, int] = "white",
               arg: str = "image") -> np.ndarray:
    """Decode ``path`` into uint8 RGB (H, W, 3) (steps 1-2 of the module docstring).

    Raises :class:`ImageReadError` naming ``arg`` and the file for a missing, unreadable or undecodable file.
    """
    path = Path(path)
    bg = BACKGROUNDS.get(background) if isinstance(background, str) else tuple(int(v) for v in background)
    if bg is None or len(bg) != 3:
        raise ValueError(f"background: expected one of {sorted(BACKGROUNDS)} or an (r, g, b) triple, got "
                         f"{background!r}")
    if not path.exists():
        raise ImageReadError(f"{arg}: {path} does not exist")
    if not path.is_file():
        raise ImageReadError(f"{arg}: {path} is not a file")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            array = _to_rgb(img, bg)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{arg}: cannot read {path} as an image ({type(e).__name__}: {e}); expected a PNG, "
                             "JPEG, WebP, BMP or TIFF file") from e
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageReadError(f"{arg}: {path} decoded to an empty image of shape {array.shape}")
    return np.ascontiguousarray(array)


def center_crop_resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (H, W, 3) -> the centred largest square, Lanczos-resized to (resolution, resolution, 3)."""
    if not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution: expected a positive integer, got {resolution!r}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top:top + side, left:left + side]
    if side != resolution:
        square = np.asarray(Image.fromarray(square).resize((resolution, resolution), Image.LANCZOS))
    return np.array(square, dtype=np.uint8, copy=True)  # writable, contiguous


def load_target_image(path: str | os.PathLike, resolution: int, background: str = "white",
                      arg: str = "image") -> tuple[torch.Tensor, np.ndarray, tuple[int, int]]:
    """Read, crop and resize ``path`` for a generator of ``resolution`` px.

    Returns (target (1, 3, R, R) float in [-1, 1], the same as uint8 (R, R, 3), the original (H, W)).
    """
    t = prepare_target(path, resolution, background=background, arg=arg)
    return t.target, t.image, t.original_hw


@dataclass
class TargetImage:
    """A photo prepared for inversion: ``target`` (1, 3, R, R) in [-1, 1], the same as uint8 ``image`` (R, R, 3), the
    photo's original (H, W), and the face alignment (None for the centred square crop)."""

    target: torch.Tensor
    image: np.ndarray
    original_hw: tuple[int, int]
    alignment: "AlignedFace | None" = None


def prepare_target(path: str | os.PathLike, resolution: int, *, background: str = "white", align: bool = False,
                   crop: str = "eg3d", arg: str = "image") -> TargetImage:
    """Read ``path`` and crop it for a generator of ``resolution`` px: the aligned face (``align``; raises
    :class:`~adapt3d.inversion.face_align.NoFaceError` naming ``arg`` and the file when there is none) or the
    centred square."""
    array = read_image(path, background=background, arg=arg)
    alignment = None
    if align:
        from adapt3d.inversion.face_align import align_face
        alignment = align_face(array, resolution, crop, arg=arg, name=str(path))  # type: ignore[arg-type]
        square = alignment.image
    else:
        square = center_crop_resize(array, resolution)
    target = torch.from_numpy(square).permute(2, 0, 1)[None].float() / 127.5 - 1  # (1, 3, R, R)
    return TargetImage(target, square, (int(array.shape[0]), int(array.shape[1])), alignment)
