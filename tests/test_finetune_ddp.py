"""Data-parallel fine-tuning: two CPU processes under torchrun (gloo) stay in sync and match one process that
runs the same global batch in the same micro-batches."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from adapt3d.models.checkpoint import load_checkpoint
from adapt3d.pipelines.finetune import run
from adapt3d.training.run_folder import TRAINING_STATE

sys.path.insert(0, os.path.dirname(__file__))
from test_finetune import make_target_dataset, small_config  # noqa: E402

WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import torch
    import torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_finetune import small_config
    from adapt3d.pipelines.finetune import run

    dataset, out = Path(sys.argv[1]), Path(sys.argv[2])
    result = run(small_config(dataset, out, kimg=0.004, snapshot_kimg=1))
    flat = torch.cat([p.detach().reshape(-1) for m in (result.generator, result.discriminator)
                      for p in list(m.parameters()) + list(m.buffers())])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        diffs = [float((g - gathered[0]).abs().max()) for g in gathered]
        (out / "ranks.json").write_text(json.dumps({{"world_size": dist.get_world_size(), "max_diff": diffs,
                                                     "step": result.step}}))
    dist.destroy_process_group()
''')


@pytest.mark.slow
def test_two_processes_stay_in_sync_and_match_single_process(tmp_path):
    dataset = make_target_dataset(tmp_path / "dataset", n=8)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=os.path.dirname(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(dataset), str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["step"] == 1
    assert max(ranks["max_diff"]) == 0.0  # G_ema and D identical on both ranks
    options = json.loads((tmp_path / "ddp" / "options.json").read_text())
    assert options["resolved"]["world_size"] == 2 and options["resolved"]["batch_gpu"] == 2

    single = run(small_config(dataset, tmp_path / "single", kimg=0.004, snapshot_kimg=1))
    assert single.step == 1
    # Every micro-batch draws its randomness from (seed, step, phase, micro-batch index), so both runs compute the
    # same numbers; on one CPU they agree to the last bit (the tolerance leaves room for other BLAS builds).
    a, b = load_checkpoint(tmp_path / "ddp" / "final"), load_checkpoint(tmp_path / "single" / "final")
    for name, mod_a, mod_b in (("G_ema", a.generator, b.generator), ("D", a.discriminator, b.discriminator)):
        for k, v in mod_a.state_dict().items():
            torch.testing.assert_close(v, mod_b.state_dict()[k], rtol=0, atol=1e-6, msg=f"{name} {k}")
    snap = "snapshots/snapshot-000001/" + TRAINING_STATE
    sa = torch.load(tmp_path / "ddp" / snap, weights_only=True)
    sb = torch.load(tmp_path / "single" / snap, weights_only=True)
    for k, v in sa["G"].items():
        torch.testing.assert_close(v, sb["G"][k], rtol=0, atol=1e-6, msg=f"G {k}")
    for opt in ("opt_G", "opt_D"):
        for idx, st in sa[opt]["state"].items():
            for key, val in st.items():
                torch.testing.assert_close(val, sb[opt]["state"][idx][key], rtol=0, atol=1e-6)
    assert sa["augment"] == sb["augment"]
    from adapt3d.models.triplane import build_generator
    init = build_generator("tiny").state_dict()
    assert max(float((sb["G"][k] - init[k]).abs().max()) for k in init) > 1e-4  # training did change G
