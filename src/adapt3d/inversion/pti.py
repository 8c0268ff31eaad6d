"""Pivotal tuning (PTI, Roich et al. 2022) for tri-plane generators: after the latent is found, fine-tune the
generator's weights around it so that the pivot latent reproduces the photo, while a locality regulariser keeps
the rest of the latent space where it was.

Per step (a copy of the generator is tuned; the original stays frozen as the reference)::

    rec   = reconstruction(G_t(w_p, c_p), target)                         (LPIPS / MSE / ..., as the inversion)
    w_z   = mapping(z), z ~ N(0, I);   w_r = w_p + r * (w_z - w_p) / |w_z - w_p|   (per layer), r = radius * w_std
    c_r   = orbit camera at yaw, pitch offsets ~ U(+-0.3), U(+-0.15) rad around the average camera
    loc   = mse(G_t(w_r, c_r), G(w_r, c_r)) + lpips term when the loss has one
    loss  = rec + locality_weight * loc          (loc every ``locality_every`` steps)

Tuned: every generator parameter except the mapping network (ws are given, so the mapping is unused and kept
identical: seeds map to the same ws before and after). Adam, constant learning rate. Rendering is deterministic
(no ray jitter) and uses the pivot's noise maps.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from adapt3d.inversion.camera_io import OrbitCamera
from adapt3d.inversion.losses import psnr
from adapt3d.inversion.projector import WStatistics, use_noise, w_statistics

__all__ = ["PTIConfig", "PTIResult", "pivotal_tuning"]


@dataclass
class PTIConfig:
    num_steps: int = 350
    """Tuning steps (PTI: 350)."""
    lr: float = 3e-4
    """Adam learning rate of the generator weights (PTI: 3e-4)."""
    locality_weight: float = 0.1
    """Weight of the locality regulariser (0 = off; PTI: 0.1)."""
    locality_every: int = 1
    """Apply the regulariser every this many steps."""
    locality_radius: float = 1.0
    """Distance of the regularisation latents from the pivot, in units of w_std."""
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.num_steps) < 1 or int(self.locality_every) < 1:
            raise ValueError(f"--pti-steps and --pti-locality-every must be >= 1, got {self.num_steps}, "
                             f"{self.locality_every}")
        for name in ("lr", "locality_radius"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"--pti-{name.replace('_', '-')}: must be > 0, got {v}")
        if not (math.isfinite(self.locality_weight) and self.locality_weight >= 0):
            raise ValueError(f"--pti-locality-weight: must be >= 0, got {self.locality_weight}")


@dataclass
class PTIResult:
    generator: torch.nn.Module
    """The tuned generator (eval mode, frozen), on the device it was tuned on."""
    loss_before: float
    loss_after: float
    psnr_before: float
    psnr_after: float
    image: torch.Tensor
    """Reconstruction by the tuned generator (1, 3, R, R) in [-1, 1], CPU."""
    history: list[dict] = field(default_factory=list)


def _render(G, ws: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return G.synthesis(ws, label, noise_mode="const", sampling="deterministic").image


def tuned_parameters(G) -> list[torch.nn.Parameter]:
    """Every parameter except the mapping network's."""
    return [p for name, p in G.named_parameters() if not name.startswith("backbone.mapping.")]


def pivotal_tuning(G, target: torch.Tensor, ws: torch.Tensor, camera: torch.Tensor, loss_fn: Callable,
                   config: PTIConfig, *, noise: dict[str, torch.Tensor] | None = None,
                   stats: WStatistics | None = None, progress: bool = False) -> PTIResult:
    """Tune a copy of ``G`` so that ``ws`` (1, num_ws, w_dim) at ``camera`` (1, 25) reproduces ``target``
    (1, 3, R, R) in [-1, 1]. ``G`` itself is not modified. ``loss_fn(x, y) -> (B,)``."""
    device = next(G.parameters()).device
    target, ws, camera = target.to(device).float(), ws.to(device).float(), camera.to(device).float()
    stats = stats or w_statistics(G, 1000, config.seed, device)
    G_ref = G.eval().requires_grad_(False)
    G_t = copy.deepcopy(G_ref).train(False)
    params = tuned_parameters(G_t)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=config.lr, betas=(0.9, 0.999))
    gen = torch.Generator().manual_seed(int(config.seed))
    has_lpips = getattr(loss_fn, "lpips", None) is not None
    history: list[dict] = []
    steps = range(config.num_steps)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="pti", unit="step")
    with use_noise(G_ref, noise), use_noise(G_t, noise):
        with torch.no_grad():
            before = _render(G_t, ws, camera)
            loss_before = float(loss_fn(before, target).sum())
            psnr_before = float(psnr(before, target)[0])
        for step in steps:
            rec = loss_fn(_render(G_t, ws, camera), target).sum()
            loss = rec
            entry = {"step": step, "loss": float(rec.detach())}
            if config.locality_weight > 0 and step % config.locality_every == 0:
                z = torch.randn(1, G.z_dim, generator=gen).to(device)
                cond = OrbitCamera.for_generator(G, device=device).label()
                with torch.no_grad():
                    w_z = G_ref.mapping(z, cond)  # (1, num_ws, w_dim)
                direction = w_z - ws
                w_r = ws + config.locality_radius * stats.w_std * direction / direction.norm(dim=-1, keepdim=True)
                dyaw = (torch.rand(1, generator=gen) * 2 - 1) * 0.3
                dpitch = (torch.rand(1, generator=gen) * 2 - 1) * 0.15
                c_r = OrbitCamera.for_generator(G, math.pi / 2 + float(dyaw), math.pi / 2 + float(dpitch),
                                                device=device).label()
                with torch.no_grad():
                    ref = _render(G_ref, w_r, c_r)
                out = _render(G_t, w_r, c_r)
                loc = F.mse_loss(out, ref)
                if has_lpips:
                    loc = loc + loss_fn.lpips(out, ref).sum()
                loss = loss + config.locality_weight * loc
                entry["locality"] = float(loc.detach())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not math.isfinite(entry["loss"]):
                raise FloatingPointError(f"pivotal tuning diverged at step {step}; lower --pti-lr")
            history.append(entry)
        G_t.eval().requires_grad_(False)
        with torch.no_grad():
            after = _render(G_t, ws, camera)
            loss_after = float(loss_fn(after, target).sum())
            psnr_after = float(psnr(after, target)[0])
    return PTIResult(generator=G_t, loss_before=loss_before, loss_after=loss_after, psnr_before=psnr_before,
                     psnr_after=psnr_after, image=after.cpu(), history=history)
