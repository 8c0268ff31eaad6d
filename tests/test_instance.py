"""Instance-selected (one-shot) adaptation on the tiny preset: an inverted latent is rendered at several cameras,
each view translated twice by the tiny img2img model, scored and filtered, fine-tuned on, and rendered; a rerun
skips every stage; options and latent/generator mismatches are refused before any model loads."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.inversion.latent_file import (LatentCode, LatentMismatchError, architecture_of, load_latent,
                                           save_latent)
from adapt3d.models.triplane import build_generator, preset_config
from adapt3d.pipelines.instance import InstanceConfig, config_from, run
from adapt3d.testing.fixtures import tiny_models  # noqa: F401  (session fixture)


def _latent(folder, G=None, seed=5):
    """A latent file as adapt3d invert writes it (a mapped seed at a non-frontal camera, with an input image)."""
    from adapt3d.export.images import save_image, to_uint8
    from adapt3d.pipelines.render import default_cameras, map_seeds
    G = G or build_generator("tiny").eval()
    ws = map_seeds(G, [seed], 0.7, None, torch.device("cpu"))
    yaw, pitch = torch.tensor([1.8]), torch.tensor([1.5])
    c = default_cameras(G, yaw, pitch)
    with torch.no_grad():
        img = G.synthesis(ws, c, noise_mode="const", sampling="deterministic").image
    save_image(folder / "input.png", to_uint8(img)[0])
    code = LatentCode(ws=ws, camera=c, space="w+", architecture=architecture_of(G), source={"preset": "tiny"},
                      yaw=1.8, pitch=1.5, input_image="input.png", reconstruction="input.png")
    return save_latent(folder, code)


def _config(out, models, **kw):
    base = dict(preset="tiny", prompt=("a zombie",), out=out, num_images=4, samples_per_view=2,
                num_inference_steps=2, diffusion=str(models["stable-diffusion"]), clip_model=str(models["clip"]),
                kimg=0.008, batch=4, snapshot_kimg=0.008, seeds="0", video_frames=2, mesh="none", progress=False)
    base.update(kw)
    return InstanceConfig(**base)


def test_instance_adaptation_end_to_end_then_resume(tmp_path, tiny_models):  # noqa: F811
    from adapt3d.models.checkpoint import load_checkpoint
    latent = _latent(tmp_path / "me")
    out = tmp_path / "one-shot"
    res = run(_config(out, tiny_models, instance_latent=latent))
    assert res.stages["dataset"]["num_images"] == 4 and res.stages["dataset"]["num_views"] == 2
    assert res.stages["finetune"]["steps"] == 2
    records = [json.loads(line) for line in (out / "target" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["index"] for r in records) == [0, 1, 2, 3]
    assert {r["source"] for r in records} == {0, 1} and all("clip" in r["scores"] and "pose_ncc" in r["scores"]
                                                            for r in records)
    view0 = [r for r in records if r["source"] == 0][0]
    assert view0["yaw"] == pytest.approx(1.8) and view0["pitch"] == pytest.approx(1.5)  # the photo's camera
    # every source image is the SAME instance rendered at its label camera
    G = build_generator("tiny").eval()
    code = load_latent(latent)
    for r in records[:2]:
        with torch.no_grad():
            img = G.synthesis(code.ws, torch.tensor([r["label"]]), noise_mode="const", sampling="deterministic").image
        src = np.asarray(Image.open(out / "target" / r["source_image"])).astype(float)
        assert np.abs(src - ((img[0].clamp(-1, 1).permute(1, 2, 0).numpy() + 1) * 127.5)).max() <= 1.0
    labels = json.loads((out / "target" / "dataset" / "dataset.json").read_text())["labels"]
    assert len(labels) == res.stages["dataset"]["num_kept"] > 0
    ck = load_checkpoint(out / "train" / "final")
    assert ck.metadata["step"] == 2
    inst = load_latent(out / "instance" / "latent.pt")  # the instance, renderable with render --latent
    assert torch.equal(inst.ws, code.ws) and (out / "instance" / "input.png").is_file()
    assert (out / "render" / "grid.png").is_file() and (out / "render" / "instance" / "instance.png").is_file()
    assert (out / "render" / "instance" / "comparison.png").is_file()
    sheet = np.asarray(Image.open(out / "compare.png"))
    assert sheet.shape[0] > 2 * 64 and sheet.shape[1] > 2 * 3 * 64  # instance + 1 seed, source | adapted x 3 views
    summary = json.loads((out / "adapt.json").read_text())
    assert set(summary["stages"]) == {"instance", "dataset", "finetune", "render"}

    again = run(_config(out, tiny_models, instance_latent=latent))
    assert all(again.stages[s].get("skipped") == "up to date" for s in ("dataset", "finetune", "render"))
    with pytest.raises(ValueError, match="holds another job .*num_images"):
        run(_config(out, tiny_models, instance_latent=latent, num_images=6))


def test_instance_errors_before_loading_models(tmp_path, tiny_models):  # noqa: F811
    with pytest.raises(ValueError, match="exactly one of --instance-seed"):
        run(_config(tmp_path / "a", tiny_models))
    with pytest.raises(ValueError, match="exactly one of --instance-seed"):
        run(_config(tmp_path / "a", tiny_models, instance_seed=1, instance_latent=tmp_path / "x.pt"))
    with pytest.raises(ValueError, match="--prompt"):
        run(_config(tmp_path / "a", tiny_models, instance_seed=1, prompt=()))
    with pytest.raises(ValueError, match="--instance-latent: .* does not exist"):
        run(_config(tmp_path / "a", tiny_models, instance_latent=tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="--batch"):
        run(_config(tmp_path / "a", tiny_models, instance_seed=1, batch=0))
    assert not (tmp_path / "a" / "target").exists()
    cfg = preset_config("tiny")
    cfg.w_dim = 32
    other = _latent(tmp_path / "other", build_generator(cfg).eval())
    with pytest.raises(LatentMismatchError, match="--instance-latent .*w_dim"):
        run(_config(tmp_path / "b", tiny_models, instance_latent=other))
    assert not (tmp_path / "b" / "target").exists()


def test_adapt_options_map_onto_an_instance_run():
    from adapt3d.pipelines.adapt import AdaptConfig
    a = AdaptConfig(preset="tiny", prompt=("a zombie",), out="runs/x", kimg=0.5, seeds="0-1", num_images=24)
    cfg = config_from(a, instance_seed=42)
    assert cfg.instance_seed == 42 and cfg.kimg == 0.5 and cfg.num_images == 24 and cfg.prompt == ("a zombie",)
    assert str(cfg.out) == "runs/x" and cfg.seeds == "0-1" and cfg.preset == "tiny"
    if hasattr(a, "method"):
        a.method = "nada"
        with pytest.raises(ValueError, match="--method datid3d"):
            config_from(a, instance_seed=42)
