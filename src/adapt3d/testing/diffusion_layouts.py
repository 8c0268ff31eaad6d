"""Tiny diffusion models in the layouts users download and share, for tests of :mod:`adapt3d.diffusion.sources`.

- :func:`build_tiny_sdxl`: an SDXL pipeline folder (``save_pretrained``): two CLIP text encoders of different widths
  (32 and 48, so that single-file loading can tell them apart, like SDXL's 768 and 1280), a UNet with
  ``addition_embed_type='text_time'`` (6 size/crop ids of 8 channels + the 48-dim pooled embedding), the SD VAE
  layout; 64 px images, 32x32 latents. ``refiner=True`` drops the first text encoder (the refiner's layout).
- :func:`build_tiny_sdxl_controlnet`: a ControlNet made from that UNet (an SDXL ControlNet).
- :func:`build_tiny_sd_factor8` / :func:`build_tiny_controlnet_original`: an SD 1.x pipeline whose VAE downsamples
  8x (as real SD) and a ControlNet for it with the standard 4-level hint embedding, the only one the original
  ControlNet file layout can hold.
- :func:`write_variant_folder`: a copy of a pipeline folder saved as diffusers' ``fp16`` weight variant
  (``*.fp16.safetensors``), with or without the standard files.

Single files in the original LDM layout: :mod:`adapt3d.testing.ldm_layout`. Random weights; seeded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from adapt3d.diffusion.tiny_models import tiny_clip_tokenizer

__all__ = ["build_tiny_sdxl", "build_tiny_sdxl_controlnet", "build_tiny_sd_factor8",
           "build_tiny_controlnet_original", "write_variant_folder"]


def _text_config(tok, hidden: int, **kw):
    from transformers import CLIPTextConfig
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, projection_dim=hidden, **kw)


def _vae(levels: int = 2):
    from diffusers import AutoencoderKL
    channels = (32, 64) if levels == 2 else (32, 32, 64, 64)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=channels,
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, norm_num_groups=32, sample_size=64)


def _sdxl_unet(time_ids: int = 6):
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=80 if time_ids == 6 else 48, attention_head_dim=(2, 4), norm_num_groups=32,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=time_ids * 8 + 48)


def build_tiny_sdxl(folder: str | os.PathLike, seed: int = 0, refiner: bool = False) -> Path:
    """Save a tiny SDXL img2img pipeline (base, or the refiner's layout) to ``folder``; returns it."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = tiny_clip_tokenizer()
        te1 = None if refiner else CLIPTextModel(_text_config(tok, 32))
        te2 = CLIPTextModelWithProjection(_text_config(tok, 48))
        unet = _sdxl_unet(5 if refiner else 6)
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           steps_offset=1, timestep_spacing="leading")
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=None if refiner else tok, tokenizer_2=tok,
            unet=unet, scheduler=scheduler, requires_aesthetics_score=refiner, force_zeros_for_empty_prompt=True)
        pipe.save_pretrained(folder)
    return Path(folder)


def _unzero(cn) -> None:
    """Small random weights in a ControlNet's zero convolutions, so that the control image matters."""
    with torch.no_grad():
        for conv in [cn.controlnet_cond_embedding.conv_out, cn.controlnet_mid_block, *cn.controlnet_down_blocks]:
            conv.weight.normal_(0.0, 0.05)
            conv.bias.normal_(0.0, 0.05)


def build_tiny_sdxl_controlnet(sdxl_folder: str | os.PathLike, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a ControlNet copied from the tiny SDXL UNet (conditioning images 64 px, 2x downsampling)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cn = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(sdxl_folder, subfolder="unet"),
                                       conditioning_embedding_out_channels=(16, 32))
        _unzero(cn)
        cn.save_pretrained(folder)
    return Path(folder)


def build_tiny_sd_factor8(folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a tiny SD 1.x pipeline whose VAE downsamples 8x (64 px images, 8x8 latents)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = tiny_clip_tokenizer()
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
            norm_num_groups=32)
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  set_alpha_to_one=False, steps_offset=1, skip_prk_steps=True)
        StableDiffusionPipeline(unet=unet, vae=_vae(levels=4), text_encoder=CLIPTextModel(_text_config(tok, 32)),
                                tokenizer=tok, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                requires_safety_checker=False).save_pretrained(folder)
    return Path(folder)


def build_tiny_controlnet_original(sd_folder: str | os.PathLike, folder: str | os.PathLike, seed: int = 0) -> Path:
    """Save a ControlNet for :func:`build_tiny_sd_factor8` with the standard 4-level (8x) hint embedding."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        cn = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(sd_folder, subfolder="unet"),
                                       conditioning_embedding_out_channels=(8, 8, 16, 16))
        _unzero(cn)
        cn.save_pretrained(folder)
    return Path(folder)


def write_variant_folder(src: str | os.PathLike, dst: str | os.PathLike, variant: str = "fp16",
                         keep_standard: bool = False) -> Path:
    """Copy the pipeline folder ``src`` to ``dst`` with its weights saved in float16 as ``variant`` files
    (``unet/diffusion_pytorch_model.fp16.safetensors``, ``text_encoder/model.fp16.safetensors``, ...);
    ``keep_standard`` also writes the standard float32 files."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(src)
    if keep_standard:
        pipe.save_pretrained(dst)
    pipe.to(torch.float16).save_pretrained(dst, variant=variant)
    return Path(dst)
