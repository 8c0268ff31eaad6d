"""Winograd F(6x6, 3x3) against oneDNN's direct 3x3 convolution, per layer shape, on the CPU.

    python bench/winograd.py                      # the ffhq512 layer shapes and a few smaller ones
    python bench/winograd.py --shapes 128x512 256x256 --reps 7

Prints one JSON line per shape ``CxH`` (C input = output channels, H x H pixels, batch 1, channels-last input):
the minimum wall seconds of ``--reps`` interleaved runs of each algorithm (direct, winograd, direct, ...), the
speed-up, and both algorithms' maximum absolute error against a float64 ``F.conv2d`` (inputs ~N(0, 1), weights
scaled to unit output variance). ``adapt3d.models.ops`` chooses Winograd ("auto") where this measured faster.
Preload tcmalloc as for bench/render.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from adapt3d.models.winograd import conv3x3_winograd  # noqa: E402

DEFAULT_SHAPES = ["128x512", "256x256", "128x256", "256x128", "512x64", "128x128", "256x64", "64x256", "512x32"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, help="CxH: channels x pixels per side")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    for shape in args.shapes:
        try:
            c, h = (int(v) for v in shape.lower().split("x"))
        except ValueError:
            p.error(f"--shapes: expected CxH such as 128x512, got {shape!r}")
        x = torch.randn(1, c, h, h, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, c, 3, 3, generator=gen) / (9 * c) ** 0.5
        with torch.no_grad():
            ref = F.conv2d(x.double(), w.double(), padding=1)
            err = {"direct": float((F.conv2d(x, w, padding=1) - ref).abs().max()),
                   "winograd": float((conv3x3_winograd(x, w) - ref).abs().max())}
            times = {"direct": [], "winograd": []}
            for _ in range(args.reps):
                for name, fn in (("direct", lambda: F.conv2d(x, w, padding=1)),
                                 ("winograd", lambda: conv3x3_winograd(x, w))):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        best = {k: min(v) for k, v in times.items()}
        print(json.dumps({"channels": c, "pixels": h, "direct_s": round(best["direct"], 5),
                          "winograd_s": round(best["winograd"], 5),
                          "speedup": round(best["direct"] / best["winograd"], 3),
                          "max_abs_err_direct": err["direct"], "max_abs_err_winograd": err["winograd"],
                          "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
