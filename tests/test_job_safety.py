"""One writer per folder, stale locks, orphan temporaries, job identity and failed starts, for every job (#16 1-3,
the orphan-temps item, #20 item 8). Each test would fail on the code before these changes."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from adapt3d.utils.folder_lock import (FolderLock, FolderLockedError, LOCK_NAME, pid_alive, sweep_stale_temps,
                                       temp_writer_pid)
from adapt3d.utils.io import atomic_write_text

sys.path.insert(0, os.path.dirname(__file__))
from test_finetune import make_target_dataset, small_config  # noqa: E402

HOLDER = textwrap.dedent('''
    import sys, time
    from adapt3d.utils.folder_lock import FolderLock
    lock = FolderLock(sys.argv[1], sys.argv[2]).acquire()
    print("ready", flush=True)
    time.sleep(600)
''')


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


@pytest.fixture
def holder(tmp_path):
    """A live process holding the writer lock of tmp_path/locked (as a 'finetune')."""
    folder = tmp_path / "locked"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), "finetune"], env=_env(), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield folder, proc
    finally:
        proc.kill()
        proc.wait()


def test_live_holder_is_named_and_a_killed_one_is_recovered(holder):
    folder, proc = holder
    with pytest.raises(FolderLockedError, match=rf"--out: .*locked is being written by adapt3d finetune, "
                                                 rf"pid {proc.pid}"):
        FolderLock(folder, "distill").acquire()
    proc.kill()  # kill -9: the lock file stays, naming a dead pid
    proc.wait()
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == proc.pid
    with FolderLock(folder, "distill") as lock:
        assert lock.recovered["pid"] == proc.pid
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (folder / LOCK_NAME).exists()  # a finished writer leaves no lock behind


def test_stale_lock_file_of_a_dead_pid_without_flock_is_taken_over(tmp_path, monkeypatch):
    """File systems without flock: the pid file decides (a dead pid on this host is stale, a live one is not)."""
    import socket
    monkeypatch.setattr(FolderLock, "_flock", staticmethod(lambda fd: None))
    dead = _dead_pid()
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "job": "synth"}))
    with FolderLock(tmp_path, "synth") as lock:
        assert lock.recovered["pid"] == dead
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tmp_path.joinpath(LOCK_NAME).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(),
                                                            "job": "synth"}))
        with pytest.raises(FolderLockedError, match=f"pid {live.pid}"):
            FolderLock(tmp_path, "synth").acquire()
    finally:
        live.kill()
        live.wait()


def _tiny_sd(tmp_path_factory):
    from adapt3d.diffusion.tiny_models import make_tiny_stable_diffusion
    return str(make_tiny_stable_diffusion(tmp_path_factory.getbasetemp() / "tiny-models" / "stable-diffusion"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_target_dataset(tmp_path_factory.mktemp("safety") / "dataset", n=8)


def _job_runs(dataset, out):
    from adapt3d.pipelines import distill, finetune, make_dataset, nada, synth
    return {
        "finetune": lambda: finetune.run(small_config(dataset, out, kimg=0.004)),
        "distill": lambda: distill.run(distill.DistillConfig(prompts="a zombie", preset="tiny", out=out, steps=1,
                                                             progress=False)),
        "nada": lambda: nada.run(nada.NadaConfig(preset="tiny", prompt="zombie", out=out, steps=1, progress=False)),
        "synth": lambda: synth.synth(synth.SynthConfig(preset="tiny", out=out, per_mesh=1, render_only=True,
                                                       progress=False)),
        "make-dataset": lambda: make_dataset.run(make_dataset.MakeDatasetConfig(prompt="zombie", preset="tiny",
                                                                                out=out, num_images=2,
                                                                                progress=False)),
    }


@pytest.mark.parametrize("job", ["finetune", "distill", "nada", "synth", "make-dataset"])
def test_every_job_refuses_a_folder_another_process_writes(holder, dataset, job):
    folder, proc = holder
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ValueError, match=rf"being written by adapt3d finetune, pid {proc.pid}"):
        _job_runs(dataset, folder)[job]()
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written (no stats, no job.json)


def test_two_finetunes_into_one_folder_one_is_refused(dataset, tmp_path):
    """#16.2: the second of two concurrent finetunes fails at once naming the first's pid; stats hold each step
    once."""
    out = tmp_path / "ft"
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from test_finetune import small_config; "
            "from adapt3d.pipelines.finetune import run; from pathlib import Path; "
            "run(small_config(Path(sys.argv[1]), Path(sys.argv[2]), kimg=0.008))")
    first = subprocess.Popen([sys.executable, "-c", code, str(dataset), str(out), os.path.dirname(__file__)],
                             env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 600  # a loaded machine may take minutes to import torch
        while time.time() < deadline and not (out / LOCK_NAME).is_file() and first.poll() is None:
            time.sleep(0.02)
        assert (out / LOCK_NAME).is_file(), "the first run never took the lock"
        with pytest.raises(FolderLockedError, match=rf"adapt3d finetune, pid {first.pid}"):
            from adapt3d.pipelines.finetune import run
            run(small_config(dataset, out, kimg=0.008))
        assert first.wait(timeout=900) == 0, first.stderr.read()[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_sweep_removes_temporaries_of_dead_writers_only(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    orphans = [tmp_path / "snapshots" / f".tmp-snapshot-000002-{dead}", tmp_path / f".tmp-final-{dead}",
               tmp_path / f".old-final-{dead}", tmp_path / "samples" / f".source.{dead}.tmpab_c1x.png",
               tmp_path / "car" / "box" / "image" / f".001_00.{dead}.tmpq9z8y7.png"]
    kept = [tmp_path / f".tmp-final-{live}", tmp_path / "samples" / f".fakes.{live}.tmpzz.png",
            tmp_path / "samples" / "source.png", tmp_path / ".hidden-user-file"]
    for p in orphans[:3] + kept[:1]:
        (p / "sub").mkdir(parents=True)
        (p / "sub" / "generator.safetensors").write_bytes(b"x")
    for p in orphans[3:] + kept[1:]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    removed = sweep_stale_temps(tmp_path)
    assert sorted(removed) == sorted(orphans)
    assert not any(p.exists() for p in orphans) and all(p.exists() for p in kept)
    assert temp_writer_pid("dataset.json") is None and temp_writer_pid(f".tmp-final-{dead}") == dead


def test_atomic_writes_name_their_writer(tmp_path, monkeypatch):
    """The temporaries of atomic writes carry the pid, so the sweep can tell a dead writer's from a live one's."""
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    atomic_write_text(tmp_path / "001_00.json", "{}")
    assert temp_writer_pid(seen[0]) == os.getpid()


def test_a_rerun_sweeps_orphans_of_a_killed_finetune(dataset, tmp_path):
    from adapt3d.pipelines.finetune import run
    out = tmp_path / "ft"
    run(small_config(dataset, out, kimg=0.004, snapshot_kimg=0.004))
    dead = _dead_pid()
    orphans = [out / "snapshots" / f".tmp-snapshot-000002-{dead}", out / f".tmp-final-{dead}",
               out / "samples" / f".fakes-000002.{dead}.tmpk2j3h4.png"]
    for p in orphans[:2]:
        p.mkdir(parents=True)
    orphans[2].write_bytes(b"partial")
    run(small_config(dataset, out, kimg=0.008, snapshot_kimg=0.004))
    assert not any(p.exists() for p in orphans)


# -- job identity -----------------------------------------------------------------------------------------------------
def test_finetune_refuses_a_dataset_changed_in_place(dataset, tmp_path):
    """#16.1 (a): make-dataset re-filtered the dataset in place (8 -> 4 images); the finetune identity used to be the
    dataset's path only, so the run was taken as 'up to date' / resumed on other data."""
    import shutil
    from adapt3d.pipelines.finetune import finetune_done, run
    ds = tmp_path / "dataset"
    shutil.copytree(dataset, ds)
    out = tmp_path / "train"
    cfg = small_config(ds, out, kimg=0.004)
    run(cfg)
    assert finetune_done(cfg)
    doc = json.loads((ds / "dataset.json").read_text())
    doc["labels"] = doc["labels"][:4]
    (ds / "dataset.json").write_text(json.dumps(doc))
    assert not finetune_done(cfg)
    with pytest.raises(ValueError, match=r"--out: .*train holds a run with other options \(differences: "
                                         r"dataset_sha256\)"):
        run(cfg)


def test_synth_refuses_changed_generation_options_and_extends_per_mesh(tmp_path_factory, tmp_path):
    """#16.1 (b): --per-mesh 2, then --per-mesh 3 with other generation options used to exit 0 with annotations
    000-001 made with the old settings and 002 with the new."""
    from adapt3d.pipelines.synth import SynthConfig, synth
    out = tmp_path / "S"
    base = dict(preset="tiny", out=out, num_inference_steps=2, batch_size=2, resolution=32, classes="car",
                progress=False)
    synth(SynthConfig(per_mesh=2, **base))
    ann = sorted(p.name for p in out.glob("car/*/annotation/*.json"))
    with pytest.raises(ValueError, match=r"other options \(differences: guidance_scale, num_inference_steps, "
                                         r"prompt_suffix\).*guidance_scale: 9.0 now 2.0"):
        synth(SynthConfig(**{**base, "per_mesh": 3, "guidance_scale": 2.0, "prompt_suffix": "XYZ",
                             "num_inference_steps": 5}))
    assert sorted(p.name for p in out.glob("car/*/annotation/*.json")) == ann  # nothing mixed in
    more = synth(SynthConfig(per_mesh=3, **base))  # only more views: the same job, extended
    assert more.images > 0
    for p in out.glob("car/*/annotation/*.json"):
        gen = json.loads(p.read_text())["generation"]
        assert gen["num_inference_steps"] == 2 and gen["guidance_scale"] == 9.0


def test_a_failed_start_leaves_nothing_that_blocks_the_fixed_command(dataset, tmp_path):
    """#20 item 8: a run that fails before any work leaves no folder, lock or options behind."""
    from adapt3d.data.eg3d_dataset import DatasetError
    from adapt3d.pipelines.finetune import run
    small = make_target_dataset(tmp_path / "small", n=4, size=32)  # 32 px images; the tiny generator makes 64
    out = tmp_path / "new"
    with pytest.raises(DatasetError, match="--resize"):
        run(small_config(small, out, kimg=0.004))
    assert not out.exists()
    # A run that wrote its options but stopped before its first snapshot does not block other options.
    out.mkdir()
    (out / "options.json").write_text(json.dumps({"identity": {"g_lr": 123.0}}))
    result = run(small_config(small, out, kimg=0.004, resize=True))
    assert result.step == 1


def test_make_dataset_failing_to_load_leaves_no_job_json(tmp_path, monkeypatch):
    from adapt3d.pipelines import make_dataset
    out = tmp_path / "md"

    def broken(*a, **k):
        raise ValueError("--diffusion: cannot load (simulated)")
    monkeypatch.setattr(make_dataset, "load_models", broken)
    with pytest.raises(ValueError, match="simulated"):
        make_dataset.run(make_dataset.MakeDatasetConfig(prompt="zombie", preset="tiny", out=out, num_images=2,
                                                        progress=False))
    assert not out.exists()


# -- divergence -----------------------------------------------------------------------------------------------------
def test_distill_with_exploding_learning_rates_stops_and_saves_no_final(tmp_path_factory, tmp_path):
    """#16.3: --lr 1e30 --d-lr 1e30 used to skip 5 of 6 steps silently and save final/ with weights ~1e30."""
    from adapt3d.pipelines.distill import DistillConfig, run
    from adapt3d.training.trainer_core import TrainingDiverged
    out = tmp_path / "dp"
    cfg = DistillConfig(prompts="a zombie", preset="tiny", diffusion=_tiny_sd(tmp_path_factory), clip_model="none",
                        diversity_features="pixels", out=out, steps=6, batch=2, lr=1e30, d_lr=1e30, tick_steps=1,
                        snapshot_steps=6, diversity_steps=6, diversity_seeds="0-1", sample_seeds="0",
                        evaluate=False, attn_resolution=16, attn_dim=32, progress=False)
    with pytest.raises(TrainingDiverged, match=r"training stopped at step \d: .*(exploded|skipped|NaN)"):
        run(cfg)
    assert not (out / "final").exists() and not list(out.glob("snapshots/snapshot-*"))
    assert "ERROR" in (out / "log.txt").read_text()


def test_weight_check_covers_the_discriminator_and_bounds_growth():
    from adapt3d.training.trainer_core import TrainerCore, TrainingDiverged

    class Toy(TrainerCore):
        def __init__(self):
            super().__init__()
            self.G, self.D = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
            self.init_weight_scales()

        def trained_modules(self):
            return {"generator": self.G, "discriminator": self.D}

    toy = Toy()
    toy.check_weights()
    with torch.no_grad():
        toy.D.weight.mul_(1e30)  # finite, exploded
    with pytest.raises(TrainingDiverged, match="discriminator weight exploded"):
        toy.check_weights()
    toy.skipped, toy.total_steps = 3, 6
    with pytest.raises(TrainingDiverged, match="3 of 0 steps were skipped"):
        toy.check_skipped()
