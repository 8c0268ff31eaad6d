"""Score distillation sampling (SDS, DreamFusion) with a Stable Diffusion teacher, built from diffusers components.

For images x = g(theta) (generator renders in [-1, 1]) encoded to SD latents z = E(x), a timestep t and noise
eps ~ N(0, I)::

    z_t     = sqrt(a_t) z + sqrt(1 - a_t) eps                      (a_t = alphas_cumprod[t])
    eps_hat = eps_u + s (eps_c - eps_u)                            (classifier-free guidance, scale s)
    grad    = w(t) (eps_hat - eps)                                 (d loss / d z; the UNet Jacobian is dropped)
    loss    = 0.5 * sum((z - stopgrad(z - grad))^2) / B            (so d loss / d z = grad / B)

``loss.backward()`` therefore sends exactly ``grad / B`` into z and on through the VAE encoder into the renders
(threestudio's MSE re-parameterisation; no custom autograd function); the loss value itself is meaningless.
CFG uses diffusers' form ``eps_u + s (eps_c - eps_u)``; threestudio's ``eps_c + s (eps_c - eps_u)`` equals ours
with ``s + 1`` (its default 100 is our 101).

Weighting ``w(t)``: ``'sds'`` = 1 - a_t (DreamFusion), ``'uniform'`` = 1, ``'fantasia3d'`` = sqrt(a_t) (1 - a_t).
Timesteps: t ~ U{int(T min), ..., int(T max)} per sample (T = 1000 train timesteps; threestudio's [0.02, 0.98]),
with optional annealing (:func:`timestep_range`). Non-finite gradient entries are zeroed and counted; ``grad_clip``
clamps every entry to [-grad_clip, grad_clip]. v-prediction teachers are converted to eps. fp16 on CUDA.

View-dependent prompting (threestudio's prompt processor): for a camera at EG3D yaw ``y`` (pi/2 = frontal) the
azimuth is ``|y - pi/2|`` wrapped to [0, pi]; ``< 45 deg`` -> ``"<prompt>, front view"``, ``> 135 deg`` ->
``"<prompt>, back view"``, otherwise ``"<prompt>, side view"`` (:func:`view_index`, :func:`view_prompt`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from adapt3d.diffusion.loading import DEFAULT_DIFFUSION, download_error, resolve_pretrained

__all__ = ["ScoreDistillation", "SDSOutput", "sds_weights", "timestep_range", "view_index", "view_prompt",
           "VIEWS", "WEIGHTINGS", "ANNEALING", "check_sds_args", "SDSOptions", "DEFAULT_DIFFUSION"]

Weighting = Literal["sds", "uniform", "fantasia3d"]
WEIGHTINGS = ("sds", "uniform", "fantasia3d")
ANNEALING = ("none", "linear", "sqrt")
VIEWS = ("front", "side", "back")
"""threestudio's SDS teacher (512 px, epsilon prediction)."""


def view_index(yaw: torch.Tensor, front_deg: float = 45.0, back_deg: float = 45.0) -> torch.Tensor:
    """EG3D yaws (B,) in radians -> view ids (B,) int64: 0 front, 1 side, 2 back (see module docstring)."""
    az = torch.remainder(yaw.detach().float() - math.pi / 2 + math.pi, 2 * math.pi) - math.pi  # (-pi, pi]
    az = az.abs() * (180 / math.pi)
    ids = torch.ones_like(az, dtype=torch.long)
    ids[az < front_deg] = 0
    ids[az > 180 - back_deg] = 2
    return ids


def view_prompt(prompt: str, view: int | str) -> str:
    """``"<prompt>, front view"`` / ``side view`` / ``back view``."""
    name = VIEWS[view] if isinstance(view, int) else view
    if name not in VIEWS:
        raise ValueError(f"view: {view!r} is not one of {VIEWS}")
    return f"{prompt}, {name} view"


def sds_weights(alphas_cumprod_t: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(t) for a_t = alphas_cumprod[t] (B,): 'sds' 1 - a_t, 'uniform' 1, 'fantasia3d' sqrt(a_t) (1 - a_t)."""
    a = alphas_cumprod_t.float()
    if weighting == "sds":
        return 1 - a
    if weighting == "uniform":
        return torch.ones_like(a)
    if weighting == "fantasia3d":
        return a.sqrt() * (1 - a)
    raise ValueError(f"weighting: {weighting!r} is not one of {WEIGHTINGS}")


def timestep_range(step: int, total_steps: int, t_range: tuple[float, float] = (0.02, 0.98),
                   anneal: str = "none", t_max_final: float = 0.5) -> tuple[float, float]:
    """Timestep range (fractions of the T train timesteps) at ``step`` of ``total_steps``.

    ``'none'``: ``t_range``. ``'linear'``: the upper bound goes linearly from ``t_range[1]`` to ``t_max_final``
    (never below the lower bound), as threestudio's ``max_step_percent: [0, max, final, total]``. ``'sqrt'``
    (HiFA): one deterministic t, ``p = max - (max - min) sqrt(step / total)``, returned as ``(p, p)``.
    """
    lo, hi = float(t_range[0]), float(t_range[1])
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if anneal == "none":
        return lo, hi
    if anneal == "linear":
        return lo, max(lo, hi + (t_max_final - hi) * frac)
    if anneal == "sqrt":
        p = hi - (hi - lo) * math.sqrt(frac)
        return p, p
    raise ValueError(f"--t-anneal: {anneal!r} is not one of {ANNEALING}")


def check_sds_args(guidance_scale: float = 100.0, t_range: Sequence[float] = (0.02, 0.98),
                   weighting: str = "sds", grad_clip: float | None = None, anneal: str = "none",
                   t_max_final: float = 0.5, prefix: str = "--") -> None:
    """Validate SDS settings cheaply (before loading any model); ValueError naming the flag."""
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"{prefix}guidance-scale: {guidance_scale!r} must be a finite number >= 0 (DreamFusion / "
                         "threestudio SDS use about 100)")
    if len(t_range) != 2 or not 0 <= t_range[0] <= t_range[1] <= 1:
        raise ValueError(f"{prefix}t-range: {tuple(t_range)!r} must be two fractions 0 <= min <= max <= 1 of the "
                         "diffusion timesteps (threestudio: 0.02 0.98)")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"{prefix}weighting: {weighting!r} is not one of {WEIGHTINGS}")
    if grad_clip is not None and not (math.isfinite(grad_clip) and grad_clip > 0):
        raise ValueError(f"{prefix}grad-clip: {grad_clip!r} must be > 0 or None (no clipping)")
    if anneal not in ANNEALING:
        raise ValueError(f"{prefix}t-anneal: {anneal!r} is not one of {ANNEALING}")
    if not 0 <= t_max_final <= 1:
        raise ValueError(f"{prefix}t-max-final: {t_max_final!r} must be in [0, 1]")


@dataclass
class SDSOptions:
    """The score-distillation options of a command or config (``adapt3d distill``, the per-prompt baseline)."""

    negative_prompt: str = ""
    """Text of the unconditional branch of classifier-free guidance."""
    guidance_scale: float = 100.0
    """CFG scale s in eps_u + s (eps_c - eps_u) (threestudio's 100 is our 101)."""
    t_range: tuple[float, float] = (0.02, 0.98)
    """SDS timestep range as fractions of the teacher's train timesteps."""
    t_anneal: Literal["none", "linear", "sqrt"] = "none"
    """Timestep annealing: none; linear (upper bound -> --t-max-final over the run); sqrt (HiFA, one t)."""
    t_max_final: float = 0.5
    """Final upper bound of linear annealing."""
    weighting: Literal["sds", "uniform", "fantasia3d"] = "sds"
    """w(t): sds = 1 - a_t, uniform = 1, fantasia3d = sqrt(a_t) (1 - a_t)."""
    grad_clip: float | None = None
    """Clamp every SDS gradient entry to [-grad_clip, grad_clip] (None: off)."""
    view_prompts: bool = True
    """Append ', front view' / ', side view' / ', back view' from the camera yaw (teacher prompts only)."""

    def check_sds(self) -> None:
        """:func:`check_sds_args` on these options."""
        check_sds_args(self.guidance_scale, self.t_range, self.weighting, self.grad_clip, self.t_anneal,
                       self.t_max_final)


@dataclass
class SDSOutput:
    """Result of one SDS evaluation: ``loss.backward()`` adds ``grad / B`` to the latents' gradient."""

    loss: torch.Tensor
    """Scalar (float32); backward() sends ``grad / B`` into the latents (and the renders behind them)."""
    grad: torch.Tensor
    """w(t) (eps_hat - eps) after the NaN guard and clipping, (B, 4, h, w) float32, detached."""
    latents: torch.Tensor
    """The (differentiable) latents z (B, 4, h, w) float32."""
    timesteps: torch.Tensor
    """t of each sample (B,) int64."""
    weights: torch.Tensor
    """w(t) of each sample (B,) float32."""
    noise_pred: torch.Tensor
    """eps_hat (B, 4, h, w) float32 (after CFG and v-to-eps conversion)."""
    noise: torch.Tensor
    """eps (B, 4, h, w) float32."""
    info: dict = field(default_factory=dict)
    """Scalars for logging: grad_norm (mean per-sample L2), t_mean, w_mean, nonfinite (zeroed grad entries)."""


def _freeze(module):
    if module is not None:
        module.eval().requires_grad_(False)
    return module


class ScoreDistillation:
    """SDS guidance from Stable Diffusion components (passed in; :meth:`from_pretrained` is a convenience).

    ``unet``: a diffusers ``UNet2DConditionModel`` (or anything called as ``unet(x, t,
    encoder_hidden_states=e)`` returning ``.sample``); ``scheduler``: any diffusers scheduler with
    ``alphas_cumprod`` and ``config.num_train_timesteps`` / ``config.prediction_type``; ``text_encoder`` +
    ``tokenizer`` (CLIP) encode prompts; ``vae`` (``AutoencoderKL``) encodes images. Every model is frozen.
    """

    def __init__(self, unet, scheduler, text_encoder=None, tokenizer=None, vae=None,
                 device: torch.device | str | None = None, source: str | None = None) -> None:
        self.unet, self.scheduler = _freeze(unet), scheduler
        self.text_encoder, self.tokenizer, self.vae = _freeze(text_encoder), tokenizer, _freeze(vae)
        if device is not None:
            for m in (self.unet, self.text_encoder, self.vae):
                if m is not None:
                    m.to(torch.device(device))
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32)  # (T,) on the CPU
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self.prediction_type = str(getattr(scheduler.config, "prediction_type", "epsilon"))
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"scheduler: prediction_type {self.prediction_type!r} is not supported (epsilon, "
                             "v_prediction)")
        self.source = source
        self._prompt_cache: dict[str, torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, name_or_path: str = DEFAULT_DIFFUSION, device: torch.device | str | None = None,
                        torch_dtype: torch.dtype | None = None, flag: str = "--diffusion",
                        load_vae: bool = True, load_unet: bool = True) -> ScoreDistillation:
        """Load UNet, VAE, text encoder, tokenizer and scheduler of an SD 1.x/2.x folder or Hugging Face id (or
        ``'tiny'``). float16 on CUDA, float32 otherwise. ``load_unet=False`` / ``load_vae=False`` load only what
        prompt encoding needs (``generate``)."""
        name = resolve_pretrained(name_or_path, "stable-diffusion", flag)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        dtype = torch_dtype or (torch.float16 if dev.type == "cuda" else torch.float32)
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
                unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet", torch_dtype=dtype) \
                    if load_unet else None
                vae = AutoencoderKL.from_pretrained(name, subfolder="vae", torch_dtype=dtype) if load_vae else None
                text_encoder = CLIPTextModel.from_pretrained(name, subfolder="text_encoder", dtype=dtype)
                tokenizer = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer")
                scheduler = DDIMScheduler.from_pretrained(name, subfolder="scheduler")
        except OSError as e:
            raise download_error(str(name_or_path), "stable-diffusion", flag, e) from e
        return cls(unet, scheduler, text_encoder, tokenizer, vae, device=dev, source=str(name_or_path))

    # -- properties ----------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for m in (self.unet, self.text_encoder, self.vae):
            if m is not None:
                return next(m.parameters()).device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype if self.unet is not None else torch.float32

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @property
    def resolution(self) -> int:
        """Image size in pixels the teacher expects (UNet sample size x VAE factor; 512 for SD 2.1-base)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def text_dim(self) -> int:
        """Width D of the prompt embeddings (B, L, D)."""
        return int(self.text_encoder.config.hidden_size)

    # -- encoders ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Prompts -> token embeddings (B, L, D) float32 on :attr:`device` (padded to the tokenizer's max length,
        77 for CLIP; the text encoder's last hidden state, as Stable Diffusion uses). Cached per string."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt: expected a string or a non-empty list of strings")
        if self.text_encoder is None or self.tokenizer is None:
            raise ValueError("this ScoreDistillation has no text encoder/tokenizer; pass prompt_embeds instead")
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(self.device)
            emb = self.text_encoder(ids)[0].float()  # (n, L, D)
            for p, e in zip(missing, emb):
                self._prompt_cache[p] = e
        return torch.stack([self._prompt_cache[p] for p in prompts])

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, 4, h, w) float32, differentiable w.r.t. the images.

        Resized (bilinear, antialiased) to :attr:`resolution`; the VAE posterior is sampled with ``generator``."""
        if self.vae is None:
            raise ValueError("this ScoreDistillation has no VAE; pass latents instead of images")
        res = self.resolution
        x = images.float()
        if tuple(x.shape[-2:]) != (res, res):
            x = F.interpolate(x, size=(res, res), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > res)
        post = self.vae.encode(x.to(self.device, self.vae.dtype)).latent_dist
        eps = torch.randn(post.mean.shape, generator=generator).to(post.mean)  # CPU draw: same on any device
        return (post.mean + post.std * eps).float() * float(self.vae.config.scaling_factor)

    # -- the SDS gradient ----------------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor | None = None, *, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None = None,
                 guidance_scale: float = 100.0, t_range: tuple[float, float] = (0.02, 0.98),
                 weighting: Weighting = "sds", grad_clip: float | None = None,
                 generator: torch.Generator | None = None, timesteps: torch.Tensor | None = None) -> SDSOutput:
        """SDS loss for renders ``images`` (B, 3, H, W) in [-1, 1] *or* SD ``latents`` (B, 4, h, w).

        ``prompt_embeds`` (B or 1, L, D) condition eps_c; ``negative_prompt_embeds`` (B or 1, L, D) give eps_u
        (required unless ``guidance_scale == 1``, where eps_hat = eps_c). ``t_range``: fractions of the train
        timesteps; ``timesteps`` (B,) overrides the draw. ``generator`` (CPU) draws t, eps and the VAE sample.
        """
        if (images is None) == (latents is None):
            raise ValueError("give exactly one of images (B, 3, H, W) in [-1, 1] and latents (B, 4, h, w)")
        check_sds_args(guidance_scale, t_range, weighting, grad_clip, prefix="")
        if images is not None and (images.ndim != 4 or images.shape[1] != 3):
            raise ValueError(f"images: expected (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
        z = self.encode_images(images, generator) if images is not None else latents.float()
        if z.ndim != 4:
            raise ValueError(f"latents: expected (B, C, h, w), got {tuple(z.shape)}")
        b, dev = z.shape[0], z.device
        cond = self._batch_embeds(prompt_embeds, b, "prompt_embeds")
        use_cfg = float(guidance_scale) != 1.0
        if use_cfg:
            if negative_prompt_embeds is None:
                raise ValueError("negative_prompt_embeds: required for classifier-free guidance (guidance_scale "
                                 "!= 1); encode '' or a negative prompt")
            uncond = self._batch_embeds(negative_prompt_embeds, b, "negative_prompt_embeds")
        n_t = self.num_train_timesteps
        if timesteps is None:
            t_lo = min(max(int(n_t * t_range[0]), 0), n_t - 1)
            t_hi = min(max(int(n_t * t_range[1]), t_lo), n_t - 1)
            timesteps = torch.randint(t_lo, t_hi + 1, (b,), generator=generator)
        timesteps = torch.as_tensor(timesteps, dtype=torch.long).reshape(-1).cpu()
        if timesteps.shape != (b,) or int(timesteps.min()) < 0 or int(timesteps.max()) >= n_t:
            raise ValueError(f"timesteps: expected ({b},) integers in [0, {n_t}), got {timesteps.tolist()}")
        noise = torch.randn(z.shape, generator=generator).to(dev)  # (B, 4, h, w), drawn on the CPU
        a = self.alphas_cumprod[timesteps].to(dev).view(b, 1, 1, 1)
        with torch.no_grad():
            z_t = a.sqrt() * z.detach() + (1 - a).sqrt() * noise  # (B, 4, h, w)
            x_in = torch.cat([z_t, z_t]) if use_cfg else z_t
            e_in = torch.cat([cond, uncond]) if use_cfg else cond
            t_in = torch.cat([timesteps, timesteps]) if use_cfg else timesteps
            out = self.unet(x_in.to(self.device, self.dtype), t_in.to(self.device),
                            encoder_hidden_states=e_in.to(self.device, self.dtype))
            pred = (out.sample if hasattr(out, "sample") else out[0]).float().to(dev)
            if self.prediction_type == "v_prediction":  # eps = sqrt(a) v + sqrt(1 - a) z_t
                a2 = torch.cat([a, a]) if use_cfg else a
                pred = a2.sqrt() * pred + (1 - a2).sqrt() * x_in
            if use_cfg:
                eps_c, eps_u = pred.chunk(2)
                eps_hat = eps_u + float(guidance_scale) * (eps_c - eps_u)
            else:
                eps_hat = pred
            w = sds_weights(a.view(b), weighting)  # (B,)
            grad = w.view(b, 1, 1, 1) * (eps_hat - noise)
            finite = torch.isfinite(grad)
            nonfinite = int((~finite).sum())
            grad = torch.where(finite, grad, torch.zeros_like(grad))
            if grad_clip is not None:
                grad = grad.clamp(-float(grad_clip), float(grad_clip))
        target = (z - grad).detach()
        loss = 0.5 * F.mse_loss(z, target, reduction="sum") / b
        info = {"grad_norm": float(grad.flatten(1).norm(dim=1).mean()), "t_mean": float(timesteps.float().mean()),
                "w_mean": float(w.mean()), "nonfinite": nonfinite}
        return SDSOutput(loss=loss, grad=grad, latents=z, timesteps=timesteps, weights=w, noise_pred=eps_hat,
                         noise=noise, info=info)

    grad = __call__

    @staticmethod
    def _batch_embeds(e: torch.Tensor, b: int, name: str) -> torch.Tensor:
        if not isinstance(e, torch.Tensor) or e.ndim != 3 or e.shape[0] not in (1, b):
            shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"{name}: expected ({b} or 1, L, D) token embeddings, got {shape}")
        return e.expand(b, -1, -1) if e.shape[0] == 1 else e
