"""Every adapt3d workload at real size, one JSON line per measured stage: the performance yardstick.

    python bench/full_size.py --device cpu --quick                  # this 2-core CPU: full-size models, few items
    python bench/full_size.py --device cuda                         # a GPU: realistic counts
    python bench/full_size.py --device cuda --stages render,finetune --compile
    python bench/full_size.py --preset tiny --in-process            # the tiny test models (the suite's smoke test)

Models: ``--preset full-size-random`` (default) builds, once, the released architectures with seeded random
weights in their release layouts (:mod:`adapt3d.testing.full_size`; cached under ``--cache``, default
``$ADAPT3D_CACHE/full-size-random``, about 11 GB for all stages) and loads them through adapt3d's normal loaders.
Speed and memory do not depend on weight values, so the timings are those of real weights; the outputs are noise.

Stages, in order (``--stages`` picks some): ``render`` (EG3D ffhq512, batch 1 and 4), ``make-dataset`` (SD
2.1-base img2img at 512 px, batched vs one at a time, outputs compared), ``finetune`` (ffhq512 G + D step, R1 and
density regularisation, batch 4), ``nada`` (2 CLIP models, 4 views), ``distill`` (SDS through SD 2.1-base with
the condition adapters), ``synth`` (ControlNet SD 1.5 canny at 512 px), ``invert`` (W+ with the LPIPS network),
``eval`` (CLIP score + view consistency). ``bench/full_size_stages.py`` says exactly what each runs and counts.

Each stage runs in its own process (``--in-process`` to run them here), so a stage that runs out of memory or is
killed is reported and the suite goes on. Each line: ``stage``, ``device``, ``dtype``, ``batch``, ``params``,
``seconds_per_item``, ``items_per_s``, ``peak_mem_mb`` (CUDA: peak allocated; CPU: peak resident set size of the
stage's process, sampled), ``notes``, ``status`` (ok / oom / error), plus ``items`` and ``seconds`` (what was
timed), ``stage_wall_seconds`` / ``stage_cpu_seconds`` (the whole stage with loading; CPU time of all threads, a
second opinion on a machine shared with other work) and stage fields. A last line (stage
``suite``) gives the total wall time. ``--out FILE`` also appends every line to FILE.

Bad input (an unknown stage, ``--device cuda`` without CUDA, a dtype the device lacks) is refused with one line
before any model is built.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402

from full_size_stages import PROFILES, STAGE_FUNCTIONS, STAGE_MODELS, STAGES, Context  # noqa: E402

PRESETS = ("full-size-random", "tiny")
DTYPES = {"auto": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", help="dtype of the diffusion and CLIP models: auto (fp16 on CUDA, "
                   "fp32 on CPU), fp32, fp16 (CUDA only), bf16. EG3D always runs as EG3D does (fp32, with its "
                   "fp16 super-resolution and discriminator layers on CUDA)")
    p.add_argument("--quick", action="store_true", help="= --profile quick: few items per stage (the CPU suite), "
                   "full-size models")
    p.add_argument("--profile", default=None, help="counts per stage: quick, device (a GPU check that fits in "
                   "minutes) or full (default; realistic counts)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--preset", default="full-size-random", help=f"models: {' or '.join(PRESETS)}")
    p.add_argument("--cache", default=None, help="root of the full-size-random models "
                   "(default $ADAPT3D_CACHE/full-size-random)")
    p.add_argument("--fast", action="store_true", help="GPU fast settings: TF32 matmul/convolutions and cuDNN "
                   "autotuning (adapt3d.utils.fast.configure_backends)")
    p.add_argument("--compile", action="store_true", help="torch.compile the EG3D synthesis network and D "
                   "(falls back to eager, with a note, where compilation fails)")
    p.add_argument("--in-process", action="store_true", help="run the stages in this process (no isolation)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-mem-gb", type=float, default=None, help="CPU: cap each stage process's data memory "
                   "(RLIMIT_DATA) so that an oversized stage fails with an out-of-memory line instead of pushing "
                   "a shared machine into the kernel's OOM killer")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> tuple[list[str], torch.device, torch.dtype | None]:
    """Validate everything before any model is built; raise SystemExit with one line naming the option."""
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise SystemExit(f"--stages: unknown stage(s) {unknown or [args.stages]}; choose from {', '.join(STAGES)}")
    if args.profile is None:
        args.profile = "quick" if args.quick else "full"
    elif args.profile not in PROFILES or (args.quick and args.profile != "quick"):
        raise SystemExit(f"--profile: {args.profile!r} is not one of {', '.join(PROFILES)}"
                         + (" (or conflicts with --quick)" if args.quick else ""))
    if args.preset not in PRESETS:
        raise SystemExit(f"--preset: {args.preset!r} is not one of {', '.join(PRESETS)}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"--device: {args.device!r} is not a device; expected cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device: {args.device!r} is not supported; expected cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'none'}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if args.max_mem_gb is not None and (args.max_mem_gb <= 0 or device.type != "cpu" or args.in_process):
        raise SystemExit(f"--max-mem-gb {args.max_mem_gb}: needs a positive size, --device cpu and stage processes "
                         "(not --in-process)")
    if args.dtype not in DTYPES:
        raise SystemExit(f"--dtype: {args.dtype!r} is not one of {', '.join(DTYPES)}")
    dtype = DTYPES[args.dtype]
    if dtype == torch.float16 and device.type == "cpu":
        raise SystemExit("--dtype fp16: the CPU has no float16 kernels for these models; use fp32 or bf16 on the CPU")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SystemExit(f"--dtype bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use fp16")
    return stages, device, dtype


class PeakMemory:
    """Peak memory of a block in MB: CUDA's peak allocation, or the process's resident set size sampled every
    20 ms (CPU; includes what the process held before the block)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def rss_mb() -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
        except OSError:
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mb = max(self.peak_mb, self.rss_mb())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.peak_mb = self.rss_mb()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self.peak_mb = max(self.peak_mb, self.rss_mb())


def _dtype_name(ctx: Context, stage: str) -> str:
    """What the stage's diffusion / CLIP models run in (the loaders' defaults: SD fp16 on CUDA, CLIP fp32), and
    EG3D's (float32 with its fp16 layers on CUDA)."""
    eg3d = "float32+fp16-layers" if ctx.device.type == "cuda" else "float32"
    if stage in ("make-dataset", "distill", "synth"):
        dt = ctx.dtype or (torch.float16 if ctx.device.type == "cuda" else torch.float32)
    elif stage in ("nada", "eval"):
        dt = ctx.dtype or torch.float32
    else:
        return eg3d
    name = str(dt).replace("torch.", "")
    return name if stage == "synth" or name == eg3d else f"{name} (EG3D {eg3d})"


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, (RuntimeError, MemoryError)) and ("out of memory" in str(e).lower()
                                                           or "can't allocate memory" in str(e).lower()
                                                           or isinstance(e, MemoryError))


def run_stage(stage: str, ctx: Context) -> list[dict]:
    """Run one stage here; always returns at least one line (ok, oom or error)."""
    base = {"stage": stage, "device": str(ctx.device), "dtype": _dtype_name(ctx, stage)}
    counts = ctx.counts(stage)
    planned = counts.get("batch", counts.get("batches", [None])[-1] if "batches" in counts else None)
    mem = PeakMemory(ctx.device)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    try:
        with mem:
            for name in STAGE_MODELS[stage]:
                ctx.model(name)  # build missing models before timing
            results = STAGE_FUNCTIONS[stage](ctx)
    except BaseException as e:  # noqa: BLE001 - reported in the stage's line
        if isinstance(e, KeyboardInterrupt):
            raise
        status = "oom" if _is_oom(e) else "error"
        line = {**base, "batch": planned, "params": None, "seconds_per_item": None, "items_per_s": None,
                "peak_mem_mb": round(mem.peak_mb, 1), "status": status,
                "notes": [f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]]}
        if status == "oom":
            line["failed_batch"] = planned
        else:
            line["traceback"] = traceback.format_exc(limit=6)[-2000:]
        return [line]
    whole = {"stage_wall_seconds": round(time.perf_counter() - wall0, 1),
             "stage_cpu_seconds": round(time.process_time() - cpu0, 1)}  # loading included; CPU = all threads
    out = []
    for r in results:
        r = dict(r)
        items, seconds = r.pop("items"), r.pop("seconds")
        notes = list(r.pop("notes", []))
        if ctx.built:
            notes.append(f"built full-size models first (seconds, not timed): {ctx.built}")
        out.append({**base, "batch": r.pop("batch"), "params": r.pop("params"),
                    "seconds_per_item": round(seconds / items, 5), "items_per_s": round(items / seconds, 5),
                    "peak_mem_mb": round(mem.peak_mb, 1), "status": "ok", "items": items,
                    "seconds": round(seconds, 4), **r, **whole, "notes": notes})
    return out


def _context(args, device, dtype) -> Context:
    return Context(device=device, dtype=dtype, profile=args.profile, preset=args.preset,
                   root=Path(args.cache).expanduser() if args.cache else None, seed=args.seed, compile=args.compile)


def _setup(args, device) -> list[str]:
    notes = []
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fast:
        from adapt3d.utils.fast import configure_backends
        notes.append(f"fast settings: {configure_backends(tf32=True, cudnn_benchmark=True)}")
    return notes


def _emit(line: dict, out: str | None) -> None:
    text = json.dumps(line, default=str)
    print(text, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")


def _child_command(args, stage: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--device", args.device, "--dtype",
           args.dtype, "--preset", args.preset, "--seed", str(args.seed), "--profile", args.profile]
    for flag, on in (("--fast", args.fast), ("--compile", args.compile)):
        if on:
            cmd.append(flag)
    if args.cache:
        cmd += ["--cache", args.cache]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def _limit_memory(gb: float | None):
    if gb is None:
        return None

    def apply():
        import resource
        limit = int(gb * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    return apply


def _run_child(args, stage: str, device, ctx: Context) -> list[dict]:
    proc = subprocess.run(_child_command(args, stage), capture_output=True, text=True,
                          preexec_fn=_limit_memory(args.max_mem_gb))
    lines = [json.loads(t) for t in proc.stdout.splitlines() if t.startswith("{")]
    if lines and proc.returncode == 0:
        return lines
    killed = proc.returncode < 0
    counts = ctx.counts(stage)
    planned = counts.get("batch", counts.get("batches", [None])[-1] if "batches" in counts else None)
    tail = proc.stderr.strip().splitlines()[-3:]
    status = "oom" if killed and proc.returncode == -9 else "error"
    line = {"stage": stage, "device": str(device), "dtype": _dtype_name(ctx, stage), "batch": planned,
            "params": None, "seconds_per_item": None, "items_per_s": None, "peak_mem_mb": None, "status": status,
            "notes": [f"stage process exited with {proc.returncode}"
                      + (" (killed by SIGKILL: most likely out of memory)" if proc.returncode == -9 else "")]
            + [t[:300] for t in tail]}
    if status == "oom":
        line["failed_batch"] = planned
    return lines + [line]


def main(argv=None) -> int:
    args = parse_args(argv)
    stages, device, dtype = check_args(args)
    if args.child:
        _setup(args, device)
        ctx = _context(args, device, dtype)
        for line in run_stage(args.child, ctx):
            print(json.dumps(line, default=str), flush=True)
        return 0
    t0 = time.perf_counter()
    setup_notes = _setup(args, device)
    statuses = []
    for stage in stages:
        ctx = _context(args, device, dtype)
        lines = run_stage(stage, ctx) if args.in_process else _run_child(args, stage, device, ctx)
        for line in lines:
            line["notes"] = list(line.get("notes", [])) + setup_notes
            statuses.append(line["status"])
            _emit(line, args.out)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    _emit({"stage": "suite", "device": str(device), "gpu": gpu, "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "preset": args.preset,
           "profile": args.profile, "stages": stages, "statuses": statuses,
           "seconds": round(time.perf_counter() - t0, 1),
           "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "bench/full_size.py"] +
                                                                    list(argv if argv is not None else sys.argv[1:]))},
          args.out)
    return 0 if all(s == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
