"""K-fold consistency filter (KCF) of 3D-DST: find generated images whose 3D annotation the image does not show.

Split the images into K folds (seeded shuffle); for each fold train a pose estimator on the other K - 1 folds and
score the held-out images with ``loss = CE(azimuth) + CE(elevation) + CE(theta)`` over angle bins (3D-DST's
criterion). An image whose annotation disagrees with what a model trained on the rest of the data sees gets a high
loss. 3D-DST's script stops at the losses (computed in train mode); here they are computed in eval mode and
:func:`select_kept` removes the worst fraction (per class or overall) or everything above a threshold.

Bins (``num_bins`` each, 41 in 3D-DST): azimuth [0, 2 pi) and theta [-pi, pi) wrap around; elevation [-pi/2, pi/2]
is clamped. The default estimator is a small CNN trained from scratch; any ``nn.Module`` mapping (N, 3, S, S)
images (normalised to [-1, 1]) to (N, 3 * num_bins) logits can be given instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SmallPoseCNN", "PoseTrainConfig", "angle_bins", "pose_loss", "kfold_split", "train_pose_model",
           "score_pose_model", "select_kept"]


class SmallPoseCNN(nn.Module):
    """Four conv blocks (conv-BN-ReLU-pool, widths 32-64-128-128), global average pool, linear to 3 x num_bins."""

    def __init__(self, num_bins: int = 41, width: int = 32):
        super().__init__()
        layers, c_in = [], 3
        for c in (width, 2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 3 * num_bins)
        self.num_bins = num_bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, S, S) -> (N, 3 * num_bins)
        return self.head(self.features(x).mean(dim=(2, 3)))


@dataclass
class PoseTrainConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    """AdamW learning rate (cosine decay to 0)."""
    weight_decay: float = 1e-4
    num_bins: int = 41


def angle_bins(azimuth: Sequence[float], elevation: Sequence[float], theta: Sequence[float],
               num_bins: int) -> torch.Tensor:
    """Bin indices (N, 3) of (azimuth, elevation, theta) in radians (see the module docstring)."""
    az = torch.as_tensor(azimuth, dtype=torch.float64)
    el = torch.as_tensor(elevation, dtype=torch.float64)
    th = torch.as_tensor(theta, dtype=torch.float64)
    b_az = torch.floor(torch.remainder(az, 2 * math.pi) / (2 * math.pi) * num_bins).long() % num_bins
    b_el = torch.floor((el + math.pi / 2) / math.pi * num_bins).long().clamp(0, num_bins - 1)
    b_th = torch.floor(torch.remainder(th + math.pi, 2 * math.pi) / (2 * math.pi) * num_bins).long() % num_bins
    return torch.stack([b_az, b_el, b_th], 1)


def pose_loss(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Per-image sum of the three cross-entropies (N,) from logits (N, 3 * num_bins) and bins (N, 3)."""
    n = logits.shape[1] // 3
    parts = logits.reshape(logits.shape[0], 3, n)
    return sum(F.cross_entropy(parts[:, k], bins[:, k], reduction="none") for k in range(3))


def kfold_split(n: int, folds: int, seed: int) -> list[np.ndarray]:
    """Shuffle 0..n-1 with ``seed`` and cut into ``folds`` nearly equal parts."""
    if not 2 <= folds <= n:
        raise ValueError(f"--folds: need 2 <= folds <= number of images ({n}), got {folds}")
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, folds)]


def _batches(images: torch.Tensor, idx: np.ndarray, size: int, device) -> torch.Tensor:
    for start in range(0, len(idx), size):
        sel = torch.from_numpy(idx[start:start + size])
        yield sel, images[sel].to(device).float().div(127.5).sub(1.0)  # uint8 -> [-1, 1]


def train_pose_model(model: nn.Module, images: torch.Tensor, bins: torch.Tensor, train_idx: np.ndarray,
                     cfg: PoseTrainConfig, seed: int, device: torch.device | str = "cpu",
                     progress: Callable | None = None) -> nn.Module:
    """Train ``model`` on ``images[train_idx]`` (uint8 (N, 3, S, S)) against ``bins`` (N, 3); returns it."""
    model = model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train_idx) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    rng = np.random.default_rng(seed)
    for _ in range(cfg.epochs):
        order = train_idx[rng.permutation(len(train_idx))]
        for sel, x in _batches(images, order, cfg.batch_size, device):
            if x.shape[0] < 2:  # BatchNorm needs two samples
                continue
            loss = pose_loss(model(x), bins[sel].to(device)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress()
    return model


@torch.no_grad()
def score_pose_model(model: nn.Module, images: torch.Tensor, bins: torch.Tensor, idx: np.ndarray,
                     batch_size: int = 64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-image losses (len(idx),) in eval mode."""
    model = model.to(device).eval()
    out = [pose_loss(model(x), bins[sel].to(device)).cpu() for sel, x in _batches(images, idx, batch_size, device)]
    return torch.cat(out) if out else torch.zeros(0)


def select_kept(losses: np.ndarray, classes: Sequence[str], drop: float = 0.1, threshold: float | None = None,
                per_class: bool = True) -> np.ndarray:
    """Boolean keep mask (N,). With ``threshold``: drop losses > threshold. Otherwise drop the ``round(drop * n)``
    highest losses, within each class when ``per_class`` (3D-DST's filter is per category) or over all images."""
    losses = np.asarray(losses, dtype=np.float64)
    keep = np.ones(len(losses), dtype=bool)
    if threshold is not None:
        return losses <= threshold
    if not 0 <= drop < 1:
        raise ValueError(f"--drop: must be in [0, 1), got {drop}")
    groups = [np.flatnonzero(np.asarray(classes) == c) for c in sorted(set(classes))] if per_class \
        else [np.arange(len(losses))]
    for g in groups:
        k = int(round(drop * len(g)))
        if k:
            worst = g[np.argsort(-losses[g], kind="stable")[:k]]
            keep[worst] = False
    return keep
