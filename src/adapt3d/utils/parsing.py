"""Parsing and checking of user-facing argument values, with errors that name the argument.

One implementation per kind of value, called from every command's validation (before any model is loaded or any
folder is written): seeds and seed ranges, prompt texts, prompt files, bounded integers, finite numbers, flags of
config fields, truncation, devices.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

MAX_PROMPT_FILE_BYTES = 10 << 20  # a prompt list, not a corpus
# Upper bounds that keep one typo (1e9 for 1e3) from asking for days of compute or all memory before any model loads.
MAX_NUM_IMAGES = 1_000_000
MAX_VIDEO_FRAMES = 10_000
MAX_MESH_RESOLUTION = 1024  # 1024**3 density samples (4 GiB of float32) for marching cubes


def check_view_outputs(arg_prefix: str = "--", *, video_frames: int | None = None,
                       mesh_resolution: int | None = None, yaw_deg: float | None = None,
                       pitch_deg: float | None = None) -> None:
    """Bounds shared by every command that renders views, videos and meshes (render, generate, invert, adapt)."""
    if video_frames is not None:
        check_int(video_frames, f"{arg_prefix}video-frames", 1, MAX_VIDEO_FRAMES, "frames")
    if mesh_resolution is not None:
        check_int(mesh_resolution, f"{arg_prefix}mesh-resolution", 8, MAX_MESH_RESOLUTION, "voxels per side")
    if yaw_deg is not None:
        check_finite(yaw_deg, f"{arg_prefix}yaw-deg", -360, 360, "degrees")
    if pitch_deg is not None:
        check_finite(pitch_deg, f"{arg_prefix}pitch-deg", -90, 90, "degrees")


def parse_seeds(text: str | int | list, arg: str = "--seeds", max_count: int = 100_000) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]. Ranges are inclusive; seeds are non-negative integers."""
    if isinstance(text, int):
        text = str(text)
    if isinstance(text, (list, tuple)):
        text = ",".join(str(t) for t in text)
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        if not part:
            raise ValueError(f"{arg}: empty item in {text!r}; expected e.g. '0-7' or '1,5,9'")
        try:
            if "-" in part[1:]:
                lo_s, hi_s = part.split("-", 1)
                lo, hi = int(lo_s), int(hi_s)
                if hi < lo:
                    raise ValueError(f"{arg}: range {part!r} ends before it starts; expected 'low-high' with low <= high")
                if len(seeds) + hi - lo + 1 > max_count:  # checked before the range is expanded
                    raise ValueError(f"{arg}: {text!r} gives {len(seeds) + hi - lo + 1:,} seeds; at most "
                                     f"{max_count:,} per run")
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError as e:
            if str(e).startswith(arg):
                raise
            raise ValueError(f"{arg}: cannot parse {part!r} in {text!r}; expected integers and ranges like "
                             "'0-7' or '1,5,9'") from None
        if len(seeds) > max_count:
            raise ValueError(f"{arg}: {text!r} gives more than {max_count:,} seeds; at most {max_count:,} per run")
    bad = [s for s in seeds if s < 0 or s >= 2 ** 32]
    if bad:
        raise ValueError(f"{arg}: seeds must be in [0, 2**32), got {bad[:3]}")
    return seeds


def flag_name(field: str) -> str:
    """The command-line flag of a config field: ``'video_frames'`` -> ``'--video-frames'``."""
    return "--" + field.replace("_", "-")


def check_at_least(config: object, fields: tuple[str, ...] | list[str], minimum: int = 1, prefix: str = "") -> None:
    """Raise ``ValueError('--<prefix><field>: must be >= minimum, got v')`` for the first field of ``config`` below
    ``minimum``."""
    for name in fields:
        value = getattr(config, name)
        if value < minimum:
            raise ValueError(f"{flag_name(prefix + name)}: must be >= {minimum}, got {value}")


def check_trunc(value: float, flag: str = "--trunc") -> float:
    """Check a truncation psi: in [0, 2] (1 = no truncation, 0.7 is typical); returns it."""
    if not 0 <= value <= 2:
        raise ValueError(f"{flag}: {value} is outside [0, 2]; 1 means no truncation, 0.7 is typical")
    return value


def resolve_device(device: str):
    """``--device``: 'auto' (CUDA when available), 'cpu' or 'cuda[:i]' -> a ``torch.device``; ValueError when the
    name is not a device or asks for CUDA on a machine without it."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device: {device!r} is not a device name; expected 'auto', 'cpu' or 'cuda[:i]'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {device!r} asked for CUDA, but no CUDA device is available")
    return dev

def check_text(text: str, arg: str, what: str = "text") -> str:
    """``text`` must be encodable as UTF-8 (a non-UTF-8 command-line argument arrives as lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end].encode("utf-8", "surrogateescape")
        raise ValueError(f"{arg}: the {what} is not valid UTF-8 (byte {bad[:4].hex(' ')} at position {e.start}); "
                         "pass UTF-8 text") from None
    return text


def check_prompts(prompts: Iterable[str], arg: str = "--prompt") -> list[str]:
    """Each prompt must be non-empty UTF-8 text."""
    out = []
    for p in prompts:
        check_text(p, arg, "prompt")
        if not p.strip():
            raise ValueError(f"{arg}: empty prompt; describe the target (e.g. 'a zombie')")
        out.append(p)
    return out


def read_prompt_file(path: str | os.PathLike, arg: str = "--prompt-file") -> list[str]:
    """Prompts of a UTF-8 text file, one per line; blank lines and lines starting with '#' are skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{arg}: {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{arg}: {path} is not a file (a text file with one prompt per line)")
    size = path.stat().st_size
    if size > MAX_PROMPT_FILE_BYTES:
        raise ValueError(f"{arg}: {path} has {size:,} bytes; a prompt file is at most {MAX_PROMPT_FILE_BYTES:,} "
                         "bytes of text (one prompt per line)")
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"{arg}: {path} is a binary file, not text with one prompt per line")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{arg}: {path} is not UTF-8 text (byte {data[e.start:e.start + 1].hex()} at offset "
                         f"{e.start}); save it as UTF-8") from None
    prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise ValueError(f"{arg}: {path} holds no prompt (one per line; '#' starts a comment)")
    return prompts


def check_int(value: int, arg: str, low: int, high: int, unit: str = "") -> int:
    """``low <= value <= high`` (the upper bound keeps one typo from asking for days of compute or all memory)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{arg}: expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{arg}: {value:,} is outside [{low:,}, {high:,}]{' ' + unit if unit else ''}")
    return value


def check_finite(value: float, arg: str, low: float = -math.inf, high: float = math.inf, unit: str = "") -> float:
    """A finite number in [low, high]."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{arg}: expected a finite number{' in ' + unit if unit else ''}, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{arg}: {value:g} is outside [{low:g}, {high:g}]{' ' + unit if unit else ''}")
    return float(value)
