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

Appearance: per-vertex or per-face colours, and per-material base colours with UV textures (glTF
``baseColorFactor``/``baseColorTexture``, OBJ ``Kd``/``map_Kd``), kept per part of a multi-part file (a glTF scene's
node transforms are applied). A texture that cannot be decoded makes the mesh unreadable (it is skipped with the
reason), never silently grey.

Mesh list (``.csv`` or ``.json``), one model per row/object; paths are relative to the list's folder:

* ``class`` (alias ``synset``), ``id`` (alias ``model``), ``path`` (when missing: ``<class>/<id>.<ext>``,
  ``<id>.<ext>`` or ShapeNet's ``<class>/<id>/models/model_normalized.obj`` next to the list, then the collection
  roots of :mod:`adapt3d.data.cad_collections`);
* optional ``azimuth``, ``elevation`` (degrees), ``distance``, ``sampling`` (3D-DST strategy 1-5), ``strength``,
  ``up`` (y or z), ``tags`` (CSV: ``;``-separated; JSON: a list) and ``keypoints`` (JSON: ``{name: [x, y, z]}``
  in file coordinates; CSV: the path of such a JSON file).

3D-DST's released list (``synset,model,distance,azimuth,elevation,strength,sampling``) is read as is, with or
without its header row. A model whose file is missing is kept with a ``problem`` (the job skips it and reports the
reason); malformed values (a non-number, an unknown strategy) are errors naming the file and row.

A folder instead of a list: ``<folder>/mesh_list.{csv,json}`` if present, else every mesh file under
``<folder>/<class>/`` (class = folder name) and every mesh file directly in ``<folder>`` (class = the given
``default_class``, else the file stem without a trailing number: ``chair_03.obj`` -> ``chair``), with the file stem
as id.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adapt3d.data.cad_collections import CollectionRoots, resolve_collection_model

__all__ = ["MESH_EXTENSIONS", "CadModel", "CadMesh", "CadMaterial", "file_to_object", "load_cad_mesh",
           "read_mesh_list", "find_models", "select_classes", "DST_LIST_COLUMNS"]

DST_LIST_COLUMNS = ("synset", "model", "distance", "azimuth", "elevation", "strength", "sampling")
"""3D-DST's ``3d-dst-models.csv`` columns, in order (read by position when the file has no header row)."""
_SYNSET = re.compile(r"^n\d{8}$")

MESH_EXTENSIONS = (".obj", ".glb", ".gltf", ".ply", ".off", ".stl")
_Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # object = A @ file


@dataclass
class CadModel:
    """One row of a mesh list."""

    class_name: str
    model_id: str
    path: Path | None
    """Mesh file; None when it could not be found (see ``problem``)."""
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
    collection: str = "file"
    """Where the file came from: 'file' (a path or the list's folder), 'shapenet', 'objaverse', 'omniobject3d'."""
    problem: str | None = None
    """Why the mesh cannot be used (missing file, unsupported collection); None when ``path`` is set."""


@dataclass
class CadMaterial:
    """One material: a base colour and an optional texture image."""

    base_color: np.ndarray  # (3,) float32 in [0, 1]
    texture: np.ndarray | None  # (H, W, 3) uint8, row 0 at the top (see adapt3d.rendering.texture)


@dataclass
class CadMesh:
    """A normalised mesh in the object frame (+z up, largest bounding-box side 1, centred)."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    colors: np.ndarray | None  # (V, 3) float32 per-vertex albedo in [0, 1], or None
    scale: float  # p = scale * A x + offset
    offset: np.ndarray  # (3,)
    keypoints: dict[str, np.ndarray]  # name -> (3,) object-frame point
    source: Path
    uv: np.ndarray | None = None  # (V, 2) float64 texture coordinates (v up), or None
    face_material: np.ndarray | None = None  # (F,) int64 index into materials, or None
    materials: list[CadMaterial] = field(default_factory=list)

    @property
    def textured(self) -> bool:
        """True when at least one material has a texture image."""
        return any(m.texture is not None for m in self.materials)


MAX_COORDINATE = 1e12


def file_to_object(points: np.ndarray, up_axis: str = "y") -> np.ndarray:
    """File-frame points (..., 3) -> object frame (+z up). ``up_axis='y'``: (x, y, z) -> (x, -z, y)."""
    points = np.asarray(points, dtype=np.float64)
    if up_axis == "z":
        return points.copy()
    if up_axis == "y":
        return points @ _Y_UP_TO_Z_UP.T
    raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")


def _u8_color(value, default=(255, 255, 255)) -> np.ndarray:
    """RGB in [0, 1] from trimesh's colour values (uint8 RGBA, or floats in [0, 1])."""
    if value is None:
        value = default
    arr = np.asarray(value, dtype=np.float64).reshape(-1)[:3]
    if arr.size < 3:
        arr = np.asarray(default, dtype=np.float64)[:3]
    if np.issubdtype(np.asarray(value).dtype, np.integer) or arr.max() > 1.0:
        arr = arr / 255.0
    return np.clip(arr, 0, 1).astype(np.float32)


def _texture_array(image, path: Path, part: str) -> np.ndarray | None:
    """Decode a trimesh material image (PIL) to (H, W, 3) uint8; a broken image raises ValueError."""
    if image is None:
        return None
    try:
        arr = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt data
        raise ValueError(f"mesh file {path}: the texture of {part} could not be decoded ({type(e).__name__}: "
                         f"{e})") from e
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"mesh file {path}: the texture of {part} is empty")
    return arr


def _part_appearance(mesh, path: Path, part: str):
    """(per-vertex colours (V, 3) or None, per-face colours (F, 3) or None, uv (V, 2) or None, CadMaterial or
    None) of one trimesh part."""
    visual = getattr(mesh, "visual", None)
    kind = getattr(visual, "kind", None)
    n_v, n_f = len(mesh.vertices), len(mesh.faces)
    if kind == "texture":
        material = getattr(visual, "material", None)
        uv = getattr(visual, "uv", None)
        uv = None if uv is None or len(uv) != n_v else np.asarray(uv, dtype=np.float64)
        base, image = (255, 255, 255), None
        if material is not None:
            if hasattr(material, "baseColorFactor") or hasattr(material, "baseColorTexture"):  # PBRMaterial (glTF)
                base = getattr(material, "baseColorFactor", None)  # multiplies the texture (glTF spec)
                image = getattr(material, "baseColorTexture", None)
            else:  # SimpleMaterial (OBJ/MTL): map_Kd replaces Kd, as Blender's OBJ importer does
                image = getattr(material, "image", None)
                base = None if image is not None else getattr(material, "diffuse", None)
        texture = _texture_array(image, path, part) if uv is not None else None
        return None, None, uv, CadMaterial(base_color=_u8_color(base), texture=texture)
    try:
        if kind == "vertex":
            return np.asarray(visual.vertex_colors[:, :3], dtype=np.float32) / 255.0, None, None, None
        if kind == "face":
            return None, np.asarray(visual.face_colors[:, :3], dtype=np.float32) / 255.0, None, None
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"mesh file {path}: the colours of {part} could not be read ({e})") from e
    return None, None, None, None


def _declared_textures(path: Path) -> str | None:
    """What the file says about base-colour textures, read without trimesh: a description such as
    '2 glTF material(s) with a baseColorTexture' or "map_Kd 'wood.png'", or None when it declares none. An OBJ
    whose material library is missing declares it as missing."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".glb", ".gltf"):
            if suffix == ".glb":
                data = path.read_bytes()
                if data[:4] != b"glTF" or len(data) < 20 or data[16:20] != b"JSON":
                    return None
                length = int.from_bytes(data[12:16], "little")
                doc = json.loads(data[20:20 + length])
            else:
                doc = json.loads(path.read_text(encoding="utf-8"))
            n = sum(1 for m in doc.get("materials", [])
                    if isinstance(m, dict) and "baseColorTexture" in m.get("pbrMetallicRoughness", {}))
            return f"{n} glTF material(s) with a baseColorTexture" if n else None
        if suffix == ".obj":
            found = []
            with open(path, encoding="utf-8", errors="replace") as f:
                libs = [line.split(None, 1)[1].strip() for line in f if line.startswith("mtllib") and
                        len(line.split(None, 1)) == 2]
            for lib in libs:
                mtl = path.parent / lib
                if not mtl.is_file():
                    return f"material library {lib!r} (missing)"
                with open(mtl, encoding="utf-8", errors="replace") as f:
                    found += [line.split()[-1] for line in f if line.strip().lower().startswith("map_kd")]
            return f"map_Kd {found[0]!r}" + (f" and {len(found) - 1} more" if len(found) > 1 else "") if found else None
    except (OSError, ValueError):
        return None
    return None


def _triangle_parts(loaded, path: Path) -> list:
    """The triangle meshes of a loaded file (scene node transforms applied); other geometry is ignored."""
    import trimesh

    if isinstance(loaded, trimesh.Scene):
        parts = [g for g in loaded.dump(concatenate=False) if isinstance(g, trimesh.Trimesh)]
    elif isinstance(loaded, trimesh.Trimesh):
        parts = [loaded]
    else:
        kind = type(loaded).__name__
        raise ValueError(f"mesh file {path} contains no triangles (it holds a {kind}"
                         f"{', points only' if kind == 'PointCloud' else ''})")
    parts = [p for p in parts if len(p.faces) and len(p.vertices)]
    if not parts:
        raise ValueError(f"mesh file {path} contains no triangles (no faces, or points only)")
    return parts


def load_cad_mesh(path: str | Path, up_axis: str = "y",
                  keypoints: dict[str, tuple[float, float, float]] | None = None) -> CadMesh:
    """Load obj/glb/gltf/ply/off/stl with trimesh (all parts of a scene, with their colours, materials and UV
    textures), convert to the object frame, normalise.

    Raises FileNotFoundError for a missing file and ValueError naming the file for an unsupported extension, an
    unreadable file, a file without triangles (empty, points only, zero faces), non-finite vertices, face indices
    out of range, a texture that cannot be decoded, or a degenerate mesh (zero total area, or a flat bounding box
    of size 0).
    """
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file {path} does not exist")
    if path.suffix.lower() not in MESH_EXTENSIONS:
        raise ValueError(f"mesh file {path}: unsupported extension {path.suffix!r}; expected one of "
                         f"{', '.join(MESH_EXTENSIONS)}")
    if path.stat().st_size == 0:
        raise ValueError(f"mesh file {path} is empty (0 bytes)")
    try:
        loaded = trimesh.load(path, process=False)
    except Exception as e:  # noqa: BLE001 - trimesh raises many types for corrupt files
        raise ValueError(f"mesh file {path} could not be read ({type(e).__name__}: {e})") from e
    parts = _triangle_parts(loaded, path)

    verts, faces, colors, uvs, face_mat, materials = [], [], [], [], [], []
    any_color = any_uv = any_material = False
    offset = 0
    for k, part in enumerate(parts):
        v = np.asarray(part.vertices, dtype=np.float64)
        f = np.asarray(part.faces, dtype=np.int64)
        if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
            raise ValueError(f"mesh file {path}: part {k} is not a triangle mesh (vertices {v.shape}, faces "
                             f"{f.shape})")
        if f.min() < 0 or f.max() >= len(v):
            raise ValueError(f"mesh file {path}: part {k} has face indices outside its {len(v)} vertices")
        vc, fc, uv, material = _part_appearance(part, path, f"part {k}")
        if fc is not None:  # per-face colours: one material per distinct colour
            keys, inverse = np.unique(np.round(fc * 255).astype(np.int64), axis=0, return_inverse=True)
            first = len(materials)
            materials += [CadMaterial(base_color=(c / 255.0).astype(np.float32), texture=None) for c in keys]
            face_mat.append(first + inverse.reshape(-1))
            any_material = True
        elif material is not None:
            face_mat.append(np.full(len(f), len(materials), dtype=np.int64))
            materials.append(material)
            any_material = True
        else:
            face_mat.append(np.full(len(f), -1, dtype=np.int64))  # filled below: the default material
        any_color |= vc is not None
        any_uv |= uv is not None
        colors.append(vc)
        uvs.append(uv)
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
    declared = _declared_textures(path)
    if declared and not any(m.texture is not None for m in materials):
        raise ValueError(f"mesh file {path} declares textures ({declared}) but none could be read (broken or missing "
                         "texture file)")
    vertices = np.concatenate(verts)
    faces_all = np.concatenate(faces)
    if not np.isfinite(vertices).all():
        raise ValueError(f"mesh file {path} has non-finite vertex coordinates (NaN or inf)")
    biggest = float(np.abs(vertices).max())
    if biggest > MAX_COORDINATE:  # beyond this, areas and extents overflow float64 arithmetic
        raise ValueError(f"mesh file {path} has vertex coordinates up to {biggest:.3g}; expected |coordinate| <= "
                         f"{MAX_COORDINATE:.0e} (any unit: the mesh is rescaled to a unit box)")
    vertex_colors = None
    if any_color:
        vertex_colors = np.concatenate([c if c is not None else np.ones((len(v), 3), np.float32)
                                        for c, v in zip(colors, verts)]).astype(np.float32)
    uv_all = np.concatenate([u if u is not None else np.zeros((len(v), 2)) for u, v in zip(uvs, verts)]) \
        if any_uv else None
    face_material = None
    if any_material:
        face_material = np.concatenate(face_mat)
        if (face_material < 0).any():  # parts without a material: grey, or white when they carry vertex colours
            grey = 1.0 if any_color else 0.8
            face_material[face_material < 0] = len(materials)
            materials.append(CadMaterial(base_color=np.full(3, grey, np.float32), texture=None))
    else:
        materials = []
    if uv_all is not None and not np.isfinite(uv_all).all():
        raise ValueError(f"mesh file {path} has non-finite texture coordinates")

    obj = file_to_object(vertices, up_axis)
    lo, hi = obj.min(0), obj.max(0)
    extent = float((hi - lo).max())
    tri = obj[faces_all]
    total_area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1).sum()
    if not extent > 0 or not total_area > 1e-12 * max(extent, 1e-30) ** 2:
        raise ValueError(f"mesh file {path} is degenerate (total triangle area {total_area:.3g}, bounding-box size "
                         f"{extent:.3g}); nothing would be rendered")
    scale = 1.0 / extent
    offset_xyz = -(lo + hi) / 2 * scale
    kps = {name: file_to_object(np.asarray(p, dtype=np.float64), up_axis) * scale + offset_xyz
           for name, p in (keypoints or {}).items()}
    return CadMesh(vertices=obj * scale + offset_xyz, faces=faces_all, colors=vertex_colors, scale=scale,
                   offset=offset_xyz, keypoints=kps, source=path, uv=uv_all, face_material=face_material,
                   materials=materials)


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


def _resolve_path(root: Path, class_name: str, model_id: str, given: str | None,
                  roots: CollectionRoots | None) -> tuple[Path | None, str, str | None]:
    """(path, collection, problem): the mesh file of a row, or None and why not."""
    if given:
        path = Path(given).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            return None, "file", f"mesh file {path} does not exist"
        return path, "file", None
    tried = [root / class_name / f"{model_id}{ext}" for ext in MESH_EXTENSIONS]
    tried += [root / f"{model_id}{ext}" for ext in MESH_EXTENSIONS]
    tried.append(root / class_name / model_id / "models" / "model_normalized.obj")
    for path in tried:
        if path.is_file():
            return path, "file", None
    if roots is not None and roots.any():
        path, collection, problem = resolve_collection_model(roots, model_id)
        if path is not None or collection != "unknown":
            return path, collection, problem
        return None, "unknown", f"{problem}; nor next to the list ({root / class_name / (model_id + '.obj')})"
    return None, "file", (f"no mesh file for class {class_name!r} id {model_id!r}: give a 'path' column, put it "
                          f"at {root / class_name / (model_id + '.obj')}, or give the collection roots "
                          "(--shapenet-root, --objaverse-root, --omniobject3d-root)")


def _model_from_row(row: dict, root: Path, where: str, roots: CollectionRoots | None = None) -> CadModel:
    class_name = str(row.get("class") or row.get("synset") or "").strip()
    model_id = str(row.get("id") or row.get("model") or "").strip()
    if not class_name or not model_id:
        raise ValueError(f"{where}: needs 'class' (or 'synset') and 'id' (or 'model'), got {sorted(row)}")
    path, collection, problem = _resolve_path(root, class_name, model_id, row.get("path") or None, roots)
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
                    keypoints={k: tuple(float(c) for c in v) for k, v in keypoints.items()},
                    collection=collection, problem=problem)


def _read_csv_rows(path: Path) -> list[dict]:
    """CSV rows as dicts with lower-case keys; a file whose first row starts with an ImageNet synset has no
    header and is read by position as 3D-DST's list (:data:`DST_LIST_COLUMNS`)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        return []
    if _SYNSET.match(rows[0][0].strip()):
        header, body = list(DST_LIST_COLUMNS), rows
    else:
        header, body = [h.strip().lower() for h in rows[0]], rows[1:]
    return [{k: (v or "").strip() for k, v in zip(header, r) if k} for r in body]


def read_mesh_list(path: str | Path, roots: CollectionRoots | None = None) -> list[CadModel]:
    """Read a mesh list (.csv or .json, see the module docstring). Errors name the file and row; models whose file
    is missing come back with a ``problem`` instead."""
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
        rows = _read_csv_rows(path)
    else:
        raise ValueError(f"mesh list {path}: expected a .csv or .json file")
    models = [_model_from_row(r, root, f"{path} row {i + 1}", roots) for i, r in enumerate(rows)]
    if not models:
        raise ValueError(f"mesh list {path} lists no models")
    seen: set[tuple[str, str]] = set()
    for m in models:
        if (m.class_name, m.model_id) in seen:
            raise ValueError(f"mesh list {path}: class {m.class_name!r} id {m.model_id!r} appears twice")
        seen.add((m.class_name, m.model_id))
    return models


def _class_from_stem(stem: str) -> str:
    """``chair_03`` -> ``chair``, ``mug`` -> ``mug``: the file stem without a trailing number."""
    return re.sub(r"[ _.-]*\d+$", "", stem) or stem


def find_models(source: str | Path, roots: CollectionRoots | None = None,
                default_class: str | None = None) -> list[CadModel]:
    """Models from a mesh list file, a folder with ``mesh_list.{csv,json}``, or a folder of ``<class>/<mesh>``
    files and/or loose ``<mesh>`` files (class: ``default_class``, else the file stem without a trailing number)."""
    source = Path(source)
    if source.is_file():
        return read_mesh_list(source, roots)
    if not source.is_dir():
        raise FileNotFoundError(f"--meshes: {source} is neither a mesh list file nor a folder")
    for name in ("mesh_list.json", "mesh_list.csv"):
        if (source / name).is_file():
            return read_mesh_list(source / name, roots)
    models = [CadModel(class_name=p.parent.name, model_id=p.stem, path=p)
              for d in sorted(x for x in source.iterdir() if x.is_dir())
              for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS]
    models += [CadModel(class_name=default_class or _class_from_stem(p.stem), model_id=p.stem, path=p)
               for p in sorted(source.iterdir()) if p.is_file() and p.suffix.lower() in MESH_EXTENSIONS]
    if not models:
        raise ValueError(f"--meshes: {source} has no mesh list and no <class>/<mesh> or <mesh> files "
                         f"({'|'.join(MESH_EXTENSIONS)})")
    seen: dict[tuple[str, str], Path] = {}
    for m in models:
        key = (m.class_name, m.model_id)
        if key in seen:
            raise ValueError(f"--meshes: {seen[key].name} and {m.path.name} in {source} give the same class "
                             f"{m.class_name!r} and id {m.model_id!r}; rename one")
        seen[key] = m.path
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
