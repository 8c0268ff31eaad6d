"""Sample diversity: intra-cluster LPIPS (as StyleGAN-NADA / DATID-3D report it) and mean pairwise feature distance.

Intra-cluster LPIPS (Ojha et al. 2021's protocol, used by StyleGAN-NADA and DATID-3D): the N generated samples are
assigned to k cluster centres, and within each cluster c with members M_c (|M_c| >= 2)::

    D_c = mean_{i < j in M_c} LPIPS(x_i, x_j),      intra_cluster_lpips = mean_c D_c

Ojha et al. use the k training images as the centres; without target images we cluster with k-means (own seeded
implementation, k-means++ initialisation, Lloyd iterations) on an embedding of the samples (CLIP image embeddings
by default, or pooled LPIPS features). A collapsed generator puts near-identical images in each cluster and
scores near 0. Large clusters are subsampled to ``max_pairs_per_cluster`` random pairs (seeded).

Mean pairwise feature distance: ``mean_{i < j} |f_i - f_j|_2`` over L2-normalised embeddings f (in [0, 2]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .lpips import LPIPS

__all__ = [
    "KMeansResult",
    "kmeans",
    "IntraClusterResult",
    "intra_cluster_lpips",
    "mean_pairwise_distance",
    "lpips_embedding",
]


@dataclass
class KMeansResult:
    centres: torch.Tensor  # (k, D)
    assignments: torch.Tensor  # (N,) int64 in [0, k)
    inertia: float  # sum of squared distances to the assigned centre
    iterations: int


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)  # (N, k)


def kmeans(features: torch.Tensor, k: int, *, seed: int = 0, max_iters: int = 100, tol: float = 1e-10) -> KMeansResult:
    """k-means on features (N, D) with k-means++ seeding from ``torch.Generator().manual_seed(seed)``.

    Computed in float64 on the CPU, so equal inputs and seeds give identical clusters. An empty cluster is
    re-seeded with the point farthest from its centre. Ties go to the lowest centre index.
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] == 0:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"`features` must be a non-empty (N, D) tensor, got {shape}")
    n = features.shape[0]
    if not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"`k` must be an int in [1, N={n}], got {k!r}")
    x = features.detach().to("cpu", torch.float64)
    gen = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=gen))
    centres = [x[first]]
    d2 = _sq_dist(x, x[first:first + 1])[:, 0]
    for _ in range(1, k):
        total = float(d2.sum())
        if total <= 0:  # all remaining points coincide with a centre: take any unused index
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=gen))
        centres.append(x[idx])
        d2 = torch.minimum(d2, _sq_dist(x, x[idx:idx + 1])[:, 0])
    c = torch.stack(centres)  # (k, D)
    assign = torch.zeros(n, dtype=torch.long)
    it = 0
    for it in range(1, max_iters + 1):
        dist = _sq_dist(x, c)  # (N, k)
        assign = dist.argmin(dim=1)
        new_c = c.clone()
        for j in range(k):
            members = assign == j
            if members.any():
                new_c[j] = x[members].mean(0)
            else:
                far = int(dist.gather(1, assign[:, None])[:, 0].argmax())
                new_c[j] = x[far]
                assign[far] = j
        shift = float(((new_c - c) ** 2).sum())
        c = new_c
        if shift <= tol:
            break
    assign = _sq_dist(x, c).argmin(dim=1)
    inertia = float(_sq_dist(x, c).gather(1, assign[:, None]).sum())
    return KMeansResult(c.to(features.dtype), assign, inertia, it)


@dataclass
class IntraClusterResult:
    mean: float  # mean over clusters with >= 2 members of their mean pairwise LPIPS
    per_cluster: list[float | None]  # None for clusters with < 2 members
    cluster_sizes: list[int]
    num_pairs: int
    pair_weighted_mean: float  # mean over all evaluated pairs
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "pair_weighted_mean": self.pair_weighted_mean, "per_cluster": self.per_cluster,
                "cluster_sizes": self.cluster_sizes, "num_pairs": self.num_pairs, **self.extra}


def _as_float_images(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def intra_cluster_lpips(images: torch.Tensor, assignments: torch.Tensor, lpips: LPIPS, *,
                        max_pairs_per_cluster: int | None = None, seed: int = 0, batch_size: int = 16,
                        feature_cache_bytes: int = 1 << 30) -> IntraClusterResult:
    """Intra-cluster LPIPS of images (N, 3, H, W) (float in [-1, 1] or uint8) grouped by ``assignments`` (N,).

    A cluster's LPIPS features are computed once per member when they fit in ``feature_cache_bytes``; otherwise
    every pair is run through the network (same numbers up to float rounding).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must be (N, 3, H, W), got {getattr(images, 'shape', type(images).__name__)}")
    if assignments.shape != (images.shape[0],):
        raise ValueError(f"`assignments` must have shape ({images.shape[0]},), got {tuple(assignments.shape)}")
    if max_pairs_per_cluster is not None and max_pairs_per_cluster < 1:
        raise ValueError(f"`max_pairs_per_cluster` must be >= 1 or None, got {max_pairs_per_cluster}")
    device = lpips.shift.device
    gen = torch.Generator().manual_seed(seed)
    k = int(assignments.max()) + 1 if assignments.numel() else 0
    per_cluster: list[float | None] = []
    sizes: list[int] = []
    all_d: list[torch.Tensor] = []
    for c in range(k):
        members = torch.nonzero(assignments == c)[:, 0]
        sizes.append(int(members.numel()))
        if members.numel() < 2:
            per_cluster.append(None)
            continue
        pairs = torch.combinations(members, 2)  # (P, 2), lexicographic order
        if max_pairs_per_cluster is not None and pairs.shape[0] > max_pairs_per_cluster:
            pairs = pairs[torch.randperm(pairs.shape[0], generator=gen)[:max_pairs_per_cluster]]
        dists = []
        involved = pairs.unique()  # sorted member indices that appear in a pair
        cached = _member_features(images, involved, lpips, batch_size, feature_cache_bytes)
        pos = {int(m): j for j, m in enumerate(involved)}
        for i in range(0, pairs.shape[0], batch_size):
            p = pairs[i:i + batch_size]
            if cached is not None:  # features of each involved member computed once
                ia = torch.tensor([pos[int(v)] for v in p[:, 0]])
                ib = torch.tensor([pos[int(v)] for v in p[:, 1]])
                dists.append(lpips.distance_from_features([f[ia] for f in cached],
                                                          [f[ib] for f in cached]).double().cpu())
                continue
            a = _as_float_images(images[p[:, 0]]).to(device)
            b = _as_float_images(images[p[:, 1]]).to(device)
            dists.append(lpips(a, b).double().cpu())
        d = torch.cat(dists)
        all_d.append(d)
        per_cluster.append(float(d.mean()))
    valid = [v for v in per_cluster if v is not None]
    if not valid:
        raise ValueError("no cluster has 2 or more samples; use more samples or fewer clusters")
    flat = torch.cat(all_d)
    return IntraClusterResult(float(sum(valid) / len(valid)), per_cluster, sizes, int(flat.numel()),
                              float(flat.mean()))


def _member_features(images: torch.Tensor, members: torch.Tensor, lpips: LPIPS, batch_size: int,
                     budget: int) -> list[torch.Tensor] | None:
    """LPIPS features (one (m, C_l, H_l, W_l) tensor per layer) of the members, or None if over ``budget``."""
    device = lpips.shift.device
    parts = []
    for i in range(0, members.numel(), batch_size):
        parts.append(lpips.features(_as_float_images(images[members[i:i + batch_size]]).to(device)))
        if i == 0:
            per_image = sum(f[:1].numel() * f.element_size() for f in parts[0])
            if per_image * members.numel() > budget:
                return None
    return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]


def mean_pairwise_distance(features: torch.Tensor, *, normalize: bool = True) -> float:
    """Mean Euclidean distance over all pairs i < j of features (N, D) (L2-normalised first by default)."""
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] < 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"`features` must be (N >= 2, D), got {shape}")
    f = features.detach().to("cpu", torch.float64)
    if normalize:
        f = torch.nn.functional.normalize(f, dim=-1)
    d = torch.cdist(f, f)  # (N, N)
    n = f.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    return float(d[iu[0], iu[1]].mean())


@torch.no_grad()
def lpips_embedding(images: torch.Tensor, lpips: LPIPS, batch_size: int = 16) -> torch.Tensor:
    """Per-image vector (N, sum_l C_l) of spatially averaged unit-normalised LPIPS features, each layer scaled by
    sqrt(head weights) (a cheap proxy of the LPIPS geometry, used to cluster)."""
    out = []
    for i in range(0, images.shape[0], batch_size):
        x = _as_float_images(images[i:i + batch_size]).to(lpips.shift.device)
        feats = lpips.features(x)
        out.append(torch.cat([(f * w.sqrt()).mean(dim=(2, 3)) for f, w in zip(feats, lpips.heads)], 1).cpu())
    emb = torch.cat(out)
    if not torch.isfinite(emb).all():
        raise ValueError("LPIPS embedding is not finite")
    return emb / math.sqrt(len(lpips.heads))
