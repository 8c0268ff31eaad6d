"""SD3 ControlNet (StableDiffusion3ControlNetPipeline + SD3ControlNetModel) on tiny random models saved with
save_pretrained and loaded offline through ControlNetGenerator.from_pretrained (our loading path)."""

import pytest
import torch

from adapt3d.diffusion.controlnet import ControlNetGenerator, check_controlnet_args, default_models
from adapt3d.testing.fixtures import tiny_models  # noqa: F401
from adapt3d.testing.tiny_sd3 import make_tiny_sd3, make_tiny_sd3_controlnet


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd3")
    base, cn = make_tiny_sd3(root / "sd3"), make_tiny_sd3_controlnet(root / "sd3-cn")
    return base, cn, ControlNetGenerator.from_pretrained(str(base), str(cn))  # variant 'auto'


def _control(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 64, 64, generator=g) > 0.9).float()


def test_sd3_is_detected_and_loaded_with_its_own_classes(sd3):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    _, _, g = sd3
    assert isinstance(g.pipe, StableDiffusion3ControlNetPipeline) and isinstance(g.pipe.controlnet, SD3ControlNetModel)
    assert g.is_sd3 and not g.is_sdxl and g.source["variant"] == "sd3"
    # 3D-DST's DDIM replacement does not apply to flow matching: the scheduler is kept
    assert isinstance(g.pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert g.resolution == 64 and g.dtype == torch.float32


def test_sd3_generates_per_image_seeded_controlled_images(sd3):
    _, _, g = sd3
    kw = dict(negative_prompt="bad", num_inference_steps=2, guidance_scale=5.0)
    out = g(_control(2), ["a car", "a chair"], seeds=[3, 4], **kw)
    assert out.images.shape == (2, 3, 64, 64) and out.images.min() >= 0 and out.images.max() <= 1
    alone = g(_control(2)[1:], ["a chair"], seeds=[4], **kw)  # the same image generated alone
    assert torch.allclose(alone.images[0], out.images[1], atol=1e-4)
    again = g(_control(2)[1:], ["a chair"], seeds=[4], **kw)
    assert torch.equal(again.images, alone.images)  # deterministic
    other_control = g(_control(1, 5), ["a chair"], seeds=[4], **kw)
    assert (other_control.images - alone.images).abs().max() > 1e-4  # the control image reaches the transformer
    other_scale = g(_control(2)[1:], ["a chair"], seeds=[4], controlnet_conditioning_scale=0.0, **kw)
    assert (other_scale.images - alone.images).abs().max() > 1e-4  # and the conditioning scale is passed on


def test_sd3_variant_flag_and_defaults(sd3, tmp_path):
    base, cn, _ = sd3
    check_controlnet_args(variant="sd3")
    with pytest.raises(ValueError, match="--variant.*sd4"):
        check_controlnet_args(variant="sd4")
    assert default_models("sd3", "canny") == ("stabilityai/stable-diffusion-3-medium-diffusers",
                                              "InstantX/SD3-Controlnet-Canny")
    assert default_models("sd3", "depth")[1] == "InstantX/SD3-Controlnet-Depth"
    # an SD 1.x ControlNet folder given with an SD3 base is refused with the flag named
    from adapt3d.diffusion.tiny_models import make_tiny_controlnet
    sd_cn = make_tiny_controlnet(tmp_path / "sd-cn")
    with pytest.raises((ValueError, OSError), match="--controlnet|--diffusion|variant"):
        ControlNetGenerator.from_pretrained(str(base), str(sd_cn), variant="sd3")


def test_synth_runs_the_sd3_back_end(sd3, tmp_path):
    import json

    from adapt3d.pipelines.synth import SynthConfig, synth

    base, cn, _ = sd3
    result = synth(SynthConfig(out=tmp_path / "run", preset="tiny", classes="car", per_mesh=2, diffusion=str(base),
                               controlnet=str(cn), variant="sd3", num_inference_steps=2, guidance_scale=5.0,
                               device="cpu", progress=False))
    assert result.images == 2
    ann = json.loads(next((tmp_path / "run").glob("car/*/annotation/000_00.json")).read_text())
    assert ann["generation"]["variant"] == "sd3" and ann["generation"]["scheduler"] == "FlowMatchEulerDiscreteScheduler"


# -- SD3 through the shared loading path (adapt3d.diffusion.sources / options; issue #20 after the SD3 merge) ---------
def test_sd3_family_is_read_from_model_index_before_loading(sd3, tmp_path):
    """The rule: a transformer and a third text encoder make SD3, whatever the pipeline class is called (a renamed
    or custom pipeline class must not fall through to 'unknown' and skip the pair check)."""
    import json
    import shutil

    from adapt3d.diffusion.sources import resolve_model

    base, cn, _ = sd3
    assert resolve_model(str(base)).family == "sd3"
    assert resolve_model(str(cn), "controlnet").family == "sd3"
    custom = tmp_path / "custom"
    shutil.copytree(base, custom)
    index = json.loads((custom / "model_index.json").read_text())
    (custom / "model_index.json").write_text(json.dumps({**index, "_class_name": "MyPipeline"}))
    assert resolve_model(str(custom)).family == "sd3"
    del index["text_encoder_3"]  # a transformer without T5 is not SD3 (e.g. a FLUX-like or custom model)
    (custom / "model_index.json").write_text(json.dumps({**index, "_class_name": "MyPipeline"}))
    assert resolve_model(str(custom)).family != "sd3"


def test_sd3_pairs_are_checked_both_ways_before_loading(sd3, tiny_models, monkeypatch):  # noqa: F811
    from adapt3d.diffusion import controlnet as cn_module
    from adapt3d.diffusion.controlnet import resolve_controlnet_pair
    from adapt3d.diffusion.options import DiffusionOptions

    base, cn, _ = sd3
    loads = []
    monkeypatch.setattr(cn_module, "load_controlnet", lambda *a, **k: loads.append(a))  # nothing may load
    with pytest.raises(ValueError, match=r"^--controlnet: .* is a ControlNet for Stable Diffusion 1\.x/2\.x, but "
                                         r"--diffusion .* is Stable Diffusion 3; they do not fit together"):
        ControlNetGenerator.from_pretrained(str(base), str(tiny_models["controlnet"]))
    with pytest.raises(ValueError, match=r"^--controlnet: .* is a ControlNet for Stable Diffusion 3, but "
                                         r"--diffusion .* is Stable Diffusion 1\.x/2\.x"):
        ControlNetGenerator.from_pretrained(str(tiny_models["stable-diffusion"]), str(cn))
    with pytest.raises(ValueError, match=r"^--variant sdxl: --diffusion .* is Stable Diffusion 3, not Stable "
                                         r"Diffusion XL; .* --variant sd3$"):
        resolve_controlnet_pair(str(base), str(cn), variant="sdxl")
    with pytest.raises(ValueError, match=r"^--attention-slicing: diffusers' SD3 transformer has no attention"):
        resolve_controlnet_pair(str(base), str(cn), DiffusionOptions(attention_slicing=True))
    assert loads == []
    cn_source, base_source = resolve_controlnet_pair(str(base), str(cn), variant="sd3")
    assert (base_source.family, cn_source.family) == ("sd3", "sd3")


def test_sd3_loads_with_diffusion_options(sd3, monkeypatch):
    """dtype, VAE slicing and torch.compile of the denoiser reach the SD3 pipeline (its denoiser is a transformer,
    not a UNet) and are recorded; the images equal those of the plain load."""
    from adapt3d.diffusion import options as options_module
    from adapt3d.diffusion.options import DiffusionOptions

    monkeypatch.setattr(options_module, "COMPILE_BACKEND", "eager")  # the wiring, without a C++ build
    base, cn, plain = sd3
    g = ControlNetGenerator.from_pretrained(str(base), str(cn), options=DiffusionOptions(
        dtype="fp32", vae_slicing=True, compile_unet=True))
    assert g.pipe.vae.use_slicing and type(g.pipe.transformer).__name__ == "OptimizedModule"
    assert g.source["dtype"] == "float32" and g.source["variant"] == "sd3" and g.dtype == torch.float32
    assert any("transformer compiled" in n for n in g.notes)
    kw = dict(num_inference_steps=2, guidance_scale=5.0, seeds=[4])
    assert torch.allclose(g(_control(1), ["a chair"], **kw).images, plain(_control(1), ["a chair"], **kw).images,
                          atol=1e-5)
