"""GCA-3D-style dataset-free adaptation (``adapt --method dsds``): depth-aware score distillation plus a hierarchical
spatial-consistency loss, with the source generator's *own* depth and foreground mask.

One step (:func:`dsds_step`, driven by :class:`DSDSTrainer`)::

    z (B, z_dim) ~ N(0, I), V random cameras per latent (as NADA / ITportrait)
    src = G_source(ws, cams)       no grad: depth D (B V, 1, r, r) ray distances, mask M (accumulated opacity),
                                   feature image F_src (B V, 32, r, r)
    out = G(ws, cams)              the adapted generator at the same latent and camera: image x, F
    L_dsds = SDS of x through a depth-conditioned teacher eps(z_t; text or image prompt, depth(D, M), t),
             gradient  w(t) * M_lat * (eps_hat - eps)          (M_lat: M area-averaged to the latent size)
    L_hsc  = mean over grids g of InfoNCE(pool_g(F), pool_g(F_src))   (:func:`hierarchical_spatial_consistency`)
    loss   = lambda_dsds * L_dsds + lambda_hsc * L_hsc

The teacher (:class:`DepthTeacher`) is either an SD 2 depth UNet (5 input channels; depth map
:func:`adapt3d.diffusion.depth.depth2img_depth_map`) or an SD UNet + depth ControlNet (control image
:func:`adapt3d.diffusion.depth.controlnet_depth_image`). It is called like a plain UNet by
:class:`adapt3d.diffusion.sds.ScoreDistillation`, so the SDS machinery (timesteps, CFG, weighting, NaN guard) is
the one DreamPortrait distillation uses.

Image-guided mode (``--image-prompt`` + ``--ip-adapter``): the teacher UNet gets an IP-Adapter
(:mod:`adapt3d.diffusion.ip_adapter`) and the image prompt's embedding conditions eps_c (zeros for eps_u), next to
the text prompt. Tested with tiny random IP-Adapter weights in the real layout only.

Choices (GCA-3D does not fix them, or adapt3d differs): HSC uses the generators' neural-rendering feature images
(spatially aligned by construction) average-pooled to coarse-to-fine grids (default 4, 8, 16 cells a side), each
cell a patch embedding; positives are the same cell in the source, negatives the other cells of the same image
(PatchNCE). The mask weights the SDS gradient softly (accumulated opacity in [0, 1]).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adapt3d.diffusion.depth import controlnet_depth_image, depth2img_depth_map

__all__ = ["DepthTeacher", "latent_mask", "hierarchical_spatial_consistency", "patch_nce", "dsds_step",
           "DSDSTrainer", "load_depth_teacher"]


class DepthTeacher(nn.Module):
    """A frozen epsilon predictor conditioned on the source generator's depth, called like a UNet.

    ``unet``: a diffusers ``UNet2DConditionModel``; with 5 input channels (SD 2 depth) the depth channel is
    concatenated to the latents; otherwise ``controlnet`` (a diffusers ``ControlNetModel``) is required and gets
    the depth as its control image. Call :meth:`set_depth` before each SDS evaluation (the depth of the B renders;
    classifier-free guidance doubles the UNet batch and the depth is repeated to match).
    """

    def __init__(self, unet, controlnet=None, conditioning_scale: float = 1.0, vae_scale_factor: int = 8):
        super().__init__()
        self.unet, self.controlnet = unet, controlnet
        self.kind = "depth2img" if int(unet.config.in_channels) == 5 else "controlnet-depth"
        if self.kind == "controlnet-depth" and controlnet is None:
            raise ValueError(f"--diffusion: the teacher UNet has {unet.config.in_channels} input channels; give an SD "
                             "2 depth model (5 channels) or a depth --controlnet")
        self.conditioning_scale = float(conditioning_scale)
        self.vae_scale_factor = int(vae_scale_factor)
        self._cond: torch.Tensor | None = None
        self.image_prompt = None  # adapt3d.diffusion.ip_adapter.ImagePrompt once an IP-Adapter is installed
        self.image_embeds: torch.Tensor | None = None  # (1, 1, D): the image prompt (image-guided mode)

    @property
    def config(self):
        return self.unet.config

    def set_depth(self, depth: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Depth (B, 1, r, r) world units, mask (B, 1, r, r) -> the conditioning the teacher sees (returned)."""
        latent = int(self.unet.config.sample_size)
        if self.kind == "depth2img":
            self._cond = depth2img_depth_map(depth, mask, latent)  # (B, 1, h, w) in [-1, 1]
        else:
            self._cond = controlnet_depth_image(depth, mask, latent * self.vae_scale_factor)  # (B, 3, H, W)
        return self._cond

    def forward(self, x: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor, **kwargs):
        if self._cond is None:
            raise RuntimeError("DepthTeacher: call set_depth(depth, mask) before evaluating the teacher")
        b = self._cond.shape[0]
        reps = x.shape[0] // b
        cond = self._cond.to(x.device, x.dtype).repeat(reps, 1, 1, 1)
        if self.image_embeds is not None:  # ScoreDistillation batches (conditional, unconditional): zeros for the
            e = self.image_embeds.to(x.device, x.dtype)  # unconditional half, as diffusers' pipelines do
            e = torch.cat([e.expand(b, -1, -1), torch.zeros_like(e).expand(b, -1, -1)]) if reps == 2 \
                else e.expand(x.shape[0], -1, -1)
            kwargs = {**kwargs, "added_cond_kwargs": {"image_embeds": [e]}}
        if self.kind == "depth2img":
            return self.unet(torch.cat([x, cond], dim=1), t, encoder_hidden_states=encoder_hidden_states, **kwargs)
        down, mid = self.controlnet(x, t, encoder_hidden_states=encoder_hidden_states, controlnet_cond=cond,
                                    conditioning_scale=self.conditioning_scale, return_dict=False)
        return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, **kwargs)


def latent_mask(mask: torch.Tensor, latent_size: int) -> torch.Tensor:
    """Accumulated opacity (B, 1, r, r) in [0, 1] -> (B, 1, latent_size, latent_size): area average when shrinking,
    bilinear when enlarging."""
    m = mask.detach().float().clamp(0, 1)
    if m.shape[-1] == latent_size:
        return m
    mode = dict(mode="area") if latent_size < m.shape[-1] else dict(mode="bilinear", align_corners=False)
    return F.interpolate(m, size=(latent_size, latent_size), **mode).clamp(0, 1)


def patch_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """PatchNCE: query, key (B, P, C) patch embeddings (L2-normalised here); for each query patch i the positive is
    key i, the negatives the other keys of the same image. Returns the mean cross-entropy (scalar)."""
    q, k = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    logits = q @ k.transpose(1, 2) / temperature  # (B, P, P)
    target = torch.arange(q.shape[1], device=q.device).expand(q.shape[0], -1)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def hierarchical_spatial_consistency(adapted: torch.Tensor, source: torch.Tensor, grids=(4, 8, 16),
                                     temperature: float = 0.07) -> torch.Tensor:
    """Coarse-to-fine PatchNCE between feature images (B, C, H, W) of the adapted and the source generator at the
    same latent and camera: for each grid g (cells a side, at most H) both are average-pooled to g x g cells and
    :func:`patch_nce` is taken; the result is the mean over grids. The source side carries no gradient."""
    losses = []
    for g in grids:
        g = min(int(g), adapted.shape[-1])
        a = F.adaptive_avg_pool2d(adapted.float(), g).flatten(2).transpose(1, 2)  # (B, g*g, C)
        s = F.adaptive_avg_pool2d(source.detach().float(), g).flatten(2).transpose(1, 2)
        losses.append(patch_nce(a, s, temperature))
    return torch.stack(losses).mean()


def dsds_step(G, G_source, ws: torch.Tensor, ws_source: torch.Tensor, cams: torch.Tensor, sds, prompt_embeds,
              negative_prompt_embeds, *, generator: torch.Generator, guidance_scale: float,
              t_range: tuple[float, float], weighting: str = "sds", lambda_dsds: float = 1.0,
              lambda_hsc: float = 1.0, hsc_grids=(4, 8, 16), hsc_temperature: float = 0.07,
              neural_rendering_resolution: int | None = None) -> tuple[torch.Tensor, dict]:
    """The loss of one DSDS step (see the module docstring) and its logged scalars; no optimiser involved.

    ``G`` (trainable) renders ws (N, num_ws, w_dim) at cams (N, 25); ``G_source`` renders ws_source at the same
    cams without grad. ``sds``: a :class:`adapt3d.diffusion.sds.ScoreDistillation` whose ``unet`` is a
    :class:`DepthTeacher`. ``generator`` (CPU) draws the SDS timesteps, noise and VAE sample.
    """
    kw = dict(noise_mode="const", sampling="deterministic", neural_rendering_resolution=neural_rendering_resolution)
    with torch.no_grad():
        src = G_source.synthesis(ws_source, cams, **kw)
    out = G.synthesis(ws, cams, **kw)
    sds.unet.set_depth(src.image_depth, src.weights)
    latent = int(sds.unet.config.sample_size)
    m = latent_mask(src.weights, latent).to(out.image.device)  # (N, 1, h, w)
    rec: dict = {}
    loss = torch.zeros((), device=out.image.device)
    if lambda_dsds > 0:
        s = sds(out.image, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                guidance_scale=guidance_scale, t_range=t_range, weighting=weighting, generator=generator,
                grad_mask=m)
        loss = loss + lambda_dsds * s.loss
        rec.update({"loss/dsds": float(s.loss.detach()), "sds/grad_norm": s.info["grad_norm"],
                    "sds/t_mean": s.info["t_mean"], "sds/mask_mean": float(m.mean())})
    if lambda_hsc > 0:
        h = hierarchical_spatial_consistency(out.features, src.features, hsc_grids, hsc_temperature)
        loss = loss + lambda_hsc * h
        rec["loss/hsc"] = float(h.detach())
    rec["loss/total"] = float(loss.detach())
    return loss, rec


def load_depth_teacher(diffusion: str, controlnet: str | None, device, *, conditioning_scale: float = 1.0,
                       ip_adapter: str | Path | None = None, ip_scale: float = 1.0,
                       diffusion_flag: str = "--diffusion"):
    """A :class:`adapt3d.diffusion.sds.ScoreDistillation` with a :class:`DepthTeacher`: ``controlnet`` None = an SD 2
    depth model (id, folder or 'tiny'); otherwise an SD 1.x/2.x base + that depth ControlNet. ``ip_adapter``: an
    IP-Adapter folder installed into the teacher UNet (image-guided mode; the encoder is ``unet.image_prompt``)."""
    import warnings

    from diffusers import AutoencoderKL, ControlNetModel, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from adapt3d.diffusion.loading import download_error, resolve_pretrained
    from adapt3d.diffusion.sds import ScoreDistillation

    kind = "stable-diffusion" if controlnet else "stable-diffusion-depth"
    name = resolve_pretrained(diffusion, kind, diffusion_flag)
    cn_name = resolve_pretrained(controlnet, "controlnet", "--controlnet") if controlnet else None
    dev = torch.device(device)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            unet = UNet2DConditionModel.from_pretrained(name, subfolder="unet", torch_dtype=dtype)
            vae = AutoencoderKL.from_pretrained(name, subfolder="vae", torch_dtype=dtype)
            text_encoder = CLIPTextModel.from_pretrained(name, subfolder="text_encoder", dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(name, subfolder="tokenizer")
            scheduler = DDIMScheduler.from_pretrained(name, subfolder="scheduler")
            cn = ControlNetModel.from_pretrained(cn_name, torch_dtype=dtype) if cn_name else None
    except OSError as e:
        raise download_error(str(diffusion), kind, diffusion_flag, e) from e
    if controlnet is None and int(unet.config.in_channels) != 5:
        raise ValueError(f"{diffusion_flag}: {diffusion!r} is not an SD 2 depth model (UNet in_channels "
                         f"{unet.config.in_channels}, expected 5); give one (e.g. stabilityai/stable-diffusion-2-"
                         "depth) or a depth --controlnet with an SD base")
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    teacher = DepthTeacher(unet, cn, conditioning_scale, factor).to(dev)
    if ip_adapter is not None:
        from adapt3d.diffusion.ip_adapter import load_ip_adapter
        teacher.image_prompt = load_ip_adapter(unet, ip_adapter, scale=ip_scale)
    return ScoreDistillation(teacher, scheduler, text_encoder, tokenizer, vae, device=dev,
                             source=f"{diffusion}" + (f" + {controlnet}" if controlnet else ""))


def read_image_prompt(path: str | Path) -> torch.Tensor:
    """The --image-prompt file as (1, 3, H, W) in [-1, 1] (RGB; transparency composited on white)."""
    import numpy as np

    from adapt3d.utils.image_files import open_image
    with open_image(path, "--image-prompt") as img:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # (H, W, 3) in [0, 1]
    return torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1


from adapt3d.training.nada import ClipAdaptTrainer  # noqa: E402  (after the step: the step does not need it)


class DSDSTrainer(ClipAdaptTrainer):
    """``--method dsds`` on the CLIP-adaptation machinery (run folder, ticks, snapshots, resume, NaN guard); the
    step is :func:`dsds_step`. ``clip_loss`` is only used for logging (``clip/direction``)."""

    source_name = "adapt3d dsds"

    def __init__(self, cfg, G, clip_loss, sds, **kw):
        super().__init__(cfg, G, clip_loss, **kw)
        self.sds = sds
        prompt = cfg.prompt
        self.prompt_embeds = sds.encode_prompt([prompt])
        self.negative_embeds = sds.encode_prompt([cfg.negative_prompt])
        if getattr(cfg, "image_prompt", None) is not None:  # image-guided mode: the IP-Adapter image prompt
            sds.unet.image_embeds = sds.unet.image_prompt.embed(read_image_prompt(cfg.image_prompt))

    def metadata(self) -> dict:
        return {**super().metadata(), "method": "dsds"}

    def train_step(self) -> dict:
        cfg = self.cfg
        gen = self.rng("dsds")
        z = self.latents(gen, self.batch)
        with torch.no_grad():
            ws_source = self.map(self.G_frozen, z)
        ws = self.map(self.G, z) if self.map_trainable else ws_source
        cams = self.random_cameras(gen, self.batch * self.views)
        views = self.views
        loss, rec = dsds_step(
            self.G, self.G_frozen, ws.repeat_interleave(views, 0), ws_source.repeat_interleave(views, 0), cams,
            self.sds, self.prompt_embeds, self.negative_embeds, generator=gen, guidance_scale=cfg.guidance_scale,
            t_range=tuple(cfg.t_range), weighting=cfg.weighting, lambda_dsds=cfg.lambda_dsds,
            lambda_hsc=cfg.lambda_hsc, hsc_grids=tuple(cfg.hsc_grids), hsc_temperature=cfg.hsc_temperature,
            neural_rendering_resolution=self.nrr)
        self.optimizer_step(self.opt, loss, "DSDS")
        return rec
