"""End-to-end tests of the ``adapt3d`` command on the tiny preset and the official-format fixtures."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from adapt3d.cli.main import main
from adapt3d.export.video import read_video_frame_count
from conftest import fixture_path


def run(*argv):
    return main([str(a) for a in argv])


def test_render_tiny_end_to_end(tmp_path):
    out = tmp_path / "demo"
    rc = run("render", "--preset", "tiny", "--seeds", "0-3", "--out", out, "--video", "orbit", "--video-frames", 5,
             "--mesh", "ply", "--mesh-resolution", 32, "--no-progress")
    assert rc == 0
    summary = json.loads((out / "render.json").read_text())
    assert summary["seeds"] == [0, 1, 2, 3]
    assert summary["conv3x3_algorithm"] in ("auto", "direct", "winograd")
    assert summary["cpu_kernels"].startswith(("compiled", "not built yet", "pytorch ("))
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (128, 128, 3)  # 2 x 2 tiles of 64 px
    for s in range(4):
        img = np.asarray(Image.open(out / f"seed{s:04d}.png"))
        assert img.shape == (64, 64, 3)
        assert np.array_equal(grid[(s // 2) * 64:(s // 2 + 1) * 64, (s % 2) * 64:(s % 2 + 1) * 64], img)
        assert np.asarray(Image.open(out / f"seed{s:04d}_depth.png")).shape == (32, 32, 3)
        mesh = trimesh.load(out / f"seed{s:04d}.ply", force="mesh")
        assert len(mesh.vertices) > 0 and len(mesh.faces) > 0
        assert np.all(np.abs(mesh.vertices) <= 0.5 + 1e-5)  # inside the tri-plane box (box_warp 1)
    depth = np.load(out / "depth.npy")
    assert depth.shape == (4, 1, 32, 32) and np.all((depth >= 2.25) & (depth <= 3.3))
    assert read_video_frame_count(out / "orbit.mp4") == 5
    assert sorted(summary["files"]) == ["depth", "depth_raw", "grid", "images", "mesh", "video"]


def test_render_is_deterministic(tmp_path):
    for name in ("a", "b"):
        assert run("render", "--preset", "tiny", "--seeds", "5,7", "--out", tmp_path / name, "--no-progress") == 0
    for f in ("seed0005.png", "seed0007.png", "depth.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_trunc_and_camera_change_the_image(tmp_path):
    run("render", "--preset", "tiny", "--seeds", "1", "--out", tmp_path / "a", "--no-progress")
    run("render", "--preset", "tiny", "--seeds", "1", "--out", tmp_path / "b", "--yaw-deg", "25", "--no-progress")
    run("render", "--preset", "tiny", "--seeds", "1", "--out", tmp_path / "c", "--trunc", "0", "--no-progress")
    a, b, c = (np.asarray(Image.open(tmp_path / d / "seed0001.png")) for d in "abc")
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("argv, needle", [
    (["--preset", "nope"], "--preset: unknown preset 'nope'"),
    (["--preset", "tiny", "--seeds", "3-1"], "--seeds: range '3-1'"),
    (["--preset", "tiny", "--seeds", "a"], "--seeds: cannot parse 'a'"),
    (["--checkpoint", "missing.pkl"], "--checkpoint: 'missing.pkl' is neither"),
    ([], "give exactly one of --preset"),
    (["--preset", "tiny", "--checkpoint", "ffhq"], "give exactly one of --preset"),
    (["--preset", "tiny", "--trunc", "5"], "--trunc: 5.0 is outside"),
    (["--preset", "tiny", "--video-frames", "0"], "--video-frames: must be >= 1"),
])
def test_bad_arguments_fail_before_any_model_is_built(tmp_path, monkeypatch, capsys, argv, needle):
    import adapt3d.models.loading as loading

    def no_model(*a, **k):
        raise AssertionError("a model was built before the arguments were validated")
    monkeypatch.setattr(loading, "build_generator", no_model)
    monkeypatch.setattr(loading, "load_checkpoint", no_model)
    assert run("render", "--out", tmp_path / "x", *argv) == 2
    assert needle in capsys.readouterr().err


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert run("render", "--preset", "tiny", "--out", blocker / "sub") == 2
    assert "--out" in capsys.readouterr().err


def test_known_name_offline_without_cache_says_where_to_put_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path / "cache"))
    assert run("render", "--checkpoint", "ffhq", "--out", tmp_path / "x") == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "cache") in err and "ffhqrebalanced512-128.pkl" in err


def test_corrupt_pickle_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(fixture_path("shapenet128_tiny.pkl").read_bytes()[:5000])
    assert run("render", "--checkpoint", bad, "--out", tmp_path / "x") == 2
    assert "bad.pkl" in capsys.readouterr().err


def test_convert_then_render_matches_rendering_the_pickle(tmp_path):
    pkl = fixture_path("shapenet128_tiny.pkl")
    assert run("convert", pkl, tmp_path / "ck") == 0
    doc = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    assert doc["format"] == "adapt3d-checkpoint" and "discriminator" in doc
    assert (tmp_path / "ck" / "generator.safetensors").is_file()
    assert run("render", "--checkpoint", tmp_path / "ck", "--seeds", "0-1", "--out", tmp_path / "a",
               "--no-progress") == 0
    assert run("render", "--checkpoint", pkl, "--seeds", "0-1", "--out", tmp_path / "b", "--no-progress") == 0
    for f in ("seed0000.png", "seed0001.png", "depth.npy"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    from adapt3d.models.checkpoint import load_checkpoint
    from adapt3d.models.eg3d_convert import load_official_pickle
    G0, D0, _ = load_official_pickle(pkl)
    ck = load_checkpoint(tmp_path / "ck")
    for k, v in G0.state_dict().items():
        assert torch.equal(v, ck.generator.state_dict()[k]), k
    for k, v in D0.state_dict().items():
        assert torch.equal(v, ck.discriminator.state_dict()[k]), k


def test_console_script_and_module_entry_points():
    out = subprocess.run([sys.executable, "-m", "adapt3d", "render", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--checkpoint" in out.stdout and "--mesh" in out.stdout


def test_invert_then_render_latent_through_the_cli(tmp_path):
    """adapt3d invert -> latent.pt -> adapt3d render --latent (the manipulated-reconstruction workflow)."""
    photo = tmp_path / "photo.png"
    assert run("render", "--preset", "tiny", "--seeds", "3", "--out", tmp_path / "src", "--no-progress") == 0
    photo.write_bytes((tmp_path / "src" / "seed0003.png").read_bytes())
    assert run("invert", photo, "--preset", "tiny", "--out", tmp_path / "me", "--num-steps", 4,
               "--search-yaw-steps", 1, "--search-pitch-steps", 1, "--search-keep", 1, "--search-steps", 1,
               "--w-avg-samples", 64, "--video", "none", "--clip-model", "none", "--loss", "mse", "--no-align") == 0
    latent = torch.load(tmp_path / "me" / "latent.pt", weights_only=True)
    assert latent["ws"].ndim == 3 and latent["camera"].shape == (1, 25)
    assert run("render", "--preset", "tiny", "--latent", tmp_path / "me" / "latent.pt", "--out", tmp_path / "r",
               "--no-progress") == 0
    assert (tmp_path / "r" / "comparison.png").is_file() and (tmp_path / "r" / "latent.png").is_file()
