"""Data-parallel NADA and distillation on the trainer core: two CPU processes under torchrun (gloo) stay in sync and
match one process that runs the same global batch in the same micro-batches (as tests/test_finetune_ddp.py)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

NADA_WORKER = textwrap.dedent('''
    import json, sys
    import torch
    import torch.distributed as dist
    from adapt3d.clip import CLIPScorer
    from adapt3d.clip.directional import CLIPDirectionalLoss
    from adapt3d.models.triplane import build_generator
    from adapt3d.training.distributed import init_distributed
    from adapt3d.training.nada import NadaTrainer
    from adapt3d.training.nada_config import NadaConfig

    torch.set_num_threads(1)
    info, device = init_distributed(torch.device("cpu"))
    clip = CLIPDirectionalLoss([CLIPScorer.from_pretrained(sys.argv[1])], [1.0], "photo", "zombie")
    cfg = NadaConfig(**json.loads(sys.argv[3]))
    trainer = NadaTrainer(cfg, build_generator("tiny"), clip, dist=info)
    trainer.run_training()
    flat = torch.cat([p.detach().reshape(-1) for p in trainer.G.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        torch.save(trainer.G.state_dict(), sys.argv[2] + ".pt")
        with open(sys.argv[2] + ".json", "w") as f:
            json.dump({"world_size": dist.get_world_size(), "step": trainer.step, "accum": trainer.accum,
                       "max_diff": [float((g - gathered[0]).abs().max()) for g in gathered],
                       "losses": [s.get("loss/direction") for s in trainer.stats]}, f)
    dist.destroy_process_group()
''')

NADA_CFG = dict(preset="tiny", prompt="zombie", source_text="photo", progress=False, neural_rendering_resolution=16,
                seeds="0", steps=2, batch=2, batch_gpu=1, num_views=2, lr=0.01)


def _torchrun(script, args, nproc=2, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(script), *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_nada_two_processes_match_one(tmp_path):
    from adapt3d.clip import CLIPScorer
    from adapt3d.clip.directional import CLIPDirectionalLoss
    from adapt3d.diffusion.tiny_models import make_tiny_clip
    from adapt3d.models.triplane import build_generator
    from adapt3d.training.nada import NadaTrainer
    from adapt3d.training.nada_config import NadaConfig

    clip_path = make_tiny_clip(tmp_path / "clip")
    script = tmp_path / "worker.py"
    script.write_text(NADA_WORKER)
    _torchrun(script, [clip_path, tmp_path / "ddp", json.dumps(NADA_CFG)])
    ranks = json.loads((tmp_path / "ddp.json").read_text())
    assert ranks["world_size"] == 2 and ranks["step"] == 2 and ranks["accum"] == 1
    assert max(ranks["max_diff"]) == 0.0  # both processes hold the same generator

    torch.set_num_threads(1)
    clip = CLIPDirectionalLoss([CLIPScorer.from_pretrained(str(clip_path))], [1.0], "photo", "zombie")
    single = NadaTrainer(NadaConfig(**NADA_CFG), build_generator("tiny"), clip)
    assert single.accum == 2  # the same two micro-batches, in one process
    single.run_training()
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    init = build_generator("tiny").state_dict()
    moved = max(float((single.G.state_dict()[k] - init[k]).abs().max()) for k in init)
    assert moved > 1e-4  # the steps did change G
    for k, v in single.G.state_dict().items():
        torch.testing.assert_close(ddp[k], v, rtol=0, atol=1e-6, msg=k)
    assert ranks["losses"] == pytest.approx([s.get("loss/direction") for s in single.stats], abs=1e-6)
