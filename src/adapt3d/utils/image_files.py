"""Opening image files given by a user (reference folders, photos): one check for every command.

``open_image`` refuses, with an error naming the option and the file, what PIL would otherwise turn into a
traceback or a memory blow-up: a missing, empty or non-image file (text, binary), an image larger than
``max_pixels`` (checked from the header, before anything is decoded), and with ``decode=True`` a truncated file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

__all__ = ["MAX_IMAGE_PIXELS", "ImageFileError", "open_image"]

MAX_IMAGE_PIXELS = 100_000_000  # 100 megapixels: far above any training or reference image
_FORMATS = "PNG, JPEG, WebP, BMP or TIFF"


class ImageFileError(ValueError):
    """A user-given file is not a usable image."""


def open_image(source: str | os.PathLike | bytes, arg: str, name: str | None = None, *,
               max_pixels: int = MAX_IMAGE_PIXELS, decode: bool = True) -> Image.Image:
    """An open PIL image (use it in ``with``); fully decoded when ``decode``. ``name`` names the file in errors
    (default: the path). Raises ``ImageFileError`` ("<arg>: <name> ...")."""
    where = name or str(source if not isinstance(source, bytes) else "<data>")
    if isinstance(source, bytes):
        if not source:
            raise ImageFileError(f"{arg}: {where} is empty (0 bytes), not an image")
        fp = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise ImageFileError(f"{arg}: {where} does not exist")
        if not path.is_file():
            raise ImageFileError(f"{arg}: {where} is not a file")
        if path.stat().st_size == 0:
            raise ImageFileError(f"{arg}: {where} is empty (0 bytes), not an image")
        fp = path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies below
            img = Image.open(fp)
            width, height = img.size
            if width < 1 or height < 1 or width * height > max_pixels:
                img.close()
                raise ImageFileError(f"{arg}: {where} is {width} x {height} pixels; images must have between 1 and "
                                     f"{max_pixels:,} pixels")
            if decode:
                img.load()
    except ImageFileError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageFileError(f"{arg}: {where} has more pixels than {max_pixels:,} allowed (PIL's decompression-"
                             "bomb limit); images must be smaller") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        what = "truncated or corrupt" if "truncated" in str(e).lower() else "not a readable image"
        raise ImageFileError(f"{arg}: {where} is {what} ({type(e).__name__}: {str(e)[:120]}); expected a "
                             f"{_FORMATS} file") from None
    return img
