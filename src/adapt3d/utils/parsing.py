"""Parsing and checking of user-facing argument values, with errors that name the argument (its flag)."""

from __future__ import annotations


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
                seeds.extend(range(lo, hi + 1))
            else:
                seeds.append(int(part))
        except ValueError as e:
            if str(e).startswith(arg):
                raise
            raise ValueError(f"{arg}: cannot parse {part!r} in {text!r}; expected integers and ranges like "
                             "'0-7' or '1,5,9'") from None
        if len(seeds) > max_count:
            raise ValueError(f"{arg}: {text!r} gives more than {max_count} seeds")
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
