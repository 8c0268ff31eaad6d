"""CLIP text-image filter for generated datasets: drop images below a score threshold and/or keep the top fraction.

Score = cosine similarity in [-1, 1] between the L2-normalised CLIP image embedding of an image and the text
embedding of its prompt (:meth:`adapt3d.clip.CLIPScorer.score`). For real CLIP ViT-B/32, matching image-text pairs
typically score 0.25-0.35 and unrelated ones about 0.1-0.2 (these ranges are model dependent: check the recorded
scores of a run before picking a threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from adapt3d.clip.model import CLIPScorer

__all__ = ["CLIPFilter", "CLIPFilterConfig", "select_by_score"]


@dataclass(frozen=True)
class CLIPFilterConfig:
    threshold: float | None = None
    """Drop images whose score is below this cosine similarity (None: no threshold)."""
    top_fraction: float | None = None
    """Keep only the best ceil(top_fraction * N) images by score, ties by index (None: keep all)."""

    def __post_init__(self) -> None:
        if self.threshold is not None and not (math.isfinite(self.threshold) and -1 <= self.threshold <= 1):
            raise ValueError(f"--clip-threshold: {self.threshold!r} is not a cosine similarity in [-1, 1]")
        if self.top_fraction is not None and not 0 < self.top_fraction <= 1:
            raise ValueError(f"--clip-top-fraction: {self.top_fraction!r} is outside (0, 1]")


def select_by_score(scores: Sequence[float] | torch.Tensor, threshold: float | None = None,
                    top_fraction: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(passes_threshold (N,) bool, in_top_fraction (N,) bool) for scores (N,).

    The top fraction is taken over all N scores (not only those above the threshold): rank by score descending,
    ties broken by lower index, keep the first ceil(top_fraction * N).
    """
    s = torch.as_tensor(scores, dtype=torch.float64).reshape(-1)
    n = s.shape[0]
    above = torch.ones(n, dtype=torch.bool) if threshold is None else s >= threshold
    top = torch.ones(n, dtype=torch.bool)
    if top_fraction is not None and n:
        k = math.ceil(top_fraction * n - 1e-9)
        order = sorted(range(n), key=lambda i: (-float(s[i]), i))
        top = torch.zeros(n, dtype=torch.bool)
        top[order[:k]] = True
    return above, top


class CLIPFilter:
    """Score images against texts with a :class:`CLIPScorer` and select them (see :class:`CLIPFilterConfig`)."""

    def __init__(self, scorer: CLIPScorer, config: CLIPFilterConfig | None = None) -> None:
        self.scorer = scorer
        self.config = config or CLIPFilterConfig()

    @torch.no_grad()
    def scores(self, images: torch.Tensor, texts: str | Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """Cosine scores (B,) of images (B, 3, H, W) in [-1, 1] with their texts (one, or one per image)."""
        texts = [texts] * images.shape[0] if isinstance(texts, str) else list(texts)
        if len(texts) != images.shape[0]:
            raise ValueError(f"texts: got {len(texts)} texts for {images.shape[0]} images")
        out = [self.scorer.score(images[i:i + batch_size], texts[i:i + batch_size]).cpu()
               for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out) if out else torch.zeros(0)

    def select(self, scores: Sequence[float] | torch.Tensor) -> torch.Tensor:
        """(N,) bool: kept by both the threshold and the top fraction."""
        above, top = select_by_score(scores, self.config.threshold, self.config.top_fraction)
        return above & top
