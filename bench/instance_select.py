"""Cross-view consistency of instance targets: independent diffusion seeds per view (the previous behaviour) vs
instance-selected (--select K: every view with candidate K's noise and prompt).

    python bench/instance_select.py                               # tiny preset, built-in tiny models, CPU
    python bench/instance_select.py --generator ffhq --diffusion stabilityai/stable-diffusion-2-1-base \\
        --clip-model openai/clip-vit-base-patch32 --device cuda --num-views 16

Only the targets are made (render the instance at the views, translate), as adapt --instance-seed does, then
measured with adapt3d.metrics.target_consistency over every cross-view pair: CLIP image-embedding agreement (mean
cosine, higher = one look) and the warp error of one target into another view through the source instance's
depth (lower = the look sticks to the surface; the source renders' own value is the floor). Prints one JSON line
per setting. With the tiny random models the images are noise: the numbers test the code path, not SD.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from adapt3d.pipelines import instance  # noqa: E402


def measure(cfg: instance.InstanceConfig, scorer_name: str | None) -> dict:
    from PIL import Image

    from adapt3d.clip import CLIPScorer
    from adapt3d.diffusion.img2img import Img2ImgTranslator
    from adapt3d.metrics.target_consistency import target_consistency
    from adapt3d.models.loading import load_generator
    from adapt3d.utils.parsing import resolve_device

    parts = instance.validate(cfg)
    device = resolve_device(cfg.device)
    G = load_generator(preset=cfg.preset, checkpoint=cfg.generator).generator.to(device).eval()
    code = instance._instance_code(cfg, G, parts["latent"], device)
    folder = Path(cfg.out) / "target"
    translator = Img2ImgTranslator.from_pretrained(parts["diffusion"], device=device)
    scorer = CLIPScorer.from_pretrained(scorer_name, device=device) if scorer_name else None
    t0 = time.time()
    instance.generate(cfg, parts, folder, G, code, translator, None, device)
    records = sorted((json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()),
                     key=lambda r: r["index"])
    load = lambda p: torch.from_numpy(__import__("numpy").asarray(Image.open(folder / p).convert("RGB"))  # noqa: E731
                                      ).permute(2, 0, 1).float() / 127.5 - 1
    targets = torch.stack([load(r["image"]) for r in records])
    sources = torch.stack([load(r["source_image"]) for r in records])
    labels = torch.tensor([r["label"] for r in records])
    m = target_consistency(G, code.ws.to(device), labels, targets, [r["source"] for r in records], scorer=scorer,
                           sources=sources)
    m.update({"targets": len(records), "views": len({r["source"] for r in records}),
              "diffusion_seeds": len({r["diffusion_seed"] for r in records}), "seconds": round(time.time() - t0, 1)})
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default=None)
    ap.add_argument("--generator", default=None)
    ap.add_argument("--diffusion", default="auto")
    ap.add_argument("--clip-model", default=None, help="CLIP for the agreement (default: tiny with the tiny preset)")
    ap.add_argument("--instance-seed", type=int, default=3)
    ap.add_argument("--prompt", default="a 3D render of a face in Pixar style")
    ap.add_argument("--num-views", type=int, default=8)
    ap.add_argument("--select", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    if args.preset is None and args.generator is None:
        args.preset = "tiny"
    clip = args.clip_model or ("tiny" if args.preset == "tiny" else None)
    root = Path(tempfile.mkdtemp(prefix="instance-select-"))
    base = dict(preset=args.preset, generator=args.generator, instance_seed=args.instance_seed,
                prompt=(args.prompt,), diffusion=args.diffusion, clip_model="none", device=args.device,
                progress=False)
    settings = [("independent seeds, 2 per view (previous default)", "independent2",
                 dict(samples_per_view=2, num_images=2 * args.num_views)),
                ("independent seeds, 1 per view", "independent1",
                 dict(samples_per_view=1, num_images=args.num_views)),
                (f"--select {args.select}", "select", dict(select=args.select, num_images=args.num_views))]
    for name, folder, kw in settings:
        cfg = instance.InstanceConfig(out=root / folder, **base, **kw)
        print(json.dumps({"setting": name, **measure(cfg, clip)}), flush=True)


if __name__ == "__main__":
    main()
