"""Diffusion back-ends shared by every system: Stable Diffusion img2img translation and weight resolution.

diffusers is imported lazily (only when a model is loaded), so validating arguments stays cheap.
"""

from adapt3d.diffusion.img2img import SCHEDULERS, Img2ImgOutput, Img2ImgTranslator, check_img2img_args
from adapt3d.diffusion.loading import PretrainedNotFoundError, is_offline, resolve_pretrained

__all__ = [
    "SCHEDULERS",
    "Img2ImgOutput",
    "Img2ImgTranslator",
    "check_img2img_args",
    "PretrainedNotFoundError",
    "is_offline",
    "resolve_pretrained",
]
