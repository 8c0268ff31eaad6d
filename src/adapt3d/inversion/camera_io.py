"""Read a camera for inversion from a file, and parametrise cameras by orbit angles for optimisation.

Accepted camera files (``--camera``):

- ``.json``: a list of 25 numbers (the EG3D label: row-major 4x4 OpenCV cam2world + normalised 3x3 intrinsics),
  or 16 numbers (the cam2world only; the generator's field of view is used), possibly nested one level
  (``[[...25...]]``); or an object with one of the keys ``label``, ``camera``, ``c`` holding such a list; or an
  EG3D ``dataset.json`` (``{"labels": [[name, [25 numbers]], ...]}``): the entry whose file name matches the input
  image, or the only entry;
- ``.npy``: an array of shape (25,), (1, 25), (16,), (1, 16) or (4, 4) (cam2world), as EG3D's and DATID-3D's
  pose-estimation scripts write.

The label is checked with :func:`adapt3d.data.eg3d_dataset.check_camera_labels` (rigid cam2world, normalised
intrinsics). :class:`OrbitCamera` turns (yaw, pitch) into labels differentiably, at the generator's average radius,
pivot and field of view, so the camera can be refined by gradient descent together with the latent.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adapt3d.cameras import camera_label, fov_to_intrinsics, label_from_matrices, orbit_angles

__all__ = ["load_camera_file", "OrbitCamera", "label_angles"]


def _numbers(value, where: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: expected numbers, got {str(value)[:80]!r}") from e
    return a


def _from_json(path: Path, image_name: str | None) -> np.ndarray:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"--camera: cannot read {path} as JSON ({e})") from e
    if isinstance(doc, dict):
        if "labels" in doc and isinstance(doc["labels"], list):
            entries = [e for e in doc["labels"] if isinstance(e, (list, tuple)) and len(e) == 2]
            if not entries:
                raise ValueError(f"--camera: {path} has an empty or malformed 'labels' list")
            if image_name is not None:
                match = [e for e in entries if Path(str(e[0])).name == image_name]
                if match:
                    return _numbers(match[0][1], f"--camera {path} ({match[0][0]})")
            if len(entries) == 1:
                return _numbers(entries[0][1], f"--camera {path}")
            raise ValueError(f"--camera: {path} is a dataset.json with {len(entries)} labels and none is named "
                             f"{image_name!r}; pass a file with one camera")
        for key in ("label", "camera", "c"):
            if key in doc:
                return _numbers(doc[key], f"--camera {path} ['{key}']")
        raise ValueError(f"--camera: {path} is a JSON object without 'label', 'camera', 'c' or 'labels'")
    return _numbers(doc, f"--camera {path}")


def load_camera_file(path: str | os.PathLike, fov_deg: float, image_name: str | None = None) -> torch.Tensor:
    """EG3D label (1, 25) float32 from a camera file (see the module docstring). ``fov_deg`` completes a
    cam2world-only file. Raises ValueError / FileNotFoundError naming ``--camera``."""
    from adapt3d.data.eg3d_dataset import check_camera_labels

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--camera: {path} does not exist (expected a .json or .npy camera file)")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"--camera: cannot read {path} as a NumPy array ({e})") from e
        a = _numbers(a, f"--camera {path}")
    elif path.suffix.lower() == ".json":
        a = _from_json(path, image_name)
    else:
        raise ValueError(f"--camera: {path} must be a .json or .npy file, got suffix {path.suffix!r}")
    if a.shape == (4, 4):
        a = a.reshape(16)
    a = a.reshape(-1)
    if a.size == 16:
        k = fov_to_intrinsics(float(fov_deg), dtype=torch.float64)
        label = label_from_matrices(torch.from_numpy(a.reshape(1, 4, 4)), k)
    elif a.size == 25:
        label = torch.from_numpy(a.reshape(1, 25))
    else:
        raise ValueError(f"--camera: {path} holds {a.size} numbers; expected 25 (EG3D label: 16 cam2world + 9 "
                         "intrinsics) or 16 (cam2world only)")
    if not torch.isfinite(label).all():
        raise ValueError(f"--camera: {path} contains NaN or infinite values")
    problems = check_camera_labels(label)
    if problems:
        raise ValueError(f"--camera: {path} is not an EG3D camera: {problems[0]}")
    return label.float()


def label_angles(label: torch.Tensor) -> tuple[float, float, float]:
    """(yaw, pitch, radius) of the camera centre of a label (1, 25), EG3D orbit angles in radians."""
    yaw, pitch, radius = orbit_angles(label[:, :16].reshape(-1, 4, 4).double())
    return float(yaw[0]), float(pitch[0]), float(radius[0])


@dataclass
class OrbitCamera:
    """A camera on EG3D's orbit: (yaw, pitch) in radians at ``radius`` around the world origin, looking at
    ``pivot``, with ``fov_deg``. ``label()`` is differentiable in yaw and pitch."""

    yaw: torch.Tensor  # (1,)
    pitch: torch.Tensor  # (1,)
    radius: float
    pivot: tuple[float, float, float]
    fov_deg: float

    @classmethod
    def for_generator(cls, G, yaw: float = math.pi / 2, pitch: float = math.pi / 2,
                      device: torch.device | str = "cpu") -> "OrbitCamera":
        r = G.rendering
        return cls(torch.tensor([float(yaw)], device=device), torch.tensor([float(pitch)], device=device),
                   float(r.avg_camera_radius), tuple(float(v) for v in r.avg_camera_pivot),
                   float(G.config.camera_fov_deg))

    def label(self) -> torch.Tensor:
        """EG3D label (1, 25) on the angles' device."""
        return camera_label(self.yaw, self.pitch, radius=self.radius, pivot=list(self.pivot), fov_deg=self.fov_deg,
                            device=self.yaw.device, dtype=self.yaw.dtype)

    def detached(self) -> "OrbitCamera":
        return OrbitCamera(self.yaw.detach().clone(), self.pitch.detach().clone(), self.radius, self.pivot,
                           self.fov_deg)
