"""The GPU device check: everything a GPU machine must measure for adapt3d, in one call, into one JSON report.

    bash bench/device_check.sh "$OUT"                                      # on the GPU machine (installs .whl/)
    python bench/device_check.py --out DIR [--official-root PATH] [--budget-s 450]
    python bench/device_check.py --out DIR --dry-run --device cpu          # tiny models on the CPU (the suite)

Steps, in order, each within what is left of ``--budget-s`` (a step that no longer fits is reported as not run,
with the reason; nothing is skipped silently):

1. ``environment``: GPU, driver, torch / CUDA versions, which of adapt3d's packages import (missing ones are listed:
   carry their wheels in ``.whl/``, see docs/benchmarks.md).
2. ``full_size_models``: builds the full-size random-weight models the benchmark needs (weights drawn on the GPU,
   saved in the release layouts; ``--cache``).
3. ``gpu_tests``: ``pytest -m gpu`` over the test files that hold gpu-marked tests (log: ``gpu_tests.log``).
4. ``parity``: an ffhq512 render (seeded random weights, 2 views, deterministic sampling, const noise) on the GPU
   against the CPU in float32: "fp32" (TF32 off, EG3D's fp16 layers forced to fp32; tolerance: max |diff| <=
   1e-3 on images in [-1, 1], depth <= 1e-3 world units) and "fast" (TF32 on, EG3D's fp16 super-resolution as EG3D
   runs it on GPUs; tolerance max <= 0.1, mean <= 1e-2).
5. ``full_size``: ``bench/full_size.py --device cuda --profile device --fast`` (lines in ``full_size.jsonl``).
6. ``official``: with ``--official-root``, ``bench/official_step.py`` (the official EG3D training step against
   adapt3d's on the same weights and batch).

The report ``device_check.json`` (in ``--out``) holds every step's status (ok / failed / not run), its numbers, the
seconds it took, and ``could_not_run``. A short table is printed last.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

PACKAGES = ("diffusers", "transformers", "accelerate", "safetensors", "tyro", "trimesh", "mcubes", "imageio",
            "imageio_ffmpeg", "cv2", "scipy", "torchmetrics", "PIL", "pytest")
BENCH_MODELS = ("eg3d-ffhq512", "sd21-base", "sd15", "controlnet-sd15-canny", "clip-vit-b-32", "clip-vit-b-16")
TOLERANCES = {"fp32": {"image_max": 1e-3, "depth_max": 1e-3}, "fast": {"image_max": 0.1, "image_mean": 1e-2}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for device_check.json and the logs (created)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=450.0, help="seconds for the whole check")
    p.add_argument("--official-root", default=None, help="eg3d/ folder of an NVlabs/eg3d checkout (optional)")
    p.add_argument("--cache", default=None, help="full-size models (default /tmp/adapt3d-full-size)")
    p.add_argument("--dry-run", action="store_true", help="tiny models, few items (a CPU test of this script)")
    p.add_argument("--stages", default=None, help="bench/full_size.py --stages (default: all)")
    return p.parse_args(argv)


class Check:
    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.active: subprocess.Popen | None = None  # the command running now (ended on SIGTERM)
        self.report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv),
                       "budget_s": args.budget_s, "dry_run": args.dry_run, "steps": {}, "could_not_run": []}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.t0)

    def step(self, name: str, need_s: float, fn) -> dict:
        """Run ``fn()`` if ``need_s`` seconds are left; record its result, time and status."""
        if self.left() < need_s:
            rec = {"status": "not run", "reason": f"out of time: {self.left():.0f} s left, needs about {need_s:.0f} s"}
        else:
            t = time.perf_counter()
            try:
                rec = fn()
                rec.setdefault("status", "ok")
            except Exception as e:  # noqa: BLE001 - recorded in the report
                rec = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:1000]}
            rec["seconds"] = round(time.perf_counter() - t, 1)
        if rec["status"] != "ok":
            self.report["could_not_run"].append(f"{name}: {rec.get('reason') or rec.get('error') or rec['status']}")
        self.report["steps"][name] = rec
        self.save()
        return rec

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.out / ".device_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=1, default=str) + "\n")
        os.replace(tmp, self.out / "device_check.json")

    def run(self, cmd: list[str], timeout: float, log: str | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
        # A session of its own, so that a timeout ends the command's children too (a benchmark's stage process
        # must not go on holding the GPU).
        popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
                                 start_new_session=True)
        self.active = popen
        try:
            out, err = popen.communicate(timeout=max(timeout, 1))
            proc = subprocess.CompletedProcess(cmd, popen.returncode, out, err)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            out, err = popen.communicate()
            proc = subprocess.CompletedProcess(cmd, -999, out, err + f"\n[timed out after {timeout:.0f} s]")
        finally:
            self.active = None
        if log:
            (self.out / log).write_text(f"$ {' '.join(cmd)}\n{proc.stdout}\n--- stderr ---\n{proc.stderr[-20000:]}")
        return proc


def environment(check: Check) -> dict:
    dev = torch.device(check.args.device)
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "cuda_available": torch.cuda.is_available()}
    if dev.type == "cuda" and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(dev)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}",
                    bf16=torch.cuda.is_bf16_supported())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"not available ({type(e).__name__})"
    missing = []
    for name in PACKAGES:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - any import failure means the package is unusable here
            missing.append(f"{name} ({type(e).__name__})")
    info["missing_packages"] = missing
    if dev.type == "cuda" and not torch.cuda.is_available():
        info["status"] = "failed"
        info["error"] = "--device cuda but CUDA is not available: every GPU step below cannot run"
    elif missing:
        info["status"] = "incomplete"
        info["reason"] = "missing packages: " + ", ".join(missing)
    return info


def build_models(check: Check) -> dict:
    if check.args.dry_run:
        return {"status": "ok", "note": "dry run: the tiny models (built on first use)"}
    from adapt3d.testing.full_size import ensure_full_size_model
    dev = check.args.device if torch.cuda.is_available() else "cpu"
    built = {}
    for name in BENCH_MODELS:
        t = time.perf_counter()
        ensure_full_size_model(name, check.args.cache, device=dev)
        built[name] = round(time.perf_counter() - t, 1)
    return {"seconds_per_model": built, "cache": check.args.cache}


def gpu_tests(check: Check) -> dict:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text())
    proc = check.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files],
                     timeout=min(180, check.left() - 30), log="gpu_tests.log")
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", tail)}
    status = "ok" if proc.returncode == 0 and counts.get("passed", 0) > 0 and not counts.get("failed") else "failed"
    if proc.returncode == 0 and not counts.get("passed"):
        status = "not run"
    rec = {"status": status, "files": files, "summary": tail, "counts": counts, "returncode": proc.returncode}
    if status == "not run":
        rec["reason"] = "no gpu test ran (" + tail + ")"
    return rec


def _render(G, ws, c, **kw):
    return G.synthesis(ws, c, noise_mode="const", sampling="deterministic", **kw)


def parity(check: Check) -> dict:
    from adapt3d.cameras import camera_label, frontal_label
    from adapt3d.models.triplane import build_generator
    from adapt3d.utils.fast import backend_settings, configure_backends

    preset = "tiny" if check.args.dry_run else "ffhq512"
    dev = torch.device(check.args.device)
    G = build_generator(preset, seed=0).eval().requires_grad_(False)
    r = G.rendering
    yaw = torch.tensor([math.pi / 2 - 0.3, math.pi / 2 + 0.3])
    c = camera_label(yaw, torch.full_like(yaw, math.pi / 2 - 0.1), radius=r.avg_camera_radius,
                     pivot=r.avg_camera_pivot, fov_deg=G.config.camera_fov_deg)
    c_cond = frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg, batch_size=2)
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ws = G.mapping(z, c_cond, truncation_psi=0.7)
        ref = _render(G, ws, c)
    Gd = G.to(dev)
    before = backend_settings()
    out = {"preset": preset, "device": str(dev), "tolerances": TOLERANCES,
           "note": "CPU reference: float32, adapt3d's CPU fast paths (agree with the direct path to ~1e-5)"}
    if dev.type == "cpu":
        out["note"] += "; device is the CPU: this compares the CPU with itself (dry run)"
    try:
        for mode in ("fp32", "fast"):
            configure_backends(tf32=(mode == "fast"), cudnn_benchmark=False)
            with torch.no_grad():
                res = _render(Gd, ws.to(dev), c.to(dev), **({"force_fp32": True} if mode == "fp32" else {}))
            d = {k: (getattr(res, k).float().cpu() - getattr(ref, k)).abs() for k in ("image", "image_raw",
                                                                                     "image_depth")}
            stats = {f"{k}_max": float(v.max()) for k, v in d.items()} | {f"{k}_mean": float(v.mean())
                                                                          for k, v in d.items()}
            tol = TOLERANCES[mode]
            ok = all(stats[{"image_max": "image_max", "image_mean": "image_mean", "depth_max": "image_depth_max"}[k]]
                     <= v for k, v in tol.items()) and all(math.isfinite(v) for v in stats.values())
            out[mode] = {**{k: float(f"{v:.3g}") for k, v in stats.items()}, "within_tolerance": ok}
    finally:
        configure_backends(tf32=before["matmul_tf32"], cudnn_benchmark=before["cudnn_benchmark"])
    out["status"] = "ok" if out["fp32"]["within_tolerance"] and out["fast"]["within_tolerance"] else "failed"
    return out


def full_size(check: Check) -> dict:
    a = check.args
    cmd = [sys.executable, "bench/full_size.py", "--out", str(check.out / "full_size.jsonl")]
    if a.dry_run:
        cmd += ["--device", a.device, "--preset", "tiny", "--quick", "--in-process"]
    else:
        cmd += ["--device", a.device, "--profile", "device", "--fast"]
        if a.cache:
            cmd += ["--cache", a.cache]
    if a.stages:
        cmd += ["--stages", a.stages]
    (check.out / "full_size.jsonl").unlink(missing_ok=True)
    reserve = 150 if a.official_root else 15
    proc = check.run(cmd, timeout=check.left() - reserve, log="full_size.log")
    jsonl = check.out / "full_size.jsonl"  # written line by line: complete even when the run was cut short
    lines = [json.loads(t) for t in (jsonl.read_text().splitlines() if jsonl.is_file() else []) if t.startswith("{")]
    stage_lines = [x for x in lines if x.get("stage") != "suite"]
    rec = {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "lines": stage_lines,
           "suite": next((x for x in lines if x.get("stage") == "suite"), None)}
    ran = {x["stage"] for x in stage_lines}
    wanted = (a.stages.split(",") if a.stages else
              ["render", "make-dataset", "finetune", "nada", "distill", "synth", "invert", "eval"])
    rec["not_run"] = [s for s in wanted if s not in ran]
    bad = [x["stage"] for x in stage_lines if x.get("status") != "ok"]
    rec["status"] = "ok" if not bad and not rec["not_run"] else "incomplete"
    if rec["status"] != "ok":
        why = []
        if bad:
            why.append(f"stages not ok: {bad}")
        if rec["not_run"]:
            why.append(f"stages not run: {rec['not_run']}"
                       + (" (the benchmark hit its time limit)" if proc.returncode == -999 else ""))
        rec["reason"] = "; ".join(why)
    return rec


def official(check: Check) -> dict:
    a = check.args
    if not a.official_root:
        return {"status": "not run", "reason": "no --official-root given (an NVlabs/eg3d checkout outside the repo)"}
    cmd = [sys.executable, "bench/official_step.py", "--official-root", a.official_root, "--device", a.device,
           "--steps", "3", "--warmup", "1"]
    if a.dry_run:
        cmd += ["--scale", "small", "--steps", "1", "--warmup", "0"]
    proc = check.run(cmd, timeout=check.left() - 5, log="official_step.log")
    lines = [json.loads(t) for t in proc.stdout.splitlines() if t.startswith("{")]
    if not lines:
        return {"status": "failed", "error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:500]}
    return {**lines[-1], "status": "ok"}


def summary_table(report: dict) -> str:
    rows = [f"device check ({report['elapsed_s']} s of {report['budget_s']:.0f} s budget)"]
    for name, rec in report["steps"].items():
        rows.append(f"  {name:<18} {rec['status']:<10} {rec.get('seconds', '')!s:>7} s  "
                    f"{rec.get('reason') or rec.get('error') or ''}"[:160])
    fs = report["steps"].get("full_size", {})
    for x in fs.get("lines", []):
        rows.append(f"    {x['stage']:<13} b{x.get('batch')!s:<3} {x.get('status'):<6} "
                    f"{x.get('items_per_s')!s:>10} items/s  {x.get('peak_mem_mb')!s:>9} MB")
    par = report["steps"].get("parity", {})
    for mode in ("fp32", "fast"):
        if mode in par:
            rows.append(f"    parity {mode}: image max {par[mode]['image_max']} mean {par[mode]['image_mean']} "
                        f"ok={par[mode]['within_tolerance']}")
    off = report["steps"].get("official", {})
    if "kimg_per_hour_ratio" in off:
        rows.append(f"    official step: kimg/h ratio adapt3d/official {off['kimg_per_hour_ratio']}, "
                    f"peak memory ratio {off.get('peak_mem_ratio')}")
    return "\n".join(rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cache is None and not args.dry_run:
        args.cache = "/tmp/adapt3d-full-size"
    check = Check(args)

    def terminated(signum, frame):  # an outer time limit (bench/device_check.sh's timeout): keep what was measured
        if check.active is not None:
            os.killpg(check.active.pid, signal.SIGKILL)
        check.report["could_not_run"].append(f"terminated by signal {signum} after {check.report.get('elapsed_s')} s;"
                                             " later steps did not run")
        check.save()
        print(summary_table(check.report), flush=True)
        os._exit(2)

    signal.signal(signal.SIGTERM, terminated)
    env = check.step("environment", 5, lambda: environment(check))
    check.report["machine"] = env.get("gpu") or env.get("cpu")
    gpu_ok = env.get("status") != "failed"
    if gpu_ok:
        check.step("full_size_models", 60, lambda: build_models(check))
        check.step("gpu_tests", 40, lambda: gpu_tests(check))
        check.step("parity", 20, lambda: parity(check))
        check.step("full_size", 60, lambda: full_size(check))
        check.step("official", 60, lambda: official(check))
    else:
        for name in ("full_size_models", "gpu_tests", "parity", "full_size", "official"):
            check.report["steps"][name] = {"status": "not run", "reason": env["error"]}
            check.report["could_not_run"].append(f"{name}: {env['error']}")
    check.save()
    print(summary_table(check.report), flush=True)
    return 0 if not check.report["could_not_run"] else 1


if __name__ == "__main__":
    sys.exit(main())
