"""Write datasets in EG3D's format (what EG3D's ``dataset_tool.py`` / ``ImageFolderDataset`` read).

A dataset is a folder (or a zip of it) holding the images and ``dataset.json``::

    {"labels": [["images/img00000000.png", [25 floats]], ...]}

with each label the EG3D camera of that image (16 cam2world numbers row-major + 9 normalised intrinsics, see
:mod:`adapt3d.cameras.conventions`). Paths are relative to the dataset root and use ``/``. Everything is written
atomically; the zip is ZIP_STORED with fixed timestamps and sorted members, so the same dataset always gives the
same zip bytes.

EG3D's ``ImageFolderDataset`` loads EVERY image file under the dataset root and looks up its label, so a dataset
folder must hold the labelled images and nothing else: :func:`export_dataset_folder` builds such a folder from a
larger working folder (hard links when possible, otherwise copies) and removes images that are no longer listed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import zipfile
from pathlib import Path
from typing import Sequence

from adapt3d.utils.io import atomic_path, atomic_write_text

__all__ = ["DATASET_JSON", "dataset_json_text", "write_dataset_json", "write_dataset_zip", "check_entries",
           "export_dataset_folder"]

DATASET_JSON = "dataset.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)

Entry = tuple[str, Sequence[float]]


def check_entries(entries: Sequence[Entry]) -> list[tuple[str, list[float]]]:
    """Validate (relative_path, label) pairs: relative POSIX paths, unique, 25 finite floats each."""
    out, seen = [], set()
    for k, (rel, label) in enumerate(entries):
        rel = str(rel)
        if rel.startswith("/") or "\\" in rel or ".." in rel.split("/") or not rel:
            raise ValueError(f"entries[{k}]: path {rel!r} must be relative, use '/', and stay inside the dataset")
        if rel in seen:
            raise ValueError(f"entries[{k}]: duplicate path {rel!r}")
        seen.add(rel)
        values = [float(v) for v in label]
        if len(values) != 25 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"entries[{k}] ({rel}): a label must be 25 finite numbers (EG3D camera), got "
                             f"{len(values)} values")
        out.append((rel, values))
    return out


def dataset_json_text(entries: Sequence[Entry]) -> str:
    """The ``dataset.json`` text for ``entries`` (one label per line, deterministic)."""
    rows = [json.dumps([rel, label]) for rel, label in check_entries(entries)]
    return '{"labels": [\n' + ",\n".join(rows) + ("\n" if rows else "") + "]}\n"


def write_dataset_json(root: str | os.PathLike, entries: Sequence[Entry]) -> Path:
    """Atomically write ``root/dataset.json``; every listed image must exist under ``root``."""
    root = Path(root)
    entries = check_entries(entries)
    missing = [rel for rel, _ in entries if not (root / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} labelled image(s) missing, e.g. {missing[0]}")
    path = root / DATASET_JSON
    atomic_write_text(path, dataset_json_text(entries))
    return path


def write_dataset_zip(root: str | os.PathLike, zip_path: str | os.PathLike, entries: Sequence[Entry]) -> Path:
    """Atomically write an EG3D zip: ``dataset.json`` + the listed images (paths as in the json), stored."""
    root, zip_path = Path(root), Path(zip_path)
    entries = check_entries(entries)
    with atomic_path(zip_path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            members = [(DATASET_JSON, dataset_json_text(entries).encode("utf-8"))]
            for rel, _ in sorted(entries):
                members.append((rel, (root / rel).read_bytes()))
            for name, data in members:
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.external_attr = 0o644 << 16
                zf.writestr(info, data)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    return zip_path


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def export_dataset_folder(src_root: str | os.PathLike, dst_root: str | os.PathLike, entries: Sequence[Entry]) -> Path:
    """Make ``dst_root`` an EG3D dataset folder: exactly the listed images (taken from ``src_root`` at the same
    relative paths) plus ``dataset.json``. Other image files under ``dst_root`` are deleted; ``dataset.json`` is
    written last (atomically), so a folder with a ``dataset.json`` is always complete."""
    src_root, dst_root = Path(src_root), Path(dst_root)
    entries = check_entries(entries)
    wanted = {rel for rel, _ in entries}
    (dst_root / DATASET_JSON).unlink(missing_ok=True)
    for rel in sorted(wanted):
        src, dst = src_root / rel, dst_root / rel
        if not src.is_file():
            raise FileNotFoundError(f"{src_root}: labelled image {rel} is missing")
        if dst.is_file() and _same_file(src, dst):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dst) as tmp:
            tmp.unlink()
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
    if dst_root.is_dir():
        for path in sorted(dst_root.rglob("*")):
            rel = path.relative_to(dst_root).as_posix()
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and rel not in wanted:
                path.unlink()
    return write_dataset_json(dst_root, entries)
