"""Camera pose samplers and video trajectories, in EG3D's orbit angles (radians, yaw = pitch = pi/2 frontal).

A sampler draws a :class:`PoseBatch` (yaw (n,), pitch (n,)); ``PoseBatch.labels(radius, pivot, fov_deg)`` turns it
into EG3D labels with :func:`adapt3d.cameras.lookat.camera_label` (sphere around the world origin, looking at the
pivot). Randomness comes only from the ``torch.Generator`` passed to ``sample`` (the global torch RNG when None),
so the same seed gives the same poses; poses are float32 on the generator's device.

Samplers (each configured by a frozen ``<Class>Config`` dataclass; :func:`make_pose_sampler` builds them by name):

- ``fixed``: every pose equal to (yaw, pitch).
- ``gaussian``: yaw = yaw_mean + yaw_std * N(0, 1), pitch likewise; like EG3D's GaussianCameraPoseSampler /
  LookAtPoseSampler. It draws the yaw noise then the pitch noise even when a std is 0, as EG3D does, so the
  generator advances identically. Pitch is clamped to [1e-5, pi - 1e-5] (EG3D clamps it before use).
- ``uniform``: yaw ~ U(yaw_range), pitch ~ U(pitch_range) (clamped as above). EG3D's UniformCameraPoseSampler
  is the special case range = mean +- std.
- ``sinusoidal``: DATID-3D's pose-aware dataset generation (datid3d_data_gen.py). Per pose, two indices are drawn
  independently and uniformly from {0, ..., 239} (DATID: ``np.random.randint(240)`` twice, yaw index first):
  ``yaw = pi/2 + 0.3 sin(2 pi i / 240)``, ``pitch = pi/2 - 0.05 + 0.3 cos(2 pi j / 240)``. The indices are random,
  not sequential, as in DATID-3D; we draw them with torch instead of NumPy, so the exact DATID stream is not
  reproduced, but :meth:`SinusoidalPoseSampler.poses_from_indices` maps given indices to the same float values.
  Bounds: yaw in [pi/2 - 0.3, pi/2 + 0.3], pitch in [pi/2 - 0.35, pi/2 + 0.25].
- ``yaw_bins``: a chosen share of poses in each band of |azimuth| (degrees from the frontal view), e.g. "front"
  (0-45 deg) and "side" (45-70 deg) views half and half. Per pose: a band k ~ Categorical(shares), |azimuth| ~
  U(band k), a random sign (left or right), then pitch = pitch_mean + pitch_std N(0, 1) (clamped). Used by
  ``adapt3d distill`` so that view-dependent prompts ("side view") are actually taught: a Gaussian yaw of std
  0.3 rad puts 99.4 % of the poses within 45 deg of the front.

Trajectories (deterministic PoseBatches for videos): :func:`orbit_trajectory` (EG3D gen_videos.py orbit) and
:func:`yaw_sweep`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .lookat import PITCH_EPS, camera_label, clamp_pitch, orbit_camera

__all__ = [
    "PoseBatch",
    "PoseSampler",
    "FixedPoseSamplerConfig",
    "FixedPoseSampler",
    "GaussianPoseSamplerConfig",
    "GaussianPoseSampler",
    "UniformPoseSamplerConfig",
    "UniformPoseSampler",
    "SinusoidalPoseSamplerConfig",
    "SinusoidalPoseSampler",
    "YawBinsPoseSamplerConfig",
    "YawBinsPoseSampler",
    "orbit_trajectory",
    "yaw_sweep",
    "make_pose_sampler",
    "POSE_SAMPLERS",
]

HALF_PI = math.pi / 2


@dataclass(frozen=True)
class PoseBatch:
    """Orbit poses in EG3D's convention: yaw (n,) and pitch (n,) in radians."""

    yaw: Tensor  # (n,)
    pitch: Tensor  # (n,)

    def __post_init__(self) -> None:
        for name in ("yaw", "pitch"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.dim() != 1:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"PoseBatch.{name} must be a 1-D tensor (n,), got {shape}")
        if self.yaw.shape != self.pitch.shape:
            raise ValueError(f"PoseBatch yaw {tuple(self.yaw.shape)} and pitch {tuple(self.pitch.shape)} differ")

    def __len__(self) -> int:
        return self.yaw.shape[0]

    def to(self, device: torch.device | str) -> PoseBatch:
        return PoseBatch(self.yaw.to(device), self.pitch.to(device))

    def cam2world(self, radius: float | Tensor, pivot: Sequence[float] | Tensor) -> Tensor:
        """OpenCV cam2world (n, 4, 4) via :func:`adapt3d.cameras.lookat.orbit_camera`."""
        return orbit_camera(self.yaw, self.pitch, radius=radius, pivot=pivot)

    def labels(
        self, radius: float | Tensor, pivot: Sequence[float] | Tensor, fov_deg: float | Tensor, *, exact: bool = False
    ) -> Tensor:
        """EG3D labels (n, 25) via :func:`adapt3d.cameras.lookat.camera_label`."""
        return camera_label(self.yaw, self.pitch, radius=radius, pivot=pivot, fov_deg=fov_deg, exact=exact)


@runtime_checkable
class PoseSampler(Protocol):
    """Anything that draws ``n`` poses: ``sample(n, generator) -> PoseBatch``."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> PoseBatch: ...


def _check_count(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def _check_finite(owner: str, **values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")


def _check_range(owner: str, name: str, value: Sequence[float]) -> None:
    if len(value) != 2:
        raise ValueError(f"{owner}.{name} must be (min, max), got {value!r}")
    _check_finite(owner, **{f"{name}[0]": value[0], f"{name}[1]": value[1]})
    if value[0] > value[1]:
        raise ValueError(f"{owner}.{name} must have min <= max, got {tuple(value)}")


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


@dataclass(frozen=True)
class FixedPoseSamplerConfig:
    yaw: float = HALF_PI
    """Yaw in radians (pi/2 frontal)."""
    pitch: float = HALF_PI
    """Pitch in radians (pi/2 frontal)."""

    def __post_init__(self) -> None:
        _check_finite(type(self).__name__, yaw=self.yaw, pitch=self.pitch)


class FixedPoseSampler:
    """Always the same pose (the frontal camera by default). Consumes no randomness."""

    def __init__(self, config: FixedPoseSamplerConfig | None = None) -> None:
        self.config = config or FixedPoseSamplerConfig()

    def sample(self, n: int, generator: torch.Generator | None = None) -> PoseBatch:
        _check_count("n", n)
        device = _device(generator)
        yaw = torch.full((n,), self.config.yaw, dtype=torch.float32, device=device)
        pitch = torch.full((n,), self.config.pitch, dtype=torch.float32, device=device)
        return PoseBatch(yaw, pitch)


@dataclass(frozen=True)
class GaussianPoseSamplerConfig:
    yaw_mean: float = HALF_PI
    pitch_mean: float = HALF_PI
    yaw_std: float = 0.0
    """Standard deviation of yaw in radians."""
    pitch_std: float = 0.0
    """Standard deviation of pitch in radians."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_finite(owner, yaw_mean=self.yaw_mean, pitch_mean=self.pitch_mean)
        _check_finite(owner, yaw_std=self.yaw_std, pitch_std=self.pitch_std)
        for name in ("yaw_std", "pitch_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"{owner}.{name} must be >= 0, got {getattr(self, name)!r}")


class GaussianPoseSampler:
    """yaw = mean + std * N(0, 1), pitch likewise (yaw noise drawn first), pitch clamped to [1e-5, pi - 1e-5]."""

    def __init__(self, config: GaussianPoseSamplerConfig | None = None) -> None:
        self.config = config or GaussianPoseSamplerConfig()

    def sample(self, n: int, generator: torch.Generator | None = None) -> PoseBatch:
        _check_count("n", n)
        cfg, device = self.config, _device(generator)
        yaw = torch.randn(n, generator=generator, device=device) * cfg.yaw_std + cfg.yaw_mean
        pitch = torch.randn(n, generator=generator, device=device) * cfg.pitch_std + cfg.pitch_mean
        return PoseBatch(yaw, clamp_pitch(pitch))


@dataclass(frozen=True)
class UniformPoseSamplerConfig:
    yaw_range: tuple[float, float] = (HALF_PI - 0.3, HALF_PI + 0.3)
    """(min, max) yaw in radians; default: the sinusoidal sampler's envelope."""
    pitch_range: tuple[float, float] = (HALF_PI - 0.35, HALF_PI + 0.25)
    """(min, max) pitch in radians; default: the sinusoidal sampler's envelope."""

    def __post_init__(self) -> None:
        _check_range(type(self).__name__, "yaw_range", self.yaw_range)
        _check_range(type(self).__name__, "pitch_range", self.pitch_range)


class UniformPoseSampler:
    """yaw ~ U(yaw_range), pitch ~ U(pitch_range) (yaw drawn first), pitch clamped to [1e-5, pi - 1e-5]."""

    def __init__(self, config: UniformPoseSamplerConfig | None = None) -> None:
        self.config = config or UniformPoseSamplerConfig()

    def sample(self, n: int, generator: torch.Generator | None = None) -> PoseBatch:
        _check_count("n", n)
        (y0, y1), (p0, p1) = self.config.yaw_range, self.config.pitch_range
        device = _device(generator)
        yaw = y0 + (y1 - y0) * torch.rand(n, generator=generator, device=device)
        pitch = p0 + (p1 - p0) * torch.rand(n, generator=generator, device=device)
        return PoseBatch(yaw, clamp_pitch(pitch))


def _sinusoid(
    yaw_index: Tensor, pitch_index: Tensor, period: int, yaw_range: float, pitch_range: float, pitch_offset: float,
    pi: float,
) -> PoseBatch:
    """yaw = pi/2 + yaw_range sin(2 pi i / period), pitch = pi/2 + pitch_offset + pitch_range cos(2 pi j / period).

    Computed in float64 (as the NumPy originals), returned as float32.
    """
    i = yaw_index.to(torch.float64)
    j = pitch_index.to(torch.float64)
    yaw = pi / 2 + yaw_range * torch.sin(2 * pi * i / period)
    pitch = pi / 2 + pitch_offset + pitch_range * torch.cos(2 * pi * j / period)
    return PoseBatch(yaw.to(torch.float32), pitch.to(torch.float32))


@dataclass(frozen=True)
class SinusoidalPoseSamplerConfig:
    yaw_range: float = 0.3
    """Yaw amplitude in radians (DATID-3D --yaw_range)."""
    pitch_range: float = 0.3
    """Pitch amplitude in radians (DATID-3D --pitch_range)."""
    pitch_offset: float = -0.05
    """Added to the pitch centre pi/2 (DATID-3D and EG3D videos use -0.05, slightly above the face)."""
    num_steps: int = 240
    """Indices are drawn from {0, ..., num_steps - 1} (DATID-3D: num_frames = 240)."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        _check_finite(owner, yaw_range=self.yaw_range, pitch_range=self.pitch_range, pitch_offset=self.pitch_offset)
        _check_count(f"{owner}.num_steps", self.num_steps)


class SinusoidalPoseSampler:
    """DATID-3D's render-camera sampler: independent random indices i, j in {0..num_steps-1} per pose."""

    def __init__(self, config: SinusoidalPoseSamplerConfig | None = None) -> None:
        self.config = config or SinusoidalPoseSamplerConfig()

    def poses_from_indices(self, yaw_index: Tensor, pitch_index: Tensor) -> PoseBatch:
        """The poses for given integer indices (n,), e.g. DATID-3D's NumPy draws."""
        cfg = self.config
        yaw_index, pitch_index = torch.as_tensor(yaw_index).reshape(-1), torch.as_tensor(pitch_index).reshape(-1)
        return _sinusoid(
            yaw_index, pitch_index, cfg.num_steps, cfg.yaw_range, cfg.pitch_range, cfg.pitch_offset, math.pi
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> PoseBatch:
        _check_count("n", n)
        device = _device(generator)
        yaw_index = torch.randint(0, self.config.num_steps, (n,), generator=generator, device=device)
        pitch_index = torch.randint(0, self.config.num_steps, (n,), generator=generator, device=device)
        return self.poses_from_indices(yaw_index, pitch_index)


@dataclass(frozen=True)
class YawBinsPoseSamplerConfig:
    bins_deg: tuple[tuple[float, float], ...] = ((0.0, 45.0), (45.0, 70.0))
    """Bands of |azimuth| (degrees from the frontal view, 0-180), each (low, high) with low <= high."""
    shares: tuple[float, ...] = (0.5, 0.5)
    """Probability of each band (>= 0, normalised; one per band)."""
    pitch_mean: float = HALF_PI
    pitch_std: float = 0.0
    """Standard deviation of pitch in radians."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        if len(self.bins_deg) < 1 or len(self.bins_deg) != len(self.shares):
            raise ValueError(f"{owner}: {len(self.bins_deg)} bins_deg and {len(self.shares)} shares; give one share "
                             "per band")
        for lo, hi in self.bins_deg:
            _check_finite(owner, low=lo, high=hi)
            if not 0 <= lo <= hi <= 180:
                raise ValueError(f"{owner}.bins_deg: band ({lo}, {hi}) must satisfy 0 <= low <= high <= 180")
        for v in self.shares:
            _check_finite(owner, share=v)
        if min(self.shares) < 0 or sum(self.shares) <= 0:
            raise ValueError(f"{owner}.shares must be >= 0 with a positive sum, got {self.shares!r}")
        _check_finite(owner, pitch_mean=self.pitch_mean, pitch_std=self.pitch_std)
        if self.pitch_std < 0:
            raise ValueError(f"{owner}.pitch_std must be >= 0, got {self.pitch_std!r}")


class YawBinsPoseSampler:
    """Band k ~ Categorical(shares), |azimuth| ~ U(band k), sign ~ U{-1, +1}, pitch ~ N(pitch_mean, pitch_std)
    (draws in that order, each for the whole batch)."""

    def __init__(self, config: YawBinsPoseSamplerConfig | None = None) -> None:
        self.config = config or YawBinsPoseSamplerConfig()

    def sample(self, n: int, generator: torch.Generator | None = None) -> PoseBatch:
        _check_count("n", n)
        cfg, device = self.config, _device(generator)
        shares = torch.tensor(cfg.shares, dtype=torch.float64)
        band = torch.multinomial(shares / shares.sum(), n, replacement=True, generator=generator)  # (n,)
        lo = torch.tensor([b[0] for b in cfg.bins_deg], dtype=torch.float64)[band]
        hi = torch.tensor([b[1] for b in cfg.bins_deg], dtype=torch.float64)[band]
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64).cpu()
        sign = torch.randint(0, 2, (n,), generator=generator, device=device).cpu() * 2 - 1
        azimuth = torch.deg2rad(lo + (hi - lo) * u) * sign
        pitch = cfg.pitch_mean + cfg.pitch_std * torch.randn(n, generator=generator, device=device).cpu()
        yaw = (HALF_PI + azimuth).to(torch.float32).to(device)
        return PoseBatch(yaw, clamp_pitch(pitch.to(torch.float32).to(device)))


def orbit_trajectory(
    num_frames: int, yaw_range: float = 0.35, pitch_range: float = 0.25, *, exact: bool = True
) -> PoseBatch:
    """EG3D gen_videos.py orbit (num_frames,): for t = frame / num_frames, frame = 0..num_frames-1,
    yaw = pi/2 + yaw_range sin(2 pi t), pitch = pi/2 - 0.05 + pitch_range cos(2 pi t) (a closed loop: the frame
    after the last would be the first). Defaults are gen_videos.py's ranges. gen_videos.py writes pi as 3.14;
    ``exact=False`` reproduces that (its frontal yaw is 1.57, and its loop does not close exactly).
    """
    _check_count("num_frames", num_frames)
    _check_finite("orbit_trajectory", yaw_range=yaw_range, pitch_range=pitch_range)
    frames = torch.arange(num_frames)
    pi = math.pi if exact else 3.14
    return _sinusoid(frames, frames, num_frames, yaw_range, pitch_range, -0.05, pi)


def yaw_sweep(num_frames: int, yaw_min: float, yaw_max: float, pitch: float = HALF_PI) -> PoseBatch:
    """Yaw from yaw_min to yaw_max inclusive (linspace, num_frames), constant pitch."""
    _check_count("num_frames", num_frames)
    _check_finite("yaw_sweep", yaw_min=yaw_min, yaw_max=yaw_max, pitch=pitch)
    if not PITCH_EPS <= pitch <= math.pi - PITCH_EPS:
        raise ValueError(f"yaw_sweep pitch must be in [1e-5, pi - 1e-5], got {pitch!r}")
    yaw = torch.linspace(yaw_min, yaw_max, num_frames, dtype=torch.float64).to(torch.float32)
    return PoseBatch(yaw, torch.full((num_frames,), pitch, dtype=torch.float32))


def video_trajectory(kind: str, num_frames: int) -> PoseBatch:
    """The cameras of a ``--video`` of ``num_frames``: ``'orbit'`` (:func:`orbit_trajectory`) or ``'yaw'`` (a yaw
    sweep over frontal +-0.5 rad)."""
    if kind == "orbit":
        return orbit_trajectory(num_frames)
    if kind == "yaw":
        return yaw_sweep(num_frames, HALF_PI - 0.5, HALF_PI + 0.5)
    raise ValueError(f"video kind must be 'orbit' or 'yaw', got {kind!r}")


POSE_SAMPLERS: dict[str, tuple[type, type]] = {
    "fixed": (FixedPoseSampler, FixedPoseSamplerConfig),
    "gaussian": (GaussianPoseSampler, GaussianPoseSamplerConfig),
    "uniform": (UniformPoseSampler, UniformPoseSamplerConfig),
    "sinusoidal": (SinusoidalPoseSampler, SinusoidalPoseSamplerConfig),
    "yaw_bins": (YawBinsPoseSampler, YawBinsPoseSamplerConfig),
}


def make_pose_sampler(name: str, **kwargs: object) -> PoseSampler:
    """Build a sampler by name ('fixed', 'gaussian', 'uniform', 'sinusoidal', 'yaw_bins'); kwargs are its Config
    fields."""
    if name not in POSE_SAMPLERS:
        raise ValueError(f"unknown pose sampler {name!r}; valid names: {', '.join(sorted(POSE_SAMPLERS))}")
    sampler_cls, config_cls = POSE_SAMPLERS[name]
    fields = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(kwargs) - set(fields))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for pose sampler {name!r}; valid options: {fields}")
    return sampler_cls(config_cls(**kwargs))
