"""ITportrait on the tiny preset: latent mixing, the threshold's branch and its effect on the update, stage
isolation, end to end (inversion of a reference image -> training -> render, compare, eval)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.models.triplane import build_generator
from adapt3d.training.itp_config import ITportraitConfig, validate_itportrait
from adapt3d.training.itportrait import ITportraitTrainer, Reference, choose_branch

FAST = dict(preset="tiny", prompt="zombie", source_text="photo", progress=False, neural_rendering_resolution=16,
            seeds="0", num_views=2, batch=1, apt_batch=1)


@pytest.fixture(autouse=True)
def _threads_and_cache(tmp_path_factory, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path_factory.getbasetemp() / "adapt3d-cache"))


@pytest.fixture(scope="module")
def clip_loss(tmp_path_factory):
    from adapt3d.clip import CLIPScorer
    from adapt3d.clip.directional import CLIPDirectionalLoss
    from adapt3d.diffusion.tiny_models import make_tiny_clip
    scorer = CLIPScorer.from_pretrained(str(make_tiny_clip(tmp_path_factory.getbasetemp() / "tiny-models" / "clip")))
    return CLIPDirectionalLoss([scorer], [1.0], "photo", "zombie")


@pytest.fixture(scope="module")
def reference():
    G = build_generator("tiny")
    g = torch.Generator().manual_seed(7)
    from adapt3d.pipelines.render import default_cameras
    cam = default_cameras(G, torch.tensor([1.7]), torch.tensor([1.5]))
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=g), cam)
    return Reference(ws=ws, camera=cam, image=torch.rand(1, 3, 64, 64, generator=g) * 2 - 1)


def _mse(x, y):
    return (x - y).pow(2).flatten(1).mean(1)


def _trainer(clip_loss, reference, **kw):
    cfg = ITportraitConfig(style_image=None, **{**FAST, **kw})
    return ITportraitTrainer(cfg, build_generator("tiny"), clip_loss, reference, _mse)


def test_choose_branch():
    assert choose_branch(0.1, 0.9, threshold=0.65, text_probability=0.35) == "text"  # image model close to frozen
    assert choose_branch(0.9, 0.9, threshold=0.65, text_probability=0.35) == "image"
    assert choose_branch(0.9, 0.2, threshold=0.65, text_probability=0.35) == "text"  # the random text step


def test_latent_mixing(clip_loss, reference):
    tr = _trainer(clip_loss, reference, ite_mix=0.8)
    g = torch.Generator().manual_seed(0)
    apt = tr.apt_latents(g, 3)
    assert tr.apt_from == 5 and torch.equal(apt[:, :5], reference.ws[:, :5].expand(3, -1, -1))
    assert not torch.equal(apt[:, 5:], reference.ws[:, 5:].expand(3, -1, -1))
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ite = tr.ite_latents(g1, 2)
    rand = tr._random_ws(g2, 2)
    assert torch.equal(ite[:, 0], reference.ws[:, 0].expand(2, -1))
    torch.testing.assert_close(ite[:, 1:], 0.2 * reference.ws[:, 1:] + 0.8 * rand[:, 1:])


def _after_one_apt_then_one_ite(clip_loss, reference, **kw):
    tr = _trainer(clip_loss, reference, **kw)
    before_G = {k: v.clone() for k, v in tr.G.state_dict().items()}
    tr.apt_step()  # step 0: stage 1 moves only the image model
    assert all(torch.equal(v, before_G[k]) for k, v in tr.G.state_dict().items())
    before_img = {k: v.clone() for k, v in tr.G_img.state_dict().items()}
    tr.step = 1
    rec = tr.ite_step()  # step 1: stage 2 moves only the text/mix model
    assert all(torch.equal(v, before_img[k]) for k, v in tr.G_img.state_dict().items())
    return tr, rec


def test_threshold_switch_changes_the_direction_and_the_update(clip_loss, reference):
    text_tr, text = _after_one_apt_then_one_ite(clip_loss, reference, direction_threshold=10.0, text_probability=0.0)
    img_tr, img = _after_one_apt_then_one_ite(clip_loss, reference, direction_threshold=0.0, text_probability=0.0)
    assert text["branch"] == "text" and img["branch"] == "image"
    assert text["branch/image_direction_norm"] == pytest.approx(img["branch/image_direction_norm"])
    assert text["branch/image_direction_norm"] > 0
    dT = clip_loss.text_directions[0]
    torch.testing.assert_close(text_tr.last_directions[0], dT.expand_as(text_tr.last_directions[0]))
    d_img = img_tr.last_directions[0]
    torch.testing.assert_close(d_img.norm(dim=-1), torch.ones(len(d_img)))
    assert float((d_img @ dT).abs().max()) < 0.99  # not the text direction
    diff = [float((a - b).detach().abs().max()) for a, b in zip(text_tr.G.parameters(), img_tr.G.parameters())]
    assert max(diff) > 0  # the branch changed the update
    # ITportrait's released weights (0.5 / 0.5 in both branches): the threshold changes nothing
    same = dict(text_branch_weights=(0.5, 0.5), image_branch_weights=(0.5, 0.5), text_probability=0.0)
    a, ra = _after_one_apt_then_one_ite(clip_loss, reference, direction_threshold=10.0, **same)
    b, rb = _after_one_apt_then_one_ite(clip_loss, reference, direction_threshold=0.0, **same)
    assert ra["branch"] != rb["branch"]
    assert all(torch.equal(p, q) for p, q in zip(a.G.parameters(), b.G.parameters()))


def test_schedules(clip_loss, reference):
    image_only = _trainer(clip_loss, reference, schedule="image", steps=2)
    image_only.run_training()
    assert [set(s) & {"loss/apt", "loss/direction"} for s in image_only.stats] == [{"loss/apt"}] * 2
    assert image_only.output_generator() is image_only.G_img
    text_only = _trainer(clip_loss, reference, schedule="text", steps=1, direction_threshold=0.0)
    text_only.run_training()
    assert text_only.stats[0]["branch/text"] == 1.0 and text_only.output_generator() is text_only.G


def test_options_are_checked_first(tmp_path):
    with pytest.raises(ValueError, match="--style-image"):
        validate_itportrait(ITportraitConfig(preset="tiny", prompt="x"))
    with pytest.raises(ValueError, match="--style-image"):
        validate_itportrait(ITportraitConfig(preset="tiny", prompt="x", style_image=tmp_path / "missing.png"))
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    with pytest.raises(ValueError, match="--text-branch-weights"):
        validate_itportrait(ITportraitConfig(preset="tiny", prompt="x", style_image=img, text_branch_weights=(0, 0)))
    with pytest.raises(ValueError, match="--text-probability"):
        validate_itportrait(ITportraitConfig(preset="tiny", prompt="x", style_image=img, text_probability=1.5))


def test_itportrait_end_to_end_on_tiny(tmp_path):
    from adapt3d.export.video import read_video_frame_count
    from adapt3d.models.checkpoint import load_checkpoint
    from adapt3d.pipelines.itportrait import run
    img = tmp_path / "ref.png"
    Image.fromarray((np.random.RandomState(0).rand(80, 96, 3) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "itp"
    cfg = ITportraitConfig(preset="tiny", style_image=img, prompt="a zombie", out=out, steps=2, invert_steps=3,
                           neural_rendering_resolution=16, seeds="0-1", video_frames=3, mesh_resolution=16,
                           eval_samples=3, progress=False)
    result = run(cfg)
    latent = torch.load(out / "reference" / "latent.pt", weights_only=True)
    assert latent["ws"].shape == (1, 10, 64) and latent["camera"].shape == (1, 25)
    ck = load_checkpoint(out / "train" / "final")
    assert ck.metadata["step"] == 2 and ck.metadata["schedule"] == "fusion"
    stats = [json.loads(line) for line in (out / "train" / "stats.jsonl").read_text().splitlines()]
    assert "loss/apt" in stats[0] and "branch/text" in stats[1]
    state = torch.load(out / "train" / "snapshots" / "snapshot-000002" / "training_state.pt", weights_only=True)
    assert {"G", "G_img", "opt", "opt_img"} <= set(state)
    assert (out / "render" / "grid.png").is_file() and read_video_frame_count(out / "render" / "orbit.mp4") == 3
    assert (out / "render" / "seed0001.ply").is_file() and (out / "compare.png").is_file()
    assert (out / "render" / "reference" / "comparison.png").is_file()
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"clip_score", "diversity", "view_consistency"} <= set(metrics["metrics"])
    summary = json.loads((out / "itportrait.json").read_text())
    assert summary["method"] == "itportrait" and result.final == out / "train" / "final"
