"""Export a 3D-DST run as one COCO-style JSON file (``adapt3d export-coco runs/dst runs/dst/coco.json``).

Python API::

    from adapt3d.pipelines.export_coco import ExportCocoConfig, export_coco
    export_coco(ExportCocoConfig(dataset="runs/dst", output="runs/dst/coco.json"))

The format is described in :mod:`adapt3d.dst.coco`. Images removed by ``adapt3d kcf`` are left out unless
``--no-only-kept``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tyro

from adapt3d.dst.coco import to_coco
from adapt3d.dst.dataset import load_annotations
from adapt3d.utils.io import atomic_write_json


@dataclass
class ExportCocoConfig:
    """Write the annotations of an adapt3d synth run as COCO JSON (boxes, keypoints, polygons, 3D pose)."""

    dataset: tyro.conf.Positional[Path]
    """Output folder of adapt3d synth."""
    output: tyro.conf.Positional[Path]
    """COCO JSON file to write."""
    only_kept: bool = True
    """Leave out images that adapt3d kcf marked as removed."""
    segmentation: bool = True
    """Add silhouette polygons."""


@dataclass
class ExportCocoResult:
    out: Path
    images: int
    categories: list[str]


def export_coco(cfg: ExportCocoConfig) -> ExportCocoResult:
    output = Path(cfg.output)
    if output.suffix.lower() != ".json":
        raise ValueError(f"OUTPUT: {output} must be a .json file")
    if output.exists() and output.is_dir():
        raise ValueError(f"OUTPUT: {output} is a folder; give a .json file name")
    records = load_annotations(cfg.dataset)
    if records and records[0].get("format") == "dst3d":
        raise ValueError(f"DATASET: {cfg.dataset} is a 3D-DST dataset (.npy poses); COCO export needs adapt3d's "
                         "annotations (boxes, masks, keypoints): make it with adapt3d synth")
    coco = to_coco(records, cfg.dataset, only_kept=cfg.only_kept, segmentation=cfg.segmentation)
    atomic_write_json(output, coco)
    return ExportCocoResult(out=output, images=len(coco["images"]),
                            categories=[c["name"] for c in coco["categories"]])


def run(cfg: ExportCocoConfig) -> ExportCocoResult:
    return export_coco(cfg)
