"""DreamFusion-style per-prompt optimisation with SDS from the same tri-plane generator: the baseline that
DreamPortrait's single forward pass is measured against.

For one prompt and one latent seed, the generator stays frozen and only a per-sample representation is optimised:

- ``target='w'``: the latent ws (1, num_ws, w_dim), initialised from ``mapping(z_seed, frontal camera, psi)``;
- ``target='triplane'``: the tri-planes (1, 3, C, P, P), initialised from ``planes(ws)`` (rendered with ws).

Each of ``steps`` Adam steps renders ``batch`` cameras from the pose sampler and applies the same SDS as
``adapt3d distill`` (view-dependent prompts, CFG, w(t), timestep range/annealing, clipping). Randomness of step s
comes from ``seed`` and s only. The cost of a *new* prompt is the whole optimisation
(:attr:`PerPromptResult.seconds`), versus one forward pass for the distilled generator.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from adapt3d.cameras import frontal_label, make_pose_sampler
from adapt3d.diffusion.sds import SDSOptions, ScoreDistillation, timestep_range, view_index, view_prompt
from adapt3d.models.triplane import TriPlaneGenerator

__all__ = ["PerPromptConfig", "PerPromptResult", "optimize_prompt", "render_result"]


@dataclass
class PerPromptConfig(SDSOptions):
    """Settings of one per-prompt optimisation (names and defaults as in ``DistillConfig``)."""

    steps: int = 200
    """Adam steps."""
    lr: float = 0.01
    """Adam learning rate of the optimised tensor."""
    target: Literal["w", "triplane"] = "w"
    """What is optimised: the latent ws or the tri-planes."""
    batch: int = 1
    """Cameras per step."""
    yaw_spread: float = 0.3
    """Gaussian yaw std of the training cameras (radians)."""
    pitch_spread: float = 0.15
    trunc: float = 0.7
    """Truncation psi of the initial latent."""
    neural_rendering_resolution: int | None = None
    seed: int = 0
    """Seed of the cameras, timesteps and noise (the latent comes from the sample's own seed)."""

    def __post_init__(self) -> None:
        if self.target not in ("w", "triplane"):
            raise ValueError(f"--target: {self.target!r} is not 'w' or 'triplane'")
        for name in ("steps", "batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name}: must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"--lr: must be > 0, got {self.lr}")
        self.check_sds()


@dataclass
class PerPromptResult:
    """The optimised representation of one (prompt, seed): ws (1, num_ws, w_dim) and, for ``target='triplane'``,
    planes (1, 3, C, P, P); ``seconds`` includes prompt encoding; ``grad_norms`` per step."""

    prompt: str
    seed: int
    ws: torch.Tensor
    planes: torch.Tensor | None
    seconds: float
    steps: int
    grad_norms: list[float] = field(default_factory=list)


def optimize_prompt(G: TriPlaneGenerator, sds: ScoreDistillation, prompt: str, seed: int,
                    config: PerPromptConfig | None = None) -> PerPromptResult:
    """Optimise one latent (or tri-plane) of the frozen ``G`` for ``prompt`` with SDS; see the module docstring."""
    cfg = config or PerPromptConfig()
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: empty; describe the target, e.g. 'a portrait of an elf'")
    device = next(G.parameters()).device
    G.requires_grad_(False)
    t0 = time.perf_counter()
    views = torch.cat([sds.encode_prompt([view_prompt(prompt, v)]) for v in range(3)]).to(device)  # (3, L, D)
    plain = sds.encode_prompt([prompt]).to(device)  # (1, L, D)
    uncond = sds.encode_prompt([cfg.negative_prompt]).to(device)
    r = G.rendering
    z = torch.from_numpy(np.random.RandomState(seed).randn(1, G.z_dim)).float().to(device)
    c_cond = frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg, batch_size=1).to(device)
    with torch.no_grad():
        ws0 = G.mapping(z, c_cond, truncation_psi=cfg.trunc)
        planes0 = G.planes(ws0, noise_mode="const") if cfg.target == "triplane" else None
    param = (ws0 if cfg.target == "w" else planes0).clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=cfg.lr, betas=(0.9, 0.99))
    sampler = make_pose_sampler("gaussian", yaw_std=cfg.yaw_spread, pitch_std=cfg.pitch_spread)
    nrr = cfg.neural_rendering_resolution or int(G.neural_rendering_resolution)
    norms = []
    for step in range(cfg.steps):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        poses = sampler.sample(cfg.batch, gen)
        c = poses.labels(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg).to(device)
        teacher = views[view_index(poses.yaw).to(device)] if cfg.view_prompts else plain
        b = cfg.batch
        ws = param.expand(b, -1, -1) if cfg.target == "w" else ws0.expand(b, -1, -1)
        planes = param.expand(b, -1, -1, -1, -1) if cfg.target == "triplane" else None
        out = G.synthesis(ws, c, planes=planes, noise_mode="const", sampling="stochastic",
                          neural_rendering_resolution=nrr)
        s = sds(images=out.image, prompt_embeds=teacher, negative_prompt_embeds=uncond,
                guidance_scale=cfg.guidance_scale,
                t_range=timestep_range(step, cfg.steps, cfg.t_range, cfg.t_anneal, cfg.t_max_final),
                weighting=cfg.weighting, grad_clip=cfg.grad_clip, generator=gen)
        opt.zero_grad(set_to_none=True)
        s.loss.backward()
        if param.grad is not None and bool(torch.isfinite(param.grad).all()):
            opt.step()
        norms.append(s.info["grad_norm"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    ws_final = param.detach() if cfg.target == "w" else ws0
    planes_final = param.detach() if cfg.target == "triplane" else None
    return PerPromptResult(prompt, seed, ws_final, planes_final, seconds, cfg.steps, norms)


@torch.no_grad()
def render_result(G: TriPlaneGenerator, result: PerPromptResult, cameras: torch.Tensor) -> torch.Tensor:
    """Images (V, 3, R, R) in [-1, 1] (CPU) of an optimised result at cameras (V, 25), deterministic."""
    device = result.ws.device
    v = cameras.shape[0]
    planes = result.planes if result.planes is not None else G.planes(result.ws, noise_mode="const")
    out = G.synthesis(result.ws.expand(v, -1, -1), cameras.to(device), planes=planes.expand(v, -1, -1, -1, -1),
                      noise_mode="const", sampling="deterministic")
    return out.image.cpu()
