"""Latents and cameras of a tri-plane generator, as EG3D's scripts make them (one definition for every command).

- :func:`seed_latents`: z of a seed is ``np.random.RandomState(seed).randn(1, z_dim)``;
- :func:`frontal_cameras`: the conditioning camera of the mapping network (frontal, at the generator's average
  radius and pivot);
- :func:`default_cameras`: render cameras at EG3D angles (yaw, pitch in radians; ``pi/2`` is frontal) around the
  generator's average pivot and radius;
- :func:`map_seeds`: seeds -> ws, mapped with the frontal camera and truncation.

``G`` is a :class:`~adapt3d.models.triplane.TriPlaneGenerator` or anything with its ``rendering``, ``config``,
``z_dim`` and ``mapping`` (e.g. the text-conditioned generator).
"""

from __future__ import annotations

import numpy as np
import torch

from adapt3d.cameras import camera_label, frontal_label

__all__ = ["seed_latents", "frontal_cameras", "default_cameras", "map_seeds"]


def seed_latents(seeds: list[int], z_dim: int) -> torch.Tensor:
    """EG3D's z for each seed: ``np.random.RandomState(seed).randn(1, z_dim)``.  # (len(seeds), z_dim) float32"""
    return torch.from_numpy(np.concatenate([np.random.RandomState(s).randn(1, z_dim) for s in seeds])).float()


def frontal_cameras(G, n: int) -> torch.Tensor:
    """Labels (n, 25) of the frontal camera at the generator's average radius and pivot (the mapping's c)."""
    r = G.rendering
    return frontal_label(r.avg_camera_radius, r.avg_camera_pivot, G.config.camera_fov_deg, batch_size=n)


def default_cameras(G, yaw: torch.Tensor, pitch: torch.Tensor) -> torch.Tensor:
    """Labels (n, 25) of cameras at EG3D angles around the generator's average pivot and radius."""
    r = G.rendering
    return camera_label(yaw, pitch, radius=r.avg_camera_radius, pivot=r.avg_camera_pivot,
                        fov_deg=G.config.camera_fov_deg)


@torch.no_grad()
def map_seeds(G, seeds: list[int], trunc: float, cutoff: int | None, device: torch.device) -> torch.Tensor:
    """ws (S, num_ws, w_dim) of ``seeds``: EG3D's z, mapped with the frontal camera, truncation ``trunc``
    (psi in [0, 2], 1 = none) on the first ``cutoff`` layers (None = all)."""
    z = seed_latents(seeds, G.z_dim).to(device)
    c_cond = frontal_cameras(G, len(seeds)).to(device)
    return G.mapping(z, c_cond, truncation_psi=trunc, truncation_cutoff=cutoff)  # (S, num_ws, w_dim)
