"""Estimate the camera of a photo by analysis by synthesis, without a face-reconstruction network.

1. grid: yaw offsets ``linspace(-yaw_range, +yaw_range, yaw_steps)`` x pitch offsets ``linspace(-pitch_range,
   +pitch_range, pitch_steps)`` around the generator's average camera (frontal: yaw = pitch = pi/2, at its average
   radius and pivot, with its field of view);
2. score: render the mean latent w_avg at every grid camera and compute the reconstruction loss to the target;
3. refine: for the ``keep`` best cameras, run a short projection (``steps`` steps) that optimises w and the camera
   (yaw, pitch) jointly;
4. keep the candidate with the lowest final loss; its camera, w and noise maps warm-start the full inversion.

Every candidate (grid angles, initial loss, refined angles, final loss) is reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from adapt3d.inversion.camera_io import OrbitCamera
from adapt3d.inversion.projector import ProjectionResult, ProjectorConfig, WStatistics, project, w_statistics
from adapt3d.utils.parsing import check_at_least

__all__ = ["CameraSearchConfig", "CameraCandidate", "CameraSearchResult", "camera_grid", "search_camera"]


@dataclass
class CameraSearchConfig:
    yaw_range_deg: float = 30.0
    """Grid half-width in yaw around the average camera, degrees."""
    yaw_steps: int = 5
    """Grid points in yaw (odd counts include the frontal view)."""
    pitch_range_deg: float = 15.0
    """Grid half-width in pitch, degrees (EG3D pitch: cosine-uniform, see adapt3d.cameras.lookat)."""
    pitch_steps: int = 3
    keep: int = 3
    """Grid cameras refined jointly with w."""
    steps: int = 60
    """Projection steps per refined candidate."""

    def __post_init__(self) -> None:
        check_at_least(self, ("yaw_steps", "pitch_steps", "keep", "steps"), prefix="search-")
        for name in ("yaw_range_deg", "pitch_range_deg"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v < 90):
                raise ValueError(f"--search-{name.replace('_', '-')}: must be in [0, 90) degrees, got {v}")


@dataclass
class CameraCandidate:
    yaw: float
    pitch: float
    initial_loss: float
    refined: bool = False
    final_yaw: float | None = None
    final_pitch: float | None = None
    final_loss: float | None = None

    def to_dict(self) -> dict:
        return {"yaw_deg": math.degrees(self.yaw - math.pi / 2), "pitch_deg": math.degrees(self.pitch - math.pi / 2),
                "initial_loss": self.initial_loss, "refined": self.refined,
                "final_yaw_deg": None if self.final_yaw is None else math.degrees(self.final_yaw - math.pi / 2),
                "final_pitch_deg": None if self.final_pitch is None else math.degrees(self.final_pitch - math.pi / 2),
                "final_loss": self.final_loss}


@dataclass
class CameraSearchResult:
    camera: OrbitCamera
    """The best camera (refined)."""
    projection: ProjectionResult
    """The best candidate's short projection (warm start for the full inversion)."""
    candidates: list[CameraCandidate] = field(default_factory=list)


def camera_grid(config: CameraSearchConfig) -> list[tuple[float, float]]:
    """(yaw, pitch) in EG3D radians of every grid camera, yaw-major."""
    def axis(range_deg: float, steps: int) -> list[float]:
        if steps == 1:
            return [0.0]
        r = math.radians(range_deg)
        return [-r + 2 * r * k / (steps - 1) for k in range(steps)]
    return [(math.pi / 2 + dy, math.pi / 2 + dp) for dy in axis(config.yaw_range_deg, config.yaw_steps)
            for dp in axis(config.pitch_range_deg, config.pitch_steps)]


@torch.no_grad()
def _grid_losses(G, target: torch.Tensor, cams: list[OrbitCamera], w_avg: torch.Tensor, loss_fn: Callable,
                 batch: int = 4) -> list[float]:
    device = target.device
    out: list[float] = []
    for i in range(0, len(cams), batch):
        chunk = cams[i:i + batch]
        labels = torch.cat([c.label() for c in chunk]).to(device)  # (b, 25)
        ws = w_avg.to(device).reshape(1, 1, -1).expand(len(chunk), G.num_ws, -1)
        images = G.synthesis(ws, labels, noise_mode="const", sampling="deterministic").image
        out += loss_fn(images, target).tolist()  # target (1, ...) is compared with every render
    return out


def search_camera(G, target: torch.Tensor, loss_fn: Callable, config: CameraSearchConfig,
                  projector: ProjectorConfig, *, stats: WStatistics | None = None,
                  progress: bool = False) -> CameraSearchResult:
    """Find the camera of ``target`` (1, 3, R, R) in [-1, 1] (see the module docstring). ``projector`` sets the
    short projections (its ``num_steps`` is replaced by ``config.steps``, the camera is always refined)."""
    device = next(G.parameters()).device
    target = target.to(device).float()
    stats = stats or w_statistics(G, projector.w_avg_samples, projector.seed, device)
    cams = [OrbitCamera.for_generator(G, yaw, pitch, device=device) for yaw, pitch in camera_grid(config)]
    losses = _grid_losses(G, target, cams, stats.w_avg, loss_fn)
    candidates = [CameraCandidate(float(c.yaw), float(c.pitch), loss) for c, loss in zip(cams, losses)]
    order = sorted(range(len(cams)), key=lambda i: (losses[i], i))[:config.keep]
    short = replace(projector, num_steps=config.steps, refine_camera=True)
    best: tuple[float, int, ProjectionResult] | None = None
    for rank, i in enumerate(order):
        res = project(G, target, cams[i], loss_fn, short, stats=stats, progress=progress,
                      desc=f"camera {rank + 1}/{len(order)}")
        cand = candidates[i]
        cand.refined, cand.final_yaw, cand.final_pitch, cand.final_loss = True, res.yaw, res.pitch, res.loss
        if best is None or res.loss < best[0]:
            best = (res.loss, i, res)
    _, i, res = best
    camera = OrbitCamera.for_generator(G, res.yaw, res.pitch, device=device)
    return CameraSearchResult(camera=camera, projection=res, candidates=candidates)
