"""Side-by-side render benchmark: two bench/render.py configurations, interleaved A B A B, one process per run.

    # adapt3d against the official EG3D code (checkout kept outside this repository), tcmalloc preloaded
    python bench/render_ab.py --pairs 5 --tcmalloc --b "--impl official --official-root /tmp/eg3d/eg3d"
    python bench/render_ab.py --pairs 3 --batch 4 --runs 2 --tcmalloc --b "--impl official --official-root ..."
    # the Winograd 3x3 path against direct convolutions
    python bench/render_ab.py --pairs 3 --a "--conv3x3 auto" --b "--conv3x3 direct"

On a shared machine the load changes from minute to minute, so two implementations are only comparable inside
the same window: each pair runs A then B right after each other, and the speed-up of a pair is B's median seconds
over A's. Prints one line of JSON: every run's result line from bench/render.py, the per-pair speed-ups, their
median and range, and each side's peak RSS. ``--a`` and ``--b`` are extra bench/render.py arguments (quoted);
``--preset``, ``--batch`` and ``--runs`` apply to both sides, FLOP counting is skipped. ``--tcmalloc`` preloads
libtcmalloc_minimal for both sides (``apt-get install libtcmalloc-minimal4``; the official code is 2-4x slower
without it, so compare against it at its best).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

RENDER = Path(__file__).resolve().parent / "render.py"
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
            "/usr/lib64/libtcmalloc_minimal.so.4")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", default="", help="extra bench/render.py arguments of side A (default: adapt3d, auto)")
    p.add_argument("--b", default="", help="extra bench/render.py arguments of side B")
    p.add_argument("--pairs", type=int, default=3, help="number of A-B pairs")
    p.add_argument("--preset", default="ffhq512")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=3, help="timed forwards per process")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--tcmalloc", action="store_true", help="preload tcmalloc for both sides")
    args = p.parse_args(argv)
    if args.pairs < 1 or args.batch < 1 or args.runs < 1:
        p.error(f"--pairs, --batch and --runs must be >= 1, got {args.pairs}, {args.batch}, {args.runs}")
    if args.a == args.b:
        p.error(f"--a and --b are the same configuration ({args.a!r}): nothing to compare")
    if args.tcmalloc and not any(Path(t).exists() for t in TCMALLOC):
        p.error(f"--tcmalloc: none of {', '.join(TCMALLOC)} exists (apt-get install libtcmalloc-minimal4)")
    return args


def run_once(args: argparse.Namespace, extra: str) -> dict:
    cmd = [sys.executable, str(RENDER), "--preset", args.preset, "--batch", str(args.batch), "--runs",
           str(args.runs), "--flops", "skip", *shlex.split(extra)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ)
    if args.tcmalloc:
        env["LD_PRELOAD"] = next(t for t in TCMALLOC if Path(t).exists())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench/render.py {extra!r} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    runs = []
    for _ in range(args.pairs):
        a = run_once(args, args.a)
        b = run_once(args, args.b)
        runs.append({"a": a, "b": b, "speedup_a_over_b": round(b["median_s"] / a["median_s"], 3)})
    ratios = [r["speedup_a_over_b"] for r in runs]
    print(json.dumps({
        "a": args.a, "b": args.b, "preset": args.preset, "batch": args.batch, "pairs": args.pairs,
        "speedup_median": round(statistics.median(ratios), 3), "speedup_min": min(ratios),
        "speedup_max": max(ratios), "speedups": ratios,
        "a_median_s": [r["a"]["median_s"] for r in runs], "b_median_s": [r["b"]["median_s"] for r in runs],
        "a_peak_rss_gb": max(r["a"]["peak_rss_gb"] for r in runs),
        "b_peak_rss_gb": max(r["b"]["peak_rss_gb"] for r in runs),
        "allocator": runs[0]["a"]["allocator"], "runs": runs,
    }), flush=True)


if __name__ == "__main__":
    main()
