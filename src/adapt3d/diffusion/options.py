"""Diffusion model options shared by make-dataset (and adapt), synth and distill: precision, weight variant, the
config of a single-file checkpoint, and the GPU memory savers diffusers users expect.

Every command nests one :class:`DiffusionOptions` (flags stay flat: ``--dtype``, ``--cpu-offload``, ...), checks
it with :meth:`DiffusionOptions.check` before loading anything and records it in its job files
(:meth:`DiffusionOptions.record`). :func:`apply_to_pipeline` applies the memory options to a diffusers pipeline;
:class:`adapt3d.diffusion.sds.ScoreDistillation` applies them to its components itself.

- ``dtype``: ``auto`` is fp16 on CUDA and fp32 on the CPU (as before these options existed). fp16 on the CPU is
  refused (slow, and not every CPU op has a half kernel); bf16 on the CPU is allowed but slow (tiny SD img2img,
  10 steps: 35 s in bf16 vs 0.3 s in fp32 on the 2-core test machine, 2026-12-03); bf16 on CUDA needs a GPU that
  supports it (Ampere or newer).
- ``cpu_offload``: diffusers' model CPU offload (accelerate hooks: each model moves to the GPU for its forward
  and back to CPU memory when the next one runs). In SDS the text encoder(s) and UNet move to the GPU for each call
  and back after it; the VAE stays on the GPU because the gradient flows back through its encoder. Needs a CUDA
  device (on the CPU every model already lives in CPU memory).
- ``attention_slicing``: attention computed in slices (diffusers' ``"auto"``: half the heads at a time); UNets
  only (diffusers' SD3 transformer has none: refused for SD3 before loading).
- ``vae_slicing``: the VAE encodes / decodes a batch one image at a time.
- ``vae_tiling``: the VAE works on overlapping tiles (for images larger than its native size); outputs differ
  slightly at tile seams.
- ``compile_unet``: ``torch.compile`` of the UNet (SD3: of its transformer; the first calls compile, later ones run
  faster on a GPU).
  Not combined with ``cpu_offload`` (compiled graphs are specialised to where the weights live).
- ``gradient_checkpointing``: SDS only (distill): the VAE encoder recomputes its activations in the backward pass
  instead of keeping them, trading compute for memory. make-dataset and synth run without gradients.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Annotated, Literal

import torch
import tyro

__all__ = ["DiffusionOptions", "DiffusionOptionsField", "diffusion_options_field", "DTYPES", "MEMORY_OPTIONS",
           "apply_to_pipeline", "apply_to_components", "COMPILE_BACKEND", "WEIGHT_OPTIONS"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPILE_BACKEND = "inductor"
"""torch.compile backend of --compile-unet (the tests use 'eager' to check the wiring without a C++ build)."""
MEMORY_OPTIONS = ("cpu_offload", "attention_slicing", "vae_slicing", "vae_tiling", "compile_unet",
                  "gradient_checkpointing")
"""Options that change memory and speed, not what is computed (beyond rounding): left out of resume checks."""
WEIGHT_OPTIONS = ("dtype", "weights_variant", "diffusion_config")
"""Options that change how the weights are read, and so the results: part of resume checks when given."""


@dataclass
class DiffusionOptions:
    """Diffusion model: precision, weight variant, single-file config, GPU memory options."""

    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Weights and compute precision of the diffusion model: auto = fp16 on CUDA, fp32 on the CPU (fp16 is refused
    on the CPU; bf16 needs an Ampere or newer GPU, and is slow on the CPU)."""
    weights_variant: str | None = None
    """Load diffusers' weight-file variant, e.g. fp16 (unet/diffusion_pytorch_model.fp16.safetensors): needed for
    folders that hold only those files (diffusers' variant=)."""
    diffusion_config: str | None = None
    """For a single-file --diffusion (.safetensors/.ckpt in the original LDM/A1111 layout): a diffusers folder or
    Hugging Face id of the same architecture whose configs, tokenizer and scheduler are used (default: SD 1.x
    stable-diffusion-v1-5/stable-diffusion-v1-5, SD 2.x stabilityai/stable-diffusion-2-1 (768 px, v-prediction;
    2.x-base files need stabilityai/stable-diffusion-2-1-base), SDXL stabilityai/stable-diffusion-xl-base-1.0)."""
    cpu_offload: bool = False
    """Keep the diffusion models in CPU memory and move each to the GPU only while it runs (diffusers' model CPU
    offload; needs a CUDA device and accelerate)."""
    attention_slicing: bool = False
    """Compute attention in slices (less GPU memory, slower; UNet models, not SD3's transformer)."""
    vae_slicing: bool = False
    """VAE encodes/decodes one image of a batch at a time."""
    vae_tiling: bool = False
    """VAE works on overlapping tiles (large images; small differences at tile seams)."""
    compile_unet: bool = False
    """torch.compile the UNet (SD3: the transformer; slow first calls, faster later ones; not with --cpu-offload)."""
    gradient_checkpointing: bool = False
    """distill only: recompute the VAE encoder's activations in SDS's backward pass instead of storing them."""

    def torch_dtype(self, device: torch.device | str) -> torch.dtype:
        """The torch dtype for ``device`` (``auto``: fp16 on CUDA, fp32 elsewhere)."""
        if self.dtype == "auto":
            return torch.float16 if torch.device(device).type == "cuda" else torch.float32
        return DTYPES[self.dtype]

    def check(self, device: torch.device | str, *, gradients: bool = False) -> None:
        """Refuse what cannot work on ``device`` (one line naming the option). ``gradients``: the command
        backpropagates through the diffusion model's VAE (distill)."""
        dev = torch.device(device)
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"--dtype: {self.dtype!r} is not one of auto, {', '.join(DTYPES)}")
        if self.dtype == "fp16" and dev.type == "cpu":
            raise ValueError("--dtype fp16: half precision on the CPU is very slow and not every CPU op has an fp16 "
                             "kernel; use --dtype fp32 (the CPU default) or bf16, or run on a GPU")
        if self.dtype == "bf16" and dev.type == "cuda" and torch.cuda.is_available() \
                and not torch.cuda.is_bf16_supported():
            raise ValueError("--dtype bf16: this GPU has no bfloat16 support (Ampere or newer needed); use fp16")
        if self.cpu_offload:
            if dev.type != "cuda":
                raise ValueError(f"--cpu-offload: needs a CUDA device (--device {dev}); on the CPU every model "
                                 "already lives in CPU memory, leave the option out")
            try:
                import accelerate  # noqa: F401
            except ImportError as e:
                raise ValueError("--cpu-offload: needs the accelerate package (pip install accelerate)") from e
            if self.compile_unet:
                raise ValueError("--compile-unet with --cpu-offload: not supported together (compiled graphs are "
                                 "specialised to the device the weights live on); choose one")
        if self.gradient_checkpointing and not gradients:
            raise ValueError("--gradient-checkpointing: only distill backpropagates through the diffusion model "
                             "(SDS through the VAE encoder); this command runs it without gradients, leave the "
                             "option out")

    def record(self, device: torch.device | str | None = None) -> dict:
        """The options as JSON (plus the resolved torch dtype when ``device`` is given)."""
        out = asdict(self)
        if device is not None:
            out["torch_dtype"] = str(self.torch_dtype(device)).removeprefix("torch.")
        return out

    def weights_identity(self) -> dict:
        """How the weights are read (dtype, weight variant, single-file config): they change the results, so they
        belong in job fingerprints. Only options given (not None / 'auto'), so that job folders made before these
        options existed keep their fingerprint."""
        return {k: getattr(self, k) for k in WEIGHT_OPTIONS if getattr(self, k) not in (None, "auto")}

    def memory_record(self) -> dict:
        return {k: getattr(self, k) for k in MEMORY_OPTIONS}


DiffusionOptionsField = Annotated[DiffusionOptions, tyro.conf.OmitArgPrefixes, tyro.conf.arg(name="diffusion-model")]
"""The type of a command config's ``diffusion_options`` field: flat flags (``--dtype``, ``--cpu-offload``), shown in
their own "diffusion-model options" group of ``--help``."""


def diffusion_options_field():
    """``field(default_factory=DiffusionOptions)`` for a config's ``diffusion_options: DiffusionOptionsField``."""
    return field(default_factory=DiffusionOptions)


def _compile(module: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(module, backend=COMPILE_BACKEND)


def apply_to_components(options: DiffusionOptions, unet=None, vae=None) -> torch.nn.Module | None:
    """Attention slicing, VAE slicing/tiling, VAE gradient checkpointing and UNet compilation on bare components.

    Returns the UNet to use (the compiled wrapper with ``compile_unet``). Offloading is the caller's (it depends
    on how the models are called)."""
    if unet is not None and options.attention_slicing:
        unet.set_attention_slice("auto")
    if vae is not None:
        if options.vae_slicing:
            vae.enable_slicing()
        if options.vae_tiling:
            vae.enable_tiling()
        if options.gradient_checkpointing:
            vae.enable_gradient_checkpointing()
    if unet is not None and options.compile_unet:
        unet = _compile(unet)
    return unet


def apply_to_pipeline(pipe, options: DiffusionOptions, device: torch.device | str) -> list[str]:
    """Apply ``options`` to a diffusers pipeline and put it on ``device`` (or offload it); returns notes."""
    dev = torch.device(device)
    notes = []
    name = "unet" if getattr(pipe, "unet", None) is not None else "transformer"  # SD3: a transformer denoiser
    if options.attention_slicing and not hasattr(getattr(pipe, name), "set_attention_slice"):
        raise ValueError(f"--attention-slicing: the {type(getattr(pipe, name)).__name__} of this model has no "
                         "attention slicing in diffusers; leave the option out")
    denoiser = apply_to_components(options, getattr(pipe, name), pipe.vae)
    if options.compile_unet:
        setattr(pipe, name, denoiser)
        notes.append(f"{'UNet' if name == 'unet' else 'transformer'} compiled with torch.compile (backend "
                     f"{COMPILE_BACKEND}); the first batches compile")
    if options.cpu_offload:
        pipe.enable_model_cpu_offload(device=dev)
        notes.append(f"model CPU offload: each model moves to {dev} only while it runs")
    else:
        pipe.to(dev)
    return notes
