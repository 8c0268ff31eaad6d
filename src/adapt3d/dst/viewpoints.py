"""3D-DST viewpoint sampling (the five strategies of its Blender script), seeded per view.

Angles are 3D-DST's (see :mod:`adapt3d.dst.annotations` for the frames): azimuth ``theta`` in the object x-y plane
from +x towards +y ("0 right, 90 front"), polar angle ``phi`` from +z (elevation = 90 deg - phi), in-plane rotation
``roll`` of the camera about its optical axis, and distance ``d`` from the object centre.

=========  =====================  ==========================================  ==============================
strategy   azimuth (deg)          polar angle (deg)                           use (3D-DST's comments)
=========  =====================  ==========================================  ==============================
1 all      U[0, 360)              truncated N(90, 30) on [0, 180]             all views (airliner)
2 front    U[-195, 15]            truncated N(90, 30) on [0, 180]             front half (microwave)
3 above    U[0, 360)              truncated N(60, 20) on [0, 195]             from above (car, keyboard)
4 front-   U[-195, 15]            truncated N(60, 20) on [0, 195]             front and above (printer)
  above
5 uniform  U[0, 360)              U[0, 180]                                   uniform
=========  =====================  ==========================================  ==============================

Then, as in 3D-DST: the model's alignment offsets are applied (``theta += azimuth_deg``, ``phi -= elevation_deg``),
``phi`` is folded back into [0, 180] (``phi > 180``: ``theta += 180``, ``phi = 360 - phi``; ``phi < 0``: ``theta +=
180``, ``phi = -phi``), ``theta`` is taken mod 360, and ``phi`` is kept ``PHI_EPS`` away from the poles (where the
look-at camera is undefined). Distance: fixed ``d`` or, with jitter, truncated N(d, 0.5) on [d - 0.5, d + 1.5]
(3D-DST's defaults). In-plane rotation: 0 in 3D-DST; here optionally U[-roll_max_deg, roll_max_deg].

Every view draws from its own ``numpy.random.default_rng([seed, mesh_key, view_index])``, so a view's pose does not
depend on the number of views, the order of work or the sharding.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

__all__ = ["STRATEGIES", "STRATEGY_NAMES", "PHI_EPS", "Viewpoint", "ViewpointConfig", "parse_strategy",
           "sample_viewpoint", "check_viewpoint_config", "stable_key", "truncated_normal"]

STRATEGY_NAMES = {"all": 1, "front": 2, "above": 3, "front-above": 4, "uniform": 5}
# id -> (azimuth range deg, polar distribution): ("normal", mean, std, lo, hi) or ("uniform", lo, hi)
STRATEGIES = {
    1: ((0.0, 360.0), ("normal", 90.0, 30.0, 0.0, 180.0)),
    2: ((-195.0, 15.0), ("normal", 90.0, 30.0, 0.0, 180.0)),
    3: ((0.0, 360.0), ("normal", 60.0, 20.0, 0.0, 195.0)),
    4: ((-195.0, 15.0), ("normal", 60.0, 20.0, 0.0, 195.0)),
    5: ((0.0, 360.0), ("uniform", 0.0, 180.0)),
}
PHI_EPS = 1e-4  # radians kept between the camera and the poles


@dataclass
class ViewpointConfig:
    """How views are drawn (the mesh list may override strategy and distance per model)."""

    strategy: int = 1
    """3D-DST strategy 1-5 (or a name: all, front, above, front-above, uniform)."""
    distance: float = 1.5
    """Camera distance from the object centre (object size 1)."""
    distance_jitter: bool = True
    """Truncated N(d, distance_std) on [d - distance_below, d + distance_above] instead of a fixed d."""
    distance_std: float = 0.5
    distance_below: float = 0.5
    distance_above: float = 1.5
    roll_max_deg: float = 0.0
    """In-plane rotation drawn from U[-roll_max_deg, roll_max_deg] (0 in 3D-DST)."""


@dataclass(frozen=True)
class Viewpoint:
    """One sampled camera, in 3D-DST angles (radians) after the alignment offsets."""

    azimuth: float  # theta in [0, 2 pi)
    polar: float  # phi in [PHI_EPS, pi - PHI_EPS]
    roll: float  # in-plane rotation
    distance: float
    strategy: int

    @property
    def elevation(self) -> float:
        return math.pi / 2 - self.polar


def parse_strategy(value: int | str, arg: str = "--pose-sampling") -> int:
    """1-5 or a strategy name -> id; errors name ``arg``."""
    if isinstance(value, str) and value.strip().lower() in STRATEGY_NAMES:
        return STRATEGY_NAMES[value.strip().lower()]
    try:
        out = int(value)
    except (TypeError, ValueError):
        out = -1
    if out not in STRATEGIES:
        raise ValueError(f"{arg}: {value!r} is not a 3D-DST viewpoint strategy; expected 1-5 or one of "
                         f"{', '.join(STRATEGY_NAMES)}")
    return out


def stable_key(*parts: str) -> int:
    """A 32-bit key from strings that is the same in every process and Python version (CRC-32)."""
    return zlib.crc32("\x1f".join(parts).encode("utf-8"))


def truncated_normal(rng: np.random.Generator, mean: float, std: float, lo: float, hi: float) -> float:
    """One draw of N(mean, std) truncated to [lo, hi] by inverting the CDF."""
    a, b = ndtr((lo - mean) / std), ndtr((hi - mean) / std)
    return float(np.clip(mean + std * ndtri(a + (b - a) * rng.random()), lo, hi))


def check_viewpoint_config(cfg: ViewpointConfig) -> None:
    """Raise ValueError naming the flag of the first bad option."""
    parse_strategy(cfg.strategy)
    if not cfg.distance > 0:
        raise ValueError(f"--distance: must be > 0, got {cfg.distance}")
    if cfg.distance_jitter:
        if not cfg.distance_std > 0:
            raise ValueError(f"--distance-std: must be > 0, got {cfg.distance_std}")
        if cfg.distance_below < 0 or cfg.distance_above < 0:
            raise ValueError("--distance-below/--distance-above: must be >= 0, got "
                             f"{cfg.distance_below}/{cfg.distance_above}")
    if not 0 <= cfg.roll_max_deg <= 180:
        raise ValueError(f"--roll-max-deg: must be in [0, 180], got {cfg.roll_max_deg}")


def sample_viewpoint(cfg: ViewpointConfig, seed: int, mesh_key: int, view_index: int, *,
                     azimuth_offset_deg: float = 0.0, elevation_offset_deg: float = 0.0,
                     distance: float | None = None, strategy: int | None = None) -> Viewpoint:
    """Draw view ``view_index`` of one mesh. ``distance``/``strategy`` (from the mesh list) override ``cfg``."""
    check_viewpoint_config(cfg)
    strategy = parse_strategy(cfg.strategy if strategy is None else strategy)
    base = cfg.distance if distance is None else float(distance)
    if not base > 0:
        raise ValueError(f"distance must be > 0, got {base}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(mesh_key) & 0xFFFFFFFF, int(view_index)])
    (az_lo, az_hi), polar = STRATEGIES[strategy]
    theta = az_lo + (az_hi - az_lo) * rng.random()
    if polar[0] == "normal":
        phi = truncated_normal(rng, *polar[1:])
    else:
        phi = polar[1] + (polar[2] - polar[1]) * rng.random()
    d = truncated_normal(rng, base, cfg.distance_std, base - cfg.distance_below, base + cfg.distance_above) \
        if cfg.distance_jitter else base
    d = max(d, 1e-3)
    roll = (2 * rng.random() - 1) * cfg.roll_max_deg
    theta += azimuth_offset_deg
    phi -= elevation_offset_deg
    phi = math.fmod(phi, 360.0)
    if phi < 0:  # past the north pole
        phi, theta = -phi, theta + 180.0
    if phi > 180:  # past the south pole
        phi, theta = 360.0 - phi, theta + 180.0
    phi_rad = min(max(math.radians(phi), PHI_EPS), math.pi - PHI_EPS)
    return Viewpoint(azimuth=math.radians(theta % 360.0) % (2 * math.pi), polar=phi_rad, roll=math.radians(roll),
                     distance=d, strategy=strategy)
