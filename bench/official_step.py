"""Side by side: one EG3D fine-tuning step of adapt3d and of the official NVlabs/eg3d code, same weights, same batch.

Prints ONE line of JSON::

    python bench/official_step.py --official-root /path/to/eg3d/eg3d --device cuda           # ffhq512, batch 4
    python bench/official_step.py --official-root /path/to/eg3d/eg3d --scale small --steps 1 --warmup 0   # CPU check

The official code is imported from ``--official-root`` (the ``eg3d/`` folder of a checkout kept OUTSIDE this
repository: its licence is non-commercial; it is imported only to be measured). Both sides start from the same
weights (the official networks are built from the official kwargs of ``adapt3d.configs`` ``eg3d-ffhq512`` and
load adapt3d's state dicts, strict) and run the same training phases with the official settings of a DATID-3D
fine-tune: Gmain, Greg (density regularisation, every 4 steps), Dmain, Dreg (R1 gamma 5 on image and raw image,
every 16 steps), Adam with lazy-regularisation scaling, neural rendering at 128, pose-conditioning swap 0.8, dual
discrimination, no augmentation, no blur. The official side uses its training loop's backend settings
(cuDNN autotuning on, TF32 off, ``conv2d_gradfix`` on) and its custom CUDA ops (compiled on first use; the warm-up
step pays for it); adapt3d's side runs its ``Trainer`` under the same backend settings (``--fast`` turns TF32 on for
adapt3d only). Every phase is timed on every step; the amortised step uses the real intervals. Reported per side:
phase seconds, seconds per step, kimg/h, peak memory (CUDA peak allocated, or CPU peak RSS), and the ratios
adapt3d / official. ``--scale small`` narrows the networks (channel_base 1024) for a CPU smoke test.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from adapt3d.configs import model_config  # noqa: E402
from adapt3d.testing.full_size import _construct  # noqa: E402

PHASES = (("Gmain", "G", 1), ("Greg", "G", 4), ("Dmain", "D", 1), ("Dreg", "D", 16))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official-root", required=True, help="the eg3d/ folder of an NVlabs/eg3d checkout")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (official: CUDA op compilation)")
    p.add_argument("--scale", choices=["full", "small"], default="full")
    p.add_argument("--checkpoint", default=None, help="official-format .pkl to start from (default: seeded random)")
    p.add_argument("--fast", action="store_true", help="adapt3d side only: TF32 on")
    p.add_argument("--sides", default="adapt3d,official")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _kwargs(scale: str) -> tuple[dict, dict, int]:
    cfg = model_config("eg3d-ffhq512")["components"]
    g, d = cfg["G"]["init_kwargs"], cfg["D"]["init_kwargs"]
    nrr = cfg["G"]["attributes"]["neural_rendering_resolution"]
    if scale == "small":  # (the 2X / 4X heads' in-place add breaks the official backward: keep 8XDC)
        g.update(channel_base=1024, channel_max=32)
        g["rendering_kwargs"].update(depth_resolution=8, depth_resolution_importance=8)
        d.update(channel_base=1024, channel_max=32)
        nrr = 32
    return g, d, nrr


def _networks(args, g_kwargs, d_kwargs, nrr):
    if args.checkpoint:
        from adapt3d.models.loading import load_generator
        loaded = load_generator(checkpoint=args.checkpoint, load_discriminator=True, progress=False)
        return loaded.generator, loaded.discriminator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        G = _construct({"class": "TriPlaneGenerator", "init_kwargs": g_kwargs,
                        "attributes": {"neural_rendering_resolution": nrr}})
        D = _construct({"class": "DualDiscriminator", "init_kwargs": d_kwargs})
    return G, D


class _Peak:
    def __init__(self, device):
        from full_size import PeakMemory
        self.meter = PeakMemory(device)

    def __enter__(self):
        if self.meter.device.type == "cuda":
            torch.cuda.empty_cache()
        return self.meter.__enter__()

    def __exit__(self, *exc):
        self.meter.__exit__(*exc)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _summary(times: dict, step_times: list, batch: int, peak_mb: float) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    intervals = {name: interval for name, _, interval in PHASES}
    phases = sum(med[k] / intervals[k] for k in intervals)
    other = max(statistics.median(step_times) - sum(med[k] for k in intervals), 0.0) if step_times else 0.0
    step = phases + other
    return {"phase_seconds": {k: round(v, 4) for k, v in med.items()}, "other_seconds": round(other, 4),
            "sec_per_step": round(step, 4), "kimg_per_hour": round(3600 / (step / batch * 1000), 3),
            "peak_mem_mb": round(peak_mb, 1)}


def run_adapt3d(args, G, D, dataset, device) -> dict:
    from adapt3d.training.config import FinetuneConfig
    from adapt3d.training.loop import Trainer
    from full_size_stages import _bench_module

    bench_ft = _bench_module("finetune")
    cfg = FinetuneConfig(dataset=Path("."), generator="bench", batch=args.batch, kimg=1e6, density_reg_interval=1,
                         d_reg_interval=1, augment="none", r1_gamma=5.0, neural_rendering_schedule="fixed",
                         neural_rendering_resolution=int(G.neural_rendering_resolution), progress=False)
    with _Peak(device) as peak:
        trainer = Trainer(cfg, G, D, dataset, device=device)
        timing = bench_ft.time_training_steps(trainer, args.warmup, args.steps, 4, 16)
    p = timing["phase_seconds"]
    times = {"Gmain": [p["G"]], "Greg": [p["G_density_reg"]], "Dmain": [p["D"]], "Dreg": [p["D_r1"]]}
    out = _summary(times, [], args.batch, peak.peak_mb)
    out["other_seconds"] = round(p["other"], 4)
    out["sec_per_step"] = round(timing["sec_per_step"], 4)
    out["kimg_per_hour"] = round(3600 / (timing["sec_per_step"] / args.batch * 1000), 3)
    return out


def run_official(args, G_ours, D_ours, g_kwargs, d_kwargs, nrr, dataset, device) -> dict:
    root = str(Path(args.official_root).resolve())
    sys.path.insert(0, root)
    try:  # dnnlib.util imports requests for URL downloads only
        import requests  # noqa: F401
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")
    import dnnlib  # noqa: E402  (official, non-commercial licence: imported only to be measured)
    from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
    from training.dual_discriminator import DualDiscriminator
    from training.loss import StyleGAN2Loss
    from training.triplane import TriPlaneGenerator

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    conv2d_gradfix.enabled = True
    grid_sample_gradfix.enabled = False
    common = dict(c_dim=25, img_resolution=g_kwargs["img_resolution"], img_channels=3)
    gk = {k: v for k, v in g_kwargs.items() if k not in common}
    gk["mapping_kwargs"] = dnnlib.EasyDict(gk["mapping_kwargs"])
    gk["sr_kwargs"] = dnnlib.EasyDict(gk["sr_kwargs"])
    dk = {k: v for k, v in d_kwargs.items() if k not in common}
    for k in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs"):
        dk[k] = dnnlib.EasyDict(dk[k])
    with _Peak(device) as peak:
        G = TriPlaneGenerator(**gk, **common)
        G.register_buffer("dataset_label_std", torch.ones(25))
        G.load_state_dict(G_ours.state_dict(), strict=True)
        D = DualDiscriminator(**dk, **common)
        D.load_state_dict(D_ours.state_dict(), strict=True)
        G = G.train().requires_grad_(False).to(device)
        D = D.train().requires_grad_(False).to(device)
        G.neural_rendering_resolution = nrr
        G_ema = copy.deepcopy(G).eval()
        loss = StyleGAN2Loss(device=device, G=G, D=D, r1_gamma=5.0, neural_rendering_resolution_initial=nrr,
                             gpc_reg_prob=0.8, gpc_reg_fade_kimg=0, dual_discrimination=True,
                             filter_mode="antialiased")
        opts = {}
        for name, module, lr, reg in (("G", G, 0.0025, 4), ("D", D, 0.002, 16)):
            ratio = reg / (reg + 1)
            opts[name] = torch.optim.Adam(module.parameters(), lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)
        times = {name: [] for name, _, _ in PHASES}
        step_times = []
        gen = torch.Generator().manual_seed(args.seed)
        for step in range(args.warmup + args.steps):
            idx = torch.randint(len(dataset), (args.batch,), generator=gen)
            real = torch.stack([dataset[int(i)][0] for i in idx]).to(device).float() / 127.5 - 1
            real_c = torch.stack([dataset[int(i)][1] for i in idx]).to(device)
            gen_c = torch.stack([dataset[int(i)][1] for i in torch.randint(len(dataset), (args.batch,),
                                                                            generator=gen)]).to(device)
            _sync(device)
            t_step = time.perf_counter()
            for name, which, interval in PHASES:
                module, opt = (G, opts["G"]) if which == "G" else (D, opts["D"])
                _sync(device)
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                module.requires_grad_(True)
                loss.accumulate_gradients(phase=name, real_img=real, real_c=real_c,
                                          gen_z=torch.randn(args.batch, G.z_dim, device=device), gen_c=gen_c,
                                          gain=interval, cur_nimg=step * args.batch)
                module.requires_grad_(False)
                params = [p for p in module.parameters() if p.numel() > 0 and p.grad is not None]
                if params:
                    flat = torch.cat([p.grad.flatten() for p in params])
                    torch.nan_to_num(flat, nan=0, posinf=1e5, neginf=-1e5, out=flat)
                    for p, g in zip(params, flat.split([p.numel() for p in params])):
                        p.grad = g.reshape(p.shape)
                opt.step()
                _sync(device)
                if step >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
            with torch.no_grad():  # G_ema update as the training loop does
                beta = 0.5 ** (args.batch / max(args.batch * 10 / 32 * 1000, 1e-8))
                for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                    p_ema.copy_(p.lerp(p_ema, beta))
                for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                    b_ema.copy_(b)
            _sync(device)
            if step >= args.warmup:
                step_times.append(time.perf_counter() - t_step)
    return _summary(times, step_times, args.batch, peak.peak_mb)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here")
    if not (Path(args.official_root) / "training" / "triplane.py").is_file():
        raise SystemExit(f"--official-root {args.official_root}: no training/triplane.py there (expected the eg3d/ "
                         "folder of an NVlabs/eg3d checkout)")
    from full_size_stages import _bench_module
    g_kwargs, d_kwargs, nrr = _kwargs(args.scale)
    G, D = _networks(args, g_kwargs, d_kwargs, nrr)
    dataset = _bench_module("finetune").memory_dataset(G, 32)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    result = {"bench": "official_step", "device": str(device), "batch": args.batch, "steps": args.steps,
              "warmup": args.warmup, "scale": args.scale, "neural_rendering_resolution": nrr,
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "torch": torch.__version__}
    if "official" in sides:
        result["official"] = run_official(args, copy.deepcopy(G), copy.deepcopy(D), g_kwargs, d_kwargs, nrr,
                                          dataset, device)
    if "adapt3d" in sides:
        from adapt3d.utils.fast import configure_backends
        result["adapt3d_backends"] = configure_backends(tf32=args.fast, cudnn_benchmark=True)
        result["adapt3d"] = run_adapt3d(args, G, D, dataset, device)
    if "official" in result and "adapt3d" in result:
        a, o = result["adapt3d"], result["official"]
        result["kimg_per_hour_ratio"] = round(a["kimg_per_hour"] / o["kimg_per_hour"], 3)
        result["peak_mem_ratio"] = round(a["peak_mem_mb"] / o["peak_mem_mb"], 3) if o["peak_mem_mb"] else None
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
