"""Camera conventions of adapt3d. This docstring is the single place where they are written down.

World frame
    Right-handed, +y up. A frontal face (FFHQ) or object sits near the origin facing +z, so the frontal camera sits
    on the +z axis and looks towards -z. Its image shows world +x on the right and world +y at the top.

Camera frame (OpenCV, the frame of every ``cam2world`` in this package)
    +x right (image columns), +y down (image rows), +z forward (the viewing direction, depth > 0 in front).
    ``cam2world`` is a rigid 4x4 matrix ``[[R, t], [0, 0, 0, 1]]`` whose rotation columns are the camera's
    (right, down, forward) axes in world coordinates and whose translation ``t`` is the camera centre.
    Example: the frontal EG3D camera at radius 2.7 has ``R ~= diag(1, -1, -1)`` and ``t = (0, 0, 2.7)``.

Camera frame (OpenGL / Blender / NeRF), only through :func:`opencv_to_opengl` / :func:`opengl_to_opencv`
    +x right, +y up, -z forward. The two frames differ by flipping the camera y and z axes: the world-space camera
    centre is the same, the 2nd and 3rd rotation columns change sign.

Intrinsics
    ``K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]]`` normalised by the image size: row 0 divided by the width W,
    row 1 by the height H, so the principal point of a centred camera is (0.5, 0.5) and ``K`` is resolution-free.
    A camera-frame point (x, y, z) projects to ``u = fx * x / z + s * y / z + cx``, ``v = fy * y / z + cy`` with
    (u, v) in [0, 1] over the image; (0, 0) is the top-left corner of the top-left pixel and the centre of pixel
    (row i, column j) is at ``u = (j + 0.5) / W``, ``v = (i + 0.5) / H`` (EG3D's ray sampler uses the same centres).
    In pixel units (:func:`intrinsics_to_pixels`) this is the "pixel centre at j + 0.5" convention, so a centred
    principal point is ``cx = W / 2`` (OpenCV's own calibration convention would say ``(W - 1) / 2``).

EG3D camera label, ``c`` with 25 numbers per camera
    ``c[:16]`` = the 4x4 OpenCV ``cam2world`` flattened row-major, ``c[16:25]`` = the normalised 3x3 intrinsics
    flattened row-major. The same vector conditions EG3D's mapping network and discriminator and defines the rays.

Angles (see :mod:`adapt3d.cameras.lookat`)
    Orbit cameras use EG3D's LookAtPoseSampler angles in radians: yaw ``h`` and pitch ``v`` with
    ``h = v = pi/2`` frontal; larger yaw moves the camera towards world +x, smaller pitch moves it up (+y).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "LABEL_DIM",
    "label_from_matrices",
    "matrices_from_label",
    "opencv_to_opengl",
    "opengl_to_opencv",
    "world_to_camera",
    "intrinsics_to_pixels",
    "intrinsics_from_pixels",
    "project_points",
    "mirror_label",
    "warp_label",
]

LABEL_DIM = 25


def _as_float_tensor(name: str, value: object) -> Tensor:
    """``value`` as a floating tensor (array-likes are converted to float32; float tensors keep their dtype)."""
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"{name} must be a tensor or array-like of numbers, got {type(value).__name__}") from err
    if not value.is_floating_point():
        value = value.to(torch.float32)
    return value


def _check_batched(name: str, value: Tensor, tail: tuple[int, ...], *, allow_unbatched: bool = False) -> Tensor:
    """Check ``value`` has shape (B, *tail) (or ``tail`` when ``allow_unbatched``); returns the batched view."""
    if allow_unbatched and tuple(value.shape) == tail:
        return value.unsqueeze(0)
    if value.dim() != len(tail) + 1 or tuple(value.shape[1:]) != tail:
        expected = ", ".join(str(d) for d in tail)
        also = f" or ({expected})" if allow_unbatched else ""
        raise ValueError(f"{name} must have shape (B, {expected}){also}, got {tuple(value.shape)}")
    return value


def _check_size(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of pixels, got {value!r}")
    return float(value)


def _broadcast_batch(names: Sequence[str], tensors: Sequence[Tensor]) -> list[Tensor]:
    """Expand tensors whose batch size is 1 to the largest batch size; error on any other mismatch."""
    sizes = [t.shape[0] for t in tensors]
    batch = max(sizes)
    out = []
    for name, t, b in zip(names, tensors, sizes):
        if b not in (1, batch):
            shown = ", ".join(f"{n}: {s}" for n, s in zip(names, sizes))
            raise ValueError(f"batch sizes do not match ({shown}); {name} must have batch size 1 or {batch}")
        out.append(t.expand(batch, *t.shape[1:]))
    return out


def label_from_matrices(cam2world: Tensor, intrinsics: Tensor) -> Tensor:
    """EG3D camera label from matrices.

    cam2world: (B, 4, 4) OpenCV cam2world; intrinsics: (B, 3, 3), (1, 3, 3) or (3, 3) normalised intrinsics
    (broadcast over B). Returns the label (B, 25) in cam2world's dtype.
    """
    cam2world = _check_batched("cam2world", _as_float_tensor("cam2world", cam2world), (4, 4))
    intrinsics = _check_batched(
        "intrinsics", _as_float_tensor("intrinsics", intrinsics), (3, 3), allow_unbatched=True
    )
    cam2world, intrinsics = _broadcast_batch(("cam2world", "intrinsics"), (cam2world, intrinsics))
    intrinsics = intrinsics.to(device=cam2world.device, dtype=cam2world.dtype)
    return torch.cat([cam2world.reshape(-1, 16), intrinsics.reshape(-1, 9)], dim=1)  # (B, 25)


def matrices_from_label(label: Tensor) -> tuple[Tensor, Tensor]:
    """Split EG3D labels (B, 25) or (25,) into cam2world (B, 4, 4) and normalised intrinsics (B, 3, 3)."""
    label = _check_batched("label", _as_float_tensor("label", label), (LABEL_DIM,), allow_unbatched=True)
    cam2world = label[:, :16].reshape(-1, 4, 4)  # (B, 4, 4)
    intrinsics = label[:, 16:].reshape(-1, 3, 3)  # (B, 3, 3)
    return cam2world, intrinsics


def _flip_camera_yz(name: str, cam2world: Tensor) -> Tensor:
    cam2world = _check_batched(name, _as_float_tensor(name, cam2world), (4, 4))
    # cam2world @ diag(1, -1, -1, 1): negate the camera y and z columns, keep the centre.
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=cam2world.dtype, device=cam2world.device)
    return cam2world * signs  # (B, 4, 4)


def opencv_to_opengl(cam2world: Tensor) -> Tensor:
    """OpenCV cam2world (B, 4, 4) -> OpenGL cam2world (B, 4, 4) (camera y and z flipped; its own inverse)."""
    return _flip_camera_yz("cam2world", cam2world)


def opengl_to_opencv(cam2world: Tensor) -> Tensor:
    """OpenGL cam2world (B, 4, 4) -> OpenCV cam2world (B, 4, 4) (the same flip as :func:`opencv_to_opengl`)."""
    return _flip_camera_yz("cam2world", cam2world)


def world_to_camera(cam2world: Tensor) -> Tensor:
    """Rigid inverse of cam2world (B, 4, 4): world2cam = [[R^T, -R^T t], [0, 1]]  # (B, 4, 4).

    Assumes a rigid transform (orthonormal rotation, bottom row 0 0 0 1), as every EG3D camera is.
    """
    cam2world = _check_batched("cam2world", _as_float_tensor("cam2world", cam2world), (4, 4))
    rot_t = cam2world[:, :3, :3].transpose(1, 2)  # (B, 3, 3)
    trans = cam2world[:, :3, 3:]  # (B, 3, 1)
    world2cam = torch.zeros_like(cam2world)
    world2cam[:, :3, :3] = rot_t
    world2cam[:, :3, 3:] = -(rot_t @ trans)
    world2cam[:, 3, 3] = 1.0
    return world2cam


def _scale_intrinsics(name: str, intrinsics: Tensor, sx: float, sy: float) -> Tensor:
    intrinsics = _as_float_tensor(name, intrinsics)
    if intrinsics.dim() < 2 or tuple(intrinsics.shape[-2:]) != (3, 3):
        raise ValueError(f"{name} must have shape (..., 3, 3), got {tuple(intrinsics.shape)}")
    scale = torch.tensor([sx, sy, 1.0], dtype=intrinsics.dtype, device=intrinsics.device)
    return intrinsics * scale[:, None]  # rows scaled: diag(sx, sy, 1) @ K


def intrinsics_to_pixels(intrinsics: Tensor, width: float, height: float) -> Tensor:
    """Normalised intrinsics (..., 3, 3) -> pixel intrinsics for a W x H image (row 0 * W, row 1 * H)."""
    return _scale_intrinsics("intrinsics", intrinsics, _check_size("width", width), _check_size("height", height))


def intrinsics_from_pixels(intrinsics: Tensor, width: float, height: float) -> Tensor:
    """Pixel intrinsics (..., 3, 3) of a W x H image -> normalised intrinsics (row 0 / W, row 1 / H)."""
    w, h = _check_size("width", width), _check_size("height", height)
    return _scale_intrinsics("intrinsics", intrinsics, 1.0 / w, 1.0 / h)


def project_points(points_world: Tensor, cam2world: Tensor, intrinsics: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points through pinhole cameras.

    points_world: (B, N, 3); cam2world: (B, 4, 4); intrinsics: (B, 3, 3) normalised (batch size 1 broadcasts).
    Returns uv (B, N, 2) in normalised image coordinates (pixel column j spans [j/W, (j+1)/W], so its centre is
    at u = (j + 0.5) / W) and depth (B, N) = camera-frame z. Points with depth <= 0 are behind the camera; their
    uv is meaningless (inf/nan at depth 0) and callers should mask them.
    """
    points_world = _as_float_tensor("points_world", points_world)
    if points_world.dim() != 3 or points_world.shape[-1] != 3:
        raise ValueError(f"points_world must have shape (B, N, 3), got {tuple(points_world.shape)}")
    cam2world = _check_batched("cam2world", _as_float_tensor("cam2world", cam2world), (4, 4))
    intrinsics = _check_batched("intrinsics", _as_float_tensor("intrinsics", intrinsics), (3, 3))
    points_world, cam2world, intrinsics = _broadcast_batch(
        ("points_world", "cam2world", "intrinsics"), (points_world, cam2world, intrinsics)
    )
    dtype = points_world.dtype
    world2cam = world_to_camera(cam2world.to(dtype))
    points_cam = points_world @ world2cam[:, :3, :3].transpose(1, 2) + world2cam[:, None, :3, 3]  # (B, N, 3)
    depth = points_cam[..., 2]  # (B, N)
    homogeneous = points_cam / depth[..., None]  # (B, N, 3), last coordinate 1
    uv = homogeneous @ intrinsics.to(dtype)[:, :2, :].transpose(1, 2)  # (B, N, 2)
    return uv, depth


def mirror_label(label: Tensor) -> Tensor:
    """The camera mirrored across the world plane x = 0, as an EG3D label (B, 25) or (25,) (same shape back).

    With S = diag(-1, 1, 1, 1): cam2world' = S @ cam2world @ S, i.e. rotation entries R[0, 1:], R[1:, 0] and the
    centre's x change sign (flattened indices 1, 2, 3, 4, 8); the result is again a proper rotation. The
    intrinsics become cx' = 1 - cx and skew' = -skew. Rendering the mirrored scene with this camera gives the
    left-right flipped image (u' = 1 - u, v' = v), which is the label that goes with an x-flipped training image.
    Assumes normalised intrinsics.
    """
    tensor = _as_float_tensor("label", label)
    unbatched = tensor.dim() == 1
    batched = _check_batched("label", tensor, (LABEL_DIM,), allow_unbatched=True)
    signs = torch.ones(LABEL_DIM, dtype=batched.dtype, device=batched.device)
    signs[[1, 2, 3, 4, 8]] = -1.0  # row 0 and column 0 of cam2world except (0, 0); 12 is always 0
    signs[17] = -1.0  # skew
    out = batched * signs
    out[:, 18] = 1.0 - batched[:, 18]  # cx
    return out[0] if unbatched else out


def warp_label(label: Tensor, matrix: Tensor) -> Tensor:
    """The camera that sees an image resampled by an affine map of the image plane, as an EG3D label (B, 25).

    ``matrix`` (B, 2, 3) = ``[A | t]`` maps a pixel of the *new* image to where it reads the *old* one, in centred
    normalised coordinates (``u - 0.5, v - 0.5``): ``new(p) = old(A @ p + t)``, with ``det(A) > 0`` (a mirror image
    is :func:`mirror_label`). The new camera has the same centre; with ``K_c`` the intrinsics in centred
    coordinates, its intrinsics and roll about the optical axis come from ``M^-1 @ K_c = K' @ [[Q, 0], [0, 1]]``
    (RQ decomposition: ``K'`` upper triangular with positive diagonal, skew allowed; ``Q`` a 2D rotation), and
    ``R' = R @ blockdiag(Q^T, 1)``. So every pixel of the new image gets exactly the ray that the old camera had at
    the point it reads: image rotations become a camera roll, scalings the focal lengths, translations the
    principal point, anisotropic scalings fx/fy and skew.
    """
    tensor = _as_float_tensor("label", label)
    batched = _check_batched("label", tensor, (LABEL_DIM,))
    m = _check_batched("matrix", _as_float_tensor("matrix", matrix).to(batched), (2, 3))
    batched, m = _broadcast_batch(("label", "matrix"), (batched, m))
    A, t = m[:, :, :2], m[:, :, 2]
    if not bool((torch.linalg.det(A) > 0).all()):
        raise ValueError("warp_label: the 2x2 part of every matrix needs a positive determinant (a mirror image "
                         "is mirror_label)")
    cam2world, K = matrices_from_label(batched)
    K2 = K[:, :2, :2]  # (B, 2, 2) [[fx, s], [0, fy]]
    c = K[:, :2, 2] - 0.5  # (B, 2) principal point, centred
    A_inv = torch.linalg.inv(A)
    B = A_inv @ K2  # linear part of M^-1 K_c
    b = (A_inv @ (c - t)[:, :, None])[:, :, 0]  # its translation: the new (centred) principal point
    n = torch.linalg.vector_norm(B[:, 1], dim=-1)  # RQ of B: last row = u22 * q2
    q2 = B[:, 1] / n[:, None]
    q1 = torch.stack([q2[:, 1], -q2[:, 0]], -1)
    Q = torch.stack([q1, q2], 1)  # (B, 2, 2) rotation, det +1
    K_new = torch.zeros_like(K)
    K_new[:, 0, 0] = (B[:, 0] * q1).sum(-1)
    K_new[:, 0, 1] = (B[:, 0] * q2).sum(-1)
    K_new[:, 1, 1] = n
    K_new[:, :2, 2] = b + 0.5
    K_new[:, 2, 2] = 1.0
    roll = torch.eye(4, dtype=K.dtype, device=K.device).repeat(len(K), 1, 1)
    roll[:, :2, :2] = Q.transpose(1, 2)
    return label_from_matrices(cam2world @ roll, K_new)
