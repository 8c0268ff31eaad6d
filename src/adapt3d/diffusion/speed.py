"""Speed settings of the diffusers models adapt3d loads (UNet, ControlNet, VAE), with the reference kept.

:func:`set_attention` picks the attention kernel of every attention layer: ``"sdpa"`` runs
``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels on GPUs; diffusers' default
on PyTorch 2), ``"classic"`` the explicit ``softmax(QK^T / sqrt(d)) V`` (``AttnProcessor``), which materialises
the attention matrix: the reference. :func:`set_channels_last` stores convolution weights and activations in
NHWC (faster cuDNN kernels on tensor-core GPUs). Both change rounding only; the tests check agreement.

    pipe = Img2ImgTranslator.from_pretrained(...).pipe
    optimize_pipeline(pipe, attention="sdpa", channels_last=True)
"""

from __future__ import annotations

import torch

__all__ = ["ATTENTION_IMPLS", "set_attention", "set_channels_last", "optimize_pipeline", "attention_impl"]

ATTENTION_IMPLS = ("sdpa", "classic")
_MODELS = ("unet", "controlnet", "vae")


def _models(pipe_or_model) -> list:
    if hasattr(pipe_or_model, "set_attn_processor"):
        return [pipe_or_model]
    return [m for m in (getattr(pipe_or_model, n, None) for n in _MODELS) if m is not None]


def set_attention(pipe_or_model, impl: str = "sdpa") -> list[str]:
    """Set the attention kernel of a pipeline's UNet / ControlNet / VAE (or of one model); returns the models set."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention: {impl!r} is not one of {ATTENTION_IMPLS}")
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    done = []
    for model in _models(pipe_or_model):
        model.set_attn_processor(AttnProcessor2_0() if impl == "sdpa" else AttnProcessor())
        done.append(type(model).__name__)
    return done


def attention_impl(model) -> str:
    """'sdpa', 'classic' or 'mixed' / 'other' for a model's attention processors."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    kinds = {type(p) for p in model.attn_processors.values()}
    if kinds == {AttnProcessor2_0}:
        return "sdpa"
    if kinds == {AttnProcessor}:
        return "classic"
    return "mixed" if len(kinds) > 1 else "other"


def set_channels_last(pipe_or_model, enabled: bool = True) -> list[str]:
    """Store the models' weights channels-last (or back to contiguous); returns the models changed."""
    fmt = torch.channels_last if enabled else torch.contiguous_format
    done = []
    for model in _models(pipe_or_model):
        model.to(memory_format=fmt)
        done.append(type(model).__name__)
    return done


def optimize_pipeline(pipe, attention: str = "sdpa", channels_last: bool = False) -> dict:
    """Apply :func:`set_attention` and, when asked, :func:`set_channels_last`; returns what was set."""
    return {"attention": attention, "models": set_attention(pipe, attention),
            "channels_last": set_channels_last(pipe, True) if channels_last else []}
