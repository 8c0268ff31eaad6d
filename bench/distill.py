"""Seconds per NEW prompt: a distilled text-conditioned generator (one forward pass per sample) vs DreamFusion-style
per-prompt SDS optimisation of a latent of the same generator; and the CLIP score of each at equal settings.

Prints ONE line of JSON::

    python bench/distill.py                                        # tiny models, CPU: trains a tiny distilled model
    python bench/distill.py --checkpoint runs/dp/final --source ffhq --diffusion stabilityai/stable-diffusion-2-1-base \
        --clip-model openai/clip-vit-base-patch32 --device cuda --baseline-steps 500 --prompts "an elf;a zombie"

Both sides use the same source generator weights, teacher, prompts, latent seeds (``--seeds``), truncation, and
evaluation cameras (three yaws, deterministic ray marching), and the same CLIP model for the score. Timed per
prompt: the distilled side encodes the prompt and runs one forward pass per seed; the baseline encodes the prompt
and runs ``--baseline-steps`` SDS steps per seed (:func:`adapt3d.baselines.per_prompt.optimize_prompt`).
Reported: mean seconds per prompt and per sample of each, the speed-up, CLIP score (mean cosine over prompts x
seeds x views) of each and of the source generator, and (when it trained one) the distillation's seconds, with the
number of new prompts after which it pays off. With the tiny random models the CLIP numbers are meaningless; the
timings measure the code path.
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

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from adapt3d.baselines.per_prompt import PerPromptConfig, optimize_prompt, render_result  # noqa: E402
from adapt3d.clip import CLIPScorer  # noqa: E402
from adapt3d.diffusion.sds import ScoreDistillation  # noqa: E402
from adapt3d.models.text_conditioned import load_text_conditioned  # noqa: E402
from adapt3d.pipelines.distill import DistillConfig, run as distill  # noqa: E402
from adapt3d.pipelines.generate import generate_samples  # noqa: E402
from adapt3d.models.latents import default_cameras  # noqa: E402
from adapt3d.utils.parsing import parse_seeds, resolve_device  # noqa: E402

YAWS = (-0.3, 0.0, 0.3)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="distilled final/ folder; default: train a tiny one first")
    p.add_argument("--preset", default="tiny", help="source generator preset when training here")
    p.add_argument("--diffusion", default="tiny")
    p.add_argument("--clip-model", default="tiny")
    p.add_argument("--prompts", default="a zombie;an elf", help="';'-separated prompts measured as new prompts")
    p.add_argument("--train-prompts", default=None, help="prompts of the tiny distillation (default --prompts)")
    p.add_argument("--distill-steps", type=int, default=4)
    p.add_argument("--baseline-steps", type=int, default=10)
    p.add_argument("--baseline-target", choices=("w", "triplane"), default="w")
    p.add_argument("--guidance-scale", type=float, default=100.0)
    p.add_argument("--seeds", default="0-1")
    p.add_argument("--trunc", type=float, default=0.7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def _train_tiny(args, folder: Path) -> tuple[Path, float]:
    cfg = DistillConfig(prompts=args.train_prompts or args.prompts, preset=args.preset, diffusion=args.diffusion,
                        clip_model="none", diversity_features="pixels", out=folder, steps=args.distill_steps,
                        batch=2, tick_steps=max(args.distill_steps, 1), snapshot_steps=max(args.distill_steps, 1),
                        diversity_steps=max(args.distill_steps, 1), diversity_seeds="0-1", sample_seeds="0",
                        evaluate=False, attn_resolution=16, attn_dim=32, guidance_scale=args.guidance_scale,
                        device=args.device, progress=False)
    t0 = time.perf_counter()
    result = distill(cfg)
    return result.final, time.perf_counter() - t0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    prompts = [p.strip() for p in args.prompts.split(";") if p.strip()]
    seeds = parse_seeds(args.seeds)
    with tempfile.TemporaryDirectory() as tmp:
        train_s = None
        ckpt = Path(args.checkpoint) if args.checkpoint else None
        if ckpt is None:
            ckpt, train_s = _train_tiny(args, Path(tmp) / "dp")
        model, _, _ = load_text_conditioned(ckpt)
        model = model.to(device).eval().requires_grad_(False)
    sds = ScoreDistillation.from_pretrained(args.diffusion, device=device)
    scorer = CLIPScorer.from_pretrained(args.clip_model, device=device)
    yaw = torch.tensor([math.pi / 2 + y for y in YAWS])
    views = default_cameras(model, yaw, torch.full_like(yaw, math.pi / 2)).to(device)  # (V, 25)
    front = default_cameras(model, torch.full((len(seeds),), math.pi / 2), torch.full((len(seeds),), math.pi / 2))

    def score(images, prompt):
        return float(scorer.score(images, prompt).mean())

    generate_samples(model, sds.encode_prompt(["warm-up"]), seeds[:1], front[:1], trunc=args.trunc)  # warm-up
    dist_s, dist_clip, base_s, base_clip, src_clip = [], [], [], [], []
    base_cfg = PerPromptConfig(steps=args.baseline_steps, target=args.baseline_target,
                               guidance_scale=args.guidance_scale, trunc=args.trunc)
    for prompt in prompts:
        sds._prompt_cache.clear()  # a new prompt: its encoding is part of the cost
        _sync(device)
        t0 = time.perf_counter()
        text = sds.encode_prompt([prompt]).to(device)
        samples = generate_samples(model, text, seeds, front, trunc=args.trunc)
        _sync(device)
        dist_s.append(time.perf_counter() - t0)
        bound = model.bind(text)
        imgs = torch.cat([bound.synthesis(samples.ws[i:i + 1].expand(len(YAWS), -1, -1), views,
                                          planes=samples.planes[i:i + 1].expand(len(YAWS), -1, -1, -1, -1),
                                          noise_mode="const", sampling="deterministic").image.cpu()
                          for i in range(len(seeds))])
        dist_clip.append(score(imgs, prompt))
        src = model.bind(None)
        with torch.no_grad():
            src_samples = generate_samples(model, None, seeds, front, trunc=args.trunc)
            src_imgs = torch.cat([src.synthesis(src_samples.ws[i:i + 1].expand(len(YAWS), -1, -1), views,
                                                noise_mode="const", sampling="deterministic").image.cpu()
                                  for i in range(len(seeds))])
        src_clip.append(score(src_imgs, prompt))
        per_seed, imgs = 0.0, []
        for s in seeds:
            sds._prompt_cache.clear()
            res = optimize_prompt(model.base, sds, prompt, s, base_cfg)
            per_seed += res.seconds
            imgs.append(render_result(model.base, res, views))
        base_s.append(per_seed)
        base_clip.append(score(torch.cat(imgs), prompt))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    result = {
        "bench": "distill", "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "checkpoint": None if args.checkpoint is None else str(args.checkpoint),
        "diffusion": args.diffusion, "clip_model": args.clip_model, "prompts": prompts, "seeds": seeds,
        "distilled": {"seconds_per_prompt": mean(dist_s), "seconds_per_sample": mean(dist_s) / len(seeds),
                      "clip_score": mean(dist_clip)},
        "per_prompt": {"seconds_per_prompt": mean(base_s), "seconds_per_sample": mean(base_s) / len(seeds),
                       "steps": args.baseline_steps, "target": args.baseline_target, "clip_score": mean(base_clip)},
        "source_clip_score": mean(src_clip),
        "speedup": mean(base_s) / max(mean(dist_s), 1e-12),
        "distill_train_seconds": train_s,
        "break_even_prompts": (train_s / max(mean(base_s) - mean(dist_s), 1e-12)) if train_s else None,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
