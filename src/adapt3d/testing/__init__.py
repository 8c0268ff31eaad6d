"""Helpers for tests: the pytest fixtures (:mod:`adapt3d.testing.fixtures`) and, re-exported, the tiny random-weight
model builders of :mod:`adapt3d.diffusion.tiny_models` (which the built-in ``tiny`` demos also use).

The top layer: production code never imports this package (``tests/test_layers.py`` checks it)."""

from adapt3d.diffusion.tiny_models import (
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
