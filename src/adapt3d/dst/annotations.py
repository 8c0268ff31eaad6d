"""3D-DST annotations: cameras from 3D-DST angles, K/R/t, boxes, keypoints, and the PASCAL3D+/NeMo conventions.

This docstring is the single place where the 3D-DST and PASCAL3D+/NeMo conventions of adapt3d are written down.

Object frame (3D-DST / Blender / PASCAL3D+): +z up; meshes are converted and normalised into it by
:mod:`adapt3d.data.cad` (largest bounding-box side 1, box centre at the origin; y-up files: (x, y, z)_object =
(x, -z, y)_file).

3D-DST angles (radians in every annotation): azimuth ``theta`` (from +x towards +y), polar angle ``phi`` (from +z),
``elevation = pi/2 - phi``, in-plane rotation ``theta_inplane`` (3D-DST: always 0), distance ``d``. The camera centre
is ``C = d (sin phi cos theta, sin phi sin theta, cos phi)``; it looks at the origin with the image "up" as close to
+z as possible (Blender's TRACK_TO, -Z to the target, Y up). We build this camera with
:func:`adapt3d.cameras.orbit_camera` in the y-up file frame (EG3D yaw ``h = theta + pi``, pitch ``v = pi (1 - cos
phi) / 2``, so that its polar angle from +y equals ``phi``) and rotate it into the object frame.

In-plane rotation: with ``theta_inplane = a`` the image is rotated by ``a`` counter-clockwise as seen on screen, the
PASCAL3D+ convention (its toolbox rotates the projected points by ``[[cos a, -sin a], [sin a, cos a]]`` in a y-up
image frame). In OpenCV camera coordinates ``world2cam = Rz(-a) @ world2cam_0`` with ``Rz(b) = [[cos b, -sin b, 0],
[sin b, cos b, 0], [0, 0, 1]]``.

Intrinsics: Blender's 35 mm lens on a 32 mm sensor (3D-DST's camera): ``f = 35 / 32 * max(W, H)`` pixels (560 px at
512 px, horizontal FOV 49.1 deg), principal point at the image centre ``(W / 2, H / 2)``.

Pixel coordinates (K in pixels, boxes, keypoints): ``(0, 0)`` is the top-left corner of the top-left pixel, pixel
centres are at ``j + 0.5`` (the :mod:`adapt3d.cameras` convention), so ``u = K[0] . (R X + t) / (R X + t)_z`` lands in
pixel column ``floor(u)``. ``R`` (3, 3) and ``t`` (3,) map object-frame points to the OpenCV camera frame (x right,
y down, z forward); ``cam2world`` is their inverse; ``eg3d_label`` is the 25-number EG3D label of the same camera in
the y-up file frame (normalised intrinsics), ready for :mod:`adapt3d.cameras`.

PASCAL3D+ / NeMo (``get_transformation_matrix``, the PASCAL3D+ toolbox): camera centre
``d (cos e sin a, -cos e cos a, sin e)`` in the same z-up object frame, hence

    azimuth_pascal = (theta + pi/2) mod 2 pi,   elevation_pascal = pi/2 - phi,
    theta_pascal = theta_inplane,               distance_pascal = d  (in normalised-object units).

3D-DST's own pose loader uses ``azimuth = theta`` without the pi/2; its released KCF labels are therefore shifted by
90 deg against PASCAL3D+. Use :func:`pascal3d_from_dst` before mixing the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from adapt3d.cameras import label_from_matrices, orbit_camera

__all__ = ["BLENDER_FOCAL_MM", "BLENDER_SENSOR_MM", "DstCamera", "dst_camera", "dst_intrinsics_px",
           "pascal3d_from_dst", "dst_from_pascal3d", "pascal3d_project", "project_px", "bbox_from_mask",
           "keypoint_annotations", "FILE_FROM_OBJECT"]

BLENDER_FOCAL_MM = 35.0
BLENDER_SENSOR_MM = 32.0
FILE_FROM_OBJECT = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # file = F @ object


@dataclass
class DstCamera:
    """One annotated camera: pixel intrinsics, object->camera extrinsics and the matching matrices."""

    K: np.ndarray  # (3, 3) pixel intrinsics
    R: np.ndarray  # (3, 3) object frame -> OpenCV camera
    t: np.ndarray  # (3,)
    cam2world: np.ndarray  # (4, 4) OpenCV cam2world in the object frame
    intrinsics: np.ndarray  # (3, 3) normalised (adapt3d.cameras convention)
    eg3d_label: np.ndarray  # (25,) EG3D label in the y-up file frame
    width: int
    height: int


def dst_intrinsics_px(width: int, height: int, focal_mm: float = BLENDER_FOCAL_MM,
                      sensor_mm: float = BLENDER_SENSOR_MM) -> np.ndarray:
    """Pixel K (3, 3) of 3D-DST's Blender camera (sensor fit on the larger side, square pixels, centred)."""
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise ValueError(f"width and height must be positive ints, got {width!r} x {height!r}")
    f = focal_mm / sensor_mm * max(width, height)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def _rot_z(b: float) -> np.ndarray:
    c, s = math.cos(b), math.sin(b)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def dst_camera(azimuth: float, polar: float, roll: float, distance: float, width: int, height: int,
               focal_mm: float = BLENDER_FOCAL_MM, sensor_mm: float = BLENDER_SENSOR_MM) -> DstCamera:
    """The camera of 3D-DST angles (radians; see the module docstring) for a ``width`` x ``height`` image."""
    if not 0 < polar < math.pi:
        raise ValueError(f"polar angle must be in (0, pi) (the camera cannot look straight down), got {polar}")
    if not distance > 0:
        raise ValueError(f"distance must be > 0, got {distance}")
    pitch = math.pi * (1.0 - math.cos(polar)) / 2.0
    c2w_file = orbit_camera(azimuth + math.pi, pitch, radius=distance, pivot=(0.0, 0.0, 0.0),
                            dtype=torch.float64)[0].numpy()  # (4, 4) OpenCV, y-up file frame
    rot_file = c2w_file[:3, :3] @ _rot_z(-roll).T  # roll: world2cam = Rz(-a) @ world2cam_0
    c2w_file = c2w_file.copy()
    c2w_file[:3, :3] = rot_file
    object_from_file = FILE_FROM_OBJECT.T
    c2w = np.eye(4)
    c2w[:3, :3] = object_from_file @ rot_file
    c2w[:3, 3] = object_from_file @ c2w_file[:3, 3]
    R = c2w[:3, :3].T
    t = -R @ c2w[:3, 3]
    K = dst_intrinsics_px(width, height, focal_mm, sensor_mm)
    k_norm = K.copy()
    k_norm[0] /= width
    k_norm[1] /= height
    label = label_from_matrices(torch.from_numpy(c2w_file)[None], torch.from_numpy(k_norm))[0].numpy()
    return DstCamera(K=K, R=R, t=t, cam2world=c2w, intrinsics=k_norm, eg3d_label=label, width=width, height=height)


def project_px(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame points (N, 3) -> pixel coordinates (N, 2) and camera depth (N,) (see pixel convention above)."""
    cam = np.asarray(points, dtype=np.float64) @ R.T + t
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = (cam @ K.T)[:, :2] / z[:, None]
    return uv, z


def pascal3d_from_dst(azimuth: float, polar: float, roll: float, distance: float) -> dict[str, float]:
    """3D-DST angles (radians) -> PASCAL3D+/NeMo ``{azimuth, elevation, theta, distance}`` (radians)."""
    return {"azimuth": (azimuth + math.pi / 2) % (2 * math.pi), "elevation": math.pi / 2 - polar, "theta": roll,
            "distance": distance}


def dst_from_pascal3d(azimuth: float, elevation: float, theta: float, distance: float) -> dict[str, float]:
    """PASCAL3D+/NeMo angles (radians) -> 3D-DST ``{azimuth, polar, roll, distance}`` (inverse of the above)."""
    return {"azimuth": (azimuth - math.pi / 2) % (2 * math.pi), "polar": math.pi / 2 - elevation, "roll": theta,
            "distance": distance}


def pascal3d_project(points: np.ndarray, azimuth: float, elevation: float, theta: float, distance: float,
                     focal_px: float, principal: tuple[float, float]) -> np.ndarray:
    """Reference PASCAL3D+ projection of object-frame points (N, 3) -> pixels (N, 2), written from its toolbox's
    formulas (camera looking along -z of R, 2-D in-plane rotation, image y flipped). Used to check conversions."""
    a, e = azimuth, elevation
    centre = np.array([distance * math.cos(e) * math.sin(a), -distance * math.cos(e) * math.cos(a),
                       distance * math.sin(e)])
    a, e = -a, -(math.pi / 2 - e)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    rot = rx @ rz
    cam = (np.asarray(points, dtype=np.float64) - centre) @ rot.T
    xy = focal_px * cam[:, :2] / (-cam[:, 2:3])
    r2 = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    xy = xy @ r2.T
    return np.stack([xy[:, 0] + principal[0], -xy[:, 1] + principal[1]], 1)


def bbox_from_mask(mask: np.ndarray) -> list[float] | None:
    """COCO box ``[x, y, w, h]`` (pixel edges) of the foreground of mask (H, W); None when the mask is empty."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def keypoint_annotations(keypoints: dict[str, np.ndarray], camera: DstCamera, depth: np.ndarray,
                         tolerance: float = 0.01) -> list[dict]:
    """Project object-frame keypoints; ``visible`` when in front of the camera, inside the image and not occluded.

    Occlusion test: the keypoint's depth is at most ``tolerance`` (object units) behind the farthest surface in the
    3 x 3 pixel neighbourhood of its pixel (background counts as infinitely far), so points on the surface and on the
    silhouette count as visible and points hidden behind other parts do not.
    """
    if not keypoints:
        return []
    names = list(keypoints)
    uv, z = project_px(np.stack([keypoints[n] for n in names]), camera.K, camera.R, camera.t)
    h, w = depth.shape
    far = np.where(depth > 0, depth, np.inf)
    out = []
    for name, (u, v), zk in zip(names, uv, z):
        inside = bool(zk > 0 and 0 <= u < w and 0 <= v < h)
        visible = False
        if inside:
            j, i = int(u), int(v)
            patch = far[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
            visible = bool(zk <= patch.max() + tolerance)
        out.append({"name": name, "xyz": [float(c) for c in keypoints[name]], "uv": [float(u), float(v)],
                    "depth": float(zk), "in_image": inside, "visible": visible})
    return out
