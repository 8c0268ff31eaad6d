"""Tiny random-weight Stable Diffusion 3 + SD3 ControlNet folders, in diffusers' ``save_pretrained`` layout.

For tests of the SD3 ControlNet path (``--variant sd3``) without downloads: an ``SD3Transformer2DModel`` (2 layers,
width 16), a 2-level ``AutoencoderKL`` (8 latent channels, factor 2), two ``CLIPTextModelWithProjection`` (width
32, projection 32, the byte-level tokenizer of :func:`adapt3d.diffusion.tiny_models.tiny_clip_tokenizer`), a
``T5EncoderModel`` (width 64) with a character-level ``T5TokenizerFast`` built in memory, and
``FlowMatchEulerDiscreteScheduler``. Images are 64 x 64 px (latents 32 x 32, 2 x 2 patches). The ControlNet
(``SD3ControlNetModel``, 1 layer) matches the transformer; its zero-initialised output layers get small random
weights so the control image matters (as :func:`adapt3d.diffusion.tiny_models.make_tiny_controlnet` does).
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch

__all__ = ["make_tiny_sd3", "make_tiny_sd3_controlnet", "tiny_t5_tokenizer", "TINY_SD3_IMAGE_SIZE"]

TINY_SD3_IMAGE_SIZE = 64
_WIDTH = dict(sample_size=TINY_SD3_IMAGE_SIZE // 2, patch_size=2, in_channels=8, out_channels=8,
              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
              pooled_projection_dim=64, pos_embed_max_size=32)


def tiny_t5_tokenizer():
    """A character-level T5TokenizerFast (printable ASCII + specials), built without files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + [c for c in string.printable if not c.isspace()]
    tok = Tokenizer(models.Unigram([(p, 0.0 if k < 3 else -1.0) for k, p in enumerate(pieces)], unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                           extra_ids=0, model_max_length=77)


def _transformer(seed: int):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(num_layers=2, **_WIDTH)


def make_tiny_sd3(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny ``StableDiffusion3Pipeline`` folder at ``path`` (overwritten); returns ``path``."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from adapt3d.diffusion.tiny_models import tiny_clip_tokenizer

    path = Path(path)
    transformer = _transformer(seed)
    tok = tiny_clip_tokenizer()
    clip_cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, projection_dim=32)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**clip_cfg))
    t5_tok = tiny_t5_tokenizer()
    text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(t5_tok), d_model=64, d_kv=8, d_ff=64, num_layers=1,
                                             num_heads=2, pad_token_id=0, eos_token_id=1,
                                             decoder_start_token_id=0))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(16, 32),
                        layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=16,
                        sample_size=TINY_SD3_IMAGE_SIZE, use_quant_conv=False, use_post_quant_conv=False,
                        shift_factor=0.0609, scaling_factor=1.5035)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                    text_encoder=text_encoder, tokenizer=tok, text_encoder_2=text_encoder_2,
                                    tokenizer_2=tiny_clip_tokenizer(), text_encoder_3=text_encoder_3,
                                    tokenizer_3=t5_tok)
    pipe.save_pretrained(path)
    return path


def make_tiny_sd3_controlnet(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny ``SD3ControlNetModel`` folder matching :func:`make_tiny_sd3` at ``path``; returns ``path``."""
    from diffusers import SD3ControlNetModel

    path = Path(path)
    torch.manual_seed(seed + 1)
    cn = SD3ControlNetModel(num_layers=1, **{k: v for k, v in _WIDTH.items() if k != "out_channels"},
                            out_channels=8)
    with torch.no_grad():
        for name, p in cn.named_parameters():
            if p.dim() and p.abs().max() == 0:  # zero-initialised layers: small random weights
                p.normal_(0.0, 0.05)
    cn.save_pretrained(path)
    return path
