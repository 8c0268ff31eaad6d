"""Precision of KCF's removal on a constructed set with known wrong labels, over input resolution and epochs.

The set: ``--images`` renders of the procedural box car (``--render-size`` px, azimuths spread by the golden angle,
polar 60 deg, distance 1.5, head light) laid out like a synth run; ``--wrong`` of them (seeded) get an azimuth label
turned by U[90, 270] deg. For each (image size, epochs) KCF runs with the given folds/bins/width and removes the
``--wrong`` fraction per class; precision = wrong labels among the removed images (chance = the wrong fraction).
Prints one JSON line per setting::

    python bench/kcf_precision.py --sizes 32 64 128 --epochs 10 30
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build_set(root: Path, n: int, wrong_fraction: float, render_size: int, seed: int) -> np.ndarray:
    from adapt3d.data.cad import find_models, load_cad_mesh
    from adapt3d.data.cad_procedural import write_demo_meshes
    from adapt3d.dst.render import render_view
    from adapt3d.dst.viewpoints import Viewpoint
    from adapt3d.export.images import save_image

    car = next(m for m in find_models(write_demo_meshes(root / "meshes")) if m.class_name == "car")
    mesh = load_cad_mesh(car.path, car.up_axis)
    rng = np.random.default_rng(seed)
    wrong = np.zeros(n, bool)
    wrong[rng.choice(n, int(round(wrong_fraction * n)), replace=False)] = True
    (root / "car/box_car/annotation").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        azimuth = (i * 2.399963) % (2 * math.pi)
        view = render_view(mesh, Viewpoint(azimuth, math.radians(60), 0.0, 1.5, 1), render_size)
        label = (azimuth + rng.uniform(math.pi / 2, 3 * math.pi / 2)) % (2 * math.pi) if wrong[i] else azimuth
        image = f"car/box_car/image/{i:03d}_00.png"
        save_image(root / image, view.rgb)
        ann = {"class": "car", "mesh_id": "box_car", "image": image, "azimuth": label, "elevation": math.pi / 6,
               "inplane_rotation": 0.0, "distance": 1.5, "files": {}}
        (root / f"car/box_car/annotation/{i:03d}_00.json").write_text(json.dumps(ann))
    return wrong


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--wrong", type=float, default=0.1)
    ap.add_argument("--render-size", type=int, default=128)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--num-bins", type=int, default=41)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=1, help="seed of the wrong labels (KCF's own seed is 42)")
    args = ap.parse_args(argv)

    from adapt3d.pipelines.kcf import KcfConfig, kcf

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "set"
        wrong = build_set(root, args.images, args.wrong, args.render_size, args.seed)
        for size in args.sizes:
            for epochs in args.epochs:
                for old in (root / "kcf").glob("fold*.json"):
                    old.unlink()
                t0 = time.time()
                result = kcf(KcfConfig(dataset=root, folds=args.folds, drop=args.wrong, epochs=epochs,
                                       image_size=size, num_bins=args.num_bins, width=args.width, lr=args.lr,
                                       device="cpu", progress=False))
                files = sorted(result.losses)
                removed = np.array([f in set(result.removed) for f in files])
                precision = float((removed & wrong).sum() / max(removed.sum(), 1))
                print(json.dumps({"image_size": size, "epochs": epochs, "precision": round(precision, 3),
                                  "removed": int(removed.sum()), "wrong": int(wrong.sum()),
                                  "seconds": round(time.time() - t0, 1), "folds": args.folds,
                                  "num_bins": args.num_bins, "width": args.width, "images": args.images,
                                  "threads": torch.get_num_threads(), "machine": platform.processor() or
                                  platform.machine(), "python": sys.version.split()[0]}), flush=True)


if __name__ == "__main__":
    main()
