"""Diffusion back-end: tiny model builders, weight resolution, batched per-seed img2img."""

from __future__ import annotations

import json
import time

import pytest
import torch

from adapt3d.diffusion import Img2ImgTranslator, PretrainedNotFoundError, check_img2img_args, resolve_pretrained
from adapt3d.testing import is_tiny_model, make_tiny_stable_diffusion, tiny_clip_tokenizer
from adapt3d.testing.fixtures import tiny_models  # noqa: F401

STEPS, STRENGTH = 4, 0.5  # 2 denoising steps: fast


@pytest.fixture(scope="module")
def translator(tiny_models):  # noqa: F811
    return Img2ImgTranslator.from_pretrained(str(tiny_models["stable-diffusion"]))


@pytest.fixture(scope="module")
def sources():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 64, 64, generator=g) * 2 - 1  # (B, 3, H, W) in [-1, 1]


def test_tiny_tokenizer_vocab_and_merges():
    tok = tiny_clip_tokenizer()
    assert len(tok) == 518 and tok.model_max_length == 77
    ids = tok("the cat").input_ids
    vocab = tok.get_vocab()
    assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    assert vocab["the</w>"] in ids  # the merges t+h, th+e</w> apply
    assert [vocab["c"], vocab["a"], vocab["t</w>"]] == ids[2:5]


def test_tiny_builder_is_cached_and_refuses_foreign_folders(tmp_path, tiny_models):  # noqa: F811
    path = tiny_models["stable-diffusion"]
    assert is_tiny_model(path, "stable-diffusion") and not is_tiny_model(path, "clip")
    t0 = time.perf_counter()
    assert make_tiny_stable_diffusion(path) == path
    assert time.perf_counter() - t0 < 0.05
    info = json.loads((path / "model_index.json").read_text())
    assert info["scheduler"] == ["diffusers", "PNDMScheduler"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete tiny"):
        make_tiny_stable_diffusion(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_resolve_pretrained_errors_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFoundError) as e:
        resolve_pretrained("someorg/no-such-diffusion-model", "stable-diffusion")
    msg = str(e.value)
    assert "someorg/no-such-diffusion-model" in msg and "huggingface-cli download" in msg and "--diffusion" in msg
    with pytest.raises(PretrainedNotFoundError, match="model_index.json is missing"):
        resolve_pretrained(tmp_path, "stable-diffusion")
    with pytest.raises(PretrainedNotFoundError, match="neither an existing"):
        resolve_pretrained("./not/here", "clip")
    with pytest.raises(ValueError, match="kind"):
        resolve_pretrained(tmp_path, "vae")
    # Fails fast: no model is built.
    with pytest.raises(PretrainedNotFoundError, match="--diffusion"):
        Img2ImgTranslator.from_pretrained("someorg/no-such-diffusion-model")


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=""), "prompt"), (dict(prompt="   "), "empty prompt"), (dict(prompt=None), "prompt"),
    (dict(strength=0.0), "strength"), (dict(strength=1.5), "strength"), (dict(num_inference_steps=0), "steps"),
    (dict(strength=0.1, num_inference_steps=5), "no denoising step"), (dict(guidance_scale=-1.0), "guidance"),
    (dict(scheduler="euler"), "scheduler"),
])
def test_check_img2img_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_img2img_args(**{"prompt": "a zombie", **kwargs})


def test_from_pretrained_scheduler_choice(tiny_models):  # noqa: F811
    t = Img2ImgTranslator.from_pretrained(str(tiny_models["stable-diffusion"]), scheduler="ddim")
    assert type(t.pipe.scheduler).__name__ == "DDIMScheduler" and t.dtype == torch.float32
    assert t.resolution == 64


def test_img2img_shapes_range_and_determinism(translator, sources):
    out = translator(sources, "a zombie", seeds=[3, 4, 5], strength=STRENGTH, num_inference_steps=STEPS)
    assert out.images.shape == (3, 3, 64, 64) and out.images.dtype == torch.float32
    assert out.images.min() >= 0 and out.images.max() <= 1 and out.seeds == [3, 4, 5]
    assert out.prompts == ["a zombie"] * 3
    again = translator(sources, "a zombie", seeds=[3, 4, 5], strength=STRENGTH, num_inference_steps=STEPS)
    assert torch.equal(out.images, again.images)
    # Changing one seed changes that image only.
    other = translator(sources, "a zombie", seeds=[3, 9, 5], strength=STRENGTH, num_inference_steps=STEPS)
    diff = (other.images - out.images).abs().amax(dim=(1, 2, 3))
    assert diff[0] == 0 and diff[2] == 0 and diff[1] > 1e-3
    big = translator(sources[:1], "a zombie", seeds=[3], strength=STRENGTH, num_inference_steps=STEPS,
                     output_size=96)
    assert big.images.shape == (1, 3, 96, 96)


def test_batched_equals_one_at_a_time(translator, sources):
    prompts = ["a zombie", "an elf", "a statue"]
    batch = translator(sources, prompts, negative_prompt="blurry", seeds=[10, 11, 12], strength=STRENGTH,
                       num_inference_steps=STEPS, guidance_scale=8.0)
    singles = torch.cat([translator(sources[k:k + 1], prompts[k], negative_prompt="blurry", seeds=[10 + k],
                                    strength=STRENGTH, num_inference_steps=STEPS, guidance_scale=8.0).images
                         for k in range(3)])
    assert (batch.images - singles).abs().max() <= 1e-5


def test_prompt_and_negative_prompt_matter(translator, sources):
    a = translator(sources[:1], "a zombie", seeds=[0], strength=STRENGTH, num_inference_steps=STEPS).images
    b = translator(sources[:1], "an elf", seeds=[0], strength=STRENGTH, num_inference_steps=STEPS).images
    c = translator(sources[:1], "a zombie", negative_prompt="ugly", seeds=[0], strength=STRENGTH,
                   num_inference_steps=STEPS).images
    assert (a - b).abs().max() > 1e-4 and (a - c).abs().max() > 1e-4


def test_call_validates_inputs(translator, sources):
    with pytest.raises(ValueError, match="images"):
        translator(sources[0], "x")
    with pytest.raises(ValueError, match="seeds"):
        translator(sources, "x", seeds=[1])
    with pytest.raises(ValueError, match="3 images"):
        translator(sources, ["x", "y"])
    with pytest.raises(ValueError, match="strength"):
        translator(sources, "x", strength=0)
