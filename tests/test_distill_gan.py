"""DreamPortrait's GAN regulariser: by default the discriminator's real images are the teacher's translations of
source samples (not the source samples themselves), the choice is explicit in options.json, and with the GAN alone
the default moves the outputs away from the source while --gan-real source keeps them nearer to it."""

import json
from pathlib import Path

import pytest
import torch

from adapt3d.pipelines.distill import DistillConfig, run
from adapt3d.diffusion.tiny_models import make_tiny_stable_diffusion
from adapt3d.training.distill_reals import GAN_REALS_FILE


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    return str(make_tiny_stable_diffusion(tmp_path_factory.getbasetemp() / "tiny-models" / "stable-diffusion"))


def _cfg(sd, out: Path, **kw) -> DistillConfig:
    base = dict(prompts="a zombie;an elf", preset="tiny", diffusion=sd, clip_model="none",
                diversity_features="pixels", out=out, steps=2, batch=2, tick_steps=2, diversity_steps=2,
                snapshot_steps=100, diversity_seeds="0-2", sample_seeds="0", evaluate=False, attn_resolution=8,
                attn_dim=16, progress=False)
    base.update(kw)
    return DistillConfig(**base)


def test_default_reals_are_teacher_translations_of_the_fakes_prompts(tiny_sd, tmp_path):
    from adapt3d.diffusion.img2img import Img2ImgTranslator
    calls = []
    real_call = Img2ImgTranslator.__call__

    def spy(self, images, prompt, **kw):
        calls.append((images.detach().clone(), list(prompt)))
        return real_call(self, images, prompt, **kw)

    Img2ImgTranslator.__call__ = spy
    try:
        trainers = []
        run(_cfg(tiny_sd, tmp_path / "run"), callbacks=[trainers.append])
    finally:
        Img2ImgTranslator.__call__ = real_call
    options = json.loads((tmp_path / "run" / "options.json").read_text())
    assert options["gan"]["gan_real"] == "teacher" and options["identity"]["gan_real"] == "teacher"
    assert options["gan"]["gan_real_images"] == 8 and "toward the text" in options["gan"]["why"]
    pool = torch.load(tmp_path / "run" / GAN_REALS_FILE, weights_only=True)
    assert pool["images"].shape == (8, 3, 64, 64) and pool["images"].dtype == torch.uint8
    assert pool["prompts"].tolist() == [0, 1] * 4  # prompts take turns
    # every pool image went through the teacher's img2img with its prompt (+ the view suffix)
    prompts = [p for _, ps in calls for p in ps]
    assert len(prompts) == 8 and all(p.startswith(("a zombie, ", "an elf, ")) and p.endswith(" view")
                                     for p in prompts)
    assert (tmp_path / "run" / "samples" / "gan_reals.png").is_file()
    # the discriminator gets, for each fake of prompt k, a pool image of prompt k (not a source sample)
    trainer = trainers[-1]
    img, raw, c = trainer._reals(4, torch.Generator().manual_seed(0), torch.tensor([1, 1, 0, 1]))
    pool_images = pool["images"].float() / 127.5 - 1
    for i, k in enumerate([1, 1, 0, 1]):
        match = [j for j in range(8) if torch.equal(pool_images[j], img[i])]
        assert match and all(pool["prompts"][j] == k for j in match)
    # a rerun reuses the pool (no new translations)
    calls.clear()
    Img2ImgTranslator.__call__ = spy
    try:
        run(_cfg(tiny_sd, tmp_path / "run", steps=3))
    finally:
        Img2ImgTranslator.__call__ = real_call
    assert calls == []


def test_gan_alone_pulls_toward_the_source_only_with_source_reals(tiny_sd, tmp_path):
    """With the GAN loss alone (no SDS), the outputs can only move where the discriminator's reals are: with
    --gan-real source they stay nearer the source than with the teacher's translations (mean of the last two
    measurements of direction/source_distance; measured: ~1.42 vs ~0.53 over 8 steps, pixels)."""
    final = {}
    for kind in ("teacher", "source"):
        out = tmp_path / kind
        run(_cfg(tiny_sd, out, steps=8, lr=0.02, lambda_sds=0.0, lambda_gan=1.0, gan_real=kind, diversity_seeds="0-3",
                 tick_steps=2, diversity_steps=2))
        stats = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
        d = [s["direction/source_distance"] for s in stats if "direction/source_distance" in s]
        assert d[0] == pytest.approx(0.0, abs=1e-6)  # step 0: zero gates, the source itself
        final[kind] = sum(d[-2:]) / 2
        assert json.loads((out / "options.json").read_text())["gan"]["gan_real"] == kind
    assert final["teacher"] > 1.5 * final["source"], final


@pytest.mark.parametrize("change, match", [
    ({"gan_real": "dataset"}, "--gan-real dataset: needs --dataset"),
    ({"gan_real": "source", "dataset": Path(".")}, "--dataset: only used with --gan-real dataset"),
    ({"gan_real_images": 0}, "--gan-real-images"),
    ({"gan_real_strength": 1.5}, "--gan-real-strength"),
])
def test_bad_gan_options_fail_with_the_flag(tiny_sd, tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        run(_cfg(tiny_sd, tmp_path / "bad", **change))
    assert not (tmp_path / "bad").exists()


def test_the_pool_is_reused_only_when_made_with_the_same_options(tmp_path):
    """gan_reals.pt records what the caller compares (the generator and camera options included): the same options
    reuse it, other cameras rebuild it (a pool of front views must not serve a run that samples side views)."""
    from adapt3d.training.distill_reals import TeacherReals, load_or_build_reals
    built = []

    def build():
        built.append(1)
        return TeacherReals(torch.full((2, 3, 4, 4), len(built), dtype=torch.uint8), torch.zeros(2, 25),
                            torch.tensor([0, 1]), {"num_images": 2})  # the builder's own, partial record

    made = {"num_images": 2, "generator": "tiny", "cameras": {"pose_sampler": "views", "view_shares": [0.5, 0.5, 0]}}
    first = load_or_build_reals(tmp_path, made, build)
    again = load_or_build_reals(tmp_path, made, build)
    assert len(built) == 1 and torch.equal(again.images, first.images) and again.made_with == made
    other = {**made, "cameras": {"pose_sampler": "gaussian", "view_shares": [0.5, 0.5, 0]}}
    rebuilt = load_or_build_reals(tmp_path, other, build)
    assert len(built) == 2 and int(rebuilt.images[0, 0, 0, 0]) == 2
    assert torch.load(tmp_path / GAN_REALS_FILE, weights_only=True)["made_with"] == other
