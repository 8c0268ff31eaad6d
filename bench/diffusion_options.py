"""Time and memory of img2img translation under each --dtype and GPU memory option (adapt3d.diffusion.options).

Prints ONE line of JSON::

    python bench/diffusion_options.py                                   # tiny SD, CPU: fp32, bf16, slicing, tiling
    python bench/diffusion_options.py --device cuda --diffusion stabilityai/stable-diffusion-2-1-base --batch 4 \\
        --steps 50                                                      # + fp16, offload, compile, peak GPU memory
    python bench/diffusion_options.py --sds --device cuda               # SDS forward + backward instead

Each configuration loads the model, translates one warm-up batch, then ``--runs`` timed batches (same images,
prompt, seeds). Reported per configuration: seconds per batch (median of the runs), peak GPU memory
(``torch.cuda.max_memory_allocated``, CUDA only) and the largest difference of its images from the first
configuration's (max |a - b| in [0, 1] units). Configurations that the options refuse on the device (fp16 and
offload on the CPU) are skipped. ``--diffusion`` takes every layout the commands take (folder, hub id, single file
with ``--diffusion-config``, ``tiny``). ``--sds`` times one score-distillation step instead (VAE encode, UNet with
guidance, backward into the images; plus ``gradient_checkpointing``) and compares the image gradients.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from adapt3d.diffusion.img2img import Img2ImgTranslator  # noqa: E402
from adapt3d.diffusion.options import DiffusionOptions  # noqa: E402
from adapt3d.diffusion.sds import ScoreDistillation  # noqa: E402

CONFIGS = [("fp32", {"dtype": "fp32"}), ("bf16", {"dtype": "bf16"}), ("fp16", {"dtype": "fp16"}),
           ("auto+attention_slicing", {"attention_slicing": True}), ("auto+vae_slicing", {"vae_slicing": True}),
           ("auto+vae_tiling", {"vae_tiling": True}), ("auto+cpu_offload", {"cpu_offload": True}),
           ("auto+compile_unet", {"compile_unet": True})]
SDS_CONFIGS = [("auto+gradient_checkpointing", {"gradient_checkpointing": True})]


def _sds_runner(args, opts, images):
    sds = ScoreDistillation.from_pretrained(args.diffusion, device=args.device, options=opts)
    prompts = ["a zombie"] * args.batch
    e, neg = sds.encode_prompt(prompts), sds.encode_prompt([""])
    pooled, neg_pooled = sds.encode_pooled(prompts), sds.encode_pooled([""])

    def run():
        x = images.to(args.device).requires_grad_(True)
        out = sds(x, prompt_embeds=e, negative_prompt_embeds=neg, pooled_prompt_embeds=pooled,
                  negative_pooled_prompt_embeds=neg_pooled, guidance_scale=7.5,
                  timesteps=torch.full((args.batch,), 500), generator=torch.Generator().manual_seed(0))
        out.loss.backward()
        return x.grad.float().cpu()
    return sds, run


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diffusion", default="tiny")
    p.add_argument("--diffusion-config", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--only", nargs="*", default=None, help="configuration names to run (default: all)")
    p.add_argument("--sds", action="store_true", help="time an SDS step (forward + backward) instead of img2img")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, 64, 64) * 2 - 1
    results, first = {}, None
    for name, kw in CONFIGS + (SDS_CONFIGS if args.sds else []):
        if args.only and name not in args.only:
            continue
        opts = DiffusionOptions(diffusion_config=args.diffusion_config, **kw)
        try:
            opts.check(args.device, gradients=args.sds)
        except ValueError as e:
            results[name] = {"skipped": str(e)}
            continue
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if args.sds:
            t, run = _sds_runner(args, opts, images)
        else:
            t = Img2ImgTranslator.from_pretrained(args.diffusion, device=args.device, options=opts)
            run = lambda: t(images, "a zombie", num_inference_steps=args.steps,  # noqa: E731
                            seeds=list(range(args.batch))).images
        run()  # warm-up (and compilation)
        times = []
        for _ in range(args.runs):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = run()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        first = out if first is None else first
        results[name] = {"s_per_batch": round(statistics.median(times), 4), "dtype": str(t.dtype),
                         "max_abs_diff_vs_first": round(float((out - first).abs().max()), 5)}
        if args.device.startswith("cuda"):
            results[name]["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        del t
    line = {"bench": "diffusion_options", "mode": "sds" if args.sds else "img2img", "diffusion": args.diffusion, "device": args.device, "batch": args.batch,
            "steps": args.steps, "runs": args.runs, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "results": results}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
