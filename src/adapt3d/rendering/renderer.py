"""Tri-plane volume renderer: coarse stratified pass, importance pass, compositing (EG3D's ImportanceRenderer).

The renderer holds no weights. It is given the tri-planes, a decoder (features -> colour and density), rays and a
``RenderingConfig``; ``stochastic`` picks jittered sampling (training) or the deterministic variant (evaluation).
Rays can be processed in chunks to bound peak memory; results do not depend on the chunk size beyond float rounding (~1e-7). Without autograd
(``torch.no_grad()`` or planes that need no gradient) rays are chunked by default (``INFERENCE_RAY_POINTS`` sample
points per chunk), and on CPU a decoder that averages the planes (EG3D's OSGDecoder) gets its features from
``sample_triplane_mean`` (one weighted gather instead of grid_sample + mean; equal to float32 rounding).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Union

import torch
from torch import nn

from adapt3d.rendering.compositing import composite, composite_unsorted, composite_weights
from adapt3d.rendering.rays import ray_box_limits
from adapt3d.rendering.sampling import importance_depths, stratified_depths
from adapt3d.rendering.triplane import sample_triplane, sample_triplane_mean, triplane_table

# Without autograd, rays are rendered in chunks of about this many coarse sample points (bounds peak memory; the
# working set per chunk is ~ 2 KB per point; measured: 2^16 to 2^22 are equally fast on CPU).
INFERENCE_RAY_POINTS = 2 ** 17

Decoder = Callable[[torch.Tensor], dict]  # features (N, 3, M, C) -> {'rgb': (N, M, C'), 'sigma': (N, M, 1)}


@dataclass
class RenderingConfig:
    """EG3D's ``rendering_kwargs``, typed. Field names are the official keys so official dicts map one to one.

    Distances are in world units; ``ray_start``/``ray_end`` may be ``'auto'`` (clip rays to the box).
    """

    depth_resolution: int = 48
    depth_resolution_importance: int = 48
    ray_start: Union[float, str] = 2.25
    ray_end: Union[float, str] = 3.3
    box_warp: float = 1.0
    white_back: bool = False
    disparity_space_sampling: bool = False
    clamp_mode: str = "softplus"
    density_noise: float = 0.0
    avg_camera_radius: float = 2.7
    avg_camera_pivot: list = field(default_factory=lambda: [0.0, 0.0, 0.2])
    image_resolution: int = 512
    superresolution_module: str = "SuperresolutionHybrid8XDC"
    superresolution_noise_mode: str = "none"
    sr_antialias: bool = True
    c_gen_conditioning_zero: bool = False
    c_scale: float = 1.0
    gpc_reg_prob: Union[float, None] = 0.5
    density_reg: float = 0.25
    density_reg_p_dist: float = 0.004
    reg_type: str = "l1"
    decoder_lr_mul: float = 1.0

    def __post_init__(self):
        for name in ("ray_start", "ray_end"):
            v = getattr(self, name)
            if isinstance(v, str) and v != "auto":
                raise ValueError(f"rendering {name} must be a number or 'auto', got {v!r}")
        if (self.ray_start == "auto") != (self.ray_end == "auto"):
            raise ValueError("rendering ray_start and ray_end must both be 'auto' or both numbers, got "
                             f"{self.ray_start!r}, {self.ray_end!r}")
        if self.ray_start != "auto" and not 0 <= float(self.ray_start) < float(self.ray_end):
            raise ValueError(f"rendering needs 0 <= ray_start < ray_end, got {self.ray_start}, {self.ray_end}")
        if self.depth_resolution < 2 or self.depth_resolution_importance < 0:
            raise ValueError("rendering depth_resolution must be >= 2 and depth_resolution_importance >= 0, got "
                             f"{self.depth_resolution}, {self.depth_resolution_importance}")
        if self.box_warp <= 0:
            raise ValueError(f"rendering box_warp must be > 0, got {self.box_warp}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RenderingConfig":
        """Build from a (possibly official) dict; the module path of ``superresolution_module`` is dropped."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "superresolution_module" in kwargs:
            kwargs["superresolution_module"] = str(kwargs["superresolution_module"]).rsplit(".", 1)[-1]
        if "avg_camera_pivot" in kwargs:
            kwargs["avg_camera_pivot"] = [float(x) for x in kwargs["avg_camera_pivot"]]
        if "c_scale" not in d:  # EG3D reads c_scale with a default of 0 when the key is missing
            kwargs["c_scale"] = 0.0
        return cls(**kwargs)


def _ray_limits(origins, directions, cfg: RenderingConfig):
    if cfg.ray_start != "auto":
        return float(cfg.ray_start), float(cfg.ray_end)
    start, end = ray_box_limits(origins, directions, cfg.box_warp)  # (N, M, 1)
    valid = end > start
    if bool(valid.any()):
        start = torch.where(valid, start, start[valid].min())
        end = torch.where(valid, end, start[valid].max())
    return start, end


class ImportanceRenderer(nn.Module):
    """Render tri-plane features along rays. Holds no parameters (EG3D's ``renderer`` child)."""

    def forward(self, planes: torch.Tensor, decoder: Decoder, origins: torch.Tensor, directions: torch.Tensor,
                cfg: RenderingConfig, stochastic: bool = False, ray_chunk: int | None = None):
        """planes (N, 3, C, H, W); origins, directions (N, M, 3).

        Returns features (N, M, C') in [-1, 1], depth (N, M, 1), accumulated weight (N, M, 1).
        """
        n, m = origins.shape[:2]
        needs_grad = torch.is_grad_enabled() and (planes.requires_grad or origins.requires_grad
                                                  or directions.requires_grad)
        if not ray_chunk and not needs_grad:  # equal chunks of at most ~INFERENCE_RAY_POINTS coarse points
            n_chunks = -(-(n * m * cfg.depth_resolution) // INFERENCE_RAY_POINTS)
            ray_chunk = -(-m // n_chunks)
        chunk = m if not ray_chunk or ray_chunk >= m else ray_chunk
        table = None
        if not needs_grad and planes.device.type == "cpu" and _averages_planes(decoder):
            table = triplane_table(planes)  # rows for sample_triplane_mean, built once for all chunks and passes
        starts, ends = _ray_limits(origins, directions, cfg)
        outs = []
        for i in range(0, m, chunk):
            s = slice(i, i + chunk)
            rs = starts[:, s] if isinstance(starts, torch.Tensor) else starts
            re = ends[:, s] if isinstance(ends, torch.Tensor) else ends
            outs.append(self._render_rays(planes, decoder, origins[:, s], directions[:, s], rs, re, cfg,
                                          stochastic, table))
        rgb = torch.cat([o[0] for o in outs], 1)
        depth = torch.cat([o[1] for o in outs], 1)
        weight = torch.cat([o[2] for o in outs], 1)
        # EG3D clamps depth to the range of all samples in the batch; do it once over all chunks.
        depth = depth.clamp(min(o[3] for o in outs), max(o[4] for o in outs))
        return rgb, depth, weight

    def _render_rays(self, planes, decoder, origins, directions, ray_start, ray_end, cfg, stochastic, table=None):
        n, m, _ = origins.shape
        depths = stratified_depths(n, m, ray_start, ray_end, cfg.depth_resolution, stochastic,
                                   cfg.disparity_space_sampling, device=origins.device)  # (N, M, D, 1)
        colors, densities = self._query(planes, decoder, origins, directions, depths, cfg, table)
        if cfg.depth_resolution_importance > 0 and not torch.is_grad_enabled():
            # inference: coarse weights only, and the final composite without sorting/concatenating the colours
            weights = composite_weights(densities, depths, cfg.clamp_mode)
            fine = importance_depths(depths, weights, cfg.depth_resolution_importance, stochastic)  # (N, M, K, 1)
            colors_f, densities_f = self._query(planes, decoder, origins, directions, fine, cfg, table)
            rgb, depth, weight, depths = composite_unsorted(
                [colors, colors_f], torch.cat([densities, densities_f], -2), torch.cat([depths, fine], -2),
                cfg.white_back, cfg.clamp_mode)
            return rgb, depth, weight, float(depths.min()), float(depths.max())
        if cfg.depth_resolution_importance > 0:
            _, _, weights = composite(colors, densities, depths, cfg.white_back, cfg.clamp_mode)
            fine = importance_depths(depths, weights, cfg.depth_resolution_importance, stochastic)  # (N, M, K, 1)
            colors_f, densities_f = self._query(planes, decoder, origins, directions, fine, cfg, table)
            depths = torch.cat([depths, fine], -2)
            colors = torch.cat([colors, colors_f], -2)
            densities = torch.cat([densities, densities_f], -2)
            depths, order = torch.sort(depths, dim=-2)
            colors = torch.gather(colors, -2, order.expand(-1, -1, -1, colors.shape[-1]))
            densities = torch.gather(densities, -2, order)
        rgb, depth, weights = composite(colors, densities, depths, cfg.white_back, cfg.clamp_mode, clamp_depth=False)
        return rgb, depth, weights.sum(2), float(depths.min()), float(depths.max())

    @staticmethod
    def _query(planes, decoder, origins, directions, depths, cfg, table=None):
        n, m, s, _ = depths.shape
        points = (origins.unsqueeze(-2) + depths * directions.unsqueeze(-2)).reshape(n, m * s, 3)
        if table is not None:  # the decoder averages the planes: hand it the mean as a single plane (N, 1, M, C)
            out = decoder(sample_triplane_mean(planes, points, cfg.box_warp, table=table).unsqueeze(1))
        else:
            out = decoder(sample_triplane(planes, points, cfg.box_warp))
        sigma = out["sigma"]
        if cfg.density_noise > 0:
            sigma = sigma + torch.randn_like(sigma) * cfg.density_noise
        return out["rgb"].reshape(n, m, s, -1), sigma.reshape(n, m, s, 1)


def _averages_planes(decoder) -> bool:
    """Whether ``decoder`` declares it only uses the mean of the plane features (``averages_planes``)."""
    return bool(getattr(decoder, "averages_planes", False))
