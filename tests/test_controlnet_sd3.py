"""SD3 ControlNet (StableDiffusion3ControlNetPipeline + SD3ControlNetModel) on tiny random models saved with
save_pretrained and loaded offline through ControlNetGenerator.from_pretrained (our loading path)."""

import pytest
import torch

from adapt3d.diffusion.controlnet import ControlNetGenerator, check_controlnet_args, default_models
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
