"""Helpers for tests and built-in demos: tiny random-weight models built locally (no download)."""

from adapt3d.testing.tiny_models import (
    TINY_CLIP_IMAGE_SIZE,
    TINY_IMAGE_SIZE,
    default_tiny_models_dir,
    ensure_tiny_models,
    is_tiny_model,
    make_tiny_clip,
    make_tiny_controlnet,
    make_tiny_stable_diffusion,
    tiny_clip_tokenizer,
)

__all__ = [
    "TINY_CLIP_IMAGE_SIZE",
    "TINY_IMAGE_SIZE",
    "default_tiny_models_dir",
    "ensure_tiny_models",
    "is_tiny_model",
    "make_tiny_clip",
    "make_tiny_controlnet",
    "make_tiny_stable_diffusion",
    "tiny_clip_tokenizer",
]
