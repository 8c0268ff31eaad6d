"""The on-disk layout of a 3D-DST run and helpers to read it back.

::

    <out>/synth.json                       options and summary (synth-shard<i>of<n>.json per shard)
    <out>/prompts.json                     LLM prompt cache per class (with --llm)
    <out>/<class>/<mesh_id>/render/VVV.png     RGB render (uint8)
                            mask/VVV.png       silhouette {0, 255}
                            depth/VVV.npy      float32 (H, W) camera-frame depth, 0 on the background
                            normal/VVV.png     object-frame normals, (n + 1) / 2 * 255, 0 on the background
                            control/VVV.png    visual prompt (Canny edges or disparity)
                            view/VVV.json      the view's annotation (written last: the view is done)
                            image/VVV_SS.png   generated image SS of view VVV
                            annotation/VVV_SS.json   the image's annotation (written last: the image is done)
                            annotation/VVV.npy       the view in 3D-DST's own format (--write-npy, default on)
    <out>/kcf/                             written by ``adapt3d kcf``

Every path inside an annotation is relative to ``<out>`` (``mesh_path`` is the mesh file as given).

3D-DST's own datasets (``<synset>/<model>/annotation/NNN.npy`` with images in ``<synset>/<model>/<data_name>/
NNN_SS.png``, or only its renders ``image_render/NNN.png``) are read too: :func:`load_annotations` falls back to them
when a folder has no JSON annotation, converting each ``.npy`` with :func:`adapt3d.dst.dst3d_format.read_dst3d_npy`
(records get ``"format": "dst3d"``; they carry the pose, not boxes, masks or keypoints).
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["annotation_files", "load_annotations", "load_dst3d_annotations", "check_dataset"]


def check_dataset(root: str | Path, arg: str = "DATASET") -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{arg}: {root} is not a folder (expected the --out folder of adapt3d synth)")
    return root


def annotation_files(root: str | Path) -> list[Path]:
    """All image annotations ``<class>/<mesh>/annotation/*.json`` under ``root``, sorted."""
    return sorted(Path(root).glob("*/*/annotation/*.json"))


def load_dst3d_annotations(root: str | Path, arg: str = "DATASET") -> list[dict]:
    """Records of a 3D-DST-format dataset (see the module docstring): one per generated image
    ``<class>/<model>/<folder>/NNN_SS.png`` whose ``annotation/NNN.npy`` exists (``folder`` any but annotation,
    depth, image_render), else one per render ``image_render/NNN.png``."""
    from adapt3d.dst.dst3d_format import read_dst3d_npy
    from adapt3d.dst.imagenet import class_display_name

    root = check_dataset(root, arg)
    records = []
    for npy in sorted(root.glob("*/*/annotation/*.npy")):
        model_dir, name = npy.parent.parent, npy.stem
        images = sorted(p for p in model_dir.glob(f"*/{name}_[0-9][0-9].png")
                        if p.parent.name not in ("annotation", "depth", "image_render", "render", "control", "mask",
                                                 "normal"))
        if not images and (model_dir / "image_render" / f"{name}.png").is_file():
            images = [model_dir / "image_render" / f"{name}.png"]
        if not images:
            continue
        try:
            pose = read_dst3d_npy(npy)
        except ValueError as e:
            raise ValueError(f"{arg}: {e}") from e
        cls = model_dir.parent.name
        for image in images:
            rec = dict(pose)
            rec.update({"class": cls, "class_name": class_display_name(cls), "mesh_id": model_dir.name,
                        "image": image.relative_to(root).as_posix(), "format": "dst3d",
                        "_file": npy.relative_to(root).as_posix()})
            records.append(rec)
    return records


def load_annotations(root: str | Path, arg: str = "DATASET") -> list[dict]:
    """Every image annotation under ``root`` with ``_file`` (its path relative to ``root``) added; a folder
    without adapt3d annotations is read as a 3D-DST dataset (:func:`load_dst3d_annotations`)."""
    root = check_dataset(root, arg)
    records = []
    if not annotation_files(root):
        records = load_dst3d_annotations(root, arg)
        if records:
            return records
    for path in annotation_files(root):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{arg}: annotation {path} could not be read ({e})") from e
        record["_file"] = path.relative_to(root).as_posix()
        records.append(record)
    if not records:
        raise ValueError(f"{arg}: {root} holds no annotations (<class>/<mesh>/annotation/*.json, or 3D-DST's "
                         "<class>/<model>/annotation/NNN.npy with images); run adapt3d synth first")
    return records
