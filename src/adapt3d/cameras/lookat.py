"""Look-at and orbit cameras, and field-of-view intrinsics, matching EG3D's camera_utils numerically.

Orbit angles follow EG3D's ``LookAtPoseSampler``: yaw ``h`` and pitch ``v`` in radians, ``h = v = pi/2`` frontal.
The camera centre lies on a sphere of the given radius around the WORLD ORIGIN (not around the pivot) and looks
at the pivot::

    v     = clamp(v, 1e-5, pi - 1e-5)
    phi   = arccos(1 - 2 v / pi)              # polar angle from +y; v is NOT phi except at pi/2
    origin = radius * (sin(phi) cos(pi - h), cos(phi), sin(phi) sin(pi - h))
    forward = normalize(pivot - origin)

Larger yaw moves the camera towards world +x, smaller pitch moves it up. Because phi = arccos(1 - 2v/pi), the
pitch is a cosine-uniform parameter: pitch pi/2 - 0.3 puts the camera 0.192 rad (11.0 deg) above the equator, not
0.3 rad; see :func:`pitch_to_elevation`. Frames and labels are described in :mod:`adapt3d.cameras.conventions`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .conventions import label_from_matrices

__all__ = [
    "EG3D_PI",
    "EG3D_SQRT2",
    "FRONTAL_PITCH",
    "FRONTAL_YAW",
    "PITCH_EPS",
    "fov_to_intrinsics",
    "intrinsics_to_fov",
    "look_at",
    "orbit_camera",
    "orbit_angles",
    "camera_label",
    "frontal_label",
    "clamp_pitch",
    "pitch_to_elevation",
    "elevation_to_pitch",
]

EG3D_PI = 3.14159  # EG3D's FOV_to_intrinsics uses these rounded constants
EG3D_SQRT2 = 1.414
FRONTAL_YAW = math.pi / 2
FRONTAL_PITCH = math.pi / 2
PITCH_EPS = 1e-5  # LookAtPoseSampler clamps pitch to [PITCH_EPS, pi - PITCH_EPS]

Number = float | int
AngleLike = Number | Sequence[Number] | Tensor


def _infer(values: Sequence[object], device, dtype) -> tuple[torch.device, torch.dtype]:
    tensors = [v for v in values if isinstance(v, Tensor)]
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    if dtype is None:
        floats = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = floats[0] if floats else torch.float32
    return torch.device(device), dtype


def _to_tensor(value: object, device, dtype) -> Tensor:
    """Numbers are converted straight to ``dtype`` (not through float32); tensors are cast."""
    if isinstance(value, Tensor):
        return value.to(device=device, dtype=dtype)
    return torch.as_tensor(value, dtype=dtype, device=device)


def _vector(name: str, value: AngleLike, device, dtype) -> Tensor:
    """A scalar or (B,) input as a (B,) tensor."""
    try:
        t = _to_tensor(value, device, dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a number or a 1-D tensor, got {value!r}") from err
    if t.dim() > 1:
        raise ValueError(f"{name} must be a number or have shape (B,), got shape {tuple(t.shape)}")
    return t.reshape(-1)


def _batch(named: dict[str, Tensor]) -> int:
    sizes = {k: v.shape[0] for k, v in named.items()}
    batch = max(sizes.values())
    bad = [k for k, s in sizes.items() if s not in (1, batch)]
    if bad:
        raise ValueError(f"batch sizes do not broadcast: {sizes}; each must be 1 or {batch}")
    return batch


def _pivot(value: Sequence[Number] | Tensor, device, dtype) -> Tensor:
    try:
        t = _to_tensor(value, device, dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"pivot must be 3 numbers or a tensor of shape (B, 3), got {value!r}") from err
    if t.shape == (3,):
        t = t[None]
    if t.dim() != 2 or t.shape[1] != 3:
        raise ValueError(f"pivot must have shape (3,) or (B, 3), got shape {tuple(t.shape)}")
    return t  # (B or 1, 3)


def fov_to_intrinsics(fov_deg: AngleLike, *, exact: bool = False, device=None, dtype=None) -> Tensor:
    """Normalised intrinsics (B, 3, 3) from EG3D's field of view in degrees (a number gives B = 1).

    ``f = 1 / (tan(fov_deg * pi / 360) * sqrt(2))``, principal point (0.5, 0.5), no skew. ``fov_deg`` is EG3D's
    convention, the *diagonal* field of view of a square image: the horizontal field of view is
    ``2 * atan(0.5 / f)`` (18.837 deg -> f = 4.2634 -> 13.38 deg horizontal). The default reproduces EG3D's
    ``FOV_to_intrinsics`` exactly, including its constants pi ~ 3.14159 and sqrt(2) ~ 1.414 (computed in float64,
    then cast); ``exact=True`` uses math.pi and math.sqrt(2) (f = 4.26274 instead of 4.26339 at 18.837 deg).
    """
    device, dtype = _infer([fov_deg], device, dtype)
    fov = _vector("fov_deg", fov_deg, device, torch.float64)
    if not bool(((fov > 0) & (fov < 180)).all()):
        raise ValueError(f"fov_deg must be in (0, 180) degrees, got {fov.tolist()}")
    pi, sqrt2 = (math.pi, math.sqrt(2.0)) if exact else (EG3D_PI, EG3D_SQRT2)
    focal = 1.0 / (torch.tan(fov * pi / 360.0) * sqrt2)  # (B,)
    intrinsics = torch.zeros(fov.shape[0], 3, 3, dtype=torch.float64, device=device)
    intrinsics[:, 0, 0] = focal
    intrinsics[:, 1, 1] = focal
    intrinsics[:, :2, 2] = 0.5
    intrinsics[:, 2, 2] = 1.0
    return intrinsics.to(dtype)  # (B, 3, 3)


def intrinsics_to_fov(intrinsics: Tensor, *, exact: bool = False) -> Tensor:
    """EG3D field of view in degrees (B,) from normalised intrinsics (B, 3, 3) or (3, 3); uses fx (K[0, 0]).

    Inverse of :func:`fov_to_intrinsics` with the same ``exact`` choice.
    """
    k = torch.as_tensor(intrinsics)
    if k.dim() == 2:
        k = k[None]
    if k.dim() != 3 or tuple(k.shape[1:]) != (3, 3):
        raise ValueError(f"intrinsics must have shape (B, 3, 3) or (3, 3), got {tuple(k.shape)}")
    out_dtype = k.dtype if k.is_floating_point() else torch.float32
    focal = k[:, 0, 0].to(torch.float64)
    if not bool((focal > 0).all()):
        raise ValueError(f"intrinsics must have a positive focal length fx, got {focal.tolist()}")
    pi, sqrt2 = (math.pi, math.sqrt(2.0)) if exact else (EG3D_PI, EG3D_SQRT2)
    fov = torch.atan(1.0 / (focal * sqrt2)) * 360.0 / pi
    return fov.to(out_dtype)  # (B,)


def _normalize(vectors: Tensor) -> Tensor:
    return vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)


def _cam2world_from_forward(forward: Tensor, origin: Tensor, eps: float) -> Tensor:
    """EG3D's create_cam2world_matrix: world up (0, 1, 0), no roll. forward, origin: (B, 3) -> (B, 4, 4)."""
    length = torch.linalg.vector_norm(forward, dim=-1)
    if not bool((length > eps).all()):
        raise ValueError(f"look_at: origin and target coincide (|target - origin| = {length.tolist()})")
    forward = _normalize(forward)
    world_up = torch.tensor([0.0, 1.0, 0.0], dtype=forward.dtype, device=forward.device).expand_as(forward)
    side = torch.linalg.cross(world_up, forward, dim=-1)
    side_len = torch.linalg.vector_norm(side, dim=-1)
    if not bool((side_len > eps).all()):
        bad = torch.nonzero(side_len <= eps).flatten().tolist()
        raise ValueError(
            f"look_at: the viewing direction is parallel to world up (0, 1, 0) for batch indices {bad} "
            "(camera straight above or below its target), so 'right' is undefined; move the camera off the "
            "vertical axis (orbit_camera keeps pitch in [1e-5, pi - 1e-5] for this reason)"
        )
    right = -_normalize(side)
    down = _normalize(torch.linalg.cross(forward, right, dim=-1))  # camera +y (OpenCV), world-down-ish
    cam2world = torch.zeros(forward.shape[0], 4, 4, dtype=forward.dtype, device=forward.device)
    cam2world[:, :3, :3] = torch.stack([right, down, forward], dim=-1)
    cam2world[:, :3, 3] = origin
    cam2world[:, 3, 3] = 1.0
    return cam2world  # (B, 4, 4)


def look_at(origin: Tensor, target: Tensor, *, eps: float = 1e-7) -> Tensor:
    """OpenCV cam2world (B, 4, 4) of cameras at ``origin`` (B, 3) looking at ``target`` (B, 3) (batch 1 broadcasts).

    Same construction as EG3D's create_cam2world_matrix: right = -normalize(up x forward) with world up
    (0, 1, 0), camera +y = normalize(forward x right); no roll. Raises ValueError when a camera looks straight up
    or down (|up x forward| <= eps) or origin == target, instead of returning NaNs as EG3D does.
    """
    origin = torch.as_tensor(origin)
    target = torch.as_tensor(target)
    for name, t in (("origin", origin), ("target", target)):
        if t.dim() != 2 or t.shape[1] != 3:
            raise ValueError(f"{name} must have shape (B, 3), got {tuple(t.shape)}")
    device, dtype = _infer([origin, target], None, None)
    origin, target = origin.to(device, dtype), target.to(device, dtype)
    batch = _batch({"origin": origin, "target": target})
    origin, target = origin.expand(batch, 3), target.expand(batch, 3)
    return _cam2world_from_forward(target - origin, origin, eps)


def clamp_pitch(pitch: Tensor) -> Tensor:
    """Clamp pitch to [1e-5, pi - 1e-5] like LookAtPoseSampler."""
    return torch.clamp(pitch, PITCH_EPS, math.pi - PITCH_EPS)


def orbit_camera(
    yaw: AngleLike,
    pitch: AngleLike,
    *,
    radius: AngleLike,
    pivot: Sequence[Number] | Tensor,
    device=None,
    dtype=None,
) -> Tensor:
    """OpenCV cam2world (B, 4, 4) exactly like EG3D's ``LookAtPoseSampler.sample(yaw, pitch, pivot, radius)``.

    yaw, pitch: radians, numbers or (B,) tensors (EG3D convention, pi/2 frontal; pitch is clamped to
    [1e-5, pi - 1e-5]). radius: number or (B,): distance of the camera from the WORLD ORIGIN. pivot: (3,) or (B, 3)
    look-at target. dtype defaults to the first floating tensor argument's dtype, else float32.
    """
    device, dtype = _infer([yaw, pitch, radius, pivot], device, dtype)
    named = {
        "yaw": _vector("yaw", yaw, device, dtype),
        "pitch": _vector("pitch", pitch, device, dtype),
        "radius": _vector("radius", radius, device, dtype),
        "pivot": _pivot(pivot, device, dtype),
    }
    batch = _batch(named)
    theta = named["yaw"].expand(batch)
    v = clamp_pitch(named["pitch"].expand(batch)) / math.pi
    phi = torch.arccos(1 - 2 * v)
    r = named["radius"].expand(batch)
    origin = torch.stack(
        [
            r * torch.sin(phi) * torch.cos(math.pi - theta),
            r * torch.cos(phi),
            r * torch.sin(phi) * torch.sin(math.pi - theta),
        ],
        dim=-1,
    )  # (B, 3)
    forward = _normalize(named["pivot"] - origin)  # EG3D normalises here and again in create_cam2world_matrix
    return _cam2world_from_forward(forward, origin, eps=1e-7)


def orbit_angles(cam2world: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(yaw (B,), pitch (B,), radius (B,)) of the camera centres of cam2world (B, 4, 4), about the world origin.

    Inverts the placement of :func:`orbit_camera` (the look-at target is not recovered). yaw is in [0, 2 pi);
    it is arbitrary (pi) for a centre on the y axis.
    """
    c2w = torch.as_tensor(cam2world)
    if c2w.dim() != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"cam2world must have shape (B, 4, 4), got {tuple(c2w.shape)}")
    origin = c2w[:, :3, 3]
    radius = torch.linalg.vector_norm(origin, dim=-1)
    cos_phi = (origin[:, 1] / radius).clamp(-1.0, 1.0)
    pitch = math.pi * (1 - cos_phi) / 2
    yaw = torch.remainder(math.pi - torch.atan2(origin[:, 2], origin[:, 0]), 2 * math.pi)
    return yaw, pitch, radius


def pitch_to_elevation(pitch: Tensor | float) -> Tensor:
    """Elevation (radians above the world x-z plane, seen from the origin) at EG3D pitch v: arcsin(1 - 2v/pi)."""
    return torch.asin(1 - 2 * torch.as_tensor(pitch) / math.pi)


def elevation_to_pitch(elevation: Tensor | float) -> Tensor:
    """EG3D pitch that places the camera at the given elevation (inverse of :func:`pitch_to_elevation`)."""
    return math.pi * (1 - torch.sin(torch.as_tensor(elevation))) / 2


def camera_label(
    yaw: AngleLike,
    pitch: AngleLike,
    *,
    radius: AngleLike,
    pivot: Sequence[Number] | Tensor,
    fov_deg: AngleLike,
    exact: bool = False,
    device=None,
    dtype=None,
) -> Tensor:
    """EG3D label (B, 25) of orbit cameras: :func:`orbit_camera` + :func:`fov_to_intrinsics` (``exact`` as there)."""
    cam2world = orbit_camera(yaw, pitch, radius=radius, pivot=pivot, device=device, dtype=dtype)
    intrinsics = fov_to_intrinsics(fov_deg, exact=exact, device=cam2world.device, dtype=cam2world.dtype)
    return label_from_matrices(cam2world, intrinsics)  # (B, 25)


def frontal_label(
    radius: AngleLike,
    pivot: Sequence[Number] | Tensor,
    fov_deg: AngleLike,
    *,
    batch_size: int = 1,
    exact: bool = False,
    device=None,
    dtype=None,
) -> Tensor:
    """EG3D label (batch_size, 25) of the frontal camera (yaw = pitch = pi/2), EG3D's conditioning camera."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    label = camera_label(
        FRONTAL_YAW, FRONTAL_PITCH, radius=radius, pivot=pivot, fov_deg=fov_deg, exact=exact, device=device, dtype=dtype
    )
    return label.expand(batch_size, -1).clone()
