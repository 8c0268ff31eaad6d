"""adapt3d finetune on the tiny preset: run-folder contract, exact resume, NaN guard, input errors, and a short
real fine-tuning run that moves the generator toward a colour-shifted target domain."""

import json
import os

import pytest
import torch

from adapt3d.cameras import make_pose_sampler
from adapt3d.data.eg3d_dataset import DatasetError
from adapt3d.export.images import save_image, to_uint8
from adapt3d.models.checkpoint import load_checkpoint
from adapt3d.models.triplane import build_generator
from adapt3d.pipelines.finetune import FinetuneConfig, TrainingDiverged, run
from adapt3d.training.run_folder import TRAINING_STATE

RED_SHIFT = (1.0, 0.0, 0.0)  # added to the source renders (in [-1, 1]) to make the target domain


def target_views(n: int, seed: int = 0):
    """Cameras (n, 25) at DATID-3D's sinusoidal poses and latents (n, z_dim) for the tiny preset."""
    G = build_generator("tiny")
    r = G.rendering
    poses = make_pose_sampler("sinusoidal").sample(n, torch.Generator().manual_seed(seed))
    c = poses.labels(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg)
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed + 1))
    return z, c


@torch.no_grad()
def render(G, z, c):
    return G.eval()(z, c, sampling="deterministic", noise_mode="const").image.clamp(-1, 1)  # (n, 3, R, R)


def redness(images: torch.Tensor) -> float:
    m = images.clamp(-1, 1).mean((0, 2, 3))
    return float(m[0] - (m[1] + m[2]) / 2)


def make_target_dataset(root, n=16, shift=RED_SHIFT, labels=None, size=None):
    """Write an EG3D-format dataset: the tiny source generator's renders plus a colour shift."""
    z, c = target_views(n)
    images = (render(build_generator("tiny"), z, c) + torch.tensor(shift)[None, :, None, None]).clamp(-1, 1)
    if size is not None:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    u8 = to_uint8(images)
    labels = c if labels is None else labels
    entries = []
    for i in range(n):
        save_image(root / f"00000/img{i:08d}.png", u8[i])
        entries.append([f"00000/img{i:08d}.png", [float(v) for v in labels[i]]])
    (root / "dataset.json").write_text(json.dumps({"labels": entries}))
    return root


@pytest.fixture(scope="session")
def target_dataset(tmp_path_factory):
    return make_target_dataset(tmp_path_factory.mktemp("finetune") / "dataset")


def small_config(dataset, out, **kw):
    base = dict(dataset=dataset, out=out, preset="tiny", batch=4, batch_gpu=2, neural_rendering_resolution=16,
                tick_kimg=0.004, snapshot_kimg=0.008, sample_seeds="0", progress=False, d_reg_interval=2,
                density_reg_interval=2, density_reg_points=200, augment="ada", augment_p=0.1, ada_interval=1,
                ada_kimg=0.1)
    base.update(kw)
    return FinetuneConfig(**base)


def _state(folder):
    return torch.load(folder / TRAINING_STATE, weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(target_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "full"
    return out, run(small_config(target_dataset, out, kimg=0.016))


def test_run_folder_contract(uninterrupted):
    out, result = uninterrupted
    assert result.step == 4 and result.cur_nimg == 16 and result.final == out / "final"
    options = json.loads((out / "options.json").read_text())
    assert options["options"]["kimg"] == 0.016 and options["resolved"]["batch_gpu"] == 2
    assert options["identity"]["r1_gamma"] == 5.0 and "kimg" not in options["identity"]
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3, 4]
    for key in ("loss/G", "loss/D_real", "loss/D_fake", "augment_p", "sec_per_kimg", "peak_memory_mb"):
        assert all(key in s and s[key] == s[key] for s in stats), key
    assert "loss/r1_penalty" in stats[0] and "loss/density_reg" in stats[0] and "loss/r1_penalty" not in stats[1]
    assert stats[-1]["augment_p"] != 0.1  # ADA moved p
    for name in ("reals.png", "fakes-000002.png", "fakes-000004.png"):
        assert (out / "samples" / name).is_file()
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["snapshot-000002", "snapshot-000004"]
    state = _state(out / "snapshots" / "snapshot-000004")  # weights_only=True: plain tensors and containers
    assert state["step"] == 4 and state["cur_nimg"] == 16 and "G" in state and "opt_D" in state
    assert "log.txt" in os.listdir(out) and "snapshot" in (out / "log.txt").read_text()
    ck = load_checkpoint(out / "final")
    assert ck.discriminator is not None and ck.metadata["step"] == 4
    for k, v in ck.generator.state_dict().items():
        assert torch.equal(v, result.generator.state_dict()[k].cpu()), k
    z, c = target_views(2)
    assert torch.isfinite(render(ck.generator, z, c)).all()


def test_resume_continues_exactly(uninterrupted, target_dataset, tmp_path):
    full, _ = uninterrupted
    out = tmp_path / "split"
    first = run(small_config(target_dataset, out, kimg=0.008))
    assert first.step == 2 and (out / "final").is_dir()
    second = run(small_config(target_dataset, out, kimg=0.016))  # same command, longer: resumes automatically
    assert second.resumed_from == out / "snapshots" / "snapshot-000002" and second.step == 4
    a, b = _state(full / "snapshots" / "snapshot-000004"), _state(out / "snapshots" / "snapshot-000004")
    assert a["augment"] == b["augment"] and a["cur_nimg"] == b["cur_nimg"]
    for k in a["G"]:
        assert torch.equal(a["G"][k], b["G"][k]), k
    for opt in ("opt_G", "opt_D"):
        for idx, st in a[opt]["state"].items():
            for key, val in st.items():
                assert torch.equal(val, b[opt]["state"][idx][key]), (opt, idx, key)
    ema_a, ema_b = load_checkpoint(full / "final"), load_checkpoint(out / "final")
    for k, v in ema_a.generator.state_dict().items():
        assert torch.equal(v, ema_b.generator.state_dict()[k]), k
    for k, v in ema_a.discriminator.state_dict().items():
        assert torch.equal(v, ema_b.discriminator.state_dict()[k]), k
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    with pytest.raises(ValueError, match=r"--out: .* other options \(differences: g_lr\)"):
        run(small_config(target_dataset, out, kimg=0.016, g_lr=0.01))
    with pytest.raises(ValueError, match="--resume never"):
        run(small_config(target_dataset, out, kimg=0.016, resume="never"))


def test_discriminator_and_generator_come_from_the_checkpoint(uninterrupted, target_dataset, tmp_path):
    full, _ = uninterrupted
    source = load_checkpoint(full / "final")
    result = run(small_config(target_dataset, tmp_path / "cont", preset=None, generator=str(full / "final"),
                              kimg=0.004, d_lr=1e-12, g_lr=1e-12))
    assert "discriminator initialised from the checkpoint's D" in result.notes
    for k, v in source.discriminator.state_dict().items():  # a 1e-12 learning rate: D is still the checkpoint's
        torch.testing.assert_close(result.discriminator.state_dict()[k].cpu(), v, rtol=0, atol=1e-9)
    fresh = run(small_config(target_dataset, tmp_path / "fresh", preset=None, generator=str(full / "final"),
                             kimg=0.004, fresh_discriminator=True))
    assert any("at random (--fresh-discriminator)" in n for n in fresh.notes)


def test_nan_guard_stops_and_keeps_last_snapshot(target_dataset, tmp_path):
    out = tmp_path / "nan"

    def poison(trainer):
        if trainer.step == 1:
            with torch.no_grad():
                trainer.G.superresolution.block0.torgb.bias.fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"step 1 .*generator loss became NaN.*snapshot-000001"):
        run(small_config(target_dataset, out, kimg=0.012, snapshot_kimg=0.004), callbacks=[poison])
    assert [p.name for p in (out / "snapshots").iterdir()] == ["snapshot-000001"]
    assert not (out / "final").exists()
    assert "ERROR" in (out / "log.txt").read_text()
    assert torch.isfinite(load_checkpoint(out / "snapshots" / "snapshot-000001").generator.
                          superresolution.block0.torgb.bias).all()


def _no_training(monkeypatch):
    import adapt3d.pipelines.finetune as ft

    def refuse(*a, **k):
        raise AssertionError("training started although the input is invalid")
    monkeypatch.setattr(ft, "Trainer", refuse)


def test_input_errors_before_training(tmp_path, monkeypatch, target_dataset):
    _no_training(monkeypatch)
    z, c = target_views(4)
    bad = c.clone()
    bad[:, 12:16] = torch.tensor([1.0, 1.0, 1.0, 1.0])  # last cam2world row is not (0, 0, 0, 1)
    garbled = make_target_dataset(tmp_path / "garbled", n=4, labels=bad)
    with pytest.raises(DatasetError, match="not EG3D camera labels.*last row"):
        run(small_config(garbled, tmp_path / "o1"))
    far = c.clone()
    far[:, [3, 7, 11]] *= 3  # cameras three times too far
    with pytest.raises(DatasetError, match="radius 2.7"):
        run(small_config(make_target_dataset(tmp_path / "far", n=4, labels=far), tmp_path / "o2"))
    small = make_target_dataset(tmp_path / "small", n=4, size=32)
    with pytest.raises(DatasetError, match=r"images are 32x32 but the generator makes 64x64; pass --resize"):
        run(small_config(small, tmp_path / "o3"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset.json").write_text('{"labels": []}')
    with pytest.raises(DatasetError, match="is empty"):
        run(small_config(empty, tmp_path / "o4"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--out: .* exists and is not a folder"):
        run(small_config(target_dataset, tmp_path / "file"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        with pytest.raises(ValueError, match="--out: cannot write"):
            run(small_config(target_dataset, locked / "run"))
    with pytest.raises(ValueError, match="--batch-gpu"):
        run(small_config(target_dataset, tmp_path / "o5", batch=6, batch_gpu=6))
    assert not any((tmp_path / f"o{i}" / "options.json").exists() for i in range(1, 6))


def test_resize_option_accepts_other_resolutions(tmp_path):
    from adapt3d.pipelines.finetune import prepare_dataset
    small = make_target_dataset(tmp_path / "small", n=2, size=32)
    ds, notes = prepare_dataset(small_config(small, tmp_path / "o", resize=True), build_generator("tiny"))
    assert ds[0][0].shape == (3, 64, 64) and any("resized from 32 to 64" in n for n in notes)


def test_finetuning_moves_generator_toward_target_colour(target_dataset, tmp_path):
    z, c = target_views(16, seed=7)  # held-out latents and cameras
    G_src = build_generator("tiny")
    source = redness(render(G_src, z, c))
    target = redness(render(G_src, *target_views(16)) + torch.tensor(RED_SHIFT)[None, :, None, None])
    result = run(small_config(target_dataset, tmp_path / "colour", kimg=0.04, snapshot_kimg=1, tick_kimg=0.02,
                              ema_kimg=0.01, augment="none", g_lr=0.005, d_lr=0.005))
    ck = load_checkpoint(result.final)
    adapted = redness(render(ck.generator, z, c))
    # the target is much redder than the source; ten steps close a good part of the gap
    assert target - source > 0.8
    assert adapted - source > 0.25 * (target - source), (source, adapted, target)


def test_bench_finetune_tiny_prints_one_json_line(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "bench" / "finetune.py"
    spec = importlib.util.spec_from_file_location("bench_finetune", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--preset", "tiny", "--batch", "2", "--steps", "1", "--warmup", "1", "--neural-res", "16"])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1 and json.loads(lines[0]) == json.loads(json.dumps(result))
    assert result["kimg_per_hour"] > 0 and result["peak_rss_gb"] > 0 and result["neural_rendering_resolution"] == 16
    p = result["phase_seconds"]
    expected = p["G"] + p["D"] + p["other"] + p["G_density_reg"] / 4 + p["D_r1"] / 16
    assert result["sec_per_step"] == pytest.approx(expected)
    assert result["sec_per_kimg"] == pytest.approx(expected / 2 * 1000)
