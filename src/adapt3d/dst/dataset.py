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
    <out>/kcf/                             written by ``adapt3d kcf``

Every path inside an annotation is relative to ``<out>``.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["annotation_files", "load_annotations", "check_dataset"]


def check_dataset(root: str | Path, arg: str = "DATASET") -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{arg}: {root} is not a folder (expected the --out folder of adapt3d synth)")
    return root


def annotation_files(root: str | Path) -> list[Path]:
    """All image annotations ``<class>/<mesh>/annotation/*.json`` under ``root``, sorted."""
    return sorted(Path(root).glob("*/*/annotation/*.json"))


def load_annotations(root: str | Path, arg: str = "DATASET") -> list[dict]:
    """Every image annotation under ``root`` with ``_file`` (its path relative to ``root``) added."""
    root = check_dataset(root, arg)
    records = []
    for path in annotation_files(root):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{arg}: annotation {path} could not be read ({e})") from e
        record["_file"] = path.relative_to(root).as_posix()
        records.append(record)
    if not records:
        raise ValueError(f"{arg}: {root} holds no annotations (<class>/<mesh>/annotation/*.json); run adapt3d synth "
                         "first")
    return records
