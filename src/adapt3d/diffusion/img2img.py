"""Batched, per-image-seeded Stable Diffusion img2img translation (DATID-3D's "pose-aware target generation").

``Img2ImgTranslator`` wraps a diffusers ``StableDiffusionImg2ImgPipeline`` (any SD 1.x / 2.x checkpoint). It takes
generator images in [-1, 1] and returns float images in [0, 1]. Every output image ``k`` has its own seed
``seeds[k]``: its own CPU ``torch.Generator`` draws both the VAE posterior sample and the initial noise, so an image
is regenerated alone, bit for bit, from (source image, prompt, seed, settings) whatever batch it was made in (see
:meth:`Img2ImgTranslator.__call__` for the measured batch/single difference).

Defaults are DATID-3D's: strength 0.7, guidance 8, 50 steps, PNDM scheduler (``skip_prk_steps``), no negative
prompt; fp16 on CUDA. Example::

    t = Img2ImgTranslator.from_pretrained("stabilityai/stable-diffusion-2-1-base", device="cuda")
    out = t(images, "a 3D render of a face in Pixar style", seeds=[0, 1, 2, 3])   # out.images (4, 3, 512, 512)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

import torch
import torch.nn.functional as F

from adapt3d.diffusion.loading import PipelineProperties, download_error, prompt_list, resolve_pretrained

if TYPE_CHECKING:  # diffusers is imported lazily: it takes seconds
    from diffusers import StableDiffusionImg2ImgPipeline

__all__ = ["Img2ImgTranslator", "Img2ImgOutput", "check_img2img_args", "SCHEDULERS"]

SCHEDULERS = ("pndm", "ddim", "keep")
SchedulerName = Literal["pndm", "ddim", "keep"]


@dataclass
class Img2ImgOutput:
    images: torch.Tensor
    """Translated images (B, 3, H, W), float32 in [0, 1], on the CPU."""
    seeds: list[int]
    """The diffusion seed of each image."""
    prompts: list[str] = field(default_factory=list)
    """The prompt of each image."""


def check_img2img_args(prompt: str | Sequence[str] | None = "x", strength: float = 0.7, guidance_scale: float = 8.0,
                       num_inference_steps: int = 50, scheduler: str = "pndm", negative_prompt=None,
                       prefix: str = "--") -> None:
    """Validate translation settings (cheap; call before loading any model). Raises ValueError naming the flag."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt is None or len(prompt) == 0:
        raise ValueError(f"{prefix}prompt: a prompt is required (a non-empty string or a list of them)")
    prompt_list(prompt, len(prompt), f"{prefix}prompt")
    if negative_prompt is not None and not isinstance(negative_prompt, str):
        for p in negative_prompt:
            if not isinstance(p, str):
                raise ValueError(f"{prefix}negative-prompt: must be strings, got {type(p).__name__}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"{prefix}strength: {strength!r} is outside (0, 1]; it is the fraction of the diffusion "
                         "schedule re-noised (DATID-3D: 0.7)")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"{prefix}guidance-scale: {guidance_scale!r} must be a finite number >= 0 "
                         "(<= 1 disables classifier-free guidance; DATID-3D: 8)")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"{prefix}num-inference-steps: {num_inference_steps!r} must be an int >= 1 (DATID-3D: 50)")
    if int(num_inference_steps * strength) < 1:
        raise ValueError(f"{prefix}strength {strength} x {prefix}num-inference-steps {num_inference_steps} runs no "
                         "denoising step; raise one of them so that strength * steps >= 1")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"{prefix}scheduler: {scheduler!r} is not one of {SCHEDULERS}")


def _set_scheduler(pipe, scheduler: str) -> None:
    from diffusers import DDIMScheduler, PNDMScheduler

    if scheduler == "pndm":  # DATID-3D: PNDM with PLMS steps only
        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True,
                                                   set_alpha_to_one=False, steps_offset=1)
    elif scheduler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False, steps_offset=1)


class Img2ImgTranslator(PipelineProperties):
    """Translate generator renders with a ``StableDiffusionImg2ImgPipeline`` (components passed in, or
    :meth:`from_pretrained`)."""

    def __init__(self, pipe: StableDiffusionImg2ImgPipeline, device: torch.device | str | None = None,
                 source: str | None = None) -> None:
        self.pipe = pipe
        if device is not None:
            pipe.to(torch.device(device))
        pipe.set_progress_bar_config(disable=True)
        self.source = source

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, device: torch.device | str | None = None,
                        torch_dtype: torch.dtype | None = None, scheduler: SchedulerName = "pndm",
                        flag: str = "--diffusion") -> Img2ImgTranslator:
        """Load an SD 1.x/2.x checkpoint (Hugging Face id, local folder or ``'tiny'``) for img2img.

        ``torch_dtype`` defaults to float16 on CUDA and float32 otherwise. ``scheduler``: ``'pndm'`` (DATID-3D),
        ``'ddim'`` or ``'keep'`` (the checkpoint's own). The safety checker is not loaded (as in DATID-3D).
        Raises :class:`adapt3d.diffusion.loading.PretrainedNotFoundError` naming the model and how to get it.
        """
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: {scheduler!r} is not one of {SCHEDULERS}")
        name = resolve_pretrained(model_id_or_path, "stable-diffusion", flag)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        dtype = torch_dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        from diffusers import StableDiffusionImg2ImgPipeline

        try:
            with warnings.catch_warnings():  # diffusers 0.42 renamed torch_dtype to dtype; older ones lack dtype
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                pipe = StableDiffusionImg2ImgPipeline.from_pretrained(name, torch_dtype=dtype, safety_checker=None,
                                                                      requires_safety_checker=False)
        except OSError as e:  # download / cache failures
            raise download_error(str(model_id_or_path), "stable-diffusion", flag, e) from e
        _set_scheduler(pipe, scheduler)
        return cls(pipe, device=dev, source=str(model_id_or_path))

    @classmethod
    def from_components(cls, unet, vae, text_encoder, tokenizer, scheduler, scheduler_name: SchedulerName = "pndm",
                        device: torch.device | str | None = None, source: str | None = None) -> Img2ImgTranslator:
        """img2img from already loaded SD components (e.g. an SDS teacher's), sharing their weights."""
        from diffusers import StableDiffusionImg2ImgPipeline

        with warnings.catch_warnings():  # diffusers' notes on configs of the SDS teacher's DDIM scheduler
            warnings.simplefilter("ignore", FutureWarning)
            pipe = StableDiffusionImg2ImgPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                  scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)
            _set_scheduler(pipe, scheduler_name)
        return cls(pipe, device=device, source=source)

    def __call__(self, images: torch.Tensor, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] |
                 None = None, strength: float = 0.7, guidance_scale: float = 8.0, num_inference_steps: int = 50,
                 seeds: Sequence[int] | None = None, output_size: int | None = None,
                 resolution: int | None = None) -> Img2ImgOutput:
        """Translate ``images`` (B, 3, H, W) in [-1, 1] in one batch; returns (B, 3, S, S) in [0, 1] on the CPU.

        ``seeds`` (default 0..B-1) gives each output its own generator, so image k equals the single-image call
        ``self(images[k:k+1], prompt_k, seeds=[seeds[k]])`` (on CPU float32 the tiny test models agree to
        <= 1e-5; batched convolutions may round differently). Inputs are resized (bilinear, antialiased) to
        ``resolution`` (default :attr:`resolution`) and outputs to ``output_size`` (default: the input size).
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected a (B, 3, H, W) tensor in [-1, 1], got {shape}")
        b = images.shape[0]
        if b == 0:
            raise ValueError("images: empty batch (B = 0)")
        prompts = prompt_list(prompt, b, "prompt")
        negatives = prompt_list(negative_prompt, b, "negative_prompt", allow_none=True)
        check_img2img_args(prompts, strength, guidance_scale, num_inference_steps, prefix="")
        seeds = self.batch_seeds(seeds, b)
        res = self.generation_resolution(resolution)
        out_hw = (output_size, output_size) if output_size else tuple(images.shape[-2:])

        x = (images.detach().float().clamp(-1, 1) + 1) / 2  # (B, 3, H, W) in [0, 1], what diffusers expects
        x = self.resize_square(x, res)
        # CPU generators: the same seed gives the same noise on any device.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        result = self.pipe(prompt=prompts, image=x.to(self.device, self.dtype), negative_prompt=negatives,
                           strength=float(strength), guidance_scale=float(guidance_scale),
                           num_inference_steps=int(num_inference_steps), generator=generators, output_type="pt")
        out = result.images.float().cpu()  # (B, 3, res, res) in [0, 1]
        if tuple(out.shape[-2:]) != out_hw:
            out = F.interpolate(out, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
        return Img2ImgOutput(images=out.clamp(0, 1).contiguous(), seeds=seeds, prompts=prompts)
