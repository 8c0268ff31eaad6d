"""Fine-tuning throughput (kimg/h) and peak memory of adapt3d's GAN training step for a preset and batch size.

Prints ONE line of JSON (run each configuration in its own process: the peak RSS is the process's)::

    python bench/finetune.py --preset ffhq512 --batch 4 --device cuda          # DATID-3D's model
    python bench/finetune.py --preset ffhq512 --batch 20 --batch-gpu 4 --device cuda
    python bench/finetune.py --preset tiny --batch 4 --steps 2 --warmup 1      # smoke test, a few seconds

What it measures: the generator of ``--preset`` (seeded random weights) against a fresh dual discriminator, on a
synthetic in-memory dataset (random images, DATID-3D sinusoidal cameras), with adapt3d's ``Trainer`` and the
default fine-tuning options (R1 gamma 5, density regularisation 0.25, pose-conditioning swap 0.8, ADA at p 0.2 so
the augmentation work is included). Each timed step runs *every* phase (Gmain, Greg, Dmain, Dreg); the per-phase
times are then combined with the real lazy intervals (Greg every ``--density-reg-interval`` = 4 steps, Dreg every
``--d-reg-interval`` = 16 steps) into the amortised seconds per step, ``sec_per_kimg = step / batch * 1000`` and
``kimg_per_hour``. Data loading is not included (the dataset is in memory). Peak memory: ``torch.cuda.
max_memory_allocated`` on CUDA, the process's peak RSS always.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from adapt3d.cameras import make_pose_sampler  # noqa: E402
from adapt3d.models.triplane import build_generator  # noqa: E402
from adapt3d.pipelines.finetune import default_discriminator  # noqa: E402
from adapt3d.training.config import FinetuneConfig  # noqa: E402
from adapt3d.training.loop import Trainer  # noqa: E402

PHASES = ("_phase_G", "_phase_G_reg", "_phase_D", "_phase_D_reg")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ffhq512", help="generator preset (ffhq512, afhq512, shapenet128, tiny)")
    p.add_argument("--batch", type=int, default=4, help="global batch size (one process)")
    p.add_argument("--batch-gpu", type=int, default=None, help="micro-batch (default: --batch)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--neural-res", type=int, default=None, help="neural rendering resolution (preset's default)")
    p.add_argument("--density-reg-interval", type=int, default=4)
    p.add_argument("--d-reg-interval", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--dataset-size", type=int, default=64, help="synthetic images held in memory")
    return p.parse_args(argv)


class _MemoryDataset(torch.utils.data.Dataset):
    def __init__(self, n: int, resolution: int, labels: torch.Tensor):
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (n, 3, resolution, resolution), generator=g, dtype=torch.uint8)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def memory_dataset(G, n: int) -> _MemoryDataset:
    """``n`` random uint8 images at G's resolution with DATID-3D's sinusoidal camera labels, held in memory."""
    r = G.rendering
    poses = make_pose_sampler("sinusoidal").sample(n, torch.Generator().manual_seed(0))
    labels = poses.labels(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg)
    return _MemoryDataset(n, G.img_resolution, labels)


def time_training_steps(trainer: Trainer, warmup: int, steps: int, density_reg_interval: int = 4,
                        d_reg_interval: int = 16) -> dict:
    """Run ``warmup + steps`` training steps with every phase (the trainer must be configured with both lazy
    intervals = 1) and time each phase; returns the per-phase medians and the amortised seconds per step with the
    real lazy intervals (Greg every ``density_reg_interval`` steps, Dreg every ``d_reg_interval``)."""
    device = trainer.device
    times: dict[str, list[float]] = {name: [] for name in PHASES}
    step_times: list[float] = []

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    originals = {name: getattr(trainer, name) for name in PHASES}
    for name, fn in originals.items():
        def timed(*a, _fn=fn, _name=name, **k):
            sync()
            t = time.perf_counter()
            out = _fn(*a, **k)
            sync()
            if trainer.step >= warmup:
                times[_name].append(time.perf_counter() - t)
            return out
        setattr(trainer, name, timed)
    try:
        loader = iter(trainer.data_loader())
        for _ in range(warmup + steps):
            reals, real_c = next(loader)
            sync()
            t = time.perf_counter()
            trainer.train_step(reals, real_c)
            sync()
            if trainer.step > warmup:
                step_times.append(time.perf_counter() - t)
    finally:
        for name in PHASES:
            trainer.__dict__.pop(name, None)
    med = {k: statistics.median(v) for k, v in times.items()}
    other = max(statistics.median(step_times) - sum(med.values()), 0.0)  # EMA, schedules, bookkeeping
    amortised = (med["_phase_G"] + med["_phase_D"] + other + med["_phase_G_reg"] / density_reg_interval
                 + med["_phase_D_reg"] / d_reg_interval)
    return {"phase_seconds": {"G": med["_phase_G"], "G_density_reg": med["_phase_G_reg"], "D": med["_phase_D"],
                              "D_r1": med["_phase_D_reg"], "other": other},
            "sec_per_step": amortised, "step_seconds": step_times}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    G = build_generator(args.preset, seed=0)
    dataset = memory_dataset(G, args.dataset_size)
    cfg = FinetuneConfig(dataset=Path("."), preset=args.preset, batch=args.batch, batch_gpu=args.batch_gpu,
                         kimg=1e6, density_reg_interval=1, d_reg_interval=1, augment="fixed", augment_p=0.2,
                         neural_rendering_resolution=args.neural_res, progress=False)
    trainer = Trainer(cfg, G, default_discriminator(G), dataset, device=device)
    timing = time_training_steps(trainer, args.warmup, args.steps, args.density_reg_interval, args.d_reg_interval)
    med, amortised = timing["phase_seconds"], timing["sec_per_step"]
    result = {
        "preset": args.preset, "batch": args.batch, "batch_gpu": trainer.batch_gpu, "device": str(device),
        "neural_rendering_resolution": trainer.nrr_schedule.initial, "img_resolution": G.img_resolution,
        "steps": args.steps, "warmup": args.warmup,
        "phase_seconds": med,
        "reg_intervals": {"density": args.density_reg_interval, "r1": args.d_reg_interval},
        "sec_per_step": amortised, "sec_per_kimg": amortised / args.batch * 1000,
        "kimg_per_hour": 3600 / (amortised / args.batch * 1000),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
        "peak_cuda_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
