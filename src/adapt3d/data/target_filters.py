"""Filters for a text-guided target dataset that need no extra pretrained network: pose consistency and diversity.

Pose consistency (analysis by synthesis)
    The diffusion model may rotate a face or re-pose an object; then the target image no longer matches its camera
    label. We render the SOURCE latent at the label camera and at candidate cameras around it (yaw / pitch offsets)
    and compare the image structure of each render with the target. Structure = the edge map: grayscale, Gaussian
    blur (sigma 1 px at the working size), Sobel gradient magnitude, a second blur (``edge_blur`` px) so that small
    texture changes count less than where the contours are. Similarity = normalised cross-correlation (NCC, in
    [-1, 1]) of the target's edge map with the render's. Scores recorded per image:

    - ``pose_ncc``: NCC with the label render;
    - ``pose_margin``: ``pose_ncc - max(NCC with the other candidates)``; > 0 means the label explains the target
      best;
    - ``pose_best``: the (yaw, pitch) offset in radians of the best candidate ((0, 0) = the label).

    An image is rejected when ``pose_margin < -margin`` (another camera explains it clearly better).

Diversity
    Greedy near-duplicate removal on image embeddings (CLIP image embeddings in ``make-dataset``): visit images in
    priority order (best CLIP score first, ties by index) and drop an image whose cosine distance
    ``1 - cos(e_i, e_j)`` to an already-kept image is below ``min_distance``. Recorded: ``nn_distance`` (the
    distance to the nearest other image of the whole set).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "edge_map",
    "edge_similarity",
    "PoseConsistencyConfig",
    "PoseConsistencyFilter",
    "PoseScores",
    "greedy_diverse_subset",
    "nearest_neighbour_distance",
]


def _gaussian_kernel(sigma: float, device, dtype) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()  # (2r+1,)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with replicate padding."""
    if sigma <= 0:
        return x
    k = _gaussian_kernel(sigma, x.device, x.dtype)
    r = k.numel() // 2
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def edge_map(images: torch.Tensor, size: int = 64, edge_blur: float = 1.5) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> blurred Sobel gradient magnitude (B, 1, size, size), float32."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected (B, 3, H, W) in [-1, 1], got {tuple(images.shape)}")
    x = images.float()
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3] + 1) / 2  # (B, 1, H, W) in [0, 1]
    if gray.shape[-1] != size or gray.shape[-2] != size:
        gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    gray = _blur(gray, 1.0)
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device) / 8
    kernels = torch.stack([sx, sx.t()]).unsqueeze(1)  # (2, 1, 3, 3)
    grad = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kernels)  # (B, 2, size, size)
    mag = torch.sqrt((grad ** 2).sum(1, keepdim=True) + 1e-12)
    return _blur(mag, edge_blur)


def edge_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NCC of edge maps a, b (B, 1, h, w) -> (B,) in [-1, 1] (0 when either map is constant)."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 1e-12, (a * b).sum(1) / den.clamp_min(1e-12), torch.zeros_like(den))


def _cross_offsets(step: float, rings: int) -> list[tuple[float, float]]:
    """(0, 0) then (+-k step, 0) and (0, +-k step) for k = 1..rings."""
    out = [(0.0, 0.0)]
    for k in range(1, rings + 1):
        out += [(k * step, 0.0), (-k * step, 0.0), (0.0, k * step), (0.0, -k * step)]
    return out


@dataclass(frozen=True)
class PoseConsistencyConfig:
    step: float = 0.1
    """Angle step in radians between candidate cameras (yaw and pitch offsets are multiples of it)."""
    rings: int = 2
    """Candidates at 1..rings steps along +-yaw and +-pitch (4 * rings candidates besides the label)."""
    margin: float = 0.05
    """Reject when the best other candidate's NCC exceeds the label's by more than this."""
    size: int = 64
    """Working resolution of the edge maps in pixels."""
    edge_blur: float = 1.5
    """Blur sigma (pixels at the working size) applied to the gradient magnitude."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"pose step must be a finite angle > 0 radians, got {self.step!r}")
        if self.rings < 1:
            raise ValueError(f"pose rings must be >= 1, got {self.rings!r}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"pose margin must be >= 0, got {self.margin!r}")
        if self.size < 8:
            raise ValueError(f"pose size must be >= 8 pixels, got {self.size!r}")

    @property
    def offsets(self) -> list[tuple[float, float]]:
        return _cross_offsets(self.step, self.rings)


@dataclass
class PoseScores:
    ncc: torch.Tensor
    """(B,) NCC of the target's edges with the label render's."""
    margin: torch.Tensor
    """(B,) ncc - max NCC over the other candidates."""
    best: list[tuple[float, float]]
    """Per image, the (yaw, pitch) offset in radians of the best-matching candidate."""
    candidate_ncc: torch.Tensor = field(repr=False, default=None)
    """(B, K) NCC with every candidate (column 0 = the label)."""

    def passed(self, margin: float) -> torch.Tensor:
        """(B,) bool: the label camera is not beaten by more than ``margin``."""
        return self.margin >= -margin


# render(yaw (B,), pitch (B,), which (B,) source indices) -> images (B, 3, H, W) in [-1, 1]
RenderFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class PoseConsistencyFilter:
    """Score targets against renders of their source at candidate cameras (see module docstring).

    ``render_fn(yaw (B,), pitch (B,)) -> (B, 3, H, W)`` renders the B sources at the given EG3D angles; the
    pipeline builds it from the source generator and the sources' ws.
    """

    def __init__(self, config: PoseConsistencyConfig | None = None) -> None:
        self.config = config or PoseConsistencyConfig()

    @torch.no_grad()
    def score(self, targets: torch.Tensor, yaw: torch.Tensor, pitch: torch.Tensor, render_fn: RenderFn,
              label_renders: torch.Tensor | None = None) -> PoseScores:
        """targets (B, 3, H, W) in [-1, 1]; yaw, pitch (B,) the label angles. ``label_renders`` (the sources
        themselves, (B, 3, H', W')) saves one render per image when given."""
        cfg = self.config
        if targets.shape[0] != yaw.shape[0] or yaw.shape != pitch.shape:
            raise ValueError(f"targets {tuple(targets.shape)}, yaw {tuple(yaw.shape)} and pitch "
                             f"{tuple(pitch.shape)} must have the same batch size")
        t_edges = edge_map(targets, cfg.size, cfg.edge_blur)
        nccs = []
        for k, (dy, dp) in enumerate(cfg.offsets):
            if k == 0 and label_renders is not None:
                renders = label_renders
            else:
                renders = render_fn(yaw + dy, pitch + dp)
            nccs.append(edge_similarity(t_edges, edge_map(renders.to(targets.device), cfg.size, cfg.edge_blur)))
        cand = torch.stack(nccs, dim=1).cpu()  # (B, K)
        best_other = cand[:, 1:].max(dim=1).values
        best = [cfg.offsets[int(i)] for i in cand.argmax(dim=1)]
        return PoseScores(ncc=cand[:, 0], margin=cand[:, 0] - best_other, best=best, candidate_ncc=cand)


def nearest_neighbour_distance(embeddings: torch.Tensor) -> torch.Tensor:
    """(N, D) L2-normalised -> (N,) cosine distance to the nearest other row (inf when N = 1)."""
    e = F.normalize(embeddings.float(), dim=-1)
    d = 1 - e @ e.t()
    d.fill_diagonal_(float("inf"))
    return d.min(dim=1).values.clamp_min(0) if e.shape[0] > 1 else torch.full((e.shape[0],), float("inf"))


def greedy_diverse_subset(embeddings: torch.Tensor, min_distance: float, priority: Sequence[float] | None = None,
                          candidates: Sequence[bool] | None = None) -> torch.Tensor:
    """Greedy near-duplicate removal. embeddings (N, D); returns (N,) bool kept.

    Visits rows by decreasing ``priority`` (default: all equal; ties by index) among ``candidates`` (default
    all; non-candidates are never kept and never block others) and keeps a row unless its cosine distance to an
    already-kept row is < ``min_distance``. ``min_distance <= 0`` keeps every candidate.
    """
    n = embeddings.shape[0]
    cand = torch.ones(n, dtype=torch.bool) if candidates is None else torch.as_tensor(list(candidates),
                                                                                        dtype=torch.bool)
    if min_distance <= 0 or n == 0:
        return cand.clone()
    e = F.normalize(embeddings.float(), dim=-1)
    prio = [0.0] * n if priority is None else [float(p) for p in priority]
    order = sorted(range(n), key=lambda i: (-prio[i], i))
    kept = torch.zeros(n, dtype=torch.bool)
    chosen: list[int] = []
    for i in order:
        if not cand[i]:
            continue
        if chosen and float((1 - e[chosen] @ e[i]).min()) < min_distance:
            continue
        kept[i] = True
        chosen.append(i)
    return kept
