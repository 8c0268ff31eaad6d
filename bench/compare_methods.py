"""The adaptation methods side by side: datid3d vs podia (depth2img) vs nada vs itportrait vs dsds.

    python bench/compare_methods.py --out /tmp/compare            # tiny preset, random weights, CPU: a few minutes
    python bench/compare_methods.py --out /tmp/compare --methods nada dsds

Each method runs in its own subprocess (so that the peak resident memory is its own) on the same source generator,
prompt and seed, with small settings (below); then every adapted generator is evaluated the same way
(``adapt3d eval``: directional CLIP from --source-text to --prompt, intra-cluster LPIPS of the adapted generator
divided by the source's = diversity ratio, view consistency = mean |error| of raw renders warped between views
through the rendered depth). Prints a Markdown table and one JSON line per method.

With ``--preset tiny`` every model has random weights: the table measures cost and shows the machinery runs; its
quality columns mean nothing. For real numbers give --generator and real diffusion / CLIP weights on a GPU (the
commands are in docs/podia.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

METHODS = ("datid3d", "podia", "nada", "itportrait", "dsds")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--preset", default="tiny", help="built-in generator with random weights; 'none' with --generator")
    p.add_argument("--generator", default=None)
    p.add_argument("--prompt", default="a 3D render of a face in Pixar style")
    p.add_argument("--source-text", default="a photo of a face")
    p.add_argument("--steps", type=int, default=6, help="nada / itportrait / dsds optimiser steps")
    p.add_argument("--num-images", type=int, default=8, help="datid3d / podia target images")
    p.add_argument("--kimg", type=float, default=0.04, help="datid3d / podia fine-tuning length")
    p.add_argument("--eval-samples", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", choices=METHODS, help=argparse.SUPPRESS)  # internal: run one method in this process
    return p.parse_args(argv)


def _preset(args):
    return None if args.preset in ("none", "") else args.preset


def _common(args) -> dict:
    return dict(preset=_preset(args), generator=args.generator, seed=0, device=args.device, progress=False,
                video_frames=2, mesh="none", seeds="0")


def run_one(method: str, args) -> dict:
    """Train one method into OUT/<method>; returns its final checkpoint and what it did."""
    out = args.out / method
    common = _common(args)
    if method in ("datid3d", "podia"):
        from adapt3d.pipelines.adapt import AdaptConfig, run
        extra = dict(translator="depth2img", strength=1.0) if method == "podia" else {}
        cfg = AdaptConfig(prompt=(args.prompt,), out=out, num_images=args.num_images, num_inference_steps=4,
                          kimg=args.kimg, batch=4, **extra, **common)
        result = run(cfg)
        steps = f"{args.num_images} targets x 4 diffusion steps, {args.kimg} kimg (batch 4)"
        return {"final": str(result.final), "steps": steps}
    kw = dict(prompt=args.prompt, source_text=args.source_text, out=out, steps=args.steps, eval_metrics=(),
              **common)
    if method == "nada":
        from adapt3d.pipelines.nada import NadaConfig, run
        result = run(NadaConfig(**kw))
    elif method == "dsds":
        from adapt3d.pipelines.dsds import DSDSConfig, run
        result = run(DSDSConfig(**kw))
    else:
        from adapt3d.export.images import save_image, to_uint8
        from adapt3d.models.latents import default_cameras, map_seeds
        from adapt3d.models.loading import load_generator
        from adapt3d.pipelines.itportrait import ITportraitConfig, run
        import torch
        G = load_generator(preset=_preset(args), checkpoint=args.generator, progress=False).generator.eval()
        with torch.no_grad():  # the reference portrait: the source generator's seed 1000 (random weights anyway)
            ws = map_seeds(G, [1000], 0.7, None, torch.device("cpu"))
            c = default_cameras(G, torch.tensor([1.5708]), torch.tensor([1.5708]))
            img = G.synthesis(ws, c, noise_mode="const", sampling="deterministic").image
        out.mkdir(parents=True, exist_ok=True)
        save_image(out.parent / "itportrait-reference.png", to_uint8(img)[0])
        result = run(ITportraitConfig(style_image=out.parent / "itportrait-reference.png", **kw))
    return {"final": str(result.final), "steps": f"{args.steps} optimiser steps"}


def evaluate(method: str, final: str, args) -> dict:
    from adapt3d.pipelines.evaluate import EvalConfig, run
    n = args.eval_samples
    out = args.out / method / "compare-eval"
    run(EvalConfig(out=out, generator=final, source=args.generator, preset=_preset(args), prompt=args.prompt,
                   source_prompt=args.source_text, clip_model="tiny" if args.preset == "tiny" else None,
                   num_samples=n, metrics=("clip", "diversity", "view"), view_num_samples=min(4, n),
                   num_clusters=2, grid_samples=2, batch_size=4, seed=0, device=args.device, progress=False))
    m = json.loads((out / "metrics.json").read_text())["metrics"]
    div = m["diversity"]
    ratio = div["adapted"]["intra_cluster_lpips"]["mean"] / max(div["source"]["intra_cluster_lpips"]["mean"], 1e-12)
    return {"clip_direction": round(m["directional_clip"]["mean"], 4), "diversity_ratio": round(ratio, 3),
            "view_error": round(m["view_consistency"]["adapted"]["raw"]["mean_abs"], 4),
            "view_error_source": round(m["view_consistency"]["source"]["raw"]["mean_abs"], 4)}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        t0 = time.time()
        info = run_one(args.one, args)
        info["seconds"] = round(time.time() - t0, 1)
        info["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print("RESULT " + json.dumps(info), flush=True)
        return
    rows = []
    for method in args.methods:
        cmd = [sys.executable, __file__, "--one", method, *(argv if argv is not None else sys.argv[1:])]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
        row = {"method": method, **json.loads(lines[-1][7:])}
        row.update(evaluate(method, row["final"], args))
        row.update(preset=args.preset, device=args.device, machine=f"{platform.machine()}, {os.cpu_count()} CPUs",
                   date=time.strftime("%Y-%m-%d"))
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| method | run wall s | peak RSS MB | steps | CLIP direction | diversity ratio | view error (source) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['seconds']} | {r['peak_rss_mb']} | {r['steps']} | {r['clip_direction']} | "
              f"{r['diversity_ratio']} | {r['view_error']} ({r['view_error_source']}) |")


if __name__ == "__main__":
    main()
