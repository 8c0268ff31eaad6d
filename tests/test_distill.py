"""adapt3d distill on tiny models: a short run changes one prompt's output and not the unconditional path, the
frozen base stays bit-identical, the run folder is complete, a resumed run equals an uninterrupted one, the NaN
guard skips a step, and bad options fail with an error naming the flag."""

import json
from pathlib import Path

import pytest
import torch
import trimesh

from adapt3d.export.video import read_video_frame_count
from adapt3d.models.text_conditioned import TextConditionedGenerator, load_text_conditioned
from adapt3d.models.triplane import build_generator
from adapt3d.pipelines.distill import DistillConfig, run
from adapt3d.diffusion.tiny_models import make_tiny_clip, make_tiny_stable_diffusion
from adapt3d.training.distill_config import parse_prompts
from adapt3d.training.distill_eval import render_fixed

PROMPTS = "a zombie;an elf"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "tiny-models"
    return {"sd": str(make_tiny_stable_diffusion(root / "stable-diffusion")),
            "clip": str(make_tiny_clip(root / "clip"))}


def _cfg(tiny, out: Path, steps: int, **kw) -> DistillConfig:
    base = dict(prompts=PROMPTS, preset="tiny", diffusion=tiny["sd"], clip_model="none", diversity_features="pixels",
                out=out, steps=steps, batch=2, lr=0.02, tick_steps=2, diversity_steps=2, snapshot_steps=2,
                diversity_seeds="0-2", sample_seeds="0-1", evaluate=False, attn_resolution=16, attn_dim=32,
                progress=False)
    base.update(kw)
    return DistillConfig(**base)


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    """Four uninterrupted steps with the final evaluation (CLIP, video, mesh)."""
    out = tmp_path_factory.mktemp("distill") / "run"
    cfg = _cfg(tiny, out, 4, clip_model=tiny["clip"], diversity_features="clip", evaluate=True, eval_seeds="0-1",
               video_frames=3, mesh_resolution=24)
    return run(cfg), out


def test_short_run_changes_the_prompt_output_not_the_unconditional_path(full_run):
    result, out = full_run
    model = result.model
    source = build_generator("tiny", seed=0).eval()
    # the frozen base is bit-identical to the source generator after training
    for k, v in source.state_dict().items():
        assert torch.equal(model.base.state_dict()[k], v), k
    assert any(abs(g) > 0 for g in model.gates().values())
    loaded, D, meta = load_text_conditioned(out / "final", load_discriminator=True)
    assert D is not None and meta["prompts"] == parse_prompts(PROMPTS) and meta["step"] == 4
    from adapt3d.diffusion.sds import ScoreDistillation
    sds = ScoreDistillation.from_pretrained(meta["text_conditioning"]["text_encoder"]["diffusion"])
    text = sds.encode_prompt(["a zombie"])
    seeds = [0, 1]
    src = render_fixed(loaded, None, seeds, 0.7)
    ref = render_fixed(TextConditionedGenerator(source, loaded.cond_config), None, seeds, 0.7)  # same code path
    assert torch.equal(src, ref)  # unconditional path == source generator, bit for bit
    cond = render_fixed(loaded, text, seeds, 0.7)
    assert (cond - src).abs().max() > 1e-4  # the prompt's output changed


def test_run_folder_samples_stats_and_evaluation(full_run):
    result, out = full_run
    for name in ("options.json", "log.txt", "stats.jsonl", "samples/source.png", "samples/prompt00-000004.png",
                 "samples/prompt01-000002.png", "final/conditioning.safetensors", "final/checkpoint.json",
                 "snapshots/snapshot-000002/training_state.pt", "eval/metrics.json", "eval/report.html",
                 "eval/prompt00/grid.png", "eval/prompt01/orbit.mp4", "eval/prompt00/seed0000.ply"):
        assert (out / name).is_file(), name
    stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [0, 2, 4]
    assert stats[0]["diversity/ratio_to_source"] == pytest.approx(1.0)  # zero gates: the source itself
    assert all("diversity/prompt01" in s and "gate/cross_attention" in s for s in stats)
    assert stats[-1]["sds/grad_norm"] > 0 and "loss/D" in stats[-1] and "loss/G_gan" in stats[-1]
    metrics = json.loads((out / "eval/metrics.json").read_text())
    assert [p["prompt"] for p in metrics["prompts"]] == ["a zombie", "an elf"]
    m = metrics["prompts"][0]
    assert -1 <= m["clip_score"]["mean"] <= 1 and m["diversity"] > 0 and m["view_consistency"]["final"]["psnr"] > 0
    assert read_video_frame_count(out / "eval/prompt01/orbit.mp4") == 3
    assert len(trimesh.load(out / "eval/prompt00/seed0000.ply").faces) > 0
    options = json.loads((out / "options.json").read_text())
    assert options["identity"]["prompts"] == ["a zombie", "an elf"]


def result_texts(tiny):
    from adapt3d.diffusion.sds import ScoreDistillation
    return ScoreDistillation.from_pretrained(tiny["sd"], load_unet=False, load_vae=False).encode_prompt(
        parse_prompts(PROMPTS))


def _renders(folder, texts):
    model, _, _ = load_text_conditioned(folder)
    return torch.cat([render_fixed(model, texts[k:k + 1], [0, 1], 1.0) for k in range(texts.shape[0])])


def test_resumed_run_continues_the_uninterrupted_run(full_run, tiny, tmp_path):
    _, full_out = full_run
    out = tmp_path / "resumed"
    first = run(_cfg(tiny, out, 2))
    assert first.step == 2 and first.resumed_from is None
    # runs are deterministic: the 2-step snapshot equals the 4-step run's snapshot at step 2, byte for byte
    for name in ("conditioning.safetensors", "discriminator.safetensors", "generator.safetensors"):
        snap = "snapshots/snapshot-000002/" + name
        assert (out / snap).read_bytes() == (full_out / snap).read_bytes(), name
    steps = []
    second = run(_cfg(tiny, out, 4), callbacks=[lambda trainer: steps.append(trainer.step)])
    assert second.resumed_from == out / "snapshots" / "snapshot-000002" and second.step == 4
    assert steps == [3, 4]  # only the remaining steps ran
    stats = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert stats == [0, 2, 4]
    # Steps 3-4 after resuming reproduce the uninterrupted run bit for bit, although only the uninterrupted run
    # rendered for diversity and samples just before step 3 (see test_training_steps_run_in_train_mode).
    for name in ("conditioning.safetensors", "discriminator.safetensors"):
        assert (out / "final" / name).read_bytes() == (full_out / "final" / name).read_bytes(), name
    texts = result_texts(tiny)
    full = _renders(full_out / "final", texts)
    at2 = _renders(full_out / "snapshots/snapshot-000002", texts)
    resumed = _renders(out / "final", texts)
    assert float((full - at2).abs().max()) > 1e-3  # steps 3-4 did move the renders
    assert torch.equal(full, resumed)
    with pytest.raises(ValueError, match="other options.*guidance_scale"):
        run(_cfg(tiny, out, 4, guidance_scale=7.5))


def test_nan_guard_skips_the_step(tiny):
    from adapt3d.diffusion.sds import ScoreDistillation
    from adapt3d.models.text_conditioned import TextConditioningConfig
    from adapt3d.training.distill import DistillTrainer

    real = ScoreDistillation.from_pretrained(tiny["sd"])

    class NaNTeacher:
        encode_prompt = staticmethod(real.encode_prompt)

        def __call__(self, images, **kw):
            out = real(images=images, **kw)
            out.loss = out.loss * float("nan")
            return out

    G = build_generator("tiny")
    model = TextConditionedGenerator(G, TextConditioningConfig.for_generator(G, 32, attn_resolution=8, attn_dim=16))
    before = {k: v.clone() for k, v in model.conditioning_state_dict().items()}
    trainer = DistillTrainer(_cfg(tiny, Path("unused"), 1, lambda_gan=0.0), model, NaNTeacher(), ["a zombie"])
    rec = trainer.train_step()
    assert rec["skipped"] == 1.0 and trainer.skipped == 1 and trainer.step == 1
    after = model.conditioning_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_steps_run_in_train_mode(tiny):
    """The default GAN source is the model's own frozen base: it must not leave the base in eval mode, and an eval
    render before a step (or none, as after a resume) must not change the mode the step runs in (the mode picks
    the modulated convolutions' fused or unfused path, which round differently)."""
    from adapt3d.diffusion.sds import ScoreDistillation
    from adapt3d.models.text_conditioned import TextConditioningConfig
    from adapt3d.training.distill import DistillTrainer

    G = build_generator("tiny")
    model = TextConditionedGenerator(G, TextConditioningConfig.for_generator(G, 32, attn_resolution=8, attn_dim=16))
    trainer = DistillTrainer(_cfg(tiny, Path("unused"), 2, lambda_gan=0.0), model,
                             ScoreDistillation.from_pretrained(tiny["sd"]), ["a zombie"])
    assert trainer.source is model.base and model.base.training
    modes = []
    model.base.backbone.synthesis.register_forward_pre_hook(lambda m, args: modes.append(m.training))
    model.eval()  # e.g. a callback that rendered
    trainer.train_step()
    assert modes and all(modes)


def test_partly_trained_base_against_a_real_dataset(tiny, tmp_path):
    import math

    from adapt3d.cameras import camera_label
    from adapt3d.data.dataset_writer import write_dataset_json
    from adapt3d.export.images import save_image, to_uint8

    G = build_generator("tiny", seed=3).eval()
    r, entries = G.rendering, []
    with torch.no_grad():
        for i in range(4):
            c = camera_label(torch.tensor([math.pi / 2 + 0.1 * i]), torch.tensor([math.pi / 2]),
                             radius=r.avg_camera_radius, pivot=r.avg_camera_pivot, fov_deg=G.config.camera_fov_deg)
            img = G(torch.randn(1, G.z_dim), c, noise_mode="const").image
            save_image(tmp_path / "ds" / f"img{i:08d}.png", to_uint8(img)[0])
            entries.append((f"img{i:08d}.png", c[0].tolist()))
    write_dataset_json(tmp_path / "ds", entries)
    result = run(_cfg(tiny, tmp_path / "run", 1, dataset=tmp_path / "ds", train_base=("b64",)))
    source = build_generator("tiny", seed=0).state_dict()
    changed = {k for k, v in result.model.base.state_dict().items() if not torch.equal(v, source[k])}
    assert changed and all(k.startswith("backbone.synthesis.b64.") for k in changed)
    with pytest.raises(ValueError, match="--train-base: unknown part"):
        run(_cfg(tiny, tmp_path / "run2", 1, train_base=("b9999",)))


@pytest.mark.parametrize("change, match", [
    ({"prompts": "a zombie;;an elf"}, "--prompts"),
    ({"prompts": "a zombie;a zombie"}, "duplicate"),
    ({"guidance_scale": -2.0}, "--guidance-scale"),
    ({"t_range": (0.9, 0.2)}, "--t-range"),
    ({"lambda_sds": 0.0, "lambda_gan": 0.0}, "nothing to train"),
    ({"generator": "runs/does-not-exist"}, "exactly one of --preset"),
    ({"batch": 6}, "--batch"),
    ({"diversity_seeds": "0"}, "--diversity-seeds"),
    ({"diffusion": "/nonexistent/sd"}, "--diffusion"),
])
def test_bad_options_fail_with_the_flag(tiny, tmp_path, change, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        run(_cfg(tiny, tmp_path / "bad", 1, **change))


def test_prompt_file(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# portraits\na zombie\n\nan elf with silver hair\n")
    assert parse_prompts(str(f)) == ["a zombie", "an elf with silver hair"]
    assert parse_prompts("a portrait of an elf") == ["a portrait of an elf"]
    with pytest.raises(ValueError, match="does not exist"):
        parse_prompts(str(tmp_path / "missing.txt"))
