"""make-dataset end to end on the tiny models: dataset contents, reader round trip, resume after SIGKILL, shards,
job fingerprint, errors raised before any model loads."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.cameras import camera_label
from adapt3d.data.target_dataset import TargetPlan, read_records
from adapt3d.diffusion import PretrainedNotFoundError
from adapt3d.pipelines import make_dataset as md
from adapt3d.pipelines.make_dataset import MakeDatasetConfig, run
from adapt3d.testing.fixtures import tiny_models  # noqa: F401

FAST = dict(preset="tiny", prompt=("a zombie", "an elf"), num_images=7, samples_per_source=2, batch_size=2,
            num_inference_steps=4, strength=0.5, pose_rings=1, clip_top_fraction=0.8, zip=True, progress=False,
            device="cpu")


@pytest.fixture(scope="module")
def cache(tiny_models, tmp_path_factory):  # noqa: F811
    """ADAPT3D_CACHE such that the built-in 'tiny' names resolve to the session's tiny models."""
    root = tmp_path_factory.getbasetemp()
    assert tiny_models["stable-diffusion"] == root / "tiny-models" / "stable-diffusion"
    return root


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("ADAPT3D_CACHE", str(cache))


@pytest.fixture(scope="module")
def reference(cache, tmp_path_factory):
    os.environ["ADAPT3D_CACHE"] = str(cache)
    out = tmp_path_factory.mktemp("reference")
    result = run(MakeDatasetConfig(out=out, **FAST))
    return out, result


def _flags(options: dict) -> list[str]:
    args = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args += [flag] if v else [f"--no-{k.replace('_', '-')}"]
        elif isinstance(v, tuple):
            args += [flag, *v]
        else:
            args += [flag, str(v)]
    return args


def snapshot(folder: Path) -> dict[str, bytes]:
    """The files that define a finished dataset (not make_dataset.json, which has timings and paths)."""
    names = ["manifest.jsonl", "job.json", "dataset.zip", "contact_sheet.png"]
    files = {n: (folder / n).read_bytes() for n in names}
    for sub in ("images", "sources", "dataset"):
        for p in sorted((folder / sub).rglob("*")):
            if p.is_file():
                files[p.relative_to(folder).as_posix()] = p.read_bytes()
    return files


def test_reference_dataset_contents(reference):
    from adapt3d.data.eg3d_dataset import EG3DDataset
    out, result = reference
    assert result.num_images == 7 and result.generated_now == 7
    records = read_records(out)
    assert sorted(records) == list(range(7))
    plan = TargetPlan(7, 2, ["a zombie", "an elf"], 0, 2)
    kept = [r for r in records.values() if r.kept]
    assert result.num_kept == len(kept) == math.ceil(0.8 * 7)  # top fraction; pose margin rarely fires here
    for i, r in records.items():
        item = plan.item(i)
        assert (r.source, r.sample, r.prompt, r.diffusion_seed, r.latent_seed) == (
            item.source, item.sample, item.prompt, item.diffusion_seed, i // 2)
        assert set(r.scores) >= {"clip", "pose_ncc", "pose_margin", "pose_best", "nn_distance"}
        assert r.kept == (not r.reasons)
        # The label is exactly the render camera of its angles (tiny preset: FFHQ radius/pivot/fov).
        expect = camera_label(torch.tensor([r.yaw]), torch.tensor([r.pitch]), radius=2.7, pivot=[0, 0, 0.2],
                              fov_deg=18.837)[0]
        torch.testing.assert_close(torch.tensor(r.label), expect, atol=1e-6, rtol=0)
        assert np.asarray(Image.open(out / r.image)).shape == (64, 64, 3)
    # Two samples of one source share its camera and source image, and differ.
    assert records[0].label == records[1].label and records[0].source_image == records[1].source_image
    assert (out / records[0].image).read_bytes() != (out / records[1].image).read_bytes()
    rejected = [r for r in records.values() if not r.kept]
    assert rejected and all("clip_top_fraction" in r.reasons or "pose" in r.reasons for r in rejected)
    # The EG3D reader loads folder and zip with the right labels; only kept images are in the dataset.
    for path in (out / "dataset", out / "dataset.zip"):
        ds = EG3DDataset(path)
        assert len(ds) == len(kept)
        by_name = {r.image: r for r in kept}
        for k in range(len(ds)):
            image, label = ds[k]
            rec = by_name[ds.files[k]]
            assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
            torch.testing.assert_close(label, torch.tensor(rec.label, dtype=torch.float32))
            np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(out / rec.image)))
    on_disk = sorted(p.relative_to(out / "dataset").as_posix() for p in (out / "dataset").rglob("*.png"))
    assert on_disk == sorted(r.image for r in kept)
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.ndim == 3 and sheet.shape[1] > 8 * 96  # 4 pairs per row


def test_resume_after_sigkill_gives_identical_dataset(reference, tmp_path, cache):
    """SIGKILL the job from outside as soon as its first target PNG exists, leave the debris a kill at any instant
    can leave (a PNG whose manifest line never came, a temporary file of a write in flight), resume: the dataset
    is byte for byte the uninterrupted one, and only the missing targets were generated."""
    ref_out, _ = reference
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "adapt3d.pipelines.make_dataset", "--out", str(out)] + _flags(FAST)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ADAPT3D_CACHE=str(cache))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and not list((out / "images").glob("img*.png")) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)  # the batches after the first still have diffusion and scoring ahead
    finally:
        stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == -signal.SIGKILL, stderr[-2000:]
    recorded = sorted(read_records(out))
    assert len(recorded) < 7 and not (out / "dataset").exists() and not (out / "dataset.json").exists()
    # A kill between a PNG and its manifest line leaves a PNG nobody recorded (here: a wrong one), a kill inside a
    # write leaves an atomic write's temporary file. Neither may end up in the dataset.
    orphan = next(i for i in range(7) if i not in recorded)
    wrong = ref_out / "images" / f"img{(orphan + 1) % 7:08d}.png"
    (out / "images" / f"img{orphan:08d}.png").write_bytes(wrong.read_bytes())
    (out / "images" / ".img00000006.x1y2.png").write_bytes(b"half a png")
    result = run(MakeDatasetConfig(out=out, **FAST))
    assert result.generated_now == 7 - len(recorded)
    assert snapshot(out) == snapshot(ref_out)
    assert not list((out / "images").glob(".*"))


def test_two_shards_merge_to_the_single_process_dataset(reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "sharded"
    r0 = run(MakeDatasetConfig(out=out, shard_index=0, num_shards=2, **FAST))
    assert r0.num_images == 4 and not (out / "manifest.jsonl").exists()  # batches 0 and 2: targets 0-3
    with pytest.raises(ValueError, match=r"shard\(s\) \[1\] of 2 are missing"):
        run(MakeDatasetConfig(out=out, merge=True, **FAST))
    run(MakeDatasetConfig(out=out, shard_index=1, num_shards=2, **FAST))
    merged = run(MakeDatasetConfig(out=out, merge=True, **FAST))
    assert merged.num_images == 7
    assert snapshot(out) == snapshot(ref_out)


def test_rerun_resumes_or_refilters_without_regenerating(reference, tmp_path, monkeypatch):
    ref_out, _ = reference
    out = tmp_path / "copy"
    import shutil
    shutil.copytree(ref_out, out)
    calls = []
    monkeypatch.setattr(md, "generate", lambda *a, **k: calls.append(1))
    again = run(MakeDatasetConfig(out=out, **FAST))
    assert calls == [] and again.generated_now == 0 and snapshot(out) == snapshot(ref_out)
    # New filter settings are not a new job: only the decisions change.
    loose = run(MakeDatasetConfig(out=out, **{**FAST, "clip_top_fraction": None, "pose_margin": 10.0}))
    assert calls == [] and loose.num_kept == 7
    assert (out / "images/img00000000.png").read_bytes() == (ref_out / "images/img00000000.png").read_bytes()
    assert len(json.loads((out / "dataset/dataset.json").read_text())["labels"]) == 7


@pytest.fixture
def no_model_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the error")
    monkeypatch.setattr(md, "load_models", boom)
    import adapt3d.models.loading as loading
    monkeypatch.setattr(loading, "load_generator", boom)


@pytest.mark.parametrize("change, match", [
    (dict(prompt=("",)), "prompt"), (dict(prompt=()), "--prompt"), (dict(strength=0.0), "--strength"),
    (dict(strength=1.2), "--strength"), (dict(num_images=0), "--num-images"),
    (dict(templates=("no slot",)), "--templates"), (dict(clip_top_fraction=1.5), "--clip-top-fraction"),
    (dict(clip_model="none", clip_threshold=0.2), "--clip-model"),
    (dict(shard_index=2, num_shards=2), "--shard-index"), (dict(pose_step=0.0), "pose"),
])
def test_errors_before_any_model_loads(tmp_path, no_model_loading, change, match):
    with pytest.raises(ValueError, match=match):
        run(MakeDatasetConfig(out=tmp_path / "o", **{**FAST, **change}))


def test_missing_weights_offline_errors(tmp_path, no_model_loading, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFoundError, match="--diffusion.*someorg/missing-sd.*huggingface-cli download"):
        run(MakeDatasetConfig(out=tmp_path / "a", **{**FAST, "diffusion": "someorg/missing-sd"}))
    with pytest.raises(PretrainedNotFoundError, match="--clip-model.*someorg/missing-clip.*--clip-model none"):
        run(MakeDatasetConfig(out=tmp_path / "b", **{**FAST, "clip_model": "someorg/missing-clip"}))


def test_output_folder_of_another_job_or_dataset(reference, tmp_path, no_model_loading):
    ref_out, _ = reference
    with pytest.raises(ValueError, match="different make-dataset job.*prompts"):
        run(MakeDatasetConfig(out=ref_out, **{**FAST, "prompt": ("a statue",)}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "dataset.json").write_text('{"labels": []}')
    with pytest.raises(ValueError, match="did not start"):
        run(MakeDatasetConfig(out=foreign, **FAST))


def test_prompt_file_and_templates(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# comment\na zombie\n\nan elf\n")
    cfg = MakeDatasetConfig(prompt=("a statue",), prompt_file=f, templates=("a photo of {}", "{}, 3D render"))
    assert md.resolve_prompts(cfg) == ["a photo of a statue", "a statue, 3D render", "a photo of a zombie",
                                       "a zombie, 3D render", "a photo of an elf", "an elf, 3D render"]
    with pytest.raises(FileNotFoundError, match="--prompt-file"):
        md.resolve_prompts(dataclasses.replace(cfg, prompt_file=tmp_path / "nope.txt"))


def test_torchrun_two_processes_merge_to_the_single_process_dataset(reference, tmp_path, cache):
    """torchrun --standalone --nproc_per_node 2: each rank writes its shard, rank 0 merges (about 20 s)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    ref_out, _ = reference
    out = tmp_path / "torchrun"
    args = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "adapt3d.pipelines.make_dataset",
            "--out", str(out)] + _flags(FAST)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ADAPT3D_CACHE=str(cache))
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "shard-00of02").is_dir() and (out / "shard-01of02").is_dir()
    got, want = snapshot(out), snapshot(ref_out)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []


def test_bench_prints_one_json_line(cache, capsys):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import make_dataset as bench
    finally:
        sys.path.pop(0)
    bench.main(["--num-images", "2", "--batch-size", "2", "--steps", "2", "--strength", "0.5"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(lines) == 1
    res = json.loads(lines[0])
    assert res["num_images"] == 2 and res["batched_images_per_s"] > 0 and res["loop_images_per_s"] > 0
    assert 0 <= res["max_abs_diff"] <= 2 / 255  # same seeds: equal up to float rounding of batched kernels


def test_second_concurrent_writer_is_refused(tmp_path, no_model_loading):
    import fcntl
    out = tmp_path / "locked"
    out.mkdir()
    with open(out / ".make_dataset.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="another make-dataset process"):
            run(MakeDatasetConfig(out=out, **FAST))
