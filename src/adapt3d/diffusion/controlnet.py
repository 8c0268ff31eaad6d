"""Batched, per-image-seeded ControlNet text-to-image generation (3D-DST's "visual prompt" generation).

``ControlNetGenerator`` wraps a diffusers ``StableDiffusionControlNetPipeline`` (SD 1.x/2.x, 3D-DST's default:
SD 1.5 + ``control_v11p_sd15_canny``), ``StableDiffusionXLControlNetPipeline`` (SDXL) or
``StableDiffusion3ControlNetPipeline`` with an ``SD3ControlNetModel`` (SD3, as 3D-DST's newer
``controlnet_{canny,depth}_sd3`` back-ends: ``InstantX/SD3-Controlnet-Canny`` / ``-Depth`` on
``stable-diffusion-3-medium``). It takes control images (B, 3, H, W) in [0, 1] (Canny edges, depth, ...) and returns
float images in [0, 1]. Image ``k`` has its own CPU ``torch.Generator`` seeded with ``seeds[k]``: it draws the initial
latents and, with DDIM ``eta > 0``, every step's noise, so an image can be regenerated alone from (control image,
prompt, seed, settings) whatever batch it was in (up to floating-point rounding: batched matrix products may round
differently).

SD3 differences: its flow-matching Euler scheduler is kept (``scheduler='ddim'`` does not apply; ``eta`` is
unused), and the pipeline encodes the control image with the VAE. diffusers draws that latent as a sample of the VAE
posterior from the *global* random generator, which would tie an image to its batch and to unrelated random state;
here the posterior mean is used instead (deterministic, per image).

Defaults are 3D-DST's: DDIM, 20 steps, eta 1.0, guidance 9.0, control scale 1.0 (fp16 on CUDA, fp32 on CPU)::

    g = ControlNetGenerator.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5",
                                            "lllyasviel/control_v11p_sd15_canny", device="cuda")
    out = g(edges, "a photo of a car, best quality, extremely detailed", seeds=[0, 1])   # out.images (2, 3, 512, 512)
"""

from __future__ import annotations

import contextlib
import math
import types
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from adapt3d.diffusion.loading import PipelineProperties, download_error, prompt_list, resolve_pretrained

__all__ = ["ControlNetGenerator", "ControlNetOutput", "check_controlnet_args", "VARIANTS", "DEFAULT_BASE",
           "DEFAULT_CONTROLNET", "DEFAULT_SDXL_BASE", "DEFAULT_SDXL_CONTROLNET", "DEFAULT_SD3_BASE",
           "DEFAULT_SD3_CONTROLNET", "default_models"]

VARIANTS = ("auto", "sd", "sdxl", "sd3")
DEFAULT_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CONTROLNET = "lllyasviel/control_v11p_sd15_canny"
DEFAULT_SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_SDXL_CONTROLNET = "diffusers/controlnet-canny-sdxl-1.0"
DEFAULT_SD3_BASE = "stabilityai/stable-diffusion-3-medium-diffusers"
DEFAULT_SD3_CONTROLNET = "InstantX/SD3-Controlnet-Canny"
_DEFAULTS = {  # variant -> (base, {control kind: ControlNet})
    "sd": (DEFAULT_BASE, {"canny": DEFAULT_CONTROLNET, "depth": "lllyasviel/control_v11f1p_sd15_depth"}),
    "sdxl": (DEFAULT_SDXL_BASE, {"canny": DEFAULT_SDXL_CONTROLNET, "depth": "diffusers/controlnet-depth-sdxl-1.0"}),
    "sd3": (DEFAULT_SD3_BASE, {"canny": DEFAULT_SD3_CONTROLNET, "depth": "InstantX/SD3-Controlnet-Depth"}),
}


def default_models(variant: str, control: str = "canny") -> tuple[str, str]:
    """(base, ControlNet) Hugging Face ids used when none is given ('auto' means SD 1.5)."""
    base, controlnets = _DEFAULTS["sd" if variant == "auto" else variant]
    return base, controlnets[control]


@dataclass
class ControlNetOutput:
    images: torch.Tensor
    """Generated images (B, 3, H, W), float32 in [0, 1], on the CPU."""
    seeds: list[int]
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] | None = None


def check_controlnet_args(guidance_scale: float = 9.0, num_inference_steps: int = 20, eta: float = 1.0,
                          controlnet_conditioning_scale: float = 1.0, variant: str = "auto",
                          prefix: str = "--") -> None:
    """Validate generation settings (cheap; call before loading a model). Raises ValueError naming the flag."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"{prefix}guidance-scale: {guidance_scale!r} must be a finite number >= 0 (3D-DST: 9)")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"{prefix}num-inference-steps: {num_inference_steps!r} must be an int >= 1 (3D-DST: 20)")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1:
        raise ValueError(f"{prefix}eta: {eta!r} must be in [0, 1] (DDIM; 3D-DST: 1.0)")
    if isinstance(controlnet_conditioning_scale, bool) or not isinstance(controlnet_conditioning_scale, (int, float)) \
            or not math.isfinite(controlnet_conditioning_scale) or controlnet_conditioning_scale < 0:
        raise ValueError(f"{prefix}control-scale: {controlnet_conditioning_scale!r} must be a finite number >= 0")
    if variant not in VARIANTS:
        raise ValueError(f"{prefix}variant: {variant!r} is not one of {VARIANTS}")


def _detect_variant(name: str) -> str:
    """'sd3' when the base checkpoint has a transformer and a third text encoder, 'sdxl' when it has a second text
    encoder (model_index.json), else 'sd'."""
    from diffusers import DiffusionPipeline

    try:
        config = DiffusionPipeline.load_config(name)
    except OSError:
        return "sd"
    cls = str(config.get("_class_name", ""))
    if "StableDiffusion3" in cls or ("transformer" in config and "text_encoder_3" in config):
        return "sd3"
    return "sdxl" if "text_encoder_2" in config or "XL" in cls else "sd"


@contextlib.contextmanager
def _vae_posterior_mean(vae):
    """Within the block ``vae.encode(x).latent_dist.sample()`` returns the posterior mean (no global RNG draw)."""
    original = vae.encode

    def encode(x, *args, **kwargs):
        out = original(x, *args, **kwargs)
        dist = out.latent_dist
        return types.SimpleNamespace(latent_dist=types.SimpleNamespace(sample=lambda generator=None: dist.mode(),
                                                                       mode=dist.mode, mean=dist.mean))

    vae.encode = encode
    try:
        yield
    finally:
        del vae.encode  # back to the class method


class ControlNetGenerator(PipelineProperties):
    """Generate images from control images with a diffusers ControlNet pipeline (passed in, or
    :meth:`from_pretrained`)."""

    def __init__(self, pipe, device: torch.device | str | None = None, source: dict | None = None) -> None:
        self.pipe = pipe
        if device is not None:
            pipe.to(torch.device(device))
        pipe.set_progress_bar_config(disable=True)
        self.source = source or {}
        self.is_sd3 = hasattr(pipe, "transformer") and hasattr(pipe, "text_encoder_3")
        self.is_sdxl = hasattr(pipe, "text_encoder_2") and not self.is_sd3

    @property
    def _denoiser(self):
        return self.pipe.transformer if self.is_sd3 else self.pipe.unet

    @property
    def device(self):
        return self._denoiser.device

    @property
    def dtype(self):
        return self._denoiser.dtype

    @property
    def resolution(self) -> int:
        """Native image size in pixels: the denoiser's sample size x the VAE factor."""
        return int(self._denoiser.config.sample_size) * int(self.pipe.vae_scale_factor)

    @classmethod
    def from_pretrained(cls, base: str = DEFAULT_BASE, controlnet: str = DEFAULT_CONTROLNET, *,
                        variant: Literal["auto", "sd", "sdxl", "sd3"] = "auto",
                        device: torch.device | str | None = None,
                        torch_dtype: torch.dtype | None = None, scheduler: Literal["ddim", "keep"] = "ddim",
                        base_flag: str = "--diffusion", controlnet_flag: str = "--controlnet") -> ControlNetGenerator:
        """Load a base checkpoint and a ControlNet (Hugging Face ids, local folders or ``'tiny'``).

        ``variant='auto'`` picks SD3 when the base has a transformer and ``text_encoder_3``, SDXL when it has
        ``text_encoder_2``. ``scheduler='ddim'`` (3D-DST) replaces an SD/SDXL checkpoint's scheduler by DDIM with the
        same betas; ``'keep'`` keeps it; SD3 always keeps its flow-matching scheduler. Missing
        weights raise :class:`adapt3d.diffusion.loading.PretrainedNotFoundError` naming the flag and the model.
        """
        check_controlnet_args(variant=variant, prefix="")
        if scheduler not in ("ddim", "keep"):
            raise ValueError(f"scheduler: {scheduler!r} is not one of ('ddim', 'keep')")
        cn_name = resolve_pretrained(controlnet, "controlnet", controlnet_flag)
        base_name = resolve_pretrained(base, "stable-diffusion", base_flag)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        dtype = torch_dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        from diffusers import (ControlNetModel, DDIMScheduler, SD3ControlNetModel, StableDiffusion3ControlNetPipeline,
                               StableDiffusionControlNetPipeline, StableDiffusionXLControlNetPipeline)

        kind = _detect_variant(base_name) if variant == "auto" else variant
        with warnings.catch_warnings():  # diffusers 0.42 renamed torch_dtype to dtype
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            cn_cls = SD3ControlNetModel if kind == "sd3" else ControlNetModel
            try:
                cn = cn_cls.from_pretrained(cn_name, torch_dtype=dtype)
            except OSError as e:
                raise download_error(str(controlnet), "controlnet", controlnet_flag, e) from e
            except (TypeError, ValueError) as e:
                raise ValueError(f"{controlnet_flag}: {controlnet!r} is not a {cn_cls.__name__} ({e}); check "
                                 "--variant") from e
            pipeline_cls = {"sdxl": StableDiffusionXLControlNetPipeline, "sd3": StableDiffusion3ControlNetPipeline}.get(
                kind, StableDiffusionControlNetPipeline)
            extra = {} if kind in ("sdxl", "sd3") else {"safety_checker": None, "requires_safety_checker": False}
            try:
                pipe = pipeline_cls.from_pretrained(base_name, controlnet=cn, torch_dtype=dtype, **extra)
            except OSError as e:
                raise download_error(str(base), "stable-diffusion", base_flag, e) from e
            except (TypeError, ValueError) as e:
                raise ValueError(f"{base_flag}: {base!r} does not fit the {kind} ControlNet pipeline with "
                                 f"{controlnet_flag} {controlnet!r} ({e}); check --variant") from e
        if scheduler == "ddim" and kind != "sd3":
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False, steps_offset=1)
        return cls(pipe, device=dev, source={"base": str(base), "controlnet": str(controlnet), "variant": kind,
                                             "scheduler": type(pipe.scheduler).__name__})

    def __call__(self, control_images: torch.Tensor, prompt: str | Sequence[str],
                 negative_prompt: str | Sequence[str] | None = None, guidance_scale: float = 9.0,
                 num_inference_steps: int = 20, eta: float = 1.0, seeds: Sequence[int] | None = None,
                 controlnet_conditioning_scale: float = 1.0, resolution: int | None = None,
                 output_size: int | None = None) -> ControlNetOutput:
        """Generate one image per control image (B, 1 or 3, H, W) in [0, 1]; returns (B, 3, S, S) in [0, 1].

        Control images are resized (bilinear, antialiased) to ``resolution`` (default :attr:`resolution`), the
        size the model generates at; outputs are resized to ``output_size`` (default: the control image size).
        ``seeds`` (default 0..B-1): one generator per image (see the module docstring).
        """
        x = control_images
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"control_images: expected a (B, 1 or 3, H, W) tensor in [0, 1], got {shape}")
        b = x.shape[0]
        if b == 0:
            raise ValueError("control_images: empty batch (B = 0)")
        prompts = prompt_list(prompt, b, "prompt")
        negatives = prompt_list(negative_prompt, b, "negative_prompt", allow_none=True)
        check_controlnet_args(guidance_scale, num_inference_steps, eta, controlnet_conditioning_scale, prefix="")
        seeds = self.batch_seeds(seeds, b)
        res = self.generation_resolution(resolution)
        out_hw = (output_size, output_size) if output_size else tuple(x.shape[-2:])
        x = x.detach().float().clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self.resize_square(x, res)
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        kwargs = dict(prompt=prompts, negative_prompt=negatives, height=res, width=res,
                      guidance_scale=float(guidance_scale), num_inference_steps=int(num_inference_steps),
                      controlnet_conditioning_scale=float(controlnet_conditioning_scale), generator=generators,
                      output_type="pt")
        if self.is_sd3:  # flow matching: no eta; the pipeline VAE-encodes control_image (here: posterior mean)
            with _vae_posterior_mean(self.pipe.vae):
                result = self.pipe(control_image=x.to(self.device, self.dtype), **kwargs)
        else:
            result = self.pipe(image=x.to(self.device, self.dtype), eta=float(eta), **kwargs)
        out = result.images.float().cpu()  # (B, 3, res, res) in [0, 1]
        if tuple(out.shape[-2:]) != out_hw:
            out = F.interpolate(out, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
        return ControlNetOutput(images=out.clamp(0, 1).contiguous(), seeds=seeds, prompts=prompts,
                                negative_prompts=negatives)
