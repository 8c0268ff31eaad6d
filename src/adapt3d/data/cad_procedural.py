"""Procedural CAD meshes for the offline demo and tests: a box car and a box chair, with colours and keypoints.

Both are built in the usual mesh-file frame (+y up, front towards -z, as ShapeNet) so that they go through the
same loading path as downloaded CAD models (:func:`adapt3d.data.cad.load_cad_mesh` with ``up_axis='y'``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from adapt3d.utils.io import atomic_path, atomic_write_json

__all__ = ["box_car", "box_chair", "write_demo_meshes"]


def _box(size, centre, rgb):
    import trimesh

    m = trimesh.creation.box(extents=size)
    m.apply_translation(centre)
    m.visual.face_colors = np.tile(np.array([*rgb, 255], dtype=np.uint8), (len(m.faces), 1))
    return m


def _wheel(centre, radius, width, rgb):
    import trimesh

    m = trimesh.creation.cylinder(radius=radius, height=width, sections=16)
    m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))  # axis along x
    m.apply_translation(centre)
    m.visual.face_colors = np.tile(np.array([*rgb, 255], dtype=np.uint8), (len(m.faces), 1))
    return m


def box_car():
    """A car made of boxes (length 4 along z, front at -z) with 4 wheels; returns (trimesh, keypoints)."""
    import trimesh

    length, width, height, clearance = 4.0, 1.8, 0.7, 0.35
    parts = [
        _box((width, height, length), (0, clearance + height / 2, 0), (200, 30, 30)),  # body, red
        _box((width * 0.9, 0.55, length * 0.5), (0, clearance + height + 0.275, 0.2), (90, 140, 220)),  # cabin
        _box((width * 0.95, height * 0.5, 0.05), (0, clearance + height * 0.6, -length / 2 - 0.025),
             (250, 220, 40)),  # front grille, yellow: makes the front distinguishable from the back
        _box((width * 0.95, height * 0.3, 0.05), (0, clearance + height * 0.7, length / 2 + 0.025),
             (60, 60, 60)),  # rear bumper, dark
    ]
    r, wz = 0.35, length / 2 - 0.7
    wheels = {"wheel_fl": (-width / 2, r, -wz), "wheel_fr": (width / 2, r, -wz),
              "wheel_rl": (-width / 2, r, wz), "wheel_rr": (width / 2, r, wz)}
    parts += [_wheel(c, r, 0.3, (25, 25, 25)) for c in wheels.values()]
    top = clearance + height
    keypoints = {name: (x + np.sign(x) * 0.15, y, z) for name, (x, y, z) in wheels.items()}  # outer hub centres
    keypoints.update({"headlight_l": (-width / 2, top, -length / 2), "headlight_r": (width / 2, top, -length / 2),
                      "taillight_l": (-width / 2, top, length / 2), "taillight_r": (width / 2, top, length / 2),
                      "roof_center": (0.0, top + 0.55, 0.2)})
    return trimesh.util.concatenate(parts), {k: [float(c) for c in v] for k, v in keypoints.items()}


def box_chair():
    """A chair of boxes (seat 1 x 1 at height 1, back rest at +z, front at -z); returns (trimesh, keypoints)."""
    import trimesh

    s, t, leg = 1.0, 0.1, 0.08
    parts = [_box((s, t, s), (0, 1.0, 0), (150, 100, 50)),  # seat, brown
             _box((s, 1.0, t), (0, 1.0 + t / 2 + 0.5, s / 2 - t / 2), (110, 70, 40))]  # back rest
    legs = {"leg_fl": (-s / 2 + leg / 2, -s / 2 + leg / 2), "leg_fr": (s / 2 - leg / 2, -s / 2 + leg / 2),
            "leg_bl": (-s / 2 + leg / 2, s / 2 - leg / 2), "leg_br": (s / 2 - leg / 2, s / 2 - leg / 2)}
    parts += [_box((leg, 1.0 - t / 2, leg), (x, (1.0 - t / 2) / 2, z), (60, 40, 30)) for x, z in legs.values()]
    keypoints = {name: (x, 0.0, z) for name, (x, z) in legs.items()}
    top = 1.0 + t / 2
    keypoints.update({"seat_fl": (-s / 2, top, -s / 2), "seat_fr": (s / 2, top, -s / 2),
                      "back_tl": (-s / 2, top + 1.0, s / 2), "back_tr": (s / 2, top + 1.0, s / 2)})
    return trimesh.util.concatenate(parts), {k: [float(c) for c in v] for k, v in keypoints.items()}


def write_demo_meshes(folder: str | Path) -> Path:
    """Write ``car/box_car.ply``, ``chair/box_chair.ply`` and ``mesh_list.json`` into ``folder``; returns the list.

    Alignment follows 3D-DST's CSV columns: the car uses strategy 3 (views from above), the chair strategy 1.
    """
    folder = Path(folder)
    rows = []
    for class_name, model_id, build, sampling, tags in (
            ("car", "box_car", box_car, 3, ["red", "sedan", "toy"]),
            ("chair", "box_chair", box_chair, 1, ["wooden", "dining chair"])):
        mesh, keypoints = build()
        path = folder / class_name / f"{model_id}.ply"
        with atomic_path(path) as tmp:
            mesh.export(tmp)
        rows.append({"class": class_name, "id": model_id, "path": f"{class_name}/{model_id}.ply", "azimuth": 0.0,
                     "elevation": 0.0, "distance": 1.5, "sampling": sampling, "strength": 1, "up": "y",
                     "tags": tags, "keypoints": keypoints})
    list_path = folder / "mesh_list.json"
    atomic_write_json(list_path, rows)
    json.loads(list_path.read_text())  # written and readable
    return list_path
