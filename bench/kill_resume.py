"""kill -9 campaign: start a job, kill it at a random moment, rerun the same command, compare with an uninterrupted run.

    python bench/kill_resume.py --tries 4 --jobs finetune distill nada synth --seed 0

For each job (tiny models, CPU, a few steps) it makes one uninterrupted reference run, then ``--tries`` times: starts
the command in a subprocess, sends SIGKILL after a random delay (uniform in 5 %..95 % of the reference run's wall
time), reruns the command until it finishes, and compares the result files byte for byte with the reference (and
checks that no lock or temporary of the killed writer is left). Prints one line per try and a JSON summary line
``{"survived": s, "tried": t, ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASET_CODE = """
import json, sys, torch
from pathlib import Path
from adapt3d.cameras import make_pose_sampler
from adapt3d.export.images import save_image, to_uint8
from adapt3d.models.triplane import build_generator
root = Path(sys.argv[1]); G = build_generator("tiny").eval(); r = G.rendering
poses = make_pose_sampler("sinusoidal").sample(8, torch.Generator().manual_seed(0))
c = poses.labels(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg)
z = torch.randn(8, G.z_dim, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    img = G(z, c, sampling="deterministic", noise_mode="const").image.clamp(-1, 1)
u8 = to_uint8((img + torch.tensor([1.0, 0, 0])[None, :, None, None]).clamp(-1, 1))
entries = []
for i in range(8):
    save_image(root / f"00000/img{i:08d}.png", u8[i]); entries.append([f"00000/img{i:08d}.png", c[i].tolist()])
(root / "dataset.json").write_text(json.dumps({"labels": entries}))
"""

JOBS = {
    "finetune": ("from adapt3d.pipelines.finetune import FinetuneConfig as C, run; "
                 "run(C(dataset=sys.argv[2], out=sys.argv[1], preset='tiny', kimg=0.016, batch=4, batch_gpu=2, "
                 "neural_rendering_resolution=16, tick_kimg=0.004, snapshot_kimg=0.004, sample_seeds='0', "
                 "progress=False, d_reg_interval=2, density_reg_interval=2, density_reg_points=200))",
                 ["final/generator.safetensors", "final/discriminator.safetensors"]),
    "distill": ("from adapt3d.pipelines.distill import DistillConfig as C, run; "
                "run(C(prompts='a zombie;an elf', preset='tiny', diffusion=sys.argv[3], clip_model='none', "
                "diversity_features='pixels', out=sys.argv[1], steps=4, batch=2, lr=0.02, tick_steps=1, "
                "diversity_steps=2, snapshot_steps=1, diversity_seeds='0-1', sample_seeds='0', evaluate=False, "
                "attn_resolution=16, attn_dim=32, progress=False))",
                ["final/conditioning.safetensors", "final/discriminator.safetensors"]),
    "nada": ("from adapt3d.training.nada import NadaTrainer; from adapt3d.training.nada_config import NadaConfig; "
             "from adapt3d.training.run_folder import RunFolder; from adapt3d.models.triplane import build_generator; "
             "from adapt3d.clip import CLIPScorer; from adapt3d.clip.directional import CLIPDirectionalLoss; "
             "from adapt3d.utils.folder_lock import job_folder; "
             "clip = CLIPDirectionalLoss([CLIPScorer.from_pretrained(sys.argv[4])], [1.0], 'photo', 'zombie'); "
             "cfg = NadaConfig(preset='tiny', prompt='zombie', source_text='photo', progress=False, "
             "neural_rendering_resolution=16, seeds='0', steps=4, snapshot_steps=1, lr=0.01); "
             "lock = job_folder(sys.argv[1], 'nada'); lock.__enter__(); rf = RunFolder(sys.argv[1]); "
             "NadaTrainer(cfg, build_generator('tiny'), clip, run_folder=rf, "
             "resume_from=rf.latest_snapshot()).run_training()",
             ["final/generator.safetensors"]),
    "synth": ("from adapt3d.pipelines.synth import SynthConfig, synth; "
              "synth(SynthConfig(preset='tiny', out=sys.argv[1], per_mesh=2, num_inference_steps=2, batch_size=2, "
              "resolution=32, device='cpu', progress=False))",
              None),
}


def _command(job: str, out: Path, assets: dict) -> list[str]:
    code = "import sys, torch; torch.set_num_threads(1); " + JOBS[job][0]
    return [sys.executable, "-c", code, str(out), str(assets["dataset"]), str(assets["sd"]), str(assets["clip"])]


def _result_files(job: str, out: Path) -> dict[str, bytes]:
    names = JOBS[job][1]
    if names is None:  # every annotation and image of synth (annotations name the output folder: made neutral)
        return {p.relative_to(out).as_posix(): p.read_bytes().replace(str(out).encode(), b"<out>")
                for p in sorted(out.glob("*/*/*/*")) if p.is_file() and not p.name.startswith(".")}
    return {n: (out / n).read_bytes() for n in names}


def _leftovers(out: Path) -> list[str]:
    from adapt3d.utils.folder_lock import LOCK_NAME, temp_writer_pid
    return [p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.name == LOCK_NAME or temp_writer_pid(p.name) is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tries", type=int, default=4, help="kills per job")
    ap.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    root = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    from adapt3d.diffusion.tiny_models import make_tiny_clip, make_tiny_stable_diffusion
    assets = {"dataset": root / "dataset", "sd": make_tiny_stable_diffusion(root / "sd"),
              "clip": make_tiny_clip(root / "clip")}
    subprocess.run([sys.executable, "-c", DATASET_CODE, str(assets["dataset"])], env=env, check=True)
    survived = tried = 0
    per_job = {}
    for job in args.jobs:
        ref = root / f"{job}-ref"
        t0 = time.time()
        subprocess.run(_command(job, ref, assets), env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        wall = time.time() - t0
        reference = _result_files(job, ref)
        ok_job = 0
        for k in range(args.tries):
            out = root / f"{job}-{k}"
            delay = rng.uniform(0.05, 0.95) * wall
            proc = subprocess.Popen(_command(job, out, assets), env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            rerun = subprocess.run(_command(job, out, assets), env=env, capture_output=True, text=True)
            same = rerun.returncode == 0 and _result_files(job, out) == reference
            left = _leftovers(out)
            good = same and not left
            tried += 1
            survived += good
            ok_job += good
            print(f"{job} try {k}: killed after {delay:.1f} s ({'mid-run' if killed else 'after it finished'}); "
                  f"rerun exit {rerun.returncode}; result {'identical' if same else 'DIFFERENT'}"
                  + (f"; leftovers {left}" if left else "")
                  + ("" if rerun.returncode == 0 else f"; {rerun.stderr.strip().splitlines()[-1:]}"), flush=True)
            shutil.rmtree(out, ignore_errors=True)
        per_job[job] = f"{ok_job}/{args.tries}"
    print(json.dumps({"survived": survived, "tried": tried, "per_job": per_job}))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
