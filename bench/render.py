"""Time one EG3D render (mapping + synthesis) on CPU or GPU, for adapt3d or for the official implementation.

Prints ONE line of JSON, so run every configuration in its own process (the peak RSS is the process's
``ru_maxrss``)::

    python bench/render.py --preset ffhq512 --batch 4 --runs 3 [--neural-res 128] [--ray-chunk N]
    python bench/render.py --preset ffhq512 --batch 4 --runs 3 --impl official --official-root /tmp/eg3d/eg3d
    python bench/render.py --preset tiny --batch 1 --runs 1          # smoke test, about a second

What it does: builds the generator of ``--preset`` with seeded random weights (``build_generator(preset,
seed=0)``), ``eval()``, ``requires_grad_(False)``, under ``torch.no_grad()``; ``psi = 0.7`` (cutoff: all ws),
``noise_mode='const'``, deterministic depth sampling (no jitter, importance quantiles ``linspace(0, 1, K)``),
conditioning on the frontal camera and rendering from a fixed camera (yaw +0.3, pitch -0.1 from frontal around the
preset's pivot and radius, the preset's field of view). One warm-up forward, then ``--runs`` timed forwards of
``mapping + synthesis``; the JSON has the median and minimum wall seconds per batch, renders per second (from the
median), and the median process CPU seconds per batch (all threads; less sensitive than wall time to other
processes competing for the cores, so a useful second opinion on a shared machine).

FLOPs are counted once, after the timed runs, with ``torch.utils.flop_counter.FlopCounterMode`` on a batch-1
forward of the same implementation: it counts matrix multiplications and convolutions (2 FLOPs per
multiply-add) and nothing else (grid_sample, elementwise ops, sorting are not counted), so ``pct_of_peak`` is the
fraction of ``--peak-gflops`` (the machine's fp32 peak, measured separately) spent on that dense work.
``--flops skip`` leaves it out.

``--impl official`` imports ``training.triplane.TriPlaneGenerator`` from ``--official-root`` (the ``eg3d/``
folder of an NVlabs/eg3d checkout kept OUTSIDE this repository: its licence is non-commercial; this script only
imports it to measure it) and builds it with the preset's kwargs (official kwargs cannot express the ``tiny``
preset: its tri-planes are not 256 x 32). It receives the SAME weights as adapt3d (``load_state_dict`` of adapt3d's
state dict, strict; the ``dataset_label_std`` buffer is registered first) and runs on the CPU fallbacks of its
custom ops. Its renderer always jitters; the script makes it deterministic without touching its files by giving
its renderer module a ``torch`` namespace whose ``rand_like`` returns zeros and whose ``rand(n, k)`` returns
``linspace(0, 1, k)`` rows (exactly EG3D's ``det=True`` quantiles), so both implementations compute the same
thing (``"official_sampling": "deterministic (patched namespace)"`` in the JSON).

Allocator: glibc malloc page-faults heavily on these large temporaries; preload tcmalloc
(``apt-get install libtcmalloc-minimal4``;
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python bench/render.py ...``). The JSON says
which allocator was active. Compare implementations in interleaved runs (A B A B) with the same allocator.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from adapt3d.cameras import camera_label, frontal_label  # noqa: E402
from adapt3d.models.cpu_kernels import kernel_status  # noqa: E402
from adapt3d.models.ops import CONV3X3_ALGORITHMS, conv3x3_algorithm, set_conv3x3_algorithm  # noqa: E402
from adapt3d.models.triplane import build_generator, preset_config  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ffhq512", help="generator preset (ffhq512, afhq512, shapenet128, tiny)")
    p.add_argument("--batch", type=int, default=1, help="renders per forward")
    p.add_argument("--runs", type=int, default=3, help="timed forwards after one warm-up")
    p.add_argument("--neural-res", type=int, default=None, help="neural rendering resolution (preset's default)")
    p.add_argument("--ray-chunk", type=int, default=None, help="adapt3d only: rays per renderer chunk")
    p.add_argument("--impl", choices=["adapt3d", "official"], default="adapt3d")
    p.add_argument("--conv3x3", choices=list(CONV3X3_ALGORITHMS), default="auto",
                   help="adapt3d only: 3x3 convolution algorithm on the CPU (auto = Winograd for large layers)")
    p.add_argument("--cpu-kernels", choices=["auto", "off"], default=None,
                   help="adapt3d only: compiled Winograd transforms (sets ADAPT3D_CPU_KERNELS; default: the env's)")
    p.add_argument("--official-root", default=None, help="the eg3d/ folder of an NVlabs/eg3d checkout")
    p.add_argument("--peak-gflops", type=float, default=190.0, help="the machine's fp32 peak, GFLOP/s")
    p.add_argument("--flops", choices=["count", "skip"], default="count")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--psi", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch < 1 or args.runs < 1:
        p.error("--batch and --runs must be >= 1")
    if args.impl == "official" and not args.official_root:
        p.error("--impl official needs --official-root (the eg3d/ folder of an NVlabs/eg3d checkout)")
    if args.impl == "official" and args.conv3x3 != "auto":
        p.error("--conv3x3 applies to --impl adapt3d only")
    if args.impl == "official" and args.ray_chunk:
        p.error("--ray-chunk applies to --impl adapt3d only (the official renderer does not chunk rays)")
    return args


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    if "tcmalloc" in preload:
        return "tcmalloc"
    if "jemalloc" in preload:
        return "jemalloc"
    return "glibc" if platform.system() == "Linux" else "default"


def peak_rss_gb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kb / (1024 ** 3 if sys.platform == "darwin" else 1024 ** 2)


def _det_torch_namespace() -> types.ModuleType:
    """``torch`` with deterministic ``rand_like``/``rand`` for EG3D's renderer module (EG3D's det=True quantiles)."""
    ns = types.ModuleType("torch_deterministic_sampling")
    ns.__dict__.update({k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})

    def rand_like(t, *a, **k):
        return torch.zeros_like(t)

    def rand(n, k, device=None, **kw):
        return torch.linspace(0, 1, k, device=device).expand(n, k)

    ns.rand_like, ns.rand = rand_like, rand
    return ns


def build_official(ours: torch.nn.Module, cfg, root: str) -> tuple[torch.nn.Module, str]:
    if cfg.triplane_resolution != 256 or cfg.triplane_channels != 32:
        raise SystemExit(f"--impl official: the official generator has 256 x 32 tri-planes; preset has "
                         f"{cfg.triplane_resolution} x {cfg.triplane_channels}")
    root = str(Path(root).resolve())
    sys.path.insert(0, root)
    try:  # dnnlib.util imports requests for URL downloads only; the generator does not need it
        import requests  # noqa: F401
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")
    from training.triplane import TriPlaneGenerator  # noqa: E402  (official, non-commercial licence)
    import training.volumetric_rendering.renderer as official_renderer  # noqa: E402

    rk = cfg.rendering.to_dict()
    rk["superresolution_module"] = "training.superresolution." + rk["superresolution_module"]
    common = dict(channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                  fused_modconv_default=cfg.fused_modconv_default)
    G = TriPlaneGenerator(z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, img_resolution=cfg.img_resolution,
                          img_channels=cfg.img_channels, sr_num_fp16_res=cfg.sr_num_fp16_res,
                          mapping_kwargs=dict(cfg.mapping_kwargs), rendering_kwargs=rk, sr_kwargs=dict(common),
                          num_fp16_res=cfg.num_fp16_res, conv_clamp=cfg.conv_clamp, **common)
    G.register_buffer("dataset_label_std", torch.ones_like(ours.dataset_label_std))
    G.load_state_dict(ours.state_dict(), strict=True)
    G.neural_rendering_resolution = ours.neural_rendering_resolution
    official_renderer.torch = _det_torch_namespace()
    return G, "deterministic (patched namespace)"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    set_conv3x3_algorithm(args.conv3x3)
    if args.cpu_kernels:
        os.environ["ADAPT3D_CPU_KERNELS"] = args.cpu_kernels
    cfg = preset_config(args.preset)
    res = args.neural_res or cfg.neural_rendering_resolution
    cfg.neural_rendering_resolution = res
    G = build_generator(cfg, seed=args.seed)
    extra = {}
    if args.impl == "official":
        G, extra["official_sampling"] = build_official(G, cfg, args.official_root)
    G = G.eval().requires_grad_(False).to(device)

    r = cfg.rendering
    pivot, radius, fov = r.avg_camera_pivot, r.avg_camera_radius, cfg.camera_fov_deg
    gen = torch.Generator().manual_seed(args.seed)
    z_all = torch.randn(args.batch, cfg.z_dim, generator=gen).to(device)
    c_cond_all = frontal_label(radius, pivot, fov, batch_size=args.batch).to(device)
    c_all = camera_label(math.pi / 2 + 0.3, math.pi / 2 - 0.1, radius=radius, pivot=pivot,
                         fov_deg=fov).expand(args.batch, -1).contiguous().to(device)

    def forward(n: int):
        z, c_cond, c = z_all[:n], c_cond_all[:n], c_all[:n]
        ws = G.mapping(z, c_cond, truncation_psi=args.psi, truncation_cutoff=None)
        if args.impl == "official":
            return G.synthesis(ws, c, neural_rendering_resolution=res, noise_mode="const")
        return G.synthesis(ws, c, neural_rendering_resolution=res, noise_mode="const", sampling="deterministic",
                           ray_chunk=args.ray_chunk)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times, cpu_times = [], []
    with torch.no_grad():
        out = forward(args.batch)  # warm-up
        sync()
        for _ in range(args.runs):
            del out
            t0, c0 = time.perf_counter(), time.process_time()
            out = forward(args.batch)
            sync()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        del out
    peak = peak_rss_gb()  # before the FLOP count, so that its bookkeeping cannot show up here
    if device.type == "cuda":
        extra["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated(device) / 1024 ** 3, 3)

    gflop = None
    if args.flops == "count":
        from torch.utils.flop_counter import FlopCounterMode

        # Nominal FLOPs (direct convolutions), the same work definition for both implementations; Winograd layers
        # execute fewer multiply-adds, so their `pct_of_peak` is an effective rate and can exceed the dense one.
        with torch.no_grad(), conv3x3_algorithm("direct"), FlopCounterMode(display=False) as counter:
            forward(1)
        gflop = counter.get_total_flops() / 1e9
    if args.impl == "adapt3d" and args.conv3x3 != "direct":
        with torch.no_grad():
            fast = forward(1)
            with conv3x3_algorithm("direct"):
                exact = forward(1)
        extra["max_abs_diff_vs_direct"] = {k: float((fast[k] - exact[k]).abs().max())
                                           for k in ("image", "image_raw", "image_depth")}

    median = statistics.median(times)
    renders_per_s = args.batch / median
    result = {
        "impl": args.impl,
        "conv3x3": args.conv3x3 if args.impl == "adapt3d" else None,
        "cpu_kernels": kernel_status() if args.impl == "adapt3d" else None,
        "preset": args.preset,
        "batch": args.batch,
        "neural_res": res,
        "ray_chunk": args.ray_chunk,
        "runs": args.runs,
        "median_s": round(median, 4),
        "min_s": round(min(times), 4),
        "times_s": [round(t, 4) for t in times],
        "renders_per_s": round(renders_per_s, 4),
        "cpu_s_median": round(statistics.median(cpu_times), 4),
        "peak_rss_gb": round(peak, 3),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "allocator": allocator(),
        "device": str(device),
        "gflop_per_render": None if gflop is None else round(gflop, 2),
        "gflop_method": "FlopCounterMode on one batch-1 forward (matmul/conv only, 2 FLOP per MAC)",
        "peak_gflops": args.peak_gflops,
        "pct_of_peak": None if gflop is None else round(100 * gflop * renders_per_s / args.peak_gflops, 1),
        **extra,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
