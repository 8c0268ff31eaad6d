"""3D-DST's own annotation format (``annotation/NNN.npy``, a pickled dict per rendered view), both ways.

Keys written by 3D-DST's Blender script (``scripts/blender_render.py`` of ``wufeim/DST3D``), with their meaning in
adapt3d's names (:mod:`adapt3d.dst.annotations` has the frames):

=====================  ======================================================================================
``theta``              **azimuth** (rad, from +x towards +y, after the model's alignment offset). NOT the
                       in-plane rotation that PASCAL3D+ calls ``theta``.
``phi``                **polar angle** from +z (rad); elevation = pi/2 - phi
``dist``               camera distance (normalised object units)
``camera_rotation``    **in-plane rotation** (rad; always 0 in 3D-DST), adapt3d's ``inplane_rotation``
``principal``          principal point in pixels (3D-DST writes [256, 256] for its 512 x 512 renders)
``source``             the collection ('shapenet' or 'objaverse' in 3D-DST; adapt3d writes the real one)
``shape_id``           model id
``rendering_scale``    ``rendering_offset``: the normalisation p = scale * x + offset
``azimuth``            ``elevation``: the model list's alignment offsets (degrees)
``pose_sampling``      ``strength``: the model list's strategy and strength
``matrix_world``       4 x 4 Blender camera-to-world (camera looks along its -z, y up)
``modelview_matrix``   its inverse
``projection_matrix``  4 x 4 OpenGL-style projection (lens 35 mm, sensor 32 mm, clip 0.1-100, Blender's camera
                       defaults)
``focal_length``       ``sensor_width``, ``sensor_height``: 35, 32, 24 (mm)
=====================  ======================================================================================

3D-DST's pose loader reads ``azimuth = theta``, ``elevation = pi/2 - phi``, in-plane 0; its images are
``<class>/<model>/<data_name>/NNN_SS.png`` with the annotation at ``<class>/<model>/annotation/NNN.npy``. adapt3d's
synth writes that file next to its JSON annotations (``annotation/VVV.npy``; images in ``image/``, so
``--data_name image``), and :func:`read_dst3d_npy` turns a 3D-DST file into adapt3d's fields (K, R, t rebuilt from
the angles; the stored ``matrix_world`` is checked against them).

Reading never unpickles arbitrary objects: the ``.npy`` payload is read with an unpickler that only builds numpy
arrays, scalars and plain containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path

import numpy as np

from adapt3d.dst.annotations import BLENDER_FOCAL_MM, BLENDER_SENSOR_MM, dst_camera, pascal3d_from_dst
from adapt3d.utils.io import atomic_path

__all__ = ["DST3D_KEYS", "BLENDER_SENSOR_HEIGHT_MM", "BLENDER_CLIP", "UnsafeNpyError", "load_npy_dict",
           "dst3d_record", "write_dst3d_npy", "read_dst3d_npy", "blender_matrix_world", "blender_projection"]

DST3D_KEYS = ("theta", "phi", "dist", "camera_rotation", "principal", "source", "shape_id", "rendering_scale",
              "rendering_offset", "azimuth", "elevation", "pose_sampling", "strength", "matrix_world",
              "modelview_matrix", "projection_matrix", "focal_length", "sensor_width", "sensor_height")
BLENDER_SENSOR_HEIGHT_MM = 24.0
BLENDER_CLIP = (0.1, 100.0)
_OPENCV_TO_BLENDER = np.diag([1.0, -1.0, -1.0])  # camera axes: OpenCV (x right, y down, z fwd) -> Blender


class UnsafeNpyError(ValueError):
    """A .npy file holds pickled objects other than numpy arrays, scalars and plain containers."""


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise UnsafeNpyError(f"refused to load global {module}.{name}: only numpy arrays and scalars are allowed")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafeNpyError("refused a persistent id")


def load_npy_dict(path: str | Path) -> dict:
    """The dict stored by ``np.save(path, some_dict)``, read without executing pickled code."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
        except ValueError as e:
            raise ValueError(f"{path} is not a .npy file ({e})") from e
        if dtype != np.dtype(object):
            raise ValueError(f"{path}: expected a pickled dict (object array), got dtype {dtype}")
        try:
            array = _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
        except UnsafeNpyError as e:
            raise UnsafeNpyError(f"{path}: {e}") from None
        except Exception as e:  # noqa: BLE001 - truncated or corrupt payloads raise many types
            raise ValueError(f"{path}: the pickled payload could not be read ({type(e).__name__}: {e})") from e
    value = array[()] if isinstance(array, np.ndarray) and array.shape == () else array
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a dict, got {type(value).__name__} of shape {shape}")
    return value


def blender_matrix_world(cam2world_opencv: np.ndarray) -> np.ndarray:
    """Blender's camera matrix_world (4, 4) from an OpenCV cam2world (4, 4) in the same (object) frame."""
    out = np.array(cam2world_opencv, dtype=np.float64, copy=True)
    out[:3, :3] = out[:3, :3] @ _OPENCV_TO_BLENDER
    return out


def blender_projection(width: int, height: int, focal_mm: float = BLENDER_FOCAL_MM,
                       sensor_mm: float = BLENDER_SENSOR_MM, clip: tuple[float, float] = BLENDER_CLIP) -> np.ndarray:
    """Blender's ``calc_matrix_camera`` for a perspective camera with sensor fit AUTO (OpenGL convention)."""
    near, far = clip
    sx = 2.0 * focal_mm / sensor_mm
    if width >= height:
        px, py = sx, sx * width / height
    else:
        px, py = sx * height / width, sx
    return np.array([[px, 0.0, 0.0, 0.0], [0.0, py, 0.0, 0.0],
                     [0.0, 0.0, -(far + near) / (far - near), -2.0 * far * near / (far - near)],
                     [0.0, 0.0, -1.0, 0.0]])


def dst3d_record(annotation: dict) -> dict:
    """3D-DST's .npy dict of one adapt3d view annotation (``view/VVV.json`` or an image annotation)."""
    w, h = int(annotation["width"]), int(annotation["height"])
    c2w = np.asarray(annotation["cam2world"], dtype=np.float64)
    mw = blender_matrix_world(c2w)
    align = annotation.get("alignment", {})
    principal = np.array([w / 2, h / 2])
    if float(principal[0]).is_integer() and float(principal[1]).is_integer():
        principal = principal.astype(np.int64)
    return {
        "theta": float(annotation["azimuth"]),
        "phi": float(annotation["polar"]),
        "dist": float(annotation["distance"]),
        "camera_rotation": float(annotation.get("inplane_rotation", annotation.get("theta", 0.0))),
        "principal": principal,
        "source": annotation.get("collection", "file"),
        "shape_id": annotation["mesh_id"],
        "rendering_scale": float(annotation["rendering_scale"]),
        "rendering_offset": np.asarray(annotation["rendering_offset"], dtype=np.float64),
        "azimuth": float(align.get("azimuth_deg", 0.0)),
        "elevation": float(align.get("elevation_deg", 0.0)),
        "pose_sampling": int(annotation.get("pose_sampling", 1)),
        "strength": int(annotation.get("strength", 1)),
        "matrix_world": mw,
        "modelview_matrix": np.linalg.inv(mw),
        "projection_matrix": blender_projection(w, h),
        "focal_length": BLENDER_FOCAL_MM,
        "sensor_width": BLENDER_SENSOR_MM,
        "sensor_height": BLENDER_SENSOR_HEIGHT_MM,
    }


def write_dst3d_npy(path: str | Path, annotation: dict) -> dict:
    """Write 3D-DST's ``annotation/NNN.npy`` for an adapt3d view annotation (atomically); returns the dict."""
    record = dst3d_record(annotation)
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, record, allow_pickle=True)
    return record


def read_dst3d_npy(path: str | Path, width: int | None = None, height: int | None = None,
                   tolerance: float = 1e-4) -> dict:
    """adapt3d's pose fields of a 3D-DST ``.npy`` annotation (safe reading; see the module docstring).

    Image size: ``width``/``height`` when given, else twice the stored principal point (3D-DST: 512). Returns
    ``azimuth``, ``polar``, ``elevation``, ``inplane_rotation``, ``distance`` (3D-DST angles, rad), ``pascal3d``,
    ``K``, ``R``, ``t``, ``cam2world`` (rebuilt from the angles), the alignment and model fields, and
    ``matrix_world_error``: the largest difference between the stored ``matrix_world`` and the rebuilt one (a
    ValueError when it exceeds ``tolerance``, i.e. the file does not follow 3D-DST's conventions).
    """
    path = Path(path)
    d = load_npy_dict(path)
    missing = [k for k in ("theta", "phi", "dist") if k not in d]
    if missing:
        raise ValueError(f"{path}: not a 3D-DST annotation (missing {', '.join(missing)})")
    principal = np.asarray(d.get("principal", (256, 256)), dtype=np.float64).reshape(-1)
    w = int(width or round(2 * principal[0]))
    h = int(height or round(2 * principal[1]))
    azimuth, polar = float(d["theta"]), float(d["phi"])
    roll, distance = float(d.get("camera_rotation", 0.0) or 0.0), float(d["dist"])
    cam = dst_camera(azimuth, min(max(polar, 1e-6), math.pi - 1e-6), roll, distance, w, h)
    error = None
    if "matrix_world" in d:
        error = float(np.abs(np.asarray(d["matrix_world"], dtype=np.float64) - blender_matrix_world(cam.cam2world))
                      .max())
        if error > tolerance:
            raise ValueError(f"{path}: its matrix_world differs from the camera of its angles by {error:.3g}; not "
                             "3D-DST's convention")
    return {
        "azimuth": azimuth % (2 * math.pi), "polar": polar, "elevation": math.pi / 2 - polar,
        "inplane_rotation": roll, "distance": distance,
        "pascal3d": pascal3d_from_dst(azimuth, polar, roll, distance),
        "K": cam.K.tolist(), "R": cam.R.tolist(), "t": cam.t.tolist(), "cam2world": cam.cam2world.tolist(),
        "width": w, "height": h, "mesh_id": str(d.get("shape_id", "")), "collection": str(d.get("source", "")),
        "rendering_scale": float(d.get("rendering_scale", 1.0)),
        "rendering_offset": np.asarray(d.get("rendering_offset", np.zeros(3)), dtype=np.float64).tolist(),
        "alignment": {"azimuth_deg": float(d.get("azimuth", 0.0)), "elevation_deg": float(d.get("elevation", 0.0))},
        "pose_sampling": int(d.get("pose_sampling", 1)), "strength": int(d.get("strength", 1)),
        "matrix_world_error": error,
    }
