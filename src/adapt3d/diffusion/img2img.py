"""Batched, per-image-seeded Stable Diffusion img2img translation (DATID-3D's "pose-aware target generation").

``Img2ImgTranslator`` wraps a diffusers ``StableDiffusionImg2ImgPipeline`` (any SD 1.x / 2.x checkpoint) or
``StableDiffusionXLImg2ImgPipeline`` (SDXL base or refiner, chosen from the model's own files). It takes
generator images in [-1, 1] and returns float images in [0, 1]. Every output image ``k`` has its own seed
``seeds[k]``: its own CPU ``torch.Generator`` draws both the VAE posterior sample and the initial noise, so an image
is regenerated alone, bit for bit, from (source image, prompt, seed, settings) whatever batch it was made in (see
:meth:`Img2ImgTranslator.__call__` for the measured batch/single difference).

Defaults are DATID-3D's: strength 0.7, guidance 8, 50 steps, PNDM scheduler (``skip_prk_steps``), no negative
prompt; fp16 on CUDA (see :class:`adapt3d.diffusion.options.DiffusionOptions` for precision, weight variants,
single-file checkpoints and memory options). Example::

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

from adapt3d.diffusion.loading import PipelineProperties, prompt_list
from adapt3d.diffusion.options import DiffusionOptions, apply_to_pipeline
from adapt3d.diffusion.sources import load_pipeline, require_family, resolve_model

if TYPE_CHECKING:  # diffusers is imported lazily: it takes seconds
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

__all__ = ["Img2ImgTranslator", "Img2ImgOutput", "check_img2img_args", "SCHEDULERS"]

SCHEDULERS = ("pndm", "ddim", "keep")
IMG2IMG_FAMILIES = ("sd", "sdxl", "sdxl-refiner")
"""Model families img2img translation supports (see :mod:`adapt3d.diffusion.sources`)."""
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
    """Translate generator renders with an SD / SDXL img2img pipeline (passed in, or :meth:`from_pretrained`)."""

    def __init__(self, pipe: StableDiffusionImg2ImgPipeline | StableDiffusionXLImg2ImgPipeline,
                 device: torch.device | str | None = None, source: str | None = None) -> None:
        super().__init__(pipe, device, source)
        self.model_source = None  # the resolved ModelSource when made by from_pretrained
        self.notes: list[str] = []

    @classmethod
    def from_pretrained(cls, model_id_or_path: str, device: torch.device | str | None = None,
                        torch_dtype: torch.dtype | None = None, scheduler: SchedulerName = "pndm",
                        flag: str = "--diffusion", options: DiffusionOptions | None = None) -> Img2ImgTranslator:
        """Load an SD 1.x/2.x or SDXL (base or refiner) model for img2img: Hugging Face id, local folder,
        ``'tiny'``, or a single ``.safetensors``/``.ckpt`` in the original layout (with ``options.diffusion_config``).

        The architecture is read from the folder / file first: SDXL loads ``StableDiffusionXLImg2ImgPipeline`` (two
        text encoders, size and crop conditioning), anything else that is not SD 1.x/2.x is refused before loading.
        ``torch_dtype`` overrides ``options.dtype`` (default: fp16 on CUDA, fp32 otherwise). ``scheduler``:
        ``'pndm'`` (DATID-3D), ``'ddim'`` or ``'keep'`` (the checkpoint's own). ``options`` also carries the weight
        variant and the memory options (:mod:`adapt3d.diffusion.options`). The safety checker is not loaded (as in
        DATID-3D). Raises :class:`adapt3d.diffusion.loading.PretrainedNotFoundError` naming the model and how to
        get it.
        """
        if scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler: {scheduler!r} is not one of {SCHEDULERS}")
        options = options or DiffusionOptions()
        dev = torch.device(device) if device is not None else torch.device("cpu")
        source = resolve_model(model_id_or_path, "stable-diffusion", flag, config=options.diffusion_config,
                               variant=options.weights_variant)
        require_family(source, IMG2IMG_FAMILIES, "img2img")
        dtype = torch_dtype or options.torch_dtype(dev)
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

        if source.family in ("sdxl", "sdxl-refiner"):
            pipe = load_pipeline(StableDiffusionXLImg2ImgPipeline, source, dtype)
        else:
            pipe = load_pipeline(StableDiffusionImg2ImgPipeline, source, dtype, safety_checker=None,
                                 requires_safety_checker=False)
        _set_scheduler(pipe, scheduler)
        translator = cls(pipe, device=None, source=str(model_id_or_path))
        translator.model_source = source
        translator.notes = apply_to_pipeline(pipe, options, dev)
        return translator

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
                 resolution: int | None = None, s2g=None) -> Img2ImgOutput:
        """Translate ``images`` (B, 3, H, W) in [-1, 1] in one batch; returns (B, 3, S, S) in [0, 1] on the CPU.

        ``seeds`` (default 0..B-1) gives each output its own generator, so image k equals the single-image call
        ``self(images[k:k+1], prompt_k, seeds=[seeds[k]])`` (on CPU float32 the tiny test models agree to
        <= 1e-5; batched convolutions may round differently). ``s2g``: an
        :class:`adapt3d.diffusion.s2g.S2GSchedule` (specialised-to-general sampling) or None. Inputs are resized (bilinear, antialiased) to
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
        kwargs = dict(prompt=prompts, image=x.to(self.device, self.dtype), negative_prompt=negatives,
                      strength=float(strength), guidance_scale=float(guidance_scale),
                      num_inference_steps=int(num_inference_steps), generator=generators, output_type="pt")
        if s2g is not None:
            from adapt3d.diffusion.s2g import s2g_pipeline_kwargs
            prompt_list(list(s2g.general_prompts), b, "s2g.general_prompts")
            kwargs.update(s2g_pipeline_kwargs(self.pipe, s2g, negatives, strength, num_inference_steps,
                                              guidance_scale, self.device, self.dtype))
        result = self.pipe(**kwargs)
        out = result.images.float().cpu()  # (B, 3, res, res) in [0, 1]
        if tuple(out.shape[-2:]) != out_hw:
            out = F.interpolate(out, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
        return Img2ImgOutput(images=out.clamp(0, 1).contiguous(), seeds=seeds, prompts=prompts)
