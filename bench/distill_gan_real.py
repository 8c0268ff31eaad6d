"""Where does DreamPortrait's GAN regulariser pull? direction/source_distance over training for --gan-real teacher
(the default), --gan-real source (the previous behaviour) and SDS alone (--lambda-gan 0), on the tiny preset.

    python bench/distill_gan_real.py                  # tiny models, CPU, ~11 min on 2 cores
    python bench/distill_gan_real.py --steps 32 --lambda-gan 0.5

direction/source_distance (stats.jsonl) is the mean over prompts and the fixed seeds of 1 - cos(f(prompt render),
f(source render)) of the same latent (frontal; f = 32x32 pixels here: the tiny CLIP is random). A regulariser that
pulls renders back to the source keeps it below SDS alone. Prints one JSON line per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from adapt3d.pipelines.distill import DistillConfig, run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--lambda-gan", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="gan-real-"))
    for kind, lam in (("teacher", args.lambda_gan), ("source", args.lambda_gan), ("auto", 0.0)):
        t0 = time.time()
        out = root / f"{kind}-{lam}"
        run(DistillConfig(prompts="a zombie;an elf", preset="tiny", out=out, gan_real=kind, lambda_gan=lam,
                          lr=args.lr, steps=args.steps, tick_steps=4, diversity_steps=4, diversity_features="pixels",
                          diversity_seeds="0-7", evaluate=False, progress=False))
        stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
        print(json.dumps({"gan_real": kind if lam > 0 else "none (SDS alone)", "lambda_gan": lam,
                          "source_distance": {s["step"]: round(s["direction/source_distance"], 4)
                                              for s in stats if "direction/source_distance" in s},
                          "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
