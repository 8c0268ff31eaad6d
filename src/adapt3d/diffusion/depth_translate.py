"""Depth-guided translation of generator renders (PODIA-3D's pose-preserved text-to-image diffusion), fed with the
generator's *own* depth and mask instead of a monocular estimate.

- :class:`Depth2ImgTranslator`: Stable Diffusion 2 depth (``StableDiffusionDepth2ImgPipeline``, e.g.
  ``stabilityai/stable-diffusion-2-depth``, PODIA-3D's model). Its UNet has a 5th input channel: the depth map at the
  latent size in [-1, 1] (:func:`adapt3d.diffusion.depth.depth2img_depth_map`). The pipeline's own DPT estimator is
  never loaded (``depth_estimator=None``): the map diffusers would compute is replaced by ours, so what the UNet sees
  is exactly the generator's normalised disparity.
- :class:`DepthControlNetTranslator`: img2img with an SD 1.5 / SDXL depth ControlNet
  (``StableDiffusionControlNetImg2ImgPipeline`` / ``StableDiffusionXLControlNetImg2ImgPipeline``), control image
  :func:`adapt3d.diffusion.depth.controlnet_depth_image` at the generation size.

Both take the same call as :class:`~adapt3d.diffusion.img2img.Img2ImgTranslator` plus ``depth`` (B, 1, h, w) (ray
distances, world units) and ``mask`` (B, 1, h, w) (accumulated opacity), one CPU generator per output seed, and
``strength`` up to 1.0 (1.0 = start from pure noise; the pose then comes from the depth alone).

Specialised-to-general sampling (PODIA-3D, :class:`S2GSchedule`): the first ``switch_fraction`` of the denoising
steps that run use the specialised prompt (e.g. "a 3D render of the face of a Pixar character"), the rest the general
one ("a 3D render of a Pixar character"). Implemented with diffusers' ``callback_on_step_end``, which swaps the
(negative, positive) text embeddings after the switch step (SD 1.x / 2.x pipelines only).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from adapt3d.diffusion.depth import check_depth_inputs, controlnet_depth_image, depth2img_depth_map
from adapt3d.diffusion.img2img import Img2ImgOutput, check_img2img_args
from adapt3d.diffusion.loading import PipelineProperties, prompt_list, resolve_pretrained
from adapt3d.diffusion.options import DiffusionOptions, apply_to_pipeline
from adapt3d.diffusion.s2g import S2GSchedule, s2g_pipeline_kwargs
from adapt3d.diffusion.sources import load_controlnet, load_pipeline, require_family, resolve_model

__all__ = ["Depth2ImgTranslator", "DepthControlNetTranslator", "S2GSchedule",
           "DEFAULT_DEPTH2IMG", "DEFAULT_DEPTH_CONTROLNET", "TRANSLATORS"]

DEFAULT_DEPTH2IMG = "stabilityai/stable-diffusion-2-depth"
DEFAULT_DEPTH_CONTROLNET = "lllyasviel/control_v11f1p_sd15_depth"
TRANSLATORS = ("img2img", "depth2img", "controlnet-depth")


class _DepthTranslator(PipelineProperties):
    kind = ""

    def __init__(self, pipe, device: torch.device | str | None = None, source: dict | None = None) -> None:
        super().__init__(pipe, device, source or {})
        self.is_sdxl = hasattr(pipe, "text_encoder_2")

    def _prepare(self, images, depth, mask, prompt, negative_prompt, strength, guidance_scale, num_inference_steps,
                 s2g, seeds, output_size, resolution):
        """Checked inputs of a call: (b, prompts, negatives, seeds, generation size, output (H, W), images in
        [0, 1] resized to the generation size (B, 3, res, res))."""
        b, prompts, negatives = self._check(images, depth, mask, prompt, negative_prompt, strength, guidance_scale,
                                            num_inference_steps, s2g)
        res = self.generation_resolution(resolution)
        out_hw = (output_size, output_size) if output_size else tuple(images.shape[-2:])
        x = self.resize_square((images.detach().float().clamp(-1, 1) + 1) / 2, res)
        return b, prompts, negatives, self.batch_seeds(seeds, b), res, out_hw, x

    def _check(self, images, depth, mask, prompt, negative_prompt, strength, guidance_scale, num_inference_steps,
               s2g):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3 or not len(images):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images: expected a non-empty (B, 3, H, W) tensor in [-1, 1], got {shape}")
        b = images.shape[0]
        check_depth_inputs(depth, mask, b)
        prompts = prompt_list(prompt, b, "prompt")
        negatives = prompt_list(negative_prompt, b, "negative_prompt", allow_none=True)
        check_img2img_args(prompts, strength, guidance_scale, num_inference_steps, prefix="")
        if s2g is not None:
            prompt_list(list(s2g.general_prompts), b, "s2g.general_prompts")
            if self.is_sdxl:
                raise ValueError("--s2g-general-prompt: specialised-to-general sampling supports SD 1.x/2.x "
                                 "pipelines only (SDXL has pooled embeddings too)")
        return b, prompts, negatives

    def _run(self, kwargs: dict, prompts, negatives, s2g, strength, num_inference_steps, out_hw, seeds):
        kwargs.update(s2g_pipeline_kwargs(self.pipe, s2g, negatives, strength, num_inference_steps,
                                          kwargs["guidance_scale"], self.device, self.dtype))
        out = self.pipe(**kwargs).images.float().cpu()  # (B, 3, res, res) in [0, 1]
        if tuple(out.shape[-2:]) != out_hw:
            out = F.interpolate(out, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
        return Img2ImgOutput(images=out.clamp(0, 1).contiguous(), seeds=seeds, prompts=prompts)


class Depth2ImgTranslator(_DepthTranslator):
    """SD 2 depth img2img with the generator's depth (components passed in, or :meth:`from_pretrained`)."""

    kind = "depth2img"

    @classmethod
    def from_pretrained(cls, model_id_or_path: str = DEFAULT_DEPTH2IMG, device: torch.device | str | None = None,
                        torch_dtype: torch.dtype | None = None, scheduler: Literal["pndm", "ddim", "keep"] = "pndm",
                        flag: str = "--diffusion", options: DiffusionOptions | None = None) -> Depth2ImgTranslator:
        """Load a ``StableDiffusionDepth2ImgPipeline`` folder or id (``'tiny'``: the built-in tiny one) without its
        DPT depth estimator. ``options``: precision, weight variant and memory options (``torch_dtype`` overrides
        ``options.dtype``). Raises PretrainedNotFoundError naming ``flag`` when the weights are missing."""
        from diffusers import StableDiffusionDepth2ImgPipeline

        from adapt3d.diffusion.img2img import _set_scheduler

        options = options or DiffusionOptions()
        if options.diffusion_config is not None:
            raise ValueError("--diffusion-config: --translator depth2img loads a diffusers folder or Hugging Face id "
                             "(e.g. stabilityai/stable-diffusion-2-depth); single-file depth models are not supported")
        # The depth kind names the model and its download advice; the shared sources read the folder and variant.
        name = resolve_pretrained(model_id_or_path, "stable-diffusion-depth", flag)
        source = resolve_model(name, "stable-diffusion", flag, variant=options.weights_variant)
        require_family(source, ("sd",), "--translator depth2img (SD 2 depth)")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        dtype = torch_dtype or options.torch_dtype(dev)
        pipe = load_pipeline(StableDiffusionDepth2ImgPipeline, source, dtype, depth_estimator=None,
                             feature_extractor=None)
        if int(pipe.unet.config.in_channels) != 5:
            raise ValueError(f"{flag}: {model_id_or_path!r} has a UNet with {pipe.unet.config.in_channels} input "
                             "channels; --translator depth2img needs an SD 2 depth model (5: latents + depth), e.g. "
                             f"{DEFAULT_DEPTH2IMG}")
        _set_scheduler(pipe, scheduler)
        record = {"translator": cls.kind, "diffusion": str(model_id_or_path),
                  "dtype": str(dtype).removeprefix("torch."), **options.weights_identity()}
        translator = cls(pipe, device=None, source=record)
        translator.notes = apply_to_pipeline(pipe, options, dev)
        return translator

    def latent_size(self, resolution: int) -> int:
        return resolution // int(self.pipe.vae_scale_factor)

    def __call__(self, images: torch.Tensor, prompt: str | Sequence[str], *, depth: torch.Tensor,
                 mask: torch.Tensor | None = None, negative_prompt: str | Sequence[str] | None = None,
                 strength: float = 0.7, guidance_scale: float = 8.0, num_inference_steps: int = 50,
                 seeds: Sequence[int] | None = None, output_size: int | None = None, resolution: int | None = None,
                 s2g: S2GSchedule | None = None) -> Img2ImgOutput:
        """Translate ``images`` (B, 3, H, W) in [-1, 1] conditioned on ``depth``/``mask`` (B, 1, h, w); returns
        (B, 3, S, S) in [0, 1] on the CPU (S = ``output_size``, default H)."""
        b, prompts, negatives, seeds, res, out_hw, x = self._prepare(
            images, depth, mask, prompt, negative_prompt, strength, guidance_scale, num_inference_steps, s2g, seeds,
            output_size, resolution)
        dmap = depth2img_depth_map(depth, mask, self.latent_size(res)).to(self.device, self.dtype)  # (B, 1, h, w)
        pipe = self.pipe

        def prepare_depth_map(image, depth_map, batch_size, do_cfg, dtype, device):  # ours, not DPT's
            d = dmap.to(device, dtype)
            return torch.cat([d, d]) if do_cfg else d

        pipe.prepare_depth_map = prepare_depth_map
        try:
            kwargs = dict(prompt=prompts, image=x.to(self.device, self.dtype), depth_map=dmap[:, 0],
                          negative_prompt=negatives, strength=float(strength), guidance_scale=float(guidance_scale),
                          num_inference_steps=int(num_inference_steps),
                          generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="pt")
            return self._run(kwargs, prompts, negatives, s2g, strength, num_inference_steps, out_hw, seeds)
        finally:
            del pipe.prepare_depth_map  # back to the class method


class DepthControlNetTranslator(_DepthTranslator):
    """img2img + depth ControlNet with the generator's depth (components passed in, or :meth:`from_pretrained`)."""

    kind = "controlnet-depth"

    @property
    def device(self):
        return self.pipe.unet.device

    @classmethod
    def from_pretrained(cls, base: str, controlnet: str = DEFAULT_DEPTH_CONTROLNET, *,
                        device: torch.device | str | None = None, torch_dtype: torch.dtype | None = None,
                        scheduler: Literal["pndm", "ddim", "keep"] = "pndm", base_flag: str = "--diffusion",
                        controlnet_flag: str = "--controlnet", options: DiffusionOptions | None = None,
                        controlnet_config: str | None = None) -> DepthControlNetTranslator:
        """Load an SD 1.x/2.x or SDXL base and a depth ControlNet (ids, local folders, ``'tiny'`` or single files
        with ``options.diffusion_config`` / ``controlnet_config``), checked to fit each other before loading."""
        from diffusers import StableDiffusionControlNetImg2ImgPipeline, StableDiffusionXLControlNetImg2ImgPipeline

        from adapt3d.diffusion.controlnet import resolve_controlnet_pair
        from adapt3d.diffusion.img2img import _set_scheduler

        options = options or DiffusionOptions()
        cn_source, base_source = resolve_controlnet_pair(base, controlnet, options, "auto", base_flag,
                                                         controlnet_flag, controlnet_config)
        require_family(base_source, ("sd", "sdxl"), "--translator controlnet-depth")
        kind = base_source.family or "sd"
        dev = torch.device(device) if device is not None else torch.device("cpu")
        dtype = torch_dtype or options.torch_dtype(dev)
        cn = load_controlnet(cn_source, dtype)
        pipeline_cls = (StableDiffusionXLControlNetImg2ImgPipeline if kind == "sdxl"
                        else StableDiffusionControlNetImg2ImgPipeline)
        extra = {} if kind == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
        try:
            pipe = load_pipeline(pipeline_cls, base_source, dtype, controlnet=cn, **extra)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{base_flag}: {base!r} does not fit the {kind} ControlNet pipeline with "
                             f"{controlnet_flag} {controlnet!r} ({e})") from e
        if scheduler != "keep" and kind != "sdxl":
            _set_scheduler(pipe, scheduler)
        record = {"translator": cls.kind, "diffusion": str(base), "controlnet": str(controlnet), "variant": kind,
                  "dtype": str(dtype).removeprefix("torch."), **options.weights_identity()}
        translator = cls(pipe, device=None, source=record)
        translator.notes = apply_to_pipeline(pipe, options, dev)
        return translator

    def __call__(self, images: torch.Tensor, prompt: str | Sequence[str], *, depth: torch.Tensor,
                 mask: torch.Tensor | None = None, negative_prompt: str | Sequence[str] | None = None,
                 strength: float = 0.7, guidance_scale: float = 8.0, num_inference_steps: int = 50,
                 seeds: Sequence[int] | None = None, output_size: int | None = None, resolution: int | None = None,
                 s2g: S2GSchedule | None = None, controlnet_conditioning_scale: float = 1.0) -> Img2ImgOutput:
        """As :meth:`Depth2ImgTranslator.__call__`; the depth goes in as the ControlNet's control image."""
        b, prompts, negatives, seeds, res, out_hw, x = self._prepare(
            images, depth, mask, prompt, negative_prompt, strength, guidance_scale, num_inference_steps, s2g, seeds,
            output_size, resolution)
        control = controlnet_depth_image(depth, mask, res)  # (B, 3, res, res) in [0, 1]
        kwargs = dict(prompt=prompts, image=x.to(self.device, self.dtype),
                      control_image=control.to(self.device, self.dtype), negative_prompt=negatives,
                      strength=float(strength), guidance_scale=float(guidance_scale),
                      num_inference_steps=int(num_inference_steps), height=res, width=res,
                      controlnet_conditioning_scale=float(controlnet_conditioning_scale),
                      generator=[torch.Generator("cpu").manual_seed(s) for s in seeds], output_type="pt")
        return self._run(kwargs, prompts, negatives, s2g, strength, num_inference_steps, out_hw, seeds)
