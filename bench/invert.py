"""Time GAN inversion at a fixed step budget and report its reconstruction PSNR. Prints ONE line of JSON.

    python bench/invert.py --preset tiny --steps 50 --runs 2 --threads 1      # CPU smoke test, about 30 s
    python bench/invert.py --preset ffhq512 --steps 300 --device cuda        # DATID-3D's budget on a GPU

What it does: builds ``--preset`` with seeded random weights (``build_generator(preset, seed=0)``), renders a
target from a known latent (seed ``--target-seed``, psi 0.7, frontal conditioning) at a known camera (yaw +0.25,
pitch -0.1 rad from frontal; deterministic ray marching, ``noise_mode='const'``), quantises it to uint8 like a
saved PNG, and inverts it ``--runs`` times with :func:`adapt3d.inversion.project` (W+ by default) at the given
camera (``--search`` estimates it first with a 3 x 3 grid, 2 candidates refined for ``--search-steps``). Loss:
``mse`` (default; no weights needed) or ``lpips-random`` (the LPIPS network with random weights: LPIPS's cost,
meaningless values). The JSON has the wall seconds per inversion (median, min), seconds per step, the PSNR of the
final reconstruction (median over runs; dB over [-1, 1], i.e. 8-bit PSNR), the PSNR of the starting point w_avg at
the true camera, and the peak RSS / CUDA memory. One untimed warm-up step runs first.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from adapt3d.cameras import camera_label  # noqa: E402
from adapt3d.inversion import (CameraSearchConfig, ProjectorConfig, ReconstructionLoss, project, psnr,  # noqa: E402
                               search_camera, w_statistics)
from adapt3d.models.triplane import build_generator  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="generator preset (tiny, ffhq512, afhq512, shapenet128)")
    p.add_argument("--steps", type=int, default=100, help="projection steps per inversion (the fixed budget)")
    p.add_argument("--runs", type=int, default=2, help="timed inversions")
    p.add_argument("--space", choices=["w", "w+"], default="w+")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of w")
    p.add_argument("--loss", choices=["mse", "lpips-random"], default="mse")
    p.add_argument("--search", action="store_true", help="estimate the camera first (3 x 3 grid, keep 2)")
    p.add_argument("--search-steps", type=int, default=20)
    p.add_argument("--target-seed", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    G = build_generator(args.preset, seed=0).to(device).eval().requires_grad_(False)
    r = G.rendering
    z = torch.from_numpy(np.random.RandomState(args.target_seed).randn(1, G.z_dim)).float()
    front = camera_label(math.pi / 2, math.pi / 2, radius=r.avg_camera_radius, pivot=r.avg_camera_pivot,
                         fov_deg=G.config.camera_fov_deg).to(device)
    true_cam = camera_label(math.pi / 2 + 0.25, math.pi / 2 - 0.1, radius=r.avg_camera_radius,
                            pivot=r.avg_camera_pivot, fov_deg=G.config.camera_fov_deg).to(device)
    with torch.no_grad():
        ws = G.mapping(z.to(device), front, truncation_psi=0.7)
        target = G.synthesis(ws, true_cam, noise_mode="const", sampling="deterministic").image
        target = ((target.clamp(-1, 1) * 127.5 + 128).clamp(0, 255).floor() - 127.5) / 127.5  # 8-bit round trip
    if args.loss == "mse":
        loss = ReconstructionLoss(mse_weight=1.0)
    else:
        from adapt3d.metrics.lpips import LPIPS
        loss = ReconstructionLoss(lpips=LPIPS.random(0, resolution=min(256, G.img_resolution)).to(device))
    cfg = ProjectorConfig(space=args.space, num_steps=args.steps, lr=args.lr, w_noise=0.0, w_avg_samples=1000)
    stats = w_statistics(G, cfg.w_avg_samples, 0, device)
    with torch.no_grad():
        start = G.synthesis(stats.w_avg.reshape(1, 1, -1).expand(1, G.num_ws, -1), true_cam, noise_mode="const",
                            sampling="deterministic").image
    project(G, target, true_cam, loss, ProjectorConfig(num_steps=1, w_avg_samples=10), stats=stats)  # warm-up
    times, psnrs, cams = [], [], []
    for _ in range(args.runs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        camera, init = true_cam, None
        if args.search:
            found = search_camera(G, target, loss, CameraSearchConfig(14.3, 3, 5.7, 3, 2, args.search_steps), cfg,
                                  stats=stats)
            camera, init = found.camera, found.projection.ws
        res = project(G, target, camera, loss, cfg, stats=stats, init_ws=init)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        psnrs.append(res.psnr)
        cams.append([math.degrees(res.yaw - math.pi / 2), math.degrees(res.pitch - math.pi / 2)])
    out = {"bench": "invert", "preset": args.preset, "device": str(device), "threads": torch.get_num_threads(),
           "space": args.space, "loss": args.loss, "steps": args.steps, "lr": args.lr, "search": args.search,
           "runs": args.runs, "seconds_per_inversion": statistics.median(times), "min_seconds": min(times),
           "seconds_per_step": statistics.median(times) / args.steps, "psnr_db": statistics.median(psnrs),
           "psnr_start_db": float(psnr(start, target)[0]), "camera_deg": cams[-1], "true_camera_deg": [
               math.degrees(0.25), math.degrees(-0.1)],
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
           "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None,
           "torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
