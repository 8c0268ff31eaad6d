"""Reader for EG3D-format datasets: a folder or a ``.zip`` with images and a ``dataset.json`` of camera labels.

Format (what EG3D's ``dataset_tool.py`` and adapt3d's ``make-dataset`` write)::

    <root>/dataset.json      {"labels": [["00000/img00000000.png", [25 floats]], ...]}
    <root>/00000/img00000000.png ...

Each label is the 25-number EG3D camera: cam2world (4x4, row-major) followed by the 3x3 intrinsics normalised by
the image size (see :mod:`adapt3d.cameras.conventions`). Paths are relative to the root and use ``/`` (``\\`` is
accepted, as EG3D's reader does). Items are ordered by path, like EG3D's loader.

Public API: :class:`EG3DDataset` (items: ``image`` uint8 ``(3, H, W)`` tensor, ``label`` float32 ``(25,)``),
:func:`read_dataset_json`, :func:`check_camera_labels`, :class:`DatasetError`.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from adapt3d.cameras import mirror_label

__all__ = ["EG3DDataset", "DatasetError", "read_dataset_json", "check_camera_labels", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LABEL_DIM = 25


class DatasetError(ValueError):
    """A dataset is missing, empty, malformed, or does not fit the generator."""


def _open_source(path: Path) -> tuple[zipfile.ZipFile | None, set[str]]:
    """(zip handle or None, set of relative file names) of a dataset folder or zip."""
    if path.is_dir():
        names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
        return None, names
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError(f"--dataset: {path} is a file but not a .zip archive; expected an EG3D dataset "
                               "folder or zip with a dataset.json")
        zf = zipfile.ZipFile(path)
        return zf, {n for n in zf.namelist() if not n.endswith("/")}
    raise DatasetError(f"--dataset: {path} does not exist (expected an EG3D dataset folder or .zip with a "
                       "dataset.json)")


def _parse_labels(doc: object, where: str) -> list[tuple[str, list[float]]]:
    if not isinstance(doc, dict) or "labels" not in doc:
        raise DatasetError(f"{where}: expected a JSON object {{\"labels\": [[relative_path, [25 numbers]], ...]}}, "
                           f"got {type(doc).__name__} without 'labels'")
    labels = doc["labels"]
    if labels is None:
        raise DatasetError(f"{where}: 'labels' is null (an unconditional dataset); adapt3d needs a 25-number EG3D "
                           "camera label for every image")
    if not isinstance(labels, list):
        raise DatasetError(f"{where}: 'labels' must be a list of [relative_path, [25 numbers]], got "
                           f"{type(labels).__name__}")
    out = []
    for i, entry in enumerate(labels):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise DatasetError(f"{where}: labels[{i}] must be [relative_path, [25 numbers]], got {entry!r:.120}")
        name, value = entry
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok or len(value) != LABEL_DIM:
            got = f"{len(value)} values" if isinstance(value, (list, tuple)) else type(value).__name__
            raise DatasetError(f"{where}: label of {name!r} (labels[{i}]) must be {LABEL_DIM} numbers (EG3D camera: "
                               f"4x4 cam2world + 3x3 normalised intrinsics), got {got}")
        if not all(math.isfinite(float(v)) for v in value):
            raise DatasetError(f"{where}: label of {name!r} (labels[{i}]) contains NaN or infinity")
        out.append((name.replace("\\", "/"), [float(v) for v in value]))
    return out


def read_dataset_json(path: str | os.PathLike) -> list[tuple[str, list[float]]]:
    """Parse ``dataset.json`` of a dataset folder or zip (or the JSON file itself) into ``[(path, label)]``.

    Raises :class:`DatasetError` naming the entry when the file is missing, not JSON, or a label is not 25 finite
    numbers.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".json":
        where, text = str(path), path.read_text()
    else:
        zf, names = _open_source(path)
        if "dataset.json" not in names:
            raise DatasetError(f"--dataset: {path} has no dataset.json (expected {{\"labels\": [[relative_path, "
                               "[25 numbers]], ...]}} at its root)")
        where = f"{path}/dataset.json"
        text = zf.read("dataset.json").decode("utf-8") if zf else (path / "dataset.json").read_text()
        if zf:
            zf.close()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where} is not valid JSON ({e})") from e
    return _parse_labels(doc, where)


def check_camera_labels(labels: torch.Tensor, atol: float = 1e-3) -> list[str]:
    """Problems that show labels (N, 25) are not EG3D cameras; empty when they are.

    Checks that the last cam2world row is (0, 0, 0, 1), the rotation is orthonormal with determinant +1, and the
    intrinsics are normalised by the image size (focal lengths > 0 and below 100, principal point in [0, 1],
    last row (0, 0, 1)). Each problem names the first offending row.
    """
    problems = []
    m = labels[:, :16].reshape(-1, 4, 4).double()
    k = labels[:, 16:25].reshape(-1, 3, 3).double()
    rot = m[:, :3, :3]

    def first(bad: torch.Tensor) -> int:
        return int(bad.nonzero()[0, 0])

    bottom = (m[:, 3] - torch.tensor([0.0, 0, 0, 1], dtype=m.dtype)).abs().amax(-1) > atol
    if bottom.any():
        problems.append(f"label {first(bottom)}: cam2world's last row is {m[first(bottom), 3].tolist()}, expected "
                        "[0, 0, 0, 1] (labels start with a row-major 4x4 cam2world)")
    ortho = (rot @ rot.transpose(1, 2) - torch.eye(3, dtype=m.dtype)).abs().amax((1, 2)) > atol
    if ortho.any():
        problems.append(f"label {first(ortho)}: the cam2world rotation is not orthonormal")
    elif (torch.linalg.det(rot) < 0).any():
        problems.append(f"label {first(torch.linalg.det(rot) < 0)}: the cam2world rotation has determinant -1")
    focal = torch.stack([k[:, 0, 0], k[:, 1, 1]], -1)
    bad_focal = (focal <= 0).any(-1) | (focal > 100).any(-1)
    if bad_focal.any():
        problems.append(f"label {first(bad_focal)}: focal lengths {focal[first(bad_focal)].tolist()} are not "
                        "normalised by the image size (EG3D: fx/W, about 4.26 for FFHQ)")
    centre = torch.stack([k[:, 0, 2], k[:, 1, 2]], -1)
    bad_centre = ((centre < 0) | (centre > 1)).any(-1)
    if bad_centre.any():
        problems.append(f"label {first(bad_centre)}: principal point {centre[first(bad_centre)].tolist()} is "
                        "outside [0, 1] (EG3D intrinsics are normalised, about 0.5)")
    bad_last = (k[:, 2] - torch.tensor([0.0, 0, 1], dtype=k.dtype)).abs().amax(-1) > atol
    if bad_last.any():
        problems.append(f"label {first(bad_last)}: the intrinsics' last row is {k[first(bad_last), 2].tolist()}, "
                        "expected [0, 0, 1]")
    return problems


class EG3DDataset(torch.utils.data.Dataset):
    """Images and camera labels of an EG3D-format dataset folder or zip.

    Args:
        path: dataset folder or ``.zip`` with ``dataset.json`` at its root.
        resolution: output size; None keeps the native size (every image must then share it). Images of another
            size are resized (bilinear, antialiased) to ``resolution`` x ``resolution``.
        xflip: also serve every image mirrored left-right, with its camera mirrored across x = 0
            (:func:`adapt3d.cameras.mirror_label`); doubles ``len``.

    Items are ``(image, label)``: ``image`` uint8 ``(3, H, W)`` (grey and RGBA images become RGB), ``label``
    float32 ``(25,)``. ``labels`` holds every item's label ``(len, 25)``; ``native_resolution`` is the first
    image's size. Raises :class:`DatasetError` before any training when the dataset is empty, a listed file is
    missing, a label is malformed, or the images are not square.
    """

    def __init__(self, path: str | os.PathLike, resolution: int | None = None, xflip: bool = False):
        self.path = Path(path)
        if resolution is not None and resolution < 1:
            raise DatasetError(f"resolution must be >= 1 or None, got {resolution}")
        entries = sorted(read_dataset_json(self.path), key=lambda e: e[0])
        if not entries:
            raise DatasetError(f"--dataset: {self.path} is empty (dataset.json lists no images)")
        zf, names = _open_source(self.path)
        if zf is not None:
            zf.close()
        missing = [n for n, _ in entries if n not in names]
        if missing:
            raise DatasetError(f"--dataset: {len(missing)} image(s) listed in dataset.json are missing from "
                               f"{self.path}, e.g. {missing[:3]}")
        bad_ext = [n for n, _ in entries if not n.lower().endswith(IMAGE_EXTENSIONS)]
        if bad_ext:
            raise DatasetError(f"--dataset: dataset.json lists files that are not images ({IMAGE_EXTENSIONS}), "
                               f"e.g. {bad_ext[:3]}")
        self.files = [n for n, _ in entries]
        self._labels = torch.tensor([lab for _, lab in entries], dtype=torch.float32)  # (N, 25)
        self.resolution = resolution
        self.xflip = bool(xflip)
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        width, height = self._read_pil(self.files[0]).size
        if width != height:
            raise DatasetError(f"--dataset: images must be square, {self.files[0]} is {width}x{height}")
        self.native_resolution = width

    # -- access -------------------------------------------------------------------------------------------------
    @property
    def is_zip(self) -> bool:
        return self.path.is_file()

    @property
    def num_images(self) -> int:
        """Number of distinct image files (``len`` counts mirrored copies too)."""
        return len(self.files)

    @property
    def labels(self) -> torch.Tensor:
        """Camera labels of every item, float32 ``(len, 25)`` (mirrored copies last)."""
        if self.xflip:
            return torch.cat([self._labels, mirror_label(self._labels)])
        return self._labels.clone()

    @property
    def image_resolution(self) -> int:
        """Size of the images this dataset serves."""
        return self.resolution or self.native_resolution

    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def _read_bytes(self, name: str) -> bytes:
        if not self.is_zip:
            return (self.path / name).read_bytes()
        if self._zip is None or self._zip_pid != os.getpid():  # one handle per (DataLoader worker) process
            self._zip = zipfile.ZipFile(self.path)
            self._zip_pid = os.getpid()
        return self._zip.read(name)

    def _read_pil(self, name: str) -> Image.Image:
        try:
            img = Image.open(io.BytesIO(self._read_bytes(name)))
            img.load()
        except (OSError, ValueError) as e:
            raise DatasetError(f"--dataset: cannot read image {name} in {self.path} ({e})") from e
        return img

    def load_image(self, index: int) -> torch.Tensor:
        """uint8 ``(3, H, W)`` image of file ``index`` (no mirroring), resized when ``resolution`` asks for it."""
        name = self.files[index]
        img = self._read_pil(name).convert("RGB")
        w, h = img.size
        res = self.resolution
        if res is None and (w, h) != (self.native_resolution,) * 2:
            raise DatasetError(f"--dataset: {name} is {w}x{h} but the dataset's first image is "
                               f"{self.native_resolution}x{self.native_resolution}; resize the images or pass a "
                               "resolution (--resize)")
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)  # (3, H, W) uint8
        if res is not None and (w, h) != (res, res):
            if w != h:
                raise DatasetError(f"--dataset: images must be square, {name} is {w}x{h}")
            y = torch.nn.functional.interpolate(x[None].float(), size=(res, res), mode="bilinear",
                                                align_corners=False, antialias=True)
            x = y[0].round().clamp(0, 255).to(torch.uint8)
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_images
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} items")
        index %= len(self)
        flip = index >= n
        image = self.load_image(index - n if flip else index)
        label = self._labels[index - n if flip else index]
        if flip:
            image = image.flip(-1)
            label = mirror_label(label)
        return image.contiguous(), label.clone()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"] = None  # zip handles do not cross process boundaries
        return state

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __repr__(self) -> str:
        return (f"EG3DDataset({str(self.path)!r}, images={self.num_images}, native_resolution="
                f"{self.native_resolution}, resolution={self.resolution}, xflip={self.xflip})")


def stack_items(items: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate items into ``(images (B, 3, H, W) uint8, labels (B, 25) float32)``."""
    return torch.stack([i for i, _ in items]), torch.stack([c for _, c in items])
