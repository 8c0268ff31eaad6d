"""Optimisation-based projection of an image into a tri-plane generator's latent space (W or W+), optionally
refining the camera jointly.

Algorithm (EG3D's / DATID-3D's projector, rewritten; ``t = step / num_steps``)::

    w_avg, w_std   mean of mapping(z) over ``w_avg_samples`` z ~ N(0, I) (frontal conditioning camera) and the
                   root-mean-square distance of those samples from w_avg
    start          w = w_avg (one row for W, num_ws rows for W+) unless ``init_ws`` is given
    lr(t)          lr * min(1, (step + 1) / (rampup * N)) * (0.5 - 0.5 cos(pi * min(1, (1 - t) / rampdown)))
    w noise        w_in = w + N(0, I) * w_std * w_noise * max(0, 1 - t / w_noise_ramp)^2   (exploration)
    image          G.synthesis(w_in, camera, noise_mode='const', sampling='deterministic')
    loss           reconstruction(image, target) + noise_regularize * sum_maps sum_scales (autocorr_x^2 +
                   autocorr_y^2)   (the noise maps are optimised too and re-standardised after every step)
    camera         with ``refine_camera``, yaw and pitch (EG3D orbit angles at the generator's average radius,
                   pivot and field of view) are Adam parameters with learning rate ``camera_lr`` on the same
                   schedule; pitch is kept in [0.1, pi - 0.1]

The result holds the final w, the camera label, the optimised noise maps (to be used when rendering the latent)
and the final reconstruction. Everything random is drawn from ``torch.Generator().manual_seed(seed)``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F

from adapt3d.cameras import frontal_label
from adapt3d.inversion.camera_io import OrbitCamera, label_angles
from adapt3d.inversion.losses import psnr
from adapt3d.utils.parsing import check_at_least, flag_name

__all__ = ["ProjectorConfig", "ProjectionResult", "WStatistics", "w_statistics", "project", "noise_buffers",
           "use_noise", "noise_regularization", "learning_rate"]


@dataclass
class ProjectorConfig:
    space: Literal["w", "w+"] = "w+"
    """W: one w shared by all layers; W+: one w per layer (more expressive, DATID-3D's choice)."""
    num_steps: int = 300
    """Optimisation steps (DATID-3D: 300; EG3D's W projector: 1000)."""
    lr: float = 0.01
    """Peak Adam learning rate of w."""
    lr_rampup: float = 0.05
    """Fraction of the steps of linear warm-up."""
    lr_rampdown: float = 0.25
    """Fraction of the steps of cosine decay to 0 at the end."""
    w_noise: float = 0.05
    """Initial std of the exploration noise added to w, as a fraction of w_std."""
    w_noise_ramp: float = 0.75
    """Fraction of the steps over which the exploration noise decays (quadratically) to 0."""
    optimize_noise: bool = True
    """Also optimise the synthesis network's noise maps (noise_const buffers), regularised."""
    noise_regularize: float = 1e5
    """Weight of the noise maps' autocorrelation penalty."""
    refine_camera: bool = False
    """Optimise yaw and pitch jointly with w (needs an OrbitCamera)."""
    camera_lr: float = 0.01
    """Peak Adam learning rate of yaw and pitch (radians)."""
    w_avg_samples: int = 1000
    """Samples for w_avg and w_std (EG3D: 10000, DATID-3D: 600)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.space not in ("w", "w+"):
            raise ValueError(f"--space: expected 'w' or 'w+', got {self.space!r}")
        check_at_least(self, ("num_steps", "w_avg_samples"))
        for name in ("lr", "camera_lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{flag_name(name)}: must be > 0, got {v}")
        for name in ("lr_rampup", "lr_rampdown", "w_noise_ramp"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"{flag_name(name)}: must be in (0, 1], got {v}")
        for name in ("w_noise", "noise_regularize"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{flag_name(name)}: must be >= 0, got {v}")


@dataclass
class WStatistics:
    w_avg: torch.Tensor  # (w_dim,)
    w_std: float


@dataclass
class ProjectionResult:
    ws: torch.Tensor
    """(1, num_ws, w_dim) on the CPU."""
    camera: torch.Tensor
    """EG3D label (1, 25) on the CPU."""
    yaw: float
    pitch: float
    noise: dict[str, torch.Tensor]
    """Optimised noise maps by module name (empty unless optimize_noise)."""
    loss: float
    """Reconstruction loss of the final latent (no exploration noise)."""
    psnr: float
    image: torch.Tensor
    """Final reconstruction (1, 3, R, R) in [-1, 1], CPU."""
    history: list[dict] = field(default_factory=list)
    """Per step: step, loss, lr (and yaw, pitch when the camera is refined)."""


@torch.no_grad()
def w_statistics(G, num_samples: int = 1000, seed: int = 0, device: torch.device | str = "cpu",
                 batch: int = 1000) -> WStatistics:
    """w_avg and w_std of the mapping network (frontal conditioning camera), from ``num_samples`` seeded z."""
    gen = torch.Generator().manual_seed(int(seed))
    r = G.rendering
    ws = []
    for start in range(0, num_samples, batch):
        n = min(batch, num_samples - start)
        z = torch.randn(n, G.z_dim, generator=gen).to(device)
        c = frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg, batch_size=n).to(device)
        ws.append(G.mapping(z, c)[:, 0].float())  # (n, w_dim)
    w = torch.cat(ws)
    w_avg = w.mean(0)
    w_std = float((w - w_avg).pow(2).sum(1).mean().sqrt())
    return WStatistics(w_avg=w_avg, w_std=w_std)


def noise_buffers(G) -> dict[str, torch.Tensor]:
    """The synthesis network's noise maps: module name -> its ``noise_const`` buffer (H, W)."""
    return {name: m.noise_const for name, m in G.named_modules()
            if name.startswith("backbone.synthesis") and isinstance(getattr(m, "noise_const", None), torch.Tensor)}


@contextlib.contextmanager
def use_noise(G, noise: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """Temporarily replace G's noise_const buffers by ``noise`` (same names and shapes); restores them after."""
    if not noise:
        yield
        return
    modules = dict(G.named_modules())
    saved = {}
    try:
        for name, t in noise.items():
            m = modules.get(name)
            if m is None or not isinstance(getattr(m, "noise_const", None), torch.Tensor):
                raise ValueError(f"noise map {name!r} has no matching noise_const buffer in the generator")
            if tuple(m.noise_const.shape) != tuple(t.shape):
                raise ValueError(f"noise map {name!r} has shape {tuple(t.shape)}, the generator's is "
                                 f"{tuple(m.noise_const.shape)}")
            saved[name] = m._buffers["noise_const"]
            m._buffers["noise_const"] = t.to(saved[name].device, saved[name].dtype)
        yield
    finally:
        for name, t in saved.items():
            modules[name]._buffers["noise_const"] = t


def noise_regularization(maps: list[torch.Tensor]) -> torch.Tensor:
    """Sum over maps and scales (halving down to 8 px) of the squared one-pixel autocorrelations in x and y."""
    total = maps[0].new_zeros(())
    for n in maps:
        x = n[None, None]  # (1, 1, H, W)
        while True:
            total = total + (x * torch.roll(x, 1, dims=3)).mean() ** 2 + (x * torch.roll(x, 1, dims=2)).mean() ** 2
            if x.shape[-1] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return total


def learning_rate(step: int, num_steps: int, lr: float, rampup: float, rampdown: float) -> float:
    t = step / num_steps
    warm = min(1.0, (step + 1) / max(rampup * num_steps, 1e-8))
    down = min(1.0, (1 - t) / rampdown)
    return lr * warm * (0.5 - 0.5 * math.cos(math.pi * down))


def _render(G, ws: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return G.synthesis(ws, label, noise_mode="const", sampling="deterministic").image  # (B, 3, R, R)


def project(G, target: torch.Tensor, camera: OrbitCamera | torch.Tensor, loss_fn: Callable, config: ProjectorConfig,
            *, stats: WStatistics | None = None, init_ws: torch.Tensor | None = None,
            init_noise: dict[str, torch.Tensor] | None = None, progress: bool = False,
            desc: str = "invert") -> ProjectionResult:
    """Project ``target`` (1, 3, R, R) in [-1, 1] into ``G`` (eval mode, frozen) seen from ``camera`` (a fixed
    label (1, 25), or an :class:`OrbitCamera`, refined when ``config.refine_camera``). ``loss_fn(x, y) -> (B,)``."""
    device = next(G.parameters()).device
    if target.ndim != 4 or target.shape[0] != 1 or target.shape[1] != 3 or \
            tuple(target.shape[-2:]) != (G.img_resolution, G.img_resolution):
        raise ValueError(f"target: expected (1, 3, {G.img_resolution}, {G.img_resolution}) in [-1, 1], got "
                         f"{tuple(target.shape)}")
    if config.refine_camera and not isinstance(camera, OrbitCamera):
        raise ValueError("refine_camera needs an OrbitCamera (yaw/pitch), not a fixed label")
    target = target.to(device).float()
    stats = stats or w_statistics(G, config.w_avg_samples, config.seed, device)
    gen = torch.Generator().manual_seed(int(config.seed))
    rows = 1 if config.space == "w" else G.num_ws
    if init_ws is not None:
        start = init_ws.detach().to(device).float()
        start = start[:, :1] if config.space == "w" else start.expand(1, G.num_ws, -1)
    else:
        start = stats.w_avg.to(device).reshape(1, 1, -1).repeat(1, rows, 1)
    w_opt = start.clone().requires_grad_(True)  # (1, rows, w_dim)
    groups = [{"params": [w_opt], "base": config.lr}]
    cam = camera.detached() if isinstance(camera, OrbitCamera) else None
    if cam is not None:
        cam.yaw, cam.pitch = cam.yaw.to(device), cam.pitch.to(device)
    if config.refine_camera:
        cam.yaw.requires_grad_(True)
        cam.pitch.requires_grad_(True)
        groups.append({"params": [cam.yaw, cam.pitch], "base": config.camera_lr})
    fixed_label = camera.to(device).float() if isinstance(camera, torch.Tensor) else None
    noise = {k: (init_noise or {}).get(k, v).detach().clone().to(device)
             for k, v in noise_buffers(G).items()} if config.optimize_noise else {}
    if noise:
        for t in noise.values():
            t.requires_grad_(True)
        groups.append({"params": list(noise.values()), "base": config.lr})
    opt = torch.optim.Adam([{"params": g["params"]} for g in groups], betas=(0.9, 0.999), lr=config.lr)

    def label() -> torch.Tensor:
        return fixed_label if fixed_label is not None else cam.label()

    history: list[dict] = []
    steps = range(config.num_steps)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=desc, unit="step")
    with use_noise(G, noise):
        for step in steps:
            t = step / config.num_steps
            scale = learning_rate(step, config.num_steps, 1.0, config.lr_rampup, config.lr_rampdown)
            for pg, g in zip(opt.param_groups, groups):
                pg["lr"] = g["base"] * scale
            w_noise = stats.w_std * config.w_noise * max(0.0, 1 - t / config.w_noise_ramp) ** 2
            w_in = w_opt + torch.randn(w_opt.shape, generator=gen).to(device) * w_noise
            image = _render(G, w_in.expand(1, G.num_ws, -1), label())
            rec = loss_fn(image, target).sum()
            loss = rec + config.noise_regularize * noise_regularization(list(noise.values())) if noise else rec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for n in noise.values():
                    n.sub_(n.mean()).div_(n.std().clamp_min(1e-8))
                if cam is not None and config.refine_camera:
                    cam.pitch.clamp_(0.1, math.pi - 0.1)
            rec_item = float(rec.detach())
            if not math.isfinite(rec_item):
                raise FloatingPointError(f"inversion diverged at step {step} (loss {rec_item}); lower --lr")
            entry = {"step": step, "loss": rec_item, "lr": config.lr * scale}
            if config.refine_camera:
                entry.update(yaw=float(cam.yaw.detach()), pitch=float(cam.pitch.detach()))
            history.append(entry)
        with torch.no_grad():
            final_label = label().detach()
            ws = w_opt.detach().expand(1, G.num_ws, -1).contiguous()
            image = _render(G, ws, final_label)
            final_loss = float(loss_fn(image, target).sum())
            final_psnr = float(psnr(image, target)[0])
    yaw, pitch, _ = label_angles(final_label.cpu())
    return ProjectionResult(ws=ws.cpu(), camera=final_label.cpu().float(), yaw=yaw, pitch=pitch,
                            noise={k: v.detach().cpu() for k, v in noise.items()}, loss=final_loss, psnr=final_psnr,
                            image=image.cpu(), history=history)
