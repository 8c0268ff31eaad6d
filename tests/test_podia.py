"""PODIA-3D-style target generation: the generator's depth fed to depth2img / depth ControlNets (against hand
computations), specialised-to-general sampling, text-guided debiasing, and make-dataset --translator end to end."""

from __future__ import annotations

import json

import pytest
import torch

from adapt3d.data.target_dataset import read_records
from adapt3d.data.target_prompts import AttributeDebiaser, parse_attribute_groups, with_attributes
from adapt3d.diffusion.depth import controlnet_depth_image, depth2img_depth_map, normalized_disparity
from adapt3d.diffusion.depth_translate import Depth2ImgTranslator, DepthControlNetTranslator
from adapt3d.diffusion.s2g import S2GSchedule
from adapt3d.pipelines import make_dataset as md
from adapt3d.pipelines.make_dataset import MakeDatasetConfig, run
from adapt3d.testing.fixtures import tiny_models  # noqa: F401


def _constructed_depth():
    """A 2x2 depth map: foreground depths 1, 2, 4 (disparities 1, 0.5, 0.25) and a background pixel at 10."""
    depth = torch.tensor([[[[1.0, 2.0], [4.0, 10.0]]]])  # (1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.9], [0.6, 0.1]]]])
    return depth, mask


def test_normalized_disparity_hand_computation():
    depth, mask = _constructed_depth()
    # disparity 1, 0.5, 0.25 over the foreground -> (d - 0.25) / 0.75; background (mask 0.1 < 0.5) -> 0
    expected = torch.tensor([[[[1.0, 1 / 3], [0.0, 0.0]]]])
    torch.testing.assert_close(normalized_disparity(depth, mask), expected)
    # depth2img: 2 t - 1 at the latent size (here the same size, no resize); near = +1
    torch.testing.assert_close(depth2img_depth_map(depth, mask, 2), 2 * expected - 1)
    # ControlNet: t repeated on 3 channels, near = bright
    torch.testing.assert_close(controlnet_depth_image(depth, mask, 2), expected.expand(1, 3, 2, 2))
    # without a mask the background pixel (disparity 0.1) is the farthest foreground point
    t = normalized_disparity(depth, None)
    torch.testing.assert_close(t, (1 / depth - 0.1) / 0.9)


def test_normalized_disparity_degenerate_maps():
    depth = torch.full((2, 1, 4, 4), 3.0)
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2] = 1
    t = normalized_disparity(depth, mask)  # flat foreground: 1 there, 0 on the background; no NaN
    assert torch.equal(t[0], mask[0]) and torch.equal(t[1], torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="depth"):
        normalized_disparity(torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="mask"):
        normalized_disparity(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 2, 2))


def test_resize_to_latent_size_averages_blocks():
    # a 4x4 map made of 2x2 constant blocks, halved: every latent pixel is its block's value
    depth = torch.tensor([[1.0, 2.0], [4.0, 8.0]]).repeat_interleave(2, 0).repeat_interleave(2, 1)[None, None]
    out = depth2img_depth_map(depth, None, 2)
    t = (1 / torch.tensor([[1.0, 2.0], [4.0, 8.0]]) - 0.125) / 0.875
    torch.testing.assert_close(out[0, 0], 2 * t - 1)


@pytest.fixture(scope="module")
def depth2img(tiny_models):  # noqa: F811
    return Depth2ImgTranslator.from_pretrained(str(tiny_models["stable-diffusion-depth"]))


def _inputs(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, 64, 64, generator=g) * 2 - 1
    depth = 2 + torch.rand(b, 1, size, size, generator=g)
    mask = (torch.rand(b, 1, size, size, generator=g) > 0.3).float()
    return images, depth, mask


def test_depth2img_unet_sees_the_generators_depth(depth2img):
    images, depth, mask = _inputs()
    seen = []
    hook = depth2img.pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, 4:].clone()))
    try:
        depth2img(images, "a cat", depth=depth, mask=mask, strength=1.0, guidance_scale=2.0,
                  num_inference_steps=2, seeds=[1, 2])
    finally:
        hook.remove()
    # hand computation: latent size 32 = depth size, so no resize; CFG doubles the batch (uncond, cond)
    disp = 1 / depth
    fg = mask >= 0.5
    lo = torch.where(fg, disp, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
    hi = torch.where(fg, disp, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)
    expected = torch.where(fg, 2 * (disp - lo) / (hi - lo) - 1, -torch.ones_like(disp))
    assert len(seen) >= 2  # PNDM's PLMS start runs the UNet one extra time
    for s in seen:
        torch.testing.assert_close(s, torch.cat([expected, expected]), atol=1e-5, rtol=0)


def test_depth2img_depth_matters_and_seeds_are_per_image(depth2img):
    images, depth, mask = _inputs()
    kw = dict(strength=1.0, num_inference_steps=3, guidance_scale=1.0)
    a = depth2img(images, "a cat", depth=depth, mask=mask, seeds=[1, 2], **kw).images
    b = depth2img(images, "a cat", depth=depth.flip(-1), mask=mask.flip(-1), seeds=[1, 2], **kw).images
    one = depth2img(images[1:], "a cat", depth=depth[1:], mask=mask[1:], seeds=[2], **kw).images
    assert (a - b).abs().max() > 1e-3  # the depth channel changes the result
    torch.testing.assert_close(a[1:], one, atol=1e-4, rtol=0)  # image 1 regenerated alone from its seed
    assert depth2img.pipe.depth_estimator is None  # DPT never loaded


def test_controlnet_depth_gets_the_control_image(tiny_models):  # noqa: F811
    cn = DepthControlNetTranslator.from_pretrained(str(tiny_models["stable-diffusion"]),
                                                   str(tiny_models["controlnet"]))
    images, depth, mask = _inputs(size=16)
    seen = []
    hook = cn.pipe.controlnet.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["controlnet_cond"].clone()), with_kwargs=True)
    try:
        out = cn(images, "a cat", depth=depth, mask=mask, strength=1.0, guidance_scale=1.0,
                 num_inference_steps=2, seeds=[3, 4])
    finally:
        hook.remove()
    assert out.images.shape == (2, 3, 64, 64)
    # hand computation at 16 px, then enlarged to the generation size 64 (bilinear)
    disp = 1 / depth
    fg = mask >= 0.5
    lo = torch.where(fg, disp, torch.inf).amin(dim=(1, 2, 3), keepdim=True)
    hi = torch.where(fg, disp, -torch.inf).amax(dim=(1, 2, 3), keepdim=True)
    t = torch.where(fg, (disp - lo) / (hi - lo), torch.zeros_like(disp))
    t = torch.nn.functional.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False).clamp(0, 1)
    assert len(seen) >= 2
    torch.testing.assert_close(seen[0], t.expand(-1, 3, -1, -1), atol=1e-5, rtol=0)


def test_s2g_switches_the_prompt_at_the_right_step(depth2img):
    images, depth, mask = _inputs()
    kw = dict(depth=depth, mask=mask, strength=1.0, num_inference_steps=4, guidance_scale=1.0, seeds=[5, 6])
    spec = depth2img(images, "the face of a cat", **kw).images
    general = depth2img(images, "a cat", **kw).images
    never = depth2img(images, "the face of a cat", s2g=S2GSchedule(("a cat", "a cat"), 1.0), **kw).images
    start = depth2img(images, "the face of a cat", s2g=S2GSchedule(("a cat", "a cat"), 0.0), **kw).images
    torch.testing.assert_close(never, spec)
    torch.testing.assert_close(start, general)
    text = {}
    for p in ("the face of a cat", "a cat"):
        ids = depth2img.pipe.tokenizer([p], padding="max_length", max_length=77, return_tensors="pt").input_ids
        text[p] = depth2img.pipe.text_encoder(ids)[0]
    seen = []
    hook = depth2img.pipe.unet.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["encoder_hidden_states"][0].clone()), with_kwargs=True)
    try:
        half = depth2img(images, "the face of a cat", s2g=S2GSchedule(("a cat", "a cat"), 0.5), **kw).images
    finally:
        hook.remove()
    used = ["the face of a cat" if torch.allclose(e, text["the face of a cat"][0], atol=1e-5) else
            "a cat" if torch.allclose(e, text["a cat"][0], atol=1e-5) else "?" for e in seen]
    # 4 PNDM steps run 5 UNet evaluations (PLMS start); round(5 * 0.5) = 2 (banker's rounding) are specialised
    assert used == ["the face of a cat"] * 2 + ["a cat"] * 3
    assert (half - spec).abs().max() > 1e-4 and (half - general).abs().max() > 1e-4


def test_debiasing_picks_the_clip_argmax_and_writes_prompts():
    class Scorer:  # embeddings chosen by hand: image k is closest to option k of each group
        def encode_images(self, images):
            return torch.tensor([[1.0, 0.0], [0.0, 1.0]])

        def encode_text(self, texts):
            table = {"a photo of a man": [0.9, 0.1], "a photo of a woman": [0.1, 0.9],
                     "a photo of a young": [0.2, 0.8], "a photo of a old": [0.8, 0.2]}
            return torch.tensor([table[t] for t in texts])

    d = AttributeDebiaser(Scorer(), parse_attribute_groups(["man|woman", "young|old"]))
    assert d.attributes(torch.zeros(2, 3, 8, 8)) == [["man", "old"], ["woman", "young"]]
    assert with_attributes("a Pixar character", ["old", "man"]) == "a Pixar character, old man"
    assert with_attributes("a {attributes} in Pixar style", ["old", "man"]) == "a old man in Pixar style"
    for bad in (["man"], ["man|"], ["a|a"]):
        with pytest.raises(ValueError, match="--debias-attributes"):
            parse_attribute_groups(bad)


# ------------------------------------------------------------------ make-dataset --translator, end to end

FAST = dict(preset="tiny", prompt=("the face of a zombie",), num_images=4, samples_per_source=2, batch_size=2,
            num_inference_steps=4, strength=1.0, pose_rings=1, progress=False, device="cpu")


@pytest.fixture
def cache(tiny_models, tmp_path_factory, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ADAPT3D_CACHE", str(tmp_path_factory.getbasetemp()))


def test_make_dataset_depth2img_with_s2g_and_debiasing(cache, tmp_path):
    out = tmp_path / "podia"
    cfg = MakeDatasetConfig(out=out, translator="depth2img", s2g_general_prompt=("a zombie",), s2g_switch=0.5,
                            debias_attributes=("man|woman",), **FAST)
    result = run(cfg)
    assert result.num_images == 4
    records = read_records(out)
    for r in records.values():
        t = r.translation
        assert t["translator"] == "depth2img" and t["attributes"][0] in ("man", "woman")
        assert t["prompt_used"] == f"the face of a zombie, {t['attributes'][0]}"
        assert t["s2g"] == {"general_prompt": f"a zombie, {t['attributes'][0]}", "switch": 0.5}
        assert r.prompt == "the face of a zombie" and "pose_margin" in r.scores
    job = json.loads((out / "job.json").read_text())["job"]
    assert job["translator"] == "depth2img" and job["s2g_general"] == {"the face of a zombie": "a zombie"}
    with pytest.raises(ValueError, match="translator"):  # another translator is another job
        run(MakeDatasetConfig(out=out, translator="controlnet-depth", **FAST))


def test_make_dataset_controlnet_depth_records_the_translator(cache, tmp_path):
    out = tmp_path / "cn"
    run(MakeDatasetConfig(out=out, translator="controlnet-depth", **{**FAST, "num_images": 2}))
    assert {r.translation["translator"] for r in read_records(out).values()} == {"controlnet-depth"}


@pytest.fixture
def no_model_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the error")
    monkeypatch.setattr(md, "load_models", boom)


@pytest.mark.parametrize("change, match", [
    (dict(controlnet="tiny"), "--controlnet"), (dict(s2g_switch=1.5), "--s2g-switch"),
    (dict(s2g_general_prompt=("a", "b")), "--s2g-general-prompt"), (dict(debias_attributes=("man",)), "--debias"),
    (dict(debias_attributes=("man|woman",), clip_model="none"), "--debias-attributes"),
])
def test_podia_option_errors_before_any_model_loads(tmp_path, no_model_loading, change, match):
    with pytest.raises(ValueError, match=match):
        run(MakeDatasetConfig(out=tmp_path / "o", **{**FAST, **change}))


def test_translator_without_its_model_names_the_option(tmp_path, no_model_loading, monkeypatch,
                                                       tiny_models):  # noqa: F811
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    gen = dict(FAST, preset=None, generator="ffhq")
    monkeypatch.setattr("adapt3d.models.loading.check_generator_source", lambda *a, **k: None)
    with pytest.raises(FileNotFoundError, match=r"--translator depth2img.*--diffusion.*huggingface-cli download"):
        run(MakeDatasetConfig(out=tmp_path / "a", translator="depth2img", **gen))
    with pytest.raises(FileNotFoundError, match=r"--translator controlnet-depth.*--controlnet.*download"):
        run(MakeDatasetConfig(out=tmp_path / "b", translator="controlnet-depth",
                              diffusion=str(tiny_models["stable-diffusion"]), **gen))
    with pytest.raises(ValueError, match=r"--translator depth2img.*not an SD 2 depth model"):
        run(MakeDatasetConfig(out=tmp_path / "c", translator="depth2img",
                              diffusion=str(tiny_models["stable-diffusion"]), **gen))


def test_pose_benchmark_runs_on_tiny(tiny_models, tmp_path_factory):  # noqa: F811
    import os
    import subprocess
    import sys

    from conftest import REPO
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"),
           "ADAPT3D_CACHE": str(tmp_path_factory.getbasetemp())}
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "podia_pose.py"), "--translators", "depth2img",
                           "--strengths", "1.0", "--num-sources", "1", "--steps", "2"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["translator"] == "depth2img" and row["strength"] == 1.0 and row["num_sources"] == 1
    assert 0 <= row["source_warp_error"] < row["warp_error"] < 1 and -2 <= row["pose_margin"] <= 2
