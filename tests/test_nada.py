"""3D StyleGAN-NADA on the tiny preset: layer map, adaptive selection, loss decrease, freezing, resume, end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from adapt3d.models.triplane import build_generator
from adapt3d.training.layer_selection import (candidate_rows, layers_for_rows, select_w_layers, set_trainable,
                                               w_layer_map)
from adapt3d.training.nada import NadaTrainer
from adapt3d.training.nada_config import NadaConfig, validate_common
from adapt3d.training.run_folder import RunFolder

FAST = dict(preset="tiny", prompt="zombie", source_text="photo", progress=False, neural_rendering_resolution=16,
            seeds="0")


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


def test_w_layer_map_matches_what_each_layer_reads():
    G = build_generator("tiny").eval()
    table = w_layer_map(G)
    assert len(table) == G.num_ws == 10
    assert table[0] == ["backbone.synthesis.b4.conv1."]
    assert table[1] == ["backbone.synthesis.b4.torgb.", "backbone.synthesis.b8.conv0."]
    assert "superresolution.block1.torgb." in table[-1]
    # behaviour: perturbing row i changes the affine inputs of exactly the listed layers
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, inp[0].clone()))
             for n, m in G.named_modules() if n.endswith(".affine")]
    ws = torch.randn(1, G.num_ws, G.w_dim)
    cam = torch.cat([torch.eye(4).flatten() + torch.tensor([0.0] * 11 + [2.7] + [0.0] * 4),
                     torch.tensor([4.26, 0, 0.5, 0, 4.26, 0.5, 0, 0, 1.0])])[None]
    with torch.no_grad():
        G.synthesis(ws, cam, neural_rendering_resolution=8, noise_mode="const")
        base = dict(seen)
        for i in range(G.num_ws):
            bumped = ws.clone()
            bumped[:, i] += 1.0
            G.synthesis(bumped, cam, neural_rendering_resolution=8, noise_mode="const")
            changed = sorted(n[:-len("affine")] for n in base if not torch.equal(base[n], seen[n]))
            assert changed == sorted(table[i]), i
    for h in hooks:
        h.remove()


def test_adaptive_selection_picks_the_rows_the_objective_depends_on():
    ws = torch.randn(3, 10, 8)
    target = torch.randn(8)
    only_6 = lambda w: ((w[:, 6] - target) ** 2).sum()  # noqa: E731
    picked = select_w_layers(ws, only_6, k=1, iters=2, lr=0.05)
    assert picked.chosen == [6] and float(picked.scores[6]) > 0
    assert float(picked.scores.clone().index_fill_(0, torch.tensor([6]), 0).abs().max()) == 0
    two = lambda w: ((w[:, 2] - target) ** 2).sum() + 0.1 * ((w[:, 8] - target) ** 2).sum()  # noqa: E731
    assert select_w_layers(ws, two, k=2).chosen == [2, 8]
    assert select_w_layers(ws, two, k=1, candidates=[0, 8]).chosen == [8]
    G = build_generator("tiny")
    allowed = ["backbone.synthesis.b64."]
    assert candidate_rows(G, allowed) == [7, 8, 9]
    assert layers_for_rows(G, [7, 9], allowed) == ["backbone.synthesis.b64.conv0.", "backbone.synthesis.b64.torgb."]


def _fixed_batch_loss(tr, clip_loss, seed=123):
    g = torch.Generator().manual_seed(seed)
    z, cams = tr.latents(g, 2), tr.random_cameras(g, 4)
    with torch.no_grad():
        ws = tr.map(tr.G_frozen, z)
        frozen = clip_loss.encode(tr.render(tr.G_frozen, ws, cams))
        train = clip_loss.encode(tr.render(tr.G, ws, cams))
        return float(clip_loss.directional_from_embeddings(train, frozen).loss)


def test_short_run_lowers_the_directional_loss_and_keeps_frozen_parts(clip_loss):
    G = build_generator("tiny")
    source = {k: v.clone() for k, v in G.state_dict().items()}
    tr = NadaTrainer(NadaConfig(steps=6, train_parts=("b16", "b32", "superresolution"), **FAST), G, clip_loss)
    before = _fixed_batch_loss(tr, clip_loss)
    tr.run_training()
    after = _fixed_batch_loss(tr, clip_loss)
    assert before == pytest.approx(1.0, abs=1e-3) and after < before - 0.2, (before, after)
    state = tr.G.state_dict()
    trained = ("backbone.synthesis.b16.", "backbone.synthesis.b32.", "superresolution.")
    for k, v in state.items():
        if k.startswith(trained):
            continue
        assert torch.equal(v, source[k]), k  # mapping, other blocks, decoder, buffers: bit-identical
    assert any(not torch.equal(state[k], source[k]) for k in state if k.startswith("backbone.synthesis.b32."))
    assert all(torch.equal(v, source[k]) for k, v in tr.G_frozen.state_dict().items())


def test_adaptive_selection_in_training_freezes_the_rest(clip_loss):
    G = build_generator("tiny")
    source = {k: v.clone() for k, v in G.state_dict().items()}
    cfg = NadaConfig(steps=1, auto_layer_k=2, auto_layer_batch=1, **FAST)
    tr = NadaTrainer(cfg, G, clip_loss)
    tr.run_training()
    assert len(tr.selected) == 2 and len(tr.last_scores) == G.num_ws and tr.stats[-1]["layers"] == tr.selected
    layers = layers_for_rows(G, tr.selected)
    assert sorted({n for n, p in G.named_parameters() if p.requires_grad}) == \
        sorted(n for n, _ in G.named_parameters() if any(n.startswith(p) for p in layers))
    changed = {k for k, v in G.state_dict().items() if not torch.equal(v, source[k])}
    assert changed and all(any(k.startswith(p) for p in layers) for k in changed)
    set_trainable(G, [])
    assert not any(p.requires_grad for p in G.parameters())


def test_resume_continues_exactly(tmp_path, clip_loss):
    cfg = NadaConfig(steps=3, snapshot_steps=2, lr=0.01, **FAST)
    straight = NadaTrainer(cfg, build_generator("tiny"), clip_loss)
    straight.run_training()
    first = NadaTrainer(NadaConfig(**{**cfg.__dict__, "steps": 2}), build_generator("tiny"), clip_loss,
                        run_folder=RunFolder(tmp_path))
    first.run_training()
    snap = RunFolder(tmp_path).latest_snapshot()
    assert snap.name == "snapshot-000002" and (tmp_path / "samples" / "fakes-000002.png").is_file()
    resumed = NadaTrainer(cfg, build_generator("tiny"), clip_loss, run_folder=RunFolder(tmp_path), resume_from=snap)
    resumed.run_training()
    assert resumed.step == 3
    for k, v in straight.G.state_dict().items():
        torch.testing.assert_close(resumed.G.state_dict()[k], v, rtol=0, atol=1e-6)
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2, 3] and all("loss/direction" in s for s in stats)


def test_options_are_checked_first():
    with pytest.raises(ValueError, match="--prompt"):
        validate_common(NadaConfig(preset="tiny", prompt=""))
    with pytest.raises(ValueError, match="--prompt"):
        validate_common(NadaConfig(preset="tiny", prompt="photo", source_text="photo"))
    with pytest.raises(ValueError, match="--clip-model-weights"):
        validate_common(NadaConfig(preset="tiny", prompt="x", clip_models=("tiny",), clip_model_weights=(1.0, 1.0)))
    with pytest.raises(ValueError, match="--yaw-range-deg"):
        validate_common(NadaConfig(preset="tiny", prompt="x", yaw_range_deg=(10.0, -10.0)))
    with pytest.raises(ValueError, match="exactly one of --preset"):
        validate_common(NadaConfig(prompt="x"))
    with pytest.raises(ValueError, match="--train-parts"):
        validate_common(NadaConfig(preset="tiny", prompt="x", train_parts=("wings",)))
    with pytest.raises(ValueError, match="--train-parts"):
        NadaTrainer(NadaConfig(train_parts=("b1024",), **FAST), build_generator("tiny"), None)


def test_nada_end_to_end_on_tiny(tmp_path):
    from adapt3d.export.video import read_video_frame_count
    from adapt3d.models.checkpoint import load_checkpoint
    from adapt3d.pipelines.nada import run
    out = tmp_path / "nada"
    cfg = NadaConfig(preset="tiny", prompt="zombie", out=out, steps=2, neural_rendering_resolution=16, seeds="0-1",
                     video_frames=3, mesh_resolution=16, eval_samples=3, auto_layer_k=4, progress=False)
    result = run(cfg)
    assert result.stages["train"]["steps"] == 2
    ck = load_checkpoint(out / "train" / "final")
    assert ck.metadata["step"] == 2 and ck.metadata["prompt"] == "zombie"
    for name in ("options.json", "log.txt", "stats.jsonl", "samples/fakes-000002.png",
                 "snapshots/snapshot-000002/training_state.pt"):
        assert (out / "train" / name).exists(), name
    assert (out / "render" / "grid.png").is_file() and read_video_frame_count(out / "render" / "orbit.mp4") == 3
    import trimesh
    assert len(trimesh.load(out / "render" / "seed0000.ply").vertices) > 0
    sheet = np.asarray(Image.open(out / "compare.png"))
    assert sheet.shape[0] > 2 * 64 and sheet.shape[1] > 2 * 3 * 64
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"clip_score", "diversity", "view_consistency"} <= set(metrics["metrics"])
    assert (out / "eval" / "report.html").is_file()
    summary = json.loads((out / "nada.json").read_text())
    assert summary["method"] == "nada" and set(summary["stages"]) == {"train", "render", "eval"}
    again = run(cfg)
    assert all(s.get("skipped") == "up to date" for s in again.stages.values())


def test_adapt_method_dispatch(tmp_path, monkeypatch):
    """`adapt3d adapt --method nada|itportrait` maps AdaptConfig's shared fields onto the method's config."""
    from adapt3d.pipelines import itportrait, nada
    from adapt3d.pipelines.adapt import AdaptConfig, run as run_adapt
    seen = []
    monkeypatch.setattr(nada, "run", lambda cfg: seen.append(cfg) or "nada-result")
    monkeypatch.setattr(itportrait, "run", lambda cfg: seen.append(cfg) or "itp-result")
    cfg = AdaptConfig(preset="tiny", prompt=("Pixar character",), out=tmp_path / "a", seeds="0-1", mesh="none")
    cfg.method, cfg.source_text, cfg.steps = "nada", "photo", 3  # the fields the lead's diff adds
    assert run_adapt(cfg) == "nada-result"
    got = seen[-1]
    assert isinstance(got, NadaConfig) and (got.prompt, got.source_text, got.steps) == ("Pixar character", "photo", 3)
    assert (got.out, got.seeds, got.mesh, got.preset) == (tmp_path / "a", "0-1", "none", "tiny")
    cfg.method, cfg.style_image = "itportrait", tmp_path / "ref.png"
    assert run_adapt(cfg) == "itp-result" and seen[-1].style_image == tmp_path / "ref.png"
    cfg.kimg = 3.0
    with pytest.raises(ValueError, match="--kimg: only used by --method datid3d"):
        run_adapt(cfg)
    cfg.kimg, cfg.prompt = None, ("a", "b")
    with pytest.raises(ValueError, match="--prompt"):
        run_adapt(cfg)
