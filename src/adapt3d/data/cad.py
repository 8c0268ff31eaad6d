"""CAD meshes for 3D-DST: loading, frame conversion, normalisation, alignment offsets and mesh lists.

Frames (the 3D-DST / Blender convention, also PASCAL3D+'s):

* **file frame**: the coordinates stored in the mesh file. OBJ/glTF/GLB files (ShapeNet, Objaverse) are +y up;
  that is the default ``up_axis='y'``. PLY/OFF/STL files are often +z up: give ``up_axis='z'``.
* **object frame**: +z up, the frame every 3D-DST annotation (angles, R, t, 3D keypoints) refers to. A y-up file is
  rotated exactly as Blender's OBJ/glTF importers do: ``(x, y, z)_object = (x, -z, y)_file``.
* **normalisation** (3D-DST's ``normalize_scene``): in the object frame, scale so that the largest side of the
  axis-aligned bounding box is 1, then move the box centre to the origin: ``p = scale * x + offset``.

Alignment offsets (3D-DST's model CSV): ``azimuth_deg`` / ``elevation_deg`` are added to the sampled camera angles
(the mesh is never rotated), ``distance`` is the camera distance before jitter. See :mod:`adapt3d.dst.annotations`.

Mesh list (``.csv`` or ``.json``), one model per row/object; paths are relative to the list's folder:

* ``class`` (alias ``synset``), ``id`` (alias ``model``), ``path`` (when missing: ``<class>/<id>.<ext>``,
  ``<id>.<ext>`` or ShapeNet's ``<class>/<id>/models/model_normalized.obj`` next to the list);
* optional ``azimuth``, ``elevation`` (degrees), ``distance``, ``sampling`` (3D-DST strategy 1-5), ``strength``,
  ``up`` (y or z), ``tags`` (CSV: ``;``-separated; JSON: a list) and ``keypoints`` (JSON: ``{name: [x, y, z]}``
  in file coordinates; CSV: the path of such a JSON file).

A folder instead of a list: ``<folder>/mesh_list.{csv,json}`` if present, else every mesh file under
``<folder>/<class>/`` with the file stem as id.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["MESH_EXTENSIONS", "CadModel", "CadMesh", "file_to_object", "load_cad_mesh", "read_mesh_list",
           "find_models", "select_classes"]

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl")
_Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # object = A @ file


@dataclass
class CadModel:
    """One row of a mesh list."""

    class_name: str
    model_id: str
    path: Path
    azimuth_deg: float = 0.0
    """Alignment offset added to the sampled azimuth."""
    elevation_deg: float = 0.0
    """Alignment offset added to the sampled elevation (subtracted from the polar angle)."""
    distance: float | None = None
    """Camera distance before jitter (None: the job's default, 1.5 in 3D-DST)."""
    sampling: int | None = None
    """3D-DST viewpoint strategy 1-5 (None: the job's default)."""
    strength: int = 1
    """3D-DST's CSV 'strength': 1 = good model, 2 = only approximates the class."""
    up_axis: str = "y"
    tags: tuple[str, ...] = ()
    keypoints: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """3D keypoints in file coordinates."""


@dataclass
class CadMesh:
    """A normalised mesh in the object frame (+z up, largest bounding-box side 1, centred)."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    colors: np.ndarray | None  # (V, 3) or (F, 3) float32 albedo in [0, 1], or None
    scale: float  # p = scale * A x + offset
    offset: np.ndarray  # (3,)
    keypoints: dict[str, np.ndarray]  # name -> (3,) object-frame point
    source: Path


MAX_COORDINATE = 1e12


def file_to_object(points: np.ndarray, up_axis: str = "y") -> np.ndarray:
    """File-frame points (..., 3) -> object frame (+z up). ``up_axis='y'``: (x, y, z) -> (x, -z, y)."""
    points = np.asarray(points, dtype=np.float64)
    if up_axis == "z":
        return points.copy()
    if up_axis == "y":
        return points @ _Y_UP_TO_Z_UP.T
    raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")


def _colors(mesh) -> np.ndarray | None:
    visual = getattr(mesh, "visual", None)
    if visual is None:
        return None
    try:
        if visual.kind == "texture":
            visual = visual.to_color()
        if visual.kind == "face":
            return np.asarray(visual.face_colors[:, :3], dtype=np.float32) / 255.0
        if visual.kind == "vertex":
            return np.asarray(visual.vertex_colors[:, :3], dtype=np.float32) / 255.0
    except Exception:  # noqa: BLE001 - a broken texture must not stop rendering; the mesh is drawn grey
        return None
    return None


def load_cad_mesh(path: str | Path, up_axis: str = "y",
                  keypoints: dict[str, tuple[float, float, float]] | None = None) -> CadMesh:
    """Load obj/glb/gltf/ply/off/stl with trimesh (scenes are merged), convert to the object frame, normalise.

    Raises FileNotFoundError for a missing file and ValueError naming the file for an unsupported extension, an
    unreadable file, an empty mesh or a degenerate one (zero total area, or a flat bounding box of size 0).
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file {path} does not exist")
    if path.suffix.lower() not in MESH_EXTENSIONS:
        raise ValueError(f"mesh file {path}: unsupported extension {path.suffix!r}; expected one of "
                         f"{', '.join(MESH_EXTENSIONS)}")
    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for corrupt files
        raise ValueError(f"mesh file {path} could not be read ({type(e).__name__}: {e})") from e
    if isinstance(mesh, trimesh.Scene) or not hasattr(mesh, "faces") or len(mesh.faces) == 0 \
            or len(mesh.vertices) == 0:
        raise ValueError(f"mesh file {path} contains no triangles")
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if not np.isfinite(vertices).all():
        raise ValueError(f"mesh file {path} has non-finite vertex coordinates")
    biggest = float(np.abs(vertices).max())
    if biggest > MAX_COORDINATE:  # beyond this, areas and extents overflow float64 arithmetic
        raise ValueError(f"mesh file {path} has vertex coordinates up to {biggest:.3g}; expected |coordinate| <= "
                         f"{MAX_COORDINATE:.0e} (any unit: the mesh is rescaled to a unit box)")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise ValueError(f"mesh file {path} has faces that index missing vertices")
    colors = _colors(mesh)
    obj = file_to_object(vertices, up_axis)
    lo, hi = obj.min(0), obj.max(0)
    extent = float((hi - lo).max())
    tri = obj[faces]
    total_area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    if not extent > 0 or not total_area > 1e-12 * max(extent, 1e-30) ** 2:
        raise ValueError(f"mesh file {path} is degenerate (total triangle area {total_area:.3g}, bounding-box size "
                         f"{extent:.3g}); nothing would be rendered")
    scale = 1.0 / extent
    offset = -(lo + hi) / 2 * scale
    kps = {name: file_to_object(np.asarray(p, dtype=np.float64), up_axis) * scale + offset
           for name, p in (keypoints or {}).items()}
    return CadMesh(vertices=obj * scale + offset, faces=faces, colors=colors, scale=scale, offset=offset,
                   keypoints=kps, source=path)


def _float(row: dict, key: str, where: str, default):
    value = row.get(key)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{where}: '{key}' must be finite, got {value!r}")
    return out


def _resolve_path(root: Path, class_name: str, model_id: str, given: str | None, where: str) -> Path:
    if given:
        path = Path(given)
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise FileNotFoundError(f"{where}: mesh file {path} does not exist")
        return path
    tried = [root / class_name / f"{model_id}{ext}" for ext in MESH_EXTENSIONS]
    tried += [root / f"{model_id}{ext}" for ext in MESH_EXTENSIONS]
    tried.append(root / class_name / model_id / "models" / "model_normalized.obj")
    for path in tried:
        if path.is_file():
            return path
    raise FileNotFoundError(f"{where}: no mesh file for class {class_name!r} id {model_id!r}; give a 'path' column "
                            f"or put it at {root / class_name / (model_id + '.obj')}")


def _model_from_row(row: dict, root: Path, where: str) -> CadModel:
    class_name = str(row.get("class") or row.get("synset") or "").strip()
    model_id = str(row.get("id") or row.get("model") or "").strip()
    if not class_name or not model_id:
        raise ValueError(f"{where}: needs 'class' (or 'synset') and 'id' (or 'model'), got {sorted(row)}")
    path = _resolve_path(root, class_name, model_id, row.get("path") or None, where)
    tags = row.get("tags") or ()
    if isinstance(tags, str):
        tags = tuple(t.strip() for t in tags.split(";") if t.strip())
    keypoints = row.get("keypoints") or {}
    if isinstance(keypoints, str):
        kp_path = Path(keypoints) if Path(keypoints).is_absolute() else root / keypoints
        try:
            keypoints = json.loads(kp_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{where}: keypoint file {kp_path} could not be read ({e})") from e
    if not isinstance(keypoints, dict):
        raise ValueError(f"{where}: keypoints must map names to [x, y, z], got {type(keypoints).__name__}")
    for name, p in keypoints.items():
        if not (isinstance(p, (list, tuple)) and len(p) == 3):
            raise ValueError(f"{where}: keypoint {name!r} must be [x, y, z], got {p!r}")
    sampling = _float(row, "sampling", where, None)
    if sampling is not None and sampling not in (1, 2, 3, 4, 5):
        raise ValueError(f"{where}: 'sampling' must be a 3D-DST strategy 1-5, got {row.get('sampling')!r}")
    distance = _float(row, "distance", where, None)
    if distance is not None and distance <= 0:
        raise ValueError(f"{where}: 'distance' must be > 0, got {distance}")
    up = str(row.get("up") or "y").strip().lower()
    if up not in ("y", "z"):
        raise ValueError(f"{where}: 'up' must be 'y' or 'z', got {row.get('up')!r}")
    return CadModel(class_name=class_name, model_id=model_id, path=path,
                    azimuth_deg=_float(row, "azimuth", where, 0.0), elevation_deg=_float(row, "elevation", where, 0.0),
                    distance=distance, sampling=None if sampling is None else int(sampling),
                    strength=int(_float(row, "strength", where, 1)), up_axis=up, tags=tuple(tags),
                    keypoints={k: tuple(float(c) for c in v) for k, v in keypoints.items()})


def read_mesh_list(path: str | Path) -> list[CadModel]:
    """Read a mesh list (.csv or .json, see the module docstring). Errors name the file and row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh list {path} does not exist")
    root = path.parent
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"mesh list {path} is not valid JSON ({e})") from e
        if isinstance(rows, dict):
            rows = rows.get("models", rows)
        if not isinstance(rows, list):
            raise ValueError(f"mesh list {path} must hold a list of models (or {{'models': [...]}})")
    elif path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            rows = [{k.strip().lower(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(f)]
    else:
        raise ValueError(f"mesh list {path}: expected a .csv or .json file")
    models = [_model_from_row(r, root, f"{path} row {i + 1}") for i, r in enumerate(rows)]
    if not models:
        raise ValueError(f"mesh list {path} lists no models")
    seen: set[tuple[str, str]] = set()
    for m in models:
        if (m.class_name, m.model_id) in seen:
            raise ValueError(f"mesh list {path}: class {m.class_name!r} id {m.model_id!r} appears twice")
        seen.add((m.class_name, m.model_id))
    return models


def find_models(source: str | Path) -> list[CadModel]:
    """Models from a mesh list file, a folder with ``mesh_list.{csv,json}``, or a folder of ``<class>/<mesh>``."""
    source = Path(source)
    if source.is_file():
        return read_mesh_list(source)
    if not source.is_dir():
        raise FileNotFoundError(f"--meshes: {source} is neither a mesh list file nor a folder")
    for name in ("mesh_list.json", "mesh_list.csv"):
        if (source / name).is_file():
            return read_mesh_list(source / name)
    models = [CadModel(class_name=p.parent.name, model_id=p.stem, path=p)
              for d in sorted(x for x in source.iterdir() if x.is_dir())
              for p in sorted(d.iterdir()) if p.suffix.lower() in MESH_EXTENSIONS]
    if not models:
        raise ValueError(f"--meshes: {source} has no mesh list and no <class>/<mesh>{'|'.join(MESH_EXTENSIONS)} "
                         "files")
    return models


def select_classes(models: list[CadModel], classes: list[str] | None) -> list[CadModel]:
    """Keep the models of ``classes`` (all when None/empty); an unknown class is an error naming the known ones."""
    if not classes:
        return list(models)
    known = sorted({m.class_name for m in models})
    unknown = [c for c in classes if c not in known]
    if unknown:
        raise ValueError(f"--classes: unknown class(es) {', '.join(unknown)}; the mesh list has {', '.join(known)}")
    return [m for m in models if m.class_name in classes]
