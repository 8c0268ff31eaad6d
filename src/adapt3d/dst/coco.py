"""COCO-style export of a 3D-DST run: boxes, keypoints, silhouette polygons, plus the 3D pose of every object.

One image and one annotation per generated image. Standard COCO fields: ``images`` (``id``, ``file_name`` relative
to the dataset folder, ``width``, ``height``), ``annotations`` (``bbox`` [x, y, w, h], ``area`` = silhouette pixels,
``iscrowd`` 0, ``segmentation`` polygons, ``keypoints`` [x1, y1, v1, ...] with v = 2 visible, 1 in the image but
occluded, 0 outside the image or not on this mesh, ``num_keypoints`` = count of v > 0) and ``categories`` (``id``,
``name``, ``keypoints`` = the union of the class's keypoint names, ``skeleton`` []). Pixel coordinates follow
:mod:`adapt3d.dst.annotations` (pixel centres at j + 0.5). Extra per annotation: ``pose`` (3D-DST angles, the
PASCAL3D+ angles, K, R, t, cam2world), ``class_name``, ``mesh_id``, ``prompt``, ``seed`` and ``kcf`` when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["to_coco", "mask_polygons"]


def mask_polygons(mask: np.ndarray, min_points: int = 3) -> list[list[float]]:
    """Outer contours of a boolean mask (H, W) as COCO polygons through the centres of its boundary pixels."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float64) + 0.5
        if len(pts) >= min_points:
            polys.append(np.round(pts.reshape(-1), 2).tolist())
        else:  # a one- or two-pixel sliver: its pixel square
            x, y = pts.min(0) - 0.5
            x1, y1 = pts.max(0) + 0.5
            polys.append([x, y, x1, y, x1, y1, x, y1])
    return polys


def to_coco(records: list[dict], root: str | Path, only_kept: bool = True, segmentation: bool = True) -> dict:
    """Build the COCO dict from annotation records (from :func:`adapt3d.dst.dataset.load_annotations`)."""
    from PIL import Image

    root = Path(root)
    if only_kept:
        records = [r for r in records if r.get("kcf", {}).get("kept", True)]
    class_names = sorted({r["class"] for r in records})
    kp_names = {c: [] for c in class_names}
    for r in records:
        for kp in r.get("keypoints", []):
            if kp["name"] not in kp_names[r["class"]]:
                kp_names[r["class"]].append(kp["name"])
    display = {r["class"]: r.get("class_name") or r["class"] for r in records}
    categories = [{"id": i + 1, "name": c, "display_name": display[c], "supercategory": "object",
                   "keypoints": kp_names[c], "skeleton": []} for i, c in enumerate(class_names)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for i, r in enumerate(records):
        images.append({"id": i + 1, "file_name": r["image"], "width": r["width"], "height": r["height"],
                       "annotation_file": r["_file"]})
        by_name = {kp["name"]: kp for kp in r.get("keypoints", [])}
        flat, count = [], 0
        for name in kp_names[r["class"]]:
            kp = by_name.get(name)
            if kp is None or not kp["in_image"]:
                flat += [0.0, 0.0, 0]
                continue
            v = 2 if kp["visible"] else 1
            flat += [round(kp["uv"][0], 3), round(kp["uv"][1], 3), v]
            count += 1
        ann = {"id": i + 1, "image_id": i + 1, "category_id": cat_id[r["class"]], "class_name": r.get("class_name"),
               "bbox": r["bbox"] or [0.0, 0.0, 0.0, 0.0], "area": r["area"], "iscrowd": 0,
               "keypoints": flat, "num_keypoints": count, "mesh_id": r["mesh_id"],
               "pose": {**{k: r[k] for k in ("azimuth", "elevation", "distance", "polar", "pascal3d", "K", "R", "t",
                                             "cam2world") if k in r},
                        "inplane_rotation": r.get("inplane_rotation", r.get("theta", 0.0))},
               "prompt": r.get("prompt"), "seed": r.get("seed")}
        if "kcf" in r:
            ann["kcf"] = r["kcf"]
        if segmentation:
            with Image.open(root / r["files"]["mask"]) as m:
                ann["segmentation"] = mask_polygons(np.asarray(m) > 127)
        annotations.append(ann)
    return {"info": {"description": "3D-DST synthetic images with exact 3D annotations (adapt3d export-coco)",
                     "pixel_convention": "(0, 0) = top-left corner of the top-left pixel; pixel centres at j + 0.5",
                     "angles": "radians; pose.azimuth/elevation/polar/inplane_rotation: 3D-DST convention (azimuth from +x "
                               "towards +y), pose.pascal3d: PASCAL3D+ (its theta is the in-plane rotation)"},
            "licenses": [], "images": images, "annotations": annotations, "categories": categories}
