"""Parsing of user-facing argument values, with errors that name the argument."""

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
