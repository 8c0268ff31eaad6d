"""Image export: tensor -> uint8 conversion, grids, depth maps, captions and contact sheets.

Conventions used throughout this module:

* generator images are float tensors in ``[-1, 1]`` laid out ``(B, C, H, W)`` (EG3D convention);
* "float images" in ``[0, 1]`` use the same layout with ``value_range=(0, 1)``;
* everything that is written to disk or composed into a grid is a ``uint8`` numpy array laid out
  ``(H, W, C)`` (one image) or ``(B, H, W, C)`` (a batch), values in ``[0, 255]``, ``C`` in ``{1, 3, 4}``.

All files are written atomically through :func:`adapt3d.utils.io.atomic_path`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from adapt3d.utils.io import atomic_path

__all__ = [
    "to_uint8",
    "make_grid",
    "save_image",
    "save_grid",
    "depth_to_image",
    "turbo_colormap",
    "label_images",
    "contact_sheet",
]

_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
Color = int | Sequence[int]


def to_uint8(images: torch.Tensor | np.ndarray, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Convert float images ``(B, C, H, W)`` or ``(C, H, W)`` to uint8 ``(B, H, W, C)`` or ``(H, W, C)``.

    ``value_range=(lo, hi)`` is the float range mapped onto ``[0, 255]``: ``(-1, 1)`` for generator outputs,
    ``(0, 1)`` for float images. The rounding follows EG3D's ``gen_samples.py`` exactly::

        u8 = trunc(clamp((x - lo) * 255 / (hi - lo) + 0.5, 0, 255))

    which for ``(-1, 1)`` is ``clamp(x * 127.5 + 128, 0, 255).to(uint8)``: -1 -> 0, 0 -> 128, 1 -> 255, values
    outside the range are clamped. NaN becomes 0. A uint8 input is only transposed. The batch dimension of the
    output mirrors the input (3-D in, 3-D out).
    """
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise ValueError(f"value_range must be a pair (lo, hi), got {value_range!r}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise ValueError(f"value_range must satisfy lo < hi, got {value_range!r}")
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if images.ndim not in (3, 4):
        raise ValueError(f"images must be (B, C, H, W) or (C, H, W), got shape {tuple(images.shape)}")
    single = images.ndim == 3
    x = images.detach().cpu()
    if single:
        x = x[None]  # (1, C, H, W)
    if x.shape[1] not in (1, 3, 4):
        raise ValueError(f"images must have 1, 3 or 4 channels in dim 1, got shape {tuple(images.shape)}")
    if x.dtype == torch.uint8:
        out = x
    else:
        x = torch.nan_to_num(x.to(torch.float32), nan=lo)
        out = ((x - lo) * (255.0 / (hi - lo)) + 0.5).clamp(0, 255).to(torch.uint8)  # (B, C, H, W)
    out = out.permute(0, 2, 3, 1).contiguous().numpy()  # (B, H, W, C)
    return out[0] if single else out


def _as_uint8_batch(images: np.ndarray, name: str = "images") -> np.ndarray:
    """Validate a uint8 batch ``(B, H, W, C)``; ``(B, H, W)`` gets a channel axis."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (use to_uint8 first), got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name} must be (B, H, W, C) with C in (1, 3, 4), got shape {images.shape}")
    return images


def _color(value: Color, channels: int, name: str) -> np.ndarray:
    c = np.atleast_1d(np.asarray(value, dtype=np.int64))
    if c.ndim != 1 or not np.all((0 <= c) & (c <= 255)):
        raise ValueError(f"{name} must be an int or a tuple of ints in [0, 255], got {value!r}")
    if c.size == 1:
        return np.full(channels, c[0], dtype=np.uint8)
    if c.size == 3 and channels == 4:
        return np.concatenate([c, [255]]).astype(np.uint8)
    if c.size != channels:
        raise ValueError(f"{name} has {c.size} components but the images have {channels} channels")
    return c.astype(np.uint8)


def make_grid(images_uint8: np.ndarray, nrow: int | None = None, padding: int = 0,
              pad_value: Color = 255) -> np.ndarray:
    """Tile a uint8 batch ``(B, H, W, C)`` into one image ``(H', W', C)``.

    ``nrow`` is the number of images per row (torchvision's meaning; default ``ceil(sqrt(B))``). Image ``k``
    lands in grid row ``k // nrow`` and column ``k % nrow``, i.e. its top-left pixel is at
    ``(padding + (k // nrow) * (H + padding), padding + (k % nrow) * (W + padding))``. ``padding`` pixels of
    ``pad_value`` (int or per-channel tuple) separate and surround the tiles; empty cells are ``pad_value``.
    """
    images = _as_uint8_batch(images_uint8, "images_uint8")
    b, h, w, c = images.shape
    if b == 0:
        raise ValueError("images_uint8 is empty (B = 0)")
    if nrow is None:
        nrow = int(math.ceil(math.sqrt(b)))
    if not isinstance(nrow, (int, np.integer)) or nrow < 1:
        raise ValueError(f"nrow must be a positive int, got {nrow!r}")
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    ncol = min(int(nrow), b)
    rows = int(math.ceil(b / ncol))
    grid = np.empty((rows * (h + padding) + padding, ncol * (w + padding) + padding, c), dtype=np.uint8)
    grid[:] = _color(pad_value, c, "pad_value")
    for k in range(b):
        y = padding + (k // ncol) * (h + padding)
        x = padding + (k % ncol) * (w + padding)
        grid[y:y + h, x:x + w] = images[k]
    return grid


def save_image(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Atomically save a uint8 image ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``.

    The format follows the extension: ``.png`` or ``.jpg``/``.jpeg`` (alpha is dropped for JPEG).
    """
    path = Path(path)
    fmt = _IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"path {str(path)!r} has unsupported extension {path.suffix!r}; "
                         f"supported: {', '.join(sorted(_IMAGE_FORMATS))}")
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"array must be uint8 (use to_uint8 first), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(f"array must be (H, W) or (H, W, C) with C in (1, 3, 4), got shape {array.shape}")
    img = Image.fromarray(np.ascontiguousarray(array))
    if fmt == "JPEG" and img.mode == "RGBA":
        img = img.convert("RGB")
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def save_grid(path: str | os.PathLike, images: torch.Tensor | np.ndarray, nrow: int | None = None,
              padding: int = 0, pad_value: Color = 255, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Save a batch as one grid image and return the grid ``(H', W', C)`` uint8.

    ``images`` is either uint8 ``(B, H, W, C)`` or float ``(B, C, H, W)`` in ``value_range`` (default
    ``[-1, 1]``, converted with :func:`to_uint8`).
    """
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        images = images.detach().cpu().numpy()
    if not (isinstance(images, np.ndarray) and images.dtype == np.uint8):
        images = to_uint8(images, value_range)
        if images.ndim == 3:
            images = images[None]
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=pad_value)
    save_image(path, grid)
    return grid


# Polynomial fit of Google's Turbo colormap (Mikhailov 2019), valid on t in [0, 1].
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])


def turbo_colormap(t: np.ndarray) -> np.ndarray:
    """Map values ``t`` in ``[0, 1]`` (any shape ``S``) to Turbo RGB uint8 ``S + (3,)`` (0 blue, 1 red)."""
    t = np.clip(np.asarray(t, dtype=np.float64), 0.0, 1.0)
    powers = np.stack([t ** p for p in range(6)], axis=-1)  # S + (6,)
    rgb = np.clip(powers @ _TURBO.T, 0.0, 1.0)  # S + (3,)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def depth_to_image(depth: torch.Tensor | np.ndarray, near: float | None = None, far: float | None = None,
                   colormap: str = "gray", background: Color = (0, 0, 0)) -> np.ndarray:
    """Visualise depth maps ``(B, 1, H, W)`` (or ``(1, H, W)`` / ``(H, W)``) as uint8 ``(B, H, W, 3)``.

    Depth is normalised to ``t = (d - near) / (far - near)`` clipped to ``[0, 1]``; ``near``/``far`` default to
    the min/max of the finite depths of the whole batch (so frames of a batch share one scale). Near pixels
    are bright: ``'gray'`` maps ``t=0`` to 255 and ``t=1`` to 0, ``'turbo'`` maps near to red and far to blue.
    Non-finite pixels (inf / nan) get ``background`` (RGB tuple or int). A ``(1, H, W)``/``(H, W)`` input
    gives ``(H, W, 3)``.
    """
    if colormap not in ("gray", "turbo"):
        raise ValueError(f"colormap must be 'gray' or 'turbo', got {colormap!r}")
    if isinstance(depth, torch.Tensor):
        depth = depth.detach().cpu().to(torch.float64).numpy()
    d = np.asarray(depth, dtype=np.float64)
    single = d.ndim in (2, 3)
    if d.ndim == 2:
        d = d[None, None]
    elif d.ndim == 3:
        d = d[None]
    if d.ndim != 4 or d.shape[1] != 1:
        raise ValueError(f"depth must be (B, 1, H, W), (1, H, W) or (H, W), got shape {np.shape(depth)}")
    d = d[:, 0]  # (B, H, W)
    valid = np.isfinite(d)
    if near is None:
        near = float(d[valid].min()) if valid.any() else 0.0
    if far is None:
        far = float(d[valid].max()) if valid.any() else 1.0
    if not (math.isfinite(near) and math.isfinite(far)) or far < near:
        raise ValueError(f"near/far must be finite with near <= far, got near={near}, far={far}")
    span = far - near
    t = np.where(valid, (np.where(valid, d, near) - near) / span if span > 0 else 0.0, 0.0)
    t = np.clip(t, 0.0, 1.0)  # (B, H, W)
    if colormap == "gray":
        v = ((1.0 - t) * 255.0 + 0.5).astype(np.uint8)
        out = np.repeat(v[..., None], 3, axis=-1)  # (B, H, W, 3)
    else:
        out = turbo_colormap(1.0 - t)  # (B, H, W, 3)
    out[~valid] = _color(background, 3, "background")
    return out[0] if single else out


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _text_height(font: ImageFont.ImageFont) -> int:
    box = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), "Ag|", font=font)
    return int(box[3] - min(box[1], 0))


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """Shorten ``text`` with an ellipsis until it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def label_images(images: np.ndarray, labels: str | Sequence[str | None], bg: Color = 255, fg: Color = 0,
                 where: str = "bottom") -> np.ndarray:
    """Add a caption strip (PIL's default font) under or above each image; returns a new uint8 array.

    ``images`` is uint8 ``(B, H, W, C)`` with one label per image, or one image ``(H, W, C)`` (e.g. a grid)
    with a single string. The output is ``(B, H + s, W, C)`` (or ``(H + s, W, C)``) where ``s`` is the strip
    height; ``None`` labels leave an empty strip, long labels are shortened with "...".
    """
    if where not in ("bottom", "top"):
        raise ValueError(f"where must be 'bottom' or 'top', got {where!r}")
    single = isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (1, 3, 4)
    batch = _as_uint8_batch(images[None] if single else images)
    if isinstance(labels, str):
        labels = [labels]
    labels = list(labels)
    if len(labels) != batch.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries but there are {batch.shape[0]} images")
    b, h, w, c = batch.shape
    font = _font()
    strip = _text_height(font) + 4
    out = np.empty((b, h + strip, w, c), dtype=np.uint8)
    bg_c, fg_c = _color(bg, c, "bg"), _color(fg, c, "fg")
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    for k in range(b):
        bar = Image.new(mode, (w, strip), tuple(int(v) for v in bg_c) if c > 1 else int(bg_c[0]))
        if labels[k]:
            draw = ImageDraw.Draw(bar)
            text = _fit_text(draw, str(labels[k]), font, w - 4)
            draw.text((2, 2), text, font=font, fill=tuple(int(v) for v in fg_c) if c > 1 else int(fg_c[0]))
        bar_arr = np.asarray(bar).reshape(strip, w, c)
        if where == "bottom":
            out[k, :h], out[k, h:] = batch[k], bar_arr
        else:
            out[k, :strip], out[k, strip:] = bar_arr, batch[k]
    return out[0] if single else out


def contact_sheet(rows: Sequence[Sequence[np.ndarray]],
                  captions: Sequence[Sequence[str | None] | str | None] | None = None,
                  marks: Sequence[bool | Sequence[bool] | None] | None = None, gap: int = 4, border: int = 3,
                  background: Color = 255, mark_color: Color = (255, 0, 0)) -> np.ndarray:
    """Compose rows of uint8 RGB images ``(H, W, 3)`` into one sheet ``(H', W', 3)``, e.g. dataset pairs.

    Each row is a list of images (``source | target | ...``; rows may have different lengths and images
    different sizes: every cell is padded to the largest ``H``/``W``, the image centred). ``captions`` gives
    per-row either one string per cell or a single string (shown under the first cell). ``marks`` gives per-row
    ``True`` (the whole row, e.g. a rejected pair, gets a ``mark_color`` frame of ``border`` px), a list of
    booleans (per cell), or ``None``/``False``. Unmarked frames have the background colour, so layout never
    depends on marks.
    """
    if len(rows) == 0 or any(len(r) == 0 for r in rows):
        raise ValueError("rows must be a non-empty list of non-empty lists of images")
    for name, seq in (("captions", captions), ("marks", marks)):
        if seq is not None and len(seq) != len(rows):
            raise ValueError(f"{name} has {len(seq)} entries but rows has {len(rows)}")
    cells: list[list[np.ndarray]] = []
    for i, row in enumerate(rows):
        cur = []
        for j, im in enumerate(row):
            im = np.asarray(im.detach().cpu().numpy() if isinstance(im, torch.Tensor) else im)
            if im.dtype != np.uint8 or im.ndim not in (2, 3):
                raise ValueError(f"rows[{i}][{j}] must be a uint8 (H, W[, C]) image, got {im.dtype} {im.shape}")
            if im.ndim == 2 or im.shape[-1] == 1:
                im = np.repeat(im.reshape(im.shape[0], im.shape[1], 1), 3, axis=-1)
            cur.append(im[..., :3])
        cells.append(cur)
    ch = max(im.shape[0] for r in cells for im in r)
    cw = max(im.shape[1] for r in cells for im in r)
    bg = _color(background, 3, "background")
    mk = _color(mark_color, 3, "mark_color")
    has_caps = captions is not None and any(c for c in captions)
    ncol = max(len(r) for r in cells)
    cell_h, cell_w = ch + 2 * border, cw + 2 * border
    row_arrays = []
    for i, row in enumerate(cells):
        row_mark = marks[i] if marks is not None else None
        cell_marks = list(row_mark) if isinstance(row_mark, (list, tuple)) else [False] * len(row)
        caps = captions[i] if captions is not None else None
        cell_caps = [caps] + [None] * (len(row) - 1) if isinstance(caps, str) or caps is None else list(caps)
        if len(cell_marks) != len(row) or len(cell_caps) != len(row):
            raise ValueError(f"marks[{i}]/captions[{i}] must have one entry per image ({len(row)})")
        tiles = []
        for j, im in enumerate(row):
            tile = np.empty((cell_h, cell_w, 3), dtype=np.uint8)
            tile[:] = mk if cell_marks[j] else bg
            y0 = border + (ch - im.shape[0]) // 2
            x0 = border + (cw - im.shape[1]) // 2
            tile[border:border + ch, border:border + cw] = bg
            tile[y0:y0 + im.shape[0], x0:x0 + im.shape[1]] = im
            tiles.append(tile)
        tiles += [np.broadcast_to(bg, (cell_h, cell_w, 3))] * (ncol - len(row))
        batch = np.stack(tiles)  # (ncol, cell_h, cell_w, 3)
        if has_caps:
            batch = label_images(batch, cell_caps + [None] * (ncol - len(row)), bg=bg, fg=0)
        strip = make_grid(batch, nrow=ncol, padding=gap, pad_value=tuple(int(v) for v in bg))
        framed = np.empty((strip.shape[0] + 2 * border, strip.shape[1] + 2 * border, 3), dtype=np.uint8)
        framed[:] = mk if (row_mark and not isinstance(row_mark, (list, tuple))) else bg
        framed[border:-border or None, border:-border or None] = strip
        row_arrays.append(framed)
    return np.concatenate(row_arrays, axis=0)
