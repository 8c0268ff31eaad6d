"""Pose preservation of make-dataset translators at equal strength: img2img vs depth2img vs controlnet-depth.

Prints one JSON line per (translator, strength)::

    python bench/podia_pose.py                                    # tiny preset and tiny diffusion models, CPU
    python bench/podia_pose.py --preset none --generator ffhq --depth2img stabilityai/stable-diffusion-2-depth \
        --img2img stabilityai/stable-diffusion-2-1-base --controlnet-base stable-diffusion-v1-5/stable-diffusion-v1-5 \
        --controlnet lllyasviel/control_v11f1p_sd15_depth --device cuda --steps 50 --num-sources 32

For each source latent (seed j, truncation 0.7) two cameras ``yaw0 +- delta`` are rendered, and both renders are
translated with the same prompt and diffusion seed. Two figures per translator, averaged over sources and views:

- ``pose_margin``: make-dataset's pose filter (edge NCC at the label camera minus the best other candidate camera,
  rings 1, step 0.1 rad); > 0 = the target's edges still match its label best;
- ``warp_error``: the targets' view consistency *through the source geometry*: target B warped into view A with the
  source's rendered depth (``adapt3d.metrics.view_consistency.reprojection_error``, pixels visible in both views),
  mean |difference| in [0, 1] units; ``source_warp_error`` is the same for the source renders (the floor).

With random weights (the tiny preset) the numbers only show that the measurement runs; they say nothing about real
models.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="built-in generator with random weights; 'none' with --generator")
    p.add_argument("--generator", default=None, help="checkpoint folder, EG3D .pkl or known name (ffhq, afhq)")
    p.add_argument("--img2img", default="tiny")
    p.add_argument("--depth2img", default="tiny")
    p.add_argument("--controlnet-base", default="tiny")
    p.add_argument("--controlnet", default="tiny")
    p.add_argument("--translators", nargs="+", default=["img2img", "depth2img", "controlnet-depth"])
    p.add_argument("--strengths", nargs="+", type=float, default=[0.7, 1.0])
    p.add_argument("--prompt", default="a 3D render of a face in Pixar style")
    p.add_argument("--num-sources", type=int, default=4)
    p.add_argument("--delta", type=float, default=0.2, help="half the yaw between the two views, radians")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance-scale", type=float, default=8.0)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def load(name: str, args):
    from adapt3d.diffusion.depth_translate import Depth2ImgTranslator, DepthControlNetTranslator
    from adapt3d.diffusion.img2img import Img2ImgTranslator
    if name == "img2img":
        return Img2ImgTranslator.from_pretrained(args.img2img, device=args.device)
    if name == "depth2img":
        return Depth2ImgTranslator.from_pretrained(args.depth2img, device=args.device)
    return DepthControlNetTranslator.from_pretrained(args.controlnet_base, args.controlnet, device=args.device)


@torch.no_grad()
def main(argv=None) -> None:
    from adapt3d.data.target_filters import PoseConsistencyConfig, PoseConsistencyFilter
    from adapt3d.metrics.view_consistency import reprojection_error
    from adapt3d.models.latents import default_cameras, map_seeds
    from adapt3d.models.loading import load_generator

    args = parse_args(argv)
    torch.set_grad_enabled(False)
    preset = None if args.preset in ("none", "") else args.preset
    G = load_generator(preset=preset, checkpoint=args.generator, progress=False).generator.to(args.device).eval()
    n = args.num_sources
    ws = map_seeds(G, list(range(n)), 0.7, None, torch.device(args.device))
    yaw0 = torch.full((n,), torch.pi / 2)
    pitch = torch.full((n,), torch.pi / 2)
    views = [(yaw0 - args.delta, pitch), (yaw0 + args.delta, pitch)]
    renders = []
    for yaw, p in views:
        c = default_cameras(G, yaw, p).to(args.device)
        out = G.synthesis(ws, c, noise_mode="const", sampling="deterministic")
        renders.append(dict(yaw=yaw, pitch=p, label=c, image=out.image.clamp(-1, 1).cpu(),
                            depth=out.image_depth.cpu(), mask=out.weights.cpu()))
    pose = PoseConsistencyFilter(PoseConsistencyConfig(step=0.1, rings=1))

    def render_fn(yaw, p):
        return G.synthesis(ws, default_cameras(G, yaw, p).to(args.device), noise_mode="const",
                           sampling="deterministic").image.cpu()

    a, b = renders
    src_err = reprojection_error(a["image"], b["image"], a["depth"], a["label"].cpu(), b["label"].cpu(),
                                 depth_b=b["depth"]).mean_abs
    for name in args.translators:
        translator = load(name, args)
        for strength in args.strengths:
            t0 = time.perf_counter()
            targets, margins = [], []
            for r in renders:
                kw = dict(depth=r["depth"], mask=r["mask"]) if name != "img2img" else {}
                out = translator(r["image"], args.prompt, strength=strength, guidance_scale=args.guidance_scale,
                                 num_inference_steps=args.steps, seeds=list(range(n)), **kw).images * 2 - 1
                targets.append(out)
                margins.append(pose.score(out, r["yaw"], r["pitch"], render_fn, label_renders=r["image"]).margin)
            err = reprojection_error(targets[0], targets[1], a["depth"], a["label"].cpu(), b["label"].cpu(),
                                     depth_b=b["depth"]).mean_abs
            print(json.dumps({
                "translator": name, "strength": strength, "preset": args.preset, "num_sources": n,
                "steps": args.steps, "pose_margin": round(float(torch.cat(margins).mean()), 4),
                "pose_kept_fraction": round(float((torch.cat(margins) >= -0.05).float().mean()), 3),
                "warp_error": round(float(err.nanmean()), 4), "source_warp_error": round(float(src_err.nanmean()), 4),
                "seconds": round(time.perf_counter() - t0, 2), "device": args.device,
                "machine": platform.processor() or platform.machine()}), flush=True)
        del translator


if __name__ == "__main__":
    main()
