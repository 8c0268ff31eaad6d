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
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from adapt3d.diffusion.loading import PipelineProperties, prompt_list
from adapt3d.diffusion.options import DiffusionOptions, apply_to_pipeline
from adapt3d.diffusion.sources import (FAMILY_NAMES, ModelSource, check_controlnet_pair, load_controlnet,
                                       load_pipeline, require_family, resolve_model)

__all__ = ["ControlNetGenerator", "ControlNetOutput", "check_controlnet_args", "VARIANTS", "DEFAULT_BASE",
           "DEFAULT_CONTROLNET", "DEFAULT_SDXL_BASE", "DEFAULT_SDXL_CONTROLNET", "DEFAULT_SD3_BASE",
           "DEFAULT_SD3_CONTROLNET", "default_models", "CONTROLNET_FAMILIES", "resolve_controlnet_pair"]

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
CONTROLNET_FAMILIES = ("sd", "sdxl", "sd3")
"""Base-model families the ControlNet generator supports (see :mod:`adapt3d.diffusion.sources`); ``--variant``
names one of them (or ``auto``: the base model's own, read from its files)."""


def default_models(variant: str, control: str = "canny") -> tuple[str, str]:
    """(base, ControlNet) Hugging Face ids used when none is given ('auto' means SD 1.5)."""
    base, controlnets = _DEFAULTS["sd" if variant == "auto" else variant]
    return base, controlnets[control]


def resolve_controlnet_pair(base: str, controlnet: str, options: DiffusionOptions | None = None,
                            variant: str = "auto", base_flag: str = "--diffusion",
                            controlnet_flag: str = "--controlnet",
                            controlnet_config: str | None = None) -> tuple[ModelSource, ModelSource]:
    """(ControlNet source, base source), checked to fit each other and ``variant``, before any weight loads."""
    options = options or DiffusionOptions()
    cn_source = resolve_model(controlnet, "controlnet", controlnet_flag, config=controlnet_config,
                              config_flag="--controlnet-config", variant=options.weights_variant)
    base_source = resolve_model(base, "stable-diffusion", base_flag, config=options.diffusion_config,
                                variant=options.weights_variant)
    require_family(base_source, CONTROLNET_FAMILIES, "ControlNet generation")
    if variant != "auto" and base_source.family in CONTROLNET_FAMILIES and base_source.family != variant:
        raise ValueError(f"--variant {variant}: {base_flag} {base!r} is {FAMILY_NAMES[base_source.family]}, not "
                         f"{FAMILY_NAMES[variant]}; leave --variant at auto (the base model's architecture) or pass "
                         f"--variant {base_source.family}")
    check_controlnet_pair(base_source, cn_source)
    if options.attention_slicing and "sd3" in (variant, base_source.family):
        raise ValueError("--attention-slicing: diffusers' SD3 transformer has no attention slicing; leave the "
                         "option out (--cpu-offload, --vae-slicing and --vae-tiling apply to SD3)")
    return cn_source, base_source


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
        super().__init__(pipe, device, source or {})
        self.notes: list[str] = []
        self.is_sd3 = hasattr(pipe, "transformer") and hasattr(pipe, "text_encoder_3")
        self.is_sdxl = hasattr(pipe, "text_encoder_2") and not self.is_sd3

    @property
    def _denoiser(self):
        return self.pipe.transformer if self.is_sd3 else self.pipe.unet

    @property
    def device(self):
        """Where the pipeline computes (with CPU offload: the GPU, while the weights rest in CPU memory)."""
        return getattr(self.pipe, "_execution_device", None) or self._denoiser.device

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
                        base_flag: str = "--diffusion", controlnet_flag: str = "--controlnet",
                        options: DiffusionOptions | None = None,
                        controlnet_config: str | None = None) -> ControlNetGenerator:
        """Load a base model and a ControlNet (Hugging Face ids, local folders, ``'tiny'``, or single original-layout
        files with ``options.diffusion_config`` / ``controlnet_config``).

        ``variant='auto'`` picks the base model's own architecture, read from its files before loading: SD3 when it
        has a transformer and ``text_encoder_3``, SDXL when it has ``text_encoder_2``, else SD 1.x/2.x. A base and a
        ControlNet of different architectures are refused before loading. ``scheduler='ddim'`` (3D-DST) replaces an
        SD/SDXL checkpoint's scheduler by DDIM with the same betas; ``'keep'`` keeps it; SD3 always keeps its
        flow-matching scheduler. ``options``: precision, weight variant, memory options
        (:mod:`adapt3d.diffusion.options`); ``torch_dtype`` overrides ``options.dtype``. Missing weights raise
        :class:`adapt3d.diffusion.loading.PretrainedNotFoundError` naming the flag and the model.
        """
        check_controlnet_args(variant=variant, prefix="")
        if scheduler not in ("ddim", "keep"):
            raise ValueError(f"scheduler: {scheduler!r} is not one of ('ddim', 'keep')")
        options = options or DiffusionOptions()
        cn_source, base_source = resolve_controlnet_pair(base, controlnet, options, variant, base_flag,
                                                         controlnet_flag, controlnet_config)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        dtype = torch_dtype or options.torch_dtype(dev)
        from diffusers import (DDIMScheduler, StableDiffusion3ControlNetPipeline, StableDiffusionControlNetPipeline,
                               StableDiffusionXLControlNetPipeline)

        kind = base_source.family if variant == "auto" and base_source.family in CONTROLNET_FAMILIES else \
            ("sd" if variant == "auto" else variant)
        if kind == "sd3" and cn_source.family not in (None, "sd3"):
            raise ValueError(f"{controlnet_flag}: {controlnet!r} is not an SD3 ControlNet (SD3ControlNetModel); "
                             "an SD3 base model needs one, e.g. InstantX/SD3-Controlnet-Canny")
        cn = load_controlnet(cn_source, dtype, sd3=kind == "sd3")
        pipeline_cls = {"sdxl": StableDiffusionXLControlNetPipeline, "sd3": StableDiffusion3ControlNetPipeline}.get(
            kind, StableDiffusionControlNetPipeline)
        extra = {} if kind in ("sdxl", "sd3") else {"safety_checker": None, "requires_safety_checker": False}
        try:
            pipe = load_pipeline(pipeline_cls, base_source, dtype, controlnet=cn, **extra)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{base_flag}: {base!r} does not fit the {kind} ControlNet pipeline with "
                             f"{controlnet_flag} {controlnet!r} ({e}); check --variant") from e
        if scheduler == "ddim" and kind != "sd3":
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False, steps_offset=1)
        record = {"base": str(base), "controlnet": str(controlnet), "variant": kind,
                  "scheduler": type(pipe.scheduler).__name__, "dtype": str(dtype).removeprefix("torch.")}
        record.update({k: v for k, v in (("weights_variant", options.weights_variant),
                                         ("diffusion_config", options.diffusion_config),
                                         ("controlnet_config", controlnet_config)) if v is not None})
        generator = cls(pipe, device=None, source=record)
        generator.notes = apply_to_pipeline(pipe, options, dev)
        return generator

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
