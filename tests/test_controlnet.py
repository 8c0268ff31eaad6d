"""ControlNetGenerator on tiny random SD 1.x and SDXL ControlNet pipelines loaded through from_pretrained."""

import pytest
import torch

from adapt3d.diffusion.controlnet import ControlNetGenerator, check_controlnet_args
from adapt3d.diffusion.loading import PretrainedNotFoundError
from adapt3d.diffusion.tiny_models import make_tiny_controlnet, make_tiny_stable_diffusion

STEPS = 3


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-cn")
    sd = make_tiny_stable_diffusion(root / "sd")
    cn = _live_controlnet(make_tiny_controlnet(root / "cn"), root / "cn-live")
    return ControlNetGenerator.from_pretrained(str(sd), str(cn))


def _live_controlnet(src, dst):
    """A copy of a ControlNet whose zero-initialised convolutions (outputs and the conditioning embedding's last
    layer) get random weights, so that the control image matters (a fresh ControlNet adds exactly zero)."""
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_pretrained(src)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in [*cn.controlnet_down_blocks, cn.controlnet_mid_block, cn.controlnet_cond_embedding.conv_out]:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.1)
    cn.save_pretrained(dst)
    return dst


def _control(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 64, 64, generator=g) > 0.9).float()  # edge-like binary maps


def test_defaults_are_3ddst_and_output_is_in_range(generator):
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

    assert isinstance(generator.pipe, StableDiffusionControlNetPipeline) and not generator.is_sdxl
    assert isinstance(generator.pipe.scheduler, DDIMScheduler) and generator.resolution == 64
    out = generator(_control(), ["a car", "a chair"], negative_prompt="low quality", num_inference_steps=STEPS,
                    seeds=[1, 2])
    assert out.images.shape == (2, 3, 64, 64) and out.images.dtype == torch.float32
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    assert out.seeds == [1, 2] and out.prompts == ["a car", "a chair"]
    assert out.negative_prompts == ["low quality"] * 2


def test_each_image_has_its_own_seed(generator):
    x = _control(3)
    kw = dict(negative_prompt="bad", num_inference_steps=STEPS, guidance_scale=9.0, eta=1.0)
    batch = generator(x, ["a car", "a car", "a bus"], seeds=[5, 6, 7], **kw).images
    single = generator(x[1:2], "a car", seeds=[6], **kw).images
    assert torch.allclose(batch[1], single[0], atol=1e-4)  # the same image, batched or alone
    again = generator(x, ["a car", "a car", "a bus"], seeds=[5, 6, 7], **kw).images
    assert torch.equal(batch, again)
    other = generator(x[1:2], "a car", seeds=[99], **kw).images
    assert (other[0] - batch[1]).abs().max() > 1e-3


def test_control_image_prompt_and_eta_change_the_result(generator):
    kw = dict(num_inference_steps=STEPS, seeds=[0])
    base = generator(_control(1, 0), "a car", **kw).images
    assert (generator(_control(1, 1), "a car", **kw).images - base).abs().max() > 1e-4
    assert (generator(_control(1, 0), "a red bus", **kw).images - base).abs().max() > 1e-4
    assert (generator(_control(1, 0), "a car", eta=0.0, **kw).images - base).abs().max() > 1e-4
    zero_scale = generator(_control(1, 0), "a car", controlnet_conditioning_scale=0.0, **kw).images
    assert (generator(_control(1, 1), "a car", controlnet_conditioning_scale=0.0, **kw).images
            - zero_scale).abs().max() < 1e-5  # scale 0: the control image is ignored


def test_resizing_and_three_channel_control(generator):
    x = _control(1).expand(-1, 3, -1, -1)
    out = generator(x, "a car", num_inference_steps=STEPS, output_size=48)
    assert out.images.shape == (1, 3, 48, 48)
    small = generator(torch.nn.functional.interpolate(x, size=32), "a car", num_inference_steps=STEPS)
    assert small.images.shape == (1, 3, 32, 32)  # generated at the model's 64 px, returned at the input size


@pytest.mark.parametrize("kwargs, needle", [
    (dict(control_images=torch.zeros(2, 64, 64)), "control_images"),
    (dict(control_images=torch.zeros(0, 1, 64, 64)), "empty"),
    (dict(prompt=["a", "b", "c"]), "prompt: got 3 prompts for 2"),
    (dict(prompt=""), "empty prompt"),
    (dict(seeds=[1]), "seeds: got 1 seeds for 2"),
    (dict(eta=1.5), "eta"),
    (dict(guidance_scale=-1.0), "guidance-scale"),
    (dict(num_inference_steps=0), "num-inference-steps"),
    (dict(resolution=63), "resolution: 63"),
])
def test_argument_errors(generator, kwargs, needle):
    args = dict(control_images=_control(2), prompt="a car")
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle):
        generator(**args)


def test_check_args_and_missing_weights_offline(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--variant"):
        check_controlnet_args(variant="sd4")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedNotFoundError, match="--controlnet.*no-such-org/no-such-controlnet.*offline"):
        ControlNetGenerator.from_pretrained("tiny", "no-such-org/no-such-controlnet")
    with pytest.raises(PretrainedNotFoundError, match="--controlnet.*config.json is missing"):
        (tmp_path / "empty").mkdir()
        ControlNetGenerator.from_pretrained("tiny", str(tmp_path / "empty"))


def _tiny_sdxl(folder):
    from diffusers import (AutoencoderKL, ControlNetModel, EulerDiscreteScheduler,
                           StableDiffusionXLControlNetPipeline, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from adapt3d.diffusion.tiny_models import tiny_clip_tokenizer

    torch.manual_seed(0)
    tok = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=32)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=32, sample_size=64)
    text_cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, projection_dim=32)
    pipe = StableDiffusionXLControlNetPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg)), tokenizer=tok, tokenizer_2=tok,
        unet=unet, controlnet=ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32)),
        scheduler=EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
        add_watermarker=False)
    pipe.save_pretrained(folder / "sdxl")
    pipe.controlnet.save_pretrained(folder / "sdxl-cn0")
    return folder / "sdxl", _live_controlnet(folder / "sdxl-cn0", folder / "sdxl-cn")


def test_sdxl_variant_is_detected_and_runs(tmp_path):
    from diffusers import StableDiffusionXLControlNetPipeline

    base, cn = _tiny_sdxl(tmp_path)
    g = ControlNetGenerator.from_pretrained(str(base), str(cn))  # variant 'auto' reads text_encoder_2
    assert isinstance(g.pipe, StableDiffusionXLControlNetPipeline) and g.is_sdxl
    assert g.source["variant"] == "sdxl"
    out = g(_control(2), "a car", negative_prompt="bad", num_inference_steps=2, seeds=[3, 4])
    assert out.images.shape == (2, 3, 64, 64) and torch.isfinite(out.images).all()
    alone = g(_control(2)[1:], "a car", negative_prompt="bad", num_inference_steps=2, seeds=[4])
    assert torch.allclose(alone.images[0], out.images[1], atol=1e-4)
    other = g(_control(1, 5), "a car", negative_prompt="bad", num_inference_steps=2, seeds=[4])
    assert (other.images[0] - alone.images[0]).abs().max() > 1e-4  # the control image reaches the SDXL UNet
