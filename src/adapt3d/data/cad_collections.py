"""Where the CAD collections of 3D-DST's model list keep their mesh files.

3D-DST's released aligned-model list (``3d-dst-models.csv``: ``synset, model, distance, azimuth, elevation, strength,
sampling``) names each model by its id in one of these collections; the id alone says which one. Give the root
folder of each collection you have (``--shapenet-root`` etc.); a model whose file is in none of them is skipped with
the places that were tried.

* **ShapeNetCore** (v2, or v1): ``<root>/<shapenet synset>/<model id>/models/model_normalized.obj`` (v2), else
  ``<root>/<shapenet synset>/<model id>/model_normalized.obj`` or ``.../model.obj`` (v1). ShapeNet's synset folders
  are its own, not the ImageNet synset of the list, so the model id is looked up across all of them (the folder
  names are listed once, on first use).
* **Objaverse** (1.0, GLB by uid): ``<root>/<uid>.glb``, or the ``objaverse`` package's cache layout
  ``<root>/glbs/<bucket>/<uid>.glb`` (also with ``<root>`` = its ``hf-objaverse-v1`` folder).
* **OmniObject3D** (raw scans): model ids ``omniobject3d_<scan>`` with ``<scan>`` = ``<category>_<nnn>``, at
  ``<root>/raw/raw_scans/<category>/<scan>/Scan/Scan.obj`` (``<root>`` may also be the ``raw_scans`` folder).
* **Toys4k**: ids ``toys4k_...`` point at Blender ``.blend`` files, which need Blender to read; they are reported as
  unsupported.

Resolution order for a model id: ShapeNet, then Objaverse, then OmniObject3D (3D-DST's order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CollectionRoots", "resolve_collection_model"]


@dataclass
class CollectionRoots:
    """Root folders of the CAD collections (None: not available)."""

    shapenet: Path | None = None
    objaverse: Path | None = None
    omniobject3d: Path | None = None
    _shapenet_dirs: list[Path] | None = field(default=None, repr=False)
    _objaverse_buckets: list[Path] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("shapenet", "objaverse", "omniobject3d"):
            value = getattr(self, name)
            if value is not None:
                value = Path(value).expanduser()
                if not value.is_dir():
                    raise FileNotFoundError(f"--{name}-root: {value} is not a folder")
                setattr(self, name, value)

    def any(self) -> bool:
        return any(r is not None for r in (self.shapenet, self.objaverse, self.omniobject3d))

    def describe(self) -> str:
        given = [f"--{n}-root {getattr(self, n)}" for n in ("shapenet", "objaverse", "omniobject3d")
                 if getattr(self, n) is not None]
        return ", ".join(given) if given else "no collection root given (--shapenet-root, --objaverse-root, " \
            "--omniobject3d-root)"

    def shapenet_dirs(self) -> list[Path]:
        if self._shapenet_dirs is None:
            self._shapenet_dirs = sorted(p for p in self.shapenet.iterdir() if p.is_dir()) if self.shapenet else []
        return self._shapenet_dirs

    def objaverse_buckets(self) -> list[Path]:
        if self._objaverse_buckets is None:
            buckets: list[Path] = []
            if self.objaverse is not None:
                for glbs in (self.objaverse / "glbs", self.objaverse / "hf-objaverse-v1" / "glbs"):
                    if glbs.is_dir():
                        buckets += sorted(p for p in glbs.iterdir() if p.is_dir())
            self._objaverse_buckets = buckets
        return self._objaverse_buckets


def _shapenet(roots: CollectionRoots, model_id: str) -> tuple[Path | None, str | None]:
    for synset_dir in roots.shapenet_dirs():
        folder = synset_dir / model_id
        if folder.is_dir():
            for rel in ("models/model_normalized.obj", "model_normalized.obj", "model.obj"):
                if (folder / rel).is_file():
                    return folder / rel, None
            return None, f"ShapeNet folder {folder} has no models/model_normalized.obj or model.obj"
    return None, None


def _objaverse(roots: CollectionRoots, model_id: str) -> Path | None:
    direct = roots.objaverse / f"{model_id}.glb"
    if direct.is_file():
        return direct
    for bucket in roots.objaverse_buckets():
        if (bucket / f"{model_id}.glb").is_file():
            return bucket / f"{model_id}.glb"
    return None


def _omniobject3d(roots: CollectionRoots, model_id: str) -> Path | None:
    scan = model_id[len("omniobject3d_"):]
    category = scan.rsplit("_", 1)[0]
    for base in (roots.omniobject3d / "raw" / "raw_scans", roots.omniobject3d):
        path = base / category / scan / "Scan" / "Scan.obj"
        if path.is_file():
            return path
    return None


def resolve_collection_model(roots: CollectionRoots, model_id: str) -> tuple[Path | None, str, str | None]:
    """(path, collection, problem) of a 3D-DST model id: the mesh file and its collection, or None and a one-line
    reason (what was tried)."""
    if model_id.startswith("toys4k"):
        return None, "toys4k", f"model {model_id!r} is a Toys4k .blend file, which needs Blender; not supported"
    if model_id.startswith("omniobject3d_"):
        if roots.omniobject3d is None:
            return None, "omniobject3d", f"model {model_id!r} is an OmniObject3D scan; give --omniobject3d-root"
        path = _omniobject3d(roots, model_id)
        if path is None:
            return None, "omniobject3d", (f"OmniObject3D scan {model_id!r} not found under --omniobject3d-root "
                                          f"{roots.omniobject3d} (raw/raw_scans/<category>/<scan>/Scan/Scan.obj)")
        return path, "omniobject3d", None
    if roots.shapenet is not None:
        path, problem = _shapenet(roots, model_id)
        if path is not None or problem is not None:
            return path, "shapenet", problem
    if roots.objaverse is not None:
        path = _objaverse(roots, model_id)
        if path is not None:
            return path, "objaverse", None
    return None, "unknown", f"model {model_id!r} not found ({roots.describe()})"
