"""Throughput of make-dataset's generation stage, batched vs one image at a time (what DATID-3D's script does).

Prints ONE line of JSON::

    python bench/make_dataset.py                                  # tiny models, CPU, 16 images, batch 8
    python bench/make_dataset.py --device cuda --num-images 64 --batch-size 16 --steps 50

Both runs use the same models (loaded once), job seed, prompts and settings; only ``batch_size`` differs
(sources per batch; ``--batch-size 1`` is the official loop: render one image, translate it, save it). The timed
stage is :func:`adapt3d.pipelines.make_dataset.generate`: map latents, render the sources, Stable Diffusion
img2img, write PNGs and manifest lines (plus CLIP and pose scores with ``--with-scores``). A warm-up batch runs
first. Reported: images/s of each, the speed-up, and the largest difference between the two runs' saved images
(max |a - b| over all pixels in [0, 1] units, and how many pixels differ) - per-image seeds make the outputs the
same up to float rounding of batched kernels.

Models: ``--diffusion``/``--clip-model`` default to the built-in tiny ones (random weights; the absolute numbers
then measure pipeline overhead more than diffusion compute). Give real ones (e.g.
``--preset ffhq512 --diffusion stabilityai/stable-diffusion-2-1-base``) on a GPU machine for real numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from adapt3d.pipelines import make_dataset as md  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--diffusion", default="tiny")
    p.add_argument("--clip-model", default="tiny")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8, help="sources per batch of the batched run")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--strength", type=float, default=0.7)
    p.add_argument("--with-scores", action="store_true", help="also CLIP and pose scores (not in DATID-3D)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _config(args, out: Path, batch_size: int, num_images: int) -> md.MakeDatasetConfig:
    return md.MakeDatasetConfig(
        out=out, preset=None if args.checkpoint else args.preset, generator=args.checkpoint,
        prompt=("a zombie", "a 3D render of a face in Pixar style"), num_images=num_images, batch_size=batch_size,
        num_inference_steps=args.steps, strength=args.strength, diffusion=args.diffusion,
        clip_model=args.clip_model if args.with_scores else "none", pose_filter=args.with_scores,
        device=args.device, seed=args.seed, progress=False)


def _timed(args, models, out: Path, batch_size: int, num_images: int) -> float:
    cfg = _config(args, out, batch_size, num_images)
    job = md.validate(cfg)
    out.mkdir(parents=True, exist_ok=True)
    if models["device"].type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    made = md.generate(cfg, job, out, models)
    if models["device"].type == "cuda":
        torch.cuda.synchronize()
    assert made == num_images, (made, num_images)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = _config(args, tmp / "warmup", args.batch_size, args.batch_size)
        job = md.validate(cfg)
        models = md.load_models(cfg, job, need_generation=True)
        if not args.with_scores:
            models["scorer"] = None
        _timed(args, models, tmp / "warmup", args.batch_size, args.batch_size)
        t_batched = _timed(args, models, tmp / "batched", args.batch_size, args.num_images)
        t_loop = _timed(args, models, tmp / "loop", 1, args.num_images)
        diffs, changed = [], 0
        for i in range(args.num_images):
            name = f"images/img{i:08d}.png"
            a = np.asarray(Image.open(tmp / "batched" / name), dtype=np.int16)
            b = np.asarray(Image.open(tmp / "loop" / name), dtype=np.int16)
            diffs.append(int(np.abs(a - b).max()))
            changed += int((a != b).any(-1).sum())
    dev = models["device"]
    print(json.dumps({
        "bench": "make_dataset.generate", "preset": args.preset, "checkpoint": args.checkpoint,
        "diffusion": args.diffusion, "with_scores": args.with_scores, "num_images": args.num_images,
        "batch_size": args.batch_size, "steps": args.steps, "strength": args.strength,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "batched_images_per_s": round(args.num_images / t_batched, 3),
        "loop_images_per_s": round(args.num_images / t_loop, 3),
        "speedup": round(t_loop / t_batched, 2),
        "max_abs_diff": max(diffs) / 255, "pixels_differing": changed,
        "pixels_total": args.num_images * a.shape[0] * a.shape[1]}))


if __name__ == "__main__":
    main()
