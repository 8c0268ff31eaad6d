"""adapt3d generate: one forward pass per sample (calls counted, no autograd), outputs that reload, images equal to
the model's own forward, the prompt matters, and clear errors."""

import json

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from adapt3d.cameras import frontal_label
from adapt3d.diffusion.sds import ScoreDistillation
from adapt3d.export.images import to_uint8
from adapt3d.export.video import read_video_frame_count
from adapt3d.models.checkpoint import CheckpointError, save_checkpoint
from adapt3d.models.text_conditioned import TextConditionedGenerator, TextConditioningConfig, save_text_conditioned
from adapt3d.models.triplane import TriPlaneGenerator, build_generator
from adapt3d.pipelines.generate import GenerateConfig, run
from adapt3d.models.latents import seed_latents as latents
from adapt3d.diffusion.tiny_models import make_tiny_stable_diffusion


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sd = make_tiny_stable_diffusion(tmp_path_factory.getbasetemp() / "tiny-models" / "stable-diffusion")
    G = build_generator("tiny")
    cfg = TextConditioningConfig.for_generator(G, 32, attn_resolution=16, attn_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = TextConditionedGenerator(G, cfg)
    with torch.no_grad():  # as if trained: open gates
        model.adapters.gates.fill_(0.4)
        model.cross_attention.gate.fill_(0.4)
    folder = save_text_conditioned(tmp_path_factory.mktemp("gen") / "final", model,
                                   text_encoder={"diffusion": str(sd)})
    return folder, model.eval(), sd


def _cfg(fixture, out, **kw):
    base = dict(checkpoint=str(fixture[0]), prompt="a portrait of an elf with silver hair", out=out, seeds="0-2",
                batch_size=1, progress=False)
    base.update(kw)
    return GenerateConfig(**base)


def test_one_forward_pass_per_sample(checkpoint, tmp_path, monkeypatch):
    calls = {"planes": [], "mapping": []}
    planes, mapping = TriPlaneGenerator.planes, TriPlaneGenerator.mapping

    def count(name, fn):
        def wrapped(self, ws_or_z, *a, **kw):
            calls[name].append((ws_or_z.shape[0], torch.is_grad_enabled()))
            return fn(self, ws_or_z, *a, **kw)
        return wrapped

    monkeypatch.setattr(TriPlaneGenerator, "planes", count("planes", planes))
    monkeypatch.setattr(TriPlaneGenerator, "mapping", count("mapping", mapping))
    result = run(_cfg(checkpoint, tmp_path, video="orbit", video_frames=3, mesh="ply", mesh_resolution=16))
    # three samples: three mapping + synthesis-network passes, reused by the still, the video and the meshes
    assert calls["planes"] == [(1, False)] * 3 and calls["mapping"] == [(1, False)] * 3
    assert result.seconds_per_sample > 0
    for s in (0, 1, 2):
        assert (tmp_path / f"seed{s:04d}.png").is_file()
        assert len(trimesh.load(tmp_path / f"seed{s:04d}.ply").faces) > 0
    assert read_video_frame_count(tmp_path / "orbit.mp4") == 3
    summary = json.loads((tmp_path / "generate.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["timing"]["forward_s_per_sample"] > 0
    assert summary["diffusion"] == str(checkpoint[2])


def test_images_equal_the_models_forward_and_depend_on_the_prompt(checkpoint, tmp_path):
    _, model, sd = checkpoint
    run(_cfg(checkpoint, tmp_path / "elf", seeds="0-1", batch_size=2))
    run(_cfg(checkpoint, tmp_path / "zombie", seeds="0-1", prompt="a zombie"))
    text = ScoreDistillation.from_pretrained(str(sd), load_unet=False, load_vae=False).encode_prompt(
        ["a portrait of an elf with silver hair"])
    r = model.rendering
    c = frontal_label(r.avg_camera_radius, r.avg_camera_pivot, model.config.camera_fov_deg, batch_size=1)
    with torch.no_grad():
        ref = model(latents([1], model.z_dim), c, text, truncation_psi=0.7, noise_mode="const",
                    sampling="deterministic").image
        src = model(latents([1], model.z_dim), c, None, truncation_psi=0.7, noise_mode="const",
                    sampling="deterministic").image
    elf = np.asarray(Image.open(tmp_path / "elf" / "seed0001.png"))
    zombie = np.asarray(Image.open(tmp_path / "zombie" / "seed0001.png"))
    assert np.abs(elf.astype(int) - to_uint8(ref)[0].astype(int)).max() <= 1  # batch 2 vs 1: float rounding
    assert np.abs(elf.astype(int) - zombie.astype(int)).max() > 2
    assert np.abs(elf.astype(int) - to_uint8(src)[0].astype(int)).max() > 2


def test_side_view_camera(checkpoint, tmp_path):
    run(_cfg(checkpoint, tmp_path / "front", seeds="0"))
    run(_cfg(checkpoint, tmp_path / "side", seeds="0", yaw_deg=25.0))
    a = np.asarray(Image.open(tmp_path / "front" / "seed0000.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "side" / "seed0000.png")).astype(int)
    assert np.abs(a - b).max() > 2
    summary = json.loads((tmp_path / "side" / "generate.json").read_text())
    assert summary["config"]["yaw_deg"] == 25.0


def test_errors(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="--prompt"):
        run(_cfg(checkpoint, tmp_path, prompt="  "))
    with pytest.raises(ValueError, match="--checkpoint"):
        run(_cfg(checkpoint, tmp_path, checkpoint=str(tmp_path / "nothing")))
    with pytest.raises(ValueError, match="--seeds"):
        run(_cfg(checkpoint, tmp_path, seeds="3-1"))
    plain = save_checkpoint(tmp_path / "plain", build_generator("tiny"))
    with pytest.raises(CheckpointError, match="not a text-conditioned checkpoint"):
        run(_cfg(checkpoint, tmp_path, checkpoint=str(plain)))
