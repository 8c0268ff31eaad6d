"""Video export: stream uint8 RGB frames into ``.mp4`` (H.264 via imageio-ffmpeg) or ``.gif`` (PIL), atomically.

Frames are uint8 arrays ``(H, W, 3)`` (values in ``[0, 255]``; ``(H, W)`` / ``(H, W, 1)`` grey and ``(H, W, 4)``
RGBA are accepted and converted to RGB). Convert generator images in ``[-1, 1]`` with
:func:`adapt3d.export.images.to_uint8` first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from adapt3d.utils.io import atomic_path

__all__ = ["write_video", "read_video", "read_video_frame_count", "VIDEO_EXTENSIONS"]

VIDEO_EXTENSIONS = (".mp4", ".gif")


def _check_ext(path: Path) -> str:
    ext = path.suffix.lower()
    if ext not in VIDEO_EXTENSIONS:
        raise ValueError(f"path {str(path)!r} has unsupported video extension {path.suffix!r}; "
                         f"supported: {', '.join(VIDEO_EXTENSIONS)}")
    return ext


def _as_rgb_frame(frame, index: int) -> np.ndarray:
    """Validate one frame and return it as a contiguous uint8 ``(H, W, 3)`` array."""
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        raise ValueError(f"frame {index} must be uint8 (H, W, 3) (use to_uint8 first), got dtype {frame.dtype}")
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4) or frame.shape[0] < 1 or frame.shape[1] < 1:
        raise ValueError(f"frame {index} must be (H, W, 3) uint8, got shape {frame.shape}")
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3])


def _frames(frames: np.ndarray | torch.Tensor | Iterable) -> Iterator[np.ndarray]:
    """Yield validated frames one by one; all must share the first frame's size."""
    size = None
    for t, frame in enumerate(frames):
        frame = _as_rgb_frame(frame, t)
        if size is None:
            size = frame.shape[:2]
        elif frame.shape[:2] != size:
            raise ValueError(f"frame {t} has size {frame.shape[:2]} but frame 0 has {size}; all frames must match")
        yield frame


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Pad bottom/right by edge replication to even height and width (yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    ph, pw = h % 2, w % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return frame


def _write_mp4(tmp: Path, frames: Iterator[np.ndarray], fps: float, quality: float) -> int:
    import imageio_ffmpeg

    first = next(frames, None)
    if first is None:
        raise ValueError("frames is empty: a video needs at least one frame")
    first = _pad_even(first)
    h, w = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(tmp), size=(w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=quality, macro_block_size=1, ffmpeg_log_level="error")
    n = 0
    try:
        writer.send(None)  # start the generator (launches ffmpeg)
        writer.send(first)
        n = 1
        for frame in frames:
            writer.send(_pad_even(frame))
            n += 1
    finally:
        writer.close()  # flushes and waits for ffmpeg; on error the temp file is removed by atomic_path
    return n


def _write_gif(tmp: Path, frames: Iterator[np.ndarray], fps: float) -> int:
    from PIL import Image

    first = next(frames, None)
    if first is None:
        raise ValueError("frames is empty: a video needs at least one frame")
    count = [1]

    def rest() -> Iterator[Image.Image]:
        for frame in frames:
            count[0] += 1
            yield Image.fromarray(frame)

    duration = max(int(round(1000.0 / fps)), 10)  # GIF timing resolution is 10 ms
    Image.fromarray(first).save(tmp, format="GIF", save_all=True, append_images=rest(), duration=duration,
                                loop=0, optimize=False)
    return count[0]


def write_video(path: str | os.PathLike, frames: np.ndarray | torch.Tensor | Iterable, fps: float = 30,
                quality: float = 8, progress: bool = False, total: int | None = None) -> int:
    """Write uint8 RGB frames to ``path`` atomically and return the number of frames written.

    ``frames`` is a uint8 array ``(T, H, W, 3)`` (values ``[0, 255]``) or any iterable/generator of ``(H, W, 3)``
    uint8 frames; iterables are consumed lazily, so long ``.mp4`` videos are streamed to ffmpeg without holding
    all frames. Formats by extension:

    * ``.mp4``: H.264 (libx264), yuv420p, imageio-ffmpeg ``quality`` 0-10 (8 -> crf 10). Odd heights/widths are
      padded by one replicated row/column to even, as yuv420p requires.
    * ``.gif``: PIL, looping, ``1000 / fps`` ms per frame (10 ms resolution). PIL buffers GIF frames and merges
      consecutive identical frames; use ``.mp4`` for long videos.

    If anything fails (including the frame iterator raising), no file appears at ``path`` and no temporary file
    is left behind. ``progress=True`` wraps the frames in a tqdm bar (``total`` defaults to ``len(frames)``).
    """
    path = Path(path)
    ext = _check_ext(path)
    if not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not (0 <= quality <= 10):
        raise ValueError(f"quality must be in [0, 10], got {quality!r}")
    if isinstance(frames, (np.ndarray, torch.Tensor)) and frames.ndim not in (3, 4):
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array (or (T, H, W) grey) or an iterable of "
                         f"(H, W, 3) frames, got shape {tuple(frames.shape)}")
    source: Iterable = frames
    if progress:
        from tqdm.auto import tqdm

        if total is None and hasattr(frames, "__len__"):
            total = len(frames)
        source = tqdm(frames, total=total, desc=f"writing {path.name}", unit="frame")
    it = _frames(source)
    try:
        with atomic_path(path) as tmp:
            if ext == ".mp4":
                n = _write_mp4(tmp, it, float(fps), quality)
            else:
                n = _write_gif(tmp, it, float(fps))
    finally:
        if progress:
            source.close()
    return n


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read all frames of an ``.mp4`` or ``.gif`` as uint8 ``(T, H, W, 3)`` (for tests and small videos)."""
    path = Path(path)
    ext = _check_ext(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    if ext == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(b, dtype=np.uint8).reshape(h, w, 3) for b in reader]
    finally:
        reader.close()
    return np.stack(frames) if frames else np.zeros((0, h, w, 3), dtype=np.uint8)


def read_video_frame_count(path: str | os.PathLike) -> int:
    """Count the frames of an ``.mp4`` (decoded by ffmpeg, exact) or ``.gif``."""
    path = Path(path)
    ext = _check_ext(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    if ext == ".gif":
        from PIL import Image

        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    import imageio_ffmpeg

    return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])
